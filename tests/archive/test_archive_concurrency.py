"""Archiver writers in separate processes: one writer lock per archive directory (DirectoryLock)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from persistkit.archive import Archiver
from persistkit.errors import LockedError
from persistkit.io import DirectoryLock

ROOT = Path(__file__).resolve().parents[2]

CREATOR = """
import sys, time
from persistkit.archive import Archiver
root, start, count, keep = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
arc = Archiver(root, keep=keep)
while time.time() < start:
    time.sleep(0.001)
for _ in range(count):
    print(arc.create(), flush=True)
"""

PRUNER = """
import sys, time
from persistkit.archive import Archiver
root, start, until = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
arc = Archiver(root, keep=1)
while time.time() < start:
    time.sleep(0.001)
n = 0
while time.time() < until:
    arc.prune()
    n += 1
print(n)
"""


def spawn(code, *args):
    env = dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH") or str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws"
    (root / "logs").mkdir(parents=True)
    (root / "logs" / "training.log").write_text("step 1 loss 0.5\n" * 2000)
    return root


def test_creates_in_the_same_second_from_several_processes_are_all_kept(ws):
    start = time.time() + 2.0  # after every interpreter has started
    procs = [spawn(CREATOR, ws, start, 4, 100) for _ in range(3)]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    paths = [line for out, _ in outputs for line in out.split()]
    assert len(paths) == 12 and len(set(paths)) == 12, "two creates returned the same path"
    archives = Archiver(ws).list()
    assert sorted(map(str, archives)) == sorted(paths), "an archive that create() returned is gone"
    assert all(Archiver(ws).verify(p).ok for p in archives)


def test_a_concurrent_prune_never_breaks_a_create(ws):
    start = time.time() + 2.0
    pruner = spawn(PRUNER, ws, start, start + 6.0)
    creators = [spawn(CREATOR, ws, start, 20, 1) for _ in range(2)]  # each prunes the other's too
    for creator in creators:
        out, err = creator.communicate(timeout=120)
        assert creator.returncode == 0, err
        assert len(out.split()) == 20
    _, p_err = pruner.communicate(timeout=120)
    assert pruner.returncode == 0, p_err
    survivors = Archiver(ws).list()
    assert len(survivors) == 1 and Archiver(ws).verify(survivors[0]).ok


def test_a_held_lock_makes_create_wait_then_fail_with_lockederror(ws):
    holder = DirectoryLock(ws / "archives").acquire()  # this process holds it, through another fd
    try:
        script = (
            "import sys\n"
            "from persistkit.archive import Archiver\n"
            "from persistkit.errors import LockedError\n"
            f"arc = Archiver({str(ws)!r}, lock_timeout=0.5)\n"
            "try:\n"
            "    arc.create()\n"
            "except LockedError as err:\n"
            "    print(err.pid, err)\n"
            "    sys.exit(3)\n"
        )
        proc = spawn(script)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 3, err
        assert out.split()[0] == str(os.getpid()) and "archives" in out
        assert Archiver(ws).list() == []
    finally:
        holder.release()
    assert Archiver(ws).create().exists()


def test_lock_files_never_count_as_archives(ws):
    arc = Archiver(ws)
    arc.create()
    names = sorted(p.name for p in (ws / "archives").iterdir())
    assert any(n.startswith(".persistkit.lock") for n in names)
    assert len(arc.list()) == 1
    with pytest.raises(LockedError), DirectoryLock(ws / "archives"):
        Archiver(ws, lock_timeout=0).prune()
