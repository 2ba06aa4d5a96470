"""pytest plugin for persistkit (``pytest11`` entry point ``persistkit.testing.plugin``).

Import-light by design: nothing heavy (hypothesis, cryptography, torch,
sklearn) is imported here; each fixture imports its machinery when a test
asks for it. Fixtures:

==================  =====================================================================
``persist_dir``     a temporary workspace with ``models/``, ``logs/``, ``config/``, ``archives/``
``roundtrip``       save and reload through persistkit, assert deep equality, return the copy
``crash_points``    record a save, load every crash state, accept only before/after
``disk_faults``     fail every operation with ENOSPC/EIO/EDQUOT/EROFS, once and persistently
``corruptions``     truncated/bit-flipped/trashed/junk-appended copies; ``assert_detected(load)``
``lifecycle``       startup/operate/shutdown/restart; ``.subprocess(...)`` with SIGTERM/SIGKILL
``resume_points``   crash a training run at every operation of every checkpoint save, resume, compare
==================  =====================================================================

Under Hypothesis' ``@given``, these function-scoped fixtures are reused across examples
(each call starts from the directory as it is): add
``@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])``.

Marker: ``@pytest.mark.persist_budget(max_bytes=..., max_save_seconds=...)``.
Options: ``--persistkit-report``, ``--persistkit-report-json=FILE``,
``--persistkit-seed``, ``--persistkit-kills``, ``--persistkit-samples``,
``--persistkit-observe=auto|syscalls|python`` (how ``crash_points``/``disk_faults`` see a save).
"""

from __future__ import annotations

import argparse
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from persistkit.testing.report import RECORDER, render_table

if TYPE_CHECKING:  # pragma: no cover
    from persistkit.testing.corruptions import Corruptions
    from persistkit.testing.crash_points import CrashPoints
    from persistkit.testing.disk_faults import DiskFaults
    from persistkit.testing.lifecycle import Lifecycle
    from persistkit.testing.resume import ResumePoints
    from persistkit.testing.roundtrip import Roundtrip

REPORT_OPTION = "--persistkit-report"
REPORT_JSON_OPTION = "--persistkit-report-json"
SEED_OPTION = "--persistkit-seed"
KILLS_OPTION = "--persistkit-kills"
SAMPLES_OPTION = "--persistkit-samples"
OBSERVE_OPTION = "--persistkit-observe"
BUDGET_MARKER = "persist_budget"
WORKSPACE_DIRS = ("models", "logs", "config", "archives")


