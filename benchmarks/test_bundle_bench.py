"""Bundle benchmarks: save/load against safetensors and np.save, encryption, KDF, sklearn forests."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from pkbench import tag

import persistkit as pk
from persistkit.format.crypto import KdfParams, Key, write_key_file

SIZES = {"1MiB": 1 << 20, "100MiB": 100 << 20}
# Medians of a few milliseconds need more rounds to settle on a shared 2-core machine.
ROUNDS = {"1MiB": 51, "100MiB": 7}


def measure(benchmark, label, fn):
    return benchmark.pedantic(fn, rounds=ROUNDS[label], iterations=1, warmup_rounds=1)


@pytest.fixture(params=sorted(SIZES), ids=sorted(SIZES))
def weights(request, full_size):
    nbytes = SIZES[request.param] if full_size else 64 << 10
    rng = np.random.default_rng(0)
    return request.param, {"w": rng.standard_normal(nbytes // 4).astype(np.float32)}


def test_bundle_save_plain(benchmark, weights, tmp_path):
    label, arrays = weights
    path = tmp_path / "b.models"
    measure(benchmark, label, lambda: pk.save_bundle(path, arrays, encrypt=False))
    tag(
        benchmark,
        comparison=f"bundle save, float32 {label}, unencrypted",
        role="persistkit",
        target="time<=1.15*safetensors",
        bytes=os.path.getsize(path),
    )


def test_safetensors_save(benchmark, weights, tmp_path):
    from safetensors.numpy import save_file

    label, arrays = weights
    path = tmp_path / "b.safetensors"
    measure(benchmark, label, lambda: save_file(arrays, str(path)))
    tag(
        benchmark,
        comparison=f"bundle save, float32 {label}, unencrypted",
        role="safetensors",
        bytes=os.path.getsize(path),
    )


def durable_safetensors_save(arrays, path):
    """What a careful user writes for the same guarantee: temp file, fsync, rename, directory fsync."""
    from safetensors.numpy import save_file

    temp = path.with_name(path.name + ".tmp")
    save_file(arrays, str(temp))
    fd = os.open(temp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("row", ["unencrypted", "encrypted (key file)"])
def test_safetensors_durable_save(benchmark, weights, tmp_path, row):
    label, arrays = weights
    path = tmp_path / "b.safetensors"
    measure(benchmark, label, lambda: durable_safetensors_save(arrays, path))
    assert (tmp_path / "b.safetensors").stat().st_size > memoryview(arrays["w"]).nbytes
    tag(benchmark, comparison=f"bundle save, float32 {label}, {row}", role="safetensors+fsync")


def test_np_save(benchmark, weights, tmp_path):
    label, arrays = weights
    path = tmp_path / "b.npy"
    measure(benchmark, label, lambda: np.save(path, arrays["w"]))
    tag(benchmark, comparison=f"bundle save, float32 {label}, unencrypted", role="np.save")


def test_bundle_load_plain(benchmark, weights, tmp_path):
    label, arrays = weights
    path = tmp_path / "b.models"
    pk.save_bundle(path, arrays, encrypt=False)
    loaded = measure(benchmark, label, lambda: pk.load_bundle(path))
    assert np.array_equal(loaded["w"], arrays["w"])
    tag(
        benchmark,
        comparison=f"bundle load, float32 {label}, unencrypted",
        role="persistkit",
        target="time<=1.15*safetensors",
    )


def test_safetensors_load(benchmark, weights, tmp_path):
    from safetensors.numpy import load_file, save_file

    label, arrays = weights
    path = tmp_path / "b.safetensors"
    save_file(arrays, str(path))
    measure(benchmark, label, lambda: load_file(str(path)))
    tag(benchmark, comparison=f"bundle load, float32 {label}, unencrypted", role="safetensors")


def test_np_load(benchmark, weights, tmp_path):
    label, arrays = weights
    path = tmp_path / "b.npy"
    np.save(path, arrays["w"])
    measure(benchmark, label, lambda: np.load(path))
    tag(benchmark, comparison=f"bundle load, float32 {label}, unencrypted", role="np.load")


def test_bundle_save_encrypted_key_file(benchmark, weights, tmp_path):
    label, arrays = weights
    key = tmp_path / "shared.key"
    write_key_file(key)
    path = tmp_path / "b.models"
    measure(benchmark, label, lambda: pk.save_bundle(path, arrays, key_file=key))
    tag(
        benchmark,
        comparison=f"bundle save, float32 {label}, encrypted (key file)",
        role="persistkit",
        target="time<=1.5*safetensors",
    )


def test_safetensors_save_for_encrypted_row(benchmark, weights, tmp_path):
    from safetensors.numpy import save_file

    label, arrays = weights
    path = tmp_path / "b.safetensors"
    measure(benchmark, label, lambda: save_file(arrays, str(path)))
    tag(benchmark, comparison=f"bundle save, float32 {label}, encrypted (key file)", role="safetensors")


def test_password_kdf_cost(benchmark):
    """The scrypt derivation alone (default n=2**17, r=8, p=1), measured apart from the save."""
    salts = iter(os.urandom(32) for _ in range(100))
    benchmark.pedantic(
        lambda: Key.from_password("correct horse", salt=next(salts), params=KdfParams()),
        rounds=3,
        iterations=1,
    )
    tag(
        benchmark, comparison="password KDF (scrypt n=2^17, r=8, p=1)", role="persistkit", target="time<=1.0s"
    )


def test_bundle_save_with_password(benchmark, tmp_path):
    arrays = {"w": np.zeros(1 << 18, dtype=np.float32)}
    path = tmp_path / "p.models"
    benchmark.pedantic(lambda: pk.save_bundle(path, arrays, password="correct horse"), rounds=3, iterations=1)
    tag(
        benchmark,
        comparison="bundle save with a password (1 MiB; the scrypt key is cached after the first save in a process)",
        role="persistkit",
        target="time<=1.0s",
    )


@pytest.fixture(scope="module")
def forest():
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    X, y = make_classification(n_samples=5000, n_features=20, random_state=0)
    return RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1).fit(X, y)


def small_forest():
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    X, y = make_classification(n_samples=300, n_features=20, random_state=0)
    return RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y)


@pytest.fixture
def rf(full_size, request):
    return request.getfixturevalue("forest") if full_size else small_forest()


def test_rf_bundle(benchmark, rf, tmp_path):
    path = tmp_path / "rf.models"
    benchmark.pedantic(lambda: pk.save_bundle(path, {"signal": rf}, encrypt=False), rounds=3, iterations=1)
    size = os.path.getsize(path)
    tag(
        benchmark,
        comparison="sklearn RandomForest (100 trees, 5000x20): save time",
        role="persistkit",
        target="time<=1.0*skops",
        bytes=size,
    )
    benchmark.extra_info["size_note"] = size


def test_rf_skops(benchmark, rf, tmp_path):
    import skops.io as sio

    path = tmp_path / "rf.skops"
    benchmark.pedantic(lambda: sio.dump(rf, path), rounds=3, iterations=1)
    tag(
        benchmark,
        comparison="sklearn RandomForest (100 trees, 5000x20): save time",
        role="skops",
        bytes=os.path.getsize(path),
    )


def test_rf_joblib(benchmark, rf, tmp_path):
    import joblib

    path = tmp_path / "rf.joblib"
    benchmark.pedantic(lambda: joblib.dump(rf, path, compress=3), rounds=3, iterations=1)
    tag(
        benchmark,
        comparison="sklearn RandomForest (100 trees, 5000x20): save time",
        role="joblib-c3",
        bytes=os.path.getsize(path),
    )


def test_rf_pickle(benchmark, rf, tmp_path):
    path = tmp_path / "rf.pkl"

    def dump():
        with open(path, "wb") as f:
            pickle.dump(rf, f, protocol=pickle.HIGHEST_PROTOCOL)

    benchmark.pedantic(dump, rounds=3, iterations=1)
    tag(
        benchmark,
        comparison="sklearn RandomForest (100 trees, 5000x20): save time",
        role="pickle",
        bytes=os.path.getsize(path),
    )


def test_rf_size(benchmark, rf, tmp_path, full_size):
    import joblib

    path = tmp_path / "rf.models"
    pk.save_bundle(path, {"signal": rf}, encrypt=False)
    joblib.dump(rf, tmp_path / "rf.joblib", compress=3)
    ours, theirs = os.path.getsize(path), os.path.getsize(tmp_path / "rf.joblib")
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    tag(
        benchmark,
        comparison="sklearn RandomForest (100 trees, 5000x20): size",
        role="persistkit",
        target="size<=1.0*joblib-c3",
        bytes=ours,
        anchor_bytes=theirs,
    )
    print(f"\nforest: bundle {ours} B, joblib c3 {theirs} B, ratio {ours / theirs:.2f}")
    if full_size:
        assert ours <= theirs
