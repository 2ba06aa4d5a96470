"""`import persistkit` must cost at most 50 ms more than `import numpy`."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pkbench import tag


def run_import(module: str) -> None:
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)


@pytest.mark.benchmark(group="import")
def test_import_persistkit(benchmark):
    tag(benchmark, comparison="import (fresh interpreter)", role="persistkit", target="time<=numpy+0.05")
    benchmark.pedantic(run_import, args=("persistkit",), rounds=10, iterations=1, warmup_rounds=1)


@pytest.mark.benchmark(group="import")
def test_import_numpy(benchmark):
    tag(benchmark, comparison="import (fresh interpreter)", role="numpy")
    benchmark.pedantic(run_import, args=("numpy",), rounds=10, iterations=1, warmup_rounds=1)
