"""Every file- and object-name rule in one place, with no I/O: stamped monotonic names, temp and
scratch names (and the one rule that says which writer left them), state-store generation names
(committed, unfinished, retired, quarantined), restore temp directories, and model-store names
(groups, versions, aliases) for names read back from a bucket.

Stamped names (``ModelStore`` versions, training archives, ``backup_before_overwrite``
copies) look like ``<prefix><stamp><suffix>`` or, for the second and later name
of the same stamp, ``<prefix><stamp>_<n><suffix>``. They sort by ``(stamp, n)``. A name whose
stamp has the right shape but is no time (``20261399_000000``) is not one of them:
``Stamped.parse`` refuses it and ``Stamped.problem`` says why, for listings that report it.
``persistkit.io.names.allocate`` hands out the next name of a directory.

Names on disk are bytes, and Linux refuses a component longer than
``NAME_MAX`` (255) bytes; names persistkit derives from a caller's name
(temp files) are shortened to fit whenever the caller's name fits.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from persistkit.errors import UnsafeArchiveError

__all__ = [
    "BACKUP_LINEAGE_NAME",
    "HIGH_WATER_NAME",
    "MODEL_SUFFIX",
    "MODEL_VERSIONS",
    "NAME_MAX",
    "QUARANTINE_MARKER",
    "SCRATCH_KINDS",
    "TEMP_MARKER",
    "GenerationName",
    "Stamped",
    "component_problem",
    "entry_path_problem",
    "fit_name",
    "gen_name",
    "gen_retired_name",
    "gen_temp_name",
    "generation_number",
    "generation_state",
    "is_alias",
    "is_model_group",
    "is_quarantined",
    "is_temp_name",
    "model_group",
    "next_candidate",
    "parse_generation",
    "parse_model_version",
    "parse_restore_temp",
    "quarantine_name",
    "restore_temp_name",
    "restoring_marker",
    "safe_component",
    "scratch_name",
    "temp_name_for",
    "temp_pid",
    "writer_pid",
]

NAME_MAX = 255
TEMP_MARKER = ".pk-tmp-"
HIGH_WATER_NAME = ".persistkit.names.json"
BACKUP_LINEAGE_NAME = ".persistkit.backup.json"  # in a state store: the off-site generation it descends from
_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.pk-tmp-(?P<pid>\d+)-(?P<token>[0-9a-f]{12})$", re.S)


def fit_name(name: str, budget: int) -> str:
    """``name`` cut to at most ``budget`` UTF-8 bytes (at a character boundary)."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= budget:
        return name
    return raw[: max(budget, 0)].decode("utf-8", "ignore")


# -- what writers leave behind while they work, and the one rule that says whose it is ---------
#
#   .<target>.pk-tmp-<pid>-<hex12>        an atomic write's temp file (persistkit.io.atomic)
#   .<into>.restore-<pid>-<hex8>          a restore's directory, renamed to <into> when complete
#   .<name>.<kind>-<pid>-<hex8>[.zip]     a scratch file: a download being checked (remote-check, pull,
#                                         download) or a bundle being published (staging)
#
# ``writer_pid`` reads the pid back from any of them: ``persistkit.io.atomic.sweep_dead_writers``
# removes what a writer that is gone left (the one sweep every writer's directory goes through).

SCRATCH_KINDS = ("remote-check", "pull", "download", "staging")
_DEBRIS_RE = re.compile(
    r"^\.(?P<target>.+)\.(?:pk-tmp-(?P<tpid>\d+)-[0-9a-f]{12}"
    r"|restore-(?P<rpid>\d+)-[0-9a-f]{8}"
    rf"|(?:{'|'.join(SCRATCH_KINDS)})-(?P<spid>\d+)-[0-9a-f]{{8}}(?:\.zip)?)$",
    re.S,
)


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


def scratch_name(target: str, kind: str, *, suffix: str = "") -> str:
    """``.<target>.<kind>-<pid>-<hex8><suffix>``: a scratch file of this process (``SCRATCH_KINDS``)."""
    if kind not in SCRATCH_KINDS or suffix not in ("", ".zip"):
        raise ValueError(f"unknown scratch kind {kind!r} or suffix {suffix!r}")
    tail = f".{kind}-{os.getpid()}-{secrets.token_hex(4)}{suffix}"
    return f".{fit_name(target, NAME_MAX - 1 - len(tail))}{tail}"


