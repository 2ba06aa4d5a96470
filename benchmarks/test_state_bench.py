"""State store benchmarks: checkpoint vs pickle, journaled appends vs SQLite, crash-state throughput."""

from __future__ import annotations

import datetime as dt
import json
import os
import pickle
import random
import sqlite3

import pytest
from pkbench import tag

from persistkit.io import use_fs
from persistkit.reference.bot import make_bot
from persistkit.state import BoundedLog, StateStore
from persistkit.testing.fs import CrashSimulator, Snapshot
from persistkit.testing.fs.recordfs import RecordingFS

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def trade(i: int, rng: random.Random) -> dict:
    entry = rng.uniform(90, 110)
    return {
        "id": i,
        "side": rng.choice(("long", "short")),
        "entry": entry,
        "exit": entry * rng.uniform(0.98, 1.02),
        "pnl": rng.gauss(0, 5),
        "opened": T0 + dt.timedelta(minutes=3 * i),
        "closed": T0 + dt.timedelta(minutes=3 * i + 2),
        "duration": 120.0,
        "leverage": rng.choice((1, 2)),
        "strategy": rng.choice(("momentum", "mean_revert")),
    }


@pytest.fixture
def bot_after_trades(tmp_path, full_size):
    """The reference bot, run for real, then filled to 10,000 trades and equity points."""
    bot = make_bot(tmp_path / "bot", autosave_every=0, sync="none")
    for _ in range(1500):
        bot.step()
    rng = random.Random(7)
    n = 10_000 if full_size else 500
    start = bot.next_id
    for i in range(start, start + n):
        t = trade(i, rng)
        bot.trades.replay_append(t)  # bulk fill without journaling: this measures the checkpoint
        bot.equity.replay_append((t["closed"], 10_000 + i * 0.1))
        bot.risk.on_trade(t)
        bot.signal.examples.append(([rng.random() for _ in range(4)], rng.randint(0, 1)))
    bot.next_id = start + n
    yield bot
    bot.store.abandon()


def component_states(bot):
    return {
        name: component.state_dict() if hasattr(component, "state_dict") else component.__getstate__()
        for name, component in bot.store.components.items()
    }


@pytest.mark.benchmark(group="state-checkpoint")
def test_statestore_save(benchmark, bot_after_trades):
    bot = bot_after_trades

    def save():
        bot.store._last_digest = None  # force a real checkpoint every round
        return bot.store.save()

    cp = benchmark.pedantic(save, rounds=5, iterations=1, warmup_rounds=1)
    tag(
        benchmark,
        comparison="bot state after 10,000 trades: save time",
        role="persistkit",
        target="time<=1.5*pickle",
        bytes=cp.total_bytes,
    )
    benchmark.extra_info["comparison_size"] = "bot state after 10,000 trades: size"


@pytest.mark.benchmark(group="state-checkpoint")
def test_pickle_dump_state(benchmark, bot_after_trades, tmp_path):
    states = component_states(bot_after_trades)
    path = tmp_path / "state.pkl"

    def dump():
        with open(path, "wb") as f:
            pickle.dump(states, f, protocol=pickle.HIGHEST_PROTOCOL)

    benchmark.pedantic(dump, rounds=5, iterations=1, warmup_rounds=1)
    tag(
        benchmark,
        comparison="bot state after 10,000 trades: save time",
        role="pickle",
        bytes=os.path.getsize(path),
    )


