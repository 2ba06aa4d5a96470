"""The state fuzz harness exempts exactly one undetectable case: the journal in force cut at a record boundary.

Anything else done to that journal (cut inside a record, deleted) must still be
detected or reported; the exemption also requires the loaded state to be exactly
the acknowledged one after the records that were kept.
"""

from __future__ import annotations

import random
from pathlib import Path

import harness
import pytest


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return harness.StateTarget(tmp_path_factory.mktemp("samples"))


def _run_with(target, tmp_path, monkeypatch, cut):
    """Run a state case whose only mutation is ``cut(journal_path, original_bytes)``."""

    def mutate(directory, *args):
        rel, original = target.samples["encrypted" if (directory.parent / "store.key").exists() else "plain"][
            "journal"
        ]
        return cut(directory / rel, original), False

    monkeypatch.setattr(harness, "_pick_count", lambda rng: 1)
    monkeypatch.setattr(harness, "_mutate_store", mutate)
    outcomes = set()
    for seed in _unforged_seeds():
        case = tmp_path / f"case-{seed}"
        case.mkdir()
        outcome, _, mutation = target.run(seed, case)
        outcomes.add((outcome, mutation.split(";")[0]))
    return outcomes


def _unforged_seeds(count: int = 6) -> list[int]:
    """Case seeds that mutate (rather than forge) a store, as StateTarget.run draws them."""
    seeds = []
    for seed in range(1000):
        rng = random.Random(seed)
        if rng.choice(["plain", "encrypted"]) == "encrypted" or rng.random() >= 0.25:
            seeds.append(seed)
        if len(seeds) == count:
            return seeds
    raise AssertionError("unreachable")


def record_ends(original: bytes) -> list[int]:
    from persistkit.state import journal

    ends, pos = [], 0
    while pos < len(original):
        pos += journal.RECORD.size + journal.RECORD.unpack_from(original, pos)[0] + journal.CHECK
        ends.append(pos)
    return ends


@pytest.mark.parametrize("keep", [0, 2])
def test_a_journal_cut_at_a_record_boundary_is_the_exempt_outcome(target, tmp_path, monkeypatch, keep):
    def cut(path: Path, original: bytes) -> str:
        size = ([0, *record_ends(original)])[keep]
        path.write_bytes(original[:size])
        return f"cut journal to {keep} records"

    outcomes = _run_with(target, tmp_path, monkeypatch, cut)
    assert {o for o, _ in outcomes} == {"journal_cut"}, outcomes
    assert {v for _, v in outcomes} == {"plain", "encrypted"}


def test_a_journal_cut_inside_a_record_is_not_exempt(target, tmp_path, monkeypatch):
    def cut(path: Path, original: bytes) -> str:
        path.write_bytes(original[: record_ends(original)[1] + 5])
        return "cut journal inside record 2"

    outcomes = _run_with(target, tmp_path, monkeypatch, cut)
    assert {o for o, _ in outcomes} == {"fallback"}, outcomes  # a torn record is reported


def test_a_deleted_journal_is_detected_not_exempt(target, tmp_path, monkeypatch):
    def cut(path: Path, original: bytes) -> str:
        path.unlink()
        return "delete journal"

    outcomes = _run_with(target, tmp_path, monkeypatch, cut)
    assert {o for o, _ in outcomes} == {"detected"}, outcomes


def test_the_cut_is_measured_in_whole_records_of_the_original(target, tmp_path):
    rel, original = target.samples["plain"]["journal"]
    path = tmp_path / rel
    path.parent.mkdir(parents=True)
    ends = record_ends(original)
    for data, kept in [
        (original, None),  # untouched: nothing to exempt
        (original + b"x", None),
        (b"", 0),
        (original[: ends[0]], 1),
        (original[: ends[-2]], len(ends) - 1),
        (original[: ends[0] - 1], None),  # inside a record: a torn tail, reported
        (original[: ends[0]] + b"\0" * (ends[1] - ends[0]), None),  # not a prefix
    ]:
        path.write_bytes(data)
        assert harness._journal_cut_at_record_boundary(tmp_path, rel, original) == kept
    acks = target.samples["plain"]["acks"]
    assert harness._ack_after_appends(acks, 0) != harness._ack_after_appends(acks, 2)
