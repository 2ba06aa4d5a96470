"""isolate: code under test crashes, hangs and leaks processes in a forked child, never in the session.

Every test here runs the hostile callable for real (segfault, abort, SIGBUS from a
truncated mapping, endless loops that swallow every exception, C calls that
block, daemons that escape with setsid) and then checks, through /proc, that
nothing it started is still alive or left as a zombie.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import select
import signal
import sys
import threading
import time

import pytest

from persistkit.testing.isolate import Outcome, Worker, run_isolated


def children_of_this_process() -> set[int]:
    found: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as f:
            found.update(int(p) for p in f.read().split())
    return found


def started(pid: int) -> str | None:
    """When ``pid`` started (field 22 of /proc/PID/stat), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


def _status(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            return " ".join(line.strip() for line in f if line.startswith(("State", "PPid", "TracerPid", "Name")))
    except OSError:
        return "gone"


def gone(pid: int, since: str | None = None) -> bool:
    """No such process, not even a zombie waiting to be reaped. With ``since`` (its start time, read
    while it ran): a process now holding that pid is another one (pid_max is 32768 here and the suite
    forks thousands of processes, so a freed pid is soon reused)."""
    now = started(pid)
    return now is None or (since is not None and now != since)


@pytest.fixture
def no_leftovers(fd_guard):
    """The test leaves no child (live or zombie) and no descriptor behind."""
    before = children_of_this_process()
    yield
    assert children_of_this_process() - before == set()


def segfault():
    ctypes.string_at(0)


def raise_custom():
    # a class the test process never imported: it comes back as a description, never unpickled
    Alien = type("Alien", (LookupError,), {"__module__": "nowhere.at_all"})
    raise Alien("the key is not here")


def swallow_everything_forever():
    while True:
        with contextlib.suppress(BaseException):  # a timeout raised in here would be swallowed too
            time.sleep(0.01)


def block_in_thread_join():
    blocker = threading.Thread(target=time.sleep, args=(3600,), daemon=True, name="sleeper")
    blocker.start()
    blocker.join()


def block_in_select_on_a_pipe():
    r, _w = os.pipe()
    select.select([r], [], [])


def block_again_while_unwinding():
    try:
        block_in_select_on_a_pipe()
    finally:
        threading.Event().wait()


@pytest.mark.usefixtures("no_leftovers")
@pytest.mark.parametrize(
    ("fn", "kind", "sig"),
    [
        (segfault, "killed", "SIGSEGV"),
        (os.abort, "killed", "SIGABRT"),
        (lambda: os._exit(3), "exited", ""),
        (lambda: sys.exit(4), "exited", ""),
        (lambda: os.kill(os.getpid(), signal.SIGKILL), "killed", "SIGKILL"),
    ],
    ids=["segfault", "abort", "os._exit", "sys.exit", "SIGKILL"],
)
def test_a_dying_child_is_reported_and_the_session_lives(fn, kind, sig):
    outcome = run_isolated(fn, timeout=60)
    assert outcome.kind == kind and outcome.signal == sig, outcome
    assert outcome.crashed
    if kind == "exited":
        assert outcome.exit_status in (3, 4)


def test_a_segfault_names_the_signal_and_where_it_happened():
    outcome = run_isolated(segfault, timeout=60)
    assert outcome.describe() == "killed by SIGSEGV (Segmentation fault)"
    assert "in segfault" in outcome.traceback  # faulthandler's stack, written from the dying child


@pytest.mark.usefixtures("no_leftovers")
def test_sigbus_from_a_mapped_file_truncated_underneath(tmp_path):
    np = pytest.importorskip("numpy")
    path = tmp_path / "weights.bin"
    np.arange(1 << 18, dtype=np.float32).tofile(path)

    def read_after_truncation():
        mapped = np.memmap(path, dtype=np.float32, mode="r")
        os.truncate(path, 0)  # what a crash or a concurrent writer can do to a mapped file
        return float(mapped[-1])

    outcome = run_isolated(read_after_truncation, timeout=60)
    assert (outcome.kind, outcome.signal) == ("killed", "SIGBUS"), outcome


@pytest.mark.usefixtures("no_leftovers")
@pytest.mark.parametrize(
    ("fn", "where"),
    [
        (swallow_everything_forever, "swallow_everything_forever"),
        (block_in_thread_join, "block_in_thread_join"),
        (block_in_select_on_a_pipe, "block_in_select_on_a_pipe"),
        (block_again_while_unwinding, "block_again_while_unwinding"),
    ],
)
def test_hangs_are_killed_from_outside_and_say_where_they_were(fn, where):
    outcome = run_isolated(fn, timeout=0.5)
    assert outcome.kind == "timeout", outcome
    assert outcome.timeout == 0.5 and outcome.seconds >= 0.5
    assert where in outcome.traceback  # every thread's stack, dumped by faulthandler before the kill
    assert "did not finish within 0.5 s" in outcome.describe()


@pytest.mark.usefixtures("no_leftovers")
def test_values_and_exceptions_come_back_as_descriptions():
    returned = run_isolated(lambda a, b=1: {"sum": a + b}, 2, b=3, timeout=60)
    assert (returned.kind, returned.value, returned.value_pickled) == ("returned", {"sum": 5}, True)

    unpicklable = run_isolated(lambda: (i for i in range(3)), timeout=60)
    assert unpicklable.ok and not unpicklable.value_pickled and "generator" in unpicklable.value_repr

    raised = run_isolated(raise_custom, timeout=60)
    assert raised.kind == "raised"
    assert raised.error_type == "nowhere.at_all.Alien" and raised.error_message == "the key is not here"
    assert raised.raised_a("LookupError") and raised.raised_a("Alien") and not raised.raised_a("ValueError")
    assert "raise_custom" in raised.traceback


def test_a_daemon_that_escapes_with_setsid_is_killed_when_the_call_returns(tmp_path, no_leftovers):
    log = tmp_path / "still-writing.log"

    def start_a_daemon_and_return():
        r, w = os.pipe()
        if os.fork() == 0:  # the classic double fork: the daemon is orphaned and in its own session
            os.setsid()
            if os.fork() == 0:
                with open(log, "a") as f:
                    while True:
                        f.write("tick\n")
                        f.flush()
                        if w is not None:
                            os.write(w, f"{os.getpid()}\n".encode())  # READY (its pid) once it writes
                            w = None
            os._exit(0)
        os.close(w)
        with os.fdopen(r) as ready:
            return int(ready.readline())

    outcome = run_isolated(start_a_daemon_and_return, timeout=60)
    daemon = outcome.value
    assert outcome.ok and isinstance(daemon, int)
    assert any(f"pid {daemon} " in s for s in outcome.stragglers), outcome.stragglers
    assert "still running after it ended" in outcome.describe()
    assert gone(daemon)  # killed and reaped before run_isolated returned: it cannot write any more
    size = log.stat().st_size
    assert size > 0 and log.stat().st_size == size


def test_a_thread_left_running_is_named(tmp_path, no_leftovers):
    def leave_a_thread():
        threading.Thread(target=threading.Event().wait, name="background-writer", daemon=True).start()
        return "done"

    outcome = run_isolated(leave_a_thread, timeout=60)
    assert outcome.ok and outcome.stragglers == ("thread 'background-writer'",)


def test_a_runner_that_kept_a_thread_retires_unless_threads_may_stay(no_leftovers):
    """A loader's pool thread (transformers starts one) retires the runner, and what it learned with it;
    with keep_threads=True (the crash-state reader) the runner stays and remembers."""
    learned: dict[str, object] = {}

    def call(what):
        if what == "learn":
            learned["before"] = os.getpid()
            threading.Thread(target=threading.Event().wait, name="pool", daemon=True).start()
        return os.getpid(), learned.get("before")

    for keep, same in ((False, False), (True, True)):
        with Worker(call, timeout=60, keep_threads=keep) as worker:
            first, second = worker.call("learn"), worker.call("read")
        assert first.ok and second.ok and first.stragglers == ("thread 'pool'",)
        assert (second.value[0] == first.value[0]) is same
        assert (second.value[1] == first.value[0]) is same  # what the first call learned survives


def test_the_child_runs_none_of_the_parents_handlers_or_finalizers(tmp_path, capfd):
    marker = tmp_path / "ran-in-child"
    parent = os.getpid()

    def note_if_child(*_):
        if os.getpid() != parent:
            marker.write_text(str(os.getpid()))

    atexit.register(note_if_child)
    previous = signal.signal(signal.SIGTERM, note_if_child)
    try:
        print("unflushed parent output ", end="")  # buffered: flushed before the fork, printed once
        sigterm = run_isolated(lambda: os.kill(os.getpid(), signal.SIGTERM), timeout=60)
        printed = run_isolated(lambda: print("child output", flush=True), timeout=60)
    finally:
        signal.signal(signal.SIGTERM, previous)
        atexit.unregister(note_if_child)
    assert (sigterm.kind, sigterm.signal) == ("killed", "SIGTERM")
    assert printed.ok and not marker.exists()
    assert capfd.readouterr().out == "unflushed parent output child output\n"


def test_torch_runs_in_the_child_after_the_parent_used_its_thread_pool():
    torch = pytest.importorskip("torch")
    x = torch.randn(256, 256)
    (x @ x).sum()  # the parent's OpenMP pool now exists; a forked child has none of its threads

    outcome = run_isolated(lambda: float((x @ x).sum()), timeout=60)
    assert outcome.ok, outcome.describe() + outcome.traceback


# -- the persistent worker ------------------------------------------------------------------


def judge(i, mode="ok"):
    if mode == "segfault":
        segfault()
    if mode == "hang":
        swallow_everything_forever()
    if mode == "raise":
        raise KeyError(i)
    return i * 2


def test_a_worker_answers_many_calls_and_recovers_from_crashes_and_hangs(no_leftovers):
    expected = {i: i * 2 for i in range(200)}  # built before the fork: the worker sees it
    with Worker(lambda i, mode="ok": (judge(i, mode), expected[i]), timeout=30) as worker:
        for i in range(200):
            outcome = worker.call(i)
            assert outcome.value == (i * 2, i * 2)
            if i == 50:
                crash = worker.call(i, mode="segfault")
                assert (crash.kind, crash.signal) == ("killed", "SIGSEGV")
            if i == 100:
                hang = worker.run((i,), {"mode": "hang"}, timeout=0.5)
                assert hang.kind == "timeout" and "swallow_everything_forever" in hang.traceback
            if i == 150:
                raised = worker.call(i, mode="raise")
                assert raised.kind == "raised" and raised.raised_a("KeyError")
        assert worker.restarts == 2  # one after the segfault, one after the timeout; a raise keeps the runner
        assert worker.calls == 203
    with pytest.raises(RuntimeError, match="closed"):
        worker.call(1)


def test_a_worker_keeps_the_state_it_was_forked_with(no_leftovers):
    expected = {"balance": 100}
    worker = Worker(lambda: dict(expected), timeout=30)
    try:
        expected["balance"] = 0  # the caller changes it afterwards: the worker's copy stays
        assert worker.call().value == {"balance": 100}
        assert worker.call(1).raised_a("TypeError")  # a bad call does not end the worker
        assert worker.call().value == {"balance": 100} and worker.restarts == 0
        assert run_isolated(lambda: dict(expected), timeout=30).value == {"balance": 0}
    finally:
        worker.close()


def test_closing_a_worker_ends_its_processes_and_many_workers_coexist(no_leftovers):
    workers = [Worker(os.getpid, timeout=30) for _ in range(3)]
    pids = [w.call().value for w in workers]
    starts = [started(p) for p in pids]
    assert len(set(pids)) == 3 and os.getpid() not in pids and None not in starts
    workers[1].close()
    assert gone(pids[1], starts[1])  # no other worker's keeper holds its socket open
    assert workers[0].call().value == pids[0] and workers[2].call().value == pids[2]
    for w in workers:
        w.close()
    # Killed and reaped by their keepers before close() returns. Seen only in full runs (never alone):
    # a runner pid still listed right after; wait for it (bounded), and say what it was if it stays.
    give_up = time.monotonic() + 30
    while not all(gone(p, since) for p, since in zip(pids, starts, strict=True)) and time.monotonic() < give_up:
        time.sleep(0.05)
    left = [(p, _status(p)) for p, since in zip(pids, starts, strict=True) if not gone(p, since)]
    assert not left, left


def test_outcome_describes_itself():
    assert Outcome("returned", 0.1, value_repr="3").describe() == "returned 3"
    assert Outcome("exited", 0.1, exit_status=2).describe() == "exited with status 2"
    assert str(Outcome("killed", 0.1, signal="SIGBUS")) == "killed by SIGBUS (Bus error)"


def test_a_session_holding_more_than_1024_descriptors_still_isolates(no_leftovers):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if max(soft, hard) < 1200:
        pytest.skip("cannot hold more than 1024 descriptors here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = [os.dup(0) for _ in range(1100)]  # a long session: many files, sockets, pipes open
    try:
        assert run_isolated(lambda: 7, timeout=60).value == 7  # its own descriptors are now above 1024
        assert run_isolated(swallow_everything_forever, timeout=0.3).kind == "timeout"
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_worker_made_inside_a_runner_works(no_leftovers):
    def nested():
        with Worker(lambda: os.getpid(), timeout=30) as inner:
            return inner.call().value != os.getpid()

    assert run_isolated(nested, timeout=60).value is True


def test_a_child_never_walks_the_heap_it_inherited(no_leftovers):
    """The objects of the test process are frozen in each runner, so a collection there walks only the
    child's own: before, every gc.collect() in a runner copied the whole inherited heap (seconds per
    call once boto3/moto or torch was loaded; one disk_faults sweep went from 8 s to 200 s)."""
    import gc

    held = [[i] for i in range(200_000)]  # a session's many objects, tracked by the collector
    outcome = run_isolated(lambda: (gc.get_freeze_count(), gc.collect(), len(gc.get_objects())), timeout=60)
    frozen, _, tracked = outcome.value
    assert frozen >= len(held) and tracked < len(held) // 4, outcome.value
    assert gc.get_freeze_count() == 0  # the test process itself is untouched


def test_a_segfault_is_described_even_after_a_library_took_the_signal():
    """pytest enables faulthandler in the test process; a library loaded later may install its own
    SIGSEGV handler. faulthandler.enable() in the runner then kept that handler (it only changes the
    file of an enabled faulthandler), and the crash came back with no stack: seen in CI."""
    import subprocess
    import sys

    script = (
        "import ctypes, faulthandler, signal\n"
        "from persistkit.testing.isolate import run_isolated\n"
        "faulthandler.enable()\n"
        "signal.signal(signal.SIGSEGV, signal.SIG_DFL)  # what such a library does\n"
        "def crash_here():\n"
        "    ctypes.string_at(0)\n"
        "o = run_isolated(crash_here, timeout=60)\n"
        "print(o.kind, o.signal, 'crash_here' in o.traceback)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["killed", "SIGSEGV", "True"], (out.stdout, out.stderr[-2000:])
