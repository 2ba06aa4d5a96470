from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from persistkit.archive import Archiver, backup_before_overwrite, restore, training_session
from persistkit.errors import IntegrityError, PersistIOError, UnsafeArchiveError
from persistkit.io import use_fs
from persistkit.naming import HIGH_WATER_NAME
from persistkit.testing.fs import CrashSimulator, Snapshot
from persistkit.testing.fs.recordfs import RecordingFS

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = sorted((ROOT / "fixtures" / "hostile").glob("archive_*.zip"))


@pytest.fixture
def workspace(tmp_path):
    ws = tmp_path / "ws"
    for d in ("logs/trades", "logs/tensorboard", "logs/empty", "models/checkpoints", "config"):
        (ws / d).mkdir(parents=True)
    (ws / "logs" / "training.log").write_text("step 1 loss 0.5\n" * 200)
    (ws / "logs" / "trades" / "trade_traces_20260101_000000.jsonl").write_text('{"id": 1}\n' * 100)
    np.save(ws / "models" / "weights.npy", np.random.default_rng(0).standard_normal(5000))
    np.savez(ws / "models" / "checkpoints" / "ckpt.npz", w=np.zeros(100))
    (ws / "config" / "config.json").write_text('{"steps_per_batch": 1000}')
    (ws / "model.pth").write_bytes(b"torch-ish bytes")
    (ws / "agent.pkl").write_bytes(b"pickle-ish bytes")
    (ws / "notes.txt").write_text("not a checkpoint")
    os.symlink("../config/config.json", ws / "logs" / "config_link")
    os.symlink("/etc/passwd", ws / "logs" / "outside_link")
    return ws


def manifest_of(path):
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("MANIFEST.json")), zf.infolist()


def test_layout_and_manifest(workspace):
    report = Archiver(workspace, sources=("logs", "models", "config", "missing")).create_report()
    assert report.path.parent == workspace / "archives"
    assert report.path.name.startswith("training_backup_") and report.path.suffix == ".zip"
    manifest, infos = manifest_of(report.path)
    names = {i.filename for i in infos}
    assert {
        "logs/training.log",
        "logs/trades/trade_traces_20260101_000000.jsonl",
        "models/weights.npy",
        "models/checkpoints/ckpt.npz",
        "config/config.json",
        "root_checkpoints/model.pth",
        "root_checkpoints/agent.pkl",
        "logs/empty/",
        "logs/tensorboard/",
        "MANIFEST.json",
    } <= names
    assert "root_checkpoints/notes.txt" not in names
    files = {e["path"]: e for e in manifest["files"]}
    assert files["logs/training.log"]["size"] == 3200 and len(files["logs/training.log"]["sha256"]) == 64
    assert manifest["source_root"] == str(workspace) and manifest["created"].endswith("+00:00")
    assert report.skipped_sources == ["missing"] and manifest["skipped_sources"] == ["missing"]
    # symlinks are recorded, never followed; one leaving the workspace is only noted
    assert files["logs/config_link"] == {
        "path": "logs/config_link",
        "kind": "symlink",
        "target": "../config/config.json",
    }
    assert files["logs/outside_link"]["kind"] == "external-symlink" and "logs/outside_link" not in names
    by_name = {i.filename: i for i in infos}
    assert by_name["models/checkpoints/ckpt.npz"].compress_type == zipfile.ZIP_STORED  # already compressed
    assert by_name["logs/training.log"].compress_type == zipfile.ZIP_DEFLATED


def test_unreadable_file_fails_naming_it_and_leaves_nothing(workspace):
    secret = workspace / "config" / "secret.json"
    secret.write_text("{}")
    secret.chmod(0)
    if os.access(secret, os.R_OK):  # root can read anything: take the read away another way
        secret.unlink()
        os.mkfifo(secret)
        pytest.skip("running as root: file permissions cannot make a file unreadable here")
    with pytest.raises(PersistIOError, match=r"secret\.json"):
        Archiver(workspace).create()
    assert not [p for p in (workspace / "archives").iterdir() if not p.name.startswith(".persistkit.lock")]


