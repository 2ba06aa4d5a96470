"""Where a file's data is: allocated extents, and the regions its format's own structure names.

``extents(path)`` lists the byte ranges the file system has allocated
(``SEEK_DATA``/``SEEK_HOLE``): a 4 MiB LMDB map with three pages written has
one 20 KiB extent, and damage spread over the whole size would almost never
touch it. ``layout(data)`` recognises a format by content (never by file name)
and names its regions, so damage can be aimed at each of them:

=================  =====================================================================
format             regions
=================  =====================================================================
zip (and torch     local header and data of each member (a sample when there are many),
.pt, numpy .npz)   central directory, end of central directory; .npy headers of stored
                   .npz members
SQLite             the 100-byte header; per b-tree page: page header, cell pointer
                   array, cell content
HDF5               the superblock; with h5py already imported, each dataset's data
.npy               magic and version, header length, header (dtype, shape), array data
safetensors        the 8-byte header length, the JSON header, each tensor's data
parquet            leading magic, column chunks (per column with pyarrow imported),
                   footer metadata, footer length and magic
LMDB               meta pages 0 and 1; each allocated branch/leaf/overflow page
persistkit         envelope magic/version, header length, header, header check, payload,
envelope           trailer
JSON               the document; digits of numbers (a flipped low bit keeps it valid JSON)
=================  =====================================================================

Anything else is "unknown": damage is spread over its allocated extents.
Parsers here read bytes only and never trust them: a field that points
outside the file ends the region list for that structure, nothing more.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import sys
import zipfile
from dataclasses import dataclass

__all__ = ["Layout", "Region", "extents", "layout"]

_MAX_MEMBERS = 8
_MAX_PAGES = 12


@dataclass(frozen=True)
class Region:
    """Bytes ``[start, end)`` of the file, named by the format (``"zip central directory"``)."""

    name: str
    start: int
    end: int


@dataclass(frozen=True)
class Layout:
    format: str
    regions: tuple[Region, ...] = ()

    def region_at(self, offset: int) -> str:
        """The name of the smallest region holding ``offset``, or "" when none does."""
        best: Region | None = None
        for r in self.regions:
            if r.start <= offset < r.end and (best is None or r.end - r.start < best.end - best.start):
                best = r
        return best.name if best else ""


def extents(path: str | os.PathLike[str]) -> list[tuple[int, int]]:
    """The allocated byte ranges of ``path`` (the whole file where SEEK_DATA is not supported)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        found: list[tuple[int, int]] = []
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left (or the file system cannot tell)
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            found.append((start, end))
            offset = end
        if not found and size:
            return [(0, size)] if not _supports_seek_data(fd) else []
        return found
    finally:
        os.close(fd)


def _supports_seek_data(fd: int) -> bool:
    try:
        os.lseek(fd, 0, os.SEEK_HOLE)
    except OSError:
        return False
    return True


def layout(data: bytes) -> Layout:
    """The format of ``data`` and its named regions, recognised by content."""
    for sniff in (_envelope, _sqlite, _hdf5, _npy, _lmdb, _parquet, _zip, _safetensors, _json, _text):
        with contextlib.suppress(Exception):  # a damaged or foreign file is "not this format"
            found = sniff(data)
            if found is not None:
                return Layout(
                    found.format, tuple(r for r in found.regions if 0 <= r.start < r.end <= len(data))
                )
    return Layout("unknown")


def _spread(items: list[int], limit: int) -> list[int]:
    """At most ``limit`` of ``items``, evenly spread (first and last kept)."""
    if len(items) <= limit:
        return items
    step = (len(items) - 1) / (limit - 1)
    return sorted({items[round(i * step)] for i in range(limit)})


# -- formats ---------------------------------------------------------------------------


def _envelope(data: bytes) -> Layout | None:
    from persistkit.format.envelope import MAGIC

    if not data.startswith(MAGIC) or len(data) < 14:
        return None
    (header_len,) = struct.unpack_from("<I", data, 10)
    h = 14 + header_len
    return Layout(
        "persistkit envelope",
        (
            Region("envelope magic and version", 0, 10),
            Region("envelope header length", 10, 14),
            Region("envelope header", 14, h),
            Region("envelope header check", h, h + 8),
            Region("envelope payload", h + 8, len(data) - 16),
            Region("envelope trailer", len(data) - 16, len(data)),
        ),
    )


