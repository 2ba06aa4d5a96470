"""``backup_before_overwrite``: stamped copies of a file beside it, pruned through retention."""

from __future__ import annotations

import os
from pathlib import Path

from persistkit import naming
from persistkit.archive.base import CHUNK
from persistkit.io import atomic_writer, current_fs
from persistkit.io.names import allocate
from persistkit.policy.retention import Item, KeepLast, decide


def backup_before_overwrite(path: str | os.PathLike[str], *, keep: int = 5) -> Path | None:
    """Copy ``path`` (if it exists) into ``backups/`` beside it before the caller overwrites it.

    The copy is named ``<stem>_<YYYYMMDD_HHMMSS><suffix>`` (UTC) and written atomically; only
    the newest ``keep`` backups of that file are kept. Returns the backup's path, or None.
    """
    src = Path(os.path.abspath(os.fspath(path)))
    fs = current_fs()
    if not fs.is_file(src):
        return None
    backups = src.parent / "backups"
    family = naming.Stamped(f"{src.stem}_", src.suffix)
    target = backups / allocate(backups, family)  # unique across processes, monotonic
    with fs.open_read(src) as f, atomic_writer(target) as out:
        while chunk := f.read(CHUNK):
            out.write(chunk)
    items = []
    for name in fs.listdir(backups):
        when = family.time(name)
        if when is not None:
            items.append(Item(name, when, "the backup just made" if name == target.name else ""))
    for decision in decide(KeepLast(keep), items):
        if not decision.keep:
            fs.unlink(backups / decision.item.id)
    return target
