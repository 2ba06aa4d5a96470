"""What ``crash_points`` costs against the limit of any verifier that loads every state.

Issue 19's numbers. For each save, one ``crash_points`` call (observe, model, build and
load every state, judge) is compared with *the limit*, measured in the same run: the time the
user's ``load()`` took over all the states (measured in the worker that loads them,
``Report.load_seconds``), plus the time a raw copy of the bytes that had to be written to build
the states takes (``Report.bytes_materialized``: the same number of bytes copied with
``shutil.copyfile`` right after, on the same disk; zeros are not written but punched as holes, so
they count as nothing). A verifier can do no better than loading each state once and writing what
differs between them. Target: at most 3x the limit.

Peak RSS added by the test process during the call is measured by resetting the kernel's
high-water mark (``/proc/self/clear_refs``) before it and reading ``VmHWM`` after; target: at
most 256 MiB, the 1 GiB checkpoint included. The loads run in a forked worker whose memory is
the user's ``load()``'s, not the verifier's.

Sizes: durable ``torch.save`` (temp file, fsync, rename, directory fsync) of 1 MiB, 64 MiB and
1 GiB, seen by the syscall observer; and a JSON document written by 10,000 small ``write(2)``
calls. The CI smoke run (``--benchmark-disable``) runs each once on small inputs.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
from pkbench import tag

from persistkit.testing.crash_points import CrashPoints
from persistkit.testing.report import Recorder

MIB = 1 << 20


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss() -> tuple[int, int]:
    """(current, peak) resident set size of this process, bytes."""
    cur = peak = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return cur, peak


def _copy_seconds(directory, nbytes: int) -> float:
    """Seconds a raw copy of ``nbytes`` takes on this disk: a file of up to 1 GiB copied until that many
    bytes were written (so page-cache write-back throttles the copy as it throttles the verifier)."""
    if nbytes <= 0:
        return 0.0
    size = min(nbytes, 1 << 30)
    src, dst = os.path.join(directory, "copy-src"), os.path.join(directory, "copy-dst")
    block = os.urandom(min(size, 4 * MIB))
    with open(src, "wb") as f:
        for _ in range(max(1, size // len(block))):
            f.write(block)
    size = os.path.getsize(src)
    copied = 0
    start = time.perf_counter()
    while copied < nbytes:
        shutil.copyfile(src, dst)
        copied += size
    took = time.perf_counter() - start
    os.unlink(src)
    os.unlink(dst)
    return took * nbytes / copied


def _measure(benchmark, tmp_path, save, load, *, comparison: str, rounds: int):
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    save(1, root)
    cp = CrashPoints(root, recorder=Recorder())
    limits, rss, reports = [], [], []

    def run():
        save(1, root)
        measured = _reset_peak_rss()
        base, _ = _rss()
        report = cp(lambda: save(2, root), lambda: load(root), model="power-loss", observe="syscalls")
        _, peak = _rss()
        rss.append(peak - base if measured else -1)
        limits.append(report.load_seconds + _copy_seconds(tmp_path, report.bytes_materialized))
        reports.append(report)

    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)
    report = reports[-1]
    assert not report.violations and report.observer == "syscalls" and report.states > 2
    limit = sorted(limits)[len(limits) // 2]
    added = max(rss)
    tag(
        benchmark, comparison=comparison, role="persistkit", target="time<=3.0*limit", anchor_seconds=limit,
        states=report.states, rss_added=added, bytes_materialized=report.bytes_materialized,
        load_seconds=report.load_seconds,
    )  # fmt: skip
    return report, limit, added


@pytest.mark.parametrize("size_mib", [1, 64, 1024])
@pytest.mark.benchmark(group="crash-cost-torch")
def test_crash_points_cost_durable_torch_save(benchmark, tmp_path, full_size, size_mib):
    torch = pytest.importorskip("torch")
    nbytes = size_mib * MIB if full_size else 64 * 1024
    # the tensors exist before the saves (a trainer's weights do): the RSS measured is the verifier's
    weights = {v: torch.full((nbytes // 4,), float(v)) for v in (1, 2)}

    def save(v, root):
        path = os.path.join(root, "ckpt.pt")
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            torch.save({"w": weights[v], "step": v}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(root, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    def load(root):
        return torch.load(os.path.join(root, "ckpt.pt"), weights_only=True)["step"]

    rounds = 3 if size_mib == 1 else 1
    _, _, added = _measure(
        benchmark, tmp_path, save, load, rounds=rounds,
        comparison=f"crash_points on a durable torch.save of {size_mib} MiB (syscall observer, power loss) "
        "vs the limit: load() over every state + a raw copy of the bytes the states differ by",
    )  # fmt: skip
    if full_size:
        assert added <= 256 * MIB, f"peak RSS added {added / MIB:.0f} MiB"


@pytest.mark.benchmark(group="crash-cost-json")
def test_crash_points_cost_json_of_10000_small_writes(benchmark, tmp_path, full_size):
    n = 10_000 if full_size else 300
    items = [(f"k{i}", [i, i * 0.5, "x" * 40]) for i in range(n)]

    def save(v, root):
        path = os.path.join(root, "state.json")
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"{")
            for i, (k, val) in enumerate(items):  # one write(2) per entry, as an unbuffered writer does
                os.write(fd, (("," if i else "") + json.dumps(k) + ":" + json.dumps([v, *val])).encode())
            os.write(fd, b"}")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        d = os.open(root, os.O_RDONLY)
        os.fsync(d)
        os.close(d)

    def load(root):
        with open(os.path.join(root, "state.json"), "rb") as f:
            doc = json.loads(f.read())
        return doc["k0"][0]

    _measure(
        benchmark, tmp_path, save, load, rounds=1,
        comparison="crash_points on a JSON save of 10,000 small writes + fsync + rename (syscall observer, power "
        "loss) vs the limit: load() over every state + a raw copy of the bytes the states differ by",
    )  # fmt: skip
