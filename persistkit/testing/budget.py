"""Measure the saves made during a test: bytes per file and latency per save.

``measure()`` routes persistkit's I/O through a ``MeasuringFS`` for the
duration of a block and watches the user's file operations. What counts as one save:

* a ``StateStore`` checkpoint (``save()``, ``close()``, autosave, signal), timed
  from the call to its return, including encoding;
* otherwise, for persistkit, an atomic replace (``atomic_write``, ``atomic_writer``,
  and what is built on them, such as bundles): from the creation of the temp file
  to the rename plus the directory fsync that follows it;
* for the user's code (``kind="user save"``): what one function of that code writes,
  from its first file operation (a file opened for writing, created or truncated; a
  rename) to its last (the close or fsync of what it wrote, the rename, the open,
  fsync and close of the directory) before it returns. The function is the
  innermost one on the stack that is neither the standard library, an installed
  package nor persistkit (a helper's writes belong to it; a rename in its caller
  continues it). In a test function's own body (``boundaries``), each library call
  (``Path.write_text``, ``np.save``) is a save. Appending to a file is not a save.
  Time spent between the first and the last operation counts (serialising while
  writing, a sleep); time before the first does not.

The user's saves are seen through Python's audit hook (``open``, ``os.rename``,
``os.remove``) and, in the saving thread and only while its save is open, a
profile function (the close, the fsync, the function's return). Writes made by C
code (``torch.save(path)``, sqlite3, h5py) raise no audit event: a file under
``roots`` that changed without an observed save is listed in ``unobserved``, and
a latency budget then gives no verdict (``unjudged``) rather than a pass.

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
import io
import os
import stat
import statistics
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import Any, TypeVar

from persistkit import naming
from persistkit.io import current_fs, use_fs
from persistkit.io.fs import FileHandle, PersistFS
from persistkit.testing.fs.testfs import HookedFS, Mutation

T = TypeVar("T")

__all__ = ["Budget", "MeasuringFS", "Save", "check_budget", "measure", "unjudged"]

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
        self.unobserved: list[str] = []  # files saved in ways whose timing was not seen, and why

    def _user_save(self, save: Save, span: Any) -> None:
        with self._lock:
            if span.unseen:
                self.unobserved += [
                    f"{path}: renamed into place, but its writing was not seen (C code such as "
                    "torch.save(path) wrote it)"
                    for path in span.unseen
                ]
            elif span.profile_blocked:
                self.unobserved.append(
                    f"{save.target}: another profiler (sys.setprofile) is active, so the end of its save "
                    "was not seen"
                )
            else:
                self.saves.append(save)

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
        """At the end of the block: the sizes of every file written, and of changed files under roots.

        A file under the roots that changed although no Python code opened it for writing and
        persistkit did not write it was written by code the audit hook does not see (C
        extensions, other processes): its save was not observed.
        """
        with self._lock:
            seen = set(self.written) | set(self.peak) | set(self.sizes)
            seen.update(t for s in self.saves for t in s.target.split(", "))
            for path in self.written:
                size = _size(path)
                if size is not None:
                    self._grow_peak(path, size)
            after = _walk(self.roots) if self.roots else {}
            for path, (size, mtime) in after.items():
                if before.get(path) != (size, mtime):
                    self._grow_peak(path, size)
                    if path not in seen and not _is_temp(path):
                        self.unobserved.append(
                            f"{path}: changed, but no save of it was observed (written by C code such as "
                            "torch.save(path), sqlite3 or h5py, or by another process)"
                        )

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


# -- saves made by user code ------------------------------------------------------------------------
#
# Python's audit hook (already installed for byte counts) tells when code opens a file for
# writing, renames or removes one, and opens a directory (the fsync idiom); a profile function,
# set only in the thread that is saving and only until the save ends, tells when those files
# are closed or fsynced and when the function making the save returns. Both run in the saving
# thread, so the times are exact and taken synchronously. Cost: one Python call per audited
# event; while a save is open, one per call and return in that thread. Neither needs ptrace
# (strace) or the interceptor, of which a process can have one at a time: crash_points and
# disk_faults, which use them, keep working inside a test with a budget.

_STDLIB = tuple(
    os.path.join(os.path.normpath(p), "")
    for p in {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]}
)
_LIBRARY_PARTS = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")
_TRANSPARENT_MODULES = (
    "persistkit.testing.observe.intercept",
)  # its wrappers call open() on the user's behalf


def _library(filename: str) -> bool:
    """Code that is not the user's own: the standard library or an installed package."""
    if filename.startswith("<frozen") or any(part in filename for part in _LIBRARY_PARTS):
        return True
    return filename.startswith(_STDLIB)


