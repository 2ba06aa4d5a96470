"""Build hand-made archives for the hostile-input tests: real zip files, with a matching MANIFEST.json."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zipfile
from pathlib import Path

LINK = 0o120777
FILE = 0o100644
DIR = 0o40755


def craft(path: Path, members: list[tuple[str, str, str | bytes]], *, manifest: object = "auto") -> Path:
    """Write a zip of ``members`` ((name, "file"|"dir"|"symlink", data or link target)) in that order.

    ``manifest="auto"`` adds a MANIFEST.json that describes the members truthfully, so the
    only thing wrong with the archive is what the test put in it.
    """
    entries = []
    with zipfile.ZipFile(path, "w") as zf:
        for name, kind, data in members:
            if kind == "dir":
                info = zipfile.ZipInfo(name.rstrip("/") + "/")
                info.external_attr = (DIR << 16) | 0x10
                zf.writestr(info, b"")
                entries.append({"path": name.rstrip("/") + "/", "kind": "dir"})
                continue
            raw = data.encode() if isinstance(data, str) else data
            info = zipfile.ZipInfo(name)
            info.external_attr = (LINK if kind == "symlink" else FILE) << 16
            zf.writestr(info, raw)
            entry = {"path": name, "kind": kind}
            if kind == "symlink":
                entry["target"] = raw.decode()
            else:
                entry |= {"size": len(raw), "sha256": hashlib.sha256(raw).hexdigest(), "changed": False}
            entries.append(entry)
        if manifest == "auto":
            manifest = {
                "format": "persistkit-archive/1",
                "created": "2026-01-01T00:00:00+00:00",
                "source_root": "/nowhere",
                "skipped_sources": [],
                "changed_while_archiving": [],
                "files": entries,
            }
        if manifest is not None:
            zf.writestr(
                "MANIFEST.json", manifest if isinstance(manifest, (str, bytes)) else json.dumps(manifest)
            )
    return path


def replace_manifest(
    src: Path, dst: Path, manifest: str | bytes, *, compress: int = zipfile.ZIP_STORED
) -> Path:
    """Copy archive ``src`` to ``dst`` with its MANIFEST.json swapped for ``manifest``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename != "MANIFEST.json":
                zout.writestr(info, zin.read(info))
        zout.writestr(zipfile.ZipInfo("MANIFEST.json"), manifest, compress_type=compress)
    return dst


def central_record(data: bytes | bytearray, name: str) -> int:
    """Offset of ``name``'s central-directory record in ``data``."""
    at = data.index(b"PK\x01\x02")
    while True:
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        if bytes(data[at + 46 : at + 46 + name_len]) == name.encode():
            return at
        at = data.index(b"PK\x01\x02", at + 4)


def set_mode(path: Path, name: str, mode: int) -> None:
    """Change ``name``'s unix mode in the central directory (the bytes zip tools read it from)."""
    data = bytearray(path.read_bytes())
    at = central_record(data, name)
    attr = struct.unpack_from("<I", data, at + 38)[0]
    struct.pack_into("<I", data, at + 38, (mode << 16) | (attr & 0xFFFF))
    path.write_bytes(bytes(data))


def tree_of(path: Path) -> dict[str, object]:
    """Every entry under ``path``: files by content, links by target, directories as None."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, path)
            if os.path.islink(full):
                out[rel] = ("link", os.readlink(full))
            elif os.path.isdir(full):
                out[rel] = None
            else:
                out[rel] = Path(full).read_bytes()
    return out
