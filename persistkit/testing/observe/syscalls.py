"""Turn strace output into the operation log that ``persistkit.testing.fs.crashsim`` replays.

``parse`` reads strace's text (``-f -xx -y``: every string hex-escaped, every
descriptor decorated with its path) into ``Call`` records. ``SyscallLog`` then
follows processes, threads, descriptors, file positions and working
directories, and emits one ``persistkit.testing.fs.recordfs.Op`` per file-system
change, in the order the kernel saw them:

==========================================  ===========================================
system call                                 operation
==========================================  ===========================================
open/openat/openat2/creat for writing       ``create`` (with ``truncate``) / ``open_existing``
write, pwrite64, writev, pwritev(2)         ``write`` at the offset the kernel used
copy_file_range, sendfile                   ``write`` of the bytes moved (read from the source)
ftruncate, truncate, fallocate              ``truncate`` (fallocate: extension with zeros)
fsync, fdatasync                            ``fsync`` (of a directory: ``fsync_dir``)
sync, syncfs                                ``sync_all``
rename*, link*, unlink*, mkdir*, rmdir,     ``replace``, ``link``, ``unlink``/``rmdir``,
symlink*, close                             ``mkdir``, ``symlink``, ``close``
==========================================  ===========================================

What no tracer can replay is reported, never guessed: a shared writable
``mmap`` of a file under the root (its stores reach the page cache without a
system call), ``io_uring`` (submissions bypass system calls), ``RENAME_EXCHANGE``
and writes whose data strace cut short. Each becomes an entry of ``blind``.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field

from persistkit.testing.fs.recordfs import Op

__all__ = ["Call", "FaultPoint", "SyscallLog", "parse"]

# Where anonymous (O_TMPFILE) files are followed: a name no file system has.
_ANONYMOUS = "/.persistkit-anonymous-file"

_LINE = re.compile(r"^(\d+) +(.*)$")
_CALL = re.compile(r"^([a-z0-9_]+)\((.*)\) += (.*)$", re.S)
_HEX = re.compile(r"\\x([0-9a-f]{2})")
_ARG_TOKEN = re.compile(r'"[^"]*"?|[\[{(<\]})>,]')
_IOV_BASE = re.compile(r'iov_base=("[^"]*"(?:\.\.\.)?)')


@dataclass
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
    if not rest and body[0::4] == "\\" * n and body[1::4] == "x" * n and body == body.lower():
        # the usual case, all of a -xx string (a 1 MiB write is 4 MiB of text): decode in C
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


def _parse_ret(text: str) -> tuple[int | None, str | None, str | None, bool]:
    injected = "(INJECTED)" in text
    text = text.strip()
    if text.startswith("?"):
        return None, None, "unfinished", injected
    m = re.match(r"^(-?\d+|0x[0-9a-f]+)(?:<([^>]*)>)?", text)
    if m is None:
        return None, None, "unparsed", injected
    value = int(m.group(1), 0)
    if value == -1 and " E" in text:
        name = text.split()[1]
        return None, None, name, injected
    path = _unhex(m.group(2)).decode("utf-8", "surrogateescape") if m.group(2) is not None else None
    return value, path, None, injected


def parse(text: str) -> list[Call]:
    """Parse ``strace -f -xx -y`` output into completed calls, joining unfinished/resumed pairs."""
    pending: dict[int, str] = {}
    ordinals: Counter[tuple[int, str]] = Counter()
    calls: list[Call] = []
    for raw in text.splitlines():
        m = _LINE.match(raw)
        if m is None:
            continue
        tid, body = int(m.group(1)), m.group(2)
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
        # ``args`` may have swallowed a ") = " inside nothing: strings are hex, so the last match is it
        value, path, error, injected = _parse_ret(ret)
        ordinals[(tid, name)] += 1
        calls.append(
            Call(
                len(calls), tid, name, _split_args(args), value, path, error, injected, ordinals[(tid, name)]
            )
        )
    return calls


def _string(arg: str) -> tuple[bytes, bool]:
    """Decode a hex-escaped strace string; the flag says whether strace cut it short."""
    cut = arg.endswith("...")
    body = arg[:-3] if cut else arg
    return _unhex(body), cut


def _path_arg(arg: str) -> str:
    return _string(arg)[0].decode("utf-8", "surrogateescape")


def _fd_arg(arg: str) -> tuple[int, str | None]:
    """``4</tmp/x>`` -> (4, "/tmp/x"); ``AT_FDCWD</cwd>`` -> (-100, "/cwd")."""
    m = re.match(r"^(AT_FDCWD|-?\d+|0x[0-9a-f]+)(?:<([^>]*)>)?", arg)
    if m is None:
        return -1, None
    fd = -100 if m.group(1) == "AT_FDCWD" else int(m.group(1), 0)
    path = _unhex(m.group(2)).decode("utf-8", "surrogateescape") if m.group(2) is not None else None
    if path is not None and arg[m.end() :].startswith("(deleted)"):
        path += " (deleted)"
    return fd, path


def _int(arg: str) -> int:
    m = re.match(r"^\[?(-?\d+|0x[0-9a-f]+)", arg)
    return int(m.group(1), 0) if m else 0


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
    ops: list[Op] = field(default_factory=list)
    points: list[FaultPoint] = field(default_factory=list)
    blind: list[str] = field(default_factory=list)
    outside: set[str] = field(default_factory=set)
    calls: int = 0
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

    def _interesting(self, path: str) -> bool:
        """A path whose changes matter: a regular location, not a pipe, socket or /proc."""
        return path.startswith("/") and not path.startswith(("/proc/", "/dev/", "/sys/"))

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

    def _emit(self, call: Call, kind: str, path: str, **kw: object) -> None:
        if not self._interesting(path) and not (kw.get("dst") and self._interesting(str(kw["dst"]))):
            return
        if path.endswith(" (deleted)"):
            return  # an anonymous or already-unlinked file: nothing anyone can load
        path = self._shown(path)
        if isinstance(kw.get("dst"), str) and kind != "symlink":
            kw["dst"] = self._shown(str(kw["dst"]))
        for p in (path, kw.get("dst")):
            changed = kind not in ("close", "fsync") and (kind != "symlink" or p == path)
            if changed and isinstance(p, str) and p.startswith("/") and not self.inside(p):
                self.outside.add(p)
        op = Op(len(self.ops), kind, path, thread=str(call.tid), **kw)  # type: ignore[arg-type]
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
            self._emit(call, "open_existing", f.path, handle=f.handle)

    def _write(self, call: Call, f: _File, data: bytes, cut: bool, offset: int | None, rwf: str = "") -> None:
        n = call.ret or 0
        if n <= 0:
            return
        if cut and len(data) < n:
            self.blind.append(f"{f.path}: a {n}-byte write is longer than strace's string limit")
        if (f.append and "RWF_NOAPPEND" not in rwf) or "RWF_APPEND" in rwf:
            # On Linux pwrite/pwritev ignore the offset of an O_APPEND descriptor (pwrite(2), BUGS)
            offset = self._size.get(f.path, 0)
        elif offset is None:
            if f.append:
                offset = self._size.get(f.path, 0)
            elif f.pos < 0:
                self.blind.append(
                    f"{f.path}: written through a descriptor opened before tracing started, at an unknown position"
                )
                return
            else:
                offset = f.pos
            f.pos = offset + n
        self._announce(call, f)
        self._size[f.path] = max(self._size.get(f.path, 0), offset + n)
        self._emit(call, "write", f.path, handle=f.handle, offset=offset, data=data[:n])
        if f.sync or "RWF_SYNC" in rwf or "RWF_DSYNC" in rwf:
            self._emit(call, "fsync", f.path, handle=f.handle)

    # -- the calls --------------------------------------------------------------------
    def feed(self, calls: list[Call]) -> SyscallLog:
        # With -f, a child's first calls can be printed before its parent's clone() returns:
        # learn every parent/child pair first, so each child starts from the right table.
        for call in calls:
            if call.name in ("clone", "clone3", "fork", "vfork") and call.ret and call.ret > 0:
                flags = next((a for a in call.args if "CLONE_" in a), "")
                self._spawned[call.ret] = (call.tid, flags)
        for call in calls:
            self.calls += 1
            if call.ret is None:
                continue  # failed (or injected): it changed nothing
            handler = getattr(self, f"_on_{call.name}", None)
            if handler is not None:
                handler(call, self._proc(call.tid))
        return self

    def _open(self, call: Call, proc: _Proc, dirfd: str | None, path_arg: str, flags: str) -> None:
        if call.ret is None or call.ret < 0:
            return
        path = call.ret_path or self._resolve(proc, dirfd, _path_arg(path_arg))
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
            self._emit(call, "create", path, handle=f.handle, truncate=True)
            return
        if writable and ("O_CREAT" in flags or "O_TRUNC" in flags):
            f.announced = True
            truncate = "O_TRUNC" in flags
            if truncate:
                self._size[path] = 0
            self._emit(call, "create", path, handle=f.handle, truncate=truncate)
        elif writable:
            self._announce(call, f)

    def _on_open(self, call: Call, proc: _Proc) -> None:
        self._open(call, proc, None, call.args[0], call.args[1] if len(call.args) > 1 else "")

    def _on_creat(self, call: Call, proc: _Proc) -> None:
        self._open(call, proc, None, call.args[0], "O_WRONLY|O_CREAT|O_TRUNC")

    def _on_openat(self, call: Call, proc: _Proc) -> None:
        self._open(call, proc, call.args[0], call.args[1], call.args[2] if len(call.args) > 2 else "")

    def _on_openat2(self, call: Call, proc: _Proc) -> None:
        self._open(call, proc, call.args[0], call.args[1], call.args[2] if len(call.args) > 2 else "")

    def _on_write(self, call: Call, proc: _Proc) -> None:
        f = self._file(call, proc, call.args[0])
        if f is not None and not f.directory:
            data, cut = _string(call.args[1])
            self._write(call, f, data, cut, None)

    def _on_pwrite64(self, call: Call, proc: _Proc) -> None:
        f = self._file(call, proc, call.args[0])
        if f is not None:
            data, cut = _string(call.args[1])
            self._write(call, f, data, cut, _int(call.args[3]))

    def _iov(self, arg: str) -> tuple[bytes, bool]:
        # strings are all \xHH under -xx; a repeated group per byte took 0.45 s on a 1 MiB writev
        parts = _IOV_BASE.findall(arg)
        data = b""
        cut = False
        for p in parts:
            d, c = _string(p)
            data += d
            cut = cut or c
        return data, cut or arg.rstrip("]").endswith("...")

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
        if f is not None:
            self._announce(call, f)
            size = _int(call.args[1])
            self._size[f.path] = size
            self._emit(call, "truncate", f.path, handle=f.handle, size=size)

    def _on_truncate(self, call: Call, proc: _Proc) -> None:
        path = self._resolve(proc, None, _path_arg(call.args[0]))
        self._handles += 1
        size = _int(call.args[1])
        self._size[path] = size
        self._emit(call, "open_existing", path, handle=self._handles)
        self._emit(call, "truncate", path, handle=self._handles, size=size)

    def _on_fallocate(self, call: Call, proc: _Proc) -> None:
        f = self._file(call, proc, call.args[0])
        if f is None:
            return
        mode = call.args[1]
        end = _int(call.args[2]) + _int(call.args[3])
        if "PUNCH_HOLE" in mode or "ZERO_RANGE" in mode or "COLLAPSE" in mode or "INSERT" in mode:
            self.blind.append(
                f"{f.path}: fallocate({mode}) changes data in a way the crash model does not replay"
            )
            return
        if "KEEP_SIZE" in mode or end <= self._size.get(f.path, 0):
            return
        self._announce(call, f)
        self._size[f.path] = end
        self._emit(call, "truncate", f.path, handle=f.handle, size=end)

    def _on_fsync(self, call: Call, proc: _Proc) -> None:
        f = self._file(call, proc, call.args[0])
        if f is None:
            return
        if f.directory:
            self._emit(call, "fsync_dir", f.path)
        else:
            self._announce(call, f)
            self._emit(call, "fsync", f.path, handle=f.handle)

    _on_fdatasync = _on_fsync

    def _on_sync(self, call: Call, proc: _Proc) -> None:
        self._emit(call, "sync_all", self.root)

    def _on_syncfs(self, call: Call, proc: _Proc) -> None:
        # syncfs(fd) syncs only the file system holding fd (syncfs(2)): another one's says nothing
        _, path = _fd_arg(call.args[0])
        f = proc.fds.get(_fd_arg(call.args[0])[0])
        where = path or (f.path if f is not None else None)
        try:
            same = where is not None and os.stat(where).st_dev == os.stat(self.root).st_dev
        except OSError:
            same = False
        if same:
            self._emit(call, "sync_all", self.root)

    def _on_close(self, call: Call, proc: _Proc) -> None:
        fd, _ = _fd_arg(call.args[0])
        f = proc.fds.pop(fd, None)
        if f is not None and f.writable and f.announced and not f.directory:
            self._emit(call, "close", f.path, handle=f.handle)

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
            self.blind.append(f"{src} <-> {dst}: renameat2(RENAME_EXCHANGE) is not modelled")
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
        self._emit(call, "replace", src, dst=dst)

    def _on_rename(self, call: Call, proc: _Proc) -> None:
        self._rename(
            call, proc, self._resolve(proc, None, _path_arg(call.args[0])),
            self._resolve(proc, None, _path_arg(call.args[1])),
        )  # fmt: skip

    def _on_renameat(self, call: Call, proc: _Proc) -> None:
        src = self._resolve(proc, call.args[0], _path_arg(call.args[1]))
        dst = self._resolve(proc, call.args[2], _path_arg(call.args[3]))
        self._rename(call, proc, src, dst, call.args[4] if len(call.args) > 4 else "")

    _on_renameat2 = _on_renameat

    def _on_link(self, call: Call, proc: _Proc) -> None:
        src = self._resolve(proc, None, _path_arg(call.args[0]))
        dst = self._resolve(proc, None, _path_arg(call.args[1]))
        self._link(call, src, dst)

    def _on_linkat(self, call: Call, proc: _Proc) -> None:
        flags = call.args[4] if len(call.args) > 4 else ""
        magic = re.match(r"^/proc/(self|thread-self|\d+)/fd/(\d+)$", _path_arg(call.args[1]))
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
            src = self._resolve(proc, call.args[0], _path_arg(call.args[1]))
        self._link(call, src, self._resolve(proc, call.args[2], _path_arg(call.args[3])))

    def _link(self, call: Call, src: str, dst: str) -> None:
        if src.endswith(" (deleted)"):
            self.blind.append(f"{dst}: linked from an anonymous O_TMPFILE file, which is not modelled")
            return
        if src in self._size:
            self._size[dst] = self._size[src]
        self._emit(call, "link", src, dst=dst)

    def _on_unlink(self, call: Call, proc: _Proc) -> None:
        path = self._resolve(proc, None, _path_arg(call.args[0]))
        self._size.pop(path, None)  # a file made again under this name starts empty
        self._emit(call, "unlink", path)

    def _on_unlinkat(self, call: Call, proc: _Proc) -> None:
        path = self._resolve(proc, call.args[0], _path_arg(call.args[1]))
        kind = "rmdir" if "AT_REMOVEDIR" in (call.args[2] if len(call.args) > 2 else "") else "unlink"
        self._size.pop(path, None)
        self._dirs.discard(path)
        self._emit(call, kind, path)

    def _on_rmdir(self, call: Call, proc: _Proc) -> None:
        path = self._resolve(proc, None, _path_arg(call.args[0]))
        self._dirs.discard(path)
        self._emit(call, "rmdir", path)

    def _on_mkdir(self, call: Call, proc: _Proc) -> None:
        path = self._resolve(proc, None, _path_arg(call.args[0]))
        self._dirs.add(path)
        self._emit(call, "mkdir", path)

    def _on_mkdirat(self, call: Call, proc: _Proc) -> None:
        path = self._resolve(proc, call.args[0], _path_arg(call.args[1]))
        self._dirs.add(path)
        self._emit(call, "mkdir", path)

    def _on_symlink(self, call: Call, proc: _Proc) -> None:
        target = _path_arg(call.args[0])
        self._emit(call, "symlink", self._resolve(proc, None, _path_arg(call.args[1])), dst=target)

    def _on_symlinkat(self, call: Call, proc: _Proc) -> None:
        target = _path_arg(call.args[0])
        self._emit(call, "symlink", self._resolve(proc, call.args[1], _path_arg(call.args[2])), dst=target)

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
            self.blind.append(f"{dst.path}: {call.name} from {src.path}, whose bytes could not be read back")
            return
        if self.inside(src.path) and any(op.kind == "write" and op.path == src.path for op in self.ops):
            self.blind.append(
                f"{dst.path}: {call.name} copies from {src.path}, which this save also wrote; "
                "the copied bytes are taken from the file as it is after the save"
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
            self.blind.append(f"{path}: written by splice() from a pipe, whose bytes strace does not show")

    def _on_mmap(self, call: Call, proc: _Proc) -> None:
        if len(call.args) < 5 or "MAP_SHARED" not in call.args[3] or "PROT_WRITE" not in call.args[2]:
            return
        _, path = _fd_arg(call.args[4])
        if path is not None and self.inside(path):
            self.blind.append(
                f"{path}: mapped shared and writable (mmap); stores through a mapping reach the file "
                "without any system call, so no tracer can see or order them"
            )

    def _on_io_uring_setup(self, call: Call, proc: _Proc) -> None:
        self.blind.append(
            "io_uring: the save set up an io_uring; its submissions bypass system calls and cannot be traced"
        )

    def _on_chdir(self, call: Call, proc: _Proc) -> None:
        proc.cwd[0] = self._resolve(proc, None, _path_arg(call.args[0]))

    def _on_fchdir(self, call: Call, proc: _Proc) -> None:
        _, path = _fd_arg(call.args[0])
        if path is not None:
            proc.cwd[0] = path
