"""Stores written with schema v1 (fixtures/state, see make_v1.py) load with today's code and migrate.

The expected values are written out here, independently of the generator, so
that a change to either side shows up as a failure.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from persistkit.errors import MigrationError, WrongKeyError
from persistkit.state import BoundedLog, StateStore

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "state"
START = dt.datetime(2026, 1, 5, 9, 30, tzinfo=dt.UTC)
PNL = [12.5, -4.25, 30.0, -8.0, 5.75, -1.5, 22.0, -3.0, 9.5, 14.0]


class Risk:
    """Schema 3: v2 renamed trades -> total_trades and added drawdown; v3 added streaks and daily_loss."""

    VERSION = 3

    def __init__(self) -> None:
        self.state: dict = {"balance": 10_000.0, "total_trades": 0}

    def state_dict(self):
        return dict(self.state)

    def load_state_dict(self, state):
        self.state = dict(state)


def risk_v1_to_v2(s):
    s = dict(s)
    s["total_trades"] = s.pop("trades")
    s["drawdown"] = round((s["peak"] - s["balance"]) / s["peak"], 8)
    return s


def risk_v2_to_v3(s):
    return {**s, "streaks": {"win": 0, "loss": 0}, "daily_loss": 0.0}


class QTable:
    """Schema 2 (``__getstate__``): epsilon moved into an exploration schedule."""

    def __init__(self) -> None:
        self.q: dict = {}
        self.exploration = {"epsilon": 1.0, "decay": 0.995}

    def __getstate__(self):
        return {"q": self.q, "exploration": self.exploration}

    def __setstate__(self, s):
        self.q, self.exploration = s["q"], s["exploration"]


def qtable_v1_to_v2(s):
    return {"q": s["q"], "exploration": {"epsilon": s["epsilon"], "decay": 0.995}}


class Attention:
    def __init__(self) -> None:
        self.weights = np.full(4, 0.25)

    def state_dict(self):
        return {"weights": self.weights}

    def load_state_dict(self, s):
        self.weights = s["weights"]


def trade(i):
    return {"id": i, "pnl": PNL[i], "closed": START + dt.timedelta(minutes=7 * i), "leverage": 1 + i % 2}


def open_current(directory, *, calls=None, readonly=False, **kw):
    """Today's code: risk at schema 3, q_table at 2, attention and trades at 1."""
    calls = [] if calls is None else calls

    def logged(name, fn):
        def step(s):
            calls.append(name)
            return fn(s)

        return step

    store = StateStore(directory, autosave_every=0, readonly=readonly, **kw)
    parts = {
        "risk": store.register(
            "risk",
            Risk(),
            version=3,
            migrations={1: logged("risk 1->2", risk_v1_to_v2), 2: logged("risk 2->3", risk_v2_to_v3)},
        ),
        "q_table": store.register(
            "q_table", QTable(), version=2, migrations={1: logged("q_table 1->2", qtable_v1_to_v2)}
        ),
        "attention": store.register("attention", Attention()),
        "trades": store.register("trades", BoundedLog(8)),
    }
    report = store.load()
    return store, parts, report


def copy_fixture(name, tmp_path):
    target = tmp_path / name
    shutil.copytree(FIXTURES / name, target)
    return target


def tree_digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def assert_v1_content_upgraded(parts):
    balance, peak = 10_034.5, 10_038.25
    assert parts["risk"].state == {
        "balance": balance,
        "total_trades": 6,
        "wins": 3,
        "losses": 3,
        "peak": peak,
        "day": dt.date(2026, 1, 5),
        "drawdown": round((peak - balance) / peak, 8),
        "streaks": {"win": 0, "loss": 0},
        "daily_loss": 0.0,
    }
    assert parts["q_table"].q == {"trend": [0.25, -0.5], "range": [-0.125, 0.75], "volatile": [0.0, 0.0]}
    assert parts["q_table"].exploration == {"epsilon": 0.2, "decay": 0.995}
    weights = parts["attention"].weights
    assert weights.dtype == np.float64 and weights.tolist() == [0.325, 0.275, 0.225, 0.175]
    # 6 checkpointed trades + 4 journaled after the last checkpoint, bounded to the newest 8
    assert list(parts["trades"]) == [trade(i) for i in range(2, 10)]


