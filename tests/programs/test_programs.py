"""Small programs in C, POSIX sh, Python and Perl, each a correct and a buggy twin of one save,
judged through ``crash_points.subprocess`` (both crash models) and ``disk_faults.subprocess``.

Every program takes ``correct|buggy TARGET TEXT``; the twins differ only in the lines the
program's header comment names. Every program prints progress to stdout and stderr while it
saves, as real tools do: that must never cost a verdict. The C programs are compiled here, once
per session. ``README.md`` says what each pair shows; ``PROGRAMS`` below holds, next to each
pair, the verdict its buggy twin must get (the correct twin must pass everything).
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from persistkit.testing.observe import NotJudgeable

HERE = Path(__file__).parent
OLD = "state 1"
NEW = "state 2: " + "abcdefgh" * 8
TWO_RECORDS = ["first record", "second record"]
FIXTURES = ("process", "power-loss", "faults")
# the default run's fault sweep: each operation of the save with ENOSPC and EIO (where its man page
# lists them), once, plus a short write per write and a close error per written file; the full
# sweep (every errno, once and persistent) is behind @pytest.mark.slow
QUICK = {"errnos": ("ENOSPC", "EIO"), "modes": ("once",)}


# -- verdicts ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pass:
    def __str__(self) -> str:
        return "pass"


@dataclass(frozen=True)
class CrashFail:
    """crash_points names a violating state (regex on "First violation: ...") and a Fix: line."""

    first: str
    fix: str
    complete: bool | None = None  # the state comes after the program exited?
    loads: str | None = None  # regex on what load() did in that state

    def __str__(self) -> str:
        return "fail"


@dataclass(frozen=True)
class FaultFail:
    """disk_faults names the fault (regex on "First: ...") and what went wrong (regex on its
    problems); ``every`` is a regex every violating fault must match (no other fault may fail)."""

    first: str
    problem: str
    every: str

    def __str__(self) -> str:
        return "fail"


@dataclass(frozen=True)
class Unfinished:
    """The program returned before its save had happened: the message must say so."""

    message: str

    def __str__(self) -> str:
        return "unfinished"


Verdict = Pass | CrashFail | FaultFail | Unfinished


@dataclass(frozen=True)
class Program:
    source: str  # relative to tests/programs
    bug: str
    buggy: dict[str, Verdict]
    log: bool = False  # appends a record to a log (header_record.c) instead of replacing a file
    options: dict[str, Any] = field(default_factory=dict)  # for disk_faults.subprocess

    @property
    def lang(self) -> str:
        return self.source.split("/")[0]

    @property
    def name(self) -> str:
        return self.source.rsplit("/", 1)[-1].rsplit(".", 1)[0]


RANGE = r"( \[\d+:\d+\])?"  # a write is named with the bytes it covers: "#1 write state.tmp [0:73]"


def no_fsync_before_rename(name: str) -> CrashFail:
    return CrashFail(
        rf"power loss .*(lost|left as zeros|torn).*#\d+ write {re.escape(name)}\.tmp",
        rf"fsync {re.escape(name)}\.tmp \(flush and os\.fsync its descriptor\) before renaming it over the target",
    )


def in_place(name: str) -> dict[str, Verdict]:
    target = re.escape(name)
    return {
        "process": CrashFail(
            rf"process crash after #\d+ (create|truncate) {target}$",
            r"make the save write a new file and publish it with one atomic, synced rename",
            loads=r"^returned b''$",
        ),
        "power-loss": CrashFail(
            rf"power loss .*#\d+ (create|write|truncate) {target}\b",
            rf"write {target} to a temp file in the same directory, fsync it, os\.replace\(\) it",
        ),
        "faults": FaultFail(
            rf"(ENOSPC|EIO) at #\d+ write {target}{RANGE} \((once|persistent)\)",
            r"previous state lost: save\(\) raised, then load\(\) returned b'",
            rf"(ENOSPC|EIO) at #\d+ write {target}{RANGE} \((once|persistent)\)",
        ),
    }


def error_swallowed(fault: str, name: str, *, loads: str) -> FaultFail:
    return FaultFail(
        rf"({fault}) at #\d+ write {re.escape(name)}\.tmp{RANGE} \(once\)",
        rf"error swallowed: save\(\) returned normally, yet load\(\) returned {loads}",
        rf"({fault}) at #\d+ write {re.escape(name)}\.tmp{RANGE} \(once\)",
    )


LEFT_RUNNING = r"(returned|exited) while (processes it started were still running|a process it started was still writing)"

PROGRAMS = [
    Program(
        "c/rename_fsync.c",
        "no fsync of the temp file before rename(2)",
        {"process": Pass(), "power-loss": no_fsync_before_rename("state"), "faults": Pass()},
    ),
    Program(
        "c/write_all.c",
        "one write(2), its short count taken for success",
        {
            "process": Pass(),
            "power-loss": Pass(),
            "faults": error_swallowed("short write", "state", loads=r"b'state"),
        },
    ),
    Program(
        "c/header_record.c",
        "the header that counts a record is written before the record is fsynced (page order)",
        {
            "process": Pass(),
            "power-loss": CrashFail(
                r"power loss after #\d+ write log \[0:8\], before #\d+ fsync log: (#\d+ write log \[4160:4224\] "
                r"left as zeros|.*only #\d+ write log \[0:8\] .*reached the disk)",
                r"the disk may write log's pages in any order: fsync what a later write refers to \(the records\) "
                r"before writing the part that refers to it",
                loads=r"raised ValueError: record 1 of 2 is not a record",
            ),
            "faults": Pass(),
        },
        log=True,
        options={"after_retry": lambda records: records in (TWO_RECORDS, [*TWO_RECORDS, "second record"])},
    ),
    Program(
        "c/check_errors.c",
        "fsync(2)'s and close(2)'s results ignored",
        {
            "process": Pass(),
            "power-loss": Pass(),
            "faults": FaultFail(
                r"(EIO|ENOSPC) at #\d+ fsync state\.tmp \(once\)",
                r"fsyncgate: save\(\) returned normally after fsync failed with (EIO|ENOSPC)",
                r"(EIO|ENOSPC) at #\d+ fsync state\.tmp \(once\)",  # a failed close(2) keeps the data (see README)
            ),
        },
    ),
    Program(
        "c/background.c",
        "the save is left to a child; the command exits 0 before it has happened",
        {
            "process": Unfinished(LEFT_RUNNING),
            "power-loss": Unfinished(LEFT_RUNNING),
            "faults": Unfinished(LEFT_RUNNING),
        },
        options={"timeout": 10},
    ),
    Program(
        "sh/dir_sync.sh",
        "no `sync DIR` after `mv`",
        {
            "process": Pass(),
            "power-loss": CrashFail(
                r"power loss after #\d+ replace state\.tmp -> state: .*reverted #\d+ replace state\.tmp -> state\)?$",
                r"fsync the directory holding state after os\.replace\(\)",
                complete=True,
                loads=r"^returned b'state 1'$",
            ),
            "faults": Pass(),
        },
    ),
    Program(
        "sh/in_place.sh",
        "`printf ... > TARGET` rewrites the state in place",
        in_place("state"),
        options={"modes": ("once", "persistent")},
    ),
    Program(
        "sh/checked.sh",
        "no `set -e`: a failed printf is ignored and its output moved over the state",
        {
            "process": Pass(),
            "power-loss": Pass(),
            # every fault the script runs into is swallowed, whichever command it hits
            "faults": FaultFail(
                r"ENOSPC at #0 create state\.tmp \(once\)",
                r"error swallowed: save\(\) returned normally, yet load\(\) returned b'state 1'",
                r".*",
            ),
        },
    ),
    Program(
        "sh/background.sh",
        "`( save ) &` without `wait`",
        {
            "process": Unfinished(LEFT_RUNNING),
            "power-loss": Unfinished(LEFT_RUNNING),
            "faults": Unfinished(LEFT_RUNNING),
        },
        options={"timeout": 10},
    ),
    Program(
        "python/cleanup.py",
        "the temp file is not removed when the save fails",
        {
            "process": Pass(),
            "power-loss": Pass(),
            "faults": FaultFail(
                rf"(ENOSPC|EIO) at #\d+ write state\.tmp{RANGE} \(once\)",
                r"temp litter after the failed save: \['state\.tmp'\]",
                rf"(ENOSPC|EIO) at #\d+ (write|fsync|close|replace) state\.tmp({RANGE}| -> state) \(once\)",
            ),
        },
    ),
    Program(
        "python/in_place.py",
        "`open(TARGET, 'w')` rewrites the state in place",
        in_place("state"),
        # a once-only fault does not show it: Python's close() flushes the buffer a second time, and
        # that write succeeds; a disk that stays full does
        options={"modes": ("once", "persistent")},
    ),
    Program(
        "python/background.py",
        "the save is left to a detached daemon (new session, stdio closed)",
        {
            "process": Unfinished(LEFT_RUNNING),
            "power-loss": Unfinished(LEFT_RUNNING),
            "faults": Unfinished(LEFT_RUNNING),
        },
        options={"timeout": 10},
    ),
    Program(
        "perl/syswrite.pl",
        "one syswrite, its short count taken for success",
        {
            "process": Pass(),
            "power-loss": Pass(),
            "faults": error_swallowed("short write", "state", loads=r"b'state"),
        },
    ),
    Program(
        "perl/close_check.pl",
        "`close $fh;` unchecked: the buffered write that fails inside close is ignored",
        {
            "process": Pass(),
            "power-loss": Pass(),
            # the write that close performs fails; a failed close(2) itself keeps the data (README)
            "faults": error_swallowed("ENOSPC|EIO", "state", loads=r"b''"),
        },
    ),
]


# -- building and running -----------------------------------------------------------------------
@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every C program compiled once per session (gcc, warnings as errors)."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.fail("tests/programs needs a C compiler (gcc or cc) on PATH")
    out = tmp_path_factory.mktemp("programs")
    binaries = {}
    for source in sorted((HERE / "c").glob("*.c")):
        binary = out / source.stem
        done = subprocess.run(
            [gcc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(binary), str(source)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, f"{source.name} does not compile:\n{done.stderr}"
        binaries[f"c/{source.name}"] = str(binary)
    return binaries


def command(program: Program, built: dict[str, str]) -> list[str]:
    path = str(HERE / program.source)
    if program.lang == "c":
        return [built[program.source]]
    if program.lang == "sh":
        return ["sh", path]
    if program.lang == "python":
        return [sys.executable, "-B", path]
    if shutil.which("perl") is None:
        pytest.skip("perl is not installed")
    return ["perl", path]


def read_file(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_log(path: Path) -> list[str]:
    """header_record.c's format: "LOG1" + count at 0, 64-byte "REC:" records from 4096."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"LOG1":
        raise ValueError(f"{path.name}: no log header")
    (count,) = struct.unpack_from("<I", data, 4)
    records = []
    for i in range(count):
        record = data[4096 + 64 * i : 4096 + 64 * (i + 1)]
        if not record.startswith(b"REC:") or len(record) != 64:
            raise ValueError(f"record {i} of {count} is not a record: {record[:8]!r}")
        records.append(record[4:].decode().rstrip())
    return records


