"""The envelope: a self-describing, checksummed, optionally compressed and encrypted container.

Size: one wire format in one file, over 500 lines by design (kept whole on purpose).

Bytes in, bytes out; nothing here touches files. The layout is a storage
contract. Integers are little-endian; digests are xxHash's canonical
(big-endian) bytes::

    offset      size  field
    0           8     magic 89 50 4B 45 4E 56 0D 0A  ("\\x89PKENV\\r\\n")
    8           2     u16 format version, 1
    10          4     u32 header length H, at most 65,536 (checked before anything is read)
    14          H     header: a msgpack map, readable without any key (below)
    14+H        8     header check: xxh3-64 of bytes [0, 14+H)
    22+H        P     payload: the object, compressed, then encrypted if a key was given
    22+H+P      16    trailer: xxh3-128 of bytes [0, 22+H+P)

The magic works like PNG's. The high-bit byte catches 7-bit transports, and
CR LF catches newline translation in either direction.

Every later format version keeps the first 14 bytes and the header check
(bytes 0 to 22+H). That way an intact file from a newer persistkit can be
recognised and answered with "upgrade persistkit", while a damaged byte in the
prefix is reported as damage.

The header map has exactly these keys:

    kind         str    what the object is ("state", "member", "manifest", ...)
    codec        str    how the plain payload is encoded ("tree", "numpy", ...)
    schema       int    the caller's schema version of the object
    created      str    ISO-8601 UTC time of sealing
    compression  str    "zstd" (one frame with its content size) or "none"
    plain_len    int    bytes of the original object
    stored_len   int    bytes after compression (== plain_len for "none")
    payload_len  int    P, bytes stored (for encrypted objects: stored_len + 16 per segment)
    encryption   null, or {alg: "AES-256-GCM-STREAM", key: "key"|"password",
                 kdf: null | {name: "scrypt", n, r, p, salt: bin}, salt: bin(32) (HKDF salt),
                 check: bin(16) (key-check value), segment: int (plaintext bytes per segment)}
    meta         map of str to None/bool/int/float/str, free for callers

An encrypted payload is the sequence of AES-256-GCM segments described in
``persistkit.format.crypto``. Every segment carries bytes [0, 22+H) (prefix,
header and header check) as associated data. So a forged header, even one
with recomputed checksums, fails authentication.

Checks on open, in order, and what each failure raises:

1. The magic. ``FormatError`` ("not a persistkit file"), unless the first
   bytes are a cut-off magic or the magic is within 2 bits of ours. Those
   raise ``IntegrityError``, because they are damage and not a foreign file.
   An empty input is a truncated file (``IntegrityError``).
2. The header length (at most 64 KiB) and the header check give
   ``IntegrityError``. This comes before the version is trusted, so a flipped
   version bit reads as damage. Only an intact newer file gets
   ``FormatError`` with "upgrade persistkit".
3. The header fields. Missing, mistyped or inconsistent fields give
   ``IntegrityError``. An unknown compression, cipher or field gives
   ``FormatError`` (a newer writer).
4. The exact total length and the trailer give ``IntegrityError``
   (truncated, junk appended, bit flip).
5. For encrypted objects:

   * No key gives ``WrongKeyError`` saying what to pass.
   * KDF parameters below the floor give ``IntegrityError``.
   * A failed key check gives ``WrongKeyError``.
   * A failed GCM tag gives ``IntegrityError``: tampering, since the checksums
     matched.

   An unencrypted file opened with a key is refused (``IntegrityError``: it
   may have been swapped for a forged plain one) unless
   ``allow_unencrypted=True``.
6. Decompression. The declared frame size must equal ``plain_len``, and
   ``plain_len`` must be at most ``max_plain_len`` (else
   ``BudgetExceededError``). Output is capped at ``plain_len``.

Because of the checksums, accidental damage (any single truncation or bit
flip) gives ``IntegrityError`` and never ``WrongKeyError``. Stores can fall
back on damage and still stop on a wrong key. The checksums are not a
security measure; authenticity comes from the key.
"""

from __future__ import annotations

import datetime as dt
import functools
import struct
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypedDict, Unpack

import msgpack
import xxhash
import zstandard

from persistkit.errors import (
    BudgetExceededError,
    FormatError,
    IntegrityError,
    NewerFormatError,
    UnsupportedTypeError,
)
from persistkit.format import crypto
from persistkit.format.crypto import KdfParams, Key

