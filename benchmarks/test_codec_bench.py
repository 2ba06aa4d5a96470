"""Model codec benchmarks: bundles of an XGBoost model (100 trees), a LightGBM model (100 trees) and a small
Keras LSTM, against each library's own save (then an fsync of the file) and load, in the same run.

The anchors (named after the format; in the save rows they include the fsync) are what a user of the
library writes: ``model.save_model(path)`` (XGBoost's UBJSON, its
default; JSON as another anchor), LightGBM's ``save_model`` text, Keras' ``model.save("m.keras")``,
each followed by ``os.fsync`` of the file, so both sides have the data on disk when they return
(persistkit also renames into place and fsyncs the directory). Loads read a file the previous save wrote.
persistkit's rows save unencrypted bundles and load them with ``trusted=True`` (a plain bundle must
be trusted to construct a model), so the comparison is of formats, not of AES-GCM.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from pkbench import tag

import persistkit as pk

ROUNDS = 15
# Keras 3.15 + numpy 2.4 warn once per tensor converted to numpy (keras' own saving and loading too)
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def fsynced(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def measure(benchmark, fn):
    return benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)


def data(full_size: bool, shape=(5000, 20)):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape if full_size else (300, shape[1])).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(np.int32)


# -- models ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xgb_model(request):
    xgb = pytest.importorskip("xgboost")
    full = request.config.getoption("benchmark_enable") or not request.config.getoption("benchmark_disable")
    x, y = data(full)
    return xgb.XGBClassifier(n_estimators=100 if full else 10, max_depth=6, n_jobs=1, random_state=0).fit(
        x, y
    )


@pytest.fixture(scope="module")
def lgb_model(request):
    lgb = pytest.importorskip("lightgbm")
    full = request.config.getoption("benchmark_enable") or not request.config.getoption("benchmark_disable")
    x, y = data(full)
    model = lgb.LGBMClassifier(
        n_estimators=100 if full else 10, num_leaves=31, n_jobs=1, verbose=-1, random_state=0
    )
    return model.fit(x, y)


@pytest.fixture(scope="module")
def keras_model(request):
    from persistkit.format.codecs.keras import import_keras

    try:
        keras = import_keras()
    except ImportError:
        pytest.skip("keras is not installed")
    import warnings

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((30, 8)), keras.layers.LSTM(32), keras.layers.Dense(1, activation="sigmoid")]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 30, 8)).astype("float32")
    with warnings.catch_warnings():  # keras 3.15 + numpy 2.4: a DeprecationWarning per tensor, not ours
        warnings.simplefilter("ignore", DeprecationWarning)
        model.fit(x, (x.sum(axis=(1, 2)) > 0).astype("float32"), epochs=1, verbose=0)
    return model


LIBRARIES = {
    "xgboost": ("XGBoost classifier, 100 trees of depth 6 (5000x20)", "xgb_model"),
    "lightgbm": ("LightGBM classifier, 100 trees of 31 leaves (5000x20)", "lgb_model"),
    "keras": ("Keras LSTM(32) + Dense, compiled with Adam state (torch backend)", "keras_model"),
}


def library_save(lib: str, model, path) -> None:
    if lib == "keras":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model.save(path)
    elif lib == "lightgbm":
        model.booster_.save_model(path)
    else:
        model.save_model(path)
    fsynced(path)


def library_load(lib: str, model, path):
    if lib == "keras":
        import keras

        return keras.saving.load_model(path)
    if lib == "lightgbm":
        import lightgbm

        return lightgbm.Booster(model_file=str(path))
    fresh = type(model)()
    fresh.load_model(path)
    return fresh


ANCHORS = {
    "xgboost": ("xgboost-ubj", "m.ubj"),
    "lightgbm": ("lightgbm-text", "m.txt"),
    "keras": ("keras", "m.keras"),
}
EXTRA_ANCHORS = {"xgboost": [("xgboost-json", "m.json")], "lightgbm": [], "keras": []}


def anchor_cases():
    for lib, (role, name) in ANCHORS.items():
        yield pytest.param(lib, role, name, id=f"{lib}-{role}")
        for extra_role, extra_name in EXTRA_ANCHORS[lib]:
            yield pytest.param(lib, extra_role, extra_name, id=f"{lib}-{extra_role}")


# -- save -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lib", list(LIBRARIES))
def test_codec_bundle_save(benchmark, request, tmp_path, lib):
    desc, fixture = LIBRARIES[lib]
    model = request.getfixturevalue(fixture)
    path = tmp_path / "m.models"
    measure(benchmark, lambda: pk.save_bundle(path, {"model": model}, encrypt=False))
    tag(benchmark, comparison=f"{desc}: save", role="persistkit", target=f"time<=1.2*{ANCHORS[lib][0]}",
        bytes=os.path.getsize(path))  # fmt: skip


@pytest.mark.parametrize("lib, role, name", anchor_cases())
def test_library_save(benchmark, request, tmp_path, lib, role, name):
    desc, fixture = LIBRARIES[lib]
    model = request.getfixturevalue(fixture)
    path = tmp_path / name
    measure(benchmark, lambda: library_save(lib, model, path))
    tag(benchmark, comparison=f"{desc}: save", role=role, bytes=os.path.getsize(path))  # the save + fsync


# -- load -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lib", list(LIBRARIES))
def test_codec_bundle_load(benchmark, request, tmp_path, lib):
    desc, fixture = LIBRARIES[lib]
    model = request.getfixturevalue(fixture)
    path = pk.save_bundle(tmp_path / "m.models", {"model": model}, encrypt=False)
    loaded = measure(benchmark, lambda: pk.load_bundle(path, trusted=True))
    assert type(loaded["model"]) is type(model)
    tag(benchmark, comparison=f"{desc}: load", role="persistkit", target=f"time<=1.2*{ANCHORS[lib][0]}")


@pytest.mark.parametrize("lib, role, name", anchor_cases())
def test_library_load(benchmark, request, tmp_path, lib, role, name):
    desc, fixture = LIBRARIES[lib]
    model = request.getfixturevalue(fixture)
    path = tmp_path / name
    library_save(lib, model, path)
    measure(benchmark, lambda: library_load(lib, model, path))
    tag(benchmark, comparison=f"{desc}: load", role=role)


# -- size -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lib", list(LIBRARIES))
def test_codec_bundle_size(benchmark, request, tmp_path, lib):
    desc, fixture = LIBRARIES[lib]
    model = request.getfixturevalue(fixture)
    role, name = ANCHORS[lib]
    ours = os.path.getsize(pk.save_bundle(tmp_path / "m.models", {"model": model}, encrypt=False))
    library_save(lib, model, tmp_path / name)
    theirs = os.path.getsize(tmp_path / name)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    tag(benchmark, comparison=f"{desc}: size", role="persistkit", target=f"size<=1.2*{role}", bytes=ours,
        anchor_bytes=theirs)  # fmt: skip
    print(f"\n{lib}: bundle {ours} B, {role} {theirs} B, ratio {ours / theirs:.2f}")
