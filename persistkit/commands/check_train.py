"""``persistkit check --train CMD``: prove a training job resumes from a crash at any point of any checkpoint save.

CMD runs once to the end (the reference, observed with strace), then is crashed at every
operation of every checkpoint save (process kills and power loss), resumed from each crash
state and compared with the reference (``persistkit.testing.resume``). ``{dir}`` in CMD is the
directory it checkpoints into (a fresh one unless ``--dir`` names it). The job prints ``STEP n``
after each step and ``resumed from step N`` at start; its final weights are ``--weights FILE``
(under the directory) or a ``WEIGHTS <digest>`` line it prints (``persistkit.testing.training``).
Exit code 0 when every state passes, 1 when any fails.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

__all__ = ["run_train_check", "train_options"]

F = TypeVar("F", bound=Callable[..., Any])


def train_options(fn: F) -> F:
    """The options of ``check --train`` (only read when --train is given)."""
    options = [
        click.option(
            "--train",
            "train",
            default=None,
            metavar="CMD",
            help="Check that a training job resumes correctly after a crash at any operation of any checkpoint "
            "save, instead of running the battery. CMD is its command line; {dir} is replaced by the "
            "directory it checkpoints into. It prints 'STEP n' after each step and 'resumed from step N' at "
            "start.",
        ),
        click.option(
            "--weights",
            "weights",
            default=None,
            metavar="FILE",
            help="With --train: the final weights file under the directory (e.g. final.pt). Default: the "
            "'WEIGHTS <digest>' line the job prints.",
        ),
        click.option(
            "--tolerance",
            type=click.FloatRange(min=0.0),
            default=0.0,
            show_default=True,
            help="With --train: the largest acceptable absolute difference of a final weight (0: bit-exact).",
        ),
        click.option(
            "--model",
            "crash_model",
            type=click.Choice(["both", "process", "power-loss"]),
            default="both",
            show_default=True,
            help="With --train: crash models: process kills (and torn writes), power loss, or both.",
        ),
        click.option(
            "--max-states",
            type=click.IntRange(min=1),
            default=None,
            help="With --train: resume at most this many crash states, spread over the whole run.",
        ),
        click.option(
            "--checkpoint",
            "checkpoints",
            multiple=True,
            metavar="GLOB",
            help="With --train: the checkpoint files (repeatable; relative paths or names). Default: every file "
            "the job writes under the directory.",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=1.0),
            default=None,
            help="With --train: seconds per resume (default: 4x the reference run, at least 60).",
        ),
        click.option(
            "--dir",
            "train_dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="With --train: the directory the job checkpoints into (its content is the initial state). "
            "Default: a fresh temporary directory.",
        ),
        click.option(
            "--repro",
            "repro_dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=Path("resume-repro"),
            show_default=True,
            help="With --train: where the repro folder of each failing verdict goes.",
        ),
        click.option(
            "--cold",
            is_flag=True,
            default=False,
            help="With --train: start every resume as a new process (default: fork Python jobs from a process "
            "that has imported their modules, after checking it gives the same result).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def run_train_check(
    train: str,
    *,
    json_path: Path | None,
    seed: int,
    weights: str | None,
    tolerance: float,
    crash_model: str,
    max_states: int | None,
    checkpoints: tuple[str, ...],
    timeout: float | None,
    train_dir: Path | None,
    repro_dir: Path,
    cold: bool,
) -> None:
    from rich.console import Console

    from persistkit.testing.resume import FAILURES, VERDICTS, ResumePoints, scratch_root

    console = Console()
    try:
        argv = shlex.split(train)
    except ValueError as err:
        raise click.BadParameter(f"cannot split the command: {err}", param_hint="--train") from None
    if not argv:
        raise click.BadParameter("the command is empty", param_hint="--train")
    models = ["process", "power-loss"] if crash_model == "both" else [crash_model]
    with scratch_root() as scratch:
        root = os.path.abspath(train_dir) if train_dir is not None else os.path.join(scratch, "run")
        console.print(f"persistkit check --train: [bold]{shlex.join(argv)}[/bold] (directory {root})")
        checker = ResumePoints(scratch, repro_dir=os.path.abspath(repro_dir))
        report = _checked(
            console,
            lambda: checker(
                argv, weights=weights, tolerance=tolerance, root=root, models=models,  # type: ignore[arg-type]
                max_states=max_states, checkpoints=checkpoints, timeout=timeout, warm=not cold, seed=seed,
                check=False,
            ),
        )  # fmt: skip
    console.print(report.message(), markup=False, highlight=False)
    passed = not report.failures
    if json_path is not None:
        from persistkit.io import atomic_write

        counts = report.counts()
        doc: dict[str, Any] = {
            "command": report.command,
            "passed": passed,
            "seconds": round(report.seconds, 2),
            "states": report.states,
            "candidates": report.candidates,
            "sampled": report.sampled,
            "warm": report.warm,
            "counts": {v: counts.get(v, 0) for v in VERDICTS},
            "by_model": {m: dict(report.counts(m)) for m in models},
            "saves": [{"index": s.index, "step": s.step, "files": sorted(s.files)} for s in report.saves],
            "results": [_result(r, root) for r in report.results],
            "repros": report.repros,
            "notes": report.notes,
            "failures": sorted(v for v in FAILURES if counts.get(v)),
        }
        atomic_write(json_path.resolve(), json.dumps(doc, indent=2, default=str).encode())
        console.print(f"report written to {json_path}")
    raise SystemExit(0 if passed else 1)


def _checked(console: Any, run: Callable[[], Any]) -> Any:
    """The report, or exit 1 saying why there is no verdict."""
    from persistkit.testing.observe import NotJudgeable
    from persistkit.testing.observe.strace import ObserverUnavailable
    from persistkit.testing.resume import TrainingNotReproducible

    try:
        return run()
    except (NotJudgeable, TrainingNotReproducible, ObserverUnavailable, ValueError) as err:
        console.print("no verdict:", str(err), markup=False, highlight=False)
        raise SystemExit(1) from None
    except AssertionError as err:  # the reference run itself failed
        console.print(str(err), markup=False, highlight=False)
        raise SystemExit(1) from None


def _result(r: Any, root: str) -> dict[str, Any]:
    return {
        "model": r.model,
        "state": r.description,
        "losses": [loss.describe(root) for loss in r.losses],
        "verdict": r.verdict,
        "detail": r.detail,
        "fix": r.fix,
        "resumed_from": r.resumed_from,
        "newest_complete": r.newest_complete,
        "committed": r.committed,
        "repro": r.repro,
    }
