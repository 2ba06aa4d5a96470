"""Every file-name rule in one place: stamped monotonic names, temp names, state-store
generation names (committed, unfinished, retired, quarantined) and restore temp directories.

Stamped names (``ModelStore`` versions, training archives, ``backup_before_overwrite``
copies) look like ``<prefix><stamp><suffix>`` or, for the second and later name
of the same stamp, ``<prefix><stamp>_<n><suffix>``. They sort by ``(stamp, n)``.

``allocate`` hands out the next name of a directory under that directory's
lock (``PublishLock``: a flock on the directory itself, so no lock file
appears). The name is strictly later than every name that exists there *and*
than every name ever handed out there: each allocation persists its name as a
high-water mark in ``.persistkit.names.json`` before returning it, so two
processes never get the same name, a pruned name is never reused, and a new
name never sorts before an older one, even when the clock steps back (names
then keep the highest stamp and count up). An explicit ``when`` (backfilling a
past moment) keeps its stamp and is only made unique.

Names on disk are bytes, and Linux refuses a component longer than
``NAME_MAX`` (255) bytes; names persistkit derives from a caller's name
(temp files) are shortened to fit whenever the caller's name fits.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

__all__ = [
    "HIGH_WATER_NAME",
    "NAME_MAX",
    "QUARANTINE_MARKER",
    "TEMP_MARKER",
    "GenerationName",
    "Stamped",
    "allocate",
    "entry_path_problem",
    "fit_name",
    "gen_name",
    "gen_retired_name",
    "gen_temp_name",
    "generation_number",
    "generation_state",
    "is_quarantined",
    "is_temp_name",
    "next_candidate",
    "parse_generation",
    "parse_restore_temp",
    "quarantine_name",
    "restore_temp_name",
    "restoring_marker",
    "temp_name_for",
]

NAME_MAX = 255
TEMP_MARKER = ".pk-tmp-"
HIGH_WATER_NAME = ".persistkit.names.json"
_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.pk-tmp-(?P<pid>\d+)-(?P<token>[0-9a-f]{12})$", re.S)


def fit_name(name: str, budget: int) -> str:
    """``name`` cut to at most ``budget`` UTF-8 bytes (at a character boundary)."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= budget:
        return name
    return raw[: max(budget, 0)].decode("utf-8", "ignore")


def temp_name_for(target: str) -> str:
    """``.<target>.pk-tmp-<pid>-<random>``, within NAME_MAX (the target part is shortened if needed)."""
    tail = f"{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(6)}"
    return f".{fit_name(target, NAME_MAX - 1 - len(tail))}{tail}"


def is_temp_name(name: str) -> bool:
    return _TEMP_RE.match(name) is not None


def temp_pid(name: str) -> int | None:
    """The writer pid recorded in a temp name, or None if ``name`` is not a temp name."""
    match = _TEMP_RE.match(name)
    return int(match["pid"]) if match else None


# -- state-store generations ---------------------------------------------------------------
#
#   gen-000007                   a committed checkpoint
#   gen-000008.tmp-<hex>         one being written (never read; removed on open)
#   gen-000005.retired-<hex>     one being deleted (never read; removed on open)
#   gen-000006.corrupt-<stamp>   a quarantined one (never read, never deleted by persistkit)
#   <name>.corrupt-<stamp>       any other quarantined file: CURRENT, or a copy of a damaged journal
#                                (gen-000006.log.journal.corrupt-<stamp>)

GENERATION_PREFIX = "gen-"
QUARANTINE_MARKER = ".corrupt-"
_QUARANTINE_STAMP = "%Y%m%dT%H%M%S%fZ"
_GENERATION_RE = re.compile(
    r"^gen-(?P<n>\d{6,})(?:\.(?:(?P<work>tmp|retired)-[0-9a-f]+|(?P<corrupt>corrupt)-.+))?$", re.S
)
_ANY_GENERATION_RE = re.compile(r"^gen-(?P<n>\d{6,})(?:$|\.)")


