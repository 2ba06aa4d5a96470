"""persistkit.keys: a key file beside a bundle (or a key passed) means "this must be encrypted with this key"."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import persistkit as pk
from persistkit import keys
from persistkit.errors import IntegrityError, WrongKeyError
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