def test_unreadable_file_as_root_via_fault_injection(workspace):
    from persistkit.io.fs import LocalFS
    from persistkit.testing.fs.faultfs import FaultFS  # a read error: simulated at the open of that file

    class Unreadable(FaultFS):
        def open_read(self, path):
            if str(path).endswith("config.json"):
                raise PermissionError(13, "Permission denied", str(path))
            return super().open_read(path)

    with use_fs(Unreadable(LocalFS())), pytest.raises(PersistIOError, match=r"config\.json"):
        Archiver(workspace).create()
    # only the writer lock and the name high-water mark (persistkit.naming) may be there
    left = [p.name for p in (workspace / "archives").iterdir()]
    assert [n for n in left if not n.startswith(".persistkit.lock") and n != HIGH_WATER_NAME] == []


def test_verify_detects_a_flipped_byte_in_any_member(workspace):
    arc = Archiver(workspace)
    path = arc.create()
    _, infos = manifest_of(path)
    checked = 0
    for info in infos:
        if info.filename.endswith("/") or info.filename == "MANIFEST.json" or info.file_size == 0:
            continue
        data = bytearray(path.read_bytes())
        name_len, extra_len = (
            int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little"),
            int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little"),
        )
        start = info.header_offset + 30 + name_len + extra_len  # the member's data, per its local header
        data[start + info.compress_size // 2] ^= 0x01
        damaged = path.with_name("damaged.zip")
        damaged.write_bytes(bytes(data))
        report = arc.verify(damaged)
        assert not report.ok, f"flip in {info.filename} went unnoticed"
        assert any(info.filename in p for p in report.problems), report.problems
        checked += 1
    assert checked >= 6


def test_an_unknown_compression_method_is_reported_not_raised(workspace, tmp_path):
    """zipfile raises NotImplementedError for a method it does not know; verify/restore/prune must not."""
    arc = Archiver(workspace)
    path = arc.create()
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("logs/training.log")
    data[info.header_offset + 8 : info.header_offset + 10] = (99).to_bytes(2, "little")  # local header
    central = data.index(b"PK\x01\x02")
    while not data[central + 46 :].startswith(info.filename.encode()):
        central = data.index(b"PK\x01\x02", central + 4)
    data[central + 10 : central + 12] = (99).to_bytes(2, "little")  # central directory
    bad = arc.archive_dir / "training_backup_19990101T000000Z.zip"
    bad.write_bytes(bytes(data))
    report = arc.verify(bad)
    assert not report.ok and any("logs/training.log" in p for p in report.problems), report.problems
    with pytest.raises(UnsafeArchiveError, match=r"training\.log"):
        restore(bad, tmp_path / "restored")
    assert not (tmp_path / "restored").exists()
    arc.prune()  # reading its manifest raises inside zipfile; prune carries on
    assert path.exists()


@pytest.mark.parametrize("damage", ["method", "huge"])
def test_a_damaged_or_oversized_symlink_member_is_refused(tmp_path, damage):
    path = tmp_path / "links.zip"
    with zipfile.ZipFile(path, "w") as zf:
        link = zipfile.ZipInfo("link")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "target.txt" if damage == "method" else "a/" * 5000)
        zf.writestr("target.txt", "hello")
    data = bytearray(path.read_bytes())
    if damage == "method":  # a compression method zipfile does not know, in both headers
        data[data.index(b"PK\x01\x02") + 10 : data.index(b"PK\x01\x02") + 12] = (77).to_bytes(2, "little")
        data[8:10] = (77).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(UnsafeArchiveError, match="symlink member 'link' is damaged"):
        restore(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_retention_keeps_exactly_n_and_explains(workspace):
    arc = Archiver(workspace, keep=3)
    made = [arc.create() for _ in range(6)]
    assert arc.list() == made[-3:]
    foreign = workspace / "archives" / "training_backup_20000101_000000.zip"
    foreign.write_bytes(b"someone else's file")
    other = workspace / "archives" / "notes.txt"
    other.write_text("keep me")
    decisions = arc.prune(dry_run=True, policy=None)
    assert [d.keep for d in decisions] == [True, True, True, False]
    assert "no policy keeps it" in decisions[-1].describe()
    arc.prune()
    assert foreign.exists() and other.exists()  # not made by persistkit: never deleted


def test_prune_never_removes_an_archive_being_restored(workspace, tmp_path):
    from persistkit.policy.retention import KeepLast

    arc = Archiver(workspace, keep=5)
    oldest = arc.create()
    arc.create()
    Path(f"{oldest}.restoring").write_text(f"{os.getpid()}\n")  # a restore in progress (this pid is alive)
    decisions = {d.item.id: d for d in arc.prune(policy=KeepLast(1))}
    assert oldest.exists() and "being restored from" in decisions[oldest.name].describe()
    Path(f"{oldest}.restoring").unlink()
    arc.prune(policy=KeepLast(1))
    assert not oldest.exists()


def tree_of(path):
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, path)] = os.lstat(full).st_size
    return out


