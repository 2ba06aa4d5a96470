"""``corruptions``: damaged copies of a file, and a check that loading them never silently succeeds.

Kinds of damage (SQLite's malformed-file tests, LevelDB's corruption tests):

* ``truncated``: cut at offsets 0, 1, the middle, one byte short, 4 KiB
  boundaries inside allocated data, the start and middle of each named region,
  plus seeded random offsets inside allocated data;
* ``bit-flipped``: one bit flipped in the first and last bytes, at the start,
  middle and end of each named region, and at seeded random positions inside
  allocated data;
* ``sector-trashed``: a 512-byte sector overwritten with random bytes or zeros:
  the first and last, the one where each named region starts, seeded random ones;
* ``junk-appended``: one byte, a few random bytes, a 4 KiB block, or the file
  itself appended.

Damage is aimed where the data is (``persistkit.testing.layouts``): only the
file's allocated extents (``SEEK_DATA``), so a 4 MiB sparse LMDB map with three
written pages is damaged in those pages, and every region its format names
(zip/torch members and central directory, SQLite header, b-tree page headers
and cells, HDF5 superblock, .npy header, safetensors header and tensors,
parquet footer, LMDB meta pages, JSON numbers...).

``corruptions(path).assert_detected(load)`` (or ``corruptions.assert_detected(load)``
for every registered path) loads the pristine file once, then writes each
damaged copy in place of the original and calls ``load()`` (or ``load(path)``,
when it takes an argument) in an isolated worker (``persistkit.testing.isolate``),
under a timeout enforced from outside. It fails when:

* a load returns data that differs from the pristine load without raising or
  reporting a recovery ("silent corruption"). A recovery counts only when it is
  announced with a persistkit recovery warning (``StateRecoveredWarning``) or a
  warning class the caller names with ``warns=``; any other warning is noise.
  Loading equal data despite the damage (junk past the end that is ignored, say)
  is fine;
* a load raises something other than ``raises``;
* a load kills its process (SIGSEGV, SIGBUS, SIGABRT, an exit) or never returns:
  a finding about the format, named with the damage that caused it, and the run
  goes on. ``tolerate=("crash", "hang")`` accepts either as detection;
* every damaged copy loads exactly like the original: ``load()`` does not read
  the damaged file (it ignores the path it is handed, or returns a cached value).

The pristine result is detached (arrays and tensors copied out of any ``mmap``,
as ``safetensors.load_file`` and ``numpy.load(mmap_mode=...)`` return) before the
file is damaged, so the comparison never sees the damage on both sides. Loads
run in a process forked after the pristine load: whatever ``load`` changes in
memory (a counter, a cache) stays in that process. ``last_report`` keeps, per
file, damage kind and region, what happened.
"""

from __future__ import annotations

import copy
import inspect
import os
import random
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from persistkit.testing.compare import first_difference
from persistkit.testing.layouts import Layout, extents, layout
from persistkit.testing.observe.intercept import REAL, real_open
from persistkit.testing.report import RECORDER, Recorder

__all__ = [
    "KINDS",
    "SQLITE_ADVICE",
    "Corruption",
    "CorruptionReport",
    "CorruptionSet",
    "Corruptions",
    "FileReport",
    "damaged_copies",
]

KINDS = ("truncated", "bit-flipped", "sector-trashed", "junk-appended")
SECTOR = 512
_FULL_CHECK_LIMIT = 64 << 20  # files up to this size are re-read after each load to prove they are pristine
_MAX_HANGS = 3  # after this many loads that never return, the rest of a file's copies are skipped

# What happened to one damaged copy. Violations: silent, wrong-error, crashed, hung.
VERDICTS = ("detected", "reported", "equal", "silent", "wrong-error", "crashed", "hung")

