"""STORAGE for stamped names: ``allocate`` hands out the next name of a directory (``persistkit.naming``).

The name rules live in ``persistkit.naming`` (pure, no I/O); this module reads the directory and
persists the high-water mark, under the directory's lock.

``allocate`` hands out the next name of a directory under that directory's
lock (``PublishLock``: a flock on the directory itself, so no lock file
appears). The name is strictly later than every name that exists there *and*
than every name ever handed out there: each allocation persists its name as a
high-water mark in ``.persistkit.names.json`` before returning it, so two
processes never get the same name, a pruned name is never reused, and a new
name never sorts before an older one, even when the clock steps back (names
then keep the highest stamp and count up). An explicit ``when`` (backfilling a
past moment) keeps its stamp and is only made unique.
"""

from __future__ import annotations

import datetime as dt
import json
import os

from persistkit.errors import IntegrityError
from persistkit.io.atomic import atomic_write
from persistkit.io.fs import current_fs, io_error
from persistkit.io.lock import PublishLock
from persistkit.naming import HIGH_WATER_NAME, Stamped, next_candidate

__all__ = ["allocate"]


def _read_marks(directory: str) -> dict[str, list[object]]:
    fs = current_fs()
    path = os.path.join(directory, HIGH_WATER_NAME)
    if not fs.exists(path):
        return {}
    try:
        doc = json.loads(fs.read_bytes(path).decode("utf-8"))
        marks = doc["marks"]
        if not isinstance(marks, dict):
            raise TypeError("marks is not an object")
    except OSError as err:
        raise io_error("read", path, err) from err
    except (ValueError, KeyError, TypeError, RecursionError) as err:
        raise IntegrityError(
            f"{path}: the name high-water mark is unreadable ({err}). Delete it: persistkit rebuilds it from "
            "the names in the directory (a name pruned since could then be reused once).",
            path=path,
        ) from err
    return marks


def _taken(target: str, family: Stamped, marks: dict[str, list[object]]) -> list[tuple[str, int]]:
    """(stamp, n) of every name of ``family`` in ``target``, and of its high-water mark in ``marks``."""
    try:
        names = current_fs().listdir(target)
    except OSError as err:
        raise io_error("list", target, err) from err
    taken = [p for p in map(family.parse, names) if p is not None]
    mark = marks.get(family.family)
    if (
        isinstance(mark, list)
        and len(mark) == 2
        and isinstance(mark[0], str)
        and type(mark[1]) is int
        and family.parse(family.name(mark[0], mark[1])) is not None
    ):
        taken.append((mark[0], mark[1]))
    return taken


def allocate(
    directory: str | os.PathLike[str],
    family: Stamped,
    *,
    when: dt.datetime | None = None,
    lock_timeout: float = 30.0,
) -> str:
    """The next name of ``family`` in ``directory`` (created if missing); see the module docstring.

    Unique across processes (the directory lock serialises allocations, and
    each one persists its name as the new high-water mark before returning it)
    and monotonic: the name sorts after every name that exists or was ever
    handed out here. An explicit ``when`` (a past moment) is only made unique
    against the names there, and is not safe against a concurrent allocation
    of the same past second unless the caller serialises them (ModelStore does).
    """
    target = os.path.abspath(os.fspath(directory))
    try:
        current_fs().makedirs(target)
    except OSError as err:
        raise io_error("create directory", target, err) from err
    with PublishLock(target, timeout=lock_timeout):
        marks = _read_marks(target)
        taken = _taken(target, family, marks)
        highest = max(taken, default=None)
        candidate = next_candidate(family, taken, when)
        if highest is None or candidate > highest:
            # The reservation: written before the name is returned, so no other allocator (another
            # process, or this one after the file was pruned) can hand it out again.
            marks[family.family] = [candidate[0], candidate[1]]
            doc = {"format": "persistkit.names", "version": 1, "marks": marks}
            atomic_write(
                os.path.join(target, HIGH_WATER_NAME), json.dumps(doc, sort_keys=True).encode() + b"\n"
            )
        return family.name(*candidate)