@dataclass
class Case:
    cmd: list[str]
    load: Callable[[], Any]
    root: Path


def prepare(program: Program, twin: str, built: dict[str, str], tmp_path: Path) -> Case:
    """The state before the save (written by the correct twin), and the save to judge."""
    root = tmp_path / "root"
    root.mkdir()
    base = command(program, built)
    if program.log:
        target, load, first, second = root / "log", read_log, "first record", "second record"
    else:
        target, load, first, second = root / "state", read_file, OLD, NEW
    subprocess.run([*base, "correct", str(target), first], check=True, capture_output=True)
    return Case([*base, twin, str(target), second], lambda: load(target), root)


def judge(case: Case, fixture: str, crash_points, disk_faults, options: dict[str, Any]) -> Any:
    if fixture == "faults":
        return disk_faults.subprocess(
            case.cmd, case.load, root=case.root, cwd=case.root, **{"timeout": 30, **options}
        )
    return crash_points.subprocess(case.cmd, case.load, model=fixture, root=case.root, cwd=case.root)


def check(verdict: Verdict, fixture: str, run: Callable[[], Any], disk_faults) -> None:
    __tracebackhide__ = True
    if isinstance(verdict, Pass):
        report = run()
        assert report.violations == []
        if fixture == "faults":
            assert report.fired > 0 and report.misfired == 0, report.summary()
        else:
            assert report.model == fixture and report.new_states > 0, report.summary()
        print(report.summary())
        return
    with pytest.raises(AssertionError) as info:
        run()
    text = str(info.value)
    print(text)
    assert not isinstance(info.value, NotJudgeable), text
    if isinstance(verdict, Unfinished):
        assert re.search(verdict.message, text), text
        assert "First violation" not in text and "First:" not in text
        return
    if isinstance(verdict, CrashFail):
        assert fixture != "faults"
        assert f"({fixture} model)" in text, text
        first = re.search(r"^First violation: (.*)$", text, re.M)
        assert first and re.search(verdict.first, first.group(1)), text
        lines = text.splitlines()
        at = lines.index(first.group(0))
        if verdict.complete is not None:
            assert ("after save() returned" in lines[at + 1]) is verdict.complete, lines[at + 1]
        if verdict.loads is not None:
            got = lines[at + 2].strip()
            assert got.startswith("load() ") and re.search(verdict.loads, got[len("load() ") :]), got
        line = re.search(r"^Fix: (.*)$", text, re.M)
        assert line, text
        assert re.search(verdict.fix, line.group(1)), line.group(1)
        return
    assert isinstance(verdict, FaultFail) and fixture == "faults"
    first = re.search(r"^First: (.*)$", text, re.M)
    assert first and re.search(verdict.first, first.group(1)), text
    assert re.search(verdict.problem, text), text
    report = disk_faults.reports[-1]
    wrong = [v.fault for v in report.violations if not re.fullmatch(verdict.every, v.fault)]
    assert not wrong, f"other faults failed too: {wrong}\n{text}"


