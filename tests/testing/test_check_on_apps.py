"""`persistkit check` on apps written the way teams write them (tests/apps/), run as a user runs it.

Each test runs ``python -m persistkit check tests.apps.<app>:<factory>`` in a subprocess
from the repository root (the current directory is on sys.path, as for pytest) and
reads the JSON report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTING = Path(__file__).resolve().parent
ALL = [
    "round-trip",
    "lifecycle",
    "sigterm",
    "sigkill",
    "crash-points",
    "disk-faults",
    "corruption",
    "budgets",
]


def check(tmp_path, target, *args, only=None, env=None, timeout=600):
    """Run persistkit check; return (exit code, stdout, {check name: result}, report)."""
    skips = [a for slug in ALL if only is not None and slug not in only for a in ("--skip", slug)]
    report = tmp_path / "report.json"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTING), full_env.get("PYTHONPATH", "")])
    full_env["COLUMNS"] = "200"
    full_env.update(env or {})
    out = subprocess.run(
        [sys.executable, "-m", "persistkit", "check", target, *args, *skips, "--json", str(report)],
        cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    doc = json.loads(report.read_text()) if report.exists() else {}
    checks = {c["check"]: c for c in doc.get("checks", [])}
    return out.returncode, out.stdout + out.stderr, checks, doc


# -- a torch trainer that checkpoints as it goes ----------------------------------------------------


def test_a_torch_trainer_that_saves_in_step_gets_a_full_verdict(tmp_path):
    code, output, checks, _ = check(tmp_path, "tests.apps.torch_trainer:open_trainer", "--kills", "4")
    assert code == 0, output
    assert {c["status"] for c in checks.values()} == {"pass"}
    crash, faults = checks["crash points"]["figures"], checks["disk faults"]["figures"]
    # judged on its own saves (the steps that checkpoint) and on save()
    assert crash["step() save: power-loss states"] > 0 and crash["power-loss states"] > 0
    assert faults["step() save: faults"] > 0 and faults["faults"] > 0
    assert checks["budgets"]["figures"]["of which steps"] > 0
    assert checks["SIGKILL storm"]["figures"]["acks"] > 0
    assert "root=" not in output and "no verdict" not in output


def test_a_save_that_writes_nothing_is_no_verdict_not_a_pass(tmp_path):
    code, output, checks, _ = check(
        tmp_path, "check_apps:make_never_writes", only={"budgets", "crash-points"}
    )
    assert code == 1
    for name in ("budgets", "crash points"):
        assert checks[name]["status"] == "no verdict", checks[name]
    assert "no save() call and no step() wrote anything" in checks["budgets"]["detail"]
    assert "pass root=" not in output  # check has no root= option
    assert "2 check(s) gave no verdict" in output


# -- a sqlite ledger bot: a connection kept open, a JSON file written with Path.write_text -------------


def test_mapping_order_is_no_difference(tmp_path):
    """positions.json is written with sorted keys; the live dict keeps insertion order.

    Needs the type-aware comparison that ignores mapping order (persistkit.testing.compare).
    """
    code, output, checks, _ = check(
        tmp_path, "tests.apps.sqlite_ledger:open_bot", "--steps", "40", "--kills", "0",
        only={"round-trip", "lifecycle", "sigterm"},
    )  # fmt: skip
    assert code == 0, output
    assert [checks[n]["status"] for n in ("round-trip", "lifecycle", "SIGTERM")] == ["pass"] * 3
    assert "key order" not in output and "did not capture the state" not in output


def test_crash_points_leave_the_open_sqlite_connection_working(tmp_path):
    """The app keeps its ledger connection open through the crash states and writes again after them."""
    code, output, checks, _ = check(
        tmp_path, "tests.apps.sqlite_ledger:open_bot", "--steps", "40", only={"crash-points"}
    )
    assert code == 0, output
    figures = checks["crash points"]["figures"]
    assert figures["step() save: power-loss states"] > 0 and figures["power-loss states"] > 0


def test_a_sqlite_ledger_is_excluded_from_corruption_with_the_risk_stated(tmp_path):
    code, output, checks, doc = check(
        tmp_path, "tests.apps.sqlite_ledger:open_bot", "--steps", "40", only={"corruption"}
    )
    assert code == 1
    assert "ledger.db" in checks["corruption"]["detail"] and "--exclude ledger.db" in output

    code, output, checks, doc = check(
        tmp_path, "tests.apps.sqlite_ledger:open_bot", "--steps", "40", "--exclude", "ledger.db",
        only={"corruption"},
    )  # fmt: skip
    assert code == 0, output
    assert checks["corruption"]["figures"]["files"] >= 1  # positions.json was still damaged and detected
    assert "SQLite keeps no checksums" in doc["excluded"]["ledger.db"]
    assert "cksumvfs" in output and "excluded by --exclude ledger.db" in output
    assert doc["skipped"] == [
        "round-trip", "lifecycle", "SIGTERM", "SIGKILL storm", "crash points", "disk faults", "budgets"
    ]  # fmt: skip
    assert "skipped (--skip), not verified: round-trip, lifecycle, SIGTERM" in output
    assert "all 1 checks that ran passed" in output


def test_excluding_every_file_is_no_verdict(tmp_path):
    code, _, checks, _ = check(
        tmp_path, "tests.apps.sqlite_ledger:open_bot", "--steps", "20", "--exclude", "*", only={"corruption"}
    )
    assert code == 1 and checks["corruption"]["status"] == "no verdict"
    assert "--skip corruption" in checks["corruption"]["detail"]


def test_an_unknown_check_name_is_a_usage_error(tmp_path):
    code, output, _, _ = check(tmp_path, "tests.apps.sqlite_ledger:open_bot", "--skip", "fuzzing")
    assert code == 2 and "no check named 'fuzzing'" in output and "crash-points" in output


# -- the SIGKILL storm -------------------------------------------------------------------------------


def test_restarts_do_not_pay_the_apps_imports_again(tmp_path):
    """The fork server warms the app up before forking: a module the app imports lazily is imported
    once there, not once per restarted child."""
    log = tmp_path / "imports.log"
    code, output, checks, _ = check(
        tmp_path, "tests.apps.lazy_import:open_counter", "--steps", "20", "--kills", "6",
        only={"sigterm", "sigkill"}, env={"LAZY_IMPORT_LOG": str(log)},
    )  # fmt: skip
    assert code == 0, output
    assert checks["SIGKILL storm"]["figures"]["kills"] == 6
    pids = log.read_text().split()
    assert len(pids) <= 2, pids  # this process's profile run, and the fork server's warm-up


def test_a_storm_without_acknowledged_ids_says_what_it_did_not_prove(tmp_path):
    code, output, checks, _ = check(tmp_path, "check_targets:make_tally", "--kills", "2", only={"sigkill"})
    assert code == 0, output
    assert checks["SIGKILL storm"]["figures"]["acks"] == 0
    assert any("proved nothing about acknowledged work" in n for n in checks["SIGKILL storm"]["notes"])
    assert "proved nothing about acknowledged work" in output
