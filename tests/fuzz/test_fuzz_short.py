"""A short, seeded run of the mutation fuzzer (tests/fuzz/harness.py) in the default suite.

300 cases per kind, each in a worker subprocess with a per-case timeout. Every
case must end in identical data, a typed PersistkitError, or (state stores) a
reported fallback to an older acknowledged state. Longer runs: ``nox -s fuzz``.
"""

from __future__ import annotations

import pytest
from harness import KINDS, fuzz

SEED = 12
CASES = 300


@pytest.mark.parametrize("kind", KINDS)
def test_short_fuzz_run_has_no_findings(kind):
    summary = fuzz(kind, seed=SEED, cases=CASES, timeout=10.0)
    print("\n" + summary.render())
    assert summary.cases == CASES
    assert summary.counts["ok"] > 0, "no case succeeded: the mutations are too blunt to test anything"
    if summary.findings:
        pytest.fail(summary.render(), pytrace=False)