@pytest.mark.parametrize("sample", HOSTILE, ids=lambda p: p.stem)
def test_hostile_archives_are_rejected_with_nothing_outside_the_target(sample, tmp_path):
    box = tmp_path / "box"
    box.mkdir()
    before = tree_of(tmp_path)
    with pytest.raises(UnsafeArchiveError) as info:
        restore(sample, box / "restored")
    assert str(sample) in str(info.value) or info.value.member
    assert tree_of(tmp_path) == before, "the parent tree changed"
    assert not os.path.exists("/tmp/persistkit-evil.txt")


def test_restore_round_trips_files_dirs_and_internal_links(workspace, tmp_path):
    path = Archiver(workspace).create()
    out = restore(path, tmp_path / "restored")
    assert (out / "logs" / "training.log").read_text() == (workspace / "logs" / "training.log").read_text()
    assert (out / "logs" / "empty").is_dir()
    assert os.readlink(out / "logs" / "config_link") == "../config/config.json"
    assert not (out / "logs" / "outside_link").exists()
    with pytest.raises(PersistIOError, match="already exists"):
        restore(path, out)


def test_crash_during_create_and_prune_keeps_n_minus_1_valid_and_no_partial_valid(tmp_path):
    ws = tmp_path / "ws"
    (ws / "logs").mkdir(parents=True)
    (ws / "logs" / "a.log").write_text("x" * 5000)
    arc = Archiver(ws, keep=3)
    for _ in range(3):
        arc.create()
    before = Snapshot.take(ws)
    rec = RecordingFS()
    with use_fs(rec):
        arc.create()  # writes a fourth, verifies it, prunes the oldest
    sim = CrashSimulator(before, rec.ops)
    states = 0
    for model in ("process", "power-loss"):
        for state in sim.states(model):
            state.materialize(ws)
            archives = Archiver(ws, keep=3).list()
            valid = [p for p in archives if Archiver(ws).verify(p).ok]
            assert valid == archives, f"{state.description}: a partial archive looks like one"
            assert len(valid) >= 2, f"{state.description}: only {len(valid)} valid archives survive"
            states += 1
    assert states > 10
    print(f"\ncreate()+prune(): {states} crash states, all with >= 2 valid archives and no partial one")


def test_training_session_archives_on_entry_and_exit_even_on_error(workspace):
    with pytest.raises(RuntimeError, match="diverged"), training_session(workspace, keep=5) as session:
        assert session.initial_archive.exists()
        assert session.moved_logs is not None and (session.moved_logs / "training.log").exists()
        for sub in ("logs/trades", "logs/tensorboard", "models/checkpoints"):
            assert (workspace / sub).is_dir()
        (workspace / "logs" / "training.log").write_text("new session\n")
        raise RuntimeError("training diverged")
    assert session.final_archive is not None and session.final_archive != session.initial_archive
    manifest, _ = manifest_of(session.final_archive)
    assert "logs/training.log" in {e["path"] for e in manifest["files"]}


def test_training_session_without_archive_touches_nothing(workspace):
    before = tree_of(workspace)
    with training_session(workspace, archive=False) as session:
        assert session.archiver is None
    assert tree_of(workspace) == before