# The default run: a correct and a buggy twin of each language, and each distinct verdict once (a
# Fix: line per kind of bug, fsyncgate, a short write, temp litter, a program that leaves its save to
# a process still running). Every other case runs with -m slow: each disk_faults case starts the
# program again, and all of them together take minutes.
DEFAULT_RUN = {
    ("c/rename_fsync.c", "correct", "faults"),
    ("c/rename_fsync.c", "buggy", "power-loss"),
    ("c/header_record.c", "buggy", "power-loss"),
    ("c/check_errors.c", "buggy", "faults"),
    ("c/write_all.c", "buggy", "faults"),
    ("c/background.c", "buggy", "process"),
    ("c/background.c", "buggy", "faults"),
    ("sh/dir_sync.sh", "correct", "power-loss"),
    ("sh/dir_sync.sh", "buggy", "power-loss"),
    ("sh/in_place.sh", "buggy", "process"),
    ("sh/background.sh", "buggy", "faults"),
    ("python/in_place.py", "correct", "power-loss"),
    ("python/cleanup.py", "buggy", "faults"),
    ("perl/syswrite.pl", "correct", "power-loss"),
    ("perl/close_check.pl", "buggy", "faults"),
}


def marks(program: Program, twin: str, fixture: str, verdict: Verdict) -> list[Any]:
    return [] if (program.source, twin, fixture) in DEFAULT_RUN else [pytest.mark.slow]


