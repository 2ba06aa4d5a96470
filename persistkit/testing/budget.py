"""Measure persistkit's saves during a test: bytes per file and latency per save.

``measure()`` routes persistkit's I/O through a ``MeasuringFS`` for the
duration of a block. What counts as one save:

* a ``StateStore`` checkpoint (``save()``, ``close()``, autosave, signal), timed
  from the call to its return, including encoding;
* otherwise an atomic replace (``atomic_write``, ``atomic_writer``, and what is
  built on them, such as bundles): from the creation of the temp file to the
  rename plus the directory fsync that follows it.

Sizes are the largest each file reached (journals grow by appends, files are
replaced whole); temp files count under the name they are renamed to.

Bytes are counted for every file written during the block, not only
persistkit's: a process-wide audit hook (``sys.addaudithook``, installed once,
idle outside ``measure()``) notes every file opened for writing by Python code
(``open``, ``pathlib``, ``os.open``, ``tempfile``, numpy...) and every rename,
and those files' sizes are read when they are renamed and when the block ends.
Writes made by C code without Python's ``open`` (``torch.save(path)``,
safetensors, sqlite3) raise no audit event; ``measure(roots=[dir])`` also
compares the sizes of every file under ``dir`` before and after, which catches
those too.
"""

from __future__ import annotations

import contextlib
import os
import stat
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from persistkit import naming
from persistkit.io import current_fs, use_fs
from persistkit.io.fs import FileHandle, PersistFS
from persistkit.testing.fs.testfs import HookedFS, Mutation

T = TypeVar("T")

__all__ = ["Budget", "MeasuringFS", "Save", "check_budget", "measure"]

_IGNORED = ("__pycache__", ".pytest_cache", ".hypothesis", ".benchmarks")


@dataclass(frozen=True)
class Save:
    target: str
    seconds: float
    bytes: int
    kind: str = "atomic write"


@dataclass(frozen=True)
class Budget:
    """``@pytest.mark.persist_budget(max_bytes=..., max_save_seconds=...)``; None: unlimited."""

    max_bytes: int | None = None
    max_save_seconds: float | None = None

    @classmethod
    def from_marker(cls, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Budget:
        if args:
            raise TypeError(
                "persist_budget takes keyword arguments only: max_bytes=..., max_save_seconds=..."
            )
        unknown = set(kwargs) - {"max_bytes", "max_save_seconds"}
        if unknown:
            raise TypeError(
                f"persist_budget: unknown argument(s) {sorted(unknown)}; use max_bytes, max_save_seconds"
            )
        max_bytes = kwargs.get("max_bytes")
        max_seconds = kwargs.get("max_save_seconds")
        if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 0):
            raise TypeError(f"persist_budget: max_bytes must be a non-negative int, not {max_bytes!r}")
        if max_seconds is not None and (not isinstance(max_seconds, (int, float)) or max_seconds <= 0):
            raise TypeError(
                f"persist_budget: max_save_seconds must be a positive number, not {max_seconds!r}"
            )
        return cls(max_bytes, None if max_seconds is None else float(max_seconds))


_local = threading.local()