@dataclass
class _Span:
    """One user save being observed in one thread."""

    owner: FrameType  # the function of the user's code making the save
    start: float
    last: float
    targets: list[str] = field(default_factory=list)
    written: set[str] = field(default_factory=set)  # files whose writing was seen (opened for writing)
    unseen: list[str] = field(default_factory=list)  # renamed into place, but never seen being written
    profile_blocked: bool = False


class _UserSaves:
    """Follows the saves user code makes, per thread, and hands each finished one to the watchers.

    When the function making a save returns, the save is finished but held back: a rename,
    removal or fsync of one of its files that follows in the caller (a helper wrote the temp
    file, the caller renames it) continues it. The next save in that thread, or the end of
    the measured block, hands it on.
    """

    def __init__(self) -> None:
        self.spans: dict[int, _Span] = {}  # thread id -> its open save
        self.held: dict[int, _Span] = {}  # thread id -> its finished save, until it cannot continue
        self.lock = threading.Lock()
        self.boundaries: set[CodeType] = set()  # test functions: a save is never theirs as a whole

    def active(self) -> bool:
        me = threading.get_ident()
        return me in self.spans or me in self.held

    # -- who is saving -----------------------------------------------------------------------
    def owner(self, frame: FrameType | None) -> FrameType | None:
        """The innermost frame of the user's code (None: persistkit itself is writing, or no user code)."""
        below: FrameType | None = None  # the outermost library frame seen so far
        f = frame
        while f is not None:
            code = f.f_code
            module = f.f_globals.get("__name__", "")
            if code in self.boundaries:
                return below or f  # written in a test's body: the library call that wrote it
            if module.startswith(_TRANSPARENT_MODULES) or _library(code.co_filename):
                below = f
            elif module == "persistkit" or module.startswith("persistkit."):
                return None  # persistkit's own I/O (measured by MeasuringFS) or the verifier's
            else:
                return f
            f = f.f_back
        return None

    # -- events ------------------------------------------------------------------------------
    def event(self, kind: str, path: str, frame: FrameType | None, extra: str = "") -> None:
        owner = self.owner(frame)
        if owner is None:
            return
        me = threading.get_ident()
        now = time.perf_counter()
        span = self.spans.get(me)
        if span is not None and (
            (span.owner is not owner and not _within(frame, span.owner))
            or (kind == "write" and span.owner.f_code in self.boundaries)  # a new file in a test's body
        ):
            self.finish(span)
            span = None
        if span is None:
            held = self.held.get(me)
            if held is not None and kind != "write" and _continues(held, path):
                span = held  # the caller goes on with what its helper wrote
                with self.lock:
                    del self.held[me]
                    self.spans[me] = span
                span.owner = owner
                self._profile_on(span)
            elif kind not in ("write", "rename"):
                return  # a read-only open or a removal outside any save
            else:
                self.hand_on(me)
                span = _Span(owner, now, now)
                with self.lock:
                    self.spans[me] = span
                self._profile_on(span)
        span.last = now
        if kind == "write":
            span.written.add(path)
            if path not in span.targets:
                span.targets.append(path)
        elif kind == "rename":
            src, dst = path, extra
            if src in span.written:
                span.written.add(dst)
            elif not _is_temp(dst):
                span.unseen.append(dst)
            span.targets = [dst if t == src else t for t in span.targets]
            if dst not in span.targets:
                span.targets.append(dst)

    def _profile_on(self, span: _Span) -> None:
        current = sys.getprofile()
        if current is not None and current != self.profile:
            span.profile_blocked = True  # another profiler runs here: we cannot see the save end
            return
        sys.setprofile(self.profile)

    def profile(self, frame: FrameType, event: str, arg: Any) -> None:
        span = self.spans.get(threading.get_ident())
        if span is None:
            sys.setprofile(None)
            return
        if event == "return":
            if frame is span.owner:
                self.finish(span)
            return
        if event not in ("c_return", "c_exception"):
            return
        name = getattr(arg, "__name__", "")
        if name in ("close", "__exit__", "flush", "fsync", "fdatasync") and _within(frame, span.owner):
            module = getattr(arg, "__module__", None)
            if module == "posix" or isinstance(getattr(arg, "__self__", None), io.IOBase):
                span.last = time.perf_counter()

    def finish(self, span: _Span) -> None:
        """The function making ``span`` returned (or another save began): hold it back."""
        me = threading.get_ident()
        with self.lock:
            mine = [t for t, s in self.spans.items() if s is span]
            for t in mine:
                del self.spans[t]
        if me in mine and sys.getprofile() == self.profile:
            sys.setprofile(None)
        for t in mine:
            self.hand_on(t)
            with self.lock:
                self.held[t] = span

    def hand_on(self, thread: int) -> None:
        with self.lock:
            span = self.held.pop(thread, None)
        if span is None:
            return
        save = Save(
            ", ".join(span.targets),
            span.last - span.start,
            sum(_size(t) or 0 for t in span.targets),
            "user save",
        )
        for w in list(_watchers):
            w._user_save(save, span)

    def finish_all(self) -> None:
        """At the end of a block: saves still open (in any thread) end at their last operation."""
        with self.lock:
            spans = list(self.spans.values())
        for span in spans:
            self.finish(span)
        with self.lock:
            threads = list(self.held)
        for t in threads:
            self.hand_on(t)


