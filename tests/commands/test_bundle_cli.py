"""persistkit inspect / verify / keygen."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import persistkit as pk
from persistkit.commands.bundle import keygen_command
from persistkit.commands.inspect import inspect_command, verify_command
from persistkit.format.crypto import KdfParams
from persistkit.keys import read_key_file

HOSTILE = Path(__file__).resolve().parents[2] / "fixtures" / "hostile"


@pytest.fixture
def bundles(tmp_path):
    good = pk.save_bundle(
        tmp_path / "good.models", {"q_table": np.ones((4, 2), dtype=np.float32), "cfg": {"a": 1}}
    )
    plain = pk.save_bundle(tmp_path / "plain.models", {"q": np.zeros(3)}, encrypt=False)
    pw = pk.save_bundle(tmp_path / "pw.models", {"q": np.zeros(3)}, password="hunter2", kdf=KdfParams.floor())
    return good, plain, pw


def run(command, args):
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


def test_inspect_prints_the_manifest_without_a_key(bundles):
    good, _, _ = bundles
    os.unlink(str(good) + ".key")
    result = run(inspect_command, [good])
    assert result.exit_code == 0, result.output
    for words in ("q_table", "numpy", "dtype=float32", "metadata", "key file", "AES-256-GCM"):
        assert words in result.output
    as_json = run(inspect_command, [good, "--json"])
    doc = json.loads(as_json.output)
    assert doc["format"] == "persistkit.bundle" and [m["name"] for m in doc["members"]] == [
        "q_table",
        "cfg",
        "metadata",
    ]


def test_inspect_of_a_damaged_file_exits_1(tmp_path):
    result = run(inspect_command, [HOSTILE / "bundle_truncated.models"])
    assert result.exit_code == 1 and "damaged or truncated" in result.output


def test_verify_all_intact_exits_0(bundles, monkeypatch):
    good, plain, pw = bundles
    result = run(verify_command, [good, plain])
    assert result.exit_code == 0, result.output
    assert "ok     " in result.output and "authenticated" in result.output and "digests only" in result.output
    monkeypatch.setenv("BUNDLE_PW", "hunter2")
    assert run(verify_command, [pw, "--password-env", "BUNDLE_PW"]).exit_code == 0


def test_verify_names_file_and_member_and_exits_1(tmp_path):
    good, spliced = tmp_path / "good.models", tmp_path / "spliced.models"
    shutil.copy(HOSTILE / "bundle_good.models", good)
    shutil.copy(HOSTILE / "bundle_spliced.models", spliced)
    key = tmp_path / "k.key"
    shutil.copy(HOSTILE / "bundle_key.key", key)
    key.chmod(0o600)
    result = run(verify_command, [good, spliced, "--key-file", key])
    assert result.exit_code == 1
    assert f"ok     {good}" in result.output
    assert f"FAILED {spliced} (member q_table)" in result.output
    assert "1 of 2 file(s) failed" in result.output


def test_verify_wrong_key_exits_1(bundles, tmp_path, monkeypatch):
    good, _, pw = bundles
    other = tmp_path / "other.key"
    run(keygen_command, [other])
    result = run(verify_command, [good, "--key-file", other])
    assert result.exit_code == 1 and "does not open" in result.output
    monkeypatch.setenv("BUNDLE_PW", "wrong")
    result = run(verify_command, [pw, "--password-env", "BUNDLE_PW"])
    assert result.exit_code == 1 and "password does not open" in result.output


def test_verify_usage_errors_exit_2(bundles, tmp_path):
    good, _, _ = bundles
    assert run(verify_command, []).exit_code == 2
    assert run(verify_command, [good, "--password-env", "PERSISTKIT_SURELY_UNSET_VAR"]).exit_code == 2
    assert run(verify_command, [good, "--key-file", tmp_path / "k", "--password-env", "X"]).exit_code == 2


def test_keygen_creates_a_0600_key_and_never_overwrites(tmp_path):
    path = tmp_path / "team.key"
    result = run(keygen_command, [path])
    assert result.exit_code == 0 and str(path) in result.output
    assert (path.stat().st_mode & 0o777) == 0o600
    key = read_key_file(path)
    again = run(keygen_command, [path])
    assert again.exit_code == 1 and "already exists" in again.output
    assert read_key_file(path) == key
    bundle = pk.save_bundle(tmp_path / "b.models", {"q": np.ones(1)}, key_file=path)
    assert pk.verify(bundle, key_file=path).authenticated


def test_the_real_cli_runs_verify(bundles):
    good, _, _ = bundles
    out = subprocess.run(
        [sys.executable, "-m", "persistkit", "verify", str(good)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout


# -- inspect: every kind of persistkit file ------------------------------------------------------------


@pytest.fixture
def kinds(tmp_path):
    """One real file of each kind: a state store (with a journal), an archive and a key file."""
    store = pk.StateStore(tmp_path / "store", autosave_every=0)
    counter, trades = {"value": 0}, pk.BoundedLog(10)  # a plain dict is its own state
    store.register("counter", counter)
    store.register("trades", trades)
    store.load()
    counter["value"] = 3
    store.save()
    trades.append({"id": 1})
    store.abandon()  # a crash: the appended record stays in the current generation's journal
    (tmp_path / "ws" / "logs").mkdir(parents=True)
    (tmp_path / "ws" / "logs" / "events.gz").write_bytes(b"event-bytes" * 40)
    archive = pk.Archiver(tmp_path / "ws", sources=("logs",), root_patterns=()).create()
    key = tmp_path / "team.key"
    run(keygen_command, [key])
    return {"store": tmp_path / "store", "archive": archive, "key": key}


def test_inspect_a_state_store_directory(kinds):
    result = run(inspect_command, [kinds["store"]])
    assert result.exit_code == 0, result.output
    assert "state store" in result.output and "gen-000002  current" in result.output
    doc = json.loads(run(inspect_command, [kinds["store"], "--json"]).output)
    assert doc["format"] == "persistkit.state-store" and doc["current"] == 2 and doc["problems"] == []


def test_inspect_envelopes_and_journals_of_a_store(kinds):
    current = run(inspect_command, [kinds["store"] / "CURRENT"])
    assert current.exit_code == 0, current.output
    for words in ("persistkit envelope", "kind        current", "encrypted   no", "generation = 2"):
        assert words in current.output
    component = json.loads(
        run(inspect_command, [kinds["store"] / "gen-000002" / "counter.pk", "--json"]).output
    )
    assert (component["format"], component["kind"], component["encrypted"]) == (
        "persistkit.envelope",
        "component",
        False,
    )
    journal = run(inspect_command, [kinds["store"] / "gen-000002" / "trades.journal"])
    assert (
        journal.exit_code == 0
        and "persistkit journal" in journal.output
        and "records     1" in journal.output
    )


def test_inspect_an_archive_and_a_damaged_one(kinds):
    archive = kinds["archive"]
    result = run(inspect_command, [archive])
    assert result.exit_code == 0 and "training archive" in result.output and "intact" in result.output
    data = bytearray(archive.read_bytes())
    data[data.index(b"event-bytes")] ^= 0x01
    archive.write_bytes(bytes(data))
    damaged = run(inspect_command, [archive, "--json"])
    assert damaged.exit_code == 1
    doc = json.loads(damaged.output)
    assert doc["format"] == "persistkit.archive" and not doc["ok"] and "logs/events.gz" in doc["problems"][0]


def test_inspect_a_key_file_shows_its_fingerprint_only(kinds):
    result = run(inspect_command, [kinds["key"]])
    assert result.exit_code == 0, result.output
    fingerprint = read_key_file(kinds["key"]).fingerprint
    assert "persistkit key file" in result.output and fingerprint in result.output and "0600" in result.output
    assert kinds["key"].read_text().strip() not in result.output


def test_inspect_of_something_else_exits_1_naming_it(tmp_path):
    garbage = tmp_path / "notes.txt"
    garbage.write_text("just some notes\n")
    result = run(inspect_command, [garbage])
    assert result.exit_code == 1
    assert f"{garbage} is not a persistkit file" in result.output and "persistkit files are" in result.output
    plain_dir = tmp_path / "logs"
    plain_dir.mkdir()
    assert run(inspect_command, [plain_dir]).exit_code == 1
    assert run(inspect_command, [tmp_path / "missing"]).exit_code == 2  # click: the path does not exist


def test_the_real_cli_inspects_a_store(kinds):
    out = subprocess.run(
        [sys.executable, "-m", "persistkit", "inspect", str(kinds["store"]), "--json"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["format"] == "persistkit.state-store"