def parse_count(text: str) -> int:
    """argparse type: a non-negative integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"Could not parse value: {text!r} (expected a whole number)."
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"Could not parse value: {text!r} (expected 0 or more).")
    return value


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("persistkit", "persistkit: persistence verification")
    group.addoption(
        REPORT_OPTION,
        action="store_true",
        default=False,
        help="print a persistkit summary: files written and sizes, save latencies, crash states, faults, violations.",
    )
    group.addoption(
        REPORT_JSON_OPTION,
        metavar="FILE",
        default=None,
        help="also write the persistkit summary as JSON to FILE.",
    )
    group.addoption(
        SEED_OPTION,
        type=parse_count,
        default=0,
        metavar="N",
        help="seed for corruption sampling and kill timing (default 0).",
    )
    group.addoption(
        KILLS_OPTION,
        type=parse_count,
        default=20,
        metavar="N",
        help="SIGKILLs per lifecycle.subprocess() storm (default 20).",
    )
    group.addoption(
        OBSERVE_OPTION,
        choices=("auto", "syscalls", "python"),
        default="auto",
        help="how crash_points/disk_faults observe a save: syscalls (strace; sees C extensions and child "
        "programs), python (interception; the portable fallback), or auto (syscalls where ptrace works). "
        "Default auto.",
    )
    group.addoption(
        SAMPLES_OPTION,
        type=parse_count,
        default=16,
        metavar="N",
        help="random samples per corruption kind (default 16).",
    )


def pytest_configure(config: pytest.Config) -> None:
    observe = config.getoption(OBSERVE_OPTION, default="auto")
    if observe != "auto":
        from persistkit.testing.observe import set_default

        set_default(observe)
    config.addinivalue_line(
        "markers",
        f"{BUDGET_MARKER}(max_bytes=None, max_save_seconds=None): fail the test if a file written during it "
        "grows past max_bytes, or one save (persistkit's or your code's) takes longer than max_save_seconds; "
        "a budget that observed nothing to judge fails too.",
    )


def _reporting(config: pytest.Config) -> bool:
    return bool(config.getoption(REPORT_OPTION) or config.getoption(REPORT_JSON_OPTION))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    __tracebackhide__ = True
    RECORDER.test = item.nodeid
    marker = item.get_closest_marker(BUDGET_MARKER)
    if marker is None and not _reporting(item.config):
        return (yield)
    from persistkit.testing.budget import Budget, check_budget, measure, unjudged

    budget = Budget.from_marker(marker.args, dict(marker.kwargs)) if marker is not None else None
    funcargs = getattr(item, "funcargs", {})
    roots = [funcargs["tmp_path"]] if "tmp_path" in funcargs else []  # catches C writers (torch.save) too
    test_code = getattr(getattr(item, "function", None), "__code__", None)
    with measure(roots=roots, boundaries=[test_code] if test_code is not None else []) as fs:
        result = yield
    for path, size in fs.files().items():
        RECORDER.add_file(path, size)
    for save in fs.saves:
        RECORDER.add_save(save.seconds, target=save.target, kind=save.kind)
    RECORDER.unobserved.extend(fs.unobserved)
    if budget is not None:
        blind = unjudged(fs, budget)
        problems = check_budget(fs, budget)
        RECORDER.add_run(
            "persist_budget",
            violations=len(problems) + len(blind),
            saves=len(fs.saves),
            files=len(fs.files()),
        )
        if problems:
            raise AssertionError(
                f"persist_budget exceeded ({len(problems)}):\n  " + "\n  ".join(problems[:10])
            )
        if blind:
            raise AssertionError(
                "persist_budget: no verdict, because what the budget limits was not observed (never a "
                "pass):\n  " + "\n  ".join(blind[:10])
            )
    return result


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None and _reporting(session.config):
        workeroutput["persistkit"] = RECORDER.to_dict()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    data = getattr(node, "workeroutput", {}).get("persistkit")
    if data:
        RECORDER.merge(data)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if getattr(config, "workeroutput", None) is not None or not _reporting(config):
        return
    if config.getoption(REPORT_OPTION):
        terminalreporter.write_sep("=", "persistkit report")
        for line in render_table(RECORDER):
            terminalreporter.write_line(line)
    target = config.getoption(REPORT_JSON_OPTION)
    if target:
        from persistkit.io import atomic_write

        path = Path(target).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, RECORDER.dumps().encode())
        terminalreporter.write_line(f"persistkit report written to {path}")


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def persist_dir(tmp_path: Path) -> Path:
    """A temporary workspace with ``models/``, ``logs/``, ``config/`` and ``archives/``.

    It is the test's ``tmp_path``, so ``crash_points`` and ``disk_faults`` cover it by default.

    Example::

        def test_model_store(persist_dir):
            store = ModelStore(persist_dir / "models")
            assert (persist_dir / "archives").is_dir()
    """
    for name in WORKSPACE_DIRS:
        (tmp_path / name).mkdir(exist_ok=True)
    return tmp_path


@pytest.fixture
def roundtrip(tmp_path: Path) -> Roundtrip:
    """Save and reload an object through persistkit; assert deep equality; return the loaded copy.

    ``via="bundle"`` (default), ``"state"`` (a StateStore; pass ``factory=`` for a component
    that has no zero-argument constructor) or ``"envelope"`` (a sealed tree file). numpy is
    compared exactly (dtype, shape, NaN positions), sklearn by params and predictions on
    probe data, torch by tensors, SB3 by parameters and deterministic actions. On failure
    the message names the path of the first difference.

    Example::

        def test_weights_survive(roundtrip):
            loaded = roundtrip({"w": np.arange(3.0)}, via="envelope")
            assert loaded["w"].dtype == np.float64
    """
    from persistkit.testing.roundtrip import Roundtrip

    return Roundtrip(tmp_path / ".persistkit-roundtrip")


@pytest.fixture
def crash_points(tmp_path: Path) -> CrashPoints:
    """Record every file operation of ``save()``, then ``load()`` every crash state.

    Each state must load as the state before or after the save, and only the after-state
    once ``save()`` has returned. Covers persistkit's I/O and plain ``open()``/``os.*``/
    ``pathlib``/``shutil``/``numpy.save`` writes under ``tmp_path``. Returns a CrashReport;
    on failure names the violating state and lists the operations.

    Example::

        def test_save_is_atomic(crash_points, tmp_path):
            path = tmp_path / "model.json"
            save_json(path, {"w": 1})
            report = crash_points(lambda: save_json(path, {"w": 2}), lambda: load_json(path),
                                  model="power-loss")
            assert report.states > 3

    ``crash_points.concurrent(save, load, values=[a, b])`` interleaves two writers.
    """
    from persistkit.testing.crash_points import CrashPoints

    return CrashPoints(tmp_path)


@pytest.fixture
def disk_faults(tmp_path: Path) -> DiskFaults:
    """Fail each file operation of ``save()`` with ENOSPC, EIO, EDQUOT and EROFS, once and persistently.

    For each: the error is raised, the previous state is intact, no temp litter or leaked
    descriptors remain, and the next save succeeds once the fault clears.

    Example::

        def test_full_disk(disk_faults, tmp_path):
            path = tmp_path / "state.json"
            save_json(path, {"n": 1})
            disk_faults(lambda: save_json(path, {"n": 2}), lambda: load_json(path))
    """
    from persistkit.testing.disk_faults import DiskFaults

    return DiskFaults(tmp_path)


@pytest.fixture
def corruptions(request: pytest.FixtureRequest) -> Corruptions:
    """``corruptions(path)`` yields damaged copies; ``corruptions.assert_detected(load)`` checks them.

    A load of a damaged copy must raise (or warn about a fallback); returning different
    data silently fails the test.

    Example::

        def test_damage_detected(corruptions, tmp_path):
            path = tmp_path / "state.pk"
            atomic_write(path, seal(b"payload", kind="blob", codec="bytes"))
            corruptions(path)
            corruptions.assert_detected(lambda p: open_envelope(Path(p).read_bytes()).payload)
    """
    from persistkit.testing.corruptions import Corruptions

    return Corruptions(
        samples=request.config.getoption(SAMPLES_OPTION), seed=request.config.getoption(SEED_OPTION)
    )


@pytest.fixture
def lifecycle(tmp_path: Path, request: pytest.FixtureRequest) -> Generator[Lifecycle, None, None]:
    """Startup, operate, shutdown, restart and compare; ``.subprocess(cmd, state_dir=...)`` for signals.

    In process: ``lifecycle(factory, steps=100)`` where ``factory(state_dir)`` returns an app
    (with ``step()`` and a ``store``, like the reference bot's ``make_bot``) or a Persistent
    component. ``lifecycle.subprocess(cmd, state_dir=...)`` runs the command, SIGTERMs it
    (restart must show equal state) and SIGKILLs it at seeded random moments (no ``ACK``-ed
    work may be lost).

    Example::

        def test_bot_lifecycle(lifecycle, tmp_path):
            lifecycle(make_bot, steps=300)
    """
    from persistkit.testing.lifecycle import Lifecycle

    lc = Lifecycle(
        tmp_path / "lifecycle",
        kills=request.config.getoption(KILLS_OPTION),
        seed=request.config.getoption(SEED_OPTION),
    )
    try:
        yield lc
    finally:
        lc.close()


@pytest.fixture
def resume_points(tmp_path: Path) -> ResumePoints:
    """Run a training job to the end, crash it at every operation of every checkpoint save, resume it.

    ``resume_points(train, weights=..., tolerance=0.0, models=("process", "power-loss"),
    max_states=None, checkpoints=())``: ``train`` is argv (``{dir}``: the directory it
    checkpoints into), a string, or a callable ``train(dir)``. The job prints ``STEP n`` after
    each step and ``resumed from step N`` (or ``RESUME N``) at start; the final weights are a
    file under the directory (``weights="final.pt"``), a callable ``weights(dir)``, a
    ``WEIGHTS`` line, or a callable job's return value (``persistkit.testing.training``).
    Each crash state is resumed isolated and judged: pass, HARD_FAIL, SILENT_DIVERGENCE,
    LOST_WORK or DUPLICATED_WORK; a failure raises AssertionError with the state, a ``Fix:``
    line and a repro folder under ``tmp_path/resume-repro``.

    Example::

        def test_training_resumes(resume_points):
            report = resume_points([sys.executable, "train.py", "--out", "{dir}"], weights="final.pt")
            assert report.states > 10
    """
    from persistkit.testing.resume import ResumePoints

    return ResumePoints(tmp_path, repro_dir=tmp_path / "resume-repro")


__all__ = [
    "corruptions",
    "crash_points",
    "disk_faults",
    "lifecycle",
    "parse_count",
    "persist_dir",
    "resume_points",
    "roundtrip",
]