def _sqlite(data: bytes) -> Layout | None:
    if not data.startswith(b"SQLite format 3\0") or len(data) < 100:
        return None
    (page_size,) = struct.unpack_from(">H", data, 16)
    page_size = 65536 if page_size == 1 else page_size
    reserved = data[20]
    regions = [Region("SQLite header", 0, 100)]
    pages = list(range(1, len(data) // page_size + 1))
    for page in _spread(pages, _MAX_PAGES):
        base = (page - 1) * page_size
        h = base + (100 if page == 1 else 0)
        kind = data[h]
        if kind not in (2, 5, 10, 13):
            continue  # overflow, freelist or pointer-map page
        header = 12 if kind in (2, 5) else 8
        cells, content = struct.unpack_from(">HH", data, h + 3)
        content = 65536 if content == 0 else content
        what = {2: "interior index", 5: "interior table", 10: "leaf index", 13: "leaf table"}[kind]
        regions.append(Region(f"b-tree page {page} header ({what})", h, h + header))
        if cells:
            regions.append(Region(f"b-tree page {page} cell pointers", h + header, h + header + 2 * cells))
            regions.append(Region(f"b-tree page {page} cells", base + content, base + page_size - reserved))
    return Layout("SQLite", tuple(regions))


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _hdf5(data: bytes) -> Layout | None:
    at = next((o for o in (0, 512, 1024, 2048, 4096) if data[o : o + 8] == _HDF5_SIGNATURE), None)
    if at is None:
        return None
    version = data[at + 8]
    regions = [Region("HDF5 superblock", at, at + (96 if version < 2 else 48))]
    if "h5py" in sys.modules:  # dataset offsets, only where the caller already uses h5py
        import h5py

        found: list[Region] = []

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset) and len(found) < _MAX_MEMBERS:
                offset = obj.id.get_offset()
                if offset is not None:
                    found.append(
                        Region(f"HDF5 dataset {name} data", offset, offset + obj.id.get_storage_size())
                    )
                elif obj.chunks is not None and obj.id.get_num_chunks():
                    chunk = obj.id.get_chunk_info(0)
                    found.append(
                        Region(
                            f"HDF5 dataset {name} first chunk",
                            chunk.byte_offset,
                            chunk.byte_offset + chunk.size,
                        )
                    )

        with h5py.File(io.BytesIO(data), "r") as f:
            f.visititems(visit)
        regions += found
    return Layout("HDF5", tuple(regions))


def _npy_regions(data: bytes, base: int, label: str) -> list[Region]:
    if data[base : base + 6] != b"\x93NUMPY":
        return []
    major = data[base + 6]
    size_len = 2 if major == 1 else 4
    (header_len,) = struct.unpack_from("<H" if size_len == 2 else "<I", data, base + 8)
    start = base + 8 + size_len
    return [
        Region(f"{label}magic and version", base, base + 8),
        Region(f"{label}header length", base + 8, start),
        Region(f"{label}header (dtype, shape, order)", start, start + header_len),
        Region(f"{label}array data", start + header_len, len(data)),
    ]


def _npy(data: bytes) -> Layout | None:
    regions = _npy_regions(data, 0, "npy ")
    return Layout(".npy", tuple(regions)) if regions else None


def _lmdb(data: bytes) -> Layout | None:
    if len(data) < 64 or struct.unpack_from("<I", data, 16)[0] != 0xBEEFC0DE:
        return None
    (flags,) = struct.unpack_from("<H", data, 10)
    if not flags & 0x08:  # P_META
        return None
    (page_size,) = struct.unpack_from("<I", data, 40)  # meta.mm_dbs[FREE_DBI].md_pad holds the page size
    if page_size < 512 or page_size & (page_size - 1):
        page_size = 4096
    regions = [Region("LMDB meta page 0", 0, page_size), Region("LMDB meta page 1", page_size, 2 * page_size)]
    pages = []
    for page in range(2, len(data) // page_size):
        (kind,) = struct.unpack_from("<H", data, page * page_size + 10)
        if kind & 0x07 and struct.unpack_from("<Q", data, page * page_size)[0] == page:
            pages.append(page)  # allocated: its header names its own page number
    for page in _spread(pages, _MAX_PAGES):
        (kind,) = struct.unpack_from("<H", data, page * page_size + 10)
        what = "branch" if kind & 0x01 else "leaf" if kind & 0x02 else "overflow"
        regions.append(Region(f"LMDB {what} page {page}", page * page_size, (page + 1) * page_size))
    return Layout("LMDB", tuple(regions))


def _parquet(data: bytes) -> Layout | None:
    if not (data.startswith(b"PAR1") and data.endswith(b"PAR1")) or len(data) < 12:
        return None
    n = len(data)
    (footer_len,) = struct.unpack_from("<I", data, n - 8)
    footer = n - 8 - footer_len
    regions = [
        Region("parquet leading magic", 0, 4),
        Region("parquet column chunks", 4, footer),
        Region("parquet footer (file metadata)", footer, n - 8),
        Region("parquet footer length and magic", n - 8, n),
    ]
    if "pyarrow" in sys.modules:
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(io.BytesIO(data)).metadata
        for g in range(min(meta.num_row_groups, 2)):
            group = meta.row_group(g)
            for c in range(min(group.num_columns, _MAX_MEMBERS)):
                column = group.column(c)
                start = column.dictionary_page_offset or column.data_page_offset
                regions.append(
                    Region(
                        f"parquet column {column.path_in_schema} (row group {g})",
                        start,
                        start + column.total_compressed_size,
                    )
                )
    return Layout("parquet", tuple(regions))


def _zip(data: bytes) -> Layout | None:
    eocd = data.rfind(b"PK\x05\x06", max(0, len(data) - 65557))
    if not data.startswith(b"PK\x03\x04") and eocd < 0:
        return None
    regions: list[Region] = []
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        start_dir = getattr(zf, "start_dir", None)
    if any(name.endswith("data.pkl") for name in names):
        fmt = "zip (torch .pt)"
    elif names and all(name.endswith(".npy") for name in names):
        fmt = "zip (numpy .npz)"
    else:
        fmt = "zip"
    chosen = {0, len(infos) - 1} | {i for i, name in enumerate(names) if name.endswith("data.pkl")}
    by_size = sorted(range(len(infos)), key=lambda i: -infos[i].compress_size)
    chosen |= set(by_size[:2])
    chosen |= set(_spread(list(range(len(infos))), _MAX_MEMBERS))
    for i in sorted(chosen)[: _MAX_MEMBERS + 4]:
        info = infos[i]
        h = info.header_offset
        name_len, extra_len = struct.unpack_from("<HH", data, h + 26)
        body = h + 30 + name_len + extra_len
        regions.append(Region(f"zip local header of {info.filename}", h, body))
        regions.append(Region(f"zip member data of {info.filename}", body, body + info.compress_size))
        if info.compress_type == zipfile.ZIP_STORED and info.filename.endswith(".npy"):
            regions += _npy_regions(data[: body + info.compress_size], body, f"{info.filename}: npy ")
    if isinstance(start_dir, int) and eocd > start_dir:
        regions.append(Region("zip central directory", start_dir, eocd))
    if eocd >= 0:
        regions.append(Region("zip end of central directory", eocd, len(data)))
    return Layout(fmt, tuple(regions))


def _safetensors(data: bytes) -> Layout | None:
    if len(data) < 10:
        return None
    (header_len,) = struct.unpack_from("<Q", data, 0)
    if not 2 <= header_len <= len(data) - 8 or data[8:9] != b"{":
        return None
    header = json.loads(data[8 : 8 + header_len])
    base = 8 + header_len
    regions = [Region("safetensors header length", 0, 8), Region("safetensors JSON header", 8, base)]
    tensors = [(k, v) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    for name, info in [tensors[i] for i in _spread(list(range(len(tensors))), _MAX_MEMBERS)]:
        begin, end = info["data_offsets"]
        regions.append(Region(f"tensor {name} data", base + int(begin), base + int(end)))
    return Layout("safetensors", tuple(regions))


def _json(data: bytes) -> Layout | None:
    text = data.decode("utf-8")
    stripped = text.strip()
    if not stripped or stripped[0] not in "{[":
        return None
    json.loads(stripped)
    start = len(data) - len(data.lstrip())
    regions = [Region("JSON document", start, start + len(stripped.encode()))]
    digits: list[int] = []
    in_string = escaped = False
    for i, byte in enumerate(data):
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif 0x30 <= byte <= 0x39 and _flip_keeps_json_valid(data, i):
            digits.append(i)
    regions += [Region("JSON number digit", i, i + 1) for i in _spread(digits, 4)]
    return Layout("JSON", tuple(regions))


def _flip_keeps_json_valid(data: bytes, i: int) -> bool:
    """A digit whose low bit can flip without making a leading zero ("10" -> "00" is not JSON)."""
    before = data[i - 1] if i else 0
    after = data[i + 1] if i + 1 < len(data) else 0
    return 0x30 <= before <= 0x39 or before == 0x2E or not 0x30 <= after <= 0x39


def _text(data: bytes) -> Layout | None:
    data.decode("utf-8")
    return Layout("text") if data else None
