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
from persistkit.commands.bundle import inspect_command, keygen_command, verify_command
from persistkit.format.crypto import KdfParams, read_key_file

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
    assert "1 of 2 bundle(s) failed" in result.output


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
