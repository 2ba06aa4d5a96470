"""persistkit.naming: stamped names are unique and monotonic across processes and after pruning; names fit."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
from processes import run_workers

from persistkit import naming
from persistkit.archive import backup_before_overwrite
from persistkit.io.names import allocate
from persistkit.model_store import ModelStore
from persistkit.naming import (
    NAME_MAX,
    Stamped,
    is_temp_name,
    temp_name_for,
)

ROOT = Path(__file__).resolve().parents[1]
WHERE = {"symbol": "BTC/USDT", "agent": "ppo", "timeframe": "1h"}
T0 = dt.datetime(2024, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
ctx = multiprocessing.get_context("fork")


def test_a_pruned_name_is_never_reused_and_latest_is_the_last_saved(tmp_path):
    store = ModelStore(tmp_path)
    for n in range(3):
        store.save({"q": np.full(2, float(n))}, **WHERE, when=T0)
    store.prune(keep=1)
    newest = store.save({"q": np.full(2, 9.0)}, **WHERE, when=T0)
    assert store.latest(**WHERE) == newest
    assert store.load_latest(**WHERE)["q"].tolist() == [9.0, 9.0]
    assert store.prune(keep=1) != [newest] and newest.path.exists()


def test_names_only_go_up_even_when_the_clock_steps_back(tmp_path):
    family = Stamped("run_", ".zip")
    first = allocate(tmp_path, family)
    (tmp_path / first).write_bytes(b"")
    stamp, _ = family.sort_key(first)
    future = stamp[:-6] + "235959"  # the same day, later than now (an earlier clock wrote it)
    (tmp_path / family.name(future, 3)).write_bytes(b"")
    nxt = allocate(tmp_path, family)
    assert family.sort_key(nxt) == (future, 4)
    (tmp_path / family.name(future, 3)).unlink()  # pruned: the high-water mark remembers it
    assert family.sort_key(allocate(tmp_path, family)) == (future, 5)


def _save_and_prune(root, worker, saves, results):
    store = ModelStore(root)
    mine = []
    for n in range(saves):
        path = store.save({"q": np.full(2, float(worker * 1000 + n))}, **WHERE)
        mine.append(str(path))
        store.prune(keep=1)
    results.put((worker, mine))


def test_concurrent_savers_that_prune_never_reuse_a_name(tmp_path):
    """A kill-storm-like churn: 4 real processes save and prune one group as fast as they can."""
    workers, saves = 4, 12
    results = ctx.Queue()
    arguments = [(tmp_path, w, saves, results) for w in range(workers)]
    got = dict(run_workers(ctx, _save_and_prune, arguments, results, timeout=300))
    every = [path for paths in got.values() for path in paths]
    assert len(set(every)) == workers * saves, "a name was handed out twice"
    family = Stamped("", ".models", "%Y-%m-%d_%H%M%S")
    for paths in got.values():
        keys = [family.sort_key(os.path.basename(p)) for p in paths]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)  # each process's names only go up
    last = max(every, key=lambda p: family.sort_key(os.path.basename(p)))
    store = ModelStore(tmp_path)
    assert str(store.latest(**WHERE)) == last
    assert store.load_latest(**WHERE)["q"].tolist() == np.full(2, float(got_value(got, last))).tolist()


def got_value(got, path):
    for worker, paths in got.items():
        if path in paths:
            return worker * 1000 + paths.index(path)
    raise AssertionError(path)


def _backup(target, barrier, results):
    barrier.wait()
    results.put(str(backup_before_overwrite(target, keep=50)))


def test_concurrent_backups_of_one_file_get_distinct_names(tmp_path):
    target = tmp_path / "model.pth"
    target.write_bytes(b"weights")
    collisions = 0
    for _trial in range(10):
        barrier, results = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=_backup, args=(target, barrier, results)) for _ in range(3)]
        for p in procs:
            p.start()
        made = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        collisions += len(made) - len(set(made))
    assert collisions == 0
    assert len([p for p in (tmp_path / "backups").iterdir() if p.suffix == ".pth"]) == 30


@pytest.mark.parametrize("length", [200, 240, NAME_MAX])
def test_derived_names_fit_name_max_whenever_the_target_fits(length):
    target = "é" * (length // 2) + "x" * (length % 2)
    assert len(target.encode()) == length
    assert len(temp_name_for(target).encode()) <= NAME_MAX
    assert is_temp_name(temp_name_for(target))


_SAVER = """
import sys, time
import numpy as np
from persistkit.model_store import ModelStore
store = ModelStore(sys.argv[1])
log = open(sys.argv[2], "a")
print("ready", flush=True)
while True:
    value = time.time_ns()
    path = store.save({"q": np.array([value])}, symbol="BTC/USDT", agent="ppo", timeframe="1h")
    log.write(f"{value} {path}\\n")
    log.flush()
    store.prune(keep=1)
