from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _not_an_xdist_worker(monkeypatch):
    """pytester's child pytest inherits our environment; under `-n 2` it would think it is an xdist
    worker (pytest-benchmark then warns, and the zoo runs with warnings as errors)."""
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)
