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


# -- any app: the three shapes, one error for none -------------------------------------------------


def test_check_passes_on_the_plain_reference_wallet(tmp_path):
    result, report, _ = run_check(
        tmp_path, "persistkit.reference.wallet:open_wallet", "--kills", "3", "--steps", "40"
    )
    assert result.exit_code == 0, result.output
    assert "(plain app)" in result.output and report["passed"]
    figures = {c["check"]: c["figures"] for c in report["checks"]}
    assert figures["SIGKILL storm"]["acks"] > 0 and figures["crash points"]["power-loss states"] > 0
    assert figures["disk faults"]["faults"] > 0 and figures["corruption"]["corruptions"] > 0


def test_check_fails_a_plain_app_that_writes_in_place(tmp_path, targets_on_path):
    result, report, _ = run_check(
        tmp_path, "check_apps:make_careless_wallet", "--kills", "2", "--steps", "30"
    )
    assert result.exit_code == 1
    failed = {c["check"]: c["detail"] for c in report["checks"] if not c["passed"]}
    assert "crash points" in failed and "wallet.json" in failed["crash points"]
    assert "disk faults" in failed and "rerun with --keep" in result.output


def test_a_factory_of_no_known_shape_is_one_usage_error(tmp_path, targets_on_path):
    result = CliRunner().invoke(cli, ["check", "check_apps:make_counter"])
    assert result.exit_code == 2
    assert "returned Counter, which has no .store" in result.output and "save(), snapshot()" in result.output
    assert "plain app:" in result.output and "Traceback" not in result.output


def test_a_store_app_without_readonly_is_read_from_a_copy(tmp_path, targets_on_path):
    result, _report, _ = run_check(
        tmp_path, "check_apps:make_ledger_without_readonly", "--kills", "2", "--steps", "30"
    )
    assert result.exit_code == 0, result.output
    assert "LockedError" not in result.output


def test_a_full_bounded_log_is_not_reported_as_lost_work(tmp_path, targets_on_path):
    result, _report, _ = run_check(tmp_path, "check_apps:make_full_tape", "--kills", "3", "--steps", "30")
    assert result.exit_code == 0, result.output


def _tape_store(where, records):
    from check_apps import make_full_tape

    app = make_full_tape(where, autosave_every=0)
    for _ in range(records):
        app.step()
    app.store.close()


def test_storm_judgement_on_a_full_log(tmp_path, targets_on_path):
    from persistkit.testing.battery import Battery, Settings, Target
    from persistkit.testing.lifecycle import Ack

    where = str(tmp_path / "tape")
    _tape_store(where, 100)  # ids 0..99 written, every third acknowledged; the log keeps 70..99
    battery = Battery(Target("check_apps:make_full_tape"), Settings(), workdir=str(tmp_path / "work"))
    acks = [Ack(1, str(i), ()) for i in range(0, 100, 3)]
    battery._verify_acks(where, acks)  # 0..69 were evicted by later records: nothing lost
    with pytest.raises(AssertionError, match=r"1 acknowledged ids missing.*'100'"):
        battery._verify_acks(where, [*acks, Ack(2, "100", ())])


def test_an_id_acknowledged_twice_in_one_run_is_named(tmp_path, targets_on_path):
    from persistkit.testing.battery import Battery, Settings, Target
    from persistkit.testing.lifecycle import Ack

    where = str(tmp_path / "tape")
    _tape_store(where, 10)
    battery = Battery(Target("check_apps:make_full_tape"), Settings(), workdir=str(tmp_path / "work"))
    with pytest.raises(AssertionError, match="ids must be unique; id 3 was acknowledged twice"):
        battery._verify_acks(where, [Ack(1, "3", ()), Ack(1, "3", ())])


def test_storm_judgement_on_a_log_that_is_not_full(tmp_path, targets_on_path):
    from persistkit.testing.battery import Battery, Settings, Target
    from persistkit.testing.lifecycle import Ack

    where = str(tmp_path / "tape")
    _tape_store(where, 10)
    battery = Battery(Target("check_apps:make_full_tape"), Settings(), workdir=str(tmp_path / "work"))
    battery._verify_acks(where, [Ack(1, "3", ()), Ack(1, "6", ())])
    with pytest.raises(AssertionError, match="not full, so none was evicted"):
        battery._verify_acks(where, [Ack(1, "-3", ()), Ack(1, "3", ())])


def test_repeated_ids_are_called_repeated_not_lost(tmp_path, targets_on_path):
    result, report, _ = run_check(tmp_path, "check_apps:make_stamps", "--kills", "2", "--steps", "30")
    assert result.exit_code == 1
    detail = {c["check"]: c["detail"] for c in report["checks"]}["SIGKILL storm"]
    assert "ids must be unique; id 20 was acknowledged twice" in detail
    assert "acknowledged work lost" not in detail


def test_keep_leaves_the_state_dirs(tmp_path):
    result, _report, _ = run_check(
        tmp_path, "persistkit.reference.wallet:open_wallet", "--kills", "1", "--steps", "10", "--keep"
    )
    assert result.exit_code == 0, result.output
    kept = result.output.split("state directories kept under ")[1].split()[0]
    try:
        assert os.path.isfile(os.path.join(kept, "sigkill", "wallet.json"))
    finally:
        import shutil

        shutil.rmtree(kept)


def test_the_current_directory_is_importable_and_the_run_is_quiet(tmp_path):
    import subprocess
    import sys

    (tmp_path / "my_ledger.py").write_text((HERE / "check_targets.py").read_text())
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run(
        [sys.executable, "-P", "-m", "persistkit", "check", "my_ledger:make_ledger", "--kills", "2",
         "--steps", "30", "--json", "r.json"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stderr == ""
    # the injected faults' aftermath (persistkit's log lines) is in the JSON report, never shown as
    # warnings on a passing check
    assert "could not remove" not in out.stdout and "warning" not in out.stdout.lower()
    checks = {c["check"]: c for c in json.loads((tmp_path / "r.json").read_text())["checks"]}
    assert any("could not remove" in line for line in checks["disk faults"]["fault_log"])


def test_one_default_kill_count_for_check_and_the_plugin():
    from _pytest.config.argparsing import Parser

    from persistkit.commands.check import check_command
    from persistkit.testing import plugin
    from persistkit.testing.battery import DEFAULT_KILLS, Settings

    parser = Parser(_ispytest=True)
    plugin.pytest_addoption(parser)
    plugin_default = parser.parse_known_args([]).persistkit_kills
    kills = next(p for p in check_command.params if p.name == "kills")
    assert plugin_default == kills.default == Settings().kills == DEFAULT_KILLS