def _continues(span: _Span, path: str) -> bool:
    """``path`` is one of the save's files, or the directory holding one (its fsync)."""
    return any(path == f or os.path.dirname(f) == path for f in (*span.written, *span.targets))


def _within(frame: FrameType | None, owner: FrameType) -> bool:
    f = frame
    while f is not None:
        if f is owner:
            return True
        f = f.f_back
    return False


_USER = _UserSaves()


_watchers: list[MeasuringFS] = []
_hook_installed = False
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _watchers or event not in ("open", "os.rename", "os.remove"):
        return
    try:
        if event == "open":
            path, mode, flags = args
            if path is None or isinstance(path, int):
                return
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _WRITE_FLAGS)
            if not writing:
                if _USER.active():  # opening a directory (or the file just written) to fsync it
                    p = os.path.abspath(os.fsdecode(path))
                    _USER.event("sync", p, sys._getframe(1))
                return
            p = os.path.abspath(os.fsdecode(path))
            if any(part in _IGNORED for part in p.split(os.sep)):
                return
            for w in list(_watchers):
                w._audited_open(p)
            appending = "a" in mode if isinstance(mode, str) else bool(flags & os.O_APPEND)
            _USER.event("sync" if appending else "write", p, sys._getframe(1))
        elif event == "os.remove":
            if _USER.active() and not isinstance(args[0], int):
                _USER.event("remove", os.path.abspath(os.fsdecode(args[0])), sys._getframe(1))
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
            _USER.event("rename", s, sys._getframe(1), d)
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
def measure(
    *,
    stores: bool = True,
    roots: Iterable[str | os.PathLike[str]] = (),
    boundaries: Iterable[CodeType] = (),
) -> Iterator[MeasuringFS]:
    """Measure the saves and the files written inside the block.

    ``roots``: directories whose files are also compared before and after (this
    catches writes made by C code, which Python's audit hook does not see).
    ``boundaries``: code objects (a test function's) that never own a save as a whole:
    what their body writes is timed per library call.

    Example::

        with measure(roots=[tmp_path]) as m:
            store.save()
        print(m.saves, m.files())
    """
    fs = MeasuringFS(current_fs())
    fs.roots = [os.path.abspath(os.fspath(r)) for r in roots]
    before = _walk(fs.roots) if fs.roots else {}
    _install_hook()
    added = [code for code in boundaries if code not in _USER.boundaries]
    _USER.boundaries.update(added)
    _watchers.append(fs)
    try:
        with use_fs(fs), _store_spans(fs) if stores else contextlib.nullcontext():
            yield fs
    finally:
        _USER.finish_all()
        _watchers.remove(fs)
        _USER.boundaries.difference_update(added)
        fs._settle(before)


def unjudged(fs: MeasuringFS, budget: Budget) -> list[str]:
    """Why the budget cannot be judged: what it would judge was not observed (empty when it can)."""
    problems: list[str] = []
    if budget.max_save_seconds is not None:
        problems += [f"the time of a save was not observed: {u}" for u in fs.unobserved]
        if not fs.saves and not fs.unobserved:
            problems.append(
                f"max_save_seconds={budget.max_save_seconds:g}: no save was observed, so none was timed. A save is "
                "what one function of your code writes, from its first file operation (a file opened for "
                "writing, a rename) to its last (the close, the rename, the directory fsync) before it returns; "
                "Python's file operations are seen, C extensions' (torch.save(path), sqlite3) are not"
            )
    if budget.max_bytes is not None and not fs.files():
        problems.append(f"max_bytes={budget.max_bytes:,}: no file was written, so there is no size to judge")
    return problems


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
