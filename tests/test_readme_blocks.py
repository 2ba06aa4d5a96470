"""Every code block in README.md runs as printed.

The blocks are extracted from README.md, in order, and each one is claimed by a test here
(the wallet example by tests/plugin/test_readme.py). Python blocks run as scripts in a temp
directory, shell blocks through bash there, with ``persistkit`` on PATH meaning this checkout.
The two install commands at the top are not run (they install packages); they are pinned,
and the second must be exactly what CI runs (.ci/run).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# (section heading, language) of every fenced block, in order; a new block needs a test below
EXPECTED = [
    ("persistkit", "bash"),  # install commands
    ("Verify your own component", "python"),  # tests/plugin/test_readme.py
    ("What the observers see", "python"),
    ("A program under SIGTERM and SIGKILL: `lifecycle.subprocess`", "python"),
    ("A state store in a long-running bot", "python"),
    ("A state store in a long-running bot", "bash"),
    ("Model bundles", "python"),
    ("A bot's whole state in one StateStore", "python"),
    ("Training archives", "python"),
    ("Training resume", "python"),
    ("The reference bot and training script", "bash"),
    ("Development", "bash"),
    ("Several machines", "python"),
]


def blocks() -> list[tuple[str, str, str]]:
    out = []
    heading = ""
    lines = README.read_text().splitlines(keepends=True)
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.startswith("```"):
            lang = line[3:].strip()
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            out.append((heading, lang, "".join(lines[i + 1 : j])))
            i = j
        i += 1
    return out


def block(heading: str, lang: str) -> str:
    found = [code for h, lg, code in blocks() if h == heading and lg == lang]
    assert len(found) == 1, f"README section {heading!r} should have one {lang} block"
    return found[0]


@pytest.fixture
def shell_env(tmp_path):
    """``persistkit`` and ``python3`` on PATH mean this checkout's code."""
    shim = tmp_path / "_bin"
    shim.mkdir()
    (shim / "persistkit").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m persistkit "$@"\n')
    (shim / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    for name in ("persistkit", "python3"):
        (shim / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PATH"] = f"{shim}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["PYTHONWARNINGS"] = "error"
    return env


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (
        f"{args[:2]} exited {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    )
    return out.stdout


def run_python(code: str, cwd: Path, env: dict[str, str], name: str = "example.py") -> str:
    (cwd / name).write_text(code)
    return run([sys.executable, name], cwd, env)


def run_bash(code: str, cwd: Path, env: dict[str, str]) -> str:
    return run(["bash", "-euo", "pipefail", "-c", code], cwd, env)


def test_every_block_is_claimed_by_a_test():
    assert [(h, lang) for h, lang, _ in blocks()] == EXPECTED


def test_install_commands_are_pinned_and_the_second_is_ci():
    code = block("persistkit", "bash")
    commands = [ln for ln in code.splitlines() if ln and not ln.startswith("#")]
    assert commands == [
        "python3 -m pip install -c constraints.txt -e '.[all]' && persistkit check",
        "python3 -m pip install -c constraints.txt -e '.[dev]' && python3 -m pytest -n 2",
    ]
    ci = [
        ln
        for ln in (ROOT / ".ci" / "run").read_text().splitlines()
        if ln and not ln.startswith(("#", "set ", "cd "))
    ]
    assert ci == [commands[1]]


@pytest.fixture
def pytester(pytester, monkeypatch):
    """The child pytest inherits our environment: under `-n 2` it would think it is an xdist worker."""
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)
    return pytester


def run_as_pytest(pytester, code: str, *args: str):
    pytester.makepyfile(test_readme_block=code)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)


def test_observers_block_passes_as_printed_with_the_syscall_observer(pytester):
    result = run_as_pytest(pytester, block("What the observers see", "python"), "-W", "error")
    result.assert_outcomes(passed=1)


def test_observers_block_fails_with_synchronous_full(pytester):
    """The paragraph after the block: FULL loses the commit on power loss after save() returned."""
    code = block("What the observers see", "python")
    full = code.replace("synchronous=EXTRA", "synchronous=FULL")
    assert full != code
    result = run_as_pytest(pytester, full)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*crash_points: * crash states (power-loss model)*", "*unlink trades.db-journal*"]
    )


