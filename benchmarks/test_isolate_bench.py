"""Isolation cost: what running each judged load in a forked worker adds, with torch imported.

crash_points and corruptions judge thousands of crash states or damaged copies, each
load in ``persistkit.testing.isolate.Worker`` so that a segfault, SIGBUS or hang is a
finding instead of the end of the run. The rows: one trivial call through a worker
(target: well under 1 ms), the anchor a user would otherwise reach for
(``multiprocessing.Pool(1).apply`` on a fork context, which has no outside timeout and
dies with its worker), one crash plus the fresh runner the next call gets, and a one-shot
``run_isolated``. torch is imported first, so every fork copies a realistic test process.
"""

from __future__ import annotations

import multiprocessing
import os

import pytest
from pkbench import tag

from persistkit.testing.isolate import Worker, run_isolated

COMPARISON = "isolated load: one trivial call (torch imported)"


@pytest.fixture(scope="module", autouse=True)
def heavy_parent():
    torch = pytest.importorskip("torch")
    x = torch.randn(128, 128)
    (x @ x).sum()  # the parent's OpenMP pool exists, as in a real test session


def double(i: int) -> int:
    return i * 2


@pytest.mark.benchmark(group="isolate-call")
def test_worker_call(benchmark):
    with Worker(double, timeout=30) as worker:
        worker.call(1)
        outcome = benchmark(worker.call, 21)
    assert outcome.value == 42 and worker.restarts == 0
    tag(benchmark, comparison=COMPARISON, role="persistkit", target="time<=0.001s")


@pytest.mark.benchmark(group="isolate-call")
def test_pool_apply_anchor(benchmark):
    with multiprocessing.get_context("fork").Pool(1) as pool:
        pool.apply(double, (1,))
        assert benchmark(pool.apply, double, (21,)) == 42
    tag(benchmark, comparison=COMPARISON, role="multiprocessing.Pool")


def crash_or_double(i: int) -> int:
    if i < 0:
        os._exit(1)
    return i * 2


@pytest.mark.benchmark(group="isolate-restart")
def test_worker_crash_and_restart(benchmark):
    with Worker(crash_or_double, timeout=30) as worker:
        worker.call(1)

        def crash_then_call():
            assert worker.call(-1).kind == "exited"
            return worker.call(21)

        outcome = benchmark.pedantic(crash_then_call, rounds=20, iterations=1, warmup_rounds=1)
    assert outcome.value == 42
    tag(
        benchmark,
        comparison="isolated load: a crash, then the next call on a fresh runner (torch imported)",
        role="persistkit",
        target="report",
    )


@pytest.mark.benchmark(group="isolate-oneshot")
def test_run_isolated_one_shot(benchmark):
    outcome = benchmark.pedantic(run_isolated, (double, 21), {"timeout": 30}, rounds=20, iterations=1)
    assert outcome.value == 42
    tag(
        benchmark,
        comparison="run_isolated: one call in a fresh keeper and runner (two forks; torch imported)",
        role="persistkit",
        target="report",
    )
