"""persistkit.keys: a key file beside a bundle (or a key passed) means "this must be encrypted with this key"."""

from __future__ import annotations

import errno
import shutil

import numpy as np
import pytest

import persistkit as pk
from persistkit import keys
from persistkit.errors import IntegrityError, PersistIOError, WrongKeyError
from persistkit.keys import read_key_file, write_key_file
from persistkit.model_store import ModelStore

WHERE = {"symbol": "BTC/USDT", "agent": "ppo", "timeframe": "1h"}


def forge_plain_over(path, tmp_path):
    """An attacker replaces an encrypted bundle with a plain one of their own (keeping the key file)."""
    forged = pk.save_bundle(tmp_path / "forged" / "f.models", {"q": np.full(3, 666.0)}, encrypt=False)
    shutil.copyfile(forged, path)


def test_forged_plain_bundle_beside_the_default_key_is_refused_by_load_and_verify(tmp_path):
    path = pk.save_bundle(tmp_path / "m.models", {"q": np.ones(3)})
    assert (tmp_path / "m.models.key").exists()
    forge_plain_over(path, tmp_path)
    with pytest.raises(IntegrityError, match="forged plain one") as info:
        pk.load_bundle(path)
    assert info.value.path == str(path) and str(tmp_path / "m.models.key") in str(info.value)
    with pytest.raises(IntegrityError, match="forged plain one"):
        pk.verify(path)


def test_forged_plain_bundle_is_refused_by_model_store_load_and_load_latest(tmp_path):
    store = ModelStore(tmp_path / "models")
    path = store.save({"q": np.ones(3)}, **WHERE)
    store.tag(path, "production")
    forge_plain_over(path, tmp_path)
    with pytest.raises(IntegrityError, match="forged plain one"):
        store.load("production")
    with pytest.raises(IntegrityError, match="forged plain one"):
        store.load(path)
    with pytest.raises(IntegrityError, match="forged plain one"):
        store.load_latest(**WHERE)


def test_plain_bundle_without_a_key_file_still_loads(tmp_path):
    path = pk.save_bundle(tmp_path / "p.models", {"q": np.ones(3)}, encrypt=False)
    assert not pk.verify(path).encrypted
    assert pk.load_bundle(path)["q"].tolist() == [1.0, 1.0, 1.0]


def test_the_decision_lives_in_one_place(tmp_path):
    target = tmp_path / "b.models"
    assert not keys.for_load(target).required
    keys.write_key_file(keys.default_key_path(target))
    choice = keys.for_load(target)
    assert choice.required and choice.key is not None
    assert keys.for_load(target, password="pw").required
    assert pk.bundle.default_key_path is keys.default_key_path  # compatibility re-export


@pytest.mark.parametrize("password", ["", "bad\udc80surrogate"])
def test_unusable_passwords_are_typed_errors(tmp_path, password):
    with pytest.raises(WrongKeyError) as info:
        pk.save_bundle(tmp_path / "x.models", {"q": np.ones(1)}, password=password)
    assert info.value.field == "password" and "password" in str(info.value)
    assert list(tmp_path.iterdir()) == []
    good = pk.save_bundle(tmp_path / "y.models", {"q": np.ones(1)}, password="right")
    with pytest.raises(WrongKeyError):
        pk.load_bundle(good, password=password)


def test_a_store_that_saved_encrypted_refuses_a_plain_version_even_without_a_key_beside(tmp_path):
    store = ModelStore(tmp_path / "models")
    path = store.save({"q": np.ones(3)}, **WHERE, password="pw")  # no key file beside: a password
    assert store.encrypted
    forge_plain_over(path, tmp_path)
    with pytest.raises(IntegrityError, match="saves encrypted bundles"):
        store.load_latest(**WHERE)
    with pytest.raises(IntegrityError, match="saves encrypted bundles"):
        store.load(path)
    with pytest.raises(ValueError, match="saves encrypted bundles"):
        store.save({"q": np.ones(3)}, **WHERE, encrypt=False)


def test_a_plain_store_stays_plain(tmp_path):
    store = ModelStore(tmp_path / "models")
    path = store.save({"q": np.ones(3)}, **WHERE, encrypt=False)
    assert not store.encrypted and not (tmp_path / "models" / "store.json").exists()
    assert store.load(path)["q"].tolist() == [1.0, 1.0, 1.0]


def test_writers_racing_to_create_one_key_file_get_one_winner_and_its_key(tmp_path):
    """Eight threads create the same key file at once: one key is published and kept, the rest get EEXIST.

    Before, each checked that the file was missing, then renamed its own key over the others': a
    writer could seal with a key whose file was replaced a moment later (a lost key is lost data).
    """
    import threading

    target = tmp_path / "shared.key"
    for attempt in range(5):
        barrier = threading.Barrier(8)
        won, refused = [], []

        def create():
            barrier.wait()
            try:
                won.append(write_key_file(target))
            except PersistIOError as err:
                refused.append(err)

        threads = [threading.Thread(target=create) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, f"attempt {attempt}: {len(won)} writers each published a key"
        assert len(refused) == 7 and all(e.errno == errno.EEXIST for e in refused)
        assert all("already exists" in str(e) and str(target) in str(e) for e in refused)
        assert read_key_file(target).fingerprint == won[0].fingerprint
        assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.key"]  # no temp left behind
        target.unlink()


def test_a_key_file_is_never_seen_half_written_by_a_crash(crash_points, tmp_path):
    """The exclusive publish (temp, fsync, hard link, unlink temp, directory fsync) under both crash models."""
    target = tmp_path / "crash.key"

    def load():
        return read_key_file(target).fingerprint if target.exists() else None

    for model in ("process", "power-loss"):
        if target.exists():
            target.unlink()
        report = crash_points(lambda: write_key_file(target), load, model=model)
        assert report.states > 0 and any(op.split()[1:2] == ["link"] for op in report.operations), report
        assert load() is not None  # the save left its key in place
