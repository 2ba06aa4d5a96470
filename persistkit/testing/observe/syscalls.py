"""Turn strace output into the typed operation log the crash model replays.

``parse`` reads strace's text (``-f -xx -y``: every string hex-escaped, every
descriptor decorated with its path) line by line, from a file or any iterable,
into ``Call`` records, joining unfinished/resumed pairs. ``SyscallLog`` follows
processes, threads, descriptors, file positions and working directories and
emits one ``persistkit.testing.fs.ops.Op`` per file-system change, in the order
the kernel saw them:

==========================================  ===========================================
system call                                 operation
==========================================  ===========================================
open/openat/openat2/creat for writing       ``create`` (with ``truncate``) / ``open_existing``
write, pwrite64, writev, pwritev(2)         ``write`` at the offset the kernel used
copy_file_range, sendfile                   ``write`` of the bytes moved (read from the source)
ftruncate, truncate, fallocate              ``truncate`` (fallocate: extension with zeros)
fsync, fdatasync                            ``fsync`` (of a directory: ``fsync_dir`` of where it is now)
O_SYNC/O_DSYNC/RWF_DSYNC write              ``write`` + ``fsync`` of its range
sync, syncfs                                ``sync_all``
rename*, link*, unlink*, mkdir*, rmdir,     ``replace``, ``link``, ``unlink``/``rmdir``,
symlink*, mknod* (FIFO), chmod*, close      ``mkdir``, ``symlink``, ``mkfifo``, ``chmod``, ``close``
==========================================  ===========================================

Written bytes go to a ``Spool`` on disk as they are parsed, so memory does not
grow with the save. strace prints at most ``MAX_STRING`` bytes of a write; the
rest of a longer write is taken from the file the save left, when no later
operation overwrote it (``persistkit.testing.fs.model``), and reported
otherwise. Only regular files and directories count: writes to pipes,
sockets, eventfds and terminals (a program printing progress) are ignored.

What no tracer can replay is reported, never guessed: a shared writable
``mmap`` of a file under the root (its stores reach the page cache without a
system call), ``io_uring`` (submissions bypass system calls) and
``RENAME_EXCHANGE``. Each becomes an entry of ``blind``.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from persistkit.testing.fs.ops import Op, OpKind, Spool

__all__ = ["Call", "CallRecord", "FaultPoint", "SyscallLog", "parse"]

# Where anonymous (O_TMPFILE) files are followed: a name no file system has.
_ANONYMOUS = "/.persistkit-anonymous-file"

_LINE = re.compile(r"^(\d+) +(.*)$")
_CALL = re.compile(r"^([a-z0-9_]+)\((.*)\) += (.*)$", re.S)
_HEX = re.compile(r"\\x([0-9a-f]{2})")
_ARG_TOKEN = re.compile(r'"[^"]*"?|[\[{(<\]})>,]')
_IOV_BASE = re.compile(r'iov_base=("[^"]*"(?:\.\.\.)?)')
_FD = re.compile(r"^(AT_FDCWD|0x[0-9a-f]+|-?\d+)(?:<([^>]*)>)?")
_RET = re.compile(r"^(0x[0-9a-f]+|-?\d+)(?:<([^>]*)>)?")


@dataclass(slots=True)
class Call:
    """One completed system call: ``ret`` is its result (None when it failed)."""

    seq: int
    tid: int
    name: str
    args: list[str]
    ret: int | None
    ret_path: str | None
    error: str | None
    injected: bool
    ordinal: int  # how many calls of ``name`` this thread had made before this one, plus 1

    def describe(self) -> str:
        outcome = f"= {self.ret}" if self.error is None else f"= -1 {self.error}"
        return f"[{self.tid}] {self.name}(...) {outcome}"


def _unhex(text: str) -> bytes:
    body = text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text
    n, rest = divmod(len(body), 4)
    if not rest and n and body[0::4] == "\\" * n and body[1::4] == "x" * n and body == body.lower():
        # the usual case, all of a -xx string (a 64 KiB write is 256 KiB of text): decode in C
        try:
            return bytes.fromhex(body.replace("\\x", ""))
        except ValueError:
            pass
    return bytes(int(h, 16) for h in _HEX.findall(text))


def _split_args(text: str) -> list[str]:
    """Split strace's argument list at top-level commas (strings are hex, so no quotes inside)."""
    out: list[str] = []
    depth = 0
    start = 0
    for m in _ARG_TOKEN.finditer(text):  # quoted strings are skipped whole, in C
        ch = m.group()
        if ch[0] == '"':
            continue
        if ch in "[{(<":
            depth += 1
        elif ch in "]})>":
            depth -= 1
        elif depth == 0:
            out.append(text[start : m.start()].strip())
            start = m.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


def _decode_path(raw: str) -> str:
    return _unhex(raw).decode("utf-8", "surrogateescape")


def _parse_ret(text: str) -> tuple[int | None, str | None, str | None, bool]:
    injected = "(INJECTED)" in text
    text = text.strip()
    if text.startswith("?"):
        return None, None, "unfinished", injected
    m = _RET.match(text)
    if m is None:
        return None, None, "unparsed", injected
    value = int(m.group(1), 0)
    if value == -1 and " E" in text:
        name = text.split()[1]
        return None, None, name, injected
    path = _decode_path(m.group(2)) if m.group(2) is not None else None
    return value, path, None, injected