@dataclass(frozen=True)
class GenerationName:
    """What a ``gen-*`` directory name says: its number, and ``committed``/``tmp``/``retired``/``corrupt``."""

    number: int
    state: str


def gen_name(n: int) -> str:
    return f"{GENERATION_PREFIX}{n:06d}"


def gen_temp_name(n: int) -> str:
    """Where generation ``n`` is written before it is renamed to ``gen_name(n)``."""
    return f"{gen_name(n)}.tmp-{secrets.token_hex(4)}"


def gen_retired_name(n: int) -> str:
    """What generation ``n`` is renamed to (one atomic step) before it is deleted."""
    return f"{gen_name(n)}.retired-{secrets.token_hex(4)}"


def parse_generation(name: str) -> GenerationName | None:
    """The generation directory ``name`` stands for, or None if it is not one."""
    match = _GENERATION_RE.match(name)
    if match is None:
        return None
    state = match["work"] or match["corrupt"] or "committed"
    return GenerationName(int(match["n"]), state)


def generation_state(name: str) -> str | None:
    """``committed``, ``tmp``, ``retired`` or ``corrupt`` for a generation directory name, else None."""
    parsed = parse_generation(name)
    return parsed.state if parsed else None


def generation_number(name: str) -> int | None:
    """The number of any name persistkit derives from a generation (directories, quarantined copies)."""
    match = _ANY_GENERATION_RE.match(name)
    return int(match["n"]) if match else None


def quarantine_name(name: str, when: dt.datetime | None = None) -> str:
    """``<name>.corrupt-<UTC timestamp>``: where a damaged file or generation is kept (never deleted)."""
    stamp = (when or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).strftime(_QUARANTINE_STAMP)
    return f"{name}{QUARANTINE_MARKER}{stamp}"


def is_quarantined(name: str) -> bool:
    return QUARANTINE_MARKER in name


# -- archive restores -----------------------------------------------------------------------

_RESTORE_TEMP_RE = re.compile(r"^\.(?P<into>.+)\.restore-(?P<pid>\d+)-(?P<token>[0-9a-f]{8})$", re.S)


def restore_temp_name(into: str) -> str:
    """``.<into>.restore-<pid>-<hex>``: the directory a restore fills before renaming it to ``into``."""
    return f".{into}.restore-{os.getpid()}-{secrets.token_hex(4)}"


def parse_restore_temp(name: str) -> tuple[str, int] | None:
    """(target name, pid of the restoring process) of a restore temp directory, or None."""
    match = _RESTORE_TEMP_RE.match(name)
    return (match["into"], int(match["pid"])) if match else None


def restoring_marker(archive: str | os.PathLike[str]) -> str:
    """``<archive>.restoring``: says (with the pid inside) that ``archive`` is being restored."""
    return f"{os.fspath(archive)}.restoring"


# -- stamped monotonic names -------------------------------------------------------------


@dataclass(frozen=True)
class Stamped:
    """A family of stamped names in one directory: ``<prefix><stamp>[_<n>]<suffix>``.

    ``fmt`` is a strftime format whose output has a fixed width and sorts as time does.
    """

    prefix: str
    suffix: str
    fmt: str = "%Y%m%d_%H%M%S"

    @cached_property
    def _stamp_re(self) -> str:
        probe = dt.datetime(2000, 1, 1).strftime(self.fmt)
        return "".join(r"\d" if c.isdigit() else re.escape(c) for c in probe)

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(
            rf"^{re.escape(self.prefix)}(?P<stamp>{self._stamp_re})(?:_(?P<n>\d+))?{re.escape(self.suffix)}$"
        )

    @property
    def family(self) -> str:
        return f"{self.prefix}*{self.suffix}"

    def parse(self, name: str) -> tuple[str, int] | None:
        match = self.pattern.match(name)
        if match is None:
            return None
        return match["stamp"], int(match["n"] or 0)

    def sort_key(self, name: str) -> tuple[str, int]:
        parsed = self.parse(name)
        if parsed is None:
            raise ValueError(f"{name!r} is not a {self.family} name")
        return parsed

    def time(self, name: str) -> dt.datetime | None:
        """When ``name`` was stamped (UTC), its counter added as microseconds so times sort as names do."""
        parsed = self.parse(name)
        if parsed is None:
            return None
        stamp, n = parsed
        return dt.datetime.strptime(stamp, self.fmt).replace(tzinfo=dt.UTC) + dt.timedelta(microseconds=n)

    def name(self, stamp: str, n: int = 0) -> str:
        return f"{self.prefix}{stamp}{'' if n == 0 else f'_{n}'}{self.suffix}"

    def stamp(self, when: dt.datetime) -> str:
        return when.astimezone(dt.UTC).strftime(self.fmt)


