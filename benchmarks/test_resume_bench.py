"""resume_points against ckpt-chaos on a 20-step torch loop that checkpoints every 5 steps.

Both tools run the same script (tests/testing/training/torch_loop.py ``--save replace``: temp
file + ``os.replace``, no fsync) to the end and crash it: ckpt-chaos at every file event with
a fresh process per crash point and per resume, persistkit at every operation of every save
under both crash models, resuming each state in a forked, isolated worker. Each row is one
whole run (reference run included), reported as crash states per second of that run; the
target is persistkit's rate at least ckpt-chaos's. The per-script verdict tables of both
tools are ``benchmarks/resume_side_by_side.py``; the smoke test below runs a small one.

In the CI smoke run (``--benchmark-disable``) both rows use the numpy loop (no torch import)
with a few crash points, so the suite cannot rot without slowing CI down.
"""

from __future__ import annotations

import pytest
from pkbench import tag
from resume_side_by_side import SCRIPTS, Script, compare, run_ckpt_chaos, run_persistkit, torch_loop

TORCH_20 = torch_loop("replace", "temp + os.replace, no fsync")
NUMPY = next(s for s in SCRIPTS if s.name == "numpy inplace")
COMPARISON = "resume_points vs ckpt-chaos: 20-step torch loop, a checkpoint every 5 steps (temp + os.replace, no fsync)"


def script_for(full_size: bool) -> Script:
    if full_size:
        pytest.importorskip("torch")
        return TORCH_20
    return NUMPY


@pytest.mark.benchmark(group="resume-rate")
def test_resume_points_crash_states_per_second(benchmark, full_size):
    pytest.importorskip("ckpt_chaos")
    script = script_for(full_size)
    runs = []
    benchmark.pedantic(lambda: runs.append(run_persistkit(script, max_states=None if full_size else 6)),
                       rounds=1, iterations=1)  # fmt: skip
    run = runs[-1]
    tag(benchmark, comparison=COMPARISON, role="persistkit", target="rate>=1.0*ckpt-chaos", records=run.states,
        states=run.states, per_minute=round(run.per_minute, 1), counts=run.counts)  # fmt: skip
    assert run.states > 0
    if full_size:  # power loss is what ckpt-chaos cannot see: temp + os.replace without fsync fails
        assert {"HARD_FAIL", "DUPLICATED_WORK"} <= run.failures


@pytest.mark.benchmark(group="resume-rate")
def test_ckpt_chaos_crash_points_per_second(benchmark, full_size):
    pytest.importorskip("ckpt_chaos")
    script = script_for(full_size)
    runs = []
    benchmark.pedantic(lambda: runs.append(run_ckpt_chaos(script, max_points=40 if full_size else 2)),
                       rounds=1, iterations=1)  # fmt: skip
    run = runs[-1]
    tag(benchmark, comparison=COMPARISON, role="ckpt-chaos", records=run.states, states=run.states,
        per_minute=round(run.per_minute, 1), counts=run.counts)  # fmt: skip
    assert run.states > 0
    if full_size:  # process kills alone: the temp + rename save passes every point
        assert not run.failures


def test_side_by_side_persistkit_finds_what_ckpt_chaos_finds():
    """A small side-by-side on the in-place np.save job: every kind ckpt-chaos finds, and power-loss kinds."""
    pytest.importorskip("ckpt_chaos")
    res = compare(NUMPY, max_states=30, max_points=4)
    ours, theirs = res["persistkit"], res["ckpt-chaos"]
    assert theirs.states == 4 and ours.states > 4
    assert theirs.failures <= ours.failures
    assert (
        ours.by_model["power-loss"]["SILENT_DIVERGENCE"] > 0
    )  # zeroed pages of an unsynced .npy load silently
