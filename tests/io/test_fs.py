from __future__ import annotations

import errno
import os

import pytest

from persistkit.errors import FormatError, PersistIOError
from persistkit.io import LocalFS, current_fs, use_fs
from persistkit.io.fs import io_error, io_errors
from persistkit.testing.fs.faultfs import Fault, FaultFS
from persistkit.testing.fs.recordfs import RecordingFS


def test_local_fs_primitives(tmp_path, fd_guard):
    fs = LocalFS()
    p = tmp_path / "a.bin"
    h = fs.create(p)
    fs.write(h, b"hello ")
    fs.write(h, memoryview(b"world"))
    assert h.offset == 11
    fs.fsync(h)
    fs.close(h)
    fs.close(h)  # idempotent
    assert fs.read_bytes(p) == b"hello world"
    with pytest.raises(FileExistsError):
        fs.create(p)  # exclusive by default
    h = fs.open_append(p)
    assert h.offset == 11
    fs.write(h, b"!")
    fs.truncate(h, 5)
    fs.close(h)
    assert p.read_bytes() == b"hello"
    fs.mkdir(tmp_path / "d")
    fs.replace(p, tmp_path / "d" / "b.bin")
    fs.fsync_dir(tmp_path / "d")
    fs.symlink("b.bin", tmp_path / "d" / "link")
    assert fs.readlink(tmp_path / "d" / "link") == "b.bin"
    assert sorted(fs.listdir(tmp_path / "d")) == ["b.bin", "link"]
    assert fs.exists(tmp_path / "d" / "link") and fs.is_file(tmp_path / "d" / "b.bin")
    assert fs.is_dir(tmp_path / "d") and not fs.is_dir(tmp_path / "d" / "b.bin")
    with fs.open_read(tmp_path / "d" / "b.bin") as f:
        assert f.read() == b"hello"
    walked = list(fs.walk(tmp_path))
    assert walked[0][1] == ["d"] and walked[1][2] == ["b.bin", "link"]
    fs.unlink(tmp_path / "d" / "link")
    fs.unlink(tmp_path / "d" / "b.bin")
    fs.rmdir(tmp_path / "d")
    assert not fs.exists(tmp_path / "d")


def test_create_refuses_to_follow_symlinks(tmp_path):
    (tmp_path / "real").write_bytes(b"keep")
    os.symlink("real", tmp_path / "link")
    with pytest.raises(OSError):
        LocalFS().create(tmp_path / "link", exclusive=False)
    assert (tmp_path / "real").read_bytes() == b"keep"


def test_makedirs_fsyncs_each_new_parent(tmp_path):
    rec = RecordingFS()
    with use_fs(rec):
        current_fs().makedirs(tmp_path / "a" / "b" / "c")
    assert [op.kind for op in rec.ops] == ["mkdir", "fsync_dir"] * 3
    assert (tmp_path / "a" / "b" / "c").is_dir()


def test_use_fs_nests_and_restores():
    outer, inner = RecordingFS(), RecordingFS()
    base = current_fs()
    with use_fs(outer):
        assert current_fs() is outer
        with use_fs(inner):
            assert current_fs() is inner
        assert current_fs() is outer
    assert current_fs() is base


def test_recording_logs_partial_writes_of_failed_operations(tmp_path):
    fault = FaultFS(LocalFS(), Fault(1, errno.ENOSPC, short_write=True))
    rec = RecordingFS(fault)
    h = rec.create(tmp_path / "f")
    with pytest.raises(OSError) as info:
        rec.write(h, b"0123456789")
    assert info.value.errno == errno.ENOSPC
    rec.close(h)
    writes = [op for op in rec.ops if op.kind == "write"]
    assert len(writes) == 1 and writes[0].data == b"01234"
    assert (tmp_path / "f").read_bytes() == b"01234"


def test_fault_kinds_filter_and_persistence(tmp_path):
    fs = FaultFS(LocalFS(), Fault(1, errno.EIO, persistent=True, kinds=frozenset({"fsync"})))
    h = fs.create(tmp_path / "f")
    fs.fsync(h)  # fsync #0 passes
    with pytest.raises(OSError):
        fs.fsync(h)
    assert h.failed_fsync
    with pytest.raises(OSError):
        fs.fsync(h)  # persistent
    fs.close(h)
    assert fs.fired == 2
    assert fs.fault.describe() == "EIO at operation #1 (persistent)"