__all__ = [
    "FORMAT_VERSION",
    "HEADER_SPAN_MAX",
    "MAGIC",
    "Header",
    "MetaValue",
    "Opened",
    "SealOptions",
    "Stream",
    "open_envelope",
    "read_header",
    "seal",
    "seal_parts",
    "seal_stream",
]

MAGIC = b"\x89PKENV\r\n"
FORMAT_VERSION = 1
PREFIX = struct.Struct("<8sHI")
HEADER_CHECK = 8
TRAILER = 16
MAX_HEADER = 64 * 1024
HEADER_SPAN_MAX = PREFIX.size + MAX_HEADER + HEADER_CHECK  # enough bytes for read_header on any file
DEFAULT_MAX_PLAIN = 16 * 1024**3
COMPRESSIONS = ("zstd", "none")

MetaValue = None | bool | int | float | str  # JSON-compatible, so inspect can print it
_HEADER_KEYS = frozenset(
    ("kind", "codec", "schema", "created", "compression", "plain_len", "stored_len", "payload_len",
     "encryption", "meta")
)  # fmt: skip
_I64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Header:
    """What an envelope says about itself; readable without a key."""

    version: int
    header_len: int
    kind: str
    codec: str
    schema: int
    created: str
    compression: str
    plain_len: int
    stored_len: int
    payload_len: int
    encryption: crypto.Encryption | None
    meta: Mapping[str, MetaValue] = field(default_factory=lambda: types.MappingProxyType({}))

    @property
    def encrypted(self) -> bool:
        return self.encryption is not None

    @property
    def total_len(self) -> int:
        """The exact size of the whole envelope."""
        return PREFIX.size + self.header_len + HEADER_CHECK + self.payload_len + TRAILER

    @property
    def created_at(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.created)


@dataclass(frozen=True, eq=False)
class Opened:
    """An opened envelope.

    ``payload`` is the original object as ``bytes``. When a buffer is enough,
    ``view`` avoids the copy ``payload`` may need; for unencrypted, uncompressed
    envelopes it is a zero-copy view into the data passed to ``open_envelope``.
    """

    header: Header
    _data: bytes | bytearray | memoryview = field(repr=False)

    @functools.cached_property
    def payload(self) -> bytes:
        data = self._data
        return data if type(data) is bytes else bytes(data)

    @property
    def view(self) -> memoryview:
        return memoryview(self._data)

    def __repr__(self) -> str:
        h = self.header
        return f"Opened(kind={h.kind!r}, codec={h.codec!r}, plain_len={h.plain_len}, encrypted={h.encrypted})"


# -- sealing ---------------------------------------------------------------------


class SealOptions(TypedDict, total=False):
    """The keyword options of ``seal``, ``seal_parts`` and ``seal_stream`` (defaults in ``_prepare``)."""

    schema: int
    compression: str
    key: Key | None
    password: str | None
    kdf: KdfParams | None
    meta: Mapping[str, object] | None
    level: int
    segment: int
    created: dt.datetime | None


