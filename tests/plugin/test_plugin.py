"""The pytest plugin, tested the way users meet it: in a pytest subprocess (pytester)."""

from __future__ import annotations

import json

HEAVY = ("hypothesis", "cryptography", "torch", "sklearn")


def test_options_are_grouped_and_documented(pytester):
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(
        [
            "persistkit: persistence verification:",
            "*--persistkit-report*print a persistkit summary*",
            "*--persistkit-report-json=FILE*",
            "*--persistkit-seed=N*",
            "*--persistkit-kills=N*",
            "*--persistkit-samples=N*",
        ]
    )


def test_the_marker_is_registered_and_bad_option_values_are_refused(pytester):
    result = pytester.runpytest_subprocess("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.persist_budget(max_bytes=None, max_save_seconds=None):*"])
    bad = pytester.runpytest_subprocess("--persistkit-kills=-3")
    assert bad.ret != 0
    bad.stderr.fnmatch_lines(["*Could not parse value: '-3' (expected 0 or more).*"])


def test_loading_the_plugin_imports_nothing_heavy(pytester):
    pytester.makeconftest(
        """
        import json, sys

        def pytest_sessionfinish(session):
            with open("modules.json", "w") as f:
                json.dump(sorted(sys.modules), f)
        """
    )
    pytester.makepyfile(test_empty="def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess("--co", "-p", "no:cacheprovider")
    assert result.ret == 0
    modules = json.loads((pytester.path / "modules.json").read_text())
    assert "persistkit.testing.plugin" in modules  # loaded through the pytest11 entry point
    heavy = [m for m in modules for h in HEAVY if m == h or m.startswith(h + ".")]
    assert heavy == []


FIXTURE_TESTS = """
import json
import os

import pytest

from persistkit.io import atomic_write


def load_json(path):
    with open(path) as f:
        return json.load(f)


def in_place(path, value):
    with open(path, "w") as f:
        json.dump(value, f)


def test_workspace(persist_dir, tmp_path):
    assert persist_dir == tmp_path
    assert sorted(p.name for p in persist_dir.iterdir()) == ["archives", "config", "logs", "models"]


def test_atomic_save_passes(crash_points, disk_faults, persist_dir):
    path = persist_dir / "models" / "m.json"
    atomic_write(path, b'{"v": 1}')
    report = crash_points(lambda: atomic_write(path, b'{"v": 2}'), lambda: load_json(path))
    assert report.states >= 5
    disk_faults(lambda: atomic_write(path, b'{"v": 3}'), lambda: load_json(path), errnos=["EIO"])


def test_in_place_save_fails(crash_points, tmp_path):
    path = tmp_path / "m.json"
    in_place(path, {"v": 1})
    crash_points(lambda: in_place(path, {"v": 2}), lambda: load_json(path), model="process")


def test_swallowing_save_fails(disk_faults, tmp_path):
    path = tmp_path / "m.json"
    atomic_write(path, b'{"v": 1}')

    def save():
        try:
            atomic_write(path, b'{"v": 2}')
        except OSError:
            pass

    disk_faults(save, lambda: load_json(path), errnos=["ENOSPC"], modes=["once"])


def test_roundtrip_names_the_path(roundtrip):
    class Lossy:
        def __init__(self):
            self.weights = {"layer": [1.0, 2.0]}

        def state_dict(self):
            return {"weights": {"layer": [1.0]}}

        def load_state_dict(self, state):
            self.weights = state["weights"]

    roundtrip(Lossy(), via="state")


@pytest.mark.persist_budget(max_bytes=1000)
def test_budget_names_file_and_figure(tmp_path):
    atomic_write(tmp_path / "big.bin", b"x" * 5000)


@pytest.mark.persist_budget(max_bytes="lots")
def test_budget_rejects_bad_arguments(tmp_path):
    pass
"""


def test_fixtures_report_and_failure_messages(pytester):
    pytester.makepyfile(test_fixtures=FIXTURE_TESTS)
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-W",
        "error",
        "--persistkit-report",
        "--persistkit-report-json=out/report.json",
    )
    result.assert_outcomes(passed=2, failed=5)
    result.stdout.fnmatch_lines(
        [
            "*crash_points: 1 of 4 crash states (process model) load something that is neither*",
            "*First violation: process crash after #0 create m.json*",
            "*load() raised JSONDecodeError*",
            "*Operations recorded during save() by the * observer (3; paths relative to *",
            "*  #0 create m.json",
            "*disk_faults: * injected faults were mishandled (observed by *",
            "*error swallowed: save() returned normally, yet load() returned {'v': 1} instead of the new state*",
            "*roundtrip(via='state'): the loaded object differs from the saved one at value.weights?'layer'?: length 2 != 1",
            "*persist_budget exceeded (1):*",
            "*big.bin reached 5,000 bytes > max_bytes=1,000*",
            "*persist_budget: max_bytes must be a non-negative int, not 'lots'*",
            "*= persistkit report =*",
            "files written: *",
            "saves: * median * ms  max * ms",
            "crash states explored: * faults injected: * violations: *",
        ]
    )
    data = json.loads((pytester.path / "out" / "report.json").read_text())
    assert data["crash_states"] >= 9 and data["faults"] >= 6 and data["violations"] >= 3
    assert any(path.endswith("big.bin") and size == 5000 for path, size in data["files"].items())
    assert {run["fixture"] for run in data["runs"]} >= {"crash_points", "disk_faults", "persist_budget"}


XDIST_TESTS = """
import json
import pytest
from persistkit.io import atomic_write


@pytest.mark.parametrize("n", range(4))
def test_atomic(crash_points, tmp_path, n):
    path = tmp_path / "m.json"
    atomic_write(path, b"{}")
    crash_points(lambda: atomic_write(path, json.dumps({"n": n}).encode()), lambda: json.loads(path.read_bytes()))
"""


def test_works_under_xdist_without_the_cache(pytester):
    pytester.makepyfile(test_par=XDIST_TESTS)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-n", "2", "--persistkit-report", "--persistkit-report-json=r.json"
    )
    result.assert_outcomes(passed=4)
    data = json.loads((pytester.path / "r.json").read_text())
    assert len(data["runs"]) == 4  # both workers' figures reached the controller
    assert data["crash_states"] == sum(run["states"] for run in data["runs"]) > 0
    result.stdout.fnmatch_lines(["*= persistkit report =*", "crash states explored: *"])
