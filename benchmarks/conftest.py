"""Shared helpers for the benchmark suites.

Every comparison is a pytest-benchmark *group*: one persistkit row and one or
more anchor rows (the tool a user would otherwise pick), measured in the same
run so that the report can state ratios on a noisy machine. Each row tags
itself through ``extra_info`` (``pkbench.tag``); ``benchmarks/report.py`` turns
the JSON into RESULTS.md.

With ``--benchmark-disable`` (the CI smoke run) every benchmark body runs once
on small inputs, so the suites cannot rot without slowing CI down.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def full_size(request: pytest.FixtureRequest) -> bool:
    """True for a real benchmark run; False in the CI smoke run."""
    config = request.config
    return bool(config.getoption("benchmark_enable")) or not config.getoption("benchmark_disable")
