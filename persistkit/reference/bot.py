"""The reference trading bot: every component persisted through one StateStore.

    python -m persistkit.reference.bot --state-dir DIR --steps N [--autosave-every S] [--sync always|batch|none]

After each trade is durably journaled it prints ``ACK <trade_id> <balance>``;
on a signal it saves and prints ``SAVED <generation> <digest>``; at the end
``DONE <digest>``. Restarted on the same directory, it resumes where it was.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from typing import Any

import numpy as np
import xxhash

from persistkit.format import tree
from persistkit.reference.components import (
    REGIMES,
    AttentionWeights,
    DeepSignalModel,
    PriceFeed,
    QTable,
    RiskManager,
    SignalModel,
)
from persistkit.state import BoundedLog, StateStore

__all__ = ["Bot", "main", "make_bot"]

HISTORY = 10_000
# reconcile() replays journaled trades from the bounded history; checkpointing at least every
# HISTORY // 2 trades keeps every trade since the last checkpoint inside that history.
CHECKPOINT_EVERY_TRADES = HISTORY // 2
CLEANUP_EVERY = dt.timedelta(minutes=30)


class Bot:
    """One unit of work per ``step()``: a simulated minute; closing a trade returns it."""

    def __init__(self, store: StateStore, *, seed: int = 0, deep_every: int = 25) -> None:
        self.store = store
        self.feed = PriceFeed(seed)
        self.trades: BoundedLog[dict[str, Any]] = BoundedLog(HISTORY)
        self.equity: BoundedLog[tuple[dt.datetime, float]] = BoundedLog(HISTORY)
        self.risk = RiskManager()
        self.signal = SignalModel(seed)
        self.deep = DeepSignalModel(seed)
        self.qtable = QTable(seed)
        self.attention = AttentionWeights()
        self.position: dict[str, Any] | None = None
        self.next_id = 0
        self.last_cleanup: dt.datetime | None = None
        self.cleanups = 0
        self.deep_every = deep_every
        self.trades_since_checkpoint = 0  # not persisted: a restart begins with a checkpoint anyway
        store.register("feed", self.feed)
        store.register("analytics.trades", self.trades)
        store.register("analytics.equity", self.equity)
        store.register("risk", self.risk)
        store.register("signal_model", self.signal)
        store.register("deep_signal_model", self.deep)
        store.register("q_table", self.qtable)
        store.register("attention", self.attention)
        store.register("session", self)

    # the bot's own bookkeeping is a component too
    def state_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "next_id": self.next_id,
            "last_cleanup": self.last_cleanup,
            "cleanups": self.cleanups,
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.position, self.next_id = s["position"], s["next_id"]
        self.last_cleanup, self.cleanups = s["last_cleanup"], s["cleanups"]

    def reconcile(self) -> int:
        """Apply journaled trades the last checkpoint's other components have not seen yet."""
        applied = 0
        for trade in self.trades:
            if trade["id"] > self.risk.last_trade_id:
                self.risk.on_trade(trade)
                if not self.equity or self.equity[-1][0] < trade["closed"]:
                    self.equity.replay_append((trade["closed"], self.risk.balance))
                self.next_id = max(self.next_id, trade["id"] + 1)
                if self.position is not None and self.position["id"] <= trade["id"]:
                    self.position = None
                applied += 1
        return applied

    def regime(self, x: np.ndarray) -> str:
        if x[3] > 0.25:
            return REGIMES[2]
        return REGIMES[0] if abs(x[2]) > 0.3 else REGIMES[1]

    def step(self) -> dict[str, Any] | None:
        with self.store.atomic():
            price = self.feed.next()
            now = self.feed.now
            self.risk.tick(now)
            x = self.feed.features() * self.attention.weights * 4
            closed = None
            if self.position is not None:
                p = self.position
                held = (now - p["opened"]).total_seconds() / 60
                move = (price - p["entry"]) / p["entry"] * (1 if p["side"] == "long" else -1)
                if held >= p["hold"] or move < -0.01:
                    closed = self._close(price, now, move)
            elif self.risk.allows_trading() and len(self.feed.history) >= 17:
                prob = self.signal.probability_up(x)
                regime = self.regime(x)
                strategy = self.qtable.choose(regime)
                deep = (
                    self.deep.score(list(self.feed.history)) if self.next_id % self.deep_every == 0 else 0.0
                )
                lean = (prob - 0.5) + 0.1 * np.tanh(deep) + (x[0] if strategy == "momentum" else -x[0]) * 0.05
                if abs(lean) > 0.02:
                    self.position = {
                        "id": self.next_id,
                        "side": "long" if lean > 0 else "short",
                        "entry": price,
                        "opened": now,
                        "hold": int(5 + 10 * abs(lean) * 10) % 30 + 3,
                        "leverage": 2 if abs(lean) > 0.1 else 1,
                        "regime": regime,
                        "strategy": strategy,
                        "features": [float(v) for v in x],
                    }
                    self.next_id += 1
            if self.last_cleanup is None or now - self.last_cleanup >= CLEANUP_EVERY:
                self.cleanup(now)
            if closed is not None:
                self.trades_since_checkpoint += 1
                if self.trades_since_checkpoint >= CHECKPOINT_EVERY_TRADES:
                    self.store.save()
                    self.trades_since_checkpoint = 0
            return closed

    def _close(self, price: float, now: dt.datetime, move: float) -> dict[str, Any]:
        p = self.position
        assert p is not None
        pnl = round(self.risk.balance * 0.01 * p["leverage"] * move * 10, 8)
        trade = {
            "id": p["id"],
            "side": p["side"],
            "entry": p["entry"],
            "exit": price,
            "pnl": pnl,
            "opened": p["opened"],
            "closed": now,
            "duration": (now - p["opened"]).total_seconds(),
            "leverage": p["leverage"],
            "strategy": p["strategy"],
        }
        self.trades.append(trade)  # journaled: durable before we go on (sync="always")
        self.risk.on_trade(trade)
        self.equity.append((now, self.risk.balance))
        x = np.array(p["features"])
        self.signal.learn(x, (price > p["entry"]), pnl)
        if p["id"] % self.deep_every == 0:
            self.deep.learn(list(self.feed.history), float(np.sign(pnl)))
        self.qtable.update(p["regime"], p["strategy"], float(np.sign(pnl)))
        self.attention.update(x, float(np.sign(pnl)))
        self.position = None
        return trade

    def cleanup(self, now: dt.datetime) -> None:
        """Periodic housekeeping every 30 simulated minutes: decay stale Q-values, renormalise."""
        for key in self.qtable.q:
            self.qtable.q[key] *= 0.999
        self.attention.weights = self.attention.weights / self.attention.weights.sum()
        self.last_cleanup = now
        self.cleanups += 1

    def snapshot(self) -> dict[str, Any]:
        """Comparable plain data for every component (models by their fitted parameters)."""
        return {
            "feed": self.feed.state_dict(),
            "trades": list(self.trades),
            "equity": list(self.equity),
            "risk": self.risk.state_dict(),
            "signal_model": self.signal.fingerprint(),
            "deep_signal_model": {k: v.tolist() for k, v in self.deep.weights().items()},
            "q_table": self.qtable.state_dict(),
            "attention": self.attention.weights.tolist(),
            "session": self.state_dict(),
        }

    def digest(self) -> str:
        return xxhash.xxh3_128_hexdigest(tree.encode(self.snapshot()))


