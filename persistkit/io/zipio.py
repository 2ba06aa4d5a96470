"""Streaming ZIP (stored, uncompressed) writing and zero-copy reading for bundles.

Writing is hand-written rather than ``zipfile`` on purpose: members are
written as the pieces the envelope layer hands over (views of the caller's
arrays, no joining), straight into any sink such as ``atomic_writer``'s
``write`` (which cannot seek), with the CRC and sizes known up front so every
local header is complete (no data descriptors). Small pieces are coalesced
into one write so a crash-state enumeration sees few, meaningful operations.
Entries are always ``ZIP_STORED``: the envelopes inside are already
compressed where it helps. ZIP64 records are written when sizes or offsets
need them (or when forced, for tests).

Reading maps the file (``mmap``) so members are sliced without copying;
the central directory is parsed by ``zipfile`` (well-tested against odd and
hostile archives), local headers by ``read_entries`` here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import mmap
import struct
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from persistkit.io.fs import PathLike, current_fs, io_error

# The one list of zip-damage exceptions lives in persistkit.zipdamage (format/ needs it too); re-exported.
from persistkit.zipdamage import ZIP_DAMAGE as ZIP_DAMAGE
from persistkit.zipdamage import ZIP_DAMAGE_OR_IO as ZIP_DAMAGE_OR_IO

__all__ = [
    "ZIP_DAMAGE",
    "ZIP_DAMAGE_OR_IO",
    "MappedFile",
    "ZipEntry",
    "ZipStreamWriter",
    "ZipStructureError",
    "map_file",
    "read_entries",
]

Buffer = bytes | bytearray | memoryview
Sink = Callable[[Buffer], object]

_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_EOCD = struct.Struct("<4sHHHHIIH")
_EOCD64 = struct.Struct("<4sQHHIIQQQQ")
_LOCATOR64 = struct.Struct("<4sIQI")
_MAX32 = 0xFFFFFFFF
_MAX16 = 0xFFFF
_UTF8_FLAG = 0x800
_COALESCE = 256 * 1024
_DESCRIPTOR_FLAG = 0x8
_PARALLEL_CRC = 4 * 1024 * 1024


class _BackgroundCrc:
    """CRC-32 of ``pieces`` on a short-lived thread (no pool: it would not survive a fork)."""

    def __init__(self, pieces: Sequence[Buffer]) -> None:
        self._pieces = pieces
        self._value = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="persistkit-crc", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = crc32(self._pieces)
        except BaseException as err:  # pragma: no cover - zlib does not fail on buffers
            self._error = err

    def result(self) -> int:
        self._thread.join()
        if self._error is not None:  # pragma: no cover
            raise self._error
        return self._value


def _dos_time(when: dt.datetime) -> tuple[int, int]:
    when = max(when, dt.datetime(1980, 1, 1, tzinfo=when.tzinfo))
    date = (when.year - 1980) << 9 | when.month << 5 | when.day
    time = when.hour << 11 | when.minute << 5 | when.second // 2
    return time, date


def crc32(pieces: Sequence[Buffer]) -> int:
    value = 0
    for piece in pieces:
        value = zlib.crc32(piece, value)
    return value


@dataclass(frozen=True)
class _Written:
    name: bytes
    flags: int
    crc: int
    size: int
    offset: int


class ZipStreamWriter:
    """Write a stored ZIP archive into ``sink`` entry by entry; ``finish()`` writes the directory."""

    def __init__(self, sink: Sink, *, when: dt.datetime | None = None, force_zip64: bool = False) -> None:
        self._sink = sink
        self._offset = 0
        self._pending = bytearray()
        self._entries: list[_Written] = []
        self._time, self._date = _dos_time((when or dt.datetime.now(dt.UTC)).replace(tzinfo=None))
        self._force64 = force_zip64
        self._finished = False

    @property
    def offset(self) -> int:
        return self._offset

    def _emit(self, data: Buffer) -> None:
        n = memoryview(data).nbytes
        if n < _COALESCE:
            self._pending += data
            if len(self._pending) >= 4 * _COALESCE:
                self._flush()
        else:
            self._flush()
            self._sink(data)
        self._offset += n

    def _flush(self) -> None:
        if self._pending:
            self._sink(bytes(self._pending))
            self._pending.clear()

    def add(self, name: str, pieces: Sequence[Buffer]) -> int:
        """Append one entry made of ``pieces``; return the offset where its data starts.

        Large entries get their CRC-32 computed on a worker thread while the
        data is written (zlib and the write both release the GIL), and so are
        followed by a data descriptor (flag bit 3), as the ZIP spec allows.
        """
        if self._finished:
            raise ValueError("the archive is finished")
        raw_name = name.encode("utf-8")
        flags = 0 if raw_name.isascii() else _UTF8_FLAG
        size = sum(memoryview(p).nbytes for p in pieces)
        header_offset = self._offset
        zip64 = self._force64 or size >= _MAX32
        deferred = size >= _PARALLEL_CRC
        future: _BackgroundCrc | None = None
        if deferred:
            flags |= _DESCRIPTOR_FLAG
            future = _BackgroundCrc(pieces)
            value = stored = 0
            extra = struct.pack("<HHQQ", 1, 16, 0, 0) if zip64 else b""
        else:
            value = crc32(pieces)
            stored = size
            extra = struct.pack("<HHQQ", 1, 16, size, size) if zip64 else b""
        if zip64:
            stored = _MAX32
        try:
            self._emit(
                _LOCAL.pack(
                    b"PK\x03\x04", 45 if zip64 else 20, flags, 0, self._time, self._date, value, stored, stored,
                    len(raw_name), len(extra),
                )
                + raw_name
                + extra
            )  # fmt: skip
            data_offset = self._offset
            for piece in pieces:
                if memoryview(piece).nbytes:
                    self._emit(piece)
        finally:
            if future is not None:
                value = future.result()  # never leave the worker reading buffers the caller may free
        if deferred:
            sizes = struct.pack("<QQ", size, size) if zip64 else struct.pack("<II", size, size)
            self._emit(b"PK\x07\x08" + struct.pack("<I", value) + sizes)
        self._entries.append(_Written(raw_name, flags, value, size, header_offset))
        return data_offset

    def add_stream(self, name: str, size: int, pieces: Iterable[Buffer]) -> int:
        """Like ``add`` for an entry whose ``size`` is known but whose data comes piece by piece.

        Each piece is written (and CRC-ed) before the next is taken, so producers may
        reuse one buffer. The CRC follows in a data descriptor. Returns the data offset.
        """
        if self._finished:
            raise ValueError("the archive is finished")
        raw_name = name.encode("utf-8")
        flags = (0 if raw_name.isascii() else _UTF8_FLAG) | _DESCRIPTOR_FLAG
        header_offset = self._offset
        zip64 = self._force64 or size >= _MAX32
        extra = struct.pack("<HHQQ", 1, 16, 0, 0) if zip64 else b""
        stored = _MAX32 if zip64 else 0
        self._emit(
            _LOCAL.pack(
                b"PK\x03\x04", 45 if zip64 else 20, flags, 0, self._time, self._date, 0, stored, stored,
                len(raw_name), len(extra),
            )
            + raw_name
            + extra
        )  # fmt: skip
        data_offset = self._offset
        value = 0
        written = 0
        for piece in pieces:
            view = memoryview(piece).cast("B")
            if view.nbytes:
                value = zlib.crc32(view, value)
                self._emit(view)
                written += view.nbytes
        if written != size:
            raise ValueError(f"zip entry {name!r}: {written} bytes written, {size} announced")
        sizes = struct.pack("<QQ", size, size) if zip64 else struct.pack("<II", size, size)
        self._emit(b"PK\x07\x08" + struct.pack("<I", value) + sizes)
        self._entries.append(_Written(raw_name, flags, value, size, header_offset))
        return data_offset

    def finish(self) -> int:
        """Write the central directory and end records; return the archive size."""
        if self._finished:
            raise ValueError("the archive is finished")
        self._finished = True
        start = self._offset
        for e in self._entries:
            fields: list[int] = []
            size = e.size
            offset = e.offset
            if self._force64 or e.size >= _MAX32:
                fields += [e.size, e.size]
                size = _MAX32
            if self._force64 or e.offset >= _MAX32:
                fields.append(e.offset)
                offset = _MAX32
            extra = struct.pack(f"<HH{len(fields)}Q", 1, 8 * len(fields), *fields) if fields else b""
            self._emit(
                _CENTRAL.pack(
                    b"PK\x01\x02", 45 if fields else 20, 45 if fields else 20, e.flags, 0, self._time, self._date,
                    e.crc, size, size, len(e.name), len(extra), 0, 0, 0, 0, offset,
                )
                + e.name
                + extra
            )  # fmt: skip
        cd_size = self._offset - start
        count = len(self._entries)
        if self._force64 or start >= _MAX32 or cd_size >= _MAX32 or count >= _MAX16:
            eocd64 = self._offset
            self._emit(
                _EOCD64.pack(b"PK\x06\x06", _EOCD64.size - 12, 45, 45, 0, 0, count, count, cd_size, start)
            )
            self._emit(_LOCATOR64.pack(b"PK\x06\x07", 0, eocd64, 1))
        self._emit(
            _EOCD.pack(
                b"PK\x05\x06", 0, 0, min(count, _MAX16), min(count, _MAX16), min(cd_size, _MAX32),
                min(start, _MAX32), 0,
            )
        )  # fmt: skip
        self._flush()
        return self._offset


# -- reading -----------------------------------------------------------------------


class ZipStructureError(Exception):
    """The bytes are not a readable stored ZIP archive; ``looks_like_zip`` says whether they start like one."""

    def __init__(self, message: str, *, looks_like_zip: bool, entry: str | None = None) -> None:
        super().__init__(message)
        self.looks_like_zip = looks_like_zip
        self.entry = entry


@dataclass(frozen=True)
class ZipEntry:
    """One archive entry: its data is ``view[start : start + size]``."""

    name: str
    start: int
    size: int
    crc: int


def read_entries(view: memoryview) -> list[ZipEntry]:
    """Every entry in central-directory order, duplicates included. Only stored, unencrypted entries are valid."""
    looks = bytes(view[:4]) == b"PK\x03\x04"
    try:
        with zipfile.ZipFile(_ViewReader(view)) as archive:
            infos = archive.infolist()
    except ZIP_DAMAGE as err:
        raise ZipStructureError(f"{type(err).__name__}: {err}", looks_like_zip=looks) from err
    entries: list[ZipEntry] = []
    for info in infos:
        name = info.filename
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            raise ZipStructureError(
                f"entry {name!r} is compressed or zip-encrypted", looks_like_zip=True, entry=name
            )
        if info.compress_size != info.file_size:
            raise ZipStructureError(f"entry {name!r} has inconsistent sizes", looks_like_zip=True, entry=name)
        at = info.header_offset
        if at < 0 or at + _LOCAL.size > view.nbytes:
            raise ZipStructureError(
                f"entry {name!r} points outside the file", looks_like_zip=True, entry=name
            )
        fields = _LOCAL.unpack_from(view, at)
        if fields[0] != b"PK\x03\x04":
            raise ZipStructureError(f"entry {name!r}: bad local header", looks_like_zip=True, entry=name)
        name_len, extra_len = fields[9], fields[10]
        local_name = bytes(view[at + _LOCAL.size : at + _LOCAL.size + name_len])
        if local_name != info.orig_filename.encode("utf-8" if info.flag_bits & _UTF8_FLAG else "cp437"):
            raise ZipStructureError(
                f"entry {name!r}: local and central names differ", looks_like_zip=True, entry=name
            )
        start = at + _LOCAL.size + name_len + extra_len
        if start + info.file_size > view.nbytes:
            raise ZipStructureError(
                f"entry {name!r} runs past the end of the file", looks_like_zip=True, entry=name
            )
        entries.append(ZipEntry(name, start, info.file_size, info.CRC))
    return entries


class _ViewReader(io.RawIOBase):
    """A seekable read-only file over a memoryview, for ``zipfile``'s directory parsing."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._view.nbytes}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Buffer) -> int:  # type: ignore[override]
        out = memoryview(buffer).cast("B")
        chunk = self._view[self._pos : self._pos + out.nbytes]
        out[: chunk.nbytes] = chunk
        self._pos += chunk.nbytes
        return chunk.nbytes

    def close(self) -> None:
        self._view = memoryview(b"")
        super().close()


