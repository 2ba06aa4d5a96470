"""The interceptor records plain-Python writes under one directory, in persistkit's Op format."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest

from persistkit.io import atomic_write, use_fs
from persistkit.testing.fs import CrashSimulator, Snapshot
from persistkit.testing.fs.recordfs import RecordingFS
from persistkit.testing.observe.intercept import GuardFS, Interceptor


def record(root, fn):
    rec = RecordingFS()
    with use_fs(GuardFS(rec)), Interceptor(root, log=rec):
        fn()
    return [op.describe().replace(str(root) + os.sep, "").replace(str(root), ".") for op in rec.ops]


def test_plain_open_write_fsync_replace_and_dir_fsync(tmp_path, fd_guard):
    def save():
        with open(tmp_path / "f.tmp", "w") as f:
            f.write("hello")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path / "f.tmp", tmp_path / "f")
        fd = os.open(tmp_path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    assert record(tmp_path, save) == [
        "#0 create f.tmp",
        "#1 write f.tmp [0:5]",
        "#2 fsync f.tmp",
        "#3 close f.tmp",
        "#4 replace f.tmp -> f",
        "#5 fsync_dir .",
    ]
    assert (tmp_path / "f").read_text() == "hello"


def test_mkstemp_fdopen_pathlib_numpy_shutil_and_makedirs(tmp_path, fd_guard):
    (tmp_path / "src").write_bytes(b"x" * 10)

    def save():
        fd, tmp = tempfile.mkstemp(dir=tmp_path)
        with os.fdopen(fd, "wb") as f:
            f.write(b"abc")
        pathlib.Path(tmp_path, "p.txt").write_text("pathlib")
        np.save(tmp_path / "a.npy", np.arange(4))
        shutil.copyfile(tmp_path / "src", tmp_path / "copy")
        shutil.move(tmp_path / "copy", tmp_path / "moved")
        os.makedirs(tmp_path / "d1" / "d2")
        shutil.rmtree(tmp_path / "d1")
        os.unlink(tmp)

    ops = record(tmp_path, save)
    kinds = [op.split()[1] for op in ops]
    assert "create p.txt" in " ".join(ops) and "create a.npy" in " ".join(ops)
    assert any(op.endswith("write copy [0:10]") for op in ops)  # sendfile fast path disabled: data recorded
    assert any(op.endswith("replace copy -> moved") for op in ops)
    assert kinds.count("mkdir") == 2 and kinds.count("rmdir") == 2
    assert kinds[-1] == "unlink"
    assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2, 3]


def test_append_mode_and_read_plus_record_real_offsets(tmp_path, fd_guard):
    (tmp_path / "log").write_bytes(b"12345")

    def save():
        with open(tmp_path / "log", "ab") as f:
            f.write(b"678")
        with open(tmp_path / "log", "r+b") as f:
            f.seek(1)
            f.write(b"X")
            assert f.read(2) == b"34"

    ops = record(tmp_path, save)
    assert "#1 write log [5:8]" in ops and "#4 write log [1:2]" in ops
    assert (tmp_path / "log").read_bytes() == b"1X345678"


def test_writes_outside_the_root_and_reads_pass_through(tmp_path, fd_guard):
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir()
    outside.mkdir()
    (inside / "r").write_text("read me")

    def save():
        (outside / "x").write_text("not recorded")
        assert (inside / "r").read_text() == "read me"

    assert record(inside, save) == []
    assert (outside / "x").read_text() == "not recorded"


def test_persistkit_io_is_recorded_once_not_twice(tmp_path, fd_guard):
    ops = record(tmp_path, lambda: atomic_write(tmp_path / "pk", b"data"))
    assert [op.split()[1] for op in ops] == ["create", "write", "fsync", "close", "replace", "fsync_dir"]


def test_patches_are_removed_afterwards_and_nesting_is_refused(tmp_path):
    real_open, real_replace = builtins.open, os.replace
    with Interceptor(tmp_path):
        assert builtins.open is not real_open
        with pytest.raises(RuntimeError, match="already active"), Interceptor(tmp_path):
            pass
    assert builtins.open is real_open and os.replace is real_replace


def test_the_hook_can_fail_an_operation_like_a_full_disk(tmp_path, fd_guard):
    def hook(kind, path):
        if kind == "write":
            raise OSError(errno.ENOSPC, "No space left on device", path)

    with Interceptor(tmp_path, before=hook), pytest.raises(OSError) as info, open(tmp_path / "f", "w") as f:
        json.dump({"a": 1}, f)
    assert info.value.errno == errno.ENOSPC
    assert (tmp_path / "f").read_bytes() == b""


def test_recorded_user_ops_replay_in_the_crash_simulator(tmp_path):
    (tmp_path / "f").write_text("old")
    before = Snapshot.take(tmp_path)
    rec = RecordingFS()
    with use_fs(GuardFS(rec)), Interceptor(tmp_path, log=rec), open(tmp_path / "f", "w") as f:
        f.write("new")
    contents = {s.files().get("f") for s in CrashSimulator(before, rec.ops).states("process")}
    assert contents == {b"old", b"", b"new"}  # in-place write: the empty file is a reachable crash state


def test_a_reused_descriptor_is_not_mistaken_for_the_tracked_file(tmp_path, fd_guard):
    rec = RecordingFS()
    with Interceptor(tmp_path, log=rec):
        fd = os.open(tmp_path / "a", os.O_WRONLY | os.O_CREAT)
        with open(fd, "rb", closefd=True):  # a read-mode FileIO closes the fd behind our back
            pass
        other = os.open(tmp_path.parent / "elsewhere-intercept-test", os.O_WRONLY | os.O_CREAT)
        try:
            os.write(other, b"unrelated")
        finally:
            os.close(other)
            os.unlink(tmp_path.parent / "elsewhere-intercept-test")
    assert [op.kind for op in rec.ops] == ["create"]


def test_os_functions_captured_under_another_name_are_recorded_too(tmp_path, fd_guard, monkeypatch):
    # atomicwrites does `_proper_fsync = os.fsync` at import; an fsync the observer does not see
    # would become a false power-loss violation, so module-level aliases are patched as well.
    import sys
    import types

    lib = types.ModuleType("fake_captures_fsync")
    lib.proper_fsync = os.fsync
    lib.rename = os.rename
    monkeypatch.setitem(sys.modules, lib.__name__, lib)

    def save():
        with open(tmp_path / "tmp", "w") as f:
            f.write("new")
            f.flush()
            lib.proper_fsync(f.fileno())
        lib.rename(tmp_path / "tmp", tmp_path / "f")

    assert record(tmp_path, save) == [
        "#0 create tmp",
        "#1 write tmp [0:3]",
        "#2 fsync tmp",
        "#3 close tmp",
        "#4 replace tmp -> f",
    ]
    assert lib.proper_fsync is os.fsync  # restored afterwards


def test_open_with_an_opener_under_the_root_records_its_writes(tmp_path, fd_guard):
    # tempfile.NamedTemporaryFile opens with io.open(name, opener=...): its writes must be seen.
    def save():
        with tempfile.NamedTemporaryFile("w", dir=tmp_path, delete=False) as f:
            f.write("new")
            f.flush()
            os.fsync(f.fileno())
        os.replace(f.name, tmp_path / "f")

    ops = record(tmp_path, save)
    assert [op.split(" ")[1] for op in ops] == ["create", "write", "fsync", "close", "replace"], ops
    assert (tmp_path / "f").read_text() == "new"


def test_binary_opens_are_buffered_like_the_real_open(tmp_path, fd_guard):
    # stable-baselines3's save_to_zip_file refuses a file that is not an io.BufferedWriter/
    # BufferedRandom; the observer must not change what open() returns, or the save breaks.
    import io

    kinds = {}

    def save():
        with open(tmp_path / "a", "wb") as f:
            kinds["wb"] = f
            f.write(b"ab")
            f.write(b"cd")
        with open(tmp_path / "a", "r+b") as f:
            kinds["r+b"] = f
            f.write(b"x")
        with open(tmp_path / "b", "wb", buffering=0) as f:
            kinds["raw"] = f
            f.write(b"y")

    ops = record(tmp_path, save)
    assert isinstance(kinds["wb"], io.BufferedWriter) and isinstance(kinds["r+b"], io.BufferedRandom)
    assert not isinstance(kinds["raw"], io.BufferedIOBase)
    assert ops == [
        "#0 create a",
        "#1 write a [0:4]",
        "#2 close a",
        "#3 open_existing a",
        "#4 write a [0:1]",
        "#5 close a",
        "#6 create b",
        "#7 write b [0:1]",
        "#8 close b",
    ], ops
    assert (tmp_path / "a").read_bytes() == b"xbcd"


def test_opener_named_temporary_file_fileio_and_link_are_recorded(tmp_path, fd_guard):
    def save():
        with open(tmp_path / "o.bin", "wb", opener=lambda p, f: os.open(p, f, 0o600)) as f:
            f.write(b"opener")
        with tempfile.NamedTemporaryFile(dir=tmp_path, delete=False, suffix=".tmp") as t:
            t.write(b"named")
            t.flush()
            os.fsync(t.fileno())
        os.replace(t.name, tmp_path / "named.bin")
        with io.FileIO(tmp_path / "raw.bin", "w") as r:
            r.write(b"fileio")
        os.link(tmp_path / "raw.bin", tmp_path / "hard.bin")

    ops = " | ".join(record(tmp_path, save))
    assert "write o.bin [0:6]" in ops
    assert ".tmp [0:5]" in ops and "named.bin" in ops
    assert "write raw.bin [0:6]" in ops
    assert ops.endswith("link raw.bin -> hard.bin")


def test_open_returns_the_genuine_file_types(tmp_path, fd_guard):
    seen = {}

    def save():
        with open(tmp_path / "b", "wb") as f:
            seen["wb"] = (type(f), type(f.raw))
        with open(tmp_path / "b", "r+b") as f:
            seen["r+b"] = type(f)
        with open(tmp_path / "t", "w") as f:
            seen["w"] = (type(f), f.mode)
            f.write("text")
        with open(tmp_path / "u", "wb", buffering=0) as f:
            seen["raw"] = f
            f.write(b"u")

    ops = record(tmp_path, save)
    assert seen["wb"][0] is io.BufferedWriter and issubclass(seen["wb"][1], io.FileIO)
    assert seen["r+b"] is io.BufferedRandom
    assert seen["w"] == (io.TextIOWrapper, "w")
    assert isinstance(seen["raw"], io.FileIO)
    assert any(op.endswith("write t [0:4]") for op in ops) and any(op.endswith("write u [0:1]") for op in ops)
    assert (tmp_path / "t").read_text() == "text"


def test_a_fsync_captured_before_interception_is_still_observed(tmp_path, fd_guard):
    import types

    captured = types.ModuleType("captured_fsync_user")
    exec("from os import fsync as _fsync\ndef sync(fd):\n    _fsync(fd)\n", captured.__dict__)
    import sys

    sys.modules[captured.__name__] = captured
    try:

        def save():
            with open(tmp_path / "f", "wb") as f:
                f.write(b"x")
                f.flush()
                captured.sync(f.fileno())

        rec = RecordingFS()
        with use_fs(GuardFS(rec)), Interceptor(tmp_path, log=rec) as icp:
            save()
        assert "captured_fsync_user._fsync" in icp.rebound
        assert [op.kind for op in rec.ops].count("fsync") == 1
        assert captured._fsync is os.fsync  # restored afterwards
    finally:
        del sys.modules[captured.__name__]


def test_sb3_model_save_under_the_python_observer(tmp_path, crash_points):
    sb3 = pytest.importorskip("stable_baselines3")
    model = sb3.PPO("MlpPolicy", "CartPole-v1", n_steps=16, batch_size=16, device="cpu", seed=0)
    path = tmp_path / "ppo.zip"

    def load():
        return sb3.PPO.load(path, device="cpu") if path.exists() else None

    from persistkit.testing.observe import NotJudgeable

    # Observed in full (no TypeError from SB3's file-type check, nothing unexplained): the verdict is
    # the real one, that SB3 rewrites the zip in place and a crash leaves a torn model.
    with pytest.raises(AssertionError, match=r"write ppo.zip") as failure:
        crash_points(lambda: model.save(path), load, observe="python", max_states=8)
    assert not isinstance(failure.value, NotJudgeable)
    assert sb3.PPO.load(path, device="cpu").n_steps == 16
