"""Budgets: bytes per file and latency per save, measured at the persistkit io layer."""

from __future__ import annotations

import os

import pytest

from persistkit.io import atomic_write
from persistkit.state import StateStore
from persistkit.testing.budget import Budget, check_budget, measure


def test_atomic_writes_are_saves_with_their_final_names(tmp_path):
    with measure() as fs:
        atomic_write(tmp_path / "a.bin", b"x" * 1000)
        atomic_write(tmp_path / "a.bin", b"x" * 10)
    assert fs.files() == {str(tmp_path / "a.bin"): 1000}  # the largest size the file reached
    assert [s.target for s in fs.saves] == [str(tmp_path / "a.bin")] * 2
    assert all(0 < s.seconds < 5 for s in fs.saves)


class Grows:
    def __init__(self):
        self.items = []

    def state_dict(self):
        return {"items": list(self.items)}

    def load_state_dict(self, state):
        self.items = list(state["items"])


def test_state_store_checkpoints_are_one_save_each(tmp_path):
    grows = Grows()
    with StateStore(tmp_path / "s", autosave_every=0) as store:
        store.register("grows", grows)
        store.load()
        with measure() as fs:
            for i in range(3):
                grows.items += [f"item-{i}-{j}" for j in range(200)]
                store.save()
    assert [s.kind for s in fs.saves] == ["StateStore checkpoint"] * 3
    problems = check_budget(fs, Budget(max_bytes=500))
    assert problems and problems[0].endswith("bytes > max_bytes=500")
    assert "grows.pk reached" in problems[0]
    slow = check_budget(fs, Budget(max_save_seconds=1e-9))
    assert len(slow) == 3 and "StateStore checkpoint of" in slow[0] and "> max_save_seconds=1e-09" in slow[0]


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((1,), {}, "keyword arguments only"),
        ((), {"max_size": 1}, "unknown argument"),
        ((), {"max_bytes": -1}, "max_bytes must be a non-negative int"),
        ((), {"max_save_seconds": 0}, "max_save_seconds must be a positive number"),
    ],
)
def test_marker_arguments_are_validated(args, kwargs, message):
    with pytest.raises(TypeError, match=message):
        Budget.from_marker(args, kwargs)


@pytest.mark.persist_budget(max_bytes=4096, max_save_seconds=5.0)
def test_the_marker_passes_within_budget(tmp_path):
    atomic_write(tmp_path / "small", b"x" * 100)


def test_bytes_written_by_plain_python_count(tmp_path):
    big = tmp_path / "big.txt"
    with measure() as fs:
        big.write_text("x" * 3_000_000)
        with open(tmp_path / "tmp.part", "wb") as f:
            f.write(b"y" * 300_000)
        os.replace(tmp_path / "tmp.part", tmp_path / "renamed.bin")
    assert fs.files()[str(big)] == 3_000_000
    assert fs.files()[str(tmp_path / "renamed.bin")] == 300_000
    problems = check_budget(fs, Budget(max_bytes=200_000))
    assert problems[0] == f"{big} reached 3,000,000 bytes > max_bytes=200,000"


def test_roots_catch_writes_that_raise_no_audit_event(tmp_path):
    (tmp_path / "old").write_bytes(b"o" * 10)
    with measure(roots=[tmp_path]) as fs:
        fd = os.open(tmp_path / "native.bin", os.O_WRONLY | os.O_CREAT, 0o644)  # seen by the hook too
        os.write(fd, b"n" * 5000)
        os.close(fd)
    assert fs.files() == {str(tmp_path / "native.bin"): 5000}  # the untouched file is not counted


def test_the_marker_fails_a_test_that_writes_too_much_with_pathlib(pytester):
    pytester.makepyfile(
        test_big="""
import os

import pytest

@pytest.mark.persist_budget(max_bytes=200_000)
def test_big(tmp_path):
    (tmp_path / "model.json").write_text("x" * 3_000_000)
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "0")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*model.json reached 3,000,000 bytes > max_bytes=200,000*"])


def test_the_marker_counts_bytes_written_by_c_code(pytester):
    pytester.makepyfile(
        """
        import pytest, torch

        @pytest.mark.persist_budget(max_bytes=100_000)
        def test_big(tmp_path):
            torch.save({"w": torch.zeros(200_000)}, tmp_path / "m.pt")   # ~800 KB, written by C++
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*persist_budget exceeded (1):*", "*m.pt reached 8* bytes > max_bytes=100,000*"]
    )


