"""Safe restore: refuse whatever the checker reports, extract into a temp directory, rename into place.

Security-critical: keep it small and keep it here."""

from __future__ import annotations

import builtins
import contextlib
import errno as _errno
import os
import zipfile
from pathlib import Path

from persistkit import naming
from persistkit.archive.base import _RESTORING, _RESTORING_LOCK, ARCHIVE_MANIFEST, RestoreLimits
from persistkit.archive.checker import (
    _NOT_RESTORED,
    _check_content,
    _Member,
    _open_zip,
    _Plan,
    _plan,
    _Problem,
    _refuse,
)
from persistkit.errors import (
    PersistIOError,
)
from persistkit.io import atomic_write, current_fs
from persistkit.io.atomic import claim, remove_tree, sweep_dead_writers
from persistkit.io.fs import io_errors

# Temp directories of restores whose process died are what ``sweep_dead_writers`` removes (the one
# sweep of what dead writers left); the name is kept for callers of persistkit.archive.
cleanup_stale_restores = sweep_dead_writers


def restore(
    path: str | os.PathLike[str], into: str | os.PathLike[str], *, limits: RestoreLimits | None = None
) -> Path:
    """Extract an archive safely into ``into`` (which must not exist yet); returns ``into``.

    First the archive is checked exactly as ``Archiver.verify`` checks it (names, links resolved
    together, special files, sizes and ratio, the manifest and every member's kind); any problem
    refuses the restore. Then everything is extracted into a temp directory beside ``into``, each
    member's sha256 is checked again as it streams, and the directory is renamed into place, so
    nothing is ever written outside it and a refused archive leaves nothing. Temp directories of
    restores whose process died are removed by the next restore into the same parent.
    """
    limits = limits or RestoreLimits()
    src = Path(os.path.abspath(os.fspath(path)))
    dest = Path(os.path.abspath(os.fspath(into)))
    fs = current_fs()
    with io_errors("prepare restore target", dest, _NOT_RESTORED):
        if fs.exists(dest):
            raise PersistIOError(
                f"restore target {dest} already exists; choose a new directory.",
                errno=_errno.EEXIST,
                path=dest,
            )
        fs.makedirs(dest.parent)
    sweep_dead_writers(dest.parent)
    temp = dest.parent / naming.restore_temp_name(dest.name)
    marker = Path(naming.restoring_marker(src))
    with _RESTORING_LOCK:
        _RESTORING.add(str(src))
    try:
        with contextlib.suppress(OSError):
            atomic_write(marker, f"{os.getpid()}\n".encode(), durable=False)
        with claim(temp):
            with io_errors("create restore directory", temp, _NOT_RESTORED):
                fs.mkdir(temp)
            try:
                _extract(src, temp, dest, limits)
                with io_errors("move the restored files into place at", dest, _NOT_RESTORED):
                    fs.fsync_dir(temp)
                    fs.replace(temp, dest)
                    fs.fsync_dir(dest.parent)
            except BaseException:
                remove_tree(temp)
                raise
    finally:
        with _RESTORING_LOCK:
            _RESTORING.discard(str(src))
        with contextlib.suppress(OSError):
            fs.unlink(marker)
    return dest


def _extract(src: Path, temp: Path, dest: Path, limits: RestoreLimits) -> None:
    """Check, then extract into ``temp``; errors name where each member was going (under ``dest``)."""
    fs = current_fs()
    problems: builtins.list[_Problem] = []
    with _open_zip(src, problems) as (zf, size):
        if zf is None:
            _refuse(problems, src)
            return
        plan = _plan(zf, src, size, limits)
        _refuse(plan.problems, src)
        # Directories, then files, then links last: no byte is ever written after a link exists.
        for m in plan.members:
            if m.kind == "dir":
                with io_errors("create directory", dest / m.rel, _NOT_RESTORED):
                    fs.makedirs(temp / m.rel, durable=False)
        for m in plan.members:
            if m.kind == "file" and m.rel != ARCHIVE_MANIFEST:
                problem = _extract_file(zf, m, plan, src, temp / m.rel, dest / m.rel, limits)
                if problem:
                    _refuse([problem], src)
        for m in plan.members:
            if m.kind == "symlink":
                with io_errors("create symlink", dest / m.rel, _NOT_RESTORED):
                    fs.makedirs((temp / m.rel).parent, durable=False)
                    fs.symlink(m.target, temp / m.rel)


def _extract_file(
    zf: zipfile.ZipFile, m: _Member, plan: _Plan, src: Path, target: Path, shown: Path, limits: RestoreLimits
) -> _Problem | None:
    fs = current_fs()
    with io_errors("create restored file", shown, _NOT_RESTORED):
        fs.makedirs(target.parent, durable=False)
        handle = fs.create(target, mode=0o644)
    try:

        def write(chunk: bytes) -> None:
            with io_errors("write restored file", shown, _NOT_RESTORED):
                fs.write(handle, chunk)

        problem = _check_content(zf, m, plan, src, limits, write)
        if problem is None:
            with io_errors("fsync restored file", shown, _NOT_RESTORED):
                fs.fsync(handle)
        return problem
    finally:
        with contextlib.suppress(OSError):
            fs.close(handle)
