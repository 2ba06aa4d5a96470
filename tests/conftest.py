from __future__ import annotations

import os

import pytest


def open_fds() -> set[int]:
    """File descriptors this process holds right now (Linux: /proc/self/fd)."""
    return {int(name) for name in os.listdir("/proc/self/fd")}


@pytest.fixture
def fd_guard():
    """Fails the test if it leaks file descriptors."""
    before = open_fds()
    yield
    leaked = open_fds() - before
    # listdir itself may transiently hold one fd that is gone by now; anything left is a leak.
    leaked = {fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, f"leaked file descriptors: {sorted(leaked)}"


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run the long soaks marked @pytest.mark.slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow") or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow soak: run with `nox -s slow` (pytest -m slow --run-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
