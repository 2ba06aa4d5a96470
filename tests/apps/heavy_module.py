"""Stands in for a heavy library: each import appends the importing process's id to $LAZY_IMPORT_LOG."""

import os

_log = os.environ.get("LAZY_IMPORT_LOG")
if _log:
    with open(_log, "a") as _f:
        _f.write(f"{os.getpid()}\n")


def increment(n: int) -> int:
    return n + 1
