"""Targets for `persistkit check` in tests: a small ledger app, and one that forgets a field.

Not a test module: the check command imports it by name (``check_targets:make_ledger``),
in this process and in its child processes (the test puts this directory on PYTHONPATH).
"""

from __future__ import annotations

from persistkit.state import BoundedLog, StateStore


class Totals:
    def __init__(self):
        self.count = 0
        self.total = 0

    def add(self, entry):
        self.count += 1
        self.total += entry["amount"]

    def state_dict(self):
        return {"count": self.count, "total": self.total}

    def load_state_dict(self, state):
        self.count, self.total = state["count"], state["total"]


class ForgetfulTotals(Totals):
    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


class Ledger:
    totals_class = Totals

    def __init__(self, store):
        self.store = store
        # Large enough that no journaled entry is evicted before a checkpoint has seen it: with a
        # small bound, reconcile() after a crash would miss entries (the SIGKILL storm catches that).
        self.entries = store.register("entries", BoundedLog(100_000))
        self.totals = store.register("totals", self.totals_class())

    def reconcile(self):
        """Apply journaled entries the last checkpoint of the totals has not seen."""
        for entry in self.entries:
            if entry["id"] >= self.totals.count:
                self.totals.add(entry)

    def step(self):
        with self.store.atomic():
            entry = {"id": self.totals.count, "amount": self.totals.count % 7}
            self.entries.append(entry)
            self.totals.add(entry)
            return entry

    def snapshot(self):
        return {"entries": list(self.entries), "totals": self.totals.state_dict(), "sum": self.totals.total}


class ForgetfulLedger(Ledger):
    totals_class = ForgetfulTotals


def _open(cls, state_dir, readonly, store_kw):
    store = StateStore(state_dir, readonly=readonly, **store_kw)
    app = cls(store)
    store.load()
    app.reconcile()
    return app


def make_ledger(state_dir, *, readonly=False, **store_kw):
    return _open(Ledger, state_dir, readonly, store_kw)


def make_forgetful_ledger(state_dir, *, readonly=False, **store_kw):
    return _open(ForgetfulLedger, state_dir, readonly, store_kw)


class Tally:
    """A bare Persistent component with a step(): the other kind of TARGET (zero-argument factory)."""

    def __init__(self):
        self.count = 0
        self.last = None

    def step(self):
        self.count += 1
        self.last = f"step-{self.count}"

    def state_dict(self):
        return {"count": self.count, "last": self.last}

    def load_state_dict(self, state):
        self.count, self.last = state["count"], state["last"]


def make_tally():
    return Tally()