SQLITE_ADVICE = """\
SQLite keeps no checksums of its pages or rows: changed bytes inside a stored value read back as valid
data, and nothing in the file says a value was damaged. The real options:
  1. cksumvfs, SQLite's checksum VFS shim (ext/misc/cksumvfs.c in SQLite's source, SQLite >= 3.32):
     build it (gcc -fPIC -shared cksumvfs.c -o cksumvfs.so); load it once before opening the database
     (c = sqlite3.connect(":memory:"); c.enable_load_extension(True); c.load_extension("./cksumvfs"));
     give the database 8 reserve bytes per page once (sqlite3 CLI: `.filectrl reserve_bytes 8` then
     `VACUUM;`; Python's sqlite3 has no file_control, apsw has). Every page read is then verified and a
     mismatch fails the query with SQLITE_IOERR_DATA. `PRAGMA checksum_verification` returns 1 when on.
  2. `PRAGMA quick_check` (or the slower `integrity_check`) when the file is opened, raising unless it
     answers "ok": it finds damaged b-tree pages and missing or malformed records, not a changed value.
  3. An application-level checksum: a digest of the rows (e.g. SHA-256 over them in rowid order, or one
     per row) written in the same transaction as every change and verified on load; it finds changed
     values too.
  4. Exclude the file from this check and state the risk: damage to it loads silently as wrong data;
     keep verified backups to restore from."""


@dataclass(frozen=True)
class Corruption:
    """One damaged copy of ``path``: ``data`` replaces the file's bytes; ``region`` is where it hit."""

    path: str
    kind: str
    description: str
    data: bytes
    region: str = ""

    def apply(self) -> None:
        """Write the damaged bytes in place of the file."""
        _write(self.path, self.data)


def _write(path: str, data: bytes) -> None:
    with real_open(path, "wb") as f:
        f.write(data)


@dataclass(frozen=True)
class _Damage:
    """A damage as an edit of the pristine bytes: a cut, a patch at ``offset``, or bytes appended."""

    kind: str
    description: str
    region: str
    cut: int | None = None
    offset: int = 0
    patch: bytes = b""

    def damaged(self, data: bytes) -> bytes:
        if self.cut is not None:
            return data[: self.cut]
        if self.kind == "junk-appended":
            return data + self.patch
        return data[: self.offset] + self.patch + data[self.offset + len(self.patch) :]


def damaged_copies(
    data: bytes,
    *,
    samples: int = 16,
    seed: int = 0,
    kinds: tuple[str, ...] = KINDS,
    allocated: list[tuple[int, int]] | None = None,
) -> Iterator[tuple[str, str, bytes]]:
    """(kind, description, damaged bytes) for ``data``; deterministic for a given seed.

    ``allocated``: the byte ranges that hold data (``layouts.extents(path)``); by
    default the whole of ``data``.
    """
    for damage in _plan(data, layout(data), allocated, samples=samples, seed=seed, kinds=kinds):
        yield damage.kind, damage.description, damage.damaged(data)


