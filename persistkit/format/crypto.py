"""Keys, key derivation and authenticated encryption. The only module importing ``cryptography``.

* **Cipher.** AES-256-GCM in segments (the STREAM construction): every file
  gets its own data key, ``HKDF-SHA256(master, salt)`` with a fresh random
  32-byte salt, so the per-segment nonces (segment counter + last-segment
  flag) can never repeat under one key. Dropping, reordering or truncating
  segments breaks a tag; the caller's header is bound to every segment as
  associated data.
* **Wrong key vs tampering.** A 16-byte key-check value,
  ``HKDF(master, salt, "key-check")``, tells a wrong password or key
  (``WrongKeyError``) apart from damaged or forged data (``IntegrityError``).
* **Passwords.** scrypt with parameters stored beside the ciphertext; files
  below the floor (n=2**15, r=8, p=1) are refused so that parameters cannot be
  downgraded, and absurd ones are refused so that a file cannot exhaust memory.
* **Key files.** 32 random bytes, base64 on one line, created with mode 0600.

Key material never appears in a repr, a log line or an exception message.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import hmac
import os
import secrets
import struct
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from persistkit.errors import FormatError, IntegrityError, PersistIOError, WrongKeyError
from persistkit.io import atomic_write, current_fs

__all__ = [
    "ALGORITHM",
    "DEFAULT_SEGMENT",
    "InsecureKeyFileWarning",
    "KdfParams",
    "Key",
    "decrypt_segments",
    "encrypt_segments",
    "key_check",
    "read_key_file",
    "write_key_file",
]

ALGORITHM = "AES-256-GCM-STREAM"
DEFAULT_SEGMENT = 8 * 1024 * 1024
TAG = 16
KEY_BYTES = 32
SALT_BYTES = 32


class InsecureKeyFileWarning(UserWarning):
    """A key file is readable by group or others."""


@dataclass(frozen=True)
class KdfParams:
    """scrypt cost parameters. The default follows OWASP (n=2**17, ~0.6 s here)."""

    n: int = 2**17
    r: int = 8
    p: int = 1

    FLOOR_N = 2**15
    CEILING_BYTES = 1 << 30  # scrypt needs 128*n*r bytes; refuse files that ask for more

    def check(self, source: str) -> None:
        """Refuse parameters below the floor (downgrade) or above the memory ceiling."""
        valid = all(type(v) is int and v > 0 for v in (self.n, self.r, self.p)) and self.n & (self.n - 1) == 0
        if not valid:
            raise FormatError(f"{source}: invalid scrypt parameters {self}.", field=source)
        if self.n < self.FLOOR_N or self.r < 8 or self.p < 1:
            raise IntegrityError(
                f"{source}: scrypt parameters n={self.n}, r={self.r}, p={self.p} are below the floor "
                f"(n={self.FLOOR_N}, r=8, p=1): downgrade refused. The file was tampered with, or made by a "
                "tool that does not follow persistkit's key-derivation policy.",
                field=source,
            )
        if 128 * self.n * self.r * self.p > self.CEILING_BYTES or self.p > 16:
            raise FormatError(
                f"{source}: scrypt parameters n={self.n}, r={self.r}, p={self.p} would need more than "
                f"{self.CEILING_BYTES >> 20} MiB; refusing to derive.",
                field=source,
            )


class Key:
    """A 256-bit master key. Its repr shows a fingerprint, never the material."""

    __slots__ = ("_material", "fingerprint", "source")

    def __init__(self, material: bytes, *, source: str = "key") -> None:
        if len(material) != KEY_BYTES:
            raise ValueError(f"a key is {KEY_BYTES} bytes")  # internal misuse, not user input
        self._material = bytes(material)
        self.fingerprint = _hkdf(self._material, b"", b"persistkit fingerprint v1", 6).hex()
        self.source = source

    @classmethod
    def generate(cls) -> Key:
        return cls(secrets.token_bytes(KEY_BYTES), source="generated")

    @classmethod
    def from_password(cls, password: str, *, salt: bytes, params: KdfParams | None = None) -> Key:
        """Derive with scrypt; derivations are cached per (password, salt, params) in this process."""
        params = params or KdfParams()
        params.check("password key derivation")
        cache_key = (hashlib.sha256(password.encode()).digest(), bytes(salt), params)
        with _cache_lock:
            cached = _kdf_cache.get(cache_key)
            if cached is not None:
                _kdf_cache.move_to_end(cache_key)
                return cached
        kdf = Scrypt(salt=bytes(salt), length=KEY_BYTES, n=params.n, r=params.r, p=params.p)
        key = cls(kdf.derive(password.encode()), source="password")
        with _cache_lock:
            _kdf_cache[cache_key] = key
            while len(_kdf_cache) > 32:
                _kdf_cache.popitem(last=False)
        return key

    def material(self) -> bytes:
        """The raw 32 bytes, for persistkit's own derivations and key files."""
        return self._material

    def __repr__(self) -> str:
        return f"Key(fingerprint={self.fingerprint})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and hmac.compare_digest(self._material, other._material)

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("persistkit keys are not picklable: key material must not leave the process this way")