def parse(source: str | Iterable[str], on_exit: Callable[[int], None] | None = None) -> Iterator[Call]:
    """Parse ``strace -f -xx -y`` output (text, or an iterable of lines) into completed calls.

    ``on_exit(tid)`` is called where strace reports a process's exit (``+++ exited with N +++``).
    """
    lines: Iterable[str] = source.splitlines() if isinstance(source, str) else source
    pending: dict[int, str] = {}
    ordinals: Counter[tuple[int, str]] = Counter()
    seq = 0
    for raw in lines:
        m = _LINE.match(raw.rstrip("\n"))
        if m is None:
            continue
        tid, body = int(m.group(1)), m.group(2)
        if body.startswith("+++") and on_exit is not None:
            on_exit(tid)
        if body.startswith(("---", "+++")):
            continue
        if body.startswith("<... "):
            head = pending.pop(tid, None)
            if head is None:
                continue  # the call started before we attached
            body = head + body.split("resumed>", 1)[1]
        elif body.endswith("<unfinished ...>"):
            pending[tid] = body[: -len("<unfinished ...>")].rstrip()
            continue
        cm = _CALL.match(body)
        if cm is None:
            continue
        name, args, ret = cm.group(1), cm.group(2), cm.group(3)
        value, path, error, injected = _parse_ret(ret)
        ordinals[(tid, name)] += 1
        yield Call(seq, tid, name, _split_args(args), value, path, error, injected, ordinals[(tid, name)])
        seq += 1


def _string(arg: str) -> tuple[bytes, bool]:
    """Decode a hex-escaped strace string; the flag says whether strace cut it short."""
    cut = arg.endswith("...")
    body = arg[:-3] if cut else arg
    return _unhex(body), cut


def _fd_arg(arg: str) -> tuple[int, str | None]:
    """``4</tmp/x>`` -> (4, "/tmp/x"); ``AT_FDCWD</cwd>`` -> (-100, "/cwd"); ``0x3`` (raw) -> (3, None)."""
    m = _FD.match(arg)
    if m is None:
        return -1, None
    fd = -100 if m.group(1) == "AT_FDCWD" else int(m.group(1), 0)
    path = _decode_path(m.group(2)) if m.group(2) is not None else None
    if path is not None and arg[m.end() :].startswith("(deleted)"):
        path += " (deleted)"
    return fd, path


def _int(arg: str) -> int:
    m = re.match(r"^\[?(0x[0-9a-f]+|-?\d+)", arg)
    return int(m.group(1), 0) if m else 0


def _mode(arg: str) -> int | None:
    """A mode argument as strace prints it (``0644``, ``S_IFIFO|0600``, ``0``) -> permission bits."""
    m = re.search(r"(?:^|\|)(0[0-7]*)$", arg.strip())
    return int(m.group(1), 8) & 0o7777 if m else None


def _regular(path: str | None) -> bool:
    """A path that names a file or directory (not a pipe, socket, anon inode, device or /proc)."""
    if path is None or not path.startswith("/"):
        return False
    if path.startswith("/dev/shm/") or path == "/dev/shm":  # noqa: S108 - a file system of files, not a temp path
        return True
    return not path.startswith(("/proc/", "/dev/", "/sys/"))


@dataclass
class _File:
    """An open file description (shared by dup'ed descriptors and forked children)."""

    handle: int
    path: str
    append: bool
    writable: bool
    directory: bool
    pos: int = 0
    announced: bool = False
    sync: bool = False  # O_SYNC/O_DSYNC: every write is durable when it returns (open(2))


@dataclass
class _Proc:
    fds: dict[int, _File]
    cwd: list[str]  # a one-element box, shared between threads (CLONE_FS)


@dataclass(frozen=True)
class FaultPoint:
    """Where ``Op`` number ``op`` came from: the ``ordinal``-th ``syscall`` of its thread."""

    op: int
    syscall: str
    ordinal: int
    tid: int
    first_tid: bool  # the thread existed when tracing started (its count starts at attach)


@dataclass(frozen=True, slots=True)
class CallRecord:
    """What fault planning needs of a call (the arguments are not kept: they hold the data)."""

    tid: int
    name: str
    ordinal: int
    error: str | None
    injected: bool
    target: str | None  # the file it acts on, when known

    def describe(self) -> str:
        outcome = "ok" if self.error is None else self.error
        return f"[{self.tid}] {self.name} #{self.ordinal} on {self.target or '?'} ({outcome})"


