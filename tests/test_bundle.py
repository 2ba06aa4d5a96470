"""save_bundle / load_bundle / inspect / verify: round trips, keys, trust, tampering, golden files, crashes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import persistkit as pk
from persistkit.bundle import VersionSkewWarning
from persistkit.errors import (
    FormatError,
    IntegrityError,
    PersistIOError,
    UnsafeArchiveError,
    UnsupportedTypeError,
    UntrustedTypeError,
    WrongKeyError,
)
from persistkit.format.crypto import KdfParams
from persistkit.io import use_fs
from persistkit.keys import read_key_file, write_key_file
from persistkit.testing.compare import assert_same
from persistkit.testing.fs import CrashSimulator, Snapshot
from persistkit.testing.fs.recordfs import RecordingFS
from persistkit.testing.strategies import arrays, metadata, state_values

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "fixtures" / "bundles"
HOSTILE = ROOT / "fixtures" / "hostile"
FLOOR = KdfParams.floor()


@pytest.fixture(scope="module")
def scaler():
    from sklearn.preprocessing import StandardScaler

    return StandardScaler().fit(np.arange(20.0).reshape(10, 2))


@pytest.fixture
def models(scaler):
    rng = np.random.default_rng(0)
    return {
        "q_table": rng.standard_normal((8, 4)).astype(np.float32),
        "attention": {"w": rng.standard_normal((3, 3)), "mask": np.array([True, False, True])},
        "settings": {"weights": (0.6, 0.4), "names": ["a", "b"], "when": None},
        "signal": scaler,
        "blob": b"\x00raw bytes\xff",
    }


def zip_names(path) -> list[str]:
    with zipfile.ZipFile(path) as z:
        return z.namelist()


def rewrite(path, transform) -> None:
    """Rebuild the zip through ``transform([(name, bytes)]) -> [(name, bytes)]`` (stored, same order)."""
    from persistkit.io.zipio import ZipStreamWriter

    with zipfile.ZipFile(path) as z:
        entries = [(i.filename, z.read(i)) for i in z.infolist()]
    out = bytearray()
    writer = ZipStreamWriter(out.extend)
    for name, data in transform(entries):
        writer.add(name, [data])
    writer.finish()
    Path(path).write_bytes(bytes(out))


# -- round trips ---------------------------------------------------------------------------


def test_round_trip_every_member_type_exactly(tmp_path, models):
    import torch
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.random.default_rng(1).standard_normal((30, 2))
    y = (X[:, 0] > 0).astype(int)
    models["pipeline"] = make_pipeline(StandardScaler(), RandomForestClassifier(5, random_state=0)).fit(X, y)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    models["weights"] = net.state_dict()
    models["fortran"] = np.asfortranarray(np.arange(12, dtype=">i4").reshape(3, 4))
    path = pk.save_bundle(tmp_path / "x.models", models, metadata={"note": "hi"})
    bundle = pk.load_bundle(path)
    assert list(bundle) == list(models)
    for name in ("q_table", "attention", "settings", "blob", "fortran"):
        assert_same(models[name], bundle[name], what=name)
    assert bundle["fortran"].flags.f_contiguous and bundle["fortran"].dtype == np.dtype(">i4")
    assert bundle["q_table"].flags.writeable  # a loaded Q-table can be updated in place
    assert_same(models["signal"], bundle["signal"], what="signal")
    assert_same(models["pipeline"], bundle["pipeline"], what="pipeline")
    assert bundle["pipeline"].get_params().keys() == models["pipeline"].get_params().keys()
    assert all(torch.equal(models["weights"][k], bundle["weights"][k]) for k in models["weights"])
    assert bundle.metadata["note"] == "hi"


def test_container_is_a_zip_listing_members_metadata_and_manifest(tmp_path, models):
    path = pk.save_bundle(tmp_path / "x.models", models)
    assert zip_names(path) == [
        *(f"members/{n}.pke" for n in models),
        "metadata.pke",
        "manifest.json",
        "manifest.auth",
    ]
    out = subprocess.run(["unzip", "-l", str(path)], capture_output=True, text=True)
    if out.returncode == 0:  # unzip is optional on the machine; zipfile above already read it
        assert "members/q_table.pke" in out.stdout
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None  # every CRC is right
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())


def test_large_float_arrays_are_stored_uncompressed_and_other_members_compressed(tmp_path):
    big = np.random.default_rng(0).standard_normal(300_000).astype(np.float32)
    ints = np.zeros(300_000, dtype=np.int64)
    path = pk.save_bundle(tmp_path / "x.models", {"w": big, "ints": ints}, encrypt=False)
    manifest = pk.inspect(path)
    assert manifest.member("w").compression == "none"
    assert manifest.member("ints").compression == "zstd"
    assert manifest.member("ints").envelope_len < ints.nbytes // 100
    assert_same(big, pk.load_bundle(path)["w"])
    none = pk.save_bundle(tmp_path / "n.models", {"ints": ints}, encrypt=False, compression="none")
    assert pk.inspect(none).member("ints").compression == "none"


def test_members_limits_what_is_rebuilt_but_everything_is_verified(tmp_path, models):
    path = pk.save_bundle(tmp_path / "x.models", models)
    bundle = pk.load_bundle(path, members=["q_table"])
    assert list(bundle.models) == ["q_table"]
    with pytest.raises(KeyError, match="nope"):
        pk.load_bundle(path, members=["nope"])


# -- keys ----------------------------------------------------------------------------------


def test_key_is_written_beside_with_mode_0600_and_reported(tmp_path, models, caplog):
    target = tmp_path / "models" / "x.models"
    with caplog.at_level(logging.INFO, logger="persistkit"):
        path = pk.save_bundle(target, models)
    assert path == target and isinstance(path, Path)
    key = tmp_path / "models" / "x.models.key"
    assert (key.stat().st_mode & 0o777) == 0o600
    assert any(str(key) in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    assert pk.inspect(path).encrypted
    assert_same(models["q_table"], pk.load_bundle(path)["q_table"])


def test_overwrite_reuses_the_key_beside_the_bundle(tmp_path, models, caplog):
    path = pk.save_bundle(tmp_path / "x.models", models)
    before = read_key_file(tmp_path / "x.models.key")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="persistkit"):
        pk.save_bundle(path, {"q": np.ones(3)})
    assert read_key_file(tmp_path / "x.models.key") == before
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]  # nothing new to report
    assert_same(np.ones(3), pk.load_bundle(path)["q"])


def test_one_key_file_for_many_bundles(tmp_path, models):
    key = tmp_path / "team.key"
    write_key_file(key)
    a = pk.save_bundle(tmp_path / "a.models", models, key_file=key)
    b = pk.save_bundle(tmp_path / "b.models", {"q": np.ones(2)}, key_file=key)
    assert not (tmp_path / "a.models.key").exists()
    assert_same(models["q_table"], pk.load_bundle(a, key_file=key)["q_table"])
    assert_same(np.ones(2), pk.load_bundle(b, key_file=key)["q"])
    with pytest.raises(WrongKeyError, match=r"looked for .*a\.models\.key"):
        pk.load_bundle(a)  # no key beside it, none passed


def test_password_round_trip_and_wrong_password(tmp_path, models):
    path = pk.save_bundle(tmp_path / "p.models", models, password="s3cret pass", kdf=FLOOR)
    assert not (tmp_path / "p.models.key").exists()
    assert pk.inspect(path).encryption.key_source == "password"
    assert_same(models["attention"], pk.load_bundle(path, password="s3cret pass")["attention"])
    with pytest.raises(WrongKeyError, match="password does not open"):
        pk.load_bundle(path, password="wrong pass")
    with pytest.raises(WrongKeyError, match="pass password="):
        pk.load_bundle(path)


def test_wrong_key_file_is_a_wrong_key_not_damage(tmp_path, models):
    path = pk.save_bundle(tmp_path / "x.models", models)
    other = tmp_path / "other.key"
    write_key_file(other)
    with pytest.raises(WrongKeyError, match=r"\(fingerprint [0-9a-f]+\) does not open .*x\.models") as info:
        pk.load_bundle(path, key_file=other)
    assert info.value.path == str(path)


def test_missing_key_file_names_where_it_looked(tmp_path, models):
    path = pk.save_bundle(tmp_path / "x.models", models)
    (tmp_path / "x.models.key").unlink()
    with pytest.raises(WrongKeyError, match=r"looked for .*x\.models\.key.*key_file="):
        pk.load_bundle(path)
    with pytest.raises(PersistIOError, match=r"key file not found: looked for .*nowhere\.key"):
        pk.load_bundle(path, key_file=tmp_path / "nowhere.key")


def test_unencrypted_bundle_has_digests_only(tmp_path, models):
    path = pk.save_bundle(tmp_path / "u.models", models, encrypt=False)
    assert not (tmp_path / "u.models.key").exists()
    assert not pk.inspect(path).encrypted
    with pytest.raises(IntegrityError, match="not encrypted, but a key"):
        pk.load_bundle(path, password="anything")
    with pytest.raises(ValueError, match="encrypt=False"):
        pk.save_bundle(tmp_path / "v.models", models, encrypt=False, password="x")


def test_unencrypted_code_executing_member_needs_trusted(tmp_path, models):
    path = pk.save_bundle(tmp_path / "u.models", models, encrypt=False)
    with pytest.raises(UntrustedTypeError, match="not encrypted") as info:
        pk.load_bundle(path)
    assert info.value.member == "signal"
    assert "sklearn.preprocessing._data.StandardScaler" in info.value.types
    assert "StandardScaler" in str(info.value)
    loaded = pk.load_bundle(path, trusted=True)
    assert_same(models["signal"], loaded["signal"])
    assert_same(models["signal"], pk.load_bundle(path, trusted=["my.Extra"])["signal"])
    # plain-data members never need trust
    data_only = pk.save_bundle(tmp_path / "d.models", {"q": models["q_table"]}, encrypt=False)
    assert_same(models["q_table"], pk.load_bundle(data_only)["q"])


def test_embedded_model_in_a_tree_value_follows_the_trust_rule(tmp_path, scaler):
    path = pk.save_bundle(tmp_path / "t.models", {"state": {"scaler": scaler, "n": 3}}, encrypt=False)
    with pytest.raises(UntrustedTypeError) as info:
        pk.load_bundle(path)
    assert "sklearn.preprocessing._data.StandardScaler" in info.value.types
    state = pk.load_bundle(path, trusted=True)["state"]
    assert state["n"] == 3
    assert_same(scaler, state["scaler"])


# -- metadata, inspect, verify --------------------------------------------------------------


def test_metadata_with_automatic_fields(tmp_path, models, monkeypatch):
    repo = tmp_path / "repo"
    (repo / ".git" / "refs" / "heads").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / ".git" / "refs" / "heads" / "main").write_text(commit + "\n")
    monkeypatch.chdir(repo)
    meta = {"ensemble_weights": [0.6, 0.4], "calibration_temperature": np.float32(1.25), "n": np.int64(3)}
    path = pk.save_bundle(tmp_path / "x.models", models, metadata=meta, config={"lr": 1e-3})
    got = pk.load_bundle(path).metadata
    assert got["ensemble_weights"] == [0.6, 0.4]
    # the tree codec keeps numpy numbers as they were (JSON-era bundles made them Python numbers)
    assert got["calibration_temperature"] == 1.25 and type(got["calibration_temperature"]) is np.float32
    assert got["n"] == 3 and type(got["n"]) is np.int64
    assert got["config"] == {"lr": 1e-3}
    assert got["git_commit"] == commit
    assert got["environment"]["numpy"] == np.__version__
    assert got["created"].endswith("+00:00")
    # a commit made while the process runs is picked up by the next save
    newer = "fedcba9876543210fedcba9876543210fedcba98"
    (repo / ".git" / "refs" / "heads" / "main").write_text(newer + "\n")
    again = pk.save_bundle(tmp_path / "y.models", models)
    assert pk.load_bundle(again).metadata["git_commit"] == newer


def test_metadata_outside_a_repo_has_no_commit(tmp_path, models, monkeypatch):
    monkeypatch.chdir(tmp_path)
    got = pk.load_bundle(pk.save_bundle(tmp_path / "x.models", models)).metadata
    assert "git_commit" not in got
    # a repository created while the process runs is seen by the next save
    (tmp_path / ".git" / "refs" / "heads").mkdir(parents=True)
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / ".git" / "refs" / "heads" / "main").write_text("ab" * 20 + "\n")
    assert pk.load_bundle(pk.save_bundle(tmp_path / "y.models", models)).metadata["git_commit"] == "ab" * 20


def test_metadata_that_is_not_a_plain_value_is_refused_with_its_path(tmp_path, models):
    with pytest.raises(
        UnsupportedTypeError, match=r"metadata\['bad'\]\[1\].*cannot be stored as metadata"
    ) as info:
        pk.save_bundle(tmp_path / "x.models", models, metadata={"bad": [1, object()]})
    assert info.value.field == "metadata['bad'][1]"
    assert not (tmp_path / "x.models").exists()


def test_inspect_needs_no_key_and_decrypts_nothing(tmp_path, models):
    path = pk.save_bundle(tmp_path / "x.models", models)
    (tmp_path / "x.models.key").unlink()
    manifest = pk.inspect(path)
    assert manifest.encrypted and manifest.version == 1
    assert [m.name for m in manifest.models] == list(models)
    assert manifest.member("q_table").info == {"dtype": "float32", "shape": [8, 4]}
    assert manifest.member("signal").codec == "sklearn"
    assert set(manifest.environment) >= {
        "persistkit",
        "python",
        "numpy",
        "scikit-learn",
        "stable-baselines3",
        "torch",
    }
    doc = json.loads(zipfile.ZipFile(path).read("manifest.json"))  # plain JSON, readable by anyone
    assert doc["format"] == "persistkit.bundle" and len(doc["members"]) == len(models) + 1


def test_verify_reports_every_member(tmp_path, models):
    path = pk.save_bundle(tmp_path / "x.models", models)
    report = pk.verify(path)
    assert report.authenticated and report.encrypted
    assert [m.name for m in report.members] == [*models, "metadata"]
    signal = next(m for m in report.members if m.name == "signal")
    assert "sklearn.preprocessing._data.StandardScaler" in signal.types


def test_version_skew_warns_once_naming_versions(tmp_path, models, monkeypatch):
    import persistkit.bundle.provenance as bundle_module

    path = pk.save_bundle(tmp_path / "x.models", models)
    real = bundle_module.environment()
    monkeypatch.setattr(
        bundle_module, "environment", lambda: {**real, "scikit-learn": "9.9.9", "numpy": "8.8.8"}
    )
    with pytest.warns(VersionSkewWarning) as record:
        pk.load_bundle(path)
    assert len(record) == 1
    message = str(record[0].message)
    assert f"scikit-learn {real['scikit-learn']}" in message and "scikit-learn 9.9.9" in message
    assert f"numpy {real['numpy']}" in message and "numpy 8.8.8" in message


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a/b", "../up", "..", "nul\x00byte", "back\\slash", "", "tab\tname"])
def test_unsafe_member_names_are_refused_at_save(tmp_path, name):
    with pytest.raises(UnsafeArchiveError, match="member name") as info:
        pk.save_bundle(tmp_path / "x.models", {name: np.ones(2)})
    assert info.value.member == name
    assert os.listdir(tmp_path) == []


def test_unsupported_member_type_names_the_member(tmp_path):
    with pytest.raises(UnsupportedTypeError, match=r"odd.*cannot be stored without pickle"):
        pk.save_bundle(tmp_path / "x.models", {"odd": object()})
    assert not (tmp_path / "x.models").exists()


def test_not_a_bundle(tmp_path):
    plain = tmp_path / "notes.models"
    plain.write_text("hello")
    with pytest.raises(FormatError, match="not a persistkit bundle"):
        pk.load_bundle(plain)
    other_zip = tmp_path / "other.zip"
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(FormatError, match="other zip file"):
        pk.inspect(other_zip)


def _encrypted_bundle(tmp_path, models):
    return pk.save_bundle(tmp_path / "x.models", models)


def test_edited_manifest_is_detected(tmp_path, models):
    path = _encrypted_bundle(tmp_path, models)

    def edit(entries):
        out = []
        for name, data in entries:
            if name == "manifest.json":
                data = data.replace(b'"float32"', b'"float64"')
            out.append((name, data))
        return out

    rewrite(path, edit)
    with pytest.raises(IntegrityError, match="manifest") as info:
        pk.load_bundle(path)
    assert info.value.member == "manifest"
    with pytest.raises(IntegrityError):
        pk.inspect(path)  # even without a key: the unkeyed digest no longer matches


@pytest.mark.parametrize(
    ("how", "member"),
    [
        ("remove", "attention"),
        ("duplicate", "q_table"),
        ("reorder", "attention"),
        ("swap", "q_table"),
        ("add", "members/extra.pke"),
    ],
)
@pytest.mark.parametrize("encrypt", [True, False])
def test_member_tampering_is_detected_and_named(tmp_path, models, how, member, encrypt):
    path = pk.save_bundle(tmp_path / "x.models", models, encrypt=encrypt)

    def tamper(entries):
        data = dict(entries)
        names = [n for n, _ in entries]
        if how == "remove":
            names.remove("members/attention.pke")
        elif how == "duplicate":
            names.insert(1, "members/q_table.pke")
        elif how == "reorder":  # the entries keep their names and contents, only their order changes
            names[0], names[1] = names[1], names[0]
        elif how == "swap":
            data["members/q_table.pke"], data["members/settings.pke"] = (
                data["members/settings.pke"],
                data["members/q_table.pke"],
            )
        elif how == "add":
            names.insert(2, "members/extra.pke")
            data["members/extra.pke"] = data["members/q_table.pke"]
        return [(n, data[n]) for n in names]

    rewrite(path, tamper)
    with pytest.raises(IntegrityError) as info:
        pk.load_bundle(path, trusted=True)
    assert info.value.member == member, str(info.value)
    assert str(path) in str(info.value) and "restore" in str(info.value)


def test_member_copied_from_another_bundle_with_the_same_key(tmp_path, models):
    key = tmp_path / "k.key"
    write_key_file(key)
    a = pk.save_bundle(tmp_path / "a.models", models, key_file=key)
    b = pk.save_bundle(tmp_path / "b.models", {**models, "q_table": models["q_table"] * 2}, key_file=key)
    foreign = zipfile.ZipFile(b).read("members/q_table.pke")
    rewrite(a, lambda es: [(n, foreign if n == "members/q_table.pke" else d) for n, d in es])
    with pytest.raises(IntegrityError, match="q_table") as info:
        pk.load_bundle(a, key_file=key)
    assert info.value.member == "q_table"


def test_unknown_codec_is_a_format_error(tmp_path):
    path = HOSTILE / "bundle_pickle_member.models"
    with pytest.raises(FormatError, match=r"codec 'pickle'.*never falls back to pickle") as info:
        pk.load_bundle(path, trusted=True)
    assert info.value.member == "model"


# -- hostile fixtures -----------------------------------------------------------------------

HOSTILE_CASES = [
    ("bundle_zipslip.models", UnsafeArchiveError, "../../pk_sentinel_zipslip", "zip-slip"),
    ("bundle_spliced.models", IntegrityError, "q_table", "copied in from another bundle"),
    ("bundle_swapped.models", IntegrityError, "q_table", "swapped"),
    ("bundle_duplicated.models", IntegrityError, "q_table", "appears twice"),
    ("bundle_truncated.models", IntegrityError, None, "truncated"),
    ("bundle_bitflip97.models", IntegrityError, "mumbers/q_table.pke", "damaged"),  # the damaged entry name
    ("bundle_edited_manifest.models", IntegrityError, "manifest", "manifest authentication failed"),
    ("bundle_pickle.pkl", FormatError, None, "looks like a pickle"),
    ("bundle_pickle_member.models", FormatError, "model", "unknown|does not know"),
    ("bundle_malicious.skops", FormatError, None, "not a persistkit bundle"),
    ("bundle_skops_member.models", UntrustedTypeError, "signal", "builtins.open"),
    ("bundle_sb3_cloudpickle.zip", FormatError, None, "not a persistkit bundle"),
    ("bundle_sb3_member.models", FormatError, "policy", "stable-baselines3 zip"),
]


@pytest.fixture
def hostile_key(tmp_path):
    key = tmp_path / "bundle_key.key"
    shutil.copy(HOSTILE / "bundle_key.key", key)
    key.chmod(0o600)
    return key


@pytest.mark.parametrize(
    ("sample", "error", "member", "words"), HOSTILE_CASES, ids=[c[0] for c in HOSTILE_CASES]
)
def test_hostile_samples_raise_typed_errors_and_run_no_code(
    tmp_path, monkeypatch, hostile_key, sample, error, member, words
):
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # sentinels are relative names; zip-slip would land two levels up
    path = HOSTILE / sample
    encrypted = sample.endswith(".models") and zipfile.is_zipfile(path) and _encrypted(path)
    kwargs = {"key_file": hostile_key} if encrypted else {"trusted": True}
    with pytest.raises(error, match=words) as info:
        pk.load_bundle(path, **kwargs)
    assert info.value.member == member
    assert str(path) in str(info.value)
    verify_kw = {"key_file": hostile_key} if encrypted else {}
    if error is UntrustedTypeError:  # intact bytes: verify passes and lists what loading would construct
        report = pk.verify(path, **verify_kw)
        assert "builtins.open" in next(m for m in report.members if m.name == member).types
    else:
        with pytest.raises(error):
            pk.verify(path, **verify_kw)
    for where in (work, tmp_path / "work", tmp_path):
        assert not [p.name for p in where.iterdir() if p.name.startswith("pk_sentinel")], where


def _encrypted(path) -> bool:
    try:
        return pk.inspect(path).encrypted
    except Exception:
        return True  # damaged samples were made from the encrypted good bundle


def test_the_good_hostile_base_loads(hostile_key):
    bundle = pk.load_bundle(HOSTILE / "bundle_good.models", key_file=hostile_key)
    assert_same(np.arange(12, dtype=np.float32).reshape(3, 4), bundle["q_table"])


@pytest.mark.parametrize(
    ("sample", "loader"),
    [
        ("bundle_pickle.pkl", "import pickle; pickle.loads(open(PATH, 'rb').read())"),
        ("bundle_malicious.skops", "import skops.io as s; d = open(PATH, 'rb').read(); "
                                   "s.loads(d, trusted=s.get_untrusted_types(data=d))"),
        ("bundle_sb3_cloudpickle.zip", "import warnings; warnings.simplefilter('ignore'); "
                                       "from stable_baselines3 import PPO; PPO.load(PATH)"),
    ],
)  # fmt: skip
def test_code_executing_samples_really_execute_code_in_unsafe_loaders(tmp_path, sample, loader):
    """Positive control: the samples are malicious, so the no-sentinel assertions above mean something."""
    script = f"PATH = {str(HOSTILE / sample)!r}\ntry:\n    {loader}\nexcept Exception:\n    pass\n"
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, capture_output=True, timeout=120)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("pk_sentinel")]


# -- golden files ----------------------------------------------------------------------------


@pytest.fixture
def golden(tmp_path):
    expected = json.loads((GOLDEN / "expected.json").read_text())
    key = tmp_path / "v1_keyfile.models.key"
    shutil.copy(GOLDEN / "v1_keyfile.models.key", key)
    key.chmod(0o600)  # git does not keep the mode
    return expected, key


def _load_quietly(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VersionSkewWarning)  # later library versions are expected here
        return pk.load_bundle(path, **kw)


def _check_array(spec, array):
    import hashlib

    assert str(array.dtype) == spec["dtype"] and list(array.shape) == spec["shape"]
    assert hashlib.sha256(array.tobytes()).hexdigest() == spec["sha256"]


def test_golden_v1_keyfile_bundle_still_loads(golden):
    import gymnasium as gym
    import torch

    expected, key = golden
    bundle = _load_quietly(GOLDEN / "v1_keyfile.models", key_file=key, env=gym.make("CartPole-v1"))
    _check_array(expected["q_table"], bundle["q_table"])
    for k, spec in expected["attention"].items():
        _check_array(spec, bundle["attention"][k])
    assert bundle["settings"] == {
        "ensemble_weights": (0.6, 0.4),
        "threshold": 0.25,
        "symbols": ["BTC-USDT", "ETH-USDT"],
    }
    probe = np.array(expected["signal"]["probe"])
    assert bundle["signal"].predict(probe).tolist() == expected["signal"]["predict"]
    np.testing.assert_allclose(
        bundle["signal"].predict_proba(probe), expected["signal"]["predict_proba"], rtol=1e-12
    )
    for k, values in expected["net"].items():
        assert torch.equal(bundle["net"][k], torch.tensor(values, dtype=torch.float32))
    policy = bundle["policy"]
    assert policy.num_timesteps == expected["policy"]["num_timesteps"]
    actions, _ = policy.predict(
        np.array(expected["policy"]["observations"], dtype=np.float32), deterministic=True
    )
    assert actions.tolist() == expected["policy"]["actions"]
    for k, v in expected["metadata"].items():
        assert bundle.metadata[k] == v
    assert bundle.metadata["config"] == expected["config"]


def test_golden_v1_password_and_plain_bundles_still_load(golden):
    expected, _ = golden
    bundle = _load_quietly(GOLDEN / "v1_password.models", password=expected["password"])
    _check_array(expected["q_table"], bundle["q_table"])
    with pytest.raises(WrongKeyError):
        _load_quietly(GOLDEN / "v1_password.models", password="not it")
    plain = _load_quietly(GOLDEN / "v1_plain.models", trusted=True)
    probe = np.array(expected["signal"]["probe"])
    assert plain["signal"].predict(probe).tolist() == expected["signal"]["predict"]
    with pytest.raises(UntrustedTypeError):
        _load_quietly(GOLDEN / "v1_plain.models")


# -- properties ------------------------------------------------------------------------------

_member_values = st.one_of(
    arrays(max_dims=3, max_side=4),
    st.dictionaries(st.from_regex(r"\A[a-z]{1,6}\Z"), arrays(max_dims=2, max_side=3), min_size=1, max_size=3),
    state_values(max_leaves=8),
    st.binary(max_size=64),
)
_member_names = st.from_regex(r"\A[A-Za-z0-9_.-]{1,12}\Z").filter(lambda n: ".." not in n)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    members=st.dictionaries(_member_names, _member_values, min_size=0, max_size=4),
    meta=metadata(max_size=4),
    encrypt=st.booleans(),
    compression=st.sampled_from(["zstd", "none"]),
)
def test_property_random_bundles_round_trip_exactly(tmp_path_factory, members, meta, encrypt, compression):
    directory = tmp_path_factory.mktemp("prop")
    path = pk.save_bundle(directory / "r.models", members, meta, encrypt=encrypt, compression=compression)
    bundle = pk.load_bundle(path)
    assert list(bundle.models) == list(members)
    for name, value in members.items():
        if isinstance(value, bytearray):
            value = bytes(value)
        assert_same(value, bundle[name], what=name)
    for k, v in meta.items():
        assert bundle.metadata[k] == v
    assert [m.name for m in pk.verify(path).members] == [*members, "metadata"]


# -- crash states ---------------------------------------------------------------------------


@pytest.mark.parametrize("extra_len", [700, 200_000], ids=["small", "streamed"])  # 200,000 floats: > 1 MiB
@pytest.mark.parametrize("model", ["process", "power-loss"])
def test_every_crash_state_of_an_overwrite_holds_the_old_or_the_new_bundle(tmp_path, model, extra_len):
    old = {"q": np.arange(6, dtype=np.float32), "cfg": {"v": 1}}
    new = {"q": np.arange(6, dtype=np.float32) * 2, "cfg": {"v": 2}, "extra": np.ones(extra_len)}
    target = tmp_path / "b.models"
    pk.save_bundle(target, old)
    before = Snapshot.take(tmp_path)
    rec = RecordingFS()
    with use_fs(rec):
        pk.save_bundle(target, new)
    sim = CrashSimulator(before, rec.ops)
    seen = {"old": 0, "new": 0}
    states = 0
    for state in sim.states(model):
        states += 1
        root = state.materialize(tmp_path / f"state-{states}")
        os.chmod(Path(root) / "b.models.key", 0o600)  # the simulator keeps contents, not modes
        bundle = pk.load_bundle(Path(root) / "b.models")  # never torn, never missing, key always beside
        which = "new" if "extra" in bundle.models else "old"
        assert_same(new if which == "new" else old, bundle.models, what=f"{state.description}")
        if state.complete:
            assert which == "new", state.description
        seen[which] += 1
        shutil.rmtree(root)
    assert seen["old"] >= 1 and seen["new"] >= 1
    print(
        f"\n{model}: {states} crash states ({sim.stats.states} explored), old {seen['old']}, new {seen['new']}"
    )


def test_large_encrypted_members_are_streamed_and_verify(tmp_path):
    import zipfile

    from persistkit.bundle import STREAM_THRESHOLD

    w = np.random.default_rng(3).standard_normal(3 * STREAM_THRESHOLD // 8)  # 3 MiB: above the threshold
    path = pk.save_bundle(tmp_path / "big.models", {"w": w, "small": np.arange(4)})
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None  # CRCs from the data descriptors are right
    report = pk.verify(path)  # raises on any damage; reports what it checked
    assert report.encrypted and report.authenticated
    loaded = pk.load_bundle(path)
    assert np.array_equal(loaded["w"], w) and np.array_equal(loaded["small"], np.arange(4))


# -- publishing the key and the bundle as a pair; special files; names ---------------------------------


def _save_same_new_path(path, value, barrier, results):
    import persistkit as pk_child

    barrier.wait()
    try:
        pk_child.save_bundle(path, {"q": np.full(4, float(value))})
        results.put((value, "ok"))
    except Exception as err:  # reported to the parent, which fails the test
        results.put((value, f"{type(err).__name__}: {err}"))


def test_concurrent_saves_to_the_same_new_path_publish_a_key_that_opens_the_bundle(tmp_path):
    import multiprocessing

    from processes import run_workers

    ctx = multiprocessing.get_context("fork")
    trials, problems = 40, []
    for trial in range(trials):
        path = tmp_path / f"t{trial}" / "m.models"
        barrier, results = ctx.Barrier(2), ctx.Queue()
        outcomes = sorted(
            run_workers(ctx, _save_same_new_path, [(path, v, barrier, results) for v in (1, 2)], results)
        )
        if outcomes != [(1, "ok"), (2, "ok")]:
            problems.append(f"trial {trial}: a save failed: {outcomes}")
            continue
        try:
            loaded = pk.load_bundle(path)["q"][0]
        except WrongKeyError:
            problems.append(f"trial {trial}: both saves returned, but the key file does not open the bundle")
            continue
        assert loaded in (1.0, 2.0)
    assert problems == [], f"{len(problems)} of {trials} trials went wrong"


def _save_with_shared_key(path, key_file, barrier, results):
    import persistkit as pk_child

    barrier.wait()
    try:
        pk_child.save_bundle(path, {"q": np.ones(2)}, key_file=key_file)
        results.put("ok")
    except Exception as err:
        results.put(f"{type(err).__name__}: {err}")


def test_concurrent_saves_creating_one_shared_key_file_elsewhere_agree_on_the_key(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    problems = []
    for trial in range(20):
        key = tmp_path / f"keys{trial}" / "shared.key"
        key.parent.mkdir()
        paths = [tmp_path / f"t{trial}" / side / "m.models" for side in ("a", "b")]
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_save_with_shared_key, args=(p, key, barrier, results)) for p in paths]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        if outcomes != ["ok", "ok"]:
            problems.append(f"trial {trial}: {outcomes}")
            continue
        for path in paths:
            try:
                pk.load_bundle(path, key_file=key)
            except WrongKeyError:
                problems.append(f"trial {trial}: the shared key does not open {path}")
    assert problems == []


def test_a_failed_save_leaves_no_new_files(tmp_path):
    with pytest.raises(UnsupportedTypeError):
        pk.save_bundle(tmp_path / "m.models", {"ok": np.ones(2), "bad": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # an existing key file is never removed by a failed save
    keyed = pk.save_bundle(tmp_path / "k.models", {"q": np.ones(2)})
    with pytest.raises(UnsupportedTypeError):
        pk.save_bundle(keyed, {"bad": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.models", "k.models.key"]
    assert pk.load_bundle(keyed)["q"].tolist() == [1.0, 1.0]


_SPECIAL_FILE_SCRIPT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
import persistkit as pk
from persistkit.errors import FormatError
for call in (pk.load_bundle, pk.verify):
    try:
        call(sys.argv[1])
    except FormatError as err:
        assert err.path == sys.argv[1], err.path
        print(type(err).__name__, err)
    except BaseException as err:
        print("UNTYPED", type(err).__name__, err)
"""


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_special_files_are_refused_without_hanging_or_exhausting_memory(tmp_path, kind):
    if kind == "fifo":
        target = tmp_path / "pipe.models"
        os.mkfifo(target)
    else:
        target = Path("/dev/zero")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        out = subprocess.run(
            [sys.executable, "-c", _SPECIAL_FILE_SCRIPT, str(target)],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"load_bundle/verify hung on {kind}")
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("FormatError") for line in lines), out.stdout + out.stderr
    assert "not a regular file" in lines[0]