def test_training_session_archives_on_sigterm(workspace):
    script = (
        "import os, signal, time\n"
        "from persistkit.archive import training_session\n"
        f"with training_session({str(workspace)!r}) as s:\n"
        "    open(os.path.join(s.root, 'logs', 'training.log'), 'w').write('killed run\\n')\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 128 + 15, proc.stderr
    archives = Archiver(workspace).list()
    assert len(archives) == 2
    with zipfile.ZipFile(archives[-1]) as zf:
        assert zf.read("logs/training.log") == b"killed run\n"


def test_prepare_workspace_requires_a_verified_archive(workspace):
    with pytest.raises(IntegrityError, match="verified archive"):
        Archiver(workspace).prepare_workspace()


def test_backup_before_overwrite_keeps_newest(tmp_path):
    target = tmp_path / "model.pth"
    assert backup_before_overwrite(target) is None
    made = []
    for i in range(7):
        target.write_bytes(f"version {i}".encode())
        made.append(backup_before_overwrite(target, keep=3))
    backups = {p for p in (tmp_path / "backups").iterdir() if p.name != HIGH_WATER_NAME}
    assert len(backups) == 3 and backups == set(made[-3:])
    assert made[-1].read_bytes() == b"version 6"
    assert made[-1].name.startswith("model_") and made[-1].suffix == ".pth"


def test_cli_exit_codes(workspace, tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "persistkit", "archive", *args], capture_output=True, text=True
        )

    created = run("create", "--root", str(workspace))
    assert created.returncode == 0, created.stderr
    assert run("verify", "--root", str(workspace)).returncode == 0
    path = Archiver(workspace).list()[-1]
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("logs/training.log")
    data[info.header_offset + 30 + len(info.filename) + 8] ^= 0xFF  # inside the member's data
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(data))
    assert run("verify", "--root", str(workspace), str(bad)).returncode == 1
    assert run("restore", str(HOSTILE[0]), str(tmp_path / "x")).returncode == 1
    assert run("prune", "--keep", "0").returncode == 2
    dry = run("prune", "--root", str(workspace), "--keep", "1", "--dry-run")
    assert dry.returncode == 0 and "keep" in dry.stdout


def test_a_file_changing_while_archived_is_reported(workspace):
    from persistkit.io.fs import DelegatingFS, LocalFS

    class Growing(DelegatingFS):
        """Another process appends to the training log while the archiver reads it."""

        def open_read(self, path):
            handle = super().open_read(path)
            if str(path).endswith("training.log"):
                with open(path, "a") as f:
                    f.write("one more line\n")
            return handle

    with use_fs(Growing(LocalFS())):
        report = Archiver(workspace).create_report()
    assert report.changed_while_archiving == ["logs/training.log"]
    manifest, _ = manifest_of(report.path)
    entry = next(e for e in manifest["files"] if e["path"] == "logs/training.log")
    assert entry["changed"] is True and manifest["changed_while_archiving"] == ["logs/training.log"]


@pytest.mark.slow
def test_zip64_past_4_gib(tmp_path):
    ws = tmp_path / "ws"
    (ws / "models").mkdir(parents=True)
    big = ws / "models" / "huge.bin"
    with open(big, "wb") as f:
        f.truncate(4 * 1024**3 + 4096)  # sparse: cheap on disk, 4 GiB + 4 KiB of zeros to read
    arc = Archiver(ws)
    path = arc.create()
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("models/huge.bin")
        assert info.file_size == 4 * 1024**3 + 4096
    assert arc.verify(path).ok


def run_on_a_terminal(code):
    """Run ``code`` in a child whose stdout/stderr are a real pseudo-terminal; return what it drew."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=60)
    os.close(master)
    return proc.returncode, out.decode(errors="replace")


def test_progress_bar_on_a_terminal_and_silence_otherwise(tmp_path):
    ws = tmp_path / "ws"
    (ws / "logs").mkdir(parents=True)
    (ws / "logs" / "big.bin").write_bytes(os.urandom(3 << 20))
    code = f"from persistkit.archive import Archiver; Archiver({str(ws)!r}, progress=True).create()"
    returncode, drawn = run_on_a_terminal(code)
    assert returncode == 0
    assert "archiving" in drawn and "MB" in drawn  # bytes done / total, with an ETA column
    quiet = subprocess.run(
        [sys.executable, "-c", f"from persistkit.archive import Archiver; Archiver({str(ws)!r}).create()"],
        capture_output=True,
        text=True,
    )
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
