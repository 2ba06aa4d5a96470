"""Every failure of the archiver is a typed PersistkitError naming the file, with advice that fits."""

from __future__ import annotations

import errno
import json
import os
import signal
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from archive_crafting import central_record

from persistkit.archive import Archiver, restore
from persistkit.errors import PersistIOError, PersistkitError, UnsafeArchiveError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws"
    (root / "logs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "logs" / "training.log").write_text("step 1 loss 0.5\n" * 500)
    (root / "models" / "weights.bin").write_bytes(os.urandom(300_000))
    return root


# -- a full disk -----------------------------------------------------------------------------------


def test_restore_onto_a_full_disk_names_the_file_and_says_free_space(ws, tmp_path, tmpfs):
    (ws / "models" / "weights.bin").write_bytes(os.urandom(2 << 20))  # more than the 1 MiB tmpfs
    path = Archiver(ws).create()
    with tmpfs(tmp_path / "small") as small:
        with pytest.raises(PersistIOError) as info:
            restore(path, small / "restored")
        err = info.value
        assert err.errno == errno.ENOSPC and "disk is full" in str(err)
        assert str(small / "restored" / "models" / "weights.bin") in str(err)  # where it was going
        assert "Nothing was restored" in str(err)
        assert os.listdir(small) == [], "a partial restore was left behind"


def test_cli_restore_onto_a_full_disk_prints_one_line_not_a_traceback(ws, tmp_path, tmpfs):
    (ws / "models" / "weights.bin").write_bytes(os.urandom(2 << 20))
    path = Archiver(ws).create()
    with tmpfs(tmp_path / "small") as small:
        done = subprocess.run(
            [sys.executable, "-m", "persistkit", "archive", "restore", str(path), str(small / "out")],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH") or str(ROOT)),
        )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "ENOSPC" in done.stderr, done.stderr


def test_create_onto_a_full_disk_keeps_older_archives(ws, tmp_path, tmpfs):
    with tmpfs(tmp_path / "small") as small:
        arc = Archiver(ws, archive_dir=str(small / "archives"))
        (ws / "models" / "weights.bin").write_bytes(os.urandom(2 << 20))
        with pytest.raises(PersistIOError) as info:
            arc.create()
        assert info.value.errno == errno.ENOSPC and "disk is full" in str(info.value)
        assert arc.list() == []


# -- paths that are not what they should be ----------------------------------------------------------


def test_an_archive_dir_that_is_a_file(ws):
    (ws / "archives").write_text("not a directory")
    with pytest.raises(PersistIOError, match="archives") as info:
        Archiver(ws).create()
    assert "Free space" not in str(info.value) and "disk is full" not in str(info.value)


def test_an_archive_dir_below_a_file(ws):
    (ws / "blocker").write_text("a file")
    with pytest.raises(PersistIOError, match="blocker") as info:
        Archiver(ws, archive_dir="blocker/archives").create()
    assert info.value.errno == errno.ENOTDIR and "not a directory" in str(info.value).lower()
    assert "file is in the way" in str(info.value) and "free space" not in str(info.value).lower()


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_root_that_is_missing_or_a_file_archives_nothing(tmp_path, kind):
    root = tmp_path / "typo"
    if kind == "file":
        root.write_text("x")
    with pytest.raises(PersistIOError, match="typo") as info:
        Archiver(root).create()
    assert "check the workspace root" in str(info.value).lower()
    assert "disk is full" not in str(info.value)
    assert not (tmp_path / "typo" / "archives").exists()


def test_restore_below_a_file(ws, tmp_path):
    path = Archiver(ws).create()
    (tmp_path / "blocker").write_text("a file")
    with pytest.raises(PersistIOError, match="blocker") as info:
        restore(path, tmp_path / "blocker" / "out")
    assert info.value.errno == errno.ENOTDIR


def test_restore_of_a_missing_archive_is_not_about_free_space(tmp_path):
    with pytest.raises(PersistIOError) as info:
        restore(tmp_path / "nope.zip", tmp_path / "out")
    assert info.value.errno == errno.ENOENT and "nope.zip" in str(info.value)
    assert "does not exist" in str(info.value) and "space" not in str(info.value)


def test_a_read_only_filesystem(ws, tmp_path, tmpfs):
    path = Archiver(ws).create()
    with tmpfs(tmp_path / "ro", "ro") as ro:
        with pytest.raises(PersistIOError) as info:
            restore(path, ro / "out")
        assert info.value.errno == errno.EROFS and "read-only" in str(info.value)
        with pytest.raises(PersistIOError) as info:
            Archiver(ws, archive_dir=str(ro / "archives")).create()
        assert info.value.errno == errno.EROFS and "read-only" in str(info.value)


# -- damaged archives --------------------------------------------------------------------------------


def test_a_directory_pointing_before_the_file_is_typed_not_einval(ws, tmp_path):
    path = Archiver(ws).create()
    data = bytearray(path.read_bytes())
    eocd = data.rindex(b"PK\x05\x06")
    offset = struct.unpack_from("<I", data, eocd + 16)[0]
    struct.pack_into("<I", data, eocd + 16, offset + 4096)  # members now start before byte 0
    bad = tmp_path / "einval.zip"
    bad.write_bytes(bytes(data))
    with pytest.raises(PersistkitError) as info:
        restore(bad, tmp_path / "out")
    assert not isinstance(info.value, PersistIOError) or info.value.errno != errno.EINVAL
    assert not Archiver(ws).verify(bad).ok


def test_an_encrypted_flag_is_typed(ws, tmp_path):
    path = Archiver(ws).create()
    data = bytearray(path.read_bytes())
    at = central_record(data, "logs/training.log")
    data[at + 8] |= 0x01
    bad = tmp_path / "encrypted.zip"
    bad.write_bytes(bytes(data))
    with pytest.raises(UnsafeArchiveError, match=r"training\.log"):
        restore(bad, tmp_path / "out")
    report = Archiver(ws).verify(bad)
    assert not report.ok and any("encrypted" in p for p in report.problems)


# -- killed restores ---------------------------------------------------------------------------------

SLOW_RESTORE = """
import sys, time
from persistkit.archive import restore
from persistkit.io import use_fs
from persistkit.io.fs import DelegatingFS, LocalFS

class Stalls(DelegatingFS):
    def write(self, handle, data):
        super().write(handle, data)
        if ".restore-" in handle.path:  # a restored file, not the .restoring marker
            print("writing", flush=True)
            time.sleep(60)

with use_fs(Stalls(LocalFS())):
    restore(sys.argv[1], sys.argv[2])
"""


def test_temp_dirs_of_killed_restores_are_removed_by_the_next_restore(ws, tmp_path):
    path = Archiver(ws).create()
    env = dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH") or str(ROOT))
    parent = tmp_path / "restores"
    parent.mkdir()

    def start(name):
        proc = subprocess.Popen(
            [sys.executable, "-c", SLOW_RESTORE, str(path), str(parent / name)],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"writing"
        return proc

    killed = start("first")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    killed.stdout.close()
    left = os.listdir(parent)
    assert len(left) == 1 and left[0].startswith(f".first.restore-{killed.pid}-"), left
    alive = start("second")  # cleans up after the killed one; is still restoring itself
    try:
        assert [n for n in os.listdir(parent) if n.startswith(".first.")] == []
        restore(path, parent / "third")
        after = sorted(os.listdir(parent))
        assert "third" in after and len(after) == 2, after
        assert after[0].startswith(f".second.restore-{alive.pid}-"), "a live restore's directory was removed"
    finally:
        alive.kill()
        alive.wait(timeout=30)
        alive.stdout.close()


# -- key files and lock files stay out -------------------------------------------------------------


def test_key_and_lock_files_are_left_out_and_recorded(ws):
    (ws / "models" / "agent.models").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    (ws / "models" / "agent.models.key").write_bytes(b"secret key material")
    (ws / "models" / ".persistkit.lock").write_bytes(b"")
    (ws / "models" / ".persistkit.lock.owner").write_text("123 host\n")
    (ws / "secret.key").write_text("root key")
    report = Archiver(ws, root_patterns=("*.pth", "*.key")).create_report()
    with zipfile.ZipFile(report.path) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("MANIFEST.json"))
    assert "models/agent.models" in names
    assert not {n for n in names if n.endswith(".key") or ".persistkit.lock" in n}, names
    assert set(manifest["excluded"]) == {
        "models/agent.models.key",
        "models/.persistkit.lock",
        "models/.persistkit.lock.owner",
        "secret.key",
    }
    assert "*.key" in manifest["excluded_patterns"] and set(report.excluded) == set(manifest["excluded"])


def test_exclusions_can_be_changed(ws):
    (ws / "models" / "agent.models.key").write_bytes(b"k")
    path = Archiver(ws, exclude=()).create()
    with zipfile.ZipFile(path) as zf:
        assert "models/agent.models.key" in zf.namelist()


def test_names_that_differ_only_in_case_are_refused_before_anything_is_written(ws):
    (ws / "logs" / "A.txt").write_text("1")
    (ws / "logs" / "a.txt").write_text("2")
    with pytest.raises(UnsafeArchiveError, match=r"differ only in case") as info:
        Archiver(ws).create()
    assert "A.txt" in str(info.value) and "Check the disk" not in str(info.value)
    assert Archiver(ws).list() == []


def test_a_prune_that_fails_after_create_names_the_archive_that_was_written(ws):
    from persistkit.io import use_fs
    from persistkit.io.fs import DelegatingFS, LocalFS

    arc = Archiver(ws, keep=1)
    old = arc.create()

    class NoUnlink(DelegatingFS):
        def unlink(self, path):
            if str(path) == str(old):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            super().unlink(path)

    with use_fs(NoUnlink(LocalFS())), pytest.raises(PersistIOError) as info:
        arc.create()
    new = arc.list()[-1]
    assert new != old and arc.verify(new).ok
    assert f"{new} was written and verified" in str(info.value) and old.name in str(info.value)
    assert "permission denied" in str(info.value).lower() and info.value.errno == errno.EACCES


def test_an_unlistable_directory_is_named_exactly(ws):
    from persistkit.io import use_fs
    from persistkit.io.fs import DelegatingFS, LocalFS

    class Unlistable(DelegatingFS):
        def listdir(self, path):
            if str(path).endswith("models"):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return super().listdir(path)

    with use_fs(Unlistable(LocalFS())), pytest.raises(PersistIOError) as info:
        Archiver(ws).create()
    assert str(ws / "models") in str(info.value) and "permission" in str(info.value).lower()
    assert Archiver(ws).list() == []
