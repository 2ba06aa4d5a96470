"""The envelope: a self-describing, checksummed, optionally compressed and encrypted container.

Bytes in, bytes out; nothing here touches files. Layout (little-endian), a
storage contract::

    offset  size  field
    0       8     magic  89 'P' 'K' 'E' 'N' 'V' 0D 0A  (like PNG: catches text-mode mangling)
    8       2     format version (1)
    10      4     header length H (at most 64 KiB)
    14      H     header: a msgpack map, readable without any key
    14+H    P     payload: the (compressed, then possibly encrypted) object
    14+H+P  16    xxh3-128 of every byte before it

The header holds ``kind``, ``codec``, ``schema``, ``created`` (ISO-8601 UTC),
``compression`` ("zstd" or "none"), ``plain_len``, ``stored_len`` (after
compression), ``payload_len`` (P), ``enc`` (null, or the cipher parameters:
algorithm, key source, scrypt parameters and salt for passwords, HKDF salt,
key-check value, segment size) and ``meta`` (caller's scalars).

Checks, in order: magic (else ``FormatError``: not a persistkit file),
version (else ``FormatError``: newer persistkit needed), exact total length
and checksum (else ``IntegrityError``: truncated, junk appended, bit flip),
then for encrypted files the key check (``WrongKeyError``) and the GCM tags
over header and payload (``IntegrityError``: tampering). The checksum is not
a security measure, authenticity comes from the key; it lets persistkit tell
damage apart from a wrong key.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import xxhash
import zstandard

from persistkit.errors import FormatError, IntegrityError, UnsupportedTypeError, WrongKeyError
from persistkit.format import crypto
from persistkit.format.crypto import KdfParams, Key

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "Header",
    "Opened",
    "open_envelope",
    "read_header",
    "seal",
    "seal_parts",
]

MAGIC = b"\x89PKENV\r\n"
FORMAT_VERSION = 1
PREFIX = struct.Struct("<8sHI")
DIGEST = 16
MAX_HEADER = 64 * 1024
DEFAULT_MAX_PLAIN = 64 * 1024**3
COMPRESSIONS = ("zstd", "none")


@dataclass(frozen=True)
class Header:
    """What an envelope says about itself; readable without a key."""

    version: int
    kind: str
    codec: str
    schema: int
    created: str
    compression: str
    plain_len: int
    stored_len: int
    payload_len: int
    enc: dict[str, Any] | None
    meta: dict[str, Any] = field(default_factory=dict)
    header_len: int = 0

    @property
    def encrypted(self) -> bool:
        return self.enc is not None

    @property
    def total_len(self) -> int:
        return PREFIX.size + self.header_len + self.payload_len + DIGEST


@dataclass(frozen=True)
class Opened:
    """An opened envelope: ``payload`` is the original bytes (a memoryview, possibly zero-copy)."""

    header: Header
    payload: memoryview


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def seal_parts(
    payload: bytes | bytearray | memoryview,
    *,
    kind: str,
    codec: str,
    schema: int = 1,
    compression: str = "zstd",
    key: Key | None = None,
    password: str | None = None,
    kdf: KdfParams | None = None,
    meta: Mapping[str, Any] | None = None,
    level: int = 3,
    segment: int = crypto.DEFAULT_SEGMENT,
) -> list[bytes | memoryview]:
    """Like ``seal`` but returns the pieces, so large payloads can be written without joining them."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, not {compression!r}")
    if key is not None and password is not None:
        raise ValueError("pass key= or password=, not both")
    view = memoryview(payload).cast("B")
    plain_len = view.nbytes
    stored: bytes | memoryview = view
    if compression == "zstd":
        stored = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(view)
    stored_len = memoryview(stored).nbytes

    enc: dict[str, Any] | None = None
    master: Key | None = key
    salt = b""
    if password is not None:
        params = kdf or KdfParams()
        kdf_salt = crypto.new_salt()
        master = Key.from_password(password, salt=kdf_salt, params=params)
        enc = {"kdf": {"name": "scrypt", "n": params.n, "r": params.r, "p": params.p, "salt": kdf_salt}}
    if master is not None:
        salt = crypto.new_salt()
        enc = {
            "alg": crypto.ALGORITHM,
            "key": "password" if password is not None else "key",
            "kdf": (enc or {}).get("kdf"),
            "salt": salt,
            "check": crypto.key_check(master, salt),
            "segment": segment,
        }
    payload_len = crypto.segments_size(stored_len, segment) if master is not None else stored_len
    try:
        header = _pack_header(
            {
                "kind": kind,
                "codec": codec,
                "schema": schema,
                "created": _now(),
                "compression": compression,
                "plain_len": plain_len,
                "stored_len": stored_len,
                "payload_len": payload_len,
                "enc": enc,
                "meta": dict(meta or {}),
            }
        )
    except (TypeError, ValueError, OverflowError) as err:
        raise UnsupportedTypeError(
            f"envelope meta {dict(meta or {})!r:.200} holds a value msgpack cannot store ({err}); "
            "use str keys and str/int (64-bit)/float/bool/None/bytes values.",
            field="meta",
        ) from err
    if len(header) > MAX_HEADER:
        raise ValueError(f"envelope header is {len(header)} bytes; keep meta small (limit {MAX_HEADER})")
    prefix = PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header
    body: list[bytes | memoryview]
    if master is not None:
        body = list(crypto.encrypt_segments(master, salt, stored, prefix, segment=segment))
    else:
        body = [stored]
    digest = xxhash.xxh3_128()
    digest.update(prefix)
    for part in body:
        digest.update(part)
    return [prefix, *body, digest.digest()]


