"""lifecycle: in-process restarts, and real SIGTERM/SIGKILL against a child speaking the ACK protocol."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from persistkit.testing.lifecycle import Lifecycle

WORKER = str(Path(__file__).parents[1] / "plugin" / "zoo" / "worker.py")


class Counter:
    def __init__(self):
        self.value = 0
        self.seen = []

    def step(self):
        self.value += 1
        self.seen.append(self.value)

    def state_dict(self):
        return {"value": self.value, "seen": list(self.seen)}

    def load_state_dict(self, state):
        self.value, self.seen = state["value"], list(state["seen"])


def test_a_component_survives_restarts(tmp_path):
    report = Lifecycle(tmp_path)(lambda state_dir: Counter(), steps=10, cycles=3)
    assert (report.steps, report.restarts, report.violations) == (30, 3, [])


def test_state_lost_at_shutdown_is_reported_with_its_path(tmp_path):
    class Leaky(Counter):
        def state_dict(self):
            return {"value": self.value, "seen": []}

    with pytest.raises(
        AssertionError, match=r"after restart #1 \(having run 5 steps\).*state\['seen'\]: length 5 != 0"
    ):
        Lifecycle(tmp_path)(lambda state_dir: Leaky(), steps=5)


def worker(mode):
    return [sys.executable, WORKER, "--state-dir", "{state_dir}", "--mode", mode]


def test_sigterm_and_a_sigkill_storm_on_a_correct_worker(tmp_path):
    report = Lifecycle(tmp_path, kills=3, seed=1).subprocess(
        [*worker("good"), "--steps", "100000"],
        restart_cmd=[*worker("good"), "--steps", "0"],
        state_dir=tmp_path / "w",
    )
    assert report.kills == 3 and report.acks >= 5 and report.violations == []  # SIGTERM waits for 5
    assert report.sigterm_exit_seconds is not None  # it exited within the grace period


def test_a_child_that_cannot_start_is_reported(tmp_path):
    cmd = [sys.executable, "-c", "import sys; sys.exit('no state for you')"]
    with pytest.raises(AssertionError, match=r"never printed READY(.|\n)*no state for you"):
        Lifecycle(tmp_path).subprocess(cmd, restart_cmd=cmd, state_dir=tmp_path / "w", kills=1)


def test_arguments_are_validated(tmp_path):
    lc = Lifecycle(tmp_path)
    with pytest.raises(ValueError, match="either cmd"):
        lc.subprocess(state_dir=tmp_path)
    with pytest.raises(ValueError, match="pass restart_cmd"):
        lc.subprocess(["true"], state_dir=tmp_path)


ACK_ONLY_APP = r"""
import os, sys, time
state = sys.argv[1]
path = os.path.join(state, "next")
n = int(open(path).read()) if os.path.exists(path) else 0
while True:
    n += 1
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(n)); f.flush(); os.fsync(f.fileno())
    os.replace(tmp, path)
    print(f"ACK {n}", flush=True)   # only after the id is durable
    time.sleep(0.002)
"""

CARELESS_APP = ACK_ONLY_APP.replace(
    '    print(f"ACK {n}", flush=True)   # only after the id is durable\n', ""
).replace(
    "    n += 1\n",
    '    n += 1\n    print(f"ACK {n}", flush=True)   # acknowledged before it is durable\n    time.sleep(0.01)\n',
)


def _ack_storm(tmp_path, source, kills):
    import sys

    from persistkit.testing.lifecycle import Lifecycle
    from persistkit.testing.report import Recorder

    app = tmp_path / "app.py"
    app.write_text(source)
    state = tmp_path / "state"
    state.mkdir()
    lc = Lifecycle(tmp_path, kills=kills, seed=3, recorder=Recorder())
    return lc.subprocess(
        [sys.executable, str(app), "{state_dir}"], state_dir=state, protocol="ack", kill_window=(0.05, 0.3)
    )


def test_an_app_that_prints_only_ack_lines_is_testable(tmp_path):
    report = _ack_storm(tmp_path, ACK_ONLY_APP, kills=8)
    assert (
        report.kills == 8 and report.acks >= 8 + 5 and report.violations == []
    )  # 1 per run, 5 before SIGTERM


def test_an_ack_only_app_that_acknowledges_too_early_is_caught(tmp_path):
    with pytest.raises(AssertionError, match=r"ids must be unique; id \d+ was acknowledged twice"):
        _ack_storm(tmp_path, CARELESS_APP, kills=30)
