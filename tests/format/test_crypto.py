from __future__ import annotations

import base64
import errno
import os
import pickle
import time

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from persistkit import keys
from persistkit.errors import FormatError, IntegrityError, PersistIOError, PersistkitError, WrongKeyError
from persistkit.format import crypto
from persistkit.format.crypto import Cipher, Encryption, KdfParams, Key
from persistkit.format.envelope import open_envelope, read_header, seal
from persistkit.io import LocalFS, use_fs
from persistkit.keys import InsecureKeyFileWarning
from persistkit.testing.fs.recordfs import RecordingFS

FAST = KdfParams.floor()


def data_key(master: Key, salt: bytes) -> bytes:
    """The documented derivation, computed independently of persistkit."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"persistkit data key v1").derive(
        master.material()
    )


# -- keys ----------------------------------------------------------------------------


def test_key_repr_shows_a_fingerprint_never_material():
    key = Key.generate()
    secrets = secret_forms(key)
    for text in (repr(key), str(key), f"{key}", repr([key]), repr({"k": key})):
        assert "fingerprint=" in text
        assert not any(s in text for s in secrets), text
    assert key.fingerprint in repr(key) and len(key.fingerprint) == 8
    assert key == Key(key.material()) and key != Key.generate()
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(key)
    with pytest.raises(ValueError) as info:
        Key(key.material()[:31])
    assert not any(s in str(info.value) for s in secret_forms(key))


def test_password_derivation_is_cached_per_password_salt_and_params():
    salt = crypto.new_salt()
    k1 = Key.from_password("correct horse", salt=salt, params=FAST)
    assert Key.from_password("correct horse", salt=salt, params=FAST) is k1
    assert Key.from_password("correct horse", salt=crypto.new_salt(), params=FAST) != k1
    assert Key.from_password("wrong horse", salt=salt, params=FAST) != k1
    assert k1.origin == (FAST, salt) and k1.source == "password"


def test_sealing_without_a_salt_reuses_one_salt_per_password_so_it_derives_once():
    a = Key.from_password("bundle password", params=FAST)
    b = Key.from_password("bundle password", params=FAST)
    assert a is b  # one scrypt run for every member sealed in this process
    assert Key.from_password("other password", params=FAST).origin[1] != a.origin[1]


def test_password_is_nfc_normalised():
    salt = crypto.new_salt()
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert Key.from_password(composed, salt=salt, params=FAST) == Key.from_password(
        decomposed, salt=salt, params=FAST
    )
    with pytest.raises(ValueError, match="empty"):
        Key.from_password("", salt=salt, params=FAST)


def test_default_kdf_is_owasp_scrypt_and_the_floor_is_fast_enough_for_tests():
    assert (KdfParams().n, KdfParams().r, KdfParams().p) == (2**17, 8, 1)
    assert KdfParams(n=2**15, r=8, p=1) == FAST
    crypto.clear_key_cache()
    start = time.perf_counter()
    Key.from_password("timing", salt=crypto.new_salt(), params=FAST)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        (KdfParams(n=2**10), IntegrityError, "below the floor: downgrade refused"),
        (KdfParams(n=2**15, r=4), IntegrityError, "below the floor: downgrade refused"),
        (KdfParams(n=2**15, p=0), IntegrityError, "invalid"),
        (KdfParams(n=3 * 2**15), IntegrityError, "invalid"),
        (KdfParams(n=2**23), FormatError, "refuses more than"),
        (KdfParams(n=2**20, r=16), FormatError, "2048 MiB"),
        (KdfParams(n=2**15, p=17), FormatError, "refuses more than"),
    ],
    ids=["n-low", "r-low", "p-zero", "n-not-pow2", "n-huge", "memory-huge", "p-huge"],
)
def test_kdf_params_floor_and_ceiling(params, error, match):
    with pytest.raises(error, match=match):
        params.check("models/a.pkb")
    with pytest.raises(error):  # nobody can derive (or seal with) such a key
        Key.from_password("pw", salt=crypto.new_salt(), params=params)
    KdfParams().check("x")
    KdfParams(n=2**20, r=8).check("x")  # exactly 1 GiB is allowed


# -- the segmented cipher ------------------------------------------------------------


def test_cipher_roundtrip_across_segments_and_aad_binding():
    master = Key.generate()
    enc, cipher = crypto.new_encryption(master, segment=1024)
    data = os.urandom(5000)  # 5 segments, the last one partial
    out = bytearray(cipher.sealed_size(len(data)))
    assert len(out) == 5000 + 5 * 16
    cipher.encrypt_into(memoryview(data), b"aad", memoryview(out))
    opened = crypto.open_encryption(enc, key=master, password=None, source="f")
    assert bytes(opened.decrypt(memoryview(out), b"aad", len(data), source="f")) == data
    with pytest.raises(IntegrityError, match="segment 0 of 5"):
        opened.decrypt(memoryview(out), b"other aad", len(data), source="f")


def test_the_documented_nonces_and_data_key_are_the_real_ones():
    master = Key.generate()
    enc, cipher = crypto.new_encryption(master, segment=1024)
    data = os.urandom(2500)
    out = bytearray(cipher.sealed_size(len(data)))
    cipher.encrypt_into(memoryview(data), b"hdr", memoryview(out))
    aead = AESGCM(data_key(master, enc.salt))
    segs = [bytes(out[0:1040]), bytes(out[1040:2080]), bytes(out[2080:])]
    plain = b"".join(
        aead.decrypt(i.to_bytes(8, "big") + (1 if i == 2 else 0).to_bytes(4, "big"), s, b"hdr")
        for i, s in enumerate(segs)
    )
    assert plain == data
    assert crypto.nonce(2, True) == bytes(8)[:-1] + b"\x02" + b"\x00\x00\x00\x01"


def test_reordered_dropped_or_foreign_segments_are_detected():
    master = Key.generate()
    _, cipher = crypto.new_encryption(master, segment=1024)
    data = os.urandom(3 * 1024)
    out = bytearray(cipher.sealed_size(len(data)))
    cipher.encrypt_into(memoryview(data), b"", memoryview(out))
    a, b, c = out[:1040], out[1040:2080], out[2080:]
    with pytest.raises(IntegrityError, match="segment 0"):
        cipher.decrypt(memoryview(b + a + c), b"", len(data), source="f")
    # Cut at a segment boundary and claim the shorter length: segment 1 was not flagged last.
    with pytest.raises(IntegrityError, match="segment 1 of 2"):
        cipher.decrypt(memoryview(a + b), b"", 2048, source="f")
    # A segment from another object under the same master key: another data key.
    _, other = crypto.new_encryption(master, segment=1024)
    out2 = bytearray(other.sealed_size(len(data)))
    other.encrypt_into(memoryview(data), b"", memoryview(out2))
    with pytest.raises(IntegrityError, match="segment 1"):
        cipher.decrypt(memoryview(a + out2[1040:2080] + c), b"", len(data), source="f")


def test_empty_plaintext_is_one_authenticated_segment():
    master = Key.generate()
    _, cipher = crypto.new_encryption(master, segment=1024)
    out = bytearray(cipher.sealed_size(0))
    assert len(out) == 16
    cipher.encrypt_into(memoryview(b""), b"a", memoryview(out))
    assert cipher.decrypt(memoryview(out), b"a", 0, source="f") == b""
    out[3] ^= 1
    with pytest.raises(IntegrityError):
        cipher.decrypt(memoryview(out), b"a", 0, source="f")


def test_no_key_nonce_pair_repeats_across_100k_encryptions(record_property):
    """10**5 seals under ONE master key; every (data key, nonce) pair is fresh.

    Data keys and nonces are recomputed from the headers with the documented
    derivations (independently of persistkit). A sample is decrypted with them,
    which shows they are the pairs actually used.
    """
    master = Key.generate()
    start = time.perf_counter()
    pairs: set[tuple[bytes, bytes]] = set()
    used = 0
    sample = []
    for i in range(100_000):
        payload = bytes([i % 251]) * (i % 3000)  # 1 to 3 segments of 1 KiB
        sealed = seal(payload, kind="t", codec="c", key=master, compression="none", segment=1024)
        enc = read_header(sealed).encryption
        dkey = data_key(master, enc.salt)
        count = max(1, -(-len(payload) // 1024))
        for index in range(count):
            pairs.add((dkey, index.to_bytes(8, "big") + (index == count - 1).to_bytes(4, "big")))
            used += 1
        if i % 5000 == 0:
            sample.append((sealed, dkey, payload))
    assert used > 150_000 and len(pairs) == used
    for sealed, dkey, payload in sample:
        h = read_header(sealed)
        start_at = 14 + h.header_len + 8
        body = sealed[start_at : start_at + min(h.payload_len, 1040)]
        last = h.payload_len <= 1040
        nonce0 = bytes(8) + (1 if last else 0).to_bytes(4, "big")
        assert AESGCM(dkey).decrypt(nonce0, body, sealed[:start_at]) == payload[:1024]
    elapsed = time.perf_counter() - start
    record_property("nonce_pairs", used)
    print(f"\n{used} (data key, nonce) pairs from 100000 seals, all distinct ({elapsed:.1f} s)")


def test_wrong_key_is_told_apart_from_tampering():
    master = Key.generate()
    enc, _ = crypto.new_encryption(master, segment=1024)
    with pytest.raises(WrongKeyError, match=r"does not open models/x\.pkb"):
        crypto.open_encryption(enc, key=Key.generate(), password=None, source="models/x.pkb")
    with pytest.raises(WrongKeyError, match="pass key_file="):
        crypto.open_encryption(enc, key=None, password=None, source="f")
    with pytest.raises(WrongKeyError, match="key file, not a password"):
        crypto.open_encryption(enc, key=None, password="pw", source="f")
    assert isinstance(crypto.open_encryption(enc, key=master, password=None, source="f"), Cipher)


def test_encryption_header_entry_roundtrips_and_rejects_junk():
    master = Key.from_password("pw", salt=crypto.new_salt(), params=FAST)
    enc, _ = crypto.new_encryption(master)
    assert enc.key_source == "password" and enc.kdf == FAST
    assert Encryption.from_header(enc.to_header(), source="f") == enc
    for edit in (
        lambda h: h.update(salt=b"short"),
        lambda h: h.update(check=123),
        lambda h: h.update(segment=10),
        lambda h: h.update(key="rot13"),
        lambda h: h.update(extra=1),
        lambda h: h["kdf"].update(n="big"),
        lambda h: h.update(kdf=None),
    ):
        entry = enc.to_header()
        entry["kdf"] = dict(entry["kdf"])
        edit(entry)
        with pytest.raises(IntegrityError, match="malformed encryption"):
            Encryption.from_header(entry, source="f")
    with pytest.raises(FormatError, match="upgrade persistkit"):
        Encryption.from_header({**enc.to_header(), "alg": "XChaCha20"}, source="f")


# -- key files -----------------------------------------------------------------------


def test_key_file_is_created_0600_through_the_io_layer(tmp_path):
    path = tmp_path / "bot.key"
    with use_fs(RecordingFS()) as rec:
        key = keys.write_key_file(path)
    kinds = [op.kind for op in rec.ops]
    assert {"create", "write", "fsync", "link", "unlink", "fsync_dir"} <= set(kinds)  # published without replacing
    assert (path.stat().st_mode & 0o777) == 0o600
    content = path.read_bytes()
    assert content.endswith(b"\n") and content.count(b"\n") == 1 and len(content) == 45
    assert base64.b64decode(content.rstrip(b"\n"), validate=True) == key.material()
    assert keys.read_key_file(path) == key
    assert "key file" in key.source and str(path) in key.source


def test_key_file_is_read_through_the_io_layer(tmp_path):
    path = tmp_path / "bot.key"
    keys.write_key_file(path)
    seen = []

    class ReadLog(LocalFS):
        def read_bytes(self, p):
            seen.append(("read", os.fspath(p)))
            return super().read_bytes(p)

        def stat(self, p, *, follow_symlinks=True):
            seen.append(("stat", os.fspath(p)))
            return super().stat(p, follow_symlinks=follow_symlinks)

    with use_fs(ReadLog()):
        keys.read_key_file(path)
    assert ("read", str(path)) in seen and ("stat", str(path)) in seen


def test_existing_key_file_is_never_overwritten(tmp_path):
    path = tmp_path / "k.key"
    key = keys.write_key_file(path)
    before = path.read_bytes()
    with pytest.raises(PersistIOError, match="refusing to overwrite") as info:
        keys.write_key_file(path, Key.generate())
    assert info.value.errno == errno.EEXIST
    assert "Delete it" in str(info.value) and "another path" in str(info.value)
    assert path.read_bytes() == before and keys.read_key_file(path) == key


def test_explicit_key_can_be_written(tmp_path):
    key = Key.generate()
    assert keys.write_key_file(tmp_path / "k.key", key) == key


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_insecure_key_file_warns_fails_or_is_ignored(tmp_path, mode):
    path = tmp_path / "k.key"
    key = keys.write_key_file(path)
    os.chmod(path, mode)
    with pytest.warns(InsecureKeyFileWarning, match="chmod 600"):
        assert keys.read_key_file(path) == key
    with pytest.raises(PersistIOError, match="readable by group or others") as info:
        keys.read_key_file(path, on_insecure="error")
    assert str(path) in str(info.value)
    assert keys.read_key_file(path, on_insecure="ignore") == key  # and no warning (warnings are errors)


def test_missing_key_file_names_the_path_looked_at(tmp_path):
    with pytest.raises(PersistIOError, match="looked for") as info:
        keys.read_key_file(tmp_path / "nope.key")
    assert str(tmp_path / "nope.key") in str(info.value)
    assert info.value.errno == errno.ENOENT and info.value.path == str(tmp_path / "nope.key")


@pytest.mark.parametrize(
    "content",
    [
        b"not base64 at all!!\n",
        base64.b64encode(b"x" * 16) + b"\n",
        base64.b64encode(b"x" * 33) + b"\n",
        b"",
        b"A" * 5000,
    ],
    ids=["garbage", "short", "long", "empty", "huge"],
)
def test_malformed_key_file_is_a_format_error_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(FormatError, match="not a persistkit key file") as info:
        keys.read_key_file(path)
    assert str(path) in str(info.value)


def test_a_directory_is_not_a_key_file(tmp_path):
    with pytest.raises(FormatError, match="not a regular file"):
        keys.read_key_file(tmp_path)


# -- secrets never leak --------------------------------------------------------------


def secret_forms(key: Key, *extra: str) -> list[str]:
    m = key.material()
    forms = [
        m.hex(),
        m.hex().upper(),
        base64.b64encode(m).decode(),
        base64.b64encode(m).decode()[:20],
        repr(m),
    ]
    forms += [m[:12].decode("latin-1"), *extra]
    return forms


def all_text(err: BaseException) -> str:
    parts = []
    while err is not None:
        parts += [str(err), repr(err), repr(err.args), repr(getattr(err, "__dict__", {}))]
        err = err.__cause__ or err.__context__
    return "\n".join(parts)


def test_key_material_and_passwords_never_appear_in_errors(tmp_path):
    password = "hunter2-very-secret"
    key = Key.generate()
    pw_key = Key.from_password(password, salt=crypto.new_salt(), params=FAST)
    sealed_pw = seal(b"x" * 100, kind="t", codec="c", password=password, kdf=FAST)
    sealed_key = seal(b"y" * 100, kind="t", codec="c", key=key)
    tampered = bytearray(sealed_key)
    tampered[-20] ^= 1
    key_path = tmp_path / "k.key"
    keys.write_key_file(key_path, key)
    near_key = tmp_path / "near.key"  # a damaged copy of the real key file
    near_key.write_bytes(base64.b64encode(key.material())[:-2] + b"!!\n")
    os.chmod(near_key, 0o600)
    loose = tmp_path / "loose.key"
    keys.write_key_file(loose, key)
    os.chmod(loose, 0o644)
    attempts = [
        lambda: open_envelope(sealed_pw, key=key),
        lambda: open_envelope(sealed_pw, key=pw_key),
        lambda: open_envelope(sealed_pw, password="wrong-password"),
        lambda: open_envelope(sealed_pw),
        lambda: open_envelope(sealed_key, key=Key.generate()),
        lambda: open_envelope(sealed_key, password=password),
        lambda: open_envelope(sealed_key[:-1], key=key),
        lambda: open_envelope(bytes(tampered), key=key),
        lambda: open_envelope(forge_checksums(bytes(tampered)), key=key),
        lambda: keys.write_key_file(key_path, key),
        lambda: keys.read_key_file(near_key),
        lambda: keys.read_key_file(loose, on_insecure="error"),
    ]
    texts = [repr(key), repr(pw_key), repr(read_header(sealed_pw)), repr(open_envelope(sealed_key, key=key))]
    for attempt in attempts:
        with pytest.raises(PersistkitError) as info:
            attempt()
        texts.append(all_text(info.value))
    with pytest.warns(InsecureKeyFileWarning) as record:
        keys.read_key_file(loose)
    texts += [str(w.message) for w in record]
    for text in texts:
        for secret in secret_forms(key, password) + secret_forms(pw_key):
            assert secret not in text, text


def forge_checksums(data: bytes) -> bytes:
    """Recompute the envelope's trailer, as a forger would (the header check is left as is)."""
    import xxhash

    return data[:-16] + xxhash.xxh3_128_digest(data[:-16])


def test_key_file_helpers_moved_to_keys_stay_importable_from_crypto():
    for name in ("read_key_file", "write_key_file", "InsecureKeyFileWarning", "KEY_FILE_MAX_BYTES"):
        assert getattr(crypto, name) is getattr(keys, name)
    with pytest.raises(AttributeError):
        crypto.no_such_name
