"""Helpers shared by the benchmark suites (imported as a plain module from benchmarks/)."""

from __future__ import annotations

from typing import Any


def tag(benchmark: Any, *, comparison: str, role: str, target: str = "", **extra: Any) -> None:
    """Label a benchmark row.

    ``comparison``: the row of RESULTS.md this belongs to.
    ``role``: "persistkit" or the anchor's name (e.g. "safetensors").
    ``target`` (persistkit rows only): "time<=1.15*safetensors", "size<=0.5*pickle",
    "time<=numpy+0.05", "time<=1.0s" or "report".
    """
    benchmark.extra_info.update(comparison=comparison, role=role, target=target, **extra)