@pytest.mark.benchmark(group="state-checkpoint")
def test_pickle_dump_fsync_rename(benchmark, bot_after_trades, tmp_path):
    """What a careful user writes for durability: pickle to a temp file, fsync, rename, fsync the dir."""
    states = component_states(bot_after_trades)
    path = tmp_path / "state.pkl"

    def dump():
        tmp = tmp_path / "state.pkl.tmp"
        with open(tmp, "wb") as f:
            pickle.dump(states, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(tmp_path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    benchmark.pedantic(dump, rounds=5, iterations=1, warmup_rounds=1)
    tag(benchmark, comparison="bot state after 10,000 trades: save time", role="pickle+fsync+rename")


def test_state_size_against_pickle(bot_after_trades, tmp_path, benchmark, full_size):
    """Sizes are compared directly (one row in RESULTS.md)."""
    bot = bot_after_trades
    bot.store._last_digest = None
    cp = bot.store.save()
    pickled = len(pickle.dumps(component_states(bot), protocol=pickle.HIGHEST_PROTOCOL))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    tag(
        benchmark,
        comparison="bot state after 10,000 trades: size",
        role="persistkit",
        target="size<=0.5*pickle",
        bytes=cp.total_bytes,
        anchor_bytes=pickled,
    )
    print(
        f"\nstate size: persistkit {cp.total_bytes} B, pickle {pickled} B, ratio {cp.total_bytes / pickled:.2f}"
    )
    if full_size:  # in the smoke run (500 trades) the fixed-size sklearn model dominates both
        assert cp.total_bytes <= 0.5 * pickled


@pytest.fixture
def journal(tmp_path):
    store = StateStore(tmp_path / "s", autosave_every=0, sync="always")
    log = store.register("trades", BoundedLog(10_000))
    store.load()
    yield store, log
    store.close()


@pytest.fixture
def sqlite_db(tmp_path):
    db = sqlite3.connect(tmp_path / "trades.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE trades (id INTEGER PRIMARY KEY, body TEXT)")
    yield db
    db.close()


@pytest.mark.benchmark(group="durable-append")
def test_boundedlog_append_always(benchmark, journal):
    _, log = journal
    rng = random.Random(1)
    counter = iter(range(10**9))
    benchmark.pedantic(
        lambda: log.append(trade(next(counter), rng)), rounds=200, iterations=1, warmup_rounds=5
    )
    tag(benchmark, comparison="durable append of one trade", role="persistkit", target="time<=1.0*sqlite")


@pytest.mark.benchmark(group="durable-append")
def test_sqlite_insert_commit(benchmark, sqlite_db):
    rng = random.Random(1)
    counter = iter(range(10**9))

    def insert():
        t = trade(next(counter), rng)
        sqlite_db.execute("BEGIN")
        sqlite_db.execute("INSERT INTO trades VALUES (?, ?)", (t["id"], json.dumps(t, default=str)))
        sqlite_db.execute("COMMIT")

    benchmark.pedantic(insert, rounds=200, iterations=1, warmup_rounds=5)
    tag(benchmark, comparison="durable append of one trade", role="sqlite")


BATCH = 1000


@pytest.mark.benchmark(group="batched-append")
def test_boundedlog_batch(benchmark, tmp_path):
    store = StateStore(tmp_path / "b", autosave_every=0, sync="batch", batch_ms=5)
    log = store.register("trades", BoundedLog(100_000))
    store.load()
    rng = random.Random(2)
    rows = [trade(i, rng) for i in range(BATCH)]

    def batch():
        for t in rows:
            log.append(t)
        store.flush()  # durable, like the COMMIT below

    benchmark.pedantic(batch, rounds=10, iterations=1, warmup_rounds=1)
    tag(
        benchmark,
        comparison=f"batched appends ({BATCH} trades, durable at the end)",
        role="persistkit",
        target="rate>=1.0*sqlite",
        records=BATCH,
    )
    store.close()


@pytest.mark.benchmark(group="batched-append")
def test_sqlite_executemany(benchmark, sqlite_db):
    rng = random.Random(2)
    rows = [trade(i, rng) for i in range(BATCH)]
    counter = iter(range(10**9))

    def batch():
        base = next(counter) * BATCH
        sqlite_db.execute("BEGIN")
        sqlite_db.executemany(
            "INSERT INTO trades VALUES (?, ?)",
            [(base + i, json.dumps(t, default=str)) for i, t in enumerate(rows)],
        )
        sqlite_db.execute("COMMIT")

    benchmark.pedantic(batch, rounds=10, iterations=1, warmup_rounds=1)
    tag(
        benchmark,
        comparison=f"batched appends ({BATCH} trades, durable at the end)",
        role="sqlite",
        records=BATCH,
    )


@pytest.mark.benchmark(group="crash-enumeration")
def test_crash_states_per_second(benchmark, tmp_path):
    store = StateStore(tmp_path / "c", autosave_every=0)
    log = store.register("log", BoundedLog(100))
    counter = {"n": 0}

    class C:
        def state_dict(self):
            return {"n": counter["n"]}

        def load_state_dict(self, s):
            counter["n"] = s["n"]

    store.register("c", C())
    store.load()
    log.append(1)
    before = Snapshot.take(tmp_path / "c")
    rec = RecordingFS()
    counter["n"] = 1
    with use_fs(rec):
        store.save()
    store.abandon()
    sim = CrashSimulator(before, rec.ops)
    states = benchmark.pedantic(lambda: sum(1 for _ in sim.states("power-loss")), rounds=5, iterations=1)
    tag(
        benchmark,
        comparison="crash-state enumeration of StateStore.save() (power loss)",
        role="persistkit",
        target="report",
        states=states,
    )
    print(f"\n{states} states enumerated")
