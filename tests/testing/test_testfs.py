"""The test file systems share one mutation hook, and no mutating PersistFS operation escapes it."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from persistkit.errors import PersistIOError
from persistkit.io import atomic_write, atomic_writer, use_fs
from persistkit.io.atomic import TEMP_MARKER, WRITEBACK_EVERY
from persistkit.io.fs import DelegatingFS, LocalFS, PersistFS
from persistkit.testing.budget import MeasuringFS
from persistkit.testing.fs.faultfs import Fault, FaultFS, InjectedFault
from persistkit.testing.fs.recordfs import RecordingFS
from persistkit.testing.fs.testfs import (
    CONVENIENCE_OPS,
    HINT_OPS,
    MUTATING_OPS,
    READ_OPS,
    HookedFS,
    Mutation,
)
from persistkit.testing.observe.intercept import GuardFS, inside_persistkit_io

OLD = b"old state " * 400


def unclassified(cls: type[PersistFS]) -> list[str]:
    """Public methods of ``cls`` that the tables of testfs do not classify."""
    known = {*MUTATING_OPS, *READ_OPS, *CONVENIENCE_OPS}
    public = {n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))}
    return sorted(public - known)


def test_every_persistfs_method_is_a_mutation_a_read_or_a_convenience():
    assert unclassified(PersistFS) == []
    tables = [set(MUTATING_OPS), set(READ_OPS), set(CONVENIENCE_OPS)]
    assert sum(map(len, tables)) == len(set().union(*tables)), "a method is in two tables"
    assert set(MUTATING_OPS) >= HINT_OPS
    # and nothing in the tables is stale
    assert set().union(*tables) <= {n for n in dir(PersistFS) if not n.startswith("_")}


def test_the_checker_sees_a_new_persistfs_method():
    class Grown(PersistFS):
        def fallocate(self, handle, size):
            raise NotImplementedError

    assert unclassified(Grown) == ["fallocate"]


def test_hookedfs_overrides_every_primitive_and_no_convenience():
    own = set(vars(HookedFS))
    assert set(MUTATING_OPS) | set(READ_OPS) <= own
    assert not own & set(CONVENIENCE_OPS)
    for name in CONVENIENCE_OPS:  # built on the primitives, so their mutations reach the hook
        assert getattr(HookedFS, name) is getattr(PersistFS, name)


@pytest.mark.parametrize("cls", [FaultFS, RecordingFS, GuardFS, MeasuringFS])
def test_test_file_systems_override_the_hook_not_the_operations(cls):
    assert issubclass(cls, HookedFS)
    assert not set(vars(cls)) & {*MUTATING_OPS, *READ_OPS, *CONVENIENCE_OPS}


# -- every mutation, performed on real files --------------------------------------------------


@contextlib.contextmanager
def _open(fs, path):
    handle = fs.create(path, exclusive=False)
    try:
        yield handle
    finally:
        LocalFS().close(handle)  # a no-op when the operation under test closed it


def _create(fs, d):
    LocalFS().close(fs.create(d / "new"))


def _open_append(fs, d):
    LocalFS().close(fs.open_append(d / "log"))


def _write(fs, d):
    with _open(fs, d / "f") as h:
        fs.write(h, b"data")


def _fsync(fs, d):
    with _open(fs, d / "f") as h:
        fs.write(h, b"data")
        fs.fsync(h)


def _start_writeback(fs, d):
    with _open(fs, d / "f") as h:
        fs.write(h, b"data")
        fs.start_writeback(h)


def _close(fs, d):
    with _open(fs, d / "f") as h:
        fs.close(h)


def _truncate(fs, d):
    with _open(fs, d / "f") as h:
        fs.write(h, b"data")
        fs.truncate(h, 1)


def _replace(fs, d):
    (d / "a").write_bytes(b"a")
    fs.replace(d / "a", d / "b")


def _unlink(fs, d):
    (d / "a").write_bytes(b"a")
    fs.unlink(d / "a")


def _mkdir(fs, d):
    fs.mkdir(d / "sub")


def _rmdir(fs, d):
    (d / "sub").mkdir()
    fs.rmdir(d / "sub")


def _symlink(fs, d):
    fs.symlink("f", d / "link")


def _fsync_dir(fs, d):
    fs.fsync_dir(d)


# op -> (how to perform it, the name under tmp_path its errors are reported on)
DRIVERS = {
    "create": (_create, "new"),
    "open_append": (_open_append, "log"),
    "write": (_write, "f"),
    "fsync": (_fsync, "f"),
    "start_writeback": (_start_writeback, "f"),
    "close": (_close, "f"),
    "truncate": (_truncate, "f"),
    "replace": (_replace, "b"),
    "unlink": (_unlink, "a"),
    "mkdir": (_mkdir, "sub"),
    "rmdir": (_rmdir, "sub"),
    "symlink": (_symlink, "link"),
    "fsync_dir": (_fsync_dir, "."),
}


def test_every_mutation_has_a_driver_here():
    assert sorted(DRIVERS) == sorted(MUTATING_OPS)


class Seen(HookedFS):
    def __init__(self, inner):
        super().__init__(inner)
        self.mutations: list[Mutation] = []
        self.reads: list[str] = []

    def on_mutation(self, m, call):
        self.mutations.append(m)
        return call()

    def on_read(self, op, path, call):
        self.reads.append(op)
        return call()


@pytest.mark.parametrize("op", MUTATING_OPS)
def test_every_mutation_passes_the_hook_with_its_target(tmp_path, fd_guard, op):
    drive, name = DRIVERS[op]
    fs = Seen(LocalFS())
    drive(fs, tmp_path)
    hit = [m for m in fs.mutations if m.op == op]
    assert len(hit) == 1, [m.op for m in fs.mutations]
    assert hit[0].target == os.path.normpath(tmp_path / name)


@pytest.mark.parametrize("op", MUTATING_OPS)
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_faultfs_can_fail_every_mutation(tmp_path, fd_guard, op, code):
    drive, name = DRIVERS[op]
    fs = FaultFS(LocalFS(), Fault(at=0, errno=code, kinds=frozenset({op})))
    with pytest.raises(InjectedFault) as info:
        drive(fs, tmp_path)
    assert info.value.errno == code and info.value.filename == os.path.normpath(tmp_path / name)
    assert fs.fired == 1 and fs.log == [f"#0 {op} {os.path.normpath(tmp_path / name)}"]


@pytest.mark.parametrize("op", MUTATING_OPS)
def test_guardfs_sees_every_mutation_inside_persistkit_io(tmp_path, fd_guard, op):
    drive, name = DRIVERS[op]
    inner = Seen(LocalFS())
    seen_inside: list[bool] = []
    inner.on_mutation = lambda m, call: (seen_inside.append(inside_persistkit_io()), call())[1]
    before: list[tuple[str, str]] = []
    drive(GuardFS(inner, before=lambda kind, path: before.append((kind, path))), tmp_path)
    assert (op, os.path.normpath(tmp_path / name)) in before
    assert seen_inside and all(seen_inside)  # forwarded, and marked as persistkit's own call
    assert not inside_persistkit_io()


@pytest.mark.parametrize("op", MUTATING_OPS)
def test_recordingfs_logs_every_mutation_but_hints(tmp_path, fd_guard, op):
    drive, _ = DRIVERS[op]
    inner = Seen(LocalFS())
    rec = RecordingFS(inner)
    drive(rec, tmp_path)
    assert op in [m.op for m in inner.mutations]  # performed either way
    assert (op in rec.counts()) == (op not in HINT_OPS)


def test_makedirs_reaches_the_hook_one_primitive_at_a_time(tmp_path):
    fs = Seen(LocalFS())
    fs.makedirs(tmp_path / "a" / "b")
    assert [(m.op, os.path.relpath(m.path, tmp_path)) for m in fs.mutations] == [
        ("mkdir", "a"),
        ("fsync_dir", "."),
        ("mkdir", os.path.join("a", "b")),
        ("fsync_dir", "a"),
    ]
    assert "stat" in fs.reads  # makedirs looks first, through the read hook


# -- start_writeback: fault-injected during a large save ----------------------------------------


def temps(directory) -> list[str]:
    return [n for n in os.listdir(directory) if TEMP_MARKER in n]


def big(fill: bytes) -> bytes:
    return fill * (2 * WRITEBACK_EVERY + 4321)  # two write-back hints at least, then a tail


def _save(target, data):
    with atomic_writer(target) as writer:
        for start in range(0, len(data), 4 << 20):
            writer.write(data[start : start + (4 << 20)])


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC])
def test_a_failed_writeback_fails_the_save_keeps_the_old_file_and_recovers(tmp_path, fd_guard, code):
    target = tmp_path / "big.bin"
    target.write_bytes(OLD)
    only_hints = frozenset({"start_writeback"})

    # 1. the hint fails: the save raises the typed error (never a retried fsync: fsyncgate)
    fs = FaultFS(LocalFS(), Fault(at=0, errno=code, kinds=only_hints))
    with use_fs(fs), pytest.raises(PersistIOError) as info:
        _save(target, big(b"1"))
    err = info.value
    assert err.errno == code and err.path == str(target) and err.operation == "fsync"
    assert str(target) in str(err) and "previous copy is untouched" in str(err)
    assert fs.fired == 1 and target.read_bytes() == OLD and temps(tmp_path) == []

    # 2. the fault clears: the next save succeeds
    fs.clear()
    with use_fs(fs):
        _save(target, big(b"2"))
    assert target.read_bytes() == big(b"2") and temps(tmp_path) == []

    # 3. it fails again, persistently (how many hints a save makes depends on timing: at least one)
    fs = FaultFS(LocalFS(), Fault(at=0, errno=code, persistent=True, kinds=only_hints))
    with use_fs(fs), pytest.raises(PersistIOError, match=r"big\.bin"):
        _save(target, big(b"3"))
    assert fs.fired >= 1 and target.read_bytes() == big(b"2") and temps(tmp_path) == []

    # 4. then the disk fills during a write: half of it lands in the temp, the target stays
    fs = FaultFS(LocalFS(), Fault(at=2, errno=code, short_write=True, kinds=frozenset({"write"})))
    with use_fs(fs), pytest.raises(PersistIOError, match=r"big\.bin") as info:
        _save(target, big(b"4"))
    assert info.value.operation == "write" and fs.fired == 1
    assert target.read_bytes() == big(b"2") and temps(tmp_path) == []
    assert not [t for t in threading.enumerate() if t.name == "persistkit-writeback"]


def test_a_kill_during_write_back_then_a_failed_hint_then_recovery(tmp_path):
    """Fault sequence with a real crash: SIGKILL mid-save, a failed hint, then a good save."""
    target = tmp_path / "big.bin"
    atomic_write(target, OLD)
    script = textwrap.dedent(
        f"""
        import time
        from persistkit.io import atomic_writer
        with atomic_writer({str(target)!r}) as w:
            for _ in range(3):
                w.write(b"k" * {WRITEBACK_EVERY})
            print("writing", flush=True)
            time.sleep(60)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env) as child:
        try:
            assert child.stdout is not None and child.stdout.readline() == b"writing\n"
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert target.read_bytes() == OLD and len(temps(tmp_path)) == 1  # the dead writer's temp

    fs = FaultFS(LocalFS(), Fault(at=0, errno=errno.EIO, kinds=frozenset({"start_writeback"})))
    with use_fs(fs), pytest.raises(PersistIOError, match=r"big\.bin"):
        _save(target, big(b"4"))
    assert target.read_bytes() == OLD and temps(tmp_path) == []  # the stale temp was cleaned up too

    _save(target, big(b"5"))
    assert target.read_bytes() == big(b"5") and temps(tmp_path) == []


