"""A small trading bot, written the way a team writes one: a sqlite3 ledger kept open, and a JSON file.

    persistkit check tests.apps.sqlite_ledger:open_bot --exclude ledger.db

Each ``step()`` is one trade: it is committed to ``ledger.db`` at once (the
connection stays open for the bot's life; ``journal_mode=PERSIST`` and
``synchronous=FULL``, see below) and returned as ``{"id": <trade id>}``: the
bot saves as it goes. ``save()`` writes the positions per symbol to
``positions.json`` with ``Path.write_text`` (a temp file, fsynced, renamed,
directory fsynced), stamped with the id of the last trade it covers and a
sha256 of its body. On start the bot re-applies ledger trades newer than that
stamp, so positions are never behind the ledger.

SQLite keeps no checksums, so damage to ``ledger.db`` can load as different
data without an error: check it with ``--exclude ledger.db`` and know that risk.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

SYMBOLS = ("BTC", "ETH", "SOL", "ADA")


class LedgerBot:
    def __init__(self, state_dir: str) -> None:
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.positions_path = self.dir / "positions.json"
        self.db = sqlite3.connect(self.dir / "ledger.db", isolation_level=None)
        # PERSIST: a commit zeroes and fsyncs the journal's header. In the default DELETE mode the
        # commit is the journal's deletion, and SQLite ignores a failed fsync of the directory
        # after it (disk_faults shows the commit then returns although it may not be durable).
        self.db.execute("PRAGMA journal_mode=PERSIST")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS trades (id INTEGER PRIMARY KEY, symbol TEXT, qty INTEGER)"
        )
        self.positions: dict[str, int] = {}
        self.as_of = 0
        if self.positions_path.exists():
            self._load_positions()
        self._catch_up()

    def _catch_up(self) -> None:
        """Apply the ledger's trades newer than the positions; continue after its last id."""
        for trade_id, symbol, qty in self.db.execute(
            "SELECT id, symbol, qty FROM trades WHERE id > ? ORDER BY id", (self.as_of,)
        ):
            self._apply(trade_id, symbol, qty)
        (last,) = self.db.execute("SELECT coalesce(max(id), 0) FROM trades").fetchone()
        self.next_id = last + 1

    def _apply(self, trade_id: int, symbol: str, qty: int) -> None:
        self.positions[symbol] = self.positions.get(symbol, 0) + qty
        self.as_of = trade_id

    def step(self) -> dict[str, int]:
        trade_id = self.next_id
        symbol = SYMBOLS[(trade_id * 7) % len(SYMBOLS)]
        qty = (trade_id % 5) - 2 or 3
        self.db.execute("BEGIN")
        try:
            self.db.execute("INSERT INTO trades VALUES (?, ?, ?)", (trade_id, symbol, qty))
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            self._catch_up()  # a failed COMMIT may still have committed: the ledger decides
            raise
        self._apply(trade_id, symbol, qty)
        self.next_id += 1
        return {"id": trade_id}

    def snapshot(self) -> dict[str, object]:
        trades = self.db.execute("SELECT id, symbol, qty FROM trades ORDER BY id").fetchall()
        return {"trades": trades, "positions": dict(self.positions), "as_of": self.as_of}

    def save(self) -> None:
        body = json.dumps({"positions": self.positions, "as_of": self.as_of}, sort_keys=True)
        doc = json.dumps({"sha256": hashlib.sha256(body.encode()).hexdigest(), "body": body})
        tmp = self.positions_path.with_name("positions.json.tmp")
        try:
            tmp.write_text(doc)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            tmp.replace(self.positions_path)
        finally:
            tmp.unlink(missing_ok=True)
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _load_positions(self) -> None:
        doc = json.loads(self.positions_path.read_text())
        body = doc["body"]
        if hashlib.sha256(body.encode()).hexdigest() != doc["sha256"]:
            raise ValueError(
                f"{self.positions_path} is damaged (sha256 mismatch); rebuild it from the ledger"
            )
        state = json.loads(body)
        self.positions, self.as_of = dict(state["positions"]), int(state["as_of"])

    def close(self) -> None:
        self.db.close()


def open_bot(state_dir: str) -> LedgerBot:
    return LedgerBot(state_dir)