class MeasuringFS(HookedFS):
    """Wraps ``inner``; records file sizes and save latencies from the mutations that pass it."""

    def __init__(self, inner: PersistFS) -> None:
        super().__init__(inner)
        self.sizes: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.saves: list[Save] = []
        self._created: dict[str, float] = {}
        self._pending: dict[int, tuple[int, str, float]] = {}  # thread -> (save index, dir, start)
        self._lock = threading.Lock()
        self.written: set[str] = set()  # files opened for writing by any Python code (audit hook)
        self.roots: list[str] = []  # directories compared before/after as well

    def _audited_open(self, path: str) -> None:
        with self._lock:
            self.written.add(path)

    def _audited_rename(self, src: str, dst: str) -> None:
        with self._lock:
            if src not in self.written:
                return
            self.written.discard(src)
            self.written.add(dst)
            size = _size(src)
            if size is not None and not _is_temp(dst):
                self._grow_peak(dst, size)

    def _grow_peak(self, path: str, size: int) -> None:
        if size > self.peak.get(path, -1):
            self.peak[path] = size

    def _settle(self, before: dict[str, tuple[int, int]]) -> None:
        """At the end of the block: the sizes of every file written, and of changed files under roots."""
        with self._lock:
            for path in self.written:
                size = _size(path)
                if size is not None:
                    self._grow_peak(path, size)
            after = _walk(self.roots) if self.roots else {}
            for path, (size, mtime) in after.items():
                if before.get(path) != (size, mtime):
                    self._grow_peak(path, size)

    def _grow(self, path: str, size: int) -> None:
        self.sizes[path] = size
        if size > self.peak.get(path, -1):
            self.peak[path] = size

    def on_mutation(self, m: Mutation, call: Callable[[], T]) -> T:
        if m.op == "write" and m.handle is not None:
            handle = m.handle
            try:
                return call()
            finally:
                with self._lock:
                    self._grow(handle.path, max(self.sizes.get(handle.path, 0), handle.offset))
        result = call()
        if isinstance(result, FileHandle):  # create, open_append
            self._opened(m.op, result)
        elif m.op == "truncate":
            with self._lock:
                self.sizes[m.path] = m.size
        elif m.op == "replace" and m.dst is not None:
            self._replaced(m.path, m.dst)
        elif m.op == "fsync_dir":
            self._dir_synced(m.path)
        elif m.op == "unlink":
            self._unlinked(m.path)
        return result

    def _opened(self, op: str, handle: FileHandle) -> None:
        with self._lock:
            if op == "create":
                self._created[handle.path] = time.perf_counter()
                self.sizes[handle.path] = 0
            else:
                self._grow(handle.path, handle.offset)

    def _replaced(self, s: str, d: str) -> None:
        now = time.perf_counter()
        with self._lock:
            moved = [p for p in self.sizes if p == s or p.startswith(s + os.sep)]
            retiring = _is_temp(d)  # renamed away to be deleted: the figures stay with the old name
            for p in moved:
                size = self.sizes.pop(p)
                if not retiring:
                    self.peak.pop(p, None)
                    self._grow(d + p[len(s) :], size)
            created = self._created.pop(s, None)
            if created is not None and s in moved and not getattr(_local, "store_depth", 0):
                self.saves.append(Save(d, now - created, self.sizes.get(d, 0)))
                self._pending[threading.get_ident()] = (len(self.saves) - 1, os.path.dirname(d), created)

    def _dir_synced(self, p: str) -> None:
        with self._lock:
            pending = self._pending.pop(threading.get_ident(), None)
            if pending is not None and pending[1] == p:
                index, _, start = pending
                old = self.saves[index]
                self.saves[index] = Save(old.target, time.perf_counter() - start, old.bytes, old.kind)

    def _unlinked(self, p: str) -> None:
        with self._lock:
            self.sizes.pop(p, None)
            self._created.pop(p, None)
            if _is_temp(p):
                self.peak.pop(p, None)

    # -- results ----------------------------------------------------------------------
    def files(self) -> dict[str, int]:
        """Largest size each file reached (temp files that were abandoned are left out)."""
        return {p: n for p, n in self.peak.items() if not _is_temp(p)}

    def summary(self) -> dict[str, Any]:
        secs = [s.seconds for s in self.saves]
        return {
            "saves": len(secs),
            "median_seconds": statistics.median(secs) if secs else None,
            "max_seconds": max(secs) if secs else None,
            "bytes": sum(self.files().values()),
        }


def _size(path: str) -> int | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _walk(roots: list[str]) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for root in roots:
        for dirpath, dirs, names in os.walk(root):
            dirs[:] = [d for d in dirs if d not in _IGNORED]
            for name in names:
                full = os.path.join(dirpath, name)
                try:
                    st = os.lstat(full)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    out[full] = (st.st_size, st.st_mtime_ns)
    return out


