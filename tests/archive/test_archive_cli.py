"""`persistkit archive ...` never exits 0 for work it did not do."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import persistkit as pk
from persistkit.archive import Archiver
from persistkit.commands.archive import archive_group


def run(*args):
    return CliRunner().invoke(archive_group, [str(a) for a in args])


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws"
    (root / "logs").mkdir(parents=True)
    (root / "logs" / "training.log").write_text("step 1\n" * 100)
    return root


@pytest.mark.parametrize("command", ["verify", "list", "create", "prune"])
def test_a_root_that_does_not_exist_fails(tmp_path, command):
    result = run(command, "--root", tmp_path / "typo")
    assert result.exit_code == 1, result.output
    assert "typo" in result.output and "does not exist" in result.output
    assert not (tmp_path / "typo").exists(), "the command created the mistyped root"


def test_verify_with_no_archives_fails(ws):
    result = run("verify", "--root", ws)
    assert result.exit_code == 1 and "no archives" in result.output


def test_list_says_when_there_are_none_and_lists_them_otherwise(ws):
    empty = run("list", "--root", ws)
    assert empty.exit_code == 0 and "no archives" in empty.output
    path = Archiver(ws).create()
    listed = run("list", "--root", ws)
    assert listed.exit_code == 0 and path.name in listed.output


def test_list_takes_the_workspace_as_an_argument_like_state_inspect(ws):
    path = Archiver(ws).create()
    listed = run("list", ws)
    assert listed.exit_code == 0 and path.name in listed.output
    assert run("list", ws, "--root", ws).exit_code == 0
    both = run("list", ws, "--root", ws / "logs")
    assert both.exit_code == 2 and "give the workspace once" in both.output
    missing = run("list", ws / "typo")
    assert missing.exit_code == 1 and "does not exist" in missing.output


def test_create_warns_when_no_source_exists(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run("create", "--root", tmp_path / "empty")
    assert "is --root right?" in result.output


def test_restore_refuses_a_model_bundle_with_a_clear_message(tmp_path):
    bundle = pk.save_bundle(tmp_path / "x.models", {"w": [1, 2, 3]}, encrypt=False)
    result = run("restore", bundle, tmp_path / "out")
    assert result.exit_code == 1
    assert "model bundle" in result.output and "load_bundle" in result.output
    assert not (tmp_path / "out").exists()


def test_verify_of_a_model_bundle_fails(ws, tmp_path):
    bundle = pk.save_bundle(tmp_path / "x.models", {"w": [1, 2, 3]}, encrypt=False)
    result = run("verify", "--root", ws, bundle)
    assert result.exit_code == 1 and "model bundle" in result.output