"""


def test_kill_storm_never_reuses_a_name_and_latest_is_the_newest(tmp_path):
    """A saver that saves and prunes as fast as it can is SIGKILLed at random moments, again and again.

    After each kill: no name was handed out twice, and load_latest is at least the last save that returned.
    """
    import random
    import subprocess
    import sys
    import time

    rng = random.Random(7)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    root, log = tmp_path / "models", tmp_path / "saved.log"
    log.touch()
    store = ModelStore(root)
    problems = []
    for cycle in range(12):
        child = subprocess.Popen(
            [sys.executable, "-c", _SAVER, str(root), str(log)], stdout=subprocess.PIPE, text=True, env=env
        )
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        # at least one save per cycle, however loaded the machine, then a kill at a random moment
        before = len(log.read_text().splitlines())
        deadline = time.monotonic() + 60
        while len(log.read_text().splitlines()) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.6))
        child.kill()
        child.wait(timeout=60)
        child.stdout.close()
        saved = [line.split() for line in log.read_text().splitlines() if line.strip()]
        names = [os.path.basename(path) for _, path in saved]
        if len(names) != len(set(names)):
            problems.append(f"cycle {cycle}: a name was handed out twice")
        if saved and int(store.load_latest(**WHERE)["q"][0]) < int(saved[-1][0]):
            problems.append(f"cycle {cycle}: load_latest is older than the last save that returned")
    assert len(saved) >= 12  # the storm really saved and pruned, every cycle
    assert problems == []


def test_backup_before_overwrite_keeps_the_newest_through_retention(tmp_path):
    target = tmp_path / "model.pth"
    target.write_bytes(b"v0")
    made = [backup_before_overwrite(target, keep=2) for _ in range(4)]
    left = sorted(p.name for p in (tmp_path / "backups").iterdir() if not p.name.startswith("."))
    assert left == sorted(p.name for p in made[-2:])


# -- generation, quarantine and restore names: one rule that writers and readers share ------------------


@pytest.mark.parametrize("n", [1, 7, 999_999, 1_000_000])
def test_every_generation_name_persistkit_makes_parses_back(n):
    made = {
        "committed": naming.gen_name(n),
        "tmp": naming.gen_temp_name(n),
        "retired": naming.gen_retired_name(n),
        "corrupt": naming.quarantine_name(naming.gen_name(n)),
    }
    for state, name in made.items():
        assert naming.parse_generation(name) == naming.GenerationName(n, state), name
        assert naming.generation_state(name) == state and naming.generation_number(name) == n
    assert naming.gen_temp_name(n) != naming.gen_temp_name(n)  # two writers never share a temp directory
    copy = naming.quarantine_name(f"{naming.gen_name(n)}.trades.journal")
    assert naming.is_quarantined(copy) and naming.generation_number(copy) == n
    assert naming.parse_generation(copy) is None  # a quarantined file is not a generation directory


@pytest.mark.parametrize(
    "name",
    ["gen-1", "gen-00001", "gen-000001.tmp-XYZ", "gen-000001.tmp-", "gen-000001.old", "xgen-000001", ""],
)
def test_names_that_are_not_generations(name):
    assert naming.parse_generation(name) is None and naming.generation_state(name) is None


def test_quarantine_names_sort_by_when_they_were_made():
    early = naming.quarantine_name("CURRENT", dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC))
    late = naming.quarantine_name("CURRENT", dt.datetime(2024, 1, 2, 3, 4, 5, 7, tzinfo=dt.UTC))
    assert early < late and early.startswith("CURRENT.corrupt-") and naming.is_quarantined(early)


def test_the_names_a_real_store_writes_are_the_ones_naming_reads(tmp_path):
    import persistkit as pk
    from persistkit.state import generations as gens

    where = tmp_path / "store"
    with pk.StateStore(where, autosave_every=0, keep_generations=2) as store:
        counter = store.register("counter", {"n": 0})  # a plain dict is its own state
        store.load()
        for _ in range(4):
            counter["n"] += 1
            store.save()
    names = os.listdir(where)
    committed, leftovers = gens.list_generations(str(where))
    assert leftovers == [] and len(committed) == 2
    assert sorted(n for n in names if naming.generation_state(n) == "committed") == [
        naming.gen_name(x) for x in committed
    ]
    newest = where / naming.gen_name(committed[-1])
    (newest / "counter.pk").write_bytes(b"damaged")  # the next load quarantines it, never deletes it
    with pytest.warns(pk.StateRecoveredWarning), pk.StateStore(where, autosave_every=0) as store:
        counter = store.register("counter", {"n": 0})
        store.load()
    corrupt = [n for n in os.listdir(where) if naming.generation_state(n) == "corrupt"]
    assert [naming.generation_number(n) for n in corrupt] == [committed[-1]] and counter["n"] == 3
    after, _ = gens.list_generations(
        str(where)
    )  # closing saved again: under a new number, never the quarantined one
    assert (
        committed[-1] not in after
        and gens.highest_generation_number(str(where)) == max(after) > committed[-1]
    )


def test_restore_temp_names_carry_the_target_and_the_pid():
    name = naming.restore_temp_name("restored")
    assert naming.parse_restore_temp(name) == ("restored", os.getpid())
    assert naming.parse_restore_temp("restored") is None
    assert naming.parse_restore_temp(".restored.restore-12-zz") is None
    assert naming.restoring_marker(Path("a/b.zip")) == "a/b.zip.restoring"
