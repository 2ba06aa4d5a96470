"""Budgets: bytes per file and latency per save, measured at the persistkit io layer."""

from __future__ import annotations

import pytest

from persistkit.io import atomic_write
from persistkit.state import StateStore
from persistkit.testing.budget import Budget, check_budget, measure


def test_atomic_writes_are_saves_with_their_final_names(tmp_path):
    with measure() as fs:
        atomic_write(tmp_path / "a.bin", b"x" * 1000)
        atomic_write(tmp_path / "a.bin", b"x" * 10)
    assert fs.files() == {str(tmp_path / "a.bin"): 1000}  # the largest size the file reached
    assert [s.target for s in fs.saves] == [str(tmp_path / "a.bin")] * 2
    assert all(0 < s.seconds < 5 for s in fs.saves)


class Grows:
    def __init__(self):
        self.items = []

    def state_dict(self):
        return {"items": list(self.items)}

    def load_state_dict(self, state):
        self.items = list(state["items"])


def test_state_store_checkpoints_are_one_save_each(tmp_path):
    grows = Grows()
    with StateStore(tmp_path / "s", autosave_every=0) as store:
        store.register("grows", grows)
        store.load()
        with measure() as fs:
            for i in range(3):
                grows.items += [f"item-{i}-{j}" for j in range(200)]
                store.save()
    assert [s.kind for s in fs.saves] == ["StateStore checkpoint"] * 3
    problems = check_budget(fs, Budget(max_bytes=500))
    assert problems and problems[0].endswith("bytes > max_bytes=500")
    assert "grows.pk reached" in problems[0]
    slow = check_budget(fs, Budget(max_save_seconds=1e-9))
    assert len(slow) == 3 and "StateStore checkpoint of" in slow[0] and "> max_save_seconds=1e-09" in slow[0]


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((1,), {}, "keyword arguments only"),
        ((), {"max_size": 1}, "unknown argument"),
        ((), {"max_bytes": -1}, "max_bytes must be a non-negative int"),
        ((), {"max_save_seconds": 0}, "max_save_seconds must be a positive number"),
    ],
)
def test_marker_arguments_are_validated(args, kwargs, message):
    with pytest.raises(TypeError, match=message):
        Budget.from_marker(args, kwargs)


@pytest.mark.persist_budget(max_bytes=4096, max_save_seconds=5.0)
def test_the_marker_passes_within_budget(tmp_path):
    atomic_write(tmp_path / "small", b"x" * 100)