@pytest.mark.parametrize("fixture", ["v1-plain", "v1-password"])
def test_golden_v1_store_migrates_step_by_step_and_replays_its_journal(fixture, tmp_path):
    directory = copy_fixture(fixture, tmp_path)
    kw = {"password": "persistkit-golden"} if fixture == "v1-password" else {}
    calls: list[str] = []
    store, parts, report = open_current(directory, calls=calls, **kw)
    assert calls == ["risk 1->2", "risk 2->3", "q_table 1->2"]  # one step at a time, in order
    assert report.generation == 3 and not report.recovered
    assert {n: (c.status, c.stored_version, c.version) for n, c in report.components.items()} == {
        "risk": ("migrated", 1, 3),
        "q_table": ("migrated", 1, 2),
        "attention": ("loaded", 1, 1),
        "trades": ("loaded", 1, 1),
    }
    assert report["trades"].journal_records == 4 and report["trades"].torn_records == 0
    assert_v1_content_upgraded(parts)
    # the migrated state was checkpointed at once, under the new schema versions
    assert store.generation == 4
    store.close()
    calls.clear()
    _, again, report2 = open_current(directory, calls=calls, readonly=True, **kw)
    assert calls == [] and {c.status for c in report2.components.values()} == {"loaded"}
    assert report2["risk"].stored_version == 3 and report2["q_table"].stored_version == 2
    assert_v1_content_upgraded(again)


def test_golden_v1_torn_journal_tail_is_dropped_and_reported(tmp_path):
    directory = copy_fixture("v1-torn-journal", tmp_path)
    store, parts, report = open_current(directory)
    assert report["trades"].journal_records == 4
    assert report["trades"].torn_records > 0 and "torn" in report["trades"].detail
    assert_v1_content_upgraded(parts)  # the half-written 11th trade was never acknowledged
    store.close()


def test_golden_v1_read_only_open_changes_nothing(tmp_path):
    directory = copy_fixture("v1-torn-journal", tmp_path)
    before = tree_digest(directory)
    store, parts, report = open_current(directory, readonly=True)
    assert report["risk"].status == "migrated"
    assert_v1_content_upgraded(parts)
    store.close()
    assert tree_digest(directory) == before


def test_golden_v1_wrong_password_is_refused(tmp_path):
    directory = copy_fixture("v1-password", tmp_path)
    with pytest.raises(WrongKeyError) as info:
        open_current(directory, password="not-it")
    assert str(directory) in str(info.value)


def test_golden_v1_without_a_migration_step_names_the_missing_step(tmp_path):
    directory = copy_fixture("v1-plain", tmp_path)
    store = StateStore(directory, autosave_every=0)
    store.register("risk", Risk(), version=3, migrations={2: risk_v2_to_v3})
    before = tree_digest(directory)
    with pytest.raises(MigrationError, match=r"'risk': no migration from version 1 to 2") as info:
        store.load()
    assert "migrations={1:" in str(info.value)
    store.close()
    assert tree_digest(directory) == before  # a failed migration writes nothing


def test_golden_v1_failing_migration_step_is_reported(tmp_path):
    directory = copy_fixture("v1-plain", tmp_path)
    store = StateStore(directory, autosave_every=0)

    def broken(s):
        return s["no_such_field"]

    store.register("risk", Risk(), version=2, migrations={1: broken})
    with pytest.raises(MigrationError, match=r"'risk': migration 1->2 failed: KeyError"):
        store.load()
    store.close()


@pytest.mark.parametrize("fixture", ["v1-plain", "v1-password", "v1-torn-journal"])
def test_golden_v1_stores_verify_with_the_cli(fixture):
    args = ["--password", "persistkit-golden"] if fixture == "v1-password" else []
    proc = subprocess.run(
        [sys.executable, "-m", "persistkit", "state", "inspect", str(FIXTURES / fixture), "--verify", *args],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verified: every committed generation is intact" in proc.stdout
    assert "journal trades: 4 records" in proc.stdout


def test_generator_still_writes_stores_that_load(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(FIXTURES / "make_v1.py"), str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("v1-plain", "v1-torn-journal"):
        store, parts, _ = open_current(tmp_path / name, readonly=True)
        assert_v1_content_upgraded(parts)
        store.close()
    assert sorted(p.name for p in (tmp_path / "v1-plain").iterdir()) == [
        "CURRENT",
        "STORE",
        "gen-000001",
        "gen-000002",
        "gen-000003",
    ]