def test_observers_block_is_not_judgeable_with_the_python_observer(pytester):
    code = block("What the observers see", "python")
    python = code.replace('observe="syscalls"', 'observe="python"')
    assert python != code
    result = run_as_pytest(pytester, python)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*NotJudgeable*no verdict*", "*use observe='syscalls'*"])


LIFECYCLE = "A program under SIGTERM and SIGKILL: `lifecycle.subprocess`"


def test_lifecycle_subprocess_block_passes_as_printed(pytester):
    result = run_as_pytest(pytester, block(LIFECYCLE, "python"), "-W", "error")
    result.assert_outcomes(passed=1)


def test_lifecycle_subprocess_block_fails_when_the_ack_comes_first(pytester):
    """The sentence after the block: acknowledged before durable, a restart acknowledges it again."""
    code = block(LIFECYCLE, "python")
    early = code.replace(
        '        print(f"ACK {order}", flush=True)   # only once the order is durable\n', ""
    ).replace(
        '        tmp = path + ".tmp"\n',
        '        print(f"ACK {order}", flush=True)\n        tmp = path + ".tmp"\n',
    )
    assert early.count("print(") == 1 and early != code
    result = run_as_pytest(pytester, early.replace("kills=10", "kills=60"))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ids must be unique; id * was acknowledged twice*"])


def test_lifecycle_subprocess_block_under_power_loss_needs_the_directory_fsync(pytester):
    """The paragraph after the block: a power cut reverts the rename, until the directory is fsynced."""
    code = block(LIFECYCLE, "python").replace(
        "kills=10, verify=verify)", 'kills=3, verify=verify, model="power-loss")'
    )
    assert 'model="power-loss"' in code
    result = run_as_pytest(pytester, code.replace("report.kills == 10", "report.kills == 3"))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*acknowledged twice*power cut*reverted*replace orders.json.tmp -> orders.json*"]
    )
    fixed = code.replace(
        "        os.replace(tmp, path)\n",
        "        os.replace(tmp, path)\n"
        "        d = os.open(sys.argv[1], os.O_RDONLY); os.fsync(d); os.close(d)\n",
    )
    assert fixed != code
    result = run_as_pytest(pytester, fixed.replace("report.kills == 10", "report.kills == 3"))
    result.assert_outcomes(passed=1)


def test_state_store_block_runs_twice_and_the_inspect_commands_work(tmp_path, shell_env):
    code = block("A state store in a long-running bot", "python")
    assert run_python(code, tmp_path, shell_env, "bot.py") == "ACK 0 9987.50\n"
    assert run_python(code, tmp_path, shell_env, "bot.py") == "ACK 1 9975.00\n"
    out = run_bash(block("A state store in a long-running bot", "bash"), tmp_path, shell_env)
    assert "risk" in out and "trades" in out and "intact" in out


