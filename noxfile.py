"""Developer sessions: ``nox -s tests lint typecheck``; ``nox -s bench``, ``nox -s slow``, ``nox -s fuzz``, ``nox -s demo``."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"
INSTALL = ("-c", "constraints.txt", "-e", ".[dev]")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The default suite (what CI runs): everything but the `slow` soaks."""
    session.install(*INSTALL)
    session.run("pytest", "-n", "2", *session.posargs)


@nox.session(python=PYTHON)
def slow(session: nox.Session) -> None:
    """Long soaks: 1,000-kill storms, large crash-state enumerations."""
    session.install(*INSTALL)
    session.run("pytest", "-m", "slow", "--run-slow", *session.posargs)


@nox.session(python=PYTHON)
def fuzz(session: nox.Session) -> None:
    """Seeded, time-bounded mutation fuzzing of bundles, state stores and archives (tests/fuzz/harness.py).

    Defaults to 60 s per kind, seed 1; any harness option overrides, e.g.
    ``nox -s fuzz -- --kind state --seconds 600 --seed 7``. Fails on any finding.
    """
    session.install(*INSTALL)
    args = list(session.posargs)
    if "--seconds" not in args and "--cases" not in args:
        args += ["--seconds", "60"]
    if "--seed" not in args:
        args += ["--seed", "1"]
    session.run("python", "tests/fuzz/harness.py", *args)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "persistkit", "tests", "benchmarks")
    session.run("ruff", "format", "--check", "persistkit")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    session.install(*INSTALL)
    session.run("mypy", "--strict", "persistkit")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks against the tools a user would otherwise pick; writes benchmarks/RESULTS.md."""
    session.install(*INSTALL)
    session.run(
        "pytest", "benchmarks", "--benchmark-enable", "--benchmark-only", "--benchmark-json=benchmarks/results.json",
        "-p", "no:xdist", *session.posargs,
    )
    session.run("python", "benchmarks/report.py", "benchmarks/results.json", "benchmarks/RESULTS.md")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Train the reference models, run the reference bot, then prove it with `persistkit check`."""
    session.install(*INSTALL)
    tmp = session.create_tmp()
    session.run("python", "-m", "persistkit.reference.train", "--root", f"{tmp}/train", "--timesteps", "256")
    session.run("python", "-m", "persistkit.reference.bot", "--state-dir", f"{tmp}/bot", "--steps", "500")
    session.run("persistkit", "check")
