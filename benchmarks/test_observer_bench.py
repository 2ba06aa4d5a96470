"""Tracing overhead: ``crash_points`` with the syscall observer (strace) against the Python observer.

Each benchmark is one whole ``crash_points`` call (observe the save, decode what was seen,
check it explains the directory, then materialize and load every crash state), because that is
what a user waits for. (a) and (b) are saves only the syscall observer can see (torch.save and
sqlite3 write from C), reported as crash states per second; (c) and (d) are saves both
observers see, measured in the same run so the report states the syscall observer's cost as a
ratio of the Python observer's (target: at most 2x). The payloads are random bytes, so no two
crash states of a save dedupe to the same directory and both observers enumerate alike.

``persistkit check`` on the reference bot with the syscall observer is timed once, in a
subprocess, and only in a real benchmark run (the CI smoke run skips it: it takes a minute).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pkbench import tag

from persistkit.io.atomic import atomic_write
from persistkit.testing.crash_points import CrashPoints

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Alternating:
    """Two payloads a save writes in turn, so every round changes the directory."""

    def __init__(self, a, b) -> None:
        self.values = (a, b)
        self.turn = 0

    def next(self):
        self.turn ^= 1
        return self.values[self.turn]


def judge(benchmark, tmp_path, save, load, observe: str, rounds: int = 5):
    """Benchmark one crash_points run of ``save`` per round; return the last report."""
    cp = CrashPoints(tmp_path)
    reports = []

    def run():
        reports.append(cp(save, load, model="power-loss", observe=observe))

    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    report = reports[-1]
    assert not report.violations and report.observer == observe and report.states > 2
    return report


# -- (a), (b): saves only the syscall observer can see -------------------------------------------------


@pytest.mark.benchmark(group="observer-torch")
def test_crash_points_torch_save_syscalls(benchmark, tmp_path, full_size):
    torch = pytest.importorskip("torch")
    n = (MIB if full_size else 64 * 1024) // 4
    gen = torch.Generator().manual_seed(0)
    values = Alternating(torch.rand(n, generator=gen), torch.rand(n, generator=gen))
    path = str(tmp_path / "model.pt")

    def save():  # torch.save writes from C++; the rename and the fsyncs are Python's
        tmp = path + ".tmp"
        torch.save(values.next(), tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(str(tmp_path))

    def load():
        return torch.load(path).sum().item() if os.path.exists(path) else None

    save()
    report = judge(benchmark, tmp_path, save, load, "syscalls")
    tag(
        benchmark,
        comparison=f"crash_points, syscall observer: torch.save {n * 4 // 1024} KiB + fsync + rename (power loss)",
        role="persistkit",
        target="report",
        states=report.states,
        operations=len(report.operations),
    )


@pytest.mark.benchmark(group="observer-sqlite")
def test_crash_points_sqlite_commit_syscalls(benchmark, tmp_path, full_size):
    db = str(tmp_path / "trades.db")
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE trades (id INTEGER PRIMARY KEY, body TEXT)")
    conn.close()
    batch = {"n": 0}
    rows = 50 if full_size else 5

    def save():  # EXTRA: FULL does not fsync the directory after the journal is deleted
        conn = sqlite3.connect(db)
        try:
            conn.execute("PRAGMA synchronous=EXTRA")
            with conn:
                base = batch["n"] * rows
                conn.executemany(
                    "INSERT INTO trades VALUES (?, ?)",
                    [(base + i, f"trade {base + i}" * 4) for i in range(rows)],
                )
        finally:
            conn.close()
        batch["n"] += 1

    def load():
        conn = sqlite3.connect(db)
        try:
            return conn.execute("SELECT count(*), sum(id) FROM trades").fetchone()
        finally:
            conn.close()

    report = judge(benchmark, tmp_path, save, load, "syscalls")
    tag(
        benchmark,
        comparison=f"crash_points, syscall observer: sqlite3 commit of {rows} rows, synchronous=EXTRA (power loss)",
        role="persistkit",
        target="report",
        states=report.states,
        operations=len(report.operations),
    )


# -- (c), (d): saves both observers see; the syscall observer's cost as a ratio -------------------------


def numpy_case(tmp_path, full_size):
    rng = np.random.default_rng(0)
    n = (MIB if full_size else 64 * 1024) // 4
    values = Alternating(rng.random(n, dtype=np.float32), rng.random(n, dtype=np.float32))
    path = str(tmp_path / "weights.npy")

    def save():
        tmp = str(tmp_path / "weights.tmp.npy")
        np.save(tmp, values.next())
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(str(tmp_path))

    def load():
        return float(np.load(path).sum()) if os.path.exists(path) else None

    save()
    return save, load, n * 4


def atomic_case(tmp_path, full_size):
    size = MIB if full_size else 64 * 1024
    values = Alternating(os.urandom(size), os.urandom(size))
    path = tmp_path / "blob.bin"

    def save():
        atomic_write(path, values.next())

    def load():
        return path.read_bytes()[:16] if path.exists() else None

    save()
    return save, load, size


CASES = {"numpy": numpy_case, "atomic_write": atomic_case}
LABEL = {
    "numpy": "np.save to a temp file + fsync + os.replace",
    "atomic_write": "persistkit.io.atomic_write",
}


@pytest.mark.parametrize("case", ["numpy", "atomic_write"])
@pytest.mark.parametrize("observe", ["syscalls", "python"])
@pytest.mark.benchmark(group="observer-ratio")
def test_crash_points_both_observers(benchmark, tmp_path, full_size, case, observe):
    save, load, size = CASES[case](tmp_path, full_size)
    report = judge(benchmark, tmp_path, save, load, observe)
    tag(
        benchmark,
        comparison=f"crash_points on {LABEL[case]}, {size // 1024} KiB (power loss): syscall vs python observer",
        role="persistkit" if observe == "syscalls" else "python-observer",
        target="time<=2.0*python-observer" if observe == "syscalls" else "",
        states=report.states,
        operations=len(report.operations),
    )


# -- persistkit check with the syscall observer ---------------------------------------------------------


@pytest.mark.benchmark(group="observer-check")
def test_persistkit_check_syscalls(benchmark, tmp_path, full_size):
    if not full_size:
        pytest.skip("runs the whole battery (about a minute); real benchmark runs only")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "persistkit", "check", "--observe", "syscalls"]

    def check():
        out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out.stdout

    stdout = benchmark.pedantic(check, rounds=1, iterations=1)
    assert "observer: syscalls" in stdout
    tag(
        benchmark,
        comparison="persistkit check (reference bot, --observe syscalls), one run",
        role="persistkit",
        target="time<=40s",
    )
