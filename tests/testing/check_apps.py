"""More ``persistkit check`` targets for tests/testing/test_battery.py (imported by name, not a test module)."""

from __future__ import annotations

import os

from check_targets import Ledger, _open

from persistkit.reference.wallet import Wallet
from persistkit.state import BoundedLog, StateStore


def make_ledger_without_readonly(state_dir):
    """A store app whose factory takes no readonly=: check reads copies of its state dir."""
    return _open(Ledger, state_dir, False, {})


class Tape:
    """Only a journaled log: ids continue from the log's last record, so they stay unique and durable.

    Two of every three records are written but never acknowledged, so a full log evicts
    acknowledged ids to make room for unacknowledged ones.
    """

    def __init__(self, store, maxlen):
        self.store = store
        self.log = store.register("tape", BoundedLog(maxlen))

    def step(self):
        with self.store.atomic():
            n = self.log[-1]["id"] + 1 if self.log else 0
            record = {"id": n}
            self.log.append(record)
            return record if n % 3 == 0 else None


def make_full_tape(state_dir, *, readonly=False, **store_kw):
    store = StateStore(state_dir, readonly=readonly, **store_kw)
    app = Tape(store, 30)
    store.load()
    return app


class Stamps(Tape):
    """Ids from the length of a bounded log: once the log is full, every id is the same."""

    def step(self):
        with self.store.atomic():
            record = {"id": len(self.log)}
            self.log.append(record)
            return record


def make_stamps(state_dir, *, readonly=False, **store_kw):
    store = StateStore(state_dir, readonly=readonly, **store_kw)
    app = Stamps(store, 20)
    store.load()
    return app


class Counter:
    """Neither shape: no .store, and no save()."""

    def __init__(self, state_dir):
        self.n = 0

    def step(self):
        self.n += 1


def make_counter(state_dir):
    return Counter(state_dir)


class CarelessWallet(Wallet):
    """Writes wallet.json in place: a crash mid-save leaves a torn file."""

    def save(self):
        import hashlib
        import json

        body = json.dumps(self.snapshot(), sort_keys=True)
        with open(self.path, "w") as f:
            f.write(json.dumps({"sha256": hashlib.sha256(body.encode()).hexdigest(), "state": body}))
            f.flush()
            os.fsync(f.fileno())


def make_careless_wallet(state_dir):
    return CarelessWallet(state_dir)


class NeverWrites:
    """A plain app whose save() forgot to write anything (and whose steps write nothing either)."""

    def __init__(self, state_dir):
        self.n = 0

    def step(self):
        self.n += 1

    def save(self):
        pass

    def snapshot(self):
        return {"n": self.n}


def make_never_writes(state_dir):
    return NeverWrites(state_dir)