def _pack_header(fields: dict[str, Any]) -> bytes:
    return msgpack.packb(fields, use_bin_type=True, strict_types=False)  # type: ignore[no-any-return]


def seal(payload: bytes | bytearray | memoryview, **kwargs: Any) -> bytes:
    """Seal ``payload`` into one envelope (see ``seal_parts`` for the keyword arguments)."""
    return b"".join(seal_parts(payload, **kwargs))


def _corrupt(source: str, what: str) -> IntegrityError:
    return IntegrityError(
        f"{source}: {what}. The file is damaged (truncated, overwritten or bit-flipped); restore it from a "
        "backup or an older generation.",
        field=source,
    )


def read_header(data: bytes | bytearray | memoryview, *, source: str = "<bytes>") -> Header:
    """Parse the prefix and header without a key and without checking the payload."""
    view = memoryview(data).cast("B")
    if view.nbytes < PREFIX.size:
        if MAGIC.startswith(bytes(view[: len(MAGIC)])) and view.nbytes:
            raise _corrupt(source, f"only {view.nbytes} bytes, shorter than the envelope prefix")
        raise FormatError(f"{source}: not a persistkit file (too short, no envelope magic).", field=source)
    magic, version, header_len = PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise FormatError(
            f"{source}: not a persistkit file (no envelope magic). If it should be one, it is damaged at "
            "the start; restore it from a backup.",
            field=source,
        )
    if version != FORMAT_VERSION:
        if version > FORMAT_VERSION:
            raise FormatError(
                f"{source}: envelope format {version} is newer than this persistkit supports "
                f"({FORMAT_VERSION}); upgrade persistkit to read it "
                "(if no newer persistkit wrote it, the file is damaged).",
                field=source,
            )
        raise _corrupt(source, f"unknown envelope format {version}")
    if header_len > MAX_HEADER or PREFIX.size + header_len > view.nbytes:
        raise _corrupt(source, f"header length {header_len} does not fit the {view.nbytes}-byte file")
    raw = view[PREFIX.size : PREFIX.size + header_len]
    try:
        h = msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=True,
            max_str_len=header_len,
            max_bin_len=header_len,
            max_array_len=header_len,
            max_map_len=header_len,
            max_ext_len=0,
        )
    except Exception as err:  # msgpack raises several types for damaged bytes
        raise _corrupt(source, "the header does not parse") from err
    return _validate_header(h, header_len, source)


_FIELDS: dict[str, type | tuple[type, ...]] = {
    "kind": str,
    "codec": str,
    "schema": int,
    "created": str,
    "compression": str,
    "plain_len": int,
    "stored_len": int,
    "payload_len": int,
    "enc": (dict, type(None)),
    "meta": dict,
}


