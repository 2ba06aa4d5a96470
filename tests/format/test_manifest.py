"""The bundle manifest: strict parsing, key check, MAC over the exact bytes."""

from __future__ import annotations

import json

import pytest

from persistkit.errors import FormatError, IntegrityError, WrongKeyError
from persistkit.format import manifest as mf
from persistkit.format.crypto import KdfParams, Key

SOURCE = "x.models"


def sample(encryption=None) -> mf.Manifest:
    entry = mf.MemberEntry(
        "q", "model", mf.member_file("q"), "numpy", "none", 8, 400, "0" * 32, "1" * 32, {"shape": [1]}
    )
    meta = mf.MemberEntry(
        "metadata", "metadata", mf.METADATA_FILE, "json", "zstd", 2, 300, "2" * 32, "3" * 32
    )
    return mf.Manifest(
        "a" * 32, "2024-01-01T00:00:00+00:00", {"numpy": "2.0", "torch": None}, encryption, (entry, meta)
    )


def test_round_trip_is_exact():
    key = Key.generate()
    manifest = sample(mf.new_key_info(key))
    data = mf.encode(manifest)
    back = mf.decode(data, source=SOURCE)
    assert back.members == manifest.members and back.encryption == manifest.encryption
    assert back.member("q").info == {"shape": [1]}
    assert mf.encode(back) == data


def test_mac_covers_the_exact_bytes_and_needs_the_key():
    key = Key.generate()
    info = mf.new_key_info(key)
    data = mf.encode(sample(info))
    auth = mf.auth_record(data, master=key, info=info)
    mac = mf.check_digest(data, auth, source=SOURCE)
    mf.check_auth(data, mac, master=key, info=info, source=SOURCE)
    edited = data.replace(b'"numpy"', b'"npy__"', 1)
    with pytest.raises(IntegrityError, match="digest mismatch"):
        mf.check_digest(edited, auth, source=SOURCE)
    forged = mf.auth_record(edited)  # a forger can recompute the unkeyed digest, not the MAC
    forged_auth = json.dumps(
        {"digest": json.loads(forged)["digest"], "mac": json.loads(auth)["mac"]}
    ).encode()
    mac = mf.check_digest(edited, forged_auth, source=SOURCE)
    with pytest.raises(IntegrityError, match="manifest authentication failed") as info_:
        mf.check_auth(edited, mac, master=key, info=info, source=SOURCE)
    assert info_.value.member == "manifest"


def test_open_key_tells_wrong_keys_from_tampering():
    key = Key.generate()
    info = mf.new_key_info(key)
    assert mf.open_key(info, key=key, source=SOURCE) == key
    with pytest.raises(
        WrongKeyError, match=r"\(fingerprint [0-9a-f]+\) does not open x\.models.*Pass the key file"
    ):
        mf.open_key(info, key=Key.generate(), source=SOURCE)
    with pytest.raises(WrongKeyError, match="pass key_file="):
        mf.open_key(info, source=SOURCE)
    with pytest.raises(WrongKeyError, match="sealed with a key file, not a password"):
        mf.open_key(info, password="pw", source=SOURCE)


def test_password_keys_record_kdf_and_refuse_downgrades():
    key = Key.from_password("pw", params=KdfParams.floor())
    info = mf.new_key_info(key)
    assert info.key_source == "password" and info.kdf == KdfParams.floor()
    assert mf.open_key(info, password="pw", source=SOURCE) == key
    with pytest.raises(WrongKeyError, match="password does not open"):
        mf.open_key(info, password="nope", source=SOURCE)
    weak = mf.KeyInfo("password", info.salt, info.check, KdfParams(2**10, 8, 1), info.kdf_salt)
    with pytest.raises(IntegrityError, match="downgrade refused"):
        mf.open_key(weak, password="pw", source=SOURCE)


def _mutate(fn):
    doc = json.loads(mf.encode(sample()))
    fn(doc)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("mutation", "error", "words"),
    [
        (lambda d: d.update(version=2), FormatError, "newer persistkit"),
        (lambda d: d.update(format="other"), FormatError, "not a persistkit bundle"),
        (lambda d: d.update(extra=1), IntegrityError, "fields"),
        (lambda d: d.update(bundle_id="xyz"), IntegrityError, "bundle_id"),
        (lambda d: d["members"][0].update(plain_len=-1), IntegrityError, "member 'q'"),
        (lambda d: d["members"][0].update(file="../q.pke"), IntegrityError, "member 'q'"),
        (lambda d: d["members"].append(d["members"][0]), IntegrityError, "listed twice"),
        (lambda d: d.update(encryption={"alg": "ROT13", "key": "key", "kdf": None, "salt": "", "check": ""}),
         FormatError, "ROT13"),
    ],
)  # fmt: skip
def test_malformed_manifests(mutation, error, words):
    with pytest.raises(error, match=words):
        mf.decode(_mutate(mutation), source=SOURCE)


def test_not_json_is_damage():
    with pytest.raises(IntegrityError, match="not valid JSON"):
        mf.decode(b"\xff{", source=SOURCE)
