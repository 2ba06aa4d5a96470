"""benchmarks/report.py turns pytest-benchmark JSON into the RESULTS.md table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_report", ROOT / "benchmarks" / "report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def row(name, comparison, role, median, target="", **extra):
    return {
        "name": name,
        "stats": {"median": median},
        "extra_info": {"comparison": comparison, "role": role, "target": target, **extra},
    }


def test_ratio_targets_met_and_missed():
    rows = [
        row("pk_save", "save 1 MiB", "persistkit", 1.1, "time<=1.15*safetensors"),
        row("st_save", "save 1 MiB", "safetensors", 1.0),
        row("pk_load", "load 1 MiB", "persistkit", 1.3, "time<=1.15*safetensors"),
        row("st_load", "load 1 MiB", "safetensors", 1.0),
    ]
    table = report.evaluate(rows)
    assert [r[6] for r in table] == ["met", "MISSED"]
    assert table[0][4] == "1.10\u00d7" and table[1][4] == "1.30\u00d7"


def test_size_delta_rate_and_absolute_targets():
    rows = [
        row("pk_state", "state size", "persistkit", 0.1, "size<=0.5*pickle", bytes=400),
        row("pickle_state", "state size", "pickle", 0.1, bytes=1000),
        row("pk_import", "import", "persistkit", 0.16, "time<=numpy+0.05"),
        row("np_import", "import", "numpy", 0.10),
        row("pk_batch", "batch", "persistkit", 0.5, "rate>=1.0*sqlite", records=1000),
        row("sq_batch", "batch", "sqlite", 1.0, records=1000),
        row("pk_kdf", "kdf", "persistkit", 1.2, "time<=1.0s"),
        row("pk_states", "crash states", "persistkit", 0.2, "report"),
    ]
    status = {r[0]: r[6] for r in report.evaluate(rows)}
    assert status == {
        "state size": "met",
        "import": "MISSED",
        "batch": "met",
        "kdf": "MISSED",
        "crash states": "reported",
    }


def test_other_anchors_of_the_group_are_shown_with_ratios():
    rows = [
        row("pk_save", "save", "persistkit", 1.5, "time<=1.15*safetensors"),
        row("st_save", "save", "safetensors", 1.0),
        row("durable", "save", "safetensors+fsync", 1.25),
        row("np_save", "save", "np.save", 3.0),
    ]
    (line,) = report.evaluate(rows)
    assert line[6] == "MISSED"
    assert line[7] == "safetensors+fsync 1.25 s (1.20\u00d7); np.save 3.00 s (0.50\u00d7)"


def test_render_counts_rows():
    data = {"benchmarks": [row("a", "c", "persistkit", 1.0, "time<=1.0*x"), row("b", "c", "x", 2.0)]}
    text = report.render(data)
    assert "| c | a |" in text and "1 targets met, 0 missed" in text
