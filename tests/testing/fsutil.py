"""Small file helpers shared by the observer tests (test_syscalls.py, test_observer_attacks.py)."""

from __future__ import annotations

import contextlib
import os


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd, data):
    """os.write until every byte is written: a write(2) may write less than asked (a filling disk)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def careful(path, data, tmp=None):
    """temp + write everything + fsync + rename + directory fsync, cleaning up on any error."""
    tmp = tmp or f"{path}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(path))


def read(path):
    with open(path, "rb") as f:
        return f.read()


def replace_swallowing_write_errors(path, data):
    """A buggy writer the verifier must fail: temp file, fsync, replace, directory fsync, but an error
    from write(2) is swallowed, so a failed write still replaces ``path`` with an empty file."""
    tmp = str(path) + ".tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            try:  # noqa: SIM105 (the bug, spelled out)
                os.write(fd, data)
            except OSError:
                pass  # the bug
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(tmp)))