def test_state_store_block_reconciles_after_a_sigkill(tmp_path, shell_env):
    """The durability paragraph: killed after the append but before any checkpoint, the next run
    still counts the journaled trade in risk, and the next id does not repeat."""
    code = block("A state store in a long-running bot", "python")
    killed = code.replace("store.close()", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert killed != code
    (tmp_path / "killed.py").write_text(killed)
    out = subprocess.run(
        [sys.executable, "killed.py"], cwd=tmp_path, env=shell_env, capture_output=True, text=True
    )
    assert out.returncode == -9 and out.stdout == "ACK 0 9987.50\n"
    assert run_python(code, tmp_path, shell_env, "bot.py") == "ACK 1 9975.00\n"


def test_bundle_block_runs_and_keeps_training(tmp_path, shell_env):
    out = run_python(block("Model bundles", "python"), tmp_path, shell_env)
    assert out.startswith("128 {'symbol': 'BTCUSDT'"), out
    assert (tmp_path / "models" / "x.models").is_file() and (tmp_path / "models" / "x.models.key").is_file()


def test_bot_state_block_keeps_all_seven_components_across_runs(tmp_path, shell_env):
    """Seed 002's six files in one store: the second run loads the models the first one trained."""
    code = block("A bot's whole state in one StateStore", "python")
    first = run_python(code, tmp_path, shell_env, "bot.py").split()
    second = run_python(code, tmp_path, shell_env, "bot.py").split()
    assert first[0] == "1" and second[0] == "2"
    assert first[1:] == second[1:]  # same predictions, epochs, epsilon: nothing retrained
    assert first[3:] == ["1", "0.99", "1.0"]
    out = run_bash("persistkit state inspect bot_state --verify", tmp_path, shell_env)
    assert all(name in out for name in ("trades", "equity", "risk", "signal", "deep", "rl", "attention"))


def test_training_session_block_runs(tmp_path, shell_env):
    out = run_python(block("Training archives", "python"), tmp_path, shell_env)
    assert out.count("training_backup_") == 2  # the archive on entry and the final one
    assert (tmp_path / "workspace" / "models" / "model.json").read_text() == '{"w": 1}'


def test_training_resume_block_passes_as_printed(pytester):
    result = run_as_pytest(pytester, block("Training resume", "python"), "-W", "error")
    result.assert_outcomes(passed=1)


def test_training_resume_block_fails_without_the_fsyncs(pytester):
    """The paragraph after the block: without fsync, power loss breaks the resume."""
    code = block("Training resume", "python")
    unsynced = code.replace("                os.fsync(f.fileno())\n", "").replace("            os.fsync(fd)\n", "")
    assert unsynced.count("fsync") == 0
    result = run_as_pytest(pytester, unsynced)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*resume_points: * crash states*", "*First HARD_FAIL*", "*Fix: *"])


def test_reference_bot_and_training_block_runs(tmp_path, shell_env):
    out = run_bash(block("The reference bot and training script", "bash"), tmp_path, shell_env)
    assert re.search(r"^ACK \d+ ", out, flags=re.M) and re.search(r"^DONE ", out, flags=re.M)
    assert list((tmp_path / "ws" / "models").rglob("*.models"))


def test_development_block_names_real_nox_sessions():
    """Not run here (each is the whole suite or the benchmarks); every session it names exists."""
    code = block("Development", "bash")
    named = {s for line in code.splitlines() for s in line.split("#")[0].split()[3:]}
    named |= {line.split()[2] for line in code.splitlines() if line.startswith("nox -s")}
    defined = set(re.findall(r"@nox\.session[^\n]*\ndef (\w+)", (ROOT / "noxfile.py").read_text()))
    assert named and named <= defined, named - defined


def test_several_machines_block_runs_against_a_local_s3_server(tmp_path, shell_env, own_s3_server):
    own_s3_server.client().create_bucket(Bucket="models-bucket")
    env = {k: v for k, v in shell_env.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=own_s3_server.endpoint, AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")  # fmt: skip
    out = run_python(block("Several machines", "python"), tmp_path, env)
    assert out == "[0. 1. 2. 3.] {'lr': 0.0003}\n"
    assert (tmp_path / "store.key").is_file() and list((tmp_path / "bot-cache").rglob("*.models"))


def test_the_fault_list_names_exactly_the_errnos_the_injector_uses():
    """README's "What disk_faults injects" table against MAN_PAGE_ERRNOS, call by call."""
    from persistkit.testing.observe.inject import MAN_PAGE_ERRNOS

    text = README.read_text()
    section = text[text.index("### What `disk_faults` injects") :]
    row = next(line for line in section.splitlines() if line.startswith("| an errno"))
    cell = row.split("|")[2]
    claimed: dict[str, set[str]] = {}
    for part in cell.split(";"):
        names = re.findall(r"`(\w+)`", part)
        errnos = set(re.findall(r"\bE[A-Z]+\b", part))
        assert names and errnos, part
        for name in names:
            claimed[name] = errnos
    for name, errnos in claimed.items():
        assert errnos == set(MAN_PAGE_ERRNOS[name][0]), (name, errnos, MAN_PAGE_ERRNOS[name])
    # every family the injector faults is in the table (sync(2) is listed as never failing)
    families = {"write", "open", "fsync", "ftruncate", "fallocate", "rename", "link", "symlink", "unlink",
                "rmdir", "mkdir", "mknod", "copy_file_range", "sendfile", "close", "syncfs", "fdatasync"}  # fmt: skip
    assert families <= set(claimed), families - set(claimed)
    assert MAN_PAGE_ERRNOS["sync"][0] == () and "`sync(2)` (it cannot fail)" in section
