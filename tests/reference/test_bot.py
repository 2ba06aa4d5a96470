"""The reference bot over real processes: lifecycle, SIGTERM, and a SIGKILL storm."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import pytest

from persistkit.reference.bot import make_bot
from persistkit.state import BoundedLog, StateStore
from persistkit.testing.forkserver import ForkServer, kill_cycle


def test_lifecycle_every_component_equal_after_restart(tmp_path):
    bot = make_bot(tmp_path / "bot", autosave_every=0)
    trades = [t for t in (bot.step() for _ in range(1500)) if t]
    assert len(trades) > 20 and bot.signal.fitted and bot.cleanups >= 40
    before = bot.snapshot()
    bot.store.close()
    again = make_bot(tmp_path / "bot", readonly=True)
    after = again.snapshot()
    for name in before:
        assert after[name] == before[name], f"component {name} differs after restart"
    assert again.digest() == bot.digest()


def test_restart_resumes_and_reconciles_journaled_trades(tmp_path):
    bot = make_bot(tmp_path / "bot", autosave_every=0)
    for _ in range(300):
        bot.step()
    bot.store.save()
    risk_at_checkpoint = bot.risk.total_trades
    while bot.risk.total_trades < risk_at_checkpoint + 5:
        bot.step()
    expected = bot.risk.state_dict()
    bot.store.abandon()  # dies without a final save: the risk manager's newest state is lost
    again = make_bot(tmp_path / "bot", readonly=True)
    assert again.risk.state_dict()["total_trades"] == expected["total_trades"]
    assert again.risk.balance == pytest.approx(expected["balance"], abs=1e-9)
    assert [t["id"] for t in again.trades][-5:] == [t["id"] for t in bot.trades][-5:]


def run_bot(state_dir, *extra):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "persistkit.reference.bot",
            "--state-dir",
            str(state_dir),
            "--steps",
            "10000000",
            *extra,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_sigterm_saves_exactly_the_state_at_the_signal(tmp_path):
    state = tmp_path / "bot"
    proc = run_bot(state, "--autosave-every", "0.2")
    acks = []
    try:
        assert proc.stdout.readline().startswith("READY")
        while len(acks) < 30:
            line = proc.stdout.readline()
            assert line.startswith("ACK"), line
            acks.append(line.split())
        proc.send_signal(signal.SIGTERM)
        saved = None
        for line in proc.stdout:
            if line.startswith("ACK"):
                acks.append(line.split())
            if line.startswith("SAVED"):
                saved = line.split()
        code = proc.wait(timeout=30)
    finally:
        proc.kill() if proc.poll() is None else None
        proc.stdout.close()
    assert saved is not None, "no final save on SIGTERM"
    assert code == -signal.SIGTERM  # the default action ran after the save
    restarted = make_bot(state, readonly=True)
    assert restarted.digest() == saved[2], "state after restart differs from the state saved at the signal"
    ids = {t["id"] for t in restarted.trades}
    assert all(int(a[1]) in ids for a in acks)
    assert restarted.risk.balance == pytest.approx(float(acks[-1][2]), abs=1e-6)


def acked_trades_present(state_dir, acks) -> int:
    store = StateStore(state_dir, readonly=True)
    trades = store.register("analytics.trades", BoundedLog(10_000))
    store.load()
    ids = {t["id"] for t in trades}
    if not acks:
        return len(ids)
    # the history keeps the newest 10,000 trades: older acknowledged ones were evicted by design
    oldest_kept = min(ids)
    missing = [a for a in acks if a >= oldest_kept and a not in ids]
    assert not missing and max(acks) <= max(ids), f"acknowledged trades lost: {missing[:10]}"
    assert len(ids) <= 10_000
    return len(ids)


def storm(tmp_path, kills, seed=1234):
    """Kill the bot ``kills`` times. A quarter of the kills land during start-up (timed from the
    fork); the rest land a random moment after READY and one or two ACKs, timed from what the bot
    printed, so that the bot's progress is certain on a loaded machine, not likely on an idle one."""
    state = tmp_path / "bot"
    rng = random.Random(seed)
    acked: list[int] = []
    load_errors = []
    waited = 0
    start = time.perf_counter()
    with ForkServer(["persistkit.reference.preload"]) as server:
        for cycle in range(kills):
            during_start = rng.random() < 0.25
            acks = 0 if during_start else rng.choice((1, 2))
            waited += acks
            code, lines = kill_cycle(
                server,
                "persistkit.reference.bot:main",
                ["--state-dir", str(state), "--steps", "10000000", "--sync", "always"],
                after=rng.uniform(0.0, 0.1) if during_start else rng.uniform(0.0, 0.25),
                ready=None if during_start else "READY",
                acks=acks,
            )
            assert code == -9, f"cycle {cycle}: child exited with {code}: {lines[-3:]}"
            load_errors += [line for line in lines if line.startswith("ERROR")]
            acked += [int(line.split()[1]) for line in lines if line.startswith("ACK ")]
            acked_trades_present(state, acked)
    assert load_errors == []
    elapsed = time.perf_counter() - start
    print(
        f"\nSIGKILL storm: {kills} kills, {len(acked)} acknowledged trades, 0 lost, 0 load errors, "
        f"{elapsed / kills * 1000:.0f} ms per cycle"
    )
    assert len(acked) >= waited > kills // 2  # the ACKs each cycle waited for did come
    return acked


def test_sigkill_storm_loses_no_acknowledged_trade(tmp_path):
    storm(tmp_path, kills=100)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_sigkill_storm_1000(tmp_path):
    storm(tmp_path, kills=1000, seed=99)


def test_bot_checkpoints_before_its_history_can_outrun_reconcile(tmp_path, monkeypatch):
    import persistkit.reference.bot as botmod

    monkeypatch.setattr(botmod, "CHECKPOINT_EVERY_TRADES", 5)  # small, to see it happen quickly
    bot = make_bot(tmp_path / "bot", autosave_every=0)
    start = bot.store.generation
    closed = 0
    while closed < 12:
        closed += bot.step() is not None
    assert bot.store.generation >= start + 2  # two checkpoints for 12 trades at every 5
    bot.store.close()


def test_help_describes_every_option():
    out = subprocess.run(
        [sys.executable, "-m", "persistkit.reference.bot", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for option, says in [
        ("--state-dir", "directory of the bot's state store"),
        ("--steps", "simulated minutes to run"),
        ("--autosave-every", "checkpoint the whole store every SECONDS"),
        ("--sync", "when journaled trades are fsynced"),
        ("--seed", "seed of the simulated price feed"),
    ]:
        assert option in text and says in text, (option, out.stdout)
