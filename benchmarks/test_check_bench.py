"""``persistkit check`` on a small torch app against the same check on the reference bot, one run each.

The torch app (``tests/apps/torch_trainer.py``) imports torch and checkpoints with
``torch.save``; its SIGKILL storm restarts it through a fork server that imported torch
and ran the app once before forking, so the storm costs the kills, not the imports.
Target: at most 1.5x the reference bot's check, both with the default settings
(300 steps, 20 kills), measured in the same run. A whole check takes about half a
minute, so the CI smoke run skips both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pkbench import tag

ROOT = Path(__file__).resolve().parents[1]
COMPARISON = (
    "persistkit check, default settings: small torch app (tests/apps/torch_trainer) vs the reference bot"
)


def _check(tmp_path: Path, *target: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    report = tmp_path / "report.json"
    out = subprocess.run(
        [sys.executable, "-m", "persistkit", "check", *target, "--json", str(report)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(report.read_text())


@pytest.mark.benchmark(group="check-torch-app")
@pytest.mark.parametrize("app", ["reference-bot", "torch-app"])
def test_check_torch_app_against_reference_bot(benchmark, tmp_path, full_size, app):
    if not full_size:
        pytest.skip("runs the whole battery (about half a minute); real benchmark runs only")
    target = ["tests.apps.torch_trainer:open_trainer"] if app == "torch-app" else []
    doc = benchmark.pedantic(lambda: _check(tmp_path, *target), rounds=1, iterations=1)
    storm = next(c for c in doc["checks"] if c["check"] == "SIGKILL storm")
    assert storm["figures"]["kills"] == 20
    benchmark.extra_info["storm_seconds"] = storm["seconds"]
    if app == "torch-app":
        tag(benchmark, comparison=COMPARISON, role="persistkit", target="time<=1.5*reference-bot")
    else:
        tag(benchmark, comparison=COMPARISON, role="reference-bot")