_kdf_cache: OrderedDict[tuple[bytes, bytes, KdfParams], Key] = OrderedDict()
_cache_lock = threading.Lock()


def _hkdf(material: bytes, salt: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(material)


def key_check(key: Key, salt: bytes) -> bytes:
    """The 16-byte value that says whether ``key`` is the one a file was sealed with."""
    return _hkdf(key.material(), salt, b"persistkit key-check v1", 16)


def _nonce(index: int, last: bool) -> bytes:
    return struct.pack(">QI", index, 1 if last else 0)


def encrypt_segments(
    key: Key, salt: bytes, data: bytes | memoryview, aad: bytes, *, segment: int = DEFAULT_SEGMENT
) -> list[bytes]:
    """Encrypt ``data`` under a data key derived from ``key`` and ``salt``; one item per segment."""
    aead = AESGCM(_hkdf(key.material(), salt, b"persistkit data key v1"))
    view = memoryview(data).cast("B")
    total = view.nbytes
    count = max(1, -(-total // segment))
    out = []
    for i in range(count):
        chunk = view[i * segment : (i + 1) * segment]
        out.append(aead.encrypt(_nonce(i, i == count - 1), chunk, aad))
    return out


def segments_size(plain_len: int, segment: int = DEFAULT_SEGMENT) -> int:
    """Ciphertext length for ``plain_len`` bytes of plaintext."""
    count = max(1, -(-plain_len // segment))
    return plain_len + count * TAG


def decrypt_segments(
    key: Key,
    salt: bytes,
    ciphertext: memoryview,
    aad: bytes,
    plain_len: int,
    *,
    segment: int = DEFAULT_SEGMENT,
    source: str = "<bytes>",
) -> bytes:
    """Decrypt what ``encrypt_segments`` produced; IntegrityError if anything was altered."""
    if segments_size(plain_len, segment) != ciphertext.nbytes:
        raise IntegrityError(f"{source}: encrypted payload has the wrong length.", field=source)
    aead = AESGCM(_hkdf(key.material(), salt, b"persistkit data key v1"))
    count = max(1, -(-plain_len // segment))
    parts: list[bytes] = []
    pos = 0
    for i in range(count):
        size = min(segment, plain_len - i * segment) + TAG
        try:
            parts.append(aead.decrypt(_nonce(i, i == count - 1), ciphertext[pos : pos + size], aad))
        except InvalidTag:
            raise IntegrityError(
                f"{source}: authentication failed in segment {i}: the data was altered or damaged after it "
                "was written (the key is right). Restore this file from a backup.",
                field=source,
            ) from None
        pos += size
    return parts[0] if len(parts) == 1 else b"".join(parts)


def check_key(key: Key, salt: bytes, expected: bytes, source: str) -> None:
    if not hmac.compare_digest(key_check(key, salt), expected):
        raise WrongKeyError(
            f"{source}: the {key.source} does not open this file (key check failed). "
            "Pass the password or key file it was saved with.",
            field=source,
        )


# -- key files -------------------------------------------------------------------

OnInsecure = Literal["warn", "error", "ignore"]


def write_key_file(path: str | os.PathLike[str], key: Key | None = None) -> Key:
    """Create a key file (mode 0600) holding ``key`` or a new random key; never overwrite one."""
    key = key or Key.generate()
    target = os.fspath(path)
    if current_fs().exists(target):
        raise PersistIOError(
            f"key file {target!r} already exists; refusing to overwrite a key (files sealed with it would be "
            "lost). Delete it yourself if you are sure, or choose another path.",
            errno=errno.EEXIST,
            path=target,
            operation="write key file",
        )
    atomic_write(target, base64.b64encode(key.material()) + b"\n", mode=0o600)
    return Key(key.material(), source=f"key file {target}")


def read_key_file(path: str | os.PathLike[str], *, on_insecure: OnInsecure = "warn") -> Key:
    """Read a key file; warn (or fail, or ignore) when it is readable by group or others."""
    target = os.fspath(path)
    fs = current_fs()
    try:
        st = fs.stat(target)
        raw = fs.read_bytes(target)
    except FileNotFoundError:
        raise PersistIOError(
            f"key file not found: looked for {os.path.abspath(target)!r}. Pass key_file= pointing at the key "
            "saved with this file, or password= if it was sealed with a password.",
            errno=errno.ENOENT,
            path=target,
            operation="read key file",
        ) from None
    except OSError as err:
        raise PersistIOError(
            f"cannot read key file {target!r}: {err.strerror}.",
            errno=err.errno,
            path=target,
            operation="read",
        ) from err
    if st.st_mode & 0o077 and on_insecure != "ignore":
        message = (
            f"key file {target!r} is readable by group or others (mode {st.st_mode & 0o777:o}); "
            f"run `chmod 600 {target}`."
        )
        if on_insecure == "error":
            raise PersistIOError(message, errno=errno.EACCES, path=target, operation="read key file")
        warnings.warn(message, InsecureKeyFileWarning, stacklevel=2)
    try:
        material = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        material = b""
    if len(material) != KEY_BYTES:
        raise FormatError(
            f"{target!r} is not a persistkit key file (expected {KEY_BYTES} bytes in base64 on one line). "
            "Create one with `persistkit keygen PATH`.",
            path=target,
        )
    return Key(material, source=f"key file {target}")


def new_salt() -> bytes:
    return secrets.token_bytes(SALT_BYTES)


def resolve_key(
    *, key: Key | None, password: str | None, kdf: dict[str, object] | None, source: str
) -> Key | None:
    """The master key for opening: an explicit key, or one derived from ``password`` with the file's KDF."""
    if key is not None:
        return key
    if password is None:
        return None
    if not kdf:
        raise WrongKeyError(
            f"{source}: this file was sealed with a key file, not a password; pass key_file=.", field=source
        )
    salt = kdf.get("salt")
    params = KdfParams(n=kdf.get("n"), r=kdf.get("r"), p=kdf.get("p"))  # type: ignore[arg-type]
    params.check(source)
    if type(salt) is not bytes or len(salt) < 16:
        raise FormatError(f"{source}: malformed KDF salt.", field=source)
    return Key.from_password(password, salt=salt, params=params)


class RecordCipher:
    """AES-GCM for journal records: one data key per journal, the record sequence number as nonce.

    The caller guarantees that a sequence number is used at most once per salt
    (a recovered journal is never appended to again).
    """

    def __init__(self, key: Key, salt: bytes) -> None:
        self._aead = AESGCM(_hkdf(key.material(), salt, b"persistkit journal key v1"))

    def encrypt(self, seq: int, payload: bytes) -> bytes:
        return self._aead.encrypt(struct.pack(">QI", seq, 2), payload, b"persistkit journal record")

    def decrypt(self, seq: int, data: bytes, *, source: str) -> bytes:
        try:
            return self._aead.decrypt(struct.pack(">QI", seq, 2), data, b"persistkit journal record")
        except InvalidTag:
            raise IntegrityError(
                f"{source}: authentication failed (record altered, or the store key changed).", field=source
            ) from None
