"""`persistkit check`: the battery against the reference bot and against custom targets."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from persistkit.cli import cli

HERE = Path(__file__).parent


@pytest.fixture
def targets_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))


CHECKS = [
    "round-trip",
    "lifecycle",
    "SIGTERM",
    "SIGKILL storm",
    "crash points",
    "disk faults",
    "corruption",
    "budgets",
]


def run_check(tmp_path, *args):
    report = tmp_path / "report.json"
    start = time.perf_counter()
    result = CliRunner().invoke(cli, ["check", *args, "--json", str(report)])
    return result, json.loads(report.read_text()), time.perf_counter() - start


def test_check_passes_on_a_correct_custom_target(tmp_path, targets_on_path):
    result, report, _ = run_check(tmp_path, "check_targets:make_ledger", "--kills", "3", "--steps", "40")
    assert result.exit_code == 0, result.output
    assert report["passed"] and [c["check"] for c in report["checks"]] == CHECKS
    figures = {c["check"]: c["figures"] for c in report["checks"]}
    assert figures["SIGKILL storm"]["kills"] == 3 and figures["SIGKILL storm"]["acks"] > 0
    assert figures["crash points"]["power-loss states"] > figures["crash points"]["process states"] > 0
    assert figures["disk faults"]["faults"] > 0 and figures["corruption"]["corruptions"] > 0
    assert "all checks passed" in result.output


def test_check_fails_with_exit_1_and_names_the_lost_field(tmp_path, targets_on_path):
    result, report, _ = run_check(
        tmp_path, "check_targets:make_forgetful_ledger", "--kills", "2", "--steps", "30"
    )
    assert result.exit_code == 1
    failed = {c["check"]: c["detail"] for c in report["checks"] if not c["passed"]}
    assert "lifecycle" in failed and "state['sum']" in failed["lifecycle"]
    assert "check(s) failed" in result.output


def test_check_on_the_reference_bot(tmp_path):
    result, report, seconds = run_check(tmp_path, "--kills", "4", "--steps", "60")
    assert result.exit_code == 0, result.output
    assert report["target"] == "persistkit.reference.bot:make_bot" and report["passed"]
    print(f"persistkit check on the reference bot (4 kills, 60 steps): {seconds:.1f} s")


def test_a_bad_target_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(cli, ["check", "no_such_module_xyz:factory"])
    assert result.exit_code == 2 and "cannot import 'no_such_module_xyz'" in result.output


def test_check_on_a_bare_persistent_component(tmp_path, targets_on_path):
    result, report, _ = run_check(tmp_path, "check_targets:make_tally", "--kills", "2", "--steps", "20")
    assert result.exit_code == 0, result.output
    figures = {c["check"]: c["figures"] for c in report["checks"]}
    assert figures["round-trip"]["components"] == 1 and figures["crash points"]["process states"] > 0
