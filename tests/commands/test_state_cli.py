"""`persistkit state inspect DIR`: what a store holds, read without a lock and without writing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from persistkit.commands.state import state_group
from persistkit.format.crypto import KdfParams
from persistkit.keys import write_key_file
from persistkit.state import BoundedLog, StateStore
from persistkit.state.store import StateRecoveredWarning

FAST = KdfParams(n=2**15)


class Risk:
    def __init__(self) -> None:
        self.balance = 100.0
        self.trades = 0

    def state_dict(self):
        return {"balance": self.balance, "trades": self.trades}

    def load_state_dict(self, state):
        self.balance, self.trades = state["balance"], state["trades"]


def build_store(directory, *, appends_after_checkpoint=3, **kw):
    """Two checkpoints, then a few journaled appends; closed without a final save (as if killed)."""
    store = StateStore(directory, autosave_every=0, **kw)
    risk = store.register("risk", Risk(), version=2)
    trades = store.register("trades", BoundedLog(100))
    store.load()
    for i in range(5):
        trades.append({"id": i, "pnl": 1.5 * i})
        risk.trades += 1
    store.save()
    risk.balance = 250.0
    store.save()
    for i in range(5, 5 + appends_after_checkpoint):
        trades.append({"id": i, "pnl": 0.5})
    generation = store.generation
    store.abandon()
    return generation


def inspect(*args):
    result = CliRunner().invoke(state_group, ["inspect", *map(str, args)])
    return result


def gen_dir(directory, n):
    return Path(directory) / f"gen-{n:06d}"


def test_lists_generations_components_sizes_versions_and_journal_length(tmp_path):
    store_dir = tmp_path / "store"
    current = build_store(store_dir)
    result = inspect(store_dir)
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"CURRENT -> gen-{current:06d}" in out and "encrypted: no" in out
    assert f"gen-{current:06d}  current" in out and f"gen-{current - 1:06d}  previous" in out
    risk_size = (gen_dir(store_dir, current) / "risk.pk").stat().st_size
    risk_line = next(line for line in out.splitlines() if line.strip().startswith("risk "))
    assert risk_line.split() == ["risk", "2", str(risk_size)]  # name, schema version, bytes
    assert "journal trades: 3 records" in out  # the appends after the newest checkpoint


def test_json_output_is_complete_and_machine_readable(tmp_path):
    store_dir = tmp_path / "store"
    current = build_store(store_dir)
    result = inspect(store_dir, "--json", "--verify")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["current"] == current and doc["problems"] == [] and doc["verified"] is True
    newest = next(g for g in doc["generations"] if g["status"] == "current")
    comps = {c["name"]: c for c in newest["components"]}
    assert set(comps) == {"risk", "trades"}
    assert comps["risk"]["schema"] == 2 and comps["trades"]["schema"] == 1
    assert comps["risk"]["bytes"] == (gen_dir(store_dir, current) / "risk.pk").stat().st_size
    journal = newest["journals"][0]
    assert (journal["name"], journal["records"], journal["first_seq"]) == ("trades", 3, 5)
    assert newest["bytes"] == sum(f.stat().st_size for f in gen_dir(store_dir, current).iterdir())


def test_inspect_takes_no_lock_and_writes_nothing_while_a_writer_runs(tmp_path):
    store_dir = tmp_path / "store"
    build_store(store_dir)
    writer = StateStore(store_dir, autosave_every=0)  # holds the writer lock
    writer.register("risk", Risk(), version=2)
    writer.register("trades", BoundedLog(100))
    writer.load()
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in store_dir.rglob("*")}
    result = inspect(store_dir, "--verify")
    after = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in store_dir.rglob("*")}
    writer.close()
    assert result.exit_code == 0, result.output
    assert before == after


def test_torn_journal_tail_is_shown_but_is_not_a_problem(tmp_path):
    store_dir = tmp_path / "store"
    current = build_store(store_dir)
    with open(gen_dir(store_dir, current) / "trades.journal", "ab") as f:
        f.write(b"\x40\x00\x00\x00\x09")  # an append cut short by a crash: never acknowledged
    result = inspect(store_dir, "--verify")
    assert result.exit_code == 0, result.output
    assert "journal trades: 3 records" in result.output and "torn tail of 5 bytes" in result.output


def test_damaged_journal_middle_fails_and_names_the_record(tmp_path):
    store_dir = tmp_path / "store"
    current = build_store(store_dir)
    journal = gen_dir(store_dir, current) / "trades.journal"
    data = bytearray(journal.read_bytes())
    data[15] ^= 0xFF  # inside the first record; two intact records follow
    journal.write_bytes(bytes(data))
    result = inspect(store_dir)
    assert result.exit_code == 1
    assert "trades.journal" in result.output and "record 5" in result.output
    assert "acknowledged appends" in result.output


def test_verify_detects_a_damaged_component_that_headers_alone_miss(tmp_path):
    store_dir = tmp_path / "store"
    current = build_store(store_dir)
    risk = gen_dir(store_dir, current) / "risk.pk"
    data = bytearray(risk.read_bytes())
    data[-20] ^= 0x01  # one bit in the payload: the header still reads fine
    risk.write_bytes(bytes(data))
    assert inspect(store_dir).exit_code == 0  # a header-only listing cannot see it
    result = inspect(store_dir, "--verify")
    assert result.exit_code == 1
    assert f"gen-{current:06d}: risk.pk: does not match the generation manifest" in result.output


def test_damaged_header_is_reported_without_verify(tmp_path):
    store_dir = tmp_path / "store"
    current = build_store(store_dir)
    risk = gen_dir(store_dir, current) / "risk.pk"
    data = bytearray(risk.read_bytes())
    data[12] ^= 0xFF  # inside the envelope header
    risk.write_bytes(bytes(data))
    result = inspect(store_dir)
    assert result.exit_code == 1
    assert "risk.pk" in result.output and "IntegrityError" in result.output


def test_spliced_component_from_another_generation_is_detected(tmp_path):
    store_dir = tmp_path / "store"
    current = build_store(store_dir)
    old = (gen_dir(store_dir, current - 1) / "risk.pk").read_bytes()
    (gen_dir(store_dir, current) / "risk.pk").write_bytes(old)
    result = inspect(store_dir, "--verify")
    assert result.exit_code == 1 and "risk.pk: does not match the generation manifest" in result.output


def test_quarantined_generations_are_listed_and_not_counted_as_problems(tmp_path):
    store_dir = tmp_path / "store"
    current = build_store(store_dir)
    risk = gen_dir(store_dir, current) / "risk.pk"
    data = bytearray(risk.read_bytes())
    data[-20] ^= 0x01
    risk.write_bytes(bytes(data))
    store = StateStore(store_dir, autosave_every=0)
    store.register("risk", Risk(), version=2)
    store.register("trades", BoundedLog(100))
    with pytest.warns(StateRecoveredWarning):
        store.load()  # falls back, quarantines the damaged generation, checkpoints anew
    store.close()
    result = inspect(store_dir, "--verify")
    assert result.exit_code == 0, result.output
    assert f"gen-{current:06d}.corrupt-" in result.output and "quarantined" in result.output


def test_encrypted_store_lists_without_a_key_and_verifies_with_it(tmp_path):
    store_dir = tmp_path / "store"
    build_store(store_dir, password="s3cret", kdf=FAST)
    listing = inspect(store_dir, "--json")
    assert listing.exit_code == 0, listing.output
    doc = json.loads(listing.output)
    assert doc["encrypted"] is True
    comps = next(g for g in doc["generations"] if g["status"] == "current")["components"]
    assert {c["name"]: c["schema"] for c in comps} == {"risk": 2, "trades": 1}
    assert all(c["encrypted"] for c in comps)
    verified = inspect(store_dir, "--verify", "--password", "s3cret")
    assert verified.exit_code == 0, verified.output
    assert "verified: every committed generation is intact" in verified.output
    wrong = inspect(store_dir, "--verify", "--password", "wrong")
    assert wrong.exit_code == 1
    assert "persistkit state inspect:" in wrong.output and "password" in wrong.output.lower()


def test_key_file_store_verifies_with_its_key(tmp_path):
    store_dir = tmp_path / "store"
    key_file = tmp_path / "state.key"
    write_key_file(key_file)
    build_store(store_dir, key_file=key_file)
    result = inspect(store_dir, "--verify", "--key-file", key_file)
    assert result.exit_code == 0, result.output
    other = tmp_path / "other.key"
    write_key_file(other)
    wrong = inspect(store_dir, "--verify", "--key-file", other)
    assert wrong.exit_code == 1 and "key" in wrong.output.lower()
    both = inspect(store_dir, "--verify", "--key-file", key_file, "--password", "x")
    assert both.exit_code == 2 and "pass --password or --key-file, not both" in both.output
    assert "key_file=" not in both.output  # the rule keys.check_one states, named as flags
    again = inspect(store_dir, "--verify", "--key-file", key_file)  # one of them is enough again
    assert again.exit_code == 0, again.output


def test_password_given_for_a_plain_store_is_refused(tmp_path):
    store_dir = tmp_path / "store"
    build_store(store_dir)
    result = inspect(store_dir, "--verify", "--password", "x")
    # a flag mismatch is a usage error (exit 2), not damage
    assert result.exit_code == 2 and "created without a password" in result.output


def test_not_a_store_and_missing_directory(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    result = inspect(tmp_path / "junk")
    assert result.exit_code == 1
    assert "not a persistkit state store" in result.output and "StateStore(" in result.output
    missing = inspect(tmp_path / "nowhere")
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_store_without_checkpoint_yet(tmp_path):
    store_dir = tmp_path / "store"
    store = StateStore(store_dir, autosave_every=0, readonly=False)
    store.register("risk", Risk())
    store.load()  # the first load commits an initial checkpoint
    store.abandon()
    result = inspect(store_dir)
    assert result.exit_code == 0 and "CURRENT -> gen-000001" in result.output


def test_damaged_current_pointer_is_a_problem(tmp_path):
    store_dir = tmp_path / "store"
    build_store(store_dir)
    (store_dir / "CURRENT").write_bytes(b"garbage")
    result = inspect(store_dir)
    assert result.exit_code == 1 and "CURRENT is unreadable" in result.output


def test_top_level_cli_runs_the_state_command(tmp_path):
    store_dir = tmp_path / "store"
    build_store(store_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        proc = subprocess.run(
            [sys.executable, "-m", "persistkit", "state", "inspect", str(store_dir), "--json"],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "error"},
        )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["store_id"]


def test_generations_that_are_never_loaded_are_listed_but_not_judged(tmp_path):
    store_dir = tmp_path / "store"
    current = build_store(store_dir)
    # an orphan (renamed into place, CURRENT never named it), one being retired, one never committed
    shutil.copytree(gen_dir(store_dir, current), store_dir / "gen-000000")
    (gen_dir(store_dir, current - 1)).rename(store_dir / f"gen-{current - 1:06d}.retired-00ff")
    shutil.copytree(gen_dir(store_dir, current), gen_dir(store_dir, current + 1))
    (gen_dir(store_dir, current + 1) / "risk.pk").write_bytes(b"damaged, but never loaded")
    result = inspect(store_dir, "--verify", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    status = {g["directory"]: g["status"] for g in doc["generations"]}
    assert status == {
        "gen-000000": "orphan",
        f"gen-{current - 2:06d}": "previous",
        f"gen-{current - 1:06d}.retired-00ff": "retired",
        f"gen-{current:06d}": "current",
        f"gen-{current + 1:06d}": "uncommitted",
    }
    assert doc["history"] == [current - 2, current - 1, current] and doc["problems"] == []
