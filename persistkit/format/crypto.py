"""Keys, key derivation and authenticated encryption. The only module importing ``cryptography``.

Size: over 500 lines because this is the one module importing ``cryptography``; the
cipher, the KDF and the record cipher share the derivations documented here.

Cipher: AES-256-GCM in segments (the STREAM construction)
----------------------------------------------------------
* Every sealed object gets its own **data key**,
  ``HKDF-SHA256(master, salt=<32 random bytes>, info="persistkit data key v1")``.
  The salt is stored in the header. Two objects share a data key only if they
  draw the same 256-bit salt, so in practice never (the birthday bound for
  2**64 objects is 2**-128).
* Under that one-object key the **nonces are deterministic**:
  ``u64 big-endian segment index || u32 big-endian flag`` (flag 1 on the last
  segment, 0 before it). Indices never repeat within an object, so no
  (key, nonce) pair is ever used twice. This is safer than random 96-bit nonces
  under a long-lived key, which NIST caps at about 2**32 messages.
* The payload is cut into segments (8 MiB by default, stored in the header)
  because a single GCM call is limited to about 2**31 bytes. Every segment is
  ``ciphertext || 16-byte tag``. The caller's bytes (the whole envelope prefix
  and header) are the associated data of every segment. So changing any
  header byte, reordering or dropping segments, or cutting the stream at a
  segment boundary breaks a tag; the last-segment flag stops truncation.

Wrong key vs tampering
----------------------
A 16-byte **key-check value**, ``HKDF-SHA256(master, salt, info="persistkit
key-check v1")``, is stored in the header and compared with
``hmac.compare_digest`` before anything is decrypted. A mismatch means the key
or password is wrong (``WrongKeyError``). If the check matches but a tag
fails, the bytes were altered (``IntegrityError``). The check reveals nothing
useful: it is a PRF output under the per-object salt.

Passwords
---------
scrypt turns a password into the master key. The password is UTF-8 after
Unicode NFC normalisation, so the same password typed on macOS and on Linux
opens the same file. ``n``, ``r``, ``p`` and a 32-byte salt go into the
header. The default is OWASP's n=2**17, r=8, p=1. On open, parameters below
the floor (n=2**15, r=8, p=1) are refused (no downgrade). So are absurd ones:
n above 2**22, more than 1 GiB of memory, or p above 16, so that a file cannot
make the reader spend minutes or gigabytes. Derivations are cached in-process
per (password, salt, parameters). ``Key.from_password(password)`` without a
salt reuses one random salt per (password, parameters) for the life of the
process, so sealing a bundle of many members, and opening it again, derives
once. Reusing the scrypt salt is safe because data keys still differ per
object. Its only cost is that an observer can tell that two files of one run
share a password.

Key files
---------
A key file holds 32 random bytes in standard base64 on one line, with a
trailing newline. It is created with mode 0600 through ``persistkit.io`` and
never overwritten. Reading one warns (``InsecureKeyFileWarning``) or fails
when group or others can access it.

Key material never appears in a repr, a log line, a pickle or an exception
message; keys show a short HKDF-derived fingerprint instead.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from persistkit.errors import FormatError, IntegrityError, WrongKeyError

__all__ = [
    "ALGORITHM",
    "DEFAULT_SEGMENT",
    "Cipher",
    "Encryption",
    "KdfParams",
    "Key",
    "RecordCipher",
    "new_encryption",
    "new_salt",
    "nonce",
    "open_encryption",
]

ALGORITHM = "AES-256-GCM-STREAM"
DEFAULT_SEGMENT = 8 * 1024 * 1024
MIN_SEGMENT = 1024
MAX_SEGMENT = 64 * 1024 * 1024  # well under GCM's per-call limit (~2**31 bytes in cryptography)
TAG = 16
KEY_BYTES = 32
SALT_BYTES = 32
CHECK_BYTES = 16

_DATA_KEY_INFO = b"persistkit data key v1"
_KEY_CHECK_INFO = b"persistkit key-check v1"
_FINGERPRINT_INFO = b"persistkit fingerprint v1"
_JOURNAL_KEY_INFO = b"persistkit journal key v1"
_NONCE = struct.Struct(">QI")

KeySource = Literal["key", "password"]


# -- key derivation ----------------------------------------------------------------


@dataclass(frozen=True)
class KdfParams:
    """scrypt cost parameters. The default follows OWASP (n=2**17, r=8, p=1; ~0.35-0.6 s).

    ``KdfParams.floor()`` (n=2**15) is the weakest persistkit writes or reads;
    tests use it for speed.
    """

    n: int = 2**17
    r: int = 8
    p: int = 1

    FLOOR_N: ClassVar[int] = 2**15
    FLOOR_R: ClassVar[int] = 8
    MAX_N: ClassVar[int] = 2**22
    MAX_P: ClassVar[int] = 16
    CEILING_BYTES: ClassVar[int] = 1 << 30  # scrypt needs about 128 * n * r bytes

    @classmethod
    def floor(cls) -> KdfParams:
        return cls(n=cls.FLOOR_N, r=cls.FLOOR_R, p=1)

    @property
    def memory_bytes(self) -> int:
        return 128 * self.n * self.r

    def check(self, source: str) -> None:
        """Refuse invalid parameters, parameters below the floor (downgrade) and absurd ones (DoS).

        ``source`` names the file or member in the message.
        """
        values = (self.n, self.r, self.p)
        if not all(type(v) is int and v > 0 for v in values) or self.n < 2 or self.n & (self.n - 1):
            raise IntegrityError(
                f"{source}: invalid scrypt parameters n={self.n!r}, r={self.r!r}, p={self.p!r} "
                "(n must be a power of two, all positive integers). The header was altered or written by "
                "another tool; restore the file from a backup.",
                path=source,
                field="encryption.kdf",
            )
        if self.n < self.FLOOR_N or self.r < self.FLOOR_R or self.p < 1:
            raise IntegrityError(
                f"{source}: KDF parameters below the floor: downgrade refused (scrypt n={self.n}, "
                f"r={self.r}, p={self.p}; the floor is n={self.FLOOR_N}, r={self.FLOOR_R}, p=1). The file "
                "was tampered with, or made by a tool that does not follow persistkit's key-derivation "
                "policy.",
                path=source,
                field="encryption.kdf",
            )
        if self.n > self.MAX_N or self.memory_bytes > self.CEILING_BYTES or self.p > self.MAX_P:
            raise FormatError(
                f"{source}: scrypt parameters n={self.n}, r={self.r}, p={self.p} ask for "
                f"{self.memory_bytes >> 20} MiB and {self.p} passes; persistkit refuses more than "
                f"n={self.MAX_N}, {self.CEILING_BYTES >> 20} MiB or p={self.MAX_P}, so a file cannot "
                "exhaust memory or time. Re-encrypt it with default parameters.",
                path=source,
                field="encryption.kdf",
            )


class Key:
    """A 256-bit master key. Its repr shows a fingerprint, never the material.

    ``source`` says where it came from ("generated", "password", "key file
    PATH") and is used in messages. A key derived from a password remembers the
    scrypt parameters and salt (``origin``), so objects sealed with it record
    them and can be opened with ``password=`` as well.
    """

    __slots__ = ("_material", "fingerprint", "origin", "source")

    def __init__(
        self,
        material: bytes,
        *,
        source: str = "key",
        origin: tuple[KdfParams, bytes] | None = None,
    ) -> None:
        if type(material) is not bytes or len(material) != KEY_BYTES:
            raise ValueError(f"a key is {KEY_BYTES} bytes")  # never echo the argument: it may be secret
        self._material = material
        self.fingerprint = _hkdf(material, b"", _FINGERPRINT_INFO, 4).hex()
        self.source = source
        self.origin = origin

    @classmethod
    def generate(cls) -> Key:
        return cls(secrets.token_bytes(KEY_BYTES), source="generated")

    @classmethod
    def from_password(
        cls, password: str, *, salt: bytes | None = None, params: KdfParams | None = None
    ) -> Key:
        """Derive a master key with scrypt; cached per (password, salt, params) in this process.

        Without ``salt``, a random salt is drawn once per (password, params) and
        reused for the life of the process (see the module docstring).
        """
        params = params or KdfParams()
        params.check("password key derivation")
        secret = _password_bytes(password)
        digest = hashlib.sha256(secret).digest()
        if salt is None:
            salt = _salt_for(digest, params)
        salt = bytes(salt)
        if len(salt) < 16:
            raise ValueError("a scrypt salt is at least 16 bytes")
        cache_key = (digest, salt, params)
        with _cache_lock:
            cached = _kdf_cache.get(cache_key)
            if cached is not None:
                _kdf_cache.move_to_end(cache_key)
                return cached
        scrypt = Scrypt(salt=salt, length=KEY_BYTES, n=params.n, r=params.r, p=params.p)
        key = cls(scrypt.derive(secret), source="password", origin=(params, salt))
        with _cache_lock:
            _kdf_cache[cache_key] = key
            while len(_kdf_cache) > _CACHE_SIZE:
                _kdf_cache.popitem(last=False)
        return key

    def material(self) -> bytes:
        """The raw 32 bytes. Secret: for persistkit's own derivations and key files only."""
        return self._material

    def __repr__(self) -> str:
        return f"Key(fingerprint={self.fingerprint}, source={self.source!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and hmac.compare_digest(self._material, other._material)

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("persistkit keys are not picklable: key material must not leave the process this way")


_CACHE_SIZE = 32
_kdf_cache: OrderedDict[tuple[bytes, bytes, KdfParams], Key] = OrderedDict()
_seal_salts: OrderedDict[tuple[bytes, KdfParams], bytes] = OrderedDict()
_cache_lock = threading.Lock()


def clear_key_cache() -> None:
    """Forget every cached password derivation and sealing salt (tests, or after a password change)."""
    with _cache_lock:
        _kdf_cache.clear()
        _seal_salts.clear()


def _salt_for(digest: bytes, params: KdfParams) -> bytes:
    with _cache_lock:
        salt = _seal_salts.get((digest, params))
        if salt is None:
            salt = _seal_salts[(digest, params)] = new_salt()
            while len(_seal_salts) > _CACHE_SIZE:
                _seal_salts.popitem(last=False)
        else:
            _seal_salts.move_to_end((digest, params))
        return salt


def _password_bytes(password: str) -> bytes:
    if not isinstance(password, str):
        raise TypeError("password must be a str")
    if not password:
        raise WrongKeyError(
            "the password is empty: pass the real password, or use key_file= instead.", field="password"
        )
    try:
        return unicodedata.normalize("NFC", password).encode("utf-8")
    except UnicodeEncodeError as err:
        # Never echo the password; say where the bad character is.
        raise WrongKeyError(
            f"the password cannot be encoded as UTF-8: character {err.start + 1} of {len(password)} is a lone "
            "surrogate (U+D800-U+DFFF; often from decoding bytes with errors='surrogateescape'). Pass the "
            "password as proper text.",
            field="password",
        ) from None


def _hkdf(material: bytes, salt: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(material)


def new_salt() -> bytes:
    return secrets.token_bytes(SALT_BYTES)


def nonce(index: int, last: bool) -> bytes:
    """The 12-byte GCM nonce of segment ``index``: u64 index || u32 last-segment flag (big-endian)."""
    return _NONCE.pack(index, 1 if last else 0)


def key_check(master: Key, salt: bytes) -> bytes:
    """The 16-byte value that says whether ``master`` is the key an object was sealed with."""
    return _hkdf(master.material(), salt, _KEY_CHECK_INFO, CHECK_BYTES)


# -- the encryption entry of an envelope header --------------------------------------


@dataclass(frozen=True)
class Encryption:
    """The cipher parameters an envelope header stores (no secrets in here)."""

    key_source: KeySource
    salt: bytes  # HKDF salt of this object's data key
    check: bytes  # key-check value
    segment: int
    kdf: KdfParams | None = None  # scrypt parameters, when the master key came from a password
    kdf_salt: bytes | None = None
    alg: str = ALGORITHM

    def to_header(self) -> dict[str, object]:
        kdf: dict[str, object] | None = None
        if self.kdf is not None:
            kdf = {"name": "scrypt", "n": self.kdf.n, "r": self.kdf.r, "p": self.kdf.p, "salt": self.kdf_salt}
        return {
            "alg": self.alg,
            "key": self.key_source,
            "kdf": kdf,
            "salt": self.salt,
            "check": self.check,
            "segment": self.segment,
        }

    @classmethod
    def from_header(cls, value: object, *, source: str) -> Encryption:
        """Validate the header's ``encryption`` map; IntegrityError/FormatError naming ``source``."""

        def bad(what: str) -> IntegrityError:
            return IntegrityError(
                f"{source}: malformed encryption parameters in the header ({what}). The header was altered "
                "or written by another tool; restore the file from a backup.",
                path=source,
                field="encryption",
            )

        if not isinstance(value, Mapping) or set(value) != {"alg", "key", "kdf", "salt", "check", "segment"}:
            raise bad("unexpected fields")
        alg = value["alg"]
        if type(alg) is not str:
            raise bad("alg")
        if alg != ALGORITHM:
            raise FormatError(
                f"{source}: encrypted with {alg!r}, a cipher this persistkit does not know; upgrade "
                "persistkit to read it.",
                path=source,
                field="encryption.alg",
            )
        key_source = value["key"]
        salt, check, segment = value["salt"], value["check"], value["segment"]
        if key_source not in ("key", "password"):
            raise bad("key source")
        if type(salt) is not bytes or len(salt) != SALT_BYTES:
            raise bad("salt")
        if type(check) is not bytes or len(check) != CHECK_BYTES:
            raise bad("key check")
        if type(segment) is not int or not MIN_SEGMENT <= segment <= MAX_SEGMENT:
            raise bad("segment size")
        kdf = value["kdf"]
        if key_source == "key":
            if kdf is not None:
                raise bad("kdf given for a key")
            return cls("key", salt, check, segment)
        if not isinstance(kdf, Mapping) or set(kdf) != {"name", "n", "r", "p", "salt"}:
            raise bad("kdf")
        if kdf["name"] != "scrypt":
            raise FormatError(
                f"{source}: password key derivation {kdf['name']!r} is unknown to this persistkit; "
                "upgrade persistkit to read it.",
                path=source,
                field="encryption.kdf",
            )
        kdf_salt = kdf["salt"]
        if type(kdf_salt) is not bytes or not 16 <= len(kdf_salt) <= 64:
            raise bad("kdf salt")
        if not all(type(kdf[k]) is int for k in ("n", "r", "p")):
            raise bad("kdf parameters")
        return cls("password", salt, check, segment, KdfParams(kdf["n"], kdf["r"], kdf["p"]), kdf_salt)


class Cipher:
    """AES-256-GCM STREAM under one object's data key. Never shows the key."""

    __slots__ = ("_aead", "segment")

    def __init__(self, master: Key, salt: bytes, segment: int) -> None:
        self._aead = AESGCM(_hkdf(master.material(), salt, _DATA_KEY_INFO))
        self.segment = segment

    def __repr__(self) -> str:
        return f"Cipher(segment={self.segment})"

    def segments(self, plain_len: int) -> int:
        return max(1, -(-plain_len // self.segment))

    def sealed_size(self, plain_len: int) -> int:
        """Ciphertext length (tags included) for ``plain_len`` bytes of plaintext."""
        return plain_len + self.segments(plain_len) * TAG

    def encrypt_into(self, plain: memoryview, aad: bytes, out: memoryview) -> None:
        """Encrypt ``plain`` into ``out`` (exactly ``sealed_size`` bytes), one GCM call per segment."""
        total = plain.nbytes
        if out.nbytes != self.sealed_size(total):
            raise ValueError("output buffer has the wrong size")
        count = self.segments(total)
        pos = 0
        for i in range(count):
            chunk = plain[i * self.segment : (i + 1) * self.segment]
            end = pos + chunk.nbytes + TAG
            self._aead.encrypt_into(nonce(i, i == count - 1), chunk, aad, out[pos:end])
            pos = end

    def encrypt_iter(self, plain: memoryview, aad: bytes) -> Iterator[memoryview]:
        """Encrypt segment by segment into one reused buffer; each view is valid until the next."""
        total = plain.nbytes
        count = self.segments(total)
        buf = bytearray(min(self.segment, max(total, 0)) + TAG)
        view = memoryview(buf)
        for i in range(count):
            chunk = plain[i * self.segment : (i + 1) * self.segment]
            out = view[: chunk.nbytes + TAG]
            self._aead.encrypt_into(nonce(i, i == count - 1), chunk, aad, out)
            yield out

    def decrypt(self, stored: memoryview, aad: bytes, plain_len: int, *, source: str) -> bytes | bytearray:
        """Authenticate and decrypt every segment; IntegrityError names the first bad one.

        Returns ``bytes`` for a single segment (no extra copy) and a
        ``bytearray`` otherwise; nothing is returned unless every tag checked.
        """
        if stored.nbytes != self.sealed_size(plain_len):
            raise IntegrityError(
                f"{source}: the encrypted payload is {stored.nbytes} bytes, but the header implies "
                f"{self.sealed_size(plain_len)}. Restore the file from a backup.",
                path=source,
            )
        count = self.segments(plain_len)
        if count == 1:
            try:
                return self._aead.decrypt(nonce(0, True), stored, aad)
            except InvalidTag:
                raise self._tampered(source, "") from None
        out = bytearray(plain_len)
        view = memoryview(out)
        for i in range(count):
            start = i * self.segment
            size = min(self.segment, plain_len - start)
            pos = start + i * TAG
            try:
                self._aead.decrypt_into(
                    nonce(i, i == count - 1), stored[pos : pos + size + TAG], aad, view[start : start + size]
                )
            except InvalidTag:
                raise self._tampered(source, f" in segment {i} of {count}") from None
        return out

    @staticmethod
    def _tampered(source: str, where: str) -> IntegrityError:
        return IntegrityError(
            f"{source}: authentication failed{where}: the data or its header was altered or damaged "
            "after it was written (the key is right). Restore this file from a backup.",
            path=source,
        )


def new_encryption(master: Key, *, segment: int = DEFAULT_SEGMENT) -> tuple[Encryption, Cipher]:
    """Fresh per-object parameters (random HKDF salt) and the cipher that goes with them."""
    if type(segment) is not int or not MIN_SEGMENT <= segment <= MAX_SEGMENT:
        raise ValueError(f"segment must be an int from {MIN_SEGMENT} to {MAX_SEGMENT} bytes")
    salt = new_salt()
    check = key_check(master, salt)
    if master.origin is not None:
        params, kdf_salt = master.origin
        params.check("sealing")  # below the floor is impossible for Key.from_password; stay explicit
        enc = Encryption("password", salt, check, segment, params, kdf_salt)
    else:
        enc = Encryption("key", salt, check, segment)
    return enc, Cipher(master, salt, segment)


def open_encryption(enc: Encryption, *, key: Key | None, password: str | None, source: str) -> Cipher:
    """The cipher for an encrypted object, after checking that ``key``/``password`` is the right one.

    Raises WrongKeyError when nothing, or the wrong thing, was passed, and
    IntegrityError/FormatError when the KDF parameters are below the floor or
    absurd (checked before any scrypt work).
    """
    master = check_master(
        enc.key_source, enc.salt, enc.check, enc.kdf, enc.kdf_salt, key=key, password=password, source=source
    )
    return Cipher(master, enc.salt, enc.segment)


def check_master(
    key_source: str,
    salt: bytes,
    check: bytes,
    kdf: KdfParams | None,
    kdf_salt: bytes | None,
    *,
    key: Key | None,
    password: str | None,
    source: str,
) -> Key:
    """The master key that opens ``source``: ``key``, or derived from ``password``, verified by its key check.

    Shared by envelopes (``Encryption``) and bundle manifests (``KeyInfo``).
    WrongKeyError says what was missing or wrong and what to pass instead.
    """
    if key is not None and password is not None:
        raise ValueError("pass key= or password=, not both")
    kind = "password" if key_source == "password" else "key file"
    if key is None and password is None:
        how = "password=" if key_source == "password" else "key_file= (or key=)"
        raise WrongKeyError(f"{source} is encrypted with a {kind}; pass {how} to open it.", path=source)
    if kdf is not None:
        kdf.check(source)  # floor and ceiling before any scrypt work
    if password is not None:
        if kdf is None or kdf_salt is None:
            raise WrongKeyError(
                f"{source} was sealed with a key file, not a password; pass key_file= to open it.",
                path=source,
            )
        master = Key.from_password(password, salt=kdf_salt, params=kdf)
    else:
        assert key is not None
        master = key
    if not hmac.compare_digest(key_check(master, salt), check):
        if password is not None or master.origin is not None:
            what = "the password"
            hint = "Check the password (it is case-sensitive) or use the one this file was saved with."
        else:
            what = f"the {master.source} (fingerprint {master.fingerprint})"
            hint = (
                "This file was sealed with a password; pass password=."
                if key_source == "password"
                else "Pass the key file this file was saved with."
            )
        raise WrongKeyError(f"{what} does not open {source} (key check failed). {hint}", path=source)
    return master


class RecordCipher:
    """AES-GCM for journal records: one data key per journal, the record sequence number as nonce.

    The caller guarantees that a sequence number is used at most once per salt
    (a recovered journal is never appended to again). The nonce flag 2 keeps
    record nonces apart from envelope segment nonces (which also use another key).
    """

    __slots__ = ("_aead",)

    def __init__(self, key: Key, salt: bytes) -> None:
        self._aead = AESGCM(_hkdf(key.material(), salt, _JOURNAL_KEY_INFO))

    def __repr__(self) -> str:
        return "RecordCipher()"

    def encrypt(self, seq: int, payload: bytes) -> bytes:
        return self._aead.encrypt(_NONCE.pack(seq, 2), payload, b"persistkit journal record")

    def decrypt(self, seq: int, data: bytes, *, source: str) -> bytes:
        try:
            return self._aead.decrypt(_NONCE.pack(seq, 2), data, b"persistkit journal record")
        except InvalidTag:
            raise IntegrityError(
                f"{source}: authentication failed (record altered, or the store key changed).", path=source
            ) from None


# -- key files: moved to persistkit.keys (format/ does no I/O) ----------------------

_MOVED_TO_KEYS = (
    "InsecureKeyFileWarning",
    "KEY_FILE_MAX_BYTES",
    "OnInsecure",
    "read_key_file",
    "write_key_file",
)


def __getattr__(name: str) -> Any:
    """Compatibility: key-file helpers used to live here; they read and write files, so they are in keys.py."""
    if name in _MOVED_TO_KEYS:
        import persistkit.keys

        return getattr(persistkit.keys, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
