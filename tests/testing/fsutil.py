"""Small file helpers shared by the observer tests (test_syscalls.py, test_observer_attacks.py)."""

from __future__ import annotations

import os


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path):
    with open(path, "rb") as f:
        return f.read()