def test_unknown_member_is_a_typed_key_error(tmp_path, models):
    from persistkit.errors import NotFoundError

    path = pk.save_bundle(tmp_path / "m.models", models)
    with pytest.raises(NotFoundError) as info:
        pk.load_bundle(path, members=["nope"])
    assert isinstance(info.value, KeyError) and info.value.path == str(path) and info.value.member == "nope"
    assert "'q_table'" in str(info.value)


def test_a_legal_long_bundle_name_saves_and_loads(tmp_path):
    name = "m" * 233 + ".models"  # 240 bytes: legal; the key file name (244) is too
    assert len(name) == 240
    path = pk.save_bundle(tmp_path / name, {"q": np.ones(2)})
    assert pk.load_bundle(path)["q"].tolist() == [1.0, 1.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [name, name + ".key"]


def test_a_missing_bundle_says_it_does_not_exist(tmp_path):
    with pytest.raises(PersistIOError) as info:
        pk.load_bundle(tmp_path / "missing.models")
    text = str(info.value)
    assert info.value.errno == 2 and str(tmp_path / "missing.models") in text
    assert "does not exist" in text and "Free space" not in text and "previous copy" not in text


def _tiny_net_class():
    import torch

    class TinyNet(torch.nn.Module):
        def __init__(self, hidden: int = 4) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Linear(3, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
            )

        def forward(self, x):
            return self.body(x)

    return TinyNet


def test_a_torch_module_loads_as_a_module_when_the_caller_says_how_to_build_it(tmp_path):
    import torch

    TinyNet = _tiny_net_class()
    torch.manual_seed(0)
    net, seq = TinyNet(hidden=5), torch.nn.Sequential(torch.nn.Linear(2, 2))
    path = pk.save_bundle(tmp_path / "n.models", {"net": net, "seq": seq})
    bundle = pk.load_bundle(
        path,
        modules={"net": lambda: TinyNet(hidden=5), "seq": lambda: torch.nn.Sequential(torch.nn.Linear(2, 2))},
    )
    assert type(bundle["net"]) is TinyNet and type(bundle["seq"]) is torch.nn.Sequential
    x = torch.randn(4, 3)
    assert torch.equal(bundle["net"](x), net(x))
    assert torch.equal(bundle["seq"][0].weight, seq[0].weight)


def test_a_torch_module_without_a_factory_is_refused_by_name_unless_the_state_dict_is_asked_for(tmp_path):
    import torch

    TinyNet = _tiny_net_class()
    net = TinyNet()
    path = pk.save_bundle(tmp_path / "n.models", {"net": net})
    with pytest.raises(
        pk.UntrustedTypeError,
        match=r"n\.models:net holds a torch module of class .*TinyNet.*modules=\{'net': TinyNet\}.*as_state_dict=True",
    ) as info:
        pk.load_bundle(path)
    assert info.value.member == "net" and info.value.types[0].endswith("TinyNet")
    state = pk.load_bundle(path, as_state_dict=True)["net"]
    assert set(state) == set(net.state_dict())
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


def test_a_factory_building_another_architecture_is_a_format_error_naming_the_member(tmp_path):
    TinyNet = _tiny_net_class()
    path = pk.save_bundle(tmp_path / "n.models", {"net": TinyNet(hidden=5)})
    with pytest.raises(pk.FormatError, match=r"do not fit the module") as info:
        pk.load_bundle(path, modules={"net": TinyNet})  # hidden=4 by default
    assert info.value.member == "net"


def test_metadata_takes_what_state_takes_and_keeps_its_types(tmp_path, models):
    import datetime as dt
    import decimal
    import uuid

    when = dt.datetime(2026, 11, 24, 15, 0, tzinfo=dt.UTC)
    metadata = {
        "trained_until": when,
        "window": dt.timedelta(days=30),
        "fee": decimal.Decimal("0.001"),
        "run": uuid.UUID(int=7),
        "shape": (3, 4),
        "sharpe": np.float32(1.25),
        "thresholds": np.array([0.1, 0.2]),
    }
    got = pk.load_bundle(
        pk.save_bundle(tmp_path / "x.models", models, metadata=metadata, config={"since": when})
    ).metadata
    for key, value in metadata.items():
        assert_same(value, got[key], what=key)
    assert got["config"] == {"since": when}
    manifest = pk.inspect(tmp_path / "x.models")
    assert [m.codec for m in manifest.members if m.role == "metadata"] == ["tree"]


def test_a_model_in_metadata_is_refused_with_a_pointer_to_members(tmp_path, models):
    from sklearn.preprocessing import StandardScaler

    with pytest.raises(
        UnsupportedTypeError, match=r"metadata\['scaler'\].*store models as bundle members"
    ) as info:
        pk.save_bundle(tmp_path / "x.models", models, metadata={"scaler": StandardScaler()})
    assert info.value.field == "metadata['scaler']"
    assert not (tmp_path / "x.models").exists()


def test_a_torch_module_inside_a_value_is_refused_unless_its_state_dict_is_asked_for(tmp_path):
    import torch

    net = torch.nn.Linear(2, 1)
    path = pk.save_bundle(tmp_path / "n.models", {"parts": {"head": net, "n": 1}})
    with pytest.raises(
        pk.UntrustedTypeError, match=r"torch module .*Linear.*inside a value.*as_state_dict=True"
    ) as info:
        pk.load_bundle(path)
    assert info.value.member == "parts"
    parts = pk.load_bundle(path, as_state_dict=True)["parts"]
    assert parts["n"] == 1 and torch.equal(parts["head"]["weight"], net.weight)
