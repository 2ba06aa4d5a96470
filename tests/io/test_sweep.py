"""One sweep of what dead writers left: temp files, restore directories and scratch files, by one rule.

Atomic writes, archive restores, archive pushes and pulls, state-store restores and model-store
publishes each kept a copy of "remove what writers that died left here"; they now all name their
debris by ``persistkit.naming`` (``writer_pid`` reads the pid back) and go through
``persistkit.io.atomic.sweep_dead_writers``, which never touches what a live writer (another process, or
a ``claim`` of this one) is filling.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

import persistkit as pk
from persistkit import naming
from persistkit.io.atomic import atomic_write, claim, sweep_dead_writers


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def debris(directory, pid):
    """One of each kind of name a writer leaves, as process ``pid`` would have named it."""
    names = {
        "temp": f".model.models.pk-tmp-{pid}-0123456789ab",
        "restore": f".restored.restore-{pid}-01234567",
        "pull": f".x.zip.pull-{pid}-01234567",
        "download": f".restored.download-{pid}-01234567.zip",
        "staging": f".publish.models.staging-{pid}-01234567",
    }
    for kind, name in names.items():
        assert naming.writer_pid(name) == pid, kind
        if kind == "restore":
            (directory / name / "logs").mkdir(parents=True)
            (directory / name / "logs" / "half.txt").write_text("half a restore")
        else:
            (directory / name).write_bytes(b"half")
    return names


def test_one_sweep_removes_every_kind_of_debris_of_dead_writers_and_nothing_live(tmp_path):
    (tmp_path / "dead").mkdir()
    (tmp_path / "alive").mkdir()
    dead = debris(tmp_path / "dead", dead_pid())
    debris(tmp_path / "alive", 1)  # init never dies: its names are never debris
    (tmp_path / "dead" / "keep.txt").write_text("not debris")
    mine = tmp_path / "dead" / naming.scratch_name("x.zip", "pull")
    mine.write_bytes(b"being pulled right now")
    with claim(mine):
        removed = sweep_dead_writers(tmp_path / "dead")
        assert mine.exists()  # claimed by a live writer of this process
    assert sorted(removed) == sorted(dead.values())
    assert sorted(p.name for p in (tmp_path / "dead").iterdir()) == sorted(["keep.txt", mine.name])
    assert sweep_dead_writers(tmp_path / "alive") == [] and len(list((tmp_path / "alive").iterdir())) == 5
    assert sweep_dead_writers(tmp_path / "dead") == [mine.name]  # unclaimed now: a caught crash's leftover


def test_every_writer_sweeps_through_it(tmp_path, s3_bucket):
    """An atomic write, an archive restore, a state-store restore and a model-store publish each clear
    the debris of dead writers where they write."""
    server, bucket = s3_bucket
    pid = dead_pid()
    (tmp_path / "a").mkdir()
    names = debris(tmp_path / "a", pid)
    atomic_write(tmp_path / "a" / "file", b"x")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["file"], names
    ws = tmp_path / "ws"
    (ws / "logs").mkdir(parents=True)
    (ws / "logs" / "t.log").write_text("x")
    archive = pk.Archiver(ws).create()
    (tmp_path / "b").mkdir()
    debris(tmp_path / "b", pid)
    pk.Archiver(ws).restore(archive, tmp_path / "b" / "restored")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["restored"]
    bot = pk.StateStore(tmp_path / "bot", autosave_every=None, backup_to=f"s3://{bucket}/bots/s",
                        backup_every=None, storage_options=server.storage_options)  # fmt: skip
    log = bot.register("log", pk.BoundedLog(10))
    bot.load()
    log.append(1)
    bot.close()
    (tmp_path / "c").mkdir()
    debris(tmp_path / "c", pid)
    pk.StateStore.restore_from(
        f"s3://{bucket}/bots/s", tmp_path / "c" / "bot", storage_options=server.storage_options
    )
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["bot"]
    store = pk.ModelStore(f"s3://{bucket}/models", cache_dir=tmp_path / "cache", key_file=tmp_path / "k",
                          storage_options=server.storage_options)  # fmt: skip
    staging = tmp_path / "cache" / ".staging"
    staging.mkdir(parents=True)
    debris(staging, pid)
    store.save({"w": np.zeros(1)}, symbol="BTC", agent="ppo", timeframe="1h")
    assert [p.name for p in staging.iterdir() if naming.writer_pid(p.name) is not None] == []
    assert os.listdir(staging) == []