def _plan(
    data: bytes,
    shape: Layout,
    allocated: list[tuple[int, int]] | None,
    *,
    samples: int,
    seed: int,
    kinds: tuple[str, ...],
) -> list[_Damage]:
    rng = random.Random(seed)
    n = len(data)
    spans = [(s, min(e, n)) for s, e in (allocated if allocated is not None else [(0, n)]) if min(e, n) > s]
    total = sum(e - s for s, e in spans)

    def inside_data() -> int:
        """A uniformly random offset among the allocated bytes."""
        return _nth_allocated(spans, rng.randrange(total)) if total else rng.randrange(n)

    def region(offset: int) -> str:
        named = shape.region_at(offset)
        if named:
            return named
        return "allocated data" if any(s <= offset < e for s, e in spans) else "hole (never written)"

    def where(offset: int) -> str:
        return f" ({region(offset)})"

    # the middle and the last byte of the data: of the file, unless the file is sparse
    middle = _nth_allocated(spans, total // 2) if total else n // 2
    last = spans[-1][1] - 1 if spans else n - 1
    out: list[_Damage] = []
    if "truncated" in kinds and n:
        cuts = {0, 1, middle, n - 1}
        boundaries = sorted({b for s, e in spans for b in range(max(4096, -(-s // 4096) * 4096), e, 4096)})
        cuts |= set(_spread(boundaries, max(samples, 8)))
        cuts |= {edge for s, e in spans for edge in (s, e)}
        cuts |= {p for r in shape.regions for p in (r.start, (r.start + r.end) // 2)}
        cuts |= {inside_data() for _ in range(samples)}
        for cut in sorted(c for c in cuts if 0 <= c < n):
            cut_in = f" (cut in {region(cut)})" if cut else ""
            out.append(_Damage("truncated", f"truncated to {cut} of {n} bytes{cut_in}", region(cut), cut=cut))
    if "bit-flipped" in kinds and n:
        spots = {(0, 0), (last, 7), (min(8, n - 1), 3), (middle, 5)}
        # bit 0 first: on a JSON digit it makes another digit, so the file stays valid and only the value changes
        spots |= {
            s for r in shape.regions for s in ((r.start, 0), ((r.start + r.end) // 2, 3), (r.end - 1, 6))
        }
        spots |= {(inside_data(), rng.randrange(8)) for _ in range(samples)}
        for pos, bit in sorted(spots):
            flipped = bytes([data[pos] ^ (1 << bit)])
            desc = f"bit {bit} of byte {pos} flipped{where(pos)}"
            out.append(_Damage("bit-flipped", desc, region(pos), offset=pos, patch=flipped))
    if "sector-trashed" in kinds and n:
        sectors = (n + SECTOR - 1) // SECTOR
        chosen = {0, last // SECTOR} | {r.start // SECTOR for r in shape.regions}
        chosen |= {inside_data() // SECTOR for _ in range(min(samples // 4 + 1, sectors))}
        for s in sorted(chosen):
            start, end = s * SECTOR, min((s + 1) * SECTOR, n)
            for fill in ("random", "zeros"):
                patch = rng.randbytes(end - start) if fill == "random" else bytes(end - start)
                if patch != data[start:end]:
                    desc = f"sector {s} (bytes {start}-{end}) overwritten with {fill}{where(start)}"
                    out.append(_Damage("sector-trashed", desc, region(start), offset=start, patch=patch))
    if "junk-appended" in kinds:
        for junk, what in (
            (b"\0", "one zero byte"),
            (rng.randbytes(17), "17 random bytes"),
            (rng.randbytes(4096), "a 4 KiB random block"),
            (data, "a second copy of the file"),
        ):
            out.append(_Damage("junk-appended", f"{what} appended", "after the end", offset=n, patch=junk))
    return out


def _nth_allocated(spans: list[tuple[int, int]], nth: int) -> int:
    """The offset of the ``nth`` allocated byte."""
    for s, e in spans:
        if nth < e - s:
            return s + nth
        nth -= e - s
    return spans[-1][1] - 1


def _spread(items: list[int], limit: int) -> list[int]:
    if len(items) <= limit:
        return items
    step = (len(items) - 1) / (limit - 1)
    return sorted({items[round(i * step)] for i in range(limit)})


WarningTypes = type[Warning] | tuple[type[Warning], ...]


def _recovery_warnings() -> tuple[type[Warning], ...]:
    from persistkit.state.store import StateRecoveredWarning

    return (StateRecoveredWarning,)


def _call_load(load: Callable[..., Any], path: str) -> Any:
    """``load(path)`` when ``load`` takes an argument, else ``load()`` (like crash_points/disk_faults)."""
    try:
        sig = inspect.signature(load)
    except (TypeError, ValueError):
        return load(path)
    try:
        sig.bind(path)
    except TypeError:
        return load()
    return load(path)


def _detach(value: Any) -> Any:
    """A deep copy that shares no memory with the file (mmap-backed arrays and tensors are copied)."""
    module = type(value).__module__.split(".")[0]
    if module == "numpy" and hasattr(value, "__array__") and hasattr(value, "shape"):
        import numpy as np

        return np.array(value, copy=True, subok=False)
    if module == "torch" and hasattr(value, "clone") and hasattr(value, "detach"):
        return value.detach().clone()
    if type(value) is dict:
        return {k: _detach(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_detach(v) for v in value)
    return _copy(value)


def _copy(value: Any) -> Any:
    try:
        return copy.deepcopy(value)
    except Exception:  # not copyable: compare against the object itself
        return value


def _short_error(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    return text if len(text) <= 200 else text[:197] + "..."


class _Judge:
    """Runs in the isolated worker: one load of the damaged file, judged against the pristine load."""

    def __init__(
        self,
        load: Callable[..., Any],
        path: str,
        original: Any,
        raises: type[BaseException] | tuple[type[BaseException], ...],
        accepted: tuple[type[Warning], ...],
    ) -> None:
        self.load, self.path, self.original = load, path, original
        self.raises, self.accepted = raises, accepted

    def __call__(self) -> tuple[str, str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                got = _call_load(self.load, self.path)
            except self.raises as err:
                return "detected", _short_error(err)
            except Exception as err:
                return "wrong-error", _short_error(err)
        reported = [w for w in caught if issubclass(w.category, self.accepted)]
        if reported:
            return "reported", f"{reported[0].category.__name__}: {reported[0].message}"
        try:
            # detached like the original: a memmap and the array copied out of it compare by content
            problem = first_difference(self.original, _detach(got), "load()")
        except Exception as err:  # what load() returned breaks when it is read: it did not raise, though
            return "silent", f"load() returned data that fails when compared: {_short_error(err)}"
        return ("equal", "") if problem is None else ("silent", problem)


@dataclass
class FileReport:
    """What happened to every damaged copy of one file."""

    path: str
    format: str
    size: int
    allocated: int
    tried: int = 0
    # (kind, region) -> verdict -> count
    table: dict[tuple[str, str], Counter[str]] = field(default_factory=dict)
    # verdict -> [(damage description, detail)]
    cases: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    skipped: str = ""
    load_writes: int = 0  # loads that changed the file (it was restored each time)

    def add(self, kind: str, region: str, description: str, verdict: str, detail: str) -> None:
        self.tried += 1
        self.table.setdefault((kind, region), Counter())[verdict] += 1
        self.cases.setdefault(verdict, []).append((description, detail))

    def count(self, verdict: str) -> int:
        return len(self.cases.get(verdict, []))

    @property
    def ignores_damage(self) -> bool:
        """Every damaged copy loaded exactly like the original: load() does not read this file."""
        return self.tried > 0 and self.count("equal") == self.tried

    def render(self) -> list[str]:
        name = os.path.basename(self.path)
        head = (
            f"{name} ({self.format}, {self.size} bytes, {self.allocated} allocated): "
            f"{self.tried} damaged copies: "
            + ", ".join(f"{self.count(v)} {v}" for v in VERDICTS if self.count(v))
        )
        lines = [head]
        for (kind, region), counts in sorted(self.table.items()):
            summary = ", ".join(f"{counts[v]} {v}" for v in VERDICTS if counts[v])
            lines.append(f"  {kind:<15} {region[:60]:<60} {summary}")
        if self.skipped:
            lines.append(f"  {self.skipped}")
        return lines


@dataclass
class CorruptionReport:
    """One ``assert_detected`` run: a ``FileReport`` per file."""

    files: list[FileReport] = field(default_factory=list)

    @property
    def tried(self) -> int:
        return sum(f.tried for f in self.files)

    def render(self) -> str:
        return "\n".join(line for f in self.files for line in f.render())


class _FileState:
    """Puts damage into the file and takes it out again, so each load sees exactly one damage."""

    def __init__(self, path: str, pristine: bytes, allocated: list[tuple[int, int]]) -> None:
        self.path, self.pristine, self.allocated = path, pristine, allocated

    def _fd(self, flags: int) -> int:
        fd: int = REAL["open"](self.path, flags | os.O_CLOEXEC, 0o644)
        return fd

    def apply(self, damage: _Damage) -> None:
        if not os.path.isfile(self.path):
            self.rewrite()
        if damage.cut is not None:
            REAL["truncate"](self.path, damage.cut)
            return
        fd = self._fd(os.O_WRONLY)
        try:
            REAL["pwrite"](fd, damage.patch, damage.offset)
        finally:
            REAL["close"](fd)

    def restore(self, damage: _Damage) -> bool:
        """Undo ``damage``; True when the load had changed the file too (it is rewritten whole then)."""
        n = len(self.pristine)
        try:
            fd = self._fd(os.O_WRONLY)
        except FileNotFoundError:  # the load removed or renamed it
            self.rewrite()
            return True
        try:
            if damage.cut is not None:
                self._write_allocated(fd, damage.cut)
                REAL["ftruncate"](fd, n)
            elif damage.kind == "junk-appended":
                REAL["ftruncate"](fd, n)
            else:
                REAL["pwrite"](
                    fd, self.pristine[damage.offset : damage.offset + len(damage.patch)], damage.offset
                )
        finally:
            REAL["close"](fd)
        return self.ensure_pristine()

    def ensure_pristine(self) -> bool:
        """Rewrite the file if it is not the pristine bytes; True when it had to."""
        if os.path.isfile(self.path) and self._is_pristine():
            return False
        self.rewrite()
        return True

    def _is_pristine(self) -> bool:
        if os.path.getsize(self.path) != len(self.pristine):
            return False
        if len(self.pristine) > _FULL_CHECK_LIMIT:
            return True
        with real_open(self.path, "rb") as f:
            return bool(f.read() == self.pristine)

    def _write_allocated(self, fd: int, start: int) -> None:
        """The pristine bytes of the allocated extents from ``start`` on (holes stay holes)."""
        for s, e in self.allocated:
            s = max(s, start)
            if s < e:
                REAL["pwrite"](fd, self.pristine[s:e], s)

    def rewrite(self) -> None:
        fd = self._fd(os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            self._write_allocated(fd, 0)
            REAL["ftruncate"](fd, len(self.pristine))
        finally:
            REAL["close"](fd)


class CorruptionSet:
    """The damaged copies of one file: iterate them, or ``.assert_detected(load)``."""

    def __init__(self, owner: Corruptions, path: str, kinds: tuple[str, ...], samples: int | None) -> None:
        self.owner = owner
        self.path = path
        self.kinds = kinds
        self.samples = samples

    def __iter__(self) -> Iterator[Corruption]:
        return self.owner._copies(self.path, self.kinds, self.samples)

    def assert_detected(
        self,
        load: Callable[..., Any],
        *,
        raises: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        warns: WarningTypes = (),
        timeout: float | None = None,
        tolerate: Iterable[str] = (),
    ) -> int:
        """``Corruptions.assert_detected`` for this file and these kinds."""
        __tracebackhide__ = True
        return self.owner.assert_detected(
            load,
            paths=[self.path],
            raises=raises,
            kinds=self.kinds,
            warns=warns,
            timeout=timeout,
            tolerate=tolerate,
            samples=self.samples,
        )


class Corruptions:
    """The ``corruptions`` fixture.

    Example::

        def test_damage_is_detected(corruptions, tmp_path):
            path = tmp_path / "state.bin"
            save_state(path, {"balance": 100})
            for c in corruptions(path):          # iterate to inspect each damaged copy
                assert c.data != path.read_bytes() or c.kind == "junk-appended"
            corruptions(path).assert_detected(lambda: load_state(path))   # must raise

    ``isolate=False`` runs each load in the test process (no protection from a
    load that crashes or hangs); the default runs it in a forked worker.
    """

    def __init__(
        self, *, samples: int = 16, seed: int = 0, recorder: Recorder = RECORDER, isolate: bool = True
    ) -> None:
        self.samples = samples
        self.seed = seed
        self.recorder = recorder
        self.isolate = isolate and hasattr(os, "pidfd_open")
        self.paths: list[str] = []
        self.last_report: CorruptionReport | None = None

    def __call__(
        self, path: str | os.PathLike[str], *, kinds: tuple[str, ...] = KINDS, samples: int | None = None
    ) -> CorruptionSet:
        """Register ``path``; the result iterates its damaged copies (the file is not modified)
        and has ``.assert_detected(load)``."""
        __tracebackhide__ = True
        _check_kinds(kinds)
        p = os.path.abspath(os.fspath(path))
        if p not in self.paths:
            self.paths.append(p)
        if not os.path.isfile(p):
            raise FileNotFoundError(f"corruptions: {p} is not a file; save it before corrupting it")
        return CorruptionSet(self, p, kinds, samples)

    def _copies(self, p: str, kinds: tuple[str, ...], samples: int | None) -> Iterator[Corruption]:
        with real_open(p, "rb") as f:
            data = f.read()
        damages = _plan(
            data, layout(data), extents(p), samples=self._samples(samples), seed=self.seed, kinds=kinds
        )
        return (Corruption(p, d.kind, d.description, d.damaged(data), d.region) for d in damages)

    def _samples(self, samples: int | None) -> int:
        return self.samples if samples is None else samples

    def assert_detected(
        self,
        load: Callable[..., Any],
        *,
        paths: Iterable[str | os.PathLike[str]] | None = None,
        raises: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        kinds: tuple[str, ...] = KINDS,
        warns: WarningTypes = (),
        timeout: float | None = None,
        tolerate: Iterable[str] = (),
        samples: int | None = None,
    ) -> int:
        """Load every damaged copy; fail on loads that are silently wrong, crash, hang or ignore the file.

        ``load()`` or ``load(path)`` is called with the damaged file in place (the
        original is restored afterwards). ``raises``: the exception types that count
        as detection; any other exception fails the check (pass e.g.
        ``persistkit.IntegrityError`` to insist on typed errors). A warning counts
        as a reported fallback only if it is a persistkit recovery warning
        (``StateRecoveredWarning``) or one of ``warns``. ``timeout``: seconds per
        load (default: 10 s, or 20 times the pristine load if longer).
        ``tolerate``: "crash" and/or "hang" to accept those as detection. Returns
        the number of damaged copies tried; ``self.last_report`` says what
        happened to each, by damage kind and region.
        """
        __tracebackhide__ = True
        _check_kinds(kinds)
        tolerated = set(tolerate)
        if tolerated - {"crash", "hang"}:
            raise ValueError(f"tolerate= takes 'crash' and/or 'hang', not {sorted(tolerated)}")
        accepted = _recovery_warnings() + ((warns,) if isinstance(warns, type) else tuple(warns))
        targets = [os.path.abspath(os.fspath(p)) for p in paths] if paths is not None else list(self.paths)
        if not targets:
            raise ValueError("corruptions.assert_detected: call corruptions(path) first, or pass paths=[...]")
        report = CorruptionReport()
        self.last_report = report
        try:
            for target in targets:
                report.files.append(
                    self._check_file(load, target, raises, kinds, accepted, timeout, tolerated, samples)
                )
        finally:
            failures = sum(_violations(f, tolerated) for f in report.files)
            self.recorder.add_run(
                "corruptions",
                corruptions=report.tried,
                violations=failures,
                files={
                    f.path: {"format": f.format, **{v: f.count(v) for v in VERDICTS if f.count(v)}}
                    for f in report.files
                },
            )
        message = _failure_message(report, raises, tolerated)
        if message:
            raise AssertionError(message)
        return report.tried

    def _check_file(
        self,
        load: Callable[..., Any],
        target: str,
        raises: type[BaseException] | tuple[type[BaseException], ...],
        kinds: tuple[str, ...],
        accepted: tuple[type[Warning], ...],
        timeout: float | None,
        tolerated: set[str],
        samples: int | None,
    ) -> FileReport:
        import time

        with real_open(target, "rb") as f:
            pristine = f.read()
        allocated = extents(target)
        shape = layout(pristine)
        damages = _plan(
            pristine, shape, allocated, samples=self._samples(samples), seed=self.seed, kinds=kinds
        )
        file_report = FileReport(target, shape.format, len(pristine), sum(e - s for s, e in allocated))
        started = time.monotonic()
        original = _detach(_call_load(load, target))
        limit = timeout if timeout is not None else max(10.0, 20 * (time.monotonic() - started))
        judge = _Judge(load, target, original, raises, accepted)
        state = _FileState(target, pristine, allocated)
        worker = None
        if self.isolate:
            from persistkit.testing.isolate import Worker

            worker = Worker(judge, timeout=limit)  # forked now: it holds the pristine result
        hangs = 0
        try:
            # the control: the undamaged file, loaded where every damaged copy will be. A load that fails
            # or differs here (CUDA initialised before the fork, a load that is not deterministic) would
            # make every verdict below meaningless: "detected" would pass on nothing.
            file_report.load_writes += state.ensure_pristine()  # the first load may have written to it
            verdict, detail = _judge_isolated(worker, limit) if worker is not None else judge()
            file_report.load_writes += state.ensure_pristine()
            if verdict != "equal":
                where = "inside the isolated worker (a forked process)" if worker is not None else "again"
                raise AssertionError(
                    f"corruptions: loading the undamaged {os.path.basename(target)} {where} does not give "
                    f"what the first load gave ({verdict}: {detail}), so no damaged copy can be judged. "
                    "Is load() deterministic? Does it use something that does not survive a fork "
                    "(CUDA, a connection opened earlier)? Corruptions(isolate=False) loads in this process."
                )
            for i, damage in enumerate(damages):
                state.apply(damage)
                try:
                    verdict, detail = _judge_isolated(worker, limit) if worker is not None else judge()
                finally:
                    file_report.load_writes += state.restore(damage)
                file_report.add(damage.kind, damage.region, damage.description, verdict, detail)
                hangs += verdict == "hung"
                if hangs >= _MAX_HANGS and "hang" not in tolerated and i + 1 < len(damages):
                    file_report.skipped = (
                        f"the other {len(damages) - i - 1} damaged copies were not tried: "
                        f"{hangs} loads never returned (each costs the {limit:g} s timeout)"
                    )
                    break
        finally:
            if worker is not None:
                worker.close()
            state.rewrite()  # whatever happened, the original bytes (holes included) are back
        return file_report


def _judge_isolated(worker: Any, limit: float) -> tuple[str, str]:
    outcome = worker.call()
    if outcome.kind == "returned":
        verdict: tuple[str, str] = outcome.value
        return verdict
    if outcome.kind == "raised":  # a BaseException that is not an Exception escaped the load
        return "wrong-error", f"{outcome.error_type}: {outcome.error_message}"[:200]
    at = " | ".join(outcome.where(1))
    if outcome.kind == "timeout":
        return "hung", f"did not return within {limit:g} s" + (f"; stuck at {at}" if at else "")
    return "crashed", outcome.describe() + (f" at {at}" if at else "")


def _check_kinds(kinds: tuple[str, ...]) -> None:
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown corruption kind {kind!r}; choose from {KINDS}")


def _violations(f: FileReport, tolerated: set[str]) -> int:
    count = f.count("silent") + f.count("wrong-error")
    count += 0 if "crash" in tolerated else f.count("crashed")
    count += 0 if "hang" in tolerated else f.count("hung")
    return count + (1 if f.ignores_damage else 0)


def _failure_message(
    report: CorruptionReport,
    raises: type[BaseException] | tuple[type[BaseException], ...],
    tolerated: set[str],
) -> str:
    lines: list[str] = []
    tried = report.tried
    expected = raises.__name__ if isinstance(raises, type) else " or ".join(r.__name__ for r in raises)
    for f in report.files:
        name = os.path.basename(f.path)
        if f.ignores_damage:
            lines.append(
                f"corruptions: load() does not read the damaged file: all {f.tried} damaged copies of {name} "
                f"(truncated to 0 bytes among them) loaded exactly like the original. Does load() ignore the "
                f"path it is passed, read another file, or return a cached value?"
            )
            continue
        silent = f.cases.get("silent", [])
        if silent:
            lines.append(
                f"corruptions: {len(silent)} of {tried} damaged copies loaded without an error or warning "
                f"and returned different data (silent corruption). First: {name}: {silent[0][0]}: {silent[0][1]}"
            )
            lines += [f"  also: {name}: {d}: {p}" for d, p in silent[1:5]]
        wrong = f.cases.get("wrong-error", [])
        if wrong:
            lines.append(
                f"corruptions: {len(wrong)} damaged copies raised something other than {expected}. "
                f"First: {name}: {wrong[0][0]}: {wrong[0][1]}"
            )
        crashed = f.cases.get("crashed", [])
        if crashed and "crash" not in tolerated:
            lines.append(
                f"corruptions: load() crashed its process on {len(crashed)} damaged copies of {name} ({f.format}): "
                f"a damaged file takes a whole program down instead of raising. First: {crashed[0][0]}: "
                f"{crashed[0][1]} (tolerate=('crash',) accepts this)"
            )
            lines += [f"  also: {d}: {p}" for d, p in crashed[1:3]]
        hung = f.cases.get("hung", [])
        if hung and "hang" not in tolerated:
            lines.append(
                f"corruptions: load() never returned on {len(hung)} damaged copies of {name} ({f.format}): "
                f"a damaged file hangs the program that reads it. First: {hung[0][0]}: {hung[0][1]} "
                f"(tolerate=('hang',) accepts this)"
            )
        if silent and f.format == "SQLite":
            lines.append(SQLITE_ADVICE)
    if lines:
        lines.append("What happened, by damage kind and region:")
        lines += ["  " + line for line in report.render().splitlines()]
    return "\n".join(lines)
