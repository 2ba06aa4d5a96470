from __future__ import annotations

import base64
import os
import pickle

import pytest

from persistkit.errors import FormatError, IntegrityError, PersistIOError, WrongKeyError
from persistkit.format import crypto
from persistkit.format.crypto import InsecureKeyFileWarning, KdfParams, Key

FAST = KdfParams(n=2**15)


def test_segments_roundtrip_and_bind_aad():
    key, salt = Key.generate(), crypto.new_salt()
    data = os.urandom(100_000)
    parts = crypto.encrypt_segments(key, salt, data, b"aad", segment=4096)
    assert len(parts) == 25
    ct = memoryview(b"".join(parts))
    assert crypto.decrypt_segments(key, salt, ct, b"aad", len(data), segment=4096) == data
    with pytest.raises(IntegrityError, match="segment 0"):
        crypto.decrypt_segments(key, salt, ct, b"other aad", len(data), segment=4096)


def test_reordered_or_dropped_segments_are_detected():
    key, salt = Key.generate(), crypto.new_salt()
    data = os.urandom(3 * 4096)
    a, b, c = crypto.encrypt_segments(key, salt, data, b"", segment=4096)
    with pytest.raises(IntegrityError):
        crypto.decrypt_segments(key, salt, memoryview(b + a + c), b"", len(data), segment=4096)
    # drop the last segment and claim a shorter plaintext: the last-segment flag catches it
    with pytest.raises(IntegrityError):
        crypto.decrypt_segments(key, salt, memoryview(a + b), b"", 2 * 4096, segment=4096)


def test_no_nonce_reuse_across_100k_encryptions():
    """Every (data key, nonce) pair is fresh: data keys come from a random salt per file."""
    from persistkit.format.envelope import read_header, seal

    key = Key.generate()
    pairs = set()
    count = 0
    for i in range(100_000):
        sealed = seal(b"x" * (i % 7), kind="t", codec="c", key=key, compression="none")
        enc = read_header(sealed).enc
        segments = max(1, -(-(i % 7) // enc["segment"]))
        for index in range(segments):
            pairs.add((enc["salt"], index))
            count += 1
    assert len(pairs) == count == 100_000


def test_key_check_tells_wrong_key_apart():
    key, other, salt = Key.generate(), Key.generate(), crypto.new_salt()
    check = crypto.key_check(key, salt)
    crypto.check_key(key, salt, check, "f")
    with pytest.raises(WrongKeyError, match="does not open"):
        crypto.check_key(other, salt, check, "f")


def test_password_derivation_is_cached_and_floor_enforced():
    salt = crypto.new_salt()
    k1 = Key.from_password("correct horse", salt=salt, params=FAST)
    assert Key.from_password("correct horse", salt=salt, params=FAST) is k1
    assert Key.from_password("wrong", salt=salt, params=FAST) != k1
    with pytest.raises(IntegrityError, match="downgrade refused"):
        KdfParams(n=2**10).check("f")
    with pytest.raises(FormatError, match="MiB"):
        KdfParams(n=2**24).check("f")
    with pytest.raises(FormatError, match="invalid"):
        KdfParams(n=3 * 2**15).check("f")


def test_key_material_never_in_repr_or_pickle():
    key = Key.generate()
    b64 = base64.b64encode(key.material()).decode()
    for text in (repr(key), str(key), f"{key}", repr([key])):
        assert key.material().hex() not in text and b64 not in text
    with pytest.raises(TypeError):
        pickle.dumps(key)


def test_key_file_created_0600_and_read_back(tmp_path):
    path = tmp_path / "k.key"
    key = crypto.write_key_file(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert crypto.read_key_file(path) == key
    assert path.read_bytes().endswith(b"\n") and len(base64.b64decode(path.read_bytes())) == 32


def test_key_file_never_overwritten(tmp_path):
    path = tmp_path / "k.key"
    key = crypto.write_key_file(path)
    with pytest.raises(PersistIOError, match="refusing to overwrite") as info:
        crypto.write_key_file(path)
    assert info.value.errno == 17
    assert crypto.read_key_file(path) == key


def test_insecure_key_file_warns_or_fails(tmp_path):
    path = tmp_path / "k.key"
    crypto.write_key_file(path)
    os.chmod(path, 0o644)
    with pytest.warns(InsecureKeyFileWarning, match="chmod 600"):
        crypto.read_key_file(path)
    with pytest.raises(PersistIOError, match="readable by group or others"):
        crypto.read_key_file(path, on_insecure="error")
    crypto.read_key_file(path, on_insecure="ignore")


def test_missing_and_malformed_key_files(tmp_path):
    with pytest.raises(PersistIOError, match="looked for") as info:
        crypto.read_key_file(tmp_path / "nope.key")
    assert str(tmp_path / "nope.key") in str(info.value)
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"not base64 at all!!\n")
    os.chmod(bad, 0o600)
    with pytest.raises(FormatError, match="not a persistkit key file"):
        crypto.read_key_file(bad)
    short = tmp_path / "short.key"
    short.write_bytes(base64.b64encode(b"x" * 16))
    os.chmod(short, 0o600)
    with pytest.raises(FormatError):
        crypto.read_key_file(short)


def test_errors_never_contain_key_or_password(tmp_path):
    key = Key.generate()
    secret_texts = [key.material().hex(), base64.b64encode(key.material()).decode(), "hunter2-secret"]
    from persistkit.format.envelope import open_envelope, seal

    sealed = seal(b"x" * 100, kind="t", codec="c", password="hunter2-secret", kdf=FAST)
    messages = []
    for attempt in (
        lambda: open_envelope(sealed, key=key),
        lambda: open_envelope(sealed, password="wrong-password"),
        lambda: open_envelope(seal(b"y", kind="t", codec="c", key=key), key=Key.generate()),
        lambda: open_envelope(seal(b"y", kind="t", codec="c", key=key)[:-1], key=key),
    ):
        with pytest.raises((WrongKeyError, IntegrityError)) as info:
            attempt()
        messages.append(str(info.value) + repr(info.value))
    for message in messages:
        for secret in secret_texts:
            assert secret not in message