def make_bot(
    state_dir: str | os.PathLike[str], *, seed: int = 0, readonly: bool = False, **store_kw: Any
) -> Bot:
    """Open the bot's store, load it, reconcile journaled trades; ready to ``step()``."""
    store = StateStore(state_dir, readonly=readonly, **store_kw)
    bot = Bot(store, seed=seed)
    store.load()
    bot.reconcile()
    return bot


def _write(line: str) -> None:
    os.write(1, (line + "\n").encode())  # one write(2) per line: atomic on a pipe, never interleaved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m persistkit.reference.bot", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--state-dir",
        required=True,
        help="directory of the bot's state store (created; resumed if it exists)",
    )
    parser.add_argument(
        "--steps", type=int, default=1000, help="simulated minutes to run, then save and exit (default: 1000)"
    )
    parser.add_argument(
        "--autosave-every",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="checkpoint the whole store every SECONDS of wall-clock time (default: 300)",
    )
    parser.add_argument(
        "--sync",
        choices=("always", "batch", "none"),
        default="always",
        help="when journaled trades are fsynced: always (before each ACK), batch, or none (default: always)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated price feed (default: 0)")
    args = parser.parse_args(argv)
    bot = make_bot(args.state_dir, seed=args.seed, autosave_every=args.autosave_every, sync=args.sync)
    bot.store.on_final_save = lambda cp: _write(f"SAVED {cp.generation} {bot.digest()}")
    bot.store.start()
    _write(f"READY {bot.store.generation} {len(bot.trades)}")
    for _ in range(args.steps):
        trade = bot.step()
        if trade is not None:
            _write(f"ACK {trade['id']} {bot.risk.balance:.8f}")
    bot.store.close()
    _write(f"DONE {bot.digest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