def _prepare(
    payload: bytes | bytearray | memoryview,
    *,
    kind: str,
    codec: str,
    schema: int = 1,
    compression: str = "zstd",
    key: Key | None = None,
    password: str | None = None,
    kdf: KdfParams | None = None,
    meta: Mapping[str, object] | None = None,
    level: int = 3,
    segment: int = crypto.DEFAULT_SEGMENT,
    created: dt.datetime | None = None,
) -> tuple[bytes, memoryview, crypto.Cipher | None, int]:
    """Validate, compress, and build the authenticated head: (head, stored bytes, cipher, payload length)."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, not {compression!r}")
    if key is not None and password is not None:
        raise ValueError("pass key= or password=, not both")
    if kdf is not None and password is None:
        raise ValueError("kdf= only applies together with password=")
    if type(level) is not int or not -7 <= level <= zstandard.MAX_COMPRESSION_LEVEL:
        raise ValueError(f"level must be an int from -7 to {zstandard.MAX_COMPRESSION_LEVEL}")
    for name, value in (("kind", kind), ("codec", codec)):
        if type(value) is not str:
            raise TypeError(f"{name} must be a str")
    if type(schema) is not int or not _I64[0] <= schema <= _I64[1]:
        raise TypeError("schema must be a 64-bit int")
    clean_meta = _checked_meta(meta or {})
    when = created or dt.datetime.now(dt.UTC)
    if when.tzinfo is None:
        raise ValueError("created must be timezone-aware")

    view = _byte_view(payload)
    stored: bytes | memoryview = view
    if compression == "zstd":
        stored = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(view)
    stored_view = memoryview(stored)

    master = Key.from_password(password, params=kdf) if password is not None else key
    cipher: crypto.Cipher | None = None
    enc: crypto.Encryption | None = None
    payload_len = stored_view.nbytes
    if master is not None:
        enc, cipher = crypto.new_encryption(master, segment=segment)
        payload_len = cipher.sealed_size(stored_view.nbytes)

    fields = {
        "kind": kind,
        "codec": codec,
        "schema": schema,
        "created": when.astimezone(dt.UTC).isoformat(timespec="microseconds"),
        "compression": compression,
        "plain_len": view.nbytes,
        "stored_len": stored_view.nbytes,
        "payload_len": payload_len,
        "encryption": None if enc is None else enc.to_header(),
        "meta": clean_meta,
    }
    try:
        header: bytes = msgpack.packb(fields, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as err:  # e.g. a lone surrogate in a str
        raise UnsupportedTypeError(
            f"the envelope header cannot be encoded ({type(err).__name__}: {err}); use plain UTF-8 "
            "strings for kind, codec and meta.",
            field="header",
        ) from err
    if len(header) > MAX_HEADER:
        raise BudgetExceededError(
            f"the envelope header would be {len(header)} bytes, over the {MAX_HEADER}-byte limit; "
            "keep meta small and store large data in the payload.",
            field="meta",
        )
    head = PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header
    head += xxhash.xxh3_64_digest(head)
    return head, stored_view, cipher, payload_len


def seal_parts(
    payload: bytes | bytearray | memoryview,
    *,
    kind: str,
    codec: str,
    **options: Unpack[SealOptions],
) -> list[bytes | memoryview]:
    """Like ``seal``, but return the pieces so a writer can stream them without joining.

    The pieces may be views of ``payload``; write them before mutating it.
    """
    head, stored_view, cipher, payload_len = _prepare(payload, kind=kind, codec=codec, **options)
    body: bytes | memoryview = stored_view
    if cipher is not None:
        out = bytearray(payload_len)
        cipher.encrypt_into(stored_view, head, memoryview(out))
        body = memoryview(out)
    trailer = xxhash.xxh3_128()
    trailer.update(head)
    trailer.update(body)
    return [head, body, trailer.digest()]


@dataclass(frozen=True)
class Stream:
    """A sealed envelope produced piece by piece: ``size`` bytes in all, from ``pieces``.

    Each piece may be a view of one reused buffer: write it out before taking
    the next. The last piece is the 16-byte trailer (the envelope's digest).
    """

    size: int
    pieces: Iterator[bytes | memoryview]


def seal_stream(
    payload: bytes | bytearray | memoryview,
    *,
    kind: str,
    codec: str,
    **options: Unpack[SealOptions],
) -> Stream:
    """Like ``seal_parts``, without holding the whole ciphertext in memory.

    Encryption goes segment by segment into one reused buffer, so sealing a
    large payload touches no more new memory than one segment.
    """
    head, stored_view, cipher, payload_len = _prepare(payload, kind=kind, codec=codec, **options)

    def pieces() -> Iterator[bytes | memoryview]:
        trailer = xxhash.xxh3_128()
        trailer.update(head)
        yield head
        if cipher is None:
            trailer.update(stored_view)
            yield stored_view
        else:
            for part in cipher.encrypt_iter(stored_view, head):
                trailer.update(part)
                yield part
        yield trailer.digest()

    return Stream(len(head) + payload_len + TRAILER, pieces())


def seal(
    payload: bytes | bytearray | memoryview,
    *,
    kind: str,
    codec: str,
    **options: Unpack[SealOptions],
) -> bytes:
    """Seal ``payload`` into one envelope (layout in the module docstring).

    With ``key`` or ``password`` the payload is encrypted. ``kdf`` sets the
    scrypt cost for passwords (``KdfParams.floor()`` in tests). ``segment`` is
    the plaintext size of each GCM segment. ``created`` pins the timestamp;
    with it, unencrypted envelopes are byte-for-byte reproducible.
    """
    return b"".join(seal_parts(payload, kind=kind, codec=codec, **options))


def _byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _checked_meta(meta: Mapping[str, object]) -> dict[str, MetaValue]:
    out: dict[str, MetaValue] = {}
    for name, value in meta.items():
        if type(name) is not str:
            raise UnsupportedTypeError(
                f"envelope meta keys must be str, not {type(name).__name__}.", field="meta"
            )
        if value is None or type(value) in (bool, float, str):
            out[name] = value  # type: ignore[assignment]
        elif type(value) is int and -(2**63) <= value < 2**64:
            out[name] = value
        else:
            raise UnsupportedTypeError(
                f"envelope meta[{name!r}] is a {type(value).__name__}; meta holds only str, int (64-bit), "
                "float, bool or None. Convert it, or put it in the payload.",
                field=f"meta[{name!r}]",
            )
    return out


# -- reading ---------------------------------------------------------------------


def _damaged(source: str, what: str) -> IntegrityError:
    return IntegrityError(
        f"{source}: {what}. The file is damaged (truncated, overwritten or bit-flipped); restore it from "
        "a backup or an older generation.",
        path=source,
    )


def _check_frame(view: memoryview, source: str) -> int:
    """Steps 1-2 of the module docstring; return the header length."""
    size = view.nbytes
    start = bytes(view[: len(MAGIC)])
    if start != MAGIC:
        if size < len(MAGIC) and MAGIC.startswith(start):
            what = "empty (0 bytes)" if size == 0 else f"only {size} bytes, cut off inside the magic"
            raise IntegrityError(
                f"{source}: {what}: a truncated persistkit file, or not a persistkit file at all. Restore it "
                "from a backup or an older generation.",
                path=source,
            )
        if size >= len(MAGIC) and sum((a ^ b).bit_count() for a, b in zip(start, MAGIC, strict=True)) <= 2:
            raise _damaged(source, "the persistkit magic bytes are damaged")
        raise FormatError(
            f"{source}: not a persistkit file (it does not start with the persistkit envelope magic). "
            "If it should be one, its first bytes were overwritten or mangled (a text-mode transfer?); "
            "restore it from a backup.",
            path=source,
        )
    if size < PREFIX.size:
        raise _damaged(source, f"only {size} bytes, cut off inside the envelope prefix")
    _, _, header_len = PREFIX.unpack_from(view)
    if header_len > MAX_HEADER:
        raise _damaged(source, f"header length {header_len} exceeds the {MAX_HEADER}-byte cap")
    end = PREFIX.size + header_len
    if size < end + HEADER_CHECK:
        raise _damaged(source, f"only {size} bytes, cut off inside the {header_len}-byte header")
    if xxhash.xxh3_64_digest(view[:end]) != view[end : end + HEADER_CHECK]:
        raise _damaged(source, "header checksum mismatch")
    return int(header_len)


def read_header(data: bytes | bytearray | memoryview, *, source: str = "<bytes>") -> Header:
    """Parse and check the header; no key needed, the payload is neither read nor decrypted.

    ``data`` may be the whole file or just its beginning (``HEADER_SPAN_MAX``
    bytes always suffice). Only the header check is verified; ``open_envelope``
    verifies everything.
    """
    view = _byte_view(data)
    header_len = _check_frame(view, source)
    _, version, _ = PREFIX.unpack_from(view)
    if version != FORMAT_VERSION:
        if version > FORMAT_VERSION:
            raise NewerFormatError(
                f"{source} was written by a newer persistkit (format {version}; this one reads format "
                f"{FORMAT_VERSION}); upgrade persistkit to read it.",
                path=source,
            )
        raise FormatError(f"{source}: unknown envelope format {version}.", path=source)
    raw = view[PREFIX.size : PREFIX.size + header_len]
    try:
        fields = msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=True,
            max_str_len=header_len,
            max_bin_len=header_len,
            max_array_len=header_len,
            max_map_len=header_len,
            max_ext_len=0,
        )
    except Exception as err:  # msgpack raises several types for bad bytes
        raise _damaged(source, f"the header does not parse ({type(err).__name__})") from err
    return _validate(fields, header_len, source)


def _validate(fields: object, header_len: int, source: str) -> Header:
    if not isinstance(fields, dict):
        raise _damaged(source, "the header is not a map")
    unknown = set(fields) - _HEADER_KEYS
    if unknown:
        raise NewerFormatError(
            f"{source}: the header has fields this persistkit does not know ({', '.join(sorted(unknown))}); "
            "it was written by a newer persistkit: upgrade persistkit to read it.",
            path=source,
        )
    missing = _HEADER_KEYS - set(fields)
    if missing:
        raise _damaged(source, f"the header lacks {', '.join(sorted(missing))}")
    for name in ("kind", "codec", "created", "compression"):
        if type(fields[name]) is not str:
            raise _damaged(source, f"header field {name!r} is not a string")
    for name in ("schema", "plain_len", "stored_len", "payload_len"):
        value = fields[name]
        if type(value) is not int or (name != "schema" and value < 0):
            raise _damaged(source, f"header field {name!r} is not a valid integer")
    if fields["compression"] not in COMPRESSIONS:
        raise FormatError(
            f"{source}: compressed with {fields['compression']!r}, which this persistkit does not know; "
            "upgrade persistkit to read it.",
            path=source,
        )
    meta = fields["meta"]
    if not isinstance(meta, dict) or not all(
        type(k) is str and (v is None or type(v) in (bool, int, float, str)) for k, v in meta.items()
    ):
        raise _damaged(source, "header field 'meta' is not a map of scalars")
    enc = (
        None
        if fields["encryption"] is None
        else crypto.Encryption.from_header(fields["encryption"], source=source)
    )
    plain_len, stored_len, payload_len = fields["plain_len"], fields["stored_len"], fields["payload_len"]
    if fields["compression"] == "none" and stored_len != plain_len:
        raise _damaged(source, "uncompressed, yet stored and plain lengths differ")
    expected = stored_len
    if enc is not None:
        expected += max(1, -(-stored_len // enc.segment)) * crypto.TAG
    if payload_len != expected:
        raise _damaged(source, f"payload length {payload_len} does not match the header's other lengths")
    return Header(
        version=FORMAT_VERSION,
        header_len=header_len,
        kind=fields["kind"],
        codec=fields["codec"],
        schema=fields["schema"],
        created=fields["created"],
        compression=fields["compression"],
        plain_len=plain_len,
        stored_len=stored_len,
        payload_len=payload_len,
        encryption=enc,
        meta=types.MappingProxyType(meta),
    )


def open_envelope(
    data: bytes | bytearray | memoryview,
    *,
    key: Key | None = None,
    password: str | None = None,
    source: str = "<bytes>",
    max_plain_len: int = DEFAULT_MAX_PLAIN,
    allow_unencrypted: bool = False,
) -> Opened:
    """Verify and open an envelope; the module docstring lists which error means what.

    ``source`` names the file or member ("bundle.pkb:policy") in every error.
    Nothing is decompressed or returned before the whole envelope has checked
    out: checksums for every envelope, and GCM tags for encrypted ones.
    """
    if key is not None and password is not None:
        raise ValueError("pass key= or password=, not both")
    view = _byte_view(data)
    header = read_header(view, source=source)
    if header.compression == "zstd" and header.plain_len > max_plain_len:
        raise BudgetExceededError(
            f"{source}: claims {header.plain_len} bytes uncompressed, over the {max_plain_len}-byte limit "
            "(max_plain_len=). Raise the limit if you expect an object this large.",
            path=source,
        )
    total = header.total_len
    if view.nbytes != total:
        what = "truncated" if view.nbytes < total else "has extra bytes appended"
        raise _damaged(source, f"{what}: {view.nbytes} bytes, the header promises {total}")
    start = PREFIX.size + header.header_len + HEADER_CHECK
    body_end = total - TRAILER
    if xxhash.xxh3_128_digest(view[:body_end]) != view[body_end:]:
        raise _damaged(source, "checksum mismatch")
    stored: bytes | bytearray | memoryview = view[start:body_end]
    if header.encryption is not None:
        cipher = crypto.open_encryption(header.encryption, key=key, password=password, source=source)
        stored = cipher.decrypt(view[start:body_end], bytes(view[:start]), header.stored_len, source=source)
    elif (key is not None or password is not None) and not allow_unencrypted:
        raise IntegrityError(
            f"{source} is not encrypted, but a key or password was given: an encrypted file may have been "
            "replaced by a forged plain one. Restore it from a backup, or pass allow_unencrypted=True if "
            "plain files are expected here.",
            path=source,
        )
    if header.compression == "zstd":
        return Opened(header, _decompress(stored, header.plain_len, source))
    return Opened(header, stored)


def _decompress(stored: bytes | bytearray | memoryview, plain_len: int, source: str) -> bytes:
    try:
        declared = zstandard.frame_content_size(stored)
    except zstandard.ZstdError as err:
        raise _damaged(source, "the compressed payload has no valid zstd frame header") from err
    if declared != plain_len:
        raise _damaged(source, f"the zstd frame declares {declared} bytes, the header {plain_len}")
    try:
        plain = zstandard.ZstdDecompressor().decompress(
            stored, max_output_size=plain_len, allow_extra_data=False
        )
    except zstandard.ZstdError as err:
        raise _damaged(source, f"the compressed payload does not decompress ({err})") from err
    except MemoryError as err:
        raise BudgetExceededError(
            f"{source}: not enough memory to decompress {plain_len} bytes.", path=source
        ) from err
    if len(plain) != plain_len:
        raise _damaged(source, f"decompressed to {len(plain)} bytes, the header says {plain_len}")
    return plain
