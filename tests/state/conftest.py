from __future__ import annotations

import pytest

from persistkit.state import BoundedLog, StateStore


class Counter:
    """A plain Persistent component."""

    def __init__(self) -> None:
        self.value = 0
        self.history: list[int] = []

    def state_dict(self):
        return {"value": self.value, "history": list(self.history)}

    def load_state_dict(self, state):
        self.value = state["value"]
        self.history = list(state["history"])


class Pair:
    """A component using __getstate__/__setstate__ instead."""

    def __init__(self) -> None:
        self.a = 0
        self.b = "x"

    def __getstate__(self):
        return {"a": self.a, "b": self.b}

    def __setstate__(self, state):
        self.a, self.b = state["a"], state["b"]


def open_store(directory, *, readonly=False, **kw):
    store = StateStore(directory, readonly=readonly, autosave_every=0, **kw)
    parts = {"counter": Counter(), "pair": Pair(), "log": BoundedLog(5)}
    for name, comp in parts.items():
        store.register(name, comp)
    report = store.load()
    return store, parts, report


@pytest.fixture
def store_dir(tmp_path):
    return tmp_path / "store"