def writer_pid(name: str) -> int | None:
    """The pid of the process that made ``name``, if it is a temp, restore or scratch name; else None."""
    match = _DEBRIS_RE.match(name)
    if match is None:
        return None
    return int(match["tpid"] or match["rpid"] or match["spid"])


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


# -- restores (archives, state stores) ------------------------------------------------------

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

    ``fmt`` is a strftime format whose output has a fixed width and sorts as time does. The
    counter is written without leading zeros and has at most 9 digits, so each (stamp, n) has
    exactly one name, and its time (the stamp plus n microseconds) is a datetime.
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
            rf"^{re.escape(self.prefix)}(?P<stamp>{self._stamp_re})(?:_(?P<n>[1-9]\d{{0,8}}))?{re.escape(self.suffix)}$"
        )

    @property
    def family(self) -> str:
        return f"{self.prefix}*{self.suffix}"

    def parse(self, name: str) -> tuple[str, int] | None:
        """(stamp, n) of a name of this family; None for any other name, and for a stamp that is no time."""
        match = self.pattern.fullmatch(name)
        if match is None or self._not_a_time(match["stamp"], int(match["n"] or 0)):
            return None
        return match["stamp"], int(match["n"] or 0)

    def problem(self, name: str) -> str | None:
        """Why ``name``, shaped like a name of this family, is not one (an impossible date); else None.

        Listings skip such names and report them with this reason; names of other shapes are None.
        """
        match = self.pattern.fullmatch(name)
        if match is None:
            return None
        why = self._not_a_time(match["stamp"], int(match["n"] or 0))
        return None if why is None else f"{name!r} has the shape of a {self.family} name, but {why}"

    def _not_a_time(self, stamp: str, n: int) -> str | None:
        try:
            dt.datetime.strptime(stamp, self.fmt) + dt.timedelta(microseconds=n)
        except (ValueError, OverflowError) as err:
            return f"its stamp {stamp!r} is not a time ({err})"
        return None

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


# -- model stores: SYMBOL/AGENT/TIMEFRAME/<version>.models, and aliases ---------------------------
#
# The one rule for every model-store name, whether it comes from a caller or is read back from a
# bucket (a pointer's name, an alias's path): a path or cache location is only ever built from
# names that pass it.

MODEL_SUFFIX = ".models"
MODEL_VERSIONS = Stamped("", MODEL_SUFFIX, "%Y-%m-%d_%H%M%S")  # 2024-03-01_120000.models, then _1, _2...
_COMPONENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def component_problem(name: str) -> str | None:
    """Why ``name`` cannot be one directory level of a model store (symbol, agent, timeframe); None if it can."""
    if not _COMPONENT_RE.fullmatch(name) or ".." in name:
        return (
            "is not safe as a directory name; use letters, digits, '.', '_' and '-' (a '/' becomes '-'), "
            "starting with a letter or digit"
        )
    return None


def safe_component(value: object, what: str) -> str:
    """A path component for a symbol, agent or timeframe: ``BTC/USDT`` becomes ``BTC-USDT``."""
    if type(value) is not str:
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    name = value.replace("/", "-")
    problem = component_problem(name)
    if problem is not None:
        raise UnsafeArchiveError(f"{what} {value!r} {problem}.", field=what)
    return name


def model_group(symbol: str, agent: str, timeframe: str) -> str:
    """``SYMBOL/AGENT/TIMEFRAME`` with each part made safe: ``BTC-USDT/ppo/1h``."""
    return "/".join(
        (
            safe_component(symbol, "symbol"),
            safe_component(agent, "agent"),
            safe_component(timeframe, "timeframe"),
        )
    )


def is_model_group(group: str) -> bool:
    parts = group.split("/")
    return len(parts) == 3 and all(component_problem(p) is None for p in parts)


def parse_model_version(key: str) -> tuple[str, str] | None:
    """(group, version name) of ``SYMBOL/AGENT/TIMEFRAME/<version>.models``; None for anything else."""
    group, _, name = key.rpartition("/")
    if not is_model_group(group) or MODEL_VERSIONS.parse(name) is None:
        return None
    return group, name


def is_alias(name: object) -> bool:
    return isinstance(name, str) and _ALIAS_RE.fullmatch(name) is not None


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