def test_io_error_message_names_path_errno_and_remedy(tmp_path):
    err = io_error("write", tmp_path / "x", OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(err, PersistIOError) and isinstance(err, OSError)
    assert err.errno == errno.ENOSPC and err.operation == "write"
    text = str(err)
    assert "ENOSPC" in text and str(tmp_path / "x") in text and "retry" in text


@pytest.mark.parametrize(
    ("op", "code", "says"),
    [
        ("read", errno.ENOENT, "does not exist: check the path"),
        ("open", errno.EACCES, "Permission denied"),
        ("create temp file for", errno.ENOENT, "does not exist: create it first"),
        ("create directory", errno.EEXIST, "file is in the way"),
        ("lock", errno.ENOTDIR, "file is in the way"),
        ("create temp file for", errno.ENAMETOOLONG, "name is too long"),
        ("write", errno.ENOSPC, "free space"),
        ("write", errno.EROFS, "read-only"),
        ("fsync", errno.EIO, "check the disk"),
        ("write archive", errno.ENOSPC, "The disk is full"),
        ("write", errno.EDQUOT, "quota is used up"),
        ("write", errno.EFBIG, "ulimit -f"),
        ("replace", errno.EXDEV, "different filesystems"),
        ("create symlink", errno.EEXIST, "already exists there"),
        ("move the restored files into place at", errno.ENOTEMPTY, "not empty"),
        ("open", errno.EMFILE, "ulimit -n"),
        ("open", errno.ENFILE, "fs.file-max"),
        ("open", errno.ELOOP, "symbolic link"),
    ],
)
def test_io_error_advice_fits_the_errno_and_the_operation(tmp_path, op, code, says):
    err = io_error(op, tmp_path / "x", OSError(code, os.strerror(code)))
    text = str(err)
    assert says in text and str(tmp_path / "x") in text and errno.errorcode[code] in text
    if code not in (errno.ENOSPC, errno.EDQUOT):
        assert "free space" not in text.lower() and "disk is full" not in text
    if op in ("read", "open"):
        assert "previous copy" not in text and "Nothing was changed" in text
    if op in ("write", "fsync"):
        assert "previous copy is untouched" in text
    if op == "create temp file for":
        assert "Nothing was written" in text
    assert "for failed on" not in text and " at failed on" not in text  # an operation ending in a
    # preposition is followed by its path: "create temp file for '/x' failed: ..."


def test_a_failed_atomic_write_reads_as_a_sentence(tmp_path):
    from persistkit.io import atomic_write

    target = tmp_path / "missing" / "model.pk"
    with pytest.raises(PersistIOError) as info:
        atomic_write(target, b"x")
    assert str(info.value).startswith(f"create temp file for {str(target)!r} failed: ENOENT")


def test_after_replaces_the_default_consequence(tmp_path):
    err = io_error("write", tmp_path / "x", OSError(errno.ENOSPC, "No space left"), "Nothing was restored.")
    text = str(err)
    assert text.endswith("Nothing was restored.") and "previous copy" not in text
    assert "disk is full" in text and err.errno == errno.ENOSPC and err.operation == "write"


def test_io_errors_wraps_real_os_errors_with_advice_for_their_errno(tmp_path):
    fs = current_fs()
    missing = tmp_path / "gone.zip"
    with pytest.raises(PersistIOError) as info, io_errors("read archive", missing, "Nothing was restored."):
        fs.read_bytes(missing)
    text = str(info.value)
    assert info.value.errno == errno.ENOENT and str(missing) in text and "does not exist" in text
    assert "free space" not in text.lower() and text.endswith("Nothing was restored.")
    assert isinstance(info.value.__cause__, FileNotFoundError)

    (tmp_path / "blocker").write_text("a file")
    with (
        pytest.raises(PersistIOError) as info,
        io_errors("create archive directory", tmp_path / "blocker" / "a"),
    ):
        fs.makedirs(tmp_path / "blocker" / "a")
    assert info.value.errno == errno.ENOTDIR and "file is in the way" in str(info.value)

    # The block works again once the cause is gone, then fails again with the advice for the new errno.
    (tmp_path / "blocker").unlink()
    with io_errors("create archive directory", tmp_path / "blocker" / "a"):
        fs.makedirs(tmp_path / "blocker" / "a")
    with pytest.raises(PersistIOError) as info, io_errors("create symlink", tmp_path / "blocker" / "a"):
        os.symlink("target", tmp_path / "blocker" / "a")
    assert info.value.errno == errno.EEXIST and "already exists there" in str(info.value)
    assert "a directory is needed" not in str(info.value)


def test_io_errors_exact_names_the_file_the_os_named_and_passes_typed_errors(tmp_path):
    where = tmp_path / "ws"
    where.mkdir()
    inner = where / "sub" / "missing.bin"
    with pytest.raises(PersistIOError) as info, io_errors("read workspace", where, exact=True):
        current_fs().read_bytes(inner)
    assert info.value.path == str(inner) and str(inner) in str(info.value)
    with pytest.raises(PersistIOError) as info, io_errors("read workspace", where):
        current_fs().read_bytes(inner)
    assert info.value.path == str(where)
    typed = FormatError("already typed", path=str(where))
    with pytest.raises(FormatError) as passed, io_errors("read workspace", where):
        raise typed
    assert passed.value is typed


def test_keygen_into_a_missing_directory_says_the_directory_does_not_exist(tmp_path):
    from persistkit.keys import write_key_file

    with pytest.raises(PersistIOError) as info:
        write_key_file(tmp_path / "nope" / "k.key")
    assert f"The directory {str(tmp_path / 'nope')!r} does not exist" in str(info.value)


def test_a_state_directory_that_is_a_file_says_a_file_is_in_the_way(tmp_path):
    import persistkit as pk

    where = tmp_path / "state"
    where.write_text("not a directory")
    # The store refuses it up front, naming the path (not a free-space hint).
    with pytest.raises(FormatError) as info, pk.StateStore(where) as store:
        store.register("a", {})
        store.save()
    text = str(info.value)
    assert str(where) in text and "not a directory" in text and "free space" not in text.lower()