# -- saves made by user code -----------------------------------------------------------------------

USER_SAVE = """
import json, os, time

def save(path, data, pause=0.0):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f); f.flush(); os.fsync(f.fileno())
    time.sleep(pause)  # slow serialisation, a slow disk...
    os.replace(tmp, path)
    fd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
"""


def test_the_marker_times_a_slow_save_made_by_user_code(pytester):
    pytester.makepyfile(
        test_slow=USER_SAVE
        + """
import pytest

@pytest.mark.persist_budget(max_save_seconds=0.05)
def test_slow_save(tmp_path):
    save(str(tmp_path / "state.json"), {"balance": 100}, pause=0.3)

@pytest.mark.persist_budget(max_save_seconds=5.0)
def test_fast_save(tmp_path):
    save(str(tmp_path / "state.json"), {"balance": 100})
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "0", "--persistkit-report")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*persist_budget exceeded (1):*",
            "*user save of */state.json took 0.3* s > max_save_seconds=0.05*",
            "*= persistkit report =*",
            "saves: 2 (2 by user code, 0 by persistkit)*",
            "*ms  user save of *state.json",
        ]
    )


def test_a_budget_that_observed_no_save_fails_and_says_so(pytester):
    pytester.makepyfile(
        """
        import pytest, torch

        @pytest.mark.persist_budget(max_save_seconds=1.0)
        def test_nothing_saved(tmp_path):
            assert 1 + 1 == 2

        @pytest.mark.persist_budget(max_save_seconds=1.0)
        def test_saved_by_c_code(tmp_path):
            torch.save({"w": torch.zeros(10)}, tmp_path / "m.pt")   # written by C++: not timed
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "0")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*persist_budget: no verdict, because what the budget limits was not observed (never a pass):*",
            "*max_save_seconds=1: no save was observed, so none was timed*",
            "*persist_budget: no verdict*",
            "*m.pt: changed, but no save of it was observed (written by C code such as torch.save(path)*",
        ]
    )


def test_a_budget_beside_crash_points_times_the_users_save(pytester):
    """The budget's observer needs neither ptrace nor the interceptor, so crash_points still runs."""
    pytester.makepyfile(
        test_both=USER_SAVE
        + """
import json, pytest

def load(path):
    with open(path) as f:
        return json.load(f)

@pytest.mark.persist_budget(max_save_seconds=30.0)
@pytest.mark.parametrize("observe", ["syscalls", "python"])
def test_atomic_and_fast(crash_points, tmp_path, observe):
    path = str(tmp_path / "w.json")
    save(path, {"n": 1})
    report = crash_points(lambda: save(path, {"n": 2}), lambda: load(path), observe=observe)
    assert report.states > 0
"""
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-n", "0", "--persistkit-report-json=r.json"
    )
    result.assert_outcomes(passed=2)
    import json

    saves = json.loads((pytester.path / "r.json").read_text())["saves"]
    user = [s for s in saves["all"] if s["kind"] == "user save"]
    assert len(user) >= 4 and all(s["target"].endswith("w.json") for s in user)  # 2 saves per test
    assert saves["unobserved"] == []


def test_what_one_save_is(tmp_path):
    """One function's file operations are one save; a test body's are one per library call."""
    import json
    import time
    from pathlib import Path

    def write_tmp(path):
        with open(path + ".tmp", "w") as f:
            f.write("x" * 100)

    def save(path):  # helpers inside it belong to its save
        write_tmp(path)
        time.sleep(0.2)
        os.replace(path + ".tmp", path)

    with measure(roots=[tmp_path], boundaries=[test_what_one_save_is.__code__]) as m:
        save(str(tmp_path / "a"))
        Path(tmp_path / "b").write_text(json.dumps({"k": 1}))
        time.sleep(0.3)  # not part of any save: b's write_text returned already
        Path(tmp_path / "c").write_text("c")
    kinds = {os.path.basename(s.target): s for s in m.saves if s.kind == "user save"}
    assert set(kinds) == {"a", "b", "c"} and m.unobserved == []
    assert kinds["a"].seconds >= 0.2 and kinds["a"].bytes == 100
    assert kinds["b"].seconds < 0.2 and kinds["c"].seconds < 0.2
