"""Run real worker processes that each report one result on a queue (tests in tests/ import this)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def run_workers(
    ctx: Any, target: Callable[..., None], arguments: Iterable[tuple[Any, ...]], results: Any, *, timeout=60.0
) -> list[Any]:
    """Start ``target(*args)`` in a process per ``args``, take one result each from ``results``, join all.

    Every worker must exit 0: a worker that dies is a failed test, not a missing result.
    """
    procs = [ctx.Process(target=target, args=args) for args in arguments]
    for p in procs:
        p.start()
    got = [results.get(timeout=timeout) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0, f"worker {p.name} exited with {p.exitcode}"
    return got