@dataclass
class SyscallLog:
    """Operations under ``root`` (and elsewhere) reconstructed from system calls.

    ``sizes`` gives the size of each file under ``root`` before the save (to place
    ``O_APPEND`` writes); ``cwd`` the traced process's working directory when tracing
    started. After ``feed``: ``ops``, ``points`` (one per op), ``blind`` (what cannot be
    replayed, with reasons), ``outside`` (paths outside ``root`` that were changed).
    """

    root: str
    sizes: dict[str, int]
    cwd: str
    open_fds: dict[int, tuple[str, int, int]] = field(default_factory=dict)  # fd -> (path, pos, flags)
    spool: Spool = field(default_factory=Spool)
    keep_calls: bool = False  # keep a CallRecord per call (fault planning with strace's injector)
    volatile: tuple[
        str, ...
    ] = ()  # name patterns of rebuildable indexes (mapped writable without a verdict loss)
    ops: list[Op] = field(default_factory=list)
    points: list[FaultPoint] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)
    injected: list[CallRecord] = field(default_factory=list)
    exits: dict[int, int] = field(default_factory=dict)  # tid -> number of ops emitted when it exited
    first_tid: int | None = None
    blind: list[str] = field(default_factory=list)
    outside: set[str] = field(default_factory=set)
    ncalls: int = 0
    _procs: dict[int, _Proc] = field(default_factory=dict)
    _handles: int = 0
    _first_tids: set[int] = field(default_factory=set)
    _size: dict[str, int] = field(default_factory=dict)
    _spawned: dict[int, tuple[int, str]] = field(default_factory=dict)
    _dirs: set[str] = field(default_factory=set)  # directories the save made (and where they moved)

    def __post_init__(self) -> None:
        self.root = os.path.abspath(self.root)
        # strace's -y decorations are paths with every symlink resolved; path arguments are not.
        # Everything is kept resolved internally and shown under ``root`` as the caller spelled it.
        self._real = os.path.realpath(self.root)
        self._size = {
            self._canon(os.path.join(self.root, p) if not os.path.isabs(p) else p): n
            for p, n in self.sizes.items()
        }

    def _canon(self, path: str) -> str:
        """``path`` with the symlinks of its directory resolved (its last component kept as is)."""
        head, tail = os.path.split(os.path.normpath(path))
        return os.path.join(os.path.realpath(head), tail) if tail else os.path.realpath(head)

    def _shown(self, path: str) -> str:
        if path == self._real or path.startswith(self._real + os.sep):
            return self.root + path[len(self._real) :]
        return path

    # -- bookkeeping ------------------------------------------------------------------
    def _proc(self, tid: int) -> _Proc:
        proc = self._procs.get(tid)
        if proc is None and tid in self._spawned:
            parent_tid, flags = self._spawned[tid]
            parent = self._proc(parent_tid)
            proc = _Proc(
                parent.fds if "CLONE_FILES" in flags else dict(parent.fds),
                parent.cwd if "CLONE_FS" in flags else [parent.cwd[0]],
            )
            self._procs[tid] = proc
        if proc is None:
            # A thread we first meet: it existed at attach time, and shares the first
            # process's descriptor table (threads of the traced process).
            first = next(iter(self._procs.values()), None)
            proc = first if first is not None else _Proc({}, [self.cwd])
            self._procs[tid] = proc
            self._first_tids.add(tid)
        return proc

    def _first_proc(self) -> _Proc | None:
        return next(iter(self._procs.values()), None)

    def inside(self, path: str) -> bool:
        return any(path == r or path.startswith(r + os.sep) for r in (self.root, self._real))

    def _resolve(self, proc: _Proc, dirfd_arg: str | None, path: str) -> str:
        if os.path.isabs(path):
            return self._canon(path)
        base = proc.cwd[0]
        if dirfd_arg is not None:
            fd, decorated = _fd_arg(dirfd_arg)
            if decorated is not None:
                base = decorated
            elif fd != -100 and fd in proc.fds:
                base = proc.fds[fd].path
        return self._canon(os.path.join(base, path))

    def _emit(self, call: Call, kind: OpKind, path: str, **kw: object) -> None:
        dst = kw.get("dst")
        if not _regular(path) and not (isinstance(dst, str) and _regular(dst)):
            return
        if path.endswith(" (deleted)"):
            return  # an anonymous or already-unlinked file: nothing anyone can load
        path = self._shown(path)
        if isinstance(dst, str) and kind != OpKind.SYMLINK:
            kw["dst"] = self._shown(dst)
        if kind not in (OpKind.CLOSE, OpKind.FSYNC, OpKind.FSYNC_FAILED, OpKind.FSYNC_DIR, OpKind.SYNC_ALL):
            for p in (path, kw.get("dst")):
                if kind == OpKind.SYMLINK and p is not path:
                    continue
                if (
                    isinstance(p, str)
                    and p.startswith("/")
                    and not self.inside(p)
                    and not p.startswith(_ANONYMOUS)
                ):
                    self.outside.add(p)
        op = Op(len(self.ops), kind, path, thread=str(call.tid), syscall=call.name, **kw)  # type: ignore[arg-type]
        self.ops.append(op)
        self.points.append(
            FaultPoint(op.index, call.name, call.ordinal, call.tid, call.tid in self._first_tids)
        )

    def _file(self, call: Call, proc: _Proc, fd_arg: str) -> _File | None:
        fd, path = _fd_arg(fd_arg)
        f = proc.fds.get(fd)
        if f is not None and path is not None and f.path != path and not path.endswith(" (deleted)"):
            f.path = path  # renamed since it was opened
        if f is None and path is not None:
            if not _regular(path):
                return None  # a pipe, socket, eventfd, terminal: not state
            # Opened before tracing started (a journal kept open, say): adopt it, with the
            # position and flags /proc showed when tracing began. Without those, only
            # pwrite/append writes to it can be placed; others are reported.
            self._handles += 1
            known = self.open_fds.get(fd) if proc is self._first_proc() else None
            if known is not None and known[0] == path:
                flags = known[2]
                f = _File(
                    self._handles, path, append=bool(flags & os.O_APPEND), writable=flags & os.O_ACCMODE != 0,
                    directory=os.path.isdir(path), pos=known[1], sync=bool(flags & (os.O_SYNC | os.O_DSYNC)),
                )  # fmt: skip
            else:
                f = _File(
                    self._handles, path, append=False, writable=True, directory=os.path.isdir(path), pos=-1
                )
            proc.fds[fd] = f
        return f

    def _announce(self, call: Call, f: _File) -> None:
        if not f.announced and not f.directory:
            f.announced = True
            self._emit(call, OpKind.OPEN_EXISTING, f.path, handle=f.handle)

    def _write(self, call: Call, f: _File, data: bytes, cut: bool, offset: int | None, rwf: str = "") -> None:
        n = call.ret or 0
        if n <= 0 or f.directory:
            return
        if (f.append and "RWF_NOAPPEND" not in rwf) or "RWF_APPEND" in rwf:
            # On Linux pwrite/pwritev ignore the offset of an O_APPEND descriptor (pwrite(2), BUGS)
            offset = self._size.get(f.path, 0)
        elif offset is None:
            if f.append:
                offset = self._size.get(f.path, 0)
            elif f.pos < 0:
                if self.inside(f.path):
                    self.blind.append(
                        f"{self._shown(f.path)}: written through a descriptor opened before tracing started, "
                        "at an unknown position"
                    )
                else:
                    self.outside.add(self._shown(f.path))
                return
            else:
                offset = f.pos
            f.pos = offset + n
        self._announce(call, f)
        self._size[f.path] = max(self._size.get(f.path, 0), offset + n)
        if cut or len(data) < n:
            # strace printed only the first bytes: the rest is resolved against the final file
            self._emit(call, OpKind.WRITE, f.path, handle=f.handle, offset=offset, length=n, prefix=data[:n])
        else:
            ref = self.spool.append(memoryview(data)[:n])
            self._emit(call, OpKind.WRITE, f.path, handle=f.handle, offset=offset, length=n, ref=ref)
        if f.sync or "RWF_SYNC" in rwf or "RWF_DSYNC" in rwf:
            self._emit(call, OpKind.FSYNC, f.path, handle=f.handle, offset=offset, length=n)

    # -- the calls --------------------------------------------------------------------
    def learn_spawns(self, lines: Iterable[str]) -> SyscallLog:
        """With -f, a child's first calls can be printed before its parent's clone() returns:
        learn every parent/child pair first (a cheap pass over the trace's clone/fork lines), so
        each child starts from the right descriptor table."""
        spawning = (line for line in lines if "clone" in line or "fork" in line)
        for call in parse(spawning):
            if call.name in ("clone", "clone3", "fork", "vfork") and call.ret and call.ret > 0:
                flags = next((a for a in call.args if "CLONE_" in a), "")
                self._spawned[call.ret] = (call.tid, flags)
        return self

    def note_exit(self, tid: int) -> None:
        self.exits.setdefault(tid, len(self.ops))

    def late_ops(self) -> list[Op]:
        """Operations made after the first traced process exited (by processes it left running)."""
        if self.first_tid is None or self.first_tid not in self.exits:
            return []
        return self.ops[self.exits[self.first_tid] :]

    def feed(self, calls: Iterable[Call]) -> SyscallLog:
        for call in calls:
            self.ncalls += 1
            if self.first_tid is None:
                self.first_tid = call.tid
            spawned = call.name in ("clone", "clone3", "fork", "vfork") and call.ret and call.ret > 0
            if spawned and call.ret not in self._spawned:
                flags = next((a for a in call.args if "CLONE_" in a), "")
                self._spawned[call.ret or 0] = (call.tid, flags)
            if self.keep_calls:
                self.calls.append(
                    CallRecord(
                        call.tid, call.name, call.ordinal, call.error, call.injected, _target_of(call, self)
                    )
                )
            if call.injected:
                self.injected.append(
                    CallRecord(
                        call.tid, call.name, call.ordinal, call.error, call.injected, _target_of(call, self)
                    )
                )
            if call.ret is None:
                if call.name in ("fsync", "fdatasync") and call.error not in ("EBADF", "EINVAL", "EROFS"):
                    # a failed fsync changes nothing on disk, but since Linux 4.13 it may have dropped
                    # the file's dirty pages (fsyncgate): the model needs to know where it happened
                    f = self._file(call, self._proc(call.tid), call.args[0])
                    if f is not None and not f.directory:
                        self._announce(call, f)
                        self._emit(call, OpKind.FSYNC_FAILED, f.path, handle=f.handle)
                    elif f is not None:
                        self._emit(call, OpKind.FSYNC_FAILED, f.path)
                continue  # failed (or injected): it changed nothing
            handler = getattr(self, f"_on_{call.name}", None)
            if handler is not None:
                handler(call, self._proc(call.tid))
        return self

    def _open(
        self, call: Call, proc: _Proc, dirfd: str | None, path_arg: str, flags: str, mode: str = ""
    ) -> None:
        if call.ret is None or call.ret < 0:
            return
        path = call.ret_path or self._resolve(proc, dirfd, _decode_path(path_arg))
        writable = "O_WRONLY" in flags or "O_RDWR" in flags
        # A directory the save made may be gone (renamed, removed) by the time the trace is read.
        directory = "O_DIRECTORY" in flags or (not writable and (path in self._dirs or os.path.isdir(path)))
        self._handles += 1
        f = _File(self._handles, path, "O_APPEND" in flags, writable, directory)
        f.sync = "O_SYNC" in flags or "O_DSYNC" in flags
        proc.fds[call.ret] = f
        if "O_TMPFILE" in flags:
            if not writable:
                f.path += " (deleted)"
                return
            # An anonymous file: followed under a name that exists nowhere (outside the root, so
            # only what linkat() later publishes under the root is replayed).
            f.path = path = f"{_ANONYMOUS}/{f.handle}"
            f.announced = True
            self._emit(call, OpKind.CREATE, path, handle=f.handle, truncate=True)
            return
        if directory:
            return
        if writable and ("O_CREAT" in flags or "O_TRUNC" in flags):
            f.announced = True
            truncate = "O_TRUNC" in flags
            if truncate:
                self._size[path] = 0
            perm = _mode(mode) if mode else None
            created_mode = perm & ~_UMASK if perm is not None else None
            self._emit(call, OpKind.CREATE, path, handle=f.handle, truncate=truncate, mode=created_mode)
        elif writable:
            self._announce(call, f)

    def _on_open(self, call: Call, proc: _Proc) -> None:
        a = call.args
        self._open(call, proc, None, a[0], a[1] if len(a) > 1 else "", a[2] if len(a) > 2 else "")

    def _on_creat(self, call: Call, proc: _Proc) -> None:
        self._open(
            call,
            proc,
            None,
            call.args[0],
            "O_WRONLY|O_CREAT|O_TRUNC",
            call.args[1] if len(call.args) > 1 else "",
        )

    def _on_openat(self, call: Call, proc: _Proc) -> None:
        a = call.args
        self._open(call, proc, a[0], a[1], a[2] if len(a) > 2 else "", a[3] if len(a) > 3 else "")

    def _on_openat2(self, call: Call, proc: _Proc) -> None:
        a = call.args
        how = a[2] if len(a) > 2 else ""
        mode = re.search(r"mode=(0[0-7]*|\d+)", how)
        self._open(call, proc, a[0], a[1], how, mode.group(1) if mode else "")

    def _on_write(self, call: Call, proc: _Proc) -> None:
        f = self._file(call, proc, call.args[0])
        if f is not None:
            data, cut = _string(call.args[1])
            self._write(call, f, data, cut, None)

    def _on_pwrite64(self, call: Call, proc: _Proc) -> None:
        f = self._file(call, proc, call.args[0])
        if f is not None:
            data, cut = _string(call.args[1])
            self._write(call, f, data, cut, _int(call.args[3]))

    def _iov(self, arg: str) -> tuple[bytes, bool]:
        parts = _IOV_BASE.findall(arg)
        chunks = []
        cut = False
        for p in parts:
            d, c = _string(p)
            chunks.append(d)
            cut = cut or c
        return b"".join(chunks), cut or arg.rstrip("]").endswith("...")

    def _on_writev(self, call: Call, proc: _Proc) -> None:
        f = self._file(call, proc, call.args[0])
        if f is not None:
            data, cut = self._iov(call.args[1])
            self._write(call, f, data, cut, None)

    def _on_pwritev(self, call: Call, proc: _Proc) -> None:
        f = self._file(call, proc, call.args[0])
        if f is not None:
            data, cut = self._iov(call.args[1])
            offset = _int(call.args[3])
            rwf = call.args[4] if len(call.args) > 4 else ""
            self._write(call, f, data, cut, None if offset == -1 else offset, rwf)

    _on_pwritev2 = _on_pwritev

    def _advance(self, call: Call, proc: _Proc) -> None:
        fd, _ = _fd_arg(call.args[0])
        f = proc.fds.get(fd)
        if f is not None and f.pos >= 0 and call.ret:
            f.pos += call.ret

    _on_read = _advance
    _on_readv = _advance

    def _on_lseek(self, call: Call, proc: _Proc) -> None:
        f = self._file(call, proc, call.args[0])
        if f is not None and call.ret is not None:
            f.pos = call.ret

    def _on_ftruncate(self, call: Call, proc: _Proc) -> None:
        f = self._file(call, proc, call.args[0])
        if f is not None and not f.directory:
            self._announce(call, f)
            size = _int(call.args[1])
            self._size[f.path] = size
            self._emit(call, OpKind.TRUNCATE, f.path, handle=f.handle, size=size)

    def _on_truncate(self, call: Call, proc: _Proc) -> None:
        path = self._resolve(proc, None, _decode_path(call.args[0]))
        self._handles += 1
        size = _int(call.args[1])
        self._size[path] = size
        self._emit(call, OpKind.OPEN_EXISTING, path, handle=self._handles)
        self._emit(call, OpKind.TRUNCATE, path, handle=self._handles, size=size)

    def _on_fallocate(self, call: Call, proc: _Proc) -> None:
        f = self._file(call, proc, call.args[0])
        if f is None or f.directory:
            return
        mode = call.args[1]
        end = _int(call.args[2]) + _int(call.args[3])
        if "PUNCH_HOLE" in mode or "ZERO_RANGE" in mode or "COLLAPSE" in mode or "INSERT" in mode:
            if self.inside(f.path):
                self.blind.append(
                    f"{self._shown(f.path)}: fallocate({mode}) changes data in a way the crash model does not replay"
                )
            return
        if "KEEP_SIZE" in mode or end <= self._size.get(f.path, 0):
            return
        self._announce(call, f)
        self._size[f.path] = end
        self._emit(call, OpKind.TRUNCATE, f.path, handle=f.handle, size=end)

    def _on_fsync(self, call: Call, proc: _Proc) -> None:
        f = self._file(call, proc, call.args[0])
        if f is None:
            return
        if f.directory:
            # -y shows where the directory is now (renamed, or "(deleted)"): the model looks that
            # path up at this point of the log, so the fsync covers the directory the descriptor
            # was opened on, not whatever sits at its old path
            self._emit(call, OpKind.FSYNC_DIR, f.path)
        else:
            self._announce(call, f)
            self._emit(call, OpKind.FSYNC, f.path, handle=f.handle)

    _on_fdatasync = _on_fsync

    def _on_sync(self, call: Call, proc: _Proc) -> None:
        self._emit(call, OpKind.SYNC_ALL, self.root)

    def _on_syncfs(self, call: Call, proc: _Proc) -> None:
        # syncfs(fd) syncs only the file system holding fd (syncfs(2)): another one's says nothing
        fd, path = _fd_arg(call.args[0])
        f = proc.fds.get(fd)
        where = path or (f.path if f is not None else None)
        try:
            same = where is not None and os.stat(where).st_dev == os.stat(self.root).st_dev
        except OSError:
            same = False
        if same:
            self._emit(call, OpKind.SYNC_ALL, self.root)

    def _on_close(self, call: Call, proc: _Proc) -> None:
        fd, _ = _fd_arg(call.args[0])
        f = proc.fds.pop(fd, None)
        if f is not None and f.writable and f.announced and not f.directory:
            self._emit(call, OpKind.CLOSE, f.path, handle=f.handle)

    def _on_close_range(self, call: Call, proc: _Proc) -> None:
        lo, hi = _int(call.args[0]), _int(call.args[1])
        if "CLOSE_RANGE_CLOEXEC" in (call.args[2] if len(call.args) > 2 else ""):
            return
        for fd in [fd for fd in proc.fds if lo <= fd <= hi]:
            del proc.fds[fd]

    def _dup_to(self, proc: _Proc, old: str, new: int | None) -> None:
        fd, _ = _fd_arg(old)
        f = proc.fds.get(fd)
        if f is not None and new is not None and new >= 0:
            proc.fds[new] = f

    def _on_dup(self, call: Call, proc: _Proc) -> None:
        self._dup_to(proc, call.args[0], call.ret)

    _on_dup2 = _on_dup
    _on_dup3 = _on_dup

    def _on_fcntl(self, call: Call, proc: _Proc) -> None:
        if len(call.args) > 1 and call.args[1].startswith("F_DUPFD"):
            self._dup_to(proc, call.args[0], call.ret)
        elif len(call.args) > 2 and call.args[1] == "F_SETFL":
            f = proc.fds.get(_fd_arg(call.args[0])[0])
            if f is not None:
                f.append = "O_APPEND" in call.args[2]  # F_SETFL can switch O_APPEND (fcntl(2))

    def _rename(self, call: Call, proc: _Proc, src: str, dst: str, flags: str = "") -> None:
        if "RENAME_EXCHANGE" in flags:
            if self.inside(src) or self.inside(dst):
                self.blind.append(
                    f"{self._shown(src)} <-> {self._shown(dst)}: renameat2(RENAME_EXCHANGE) is not modelled"
                )
            return
        for other in self._procs.values():
            for f in other.fds.values():
                if f.path == src or f.path.startswith(src + os.sep):
                    f.path = dst + f.path[len(src) :]
        if src in self._size:
            self._size[dst] = self._size.pop(src)
        else:
            self._size.pop(dst, None)
        for d in [d for d in self._dirs if d == src or d.startswith(src + os.sep)]:
            self._dirs.discard(d)
            self._dirs.add(dst + d[len(src) :])
        self._emit(call, OpKind.REPLACE, src, dst=dst)

    def _on_rename(self, call: Call, proc: _Proc) -> None:
        self._rename(
            call, proc, self._resolve(proc, None, _decode_path(call.args[0])),
            self._resolve(proc, None, _decode_path(call.args[1])),
        )  # fmt: skip

    def _on_renameat(self, call: Call, proc: _Proc) -> None:
        src = self._resolve(proc, call.args[0], _decode_path(call.args[1]))
        dst = self._resolve(proc, call.args[2], _decode_path(call.args[3]))
        self._rename(call, proc, src, dst, call.args[4] if len(call.args) > 4 else "")

    _on_renameat2 = _on_renameat

    def _on_link(self, call: Call, proc: _Proc) -> None:
        src = self._resolve(proc, None, _decode_path(call.args[0]))
        dst = self._resolve(proc, None, _decode_path(call.args[1]))
        self._link(call, src, dst)

    def _on_linkat(self, call: Call, proc: _Proc) -> None:
        flags = call.args[4] if len(call.args) > 4 else ""
        magic = re.match(r"^/proc/(self|thread-self|\d+)/fd/(\d+)$", _decode_path(call.args[1]))
        owner = (
            proc if magic is None or not magic.group(1).isdigit() else self._procs.get(int(magic.group(1)))
        )
        if "AT_EMPTY_PATH" in flags:
            fd, path = _fd_arg(call.args[0])
            f = proc.fds.get(fd)
            src = f.path if f is not None else (path or "")
        elif (
            magic is not None
            and "AT_SYMLINK_FOLLOW" in flags
            and owner is not None
            and int(magic.group(2)) in owner.fds
        ):
            # linkat(AT_FDCWD, "/proc/self/fd/N", ..., AT_SYMLINK_FOLLOW): open(2)'s way to publish O_TMPFILE
            src = owner.fds[int(magic.group(2))].path
        else:
            src = self._resolve(proc, call.args[0], _decode_path(call.args[1]))
        self._link(call, src, self._resolve(proc, call.args[2], _decode_path(call.args[3])))

    def _link(self, call: Call, src: str, dst: str) -> None:
        if src.endswith(" (deleted)"):
            if self.inside(dst):
                self.blind.append(
                    f"{self._shown(dst)}: linked from an anonymous file opened read-only, which is not modelled"
                )
            return
        if src in self._size:
            self._size[dst] = self._size[src]
        self._emit(call, OpKind.LINK, src, dst=dst)

    def _on_unlink(self, call: Call, proc: _Proc) -> None:
        path = self._resolve(proc, None, _decode_path(call.args[0]))
        self._size.pop(path, None)  # a file made again under this name starts empty
        self._emit(call, OpKind.UNLINK, path)

    def _on_unlinkat(self, call: Call, proc: _Proc) -> None:
        path = self._resolve(proc, call.args[0], _decode_path(call.args[1]))
        kind = (
            OpKind.RMDIR if "AT_REMOVEDIR" in (call.args[2] if len(call.args) > 2 else "") else OpKind.UNLINK
        )
        self._size.pop(path, None)
        self._dirs.discard(path)
        self._emit(call, kind, path)

    def _on_rmdir(self, call: Call, proc: _Proc) -> None:
        path = self._resolve(proc, None, _decode_path(call.args[0]))
        self._dirs.discard(path)
        self._emit(call, OpKind.RMDIR, path)

    def _mkdir(self, call: Call, path: str, mode: str) -> None:
        self._dirs.add(path)
        perm = _mode(mode) if mode else None
        self._emit(call, OpKind.MKDIR, path, mode=perm & ~_UMASK if perm is not None else None)

    def _on_mkdir(self, call: Call, proc: _Proc) -> None:
        self._mkdir(
            call,
            self._resolve(proc, None, _decode_path(call.args[0])),
            call.args[1] if len(call.args) > 1 else "",
        )

    def _on_mkdirat(self, call: Call, proc: _Proc) -> None:
        path = self._resolve(proc, call.args[0], _decode_path(call.args[1]))
        self._mkdir(call, path, call.args[2] if len(call.args) > 2 else "")

    def _on_symlink(self, call: Call, proc: _Proc) -> None:
        target = _decode_path(call.args[0])
        self._emit(call, OpKind.SYMLINK, self._resolve(proc, None, _decode_path(call.args[1])), dst=target)

    def _on_symlinkat(self, call: Call, proc: _Proc) -> None:
        target = _decode_path(call.args[0])
        self._emit(
            call, OpKind.SYMLINK, self._resolve(proc, call.args[1], _decode_path(call.args[2])), dst=target
        )

    def _mknod(self, call: Call, path: str, mode: str) -> None:
        if "S_IFIFO" in mode:
            perm = _mode(mode)
            self._emit(call, OpKind.MKFIFO, path, mode=(perm & ~_UMASK) if perm is not None else 0o644)
        elif "S_IFREG" in mode or mode.strip().startswith("0"):
            self._handles += 1
            self._emit(call, OpKind.CREATE, path, handle=self._handles, truncate=False)
        elif self.inside(path):
            self.blind.append(
                f"{self._shown(path)}: mknod({mode}) makes a special file, which is not modelled"
            )

    def _on_mknod(self, call: Call, proc: _Proc) -> None:
        self._mknod(
            call,
            self._resolve(proc, None, _decode_path(call.args[0])),
            call.args[1] if len(call.args) > 1 else "",
        )

    def _on_mknodat(self, call: Call, proc: _Proc) -> None:
        self._mknod(
            call,
            self._resolve(proc, call.args[0], _decode_path(call.args[1])),
            call.args[2] if len(call.args) > 2 else "",
        )

    def _chmod(self, call: Call, path: str, mode: str, handle: int | None = None) -> None:
        self._emit(call, OpKind.CHMOD, path, handle=handle, mode=_mode(mode) or 0)

    def _on_chmod(self, call: Call, proc: _Proc) -> None:
        self._chmod(call, self._resolve(proc, None, _decode_path(call.args[0])), call.args[1])

    def _on_fchmodat(self, call: Call, proc: _Proc) -> None:
        self._chmod(call, self._resolve(proc, call.args[0], _decode_path(call.args[1])), call.args[2])

    def _on_fchmod(self, call: Call, proc: _Proc) -> None:
        f = self._file(call, proc, call.args[0])
        if f is not None:
            if not f.directory:
                self._announce(call, f)
            self._chmod(call, f.path, call.args[1], None if f.directory else f.handle)

    def _copy(self, call: Call, proc: _Proc, src_arg: str, src_off: str, dst_arg: str, dst_off: str) -> None:
        n = call.ret or 0
        src = self._file(call, proc, src_arg)
        dst = self._file(call, proc, dst_arg)
        if n <= 0 or src is None or dst is None:
            return
        start = _int(src_off) if src_off != "NULL" else src.pos
        if src_off == "NULL" and src.pos >= 0:
            src.pos += n
        data = self._content(src.path, start, n)
        if data is None:
            if self.inside(dst.path):
                self.blind.append(
                    f"{self._shown(dst.path)}: {call.name} from {self._shown(src.path)}, whose bytes could not be read back"
                )
            return
        wrote = any(op.kind == OpKind.WRITE and op.path == self._shown(src.path) for op in self.ops[-256:])
        if wrote and self.inside(dst.path):
            self.blind.append(
                f"{self._shown(dst.path)}: {call.name} copies from {self._shown(src.path)}, which this save also "
                "wrote; the copied bytes are taken from the file as it is after the save"
            )
        self._write(call, dst, data, False, None if dst_off == "NULL" else _int(dst_off))

    @staticmethod
    def _content(path: str, start: int, n: int) -> bytes | None:
        # strace does not print what copy_file_range/sendfile move, so read the source
        # after the save (the usual source, a finished file being copied, is unchanged).
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            data = os.pread(fd, n, max(start, 0))
        finally:
            os.close(fd)
        return data if len(data) == n else None

    def _on_copy_file_range(self, call: Call, proc: _Proc) -> None:
        self._copy(call, proc, call.args[0], call.args[1], call.args[2], call.args[3])

    def _on_sendfile(self, call: Call, proc: _Proc) -> None:
        off = call.args[2].split(" => ")[0]
        self._copy(call, proc, call.args[1], off, call.args[0], "NULL")

    def _on_splice(self, call: Call, proc: _Proc) -> None:
        _, path = _fd_arg(call.args[2])
        if path is not None and self.inside(path):
            self.blind.append(
                f"{self._shown(path)}: written by splice() from a pipe, whose bytes strace does not show"
            )

    def _on_mmap(self, call: Call, proc: _Proc) -> None:
        if len(call.args) < 5 or "MAP_SHARED" not in call.args[3] or "PROT_WRITE" not in call.args[2]:
            return
        _, path = _fd_arg(call.args[4])
        name = os.path.basename(path or "")
        if (
            path is not None
            and self.inside(path)
            and not any(fnmatch.fnmatch(name, p) for p in self.volatile)
        ):
            self.blind.append(
                f"{self._shown(path)}: mapped shared and writable (mmap); stores through a mapping reach the file "
                "without any system call, so no tracer can see or order them"
            )

    def _on_io_uring_setup(self, call: Call, proc: _Proc) -> None:
        self.blind.append(
            "io_uring: the save set up an io_uring; its submissions bypass system calls and cannot be traced"
        )

    def _on_chdir(self, call: Call, proc: _Proc) -> None:
        proc.cwd[0] = self._resolve(proc, None, _decode_path(call.args[0]))

    def _on_fchdir(self, call: Call, proc: _Proc) -> None:
        _, path = _fd_arg(call.args[0])
        if path is not None:
            proc.cwd[0] = path


def _read_umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


_UMASK = _read_umask()


def _target_of(call: Call, log: SyscallLog) -> str | None:
    """The file a call acts on, from its arguments (None: not known)."""
    a = call.args
    if not a:
        return None
    if a[0].startswith('"'):
        return os.path.abspath(_decode_path(a[0]))
    fd, path = _fd_arg(a[0])
    if len(a) > 1 and a[1].startswith('"') and (fd == -100 or call.name.endswith(("at", "at2"))):
        p = _decode_path(a[1])
        return p if os.path.isabs(p) else os.path.join(path or log.cwd, p)
    return path
