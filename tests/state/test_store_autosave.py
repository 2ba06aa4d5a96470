"""The autosave thread follows its AutosaveCadence: backoff after failed saves, off when 0."""

from __future__ import annotations

import threading
import time

import pytest

from persistkit.errors import UnsupportedTypeError
from persistkit.policy.autosave import AutosaveCadence
from persistkit.state import StateStore


class Flaky:
    """Records when the store asked for its state; unencodable while ``broken``."""

    def __init__(self) -> None:
        self.value = 0
        self.broken = False
        self.asked: list[float] = []
        self.lock = threading.Lock()

    def state_dict(self):
        with self.lock:
            self.asked.append(time.monotonic())
        return {"value": self.value, "bad": object() if self.broken else None}

    def load_state_dict(self, state):
        self.value = state["value"]


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_failed_autosave_is_retried_sooner_than_the_interval(tmp_path):
    comp = Flaky()
    store = StateStore(tmp_path / "s", autosave_every=AutosaveCadence(every=1.0, retry_after=0.02))
    store.register("flaky", comp)
    store.load()
    comp.broken, comp.value = True, 1
    comp.asked.clear()
    store.start(signals=False)
    assert wait_for(lambda: len(comp.asked) >= 3)
    assert isinstance(store.last_error, UnsupportedTypeError) and "flaky" in str(store.last_error)
    first, second = comp.asked[0], comp.asked[1]
    assert second - first < 0.5  # a retry, not the next 1-second tick
    gen = store.generation
    comp.broken = False  # the disk has room again, so to speak
    assert wait_for(lambda: store.last_error is None and store.generation != gen)
    store.close()
    reader = StateStore(tmp_path / "s", readonly=True)
    again = reader.register("flaky", Flaky())
    reader.load()
    assert again.value == 1


def test_zero_or_none_starts_no_autosave_thread(tmp_path):
    for value in (0, None):
        store = StateStore(tmp_path / f"s{value}", autosave_every=value)
        store.register("flaky", Flaky())
        store.start(signals=False)
        assert store.cadence is None and store._autosave is None
        store.close()


def test_invalid_autosave_interval_is_refused(tmp_path):
    with pytest.raises(ValueError, match="every must be a positive number of seconds"):
        StateStore(tmp_path / "s", autosave_every=-5, readonly=True)