_watchers: list[MeasuringFS] = []
_hook_installed = False
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _watchers or event not in ("open", "os.rename"):
        return
    try:
        if event == "open":
            path, mode, flags = args
            if path is None or isinstance(path, int):
                return
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _WRITE_FLAGS)
            if not writing:
                return
            p = os.path.abspath(os.fsdecode(path))
            if any(part in _IGNORED for part in p.split(os.sep)):
                return
            for w in list(_watchers):
                w._audited_open(p)
        else:
            src, dst = args[0], args[1]
            if (
                isinstance(src, int)
                or isinstance(dst, int)
                or args[2] not in (None, -1)
                or args[3] not in (None, -1)
            ):
                return
            s, d = os.path.abspath(os.fsdecode(src)), os.path.abspath(os.fsdecode(dst))
            for w in list(_watchers):
                w._audited_rename(s, d)
    except Exception:  # an audit hook must never break the code under test
        return


def _install_hook() -> None:
    global _hook_installed
    if not _hook_installed:
        sys.addaudithook(_audit)
        _hook_installed = True


def _is_temp(path: str) -> bool:
    """persistkit's temp and retired names (atomic-write temps, generations being written or removed)."""
    return any(
        naming.is_temp_name(part) or naming.generation_state(part) in ("tmp", "retired")
        for part in path.split(os.sep)
    )


class _StoreSpans:
    """Times whole StateStore checkpoints; the file saves inside one are not counted on their own."""

    def __init__(self, fs: MeasuringFS) -> None:
        self.fs = fs

    def begin(self, store: Any) -> None:
        _local.store_depth = getattr(_local, "store_depth", 0) + 1

    def end(self, store: Any, checkpoint: Any, seconds: float) -> None:
        _local.store_depth -= 1
        if _local.store_depth == 0 and checkpoint is not None and not checkpoint.skipped:
            with self.fs._lock:
                self.fs.saves.append(
                    Save(store.directory, seconds, checkpoint.total_bytes, "StateStore checkpoint")
                )


@contextlib.contextmanager
def _store_spans(fs: MeasuringFS) -> Iterator[None]:
    """Time whole StateStore checkpoints, when persistkit.state is in use (never imported for it)."""
    store_mod = sys.modules.get("persistkit.state.store")
    if store_mod is None:
        yield
        return
    with store_mod.observe_checkpoints(_StoreSpans(fs)):
        yield


@contextlib.contextmanager
def measure(*, stores: bool = True, roots: Iterable[str | os.PathLike[str]] = ()) -> Iterator[MeasuringFS]:
    """Measure the saves and the files written inside the block.

    ``roots``: directories whose files are also compared before and after (this
    catches writes made by C code, which Python's audit hook does not see).

    Example::

        with measure(roots=[tmp_path]) as m:
            store.save()
        print(m.saves, m.files())
    """
    fs = MeasuringFS(current_fs())
    fs.roots = [os.path.abspath(os.fspath(r)) for r in roots]
    before = _walk(fs.roots) if fs.roots else {}
    _install_hook()
    _watchers.append(fs)
    try:
        with use_fs(fs), _store_spans(fs) if stores else contextlib.nullcontext():
            yield fs
    finally:
        _watchers.remove(fs)
        fs._settle(before)


def check_budget(fs: MeasuringFS, budget: Budget) -> list[str]:
    """Messages for every figure over budget (empty when within)."""
    problems: list[str] = []
    if budget.max_bytes is not None:
        for path, size in sorted(fs.files().items(), key=lambda kv: -kv[1]):
            if size > budget.max_bytes:
                problems.append(f"{path} reached {size:,} bytes > max_bytes={budget.max_bytes:,}")
    if budget.max_save_seconds is not None:
        for s in sorted(fs.saves, key=lambda s: -s.seconds):
            if s.seconds > budget.max_save_seconds:
                problems.append(
                    f"{s.kind} of {s.target} took {s.seconds:.3f} s > max_save_seconds={budget.max_save_seconds:g}"
                )
    return problems