def _read_marks(directory: str) -> dict[str, list[object]]:
    from persistkit.errors import IntegrityError
    from persistkit.io import current_fs

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
        from persistkit.io.fs import io_error

        raise io_error("read", path, err) from err
    except (ValueError, KeyError, TypeError) as err:
        raise IntegrityError(
            f"{path}: the name high-water mark is unreadable ({err}). Delete it: persistkit rebuilds it from "
            "the names in the directory (a name pruned since could then be reused once).",
            path=path,
        ) from err
    return marks


def _taken(target: str, family: Stamped, marks: dict[str, list[object]]) -> list[tuple[str, int]]:
    """(stamp, n) of every name of ``family`` in ``target``, and of its high-water mark in ``marks``."""
    from persistkit.io import current_fs
    from persistkit.io.fs import io_error

    try:
        names = current_fs().listdir(target)
    except OSError as err:
        raise io_error("list", target, err) from err
    taken = [p for p in map(family.parse, names) if p is not None]
    mark = marks.get(family.family)
    if isinstance(mark, list) and len(mark) == 2 and isinstance(mark[0], str) and isinstance(mark[1], int):
        taken.append((mark[0], mark[1]))
    return taken


def next_candidate(
    family: Stamped, taken: Sequence[tuple[str, int]], when: dt.datetime | None
) -> tuple[str, int]:
    """The (stamp, counter) to try next after every name in ``taken`` (local directory or bucket).

    Now: past the highest name even if the clock stepped back. A given ``when`` (a backfill)
    keeps its timestamp and is only made unique within that second.
    """
    highest = max(taken, default=None)
    if when is None:
        candidate = (family.stamp(dt.datetime.now(dt.UTC)), 0)
        if highest is not None and candidate <= highest:
            candidate = (highest[0], highest[1] + 1)
        return candidate
    stamp = family.stamp(when)
    same = [n for s, n in taken if s == stamp]
    return (stamp, max(same) + 1 if same else 0)


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
    from persistkit.io import atomic_write, current_fs
    from persistkit.io.fs import io_error
    from persistkit.io.lock import PublishLock

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


# -- zip entry names: the one zip-slip rule (bundle reader, archive checker) --------------------

_DRIVE = re.compile(r"^[A-Za-z]:")


def entry_path_problem(name: str, *, control_characters: bool = True) -> str | None:
    """Why zip entry ``name`` could escape (or not name) a directory it is extracted into; None if safe.

    Refused: a NUL byte, backslashes (a Windows path trick), absolute paths and drive letters,
    ``..`` segments, and names that are empty once ``.`` and empty segments go. With
    ``control_characters=False`` other control characters are refused too (bundles; a training
    archive may hold a user's file whose name has a tab in it).
    """
    if "\x00" in name:
        return "contains a NUL byte"
    if not control_characters and any(ord(c) < 32 for c in name):
        return "contains a control character"
    if "\\" in name:
        return "uses backslashes (a Windows path trick)"
    if name.startswith("/") or _DRIVE.match(name):
        return "is absolute"
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        return "climbs out with '..'"
    if not parts:
        return "is empty"
    return None