class MappedFile:
    """A file's bytes as a read-only memoryview (mmap when possible, else read whole).

    Close it (or use it as a context manager) after every view derived from
    ``view`` has been dropped; arrays that must outlive it are copied.
    """

    def __init__(self, path: str, data: mmap.mmap | bytes) -> None:
        self.path = path
        self._data: mmap.mmap | bytes | None = data
        self.view = memoryview(data)

    def close(self) -> None:
        data, self._data = self._data, None
        self.view.release()
        if isinstance(data, mmap.mmap):
            with contextlib.suppress(BufferError):  # a view is still alive: the GC closes the map later
                data.close()

    def __enter__(self) -> MappedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def map_file(path: PathLike) -> MappedFile:
    """Map ``path`` read-only through the current PersistFS; PersistIOError names the path on failure."""
    fs = current_fs()
    target = str(path)
    try:
        handle = fs.open_read(target)
    except OSError as err:
        raise io_error("open", target, err) from err
    try:
        try:
            fileno = handle.fileno()
            size = fs.stat(target).st_size
        except (OSError, io.UnsupportedOperation):
            fileno, size = -1, 0
        if fileno >= 0 and size > 0:
            try:
                return MappedFile(target, mmap.mmap(fileno, 0, access=mmap.ACCESS_READ))
            except (OSError, ValueError):
                pass  # not mappable (a pipe, a special file): read it instead
        try:
            return MappedFile(target, handle.read())
        except OSError as err:
            raise io_error("read", target, err) from err
    finally:
        handle.close()