CASES = [
    pytest.param(
        program,
        twin,
        fixture,
        id=f"{program.lang}-{program.name}-{twin}-{fixture}-{verdict}",
        marks=marks(program, twin, fixture, verdict),
    )
    for program in PROGRAMS
    for twin in ("correct", "buggy")
    for fixture in FIXTURES
    for verdict in [Pass() if twin == "correct" else program.buggy[fixture]]
]


@pytest.mark.parametrize(("program", "twin", "fixture"), CASES)
def test_program(crash_points, disk_faults, built, tmp_path, program, twin, fixture):
    """The verdict, the state or fault it names, and its Fix: line."""
    case = prepare(program, twin, built, tmp_path)
    verdict = Pass() if twin == "correct" else program.buggy[fixture]
    options = {**QUICK, **program.options}
    run = lambda: judge(case, fixture, crash_points, disk_faults, options)  # noqa: E731
    check(verdict, fixture, run, disk_faults)


@pytest.mark.slow
@pytest.mark.parametrize("program", [pytest.param(p, id=f"{p.lang}-{p.name}") for p in PROGRAMS])
def test_correct_twin_survives_every_fault(disk_faults, built, tmp_path, program):
    """The full sweep: every errno each call's man page lists, once and persistently."""
    case = prepare(program, "correct", built, tmp_path)
    options = {k: v for k, v in program.options.items() if k not in ("errnos", "modes")}
    report = disk_faults.subprocess(
        case.cmd, case.load, root=case.root, cwd=case.root, **{"timeout": 30, **options}
    )
    assert report.violations == [] and report.fired > 0 and report.misfired == 0, report.summary()


def test_every_pair_is_listed_and_every_language_is_here():
    assert {(p.source, twin, f) for p in PROGRAMS for twin in ("correct", "buggy") for f in FIXTURES} >= DEFAULT_RUN
    for lang in ("c", "sh", "python", "perl"):
        assert {twin for source, twin, _ in DEFAULT_RUN if source.startswith(lang + "/")} == {"correct", "buggy"}
    sources = {str(p.relative_to(HERE)) for p in HERE.glob("*/*") if p.suffix in (".c", ".sh", ".py", ".pl")}
    assert sources == {p.source for p in PROGRAMS}
    assert {p.lang for p in PROGRAMS} >= {"c", "sh", "python", "perl"}
    readme = (HERE / "README.md").read_text()
    for p in PROGRAMS:
        assert p.source in readme, p.source