def test_guardfs_forwards_the_writeback_hint_of_a_large_save(tmp_path, fd_guard):
    """GuardFS used to inherit PersistFS's no-op start_writeback: the hint never reached the disk."""
    inner = Seen(LocalFS())
    kinds: list[str] = []
    with use_fs(GuardFS(inner, before=lambda kind, path: kinds.append(kind))):
        _save(tmp_path / "big.bin", big(b"g"))
    assert "start_writeback" in kinds
    temp = next(m.path for m in inner.mutations if m.op == "create")
    hints = [m for m in inner.mutations if m.op == "start_writeback"]
    assert hints and all(m.path == temp for m in hints)
    assert (tmp_path / "big.bin").read_bytes() == big(b"g")


def test_measuringfs_still_sizes_and_times_a_large_save(tmp_path, fd_guard):
    from persistkit.testing.budget import measure

    with measure() as m:
        _save(tmp_path / "big.bin", big(b"m"))
    assert m.files() == {str(tmp_path / "big.bin"): len(big(b"m"))}
    assert [s.target for s in m.saves] == [str(tmp_path / "big.bin")] and m.saves[0].seconds > 0


def test_delegatingfs_is_not_a_test_file_system():
    """io/ keeps only the production wrapper base; the hook lives in testing/."""
    assert not issubclass(DelegatingFS, HookedFS) and issubclass(HookedFS, DelegatingFS)