def _validate_header(h: Any, header_len: int, source: str) -> Header:
    if type(h) is not dict or any(k not in h or not isinstance(h[k], t) for k, t in _FIELDS.items()):
        raise _corrupt(source, "the header is missing fields")
    if h["compression"] not in COMPRESSIONS:
        raise FormatError(
            f"{source}: unknown compression {h['compression']!r}; it may come from a newer persistkit.",
            field=source,
        )
    if min(h["plain_len"], h["stored_len"], h["payload_len"]) < 0:
        raise _corrupt(source, "negative lengths in the header")
    return Header(
        version=FORMAT_VERSION,
        kind=h["kind"],
        codec=h["codec"],
        schema=h["schema"],
        created=h["created"],
        compression=h["compression"],
        plain_len=h["plain_len"],
        stored_len=h["stored_len"],
        payload_len=h["payload_len"],
        enc=h["enc"],
        meta=h["meta"],
        header_len=header_len,
    )


def open_envelope(
    data: bytes | bytearray | memoryview,
    *,
    key: Key | None = None,
    password: str | None = None,
    source: str = "<bytes>",
    max_plain_len: int = DEFAULT_MAX_PLAIN,
) -> Opened:
    """Check and open an envelope; see the module docstring for which error means what."""
    view = memoryview(data).cast("B")
    header = read_header(view, source=source)
    if view.nbytes != header.total_len:
        what = "truncated" if view.nbytes < header.total_len else "has extra bytes appended"
        raise _corrupt(source, f"{what}: {view.nbytes} bytes, the header promises {header.total_len}")
    body_end = header.total_len - DIGEST
    digest = xxhash.xxh3_128(view[:body_end]).digest()
    if digest != bytes(view[body_end:]):
        raise _corrupt(source, "checksum mismatch")
    prefix_len = PREFIX.size + header.header_len
    payload = view[prefix_len:body_end]
    if header.enc is not None:
        payload = memoryview(_decrypt(header, payload, bytes(view[:prefix_len]), key, password, source))
    elif key is not None or password is not None:
        pass  # an unencrypted file opens without a key; integrity came from the checksum
    if payload.nbytes != header.stored_len:
        raise _corrupt(source, "payload length does not match the header")
    if header.compression == "zstd":
        if header.plain_len > max_plain_len:
            raise FormatError(
                f"{source}: claims {header.plain_len} bytes uncompressed, "
                f"over the {max_plain_len}-byte limit.",
                field=source,
            )
        try:
            plain = zstandard.ZstdDecompressor().decompress(payload, max_output_size=header.plain_len)
        except zstandard.ZstdError as err:
            raise _corrupt(source, "compressed payload does not decompress") from err
        payload = memoryview(plain)
    if payload.nbytes != header.plain_len:
        raise _corrupt(source, "payload size differs from the header")
    return Opened(header, payload)


def _decrypt(
    header: Header, payload: memoryview, aad: bytes, key: Key | None, password: str | None, source: str
) -> bytes:
    enc = header.enc or {}
    if enc.get("alg") != crypto.ALGORITHM:
        raise FormatError(f"{source}: unknown cipher {enc.get('alg')!r}; upgrade persistkit.", field=source)
    salt, check, segment = enc.get("salt"), enc.get("check"), enc.get("segment")
    if type(salt) is not bytes or type(check) is not bytes or type(segment) is not int or segment <= 0:
        raise _corrupt(source, "malformed encryption parameters")
    if key is None and password is None:
        how = "password=" if enc.get("key") == "password" else "key_file="
        raise WrongKeyError(f"{source}: this file is encrypted; pass {how} to open it.", field=source)
    kdf = enc.get("kdf")
    if password is not None and enc.get("key") != "password":
        raise WrongKeyError(
            f"{source}: this file was sealed with a key file, not a password; pass key_file=.", field=source
        )
    master = crypto.resolve_key(
        key=None if password is not None else key,
        password=password,
        kdf=kdf if isinstance(kdf, dict) else None,
        source=source,
    )
    assert master is not None
    crypto.check_key(master, salt, check, source)
    return crypto.decrypt_segments(
        master, salt, payload, aad, header.stored_len, segment=segment, source=source
    )
