"""Issue 13: CLI messages name CLI flags; flag mismatches are told from tampering; verify takes any file."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_state_cli import FAST, build_store, inspect

import persistkit as pk
from persistkit.cli import cli, cli_advice
from persistkit.format.crypto import KdfParams
from persistkit.keys import write_key_file

HOSTILE = Path(__file__).resolve().parents[2] / "fixtures" / "hostile"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_advice_names_flags_not_keyword_arguments():
    assert cli_advice("pass password= to open it.", password_flag="--password-env VAR") == (
        "pass --password-env VAR to open it."
    )
    assert cli_advice("pass key_file= or password=.") == "pass --key-file or --password."
    assert cli_advice("StateStore(password='x') and register(name, password=p)") == (
        "StateStore(password='x') and register(name, password=p)"
    )


def test_verify_of_a_password_bundle_without_one_names_the_flag(tmp_path):
    path = pk.save_bundle(
        tmp_path / "pw.models", {"q": np.zeros(3)}, password="hunter2", kdf=KdfParams.floor()
    )
    result = run("verify", path)
    assert result.exit_code == 1
    assert "--password-env" in result.output and not re.search(r"\bpassword=", result.output)


def test_state_inspect_with_a_wrong_password_names_the_flag(tmp_path):
    store_dir = tmp_path / "store"
    key = tmp_path / "state.key"
    write_key_file(key)
    build_store(store_dir, key_file=key)
    result = inspect(store_dir, "--verify", "--password", "nope")
    assert result.exit_code == 1 and "--password" in result.output
    assert not re.search(r"\b(password|key_file)=", result.output)


def test_a_key_for_an_unencrypted_store_is_a_flag_mismatch_not_forgery(tmp_path):
    store_dir = tmp_path / "store"
    key = tmp_path / "state.key"
    write_key_file(key)
    build_store(store_dir)
    result = inspect(store_dir, "--verify", "--key-file", key)
    assert result.exit_code == 2
    assert "is not encrypted" in result.output and "without it" in result.output
    assert "forged" not in result.output


def test_a_plain_generation_in_an_encrypted_store_is_still_suspected(tmp_path):
    plain, encrypted = tmp_path / "plain", tmp_path / "encrypted"
    key = tmp_path / "state.key"
    write_key_file(key)
    build_store(plain)
    build_store(encrypted, key_file=key)
    gen = sorted(p.name for p in encrypted.iterdir() if p.name.startswith("gen-"))[-1]
    shutil.copy(plain / gen / "MANIFEST", encrypted / gen / "MANIFEST")  # a plain file planted
    result = inspect(encrypted, "--verify", "--key-file", key)
    assert result.exit_code == 1 and "forged" in result.output


def test_verify_without_a_key_says_macs_were_not_checked(tmp_path):
    store_dir = tmp_path / "store"
    build_store(store_dir, password="s3cret", kdf=FAST)
    unkeyed = inspect(store_dir, "--verify")
    assert unkeyed.exit_code == 0, unkeyed.output
    assert (
        "MACs NOT checked" in unkeyed.output
        and "every committed generation is intact\n" not in unkeyed.output
    )
    keyed = inspect(store_dir, "--verify", "--password", "s3cret")
    assert "intact, MACs included" in keyed.output
    cli_verify = run("verify", store_dir)
    assert cli_verify.exit_code == 0 and "not checked: MACs" in cli_verify.output


@pytest.fixture
def workspace(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.json").write_text('{"w": 1}')
    archive = pk.Archiver(tmp_path, keep=3).create()
    store_dir = tmp_path / "store"
    build_store(store_dir)
    return archive, store_dir


def test_pk_verify_accepts_any_persistkit_file(workspace):
    archive, store_dir = workspace
    report = pk.verify(archive)
    assert report.kind == "archive" and report.checked.startswith("1 files")
    assert pk.verify(store_dir).kind == "state store"
    assert pk.verify(store_dir / "CURRENT").kind == "envelope"
    gen = sorted(p for p in store_dir.iterdir() if p.name.startswith("gen-"))[-1]
    assert pk.verify(gen / "trades.journal").kind == "journal"
    with pytest.raises(pk.FormatError, match="no key to check"):
        pk.verify(store_dir, key_file=Path(os.devnull))


def test_persistkit_verify_on_an_archive_and_a_damaged_archive(workspace, tmp_path):
    archive, store_dir = workspace
    result = run("verify", archive, store_dir)
    assert result.exit_code == 0, result.output
    assert "archive, 1 files against MANIFEST.json intact" in result.output
    assert "zip structure" not in result.output
    damaged = tmp_path / "damaged.zip"
    data = bytearray(archive.read_bytes())
    at = data.index(b'{"w": 1}') if b'{"w": 1}' in data else None
    if at is None:  # compressed member: flip a byte inside its data instead
        at = data.index(b"models/m.json") + 40
    data[at] ^= 0x20
    damaged.write_bytes(bytes(data))
    bad = run("verify", damaged)
    assert bad.exit_code == 1 and "FAILED" in bad.output and "damaged" in bad.output.lower()


def test_verify_of_a_non_persistkit_file_is_a_format_error(tmp_path):
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(pk.FormatError, match="not a persistkit file"):
        pk.verify(other)


def test_archive_cli_os_errors_carry_advice_for_their_errno(tmp_path):
    """One advice table (io.fs) for the archive CLI too: a file in the way is not a full disk."""
    ws = tmp_path / "ws"
    (ws / "logs").mkdir(parents=True)
    (ws / "logs" / "train.log").write_text("step 1\n")
    (ws / "archives").write_text("a file where the archive directory goes")
    blocked = run("archive", "create", "--root", ws)
    assert blocked.exit_code == 1 and "Traceback" not in blocked.output
    assert str(ws / "archives") in blocked.output and "file is in the way" in blocked.output
    assert "disk is full" not in blocked.output and "Nothing was archived" in blocked.output

    (ws / "archives").unlink()  # recover: the same command now works
    made = run("archive", "create", "--root", ws)
    assert made.exit_code == 0, made.output
    archive = next((ws / "archives").glob("*.zip"))

    (tmp_path / "blocker").write_text("a file")  # fail again, for another reason
    refused = run("archive", "restore", archive, tmp_path / "blocker" / "out")
    assert refused.exit_code == 1 and "blocker" in refused.output
    assert "ENOTDIR" in refused.output and "file is in the way" in refused.output
    assert "Nothing was restored" in refused.output and "disk is full" not in refused.output
