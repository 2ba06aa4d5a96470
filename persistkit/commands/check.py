"""``persistkit check [TARGET]``: prove a component persists correctly, in one command.

Runs the battery of ``persistkit.testing.battery`` (round-trip, lifecycle,
SIGTERM, a SIGKILL storm, crash points, disk faults, corruption, budgets)
against TARGET and prints a table with each check (pass, FAIL, no verdict, or
skipped) and its figures. Exit code 0 when every check that ran passed, 1
otherwise: a check that saw nothing to judge ("no verdict") is not a pass.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from persistkit.commands.check_train import run_train_check, train_options
from persistkit.testing.battery import CHECKS, DEFAULT_KILLS

__all__ = ["check_command"]


def _skips(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    from persistkit.testing.battery import check_slug

    try:
        return tuple(dict.fromkeys(check_slug(v) for v in values))
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


@click.command("check")
@click.argument("target", required=False, default=None, metavar="[TARGET]")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the report as JSON to this file.",
)
@click.option(
    "--steps", type=click.IntRange(min=1), default=300, show_default=True, help="Work steps per check."
)
@click.option(
    "--kills",
    type=click.IntRange(min=0),
    default=DEFAULT_KILLS,
    show_default=True,
    help="SIGKILLs in the storm (the same default as --persistkit-kills).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed for kill timing and corruption sampling."
)
@click.option(
    "--max-save-seconds", type=float, default=1.0, show_default=True, help="Budget: slowest acceptable save."
)
@click.option(
    "--max-bytes",
    type=int,
    default=64 * 1024 * 1024,
    show_default=True,
    help="Budget: largest acceptable file.",
)
@click.option(
    "--observe",
    type=click.Choice(["auto", "syscalls", "python"]),
    default="auto",
    show_default=True,
    help="How crash points and disk faults observe a save: syscalls (strace), python (interception) "
    "or auto (syscalls where ptrace works). The same choice as --persistkit-observe.",
)
@click.option(
    "--skip",
    "skip",
    multiple=True,
    callback=_skips,
    metavar="CHECK",
    help="Leave out a check (repeatable): " + ", ".join(slug for slug, _ in CHECKS) + ". The report "
    "names what was skipped, as not verified.",
)
@click.option(
    "--exclude",
    "exclude",
    multiple=True,
    metavar="GLOB",
    help="Leave files matching GLOB (relative to the state directory, or a bare file name) out of the "
    "corruption check (repeatable); every other check still covers them. The report states the risk, "
    "e.g. --exclude ledger.db for a SQLite file, which has no checksums.",
)
@click.option(
    "--keep",
    is_flag=True,
    default=False,
    help="Keep the scratch directory (every state dir a failure names) instead of deleting it.",
)
@train_options
def check_command(
    target: str | None,
    json_path: Path | None,
    steps: int,
    kills: int,
    seed: int,
    max_save_seconds: float,
    max_bytes: int,
    observe: str,
    skip: tuple[str, ...],
    exclude: tuple[str, ...],
    keep: bool,
    train: str | None,
    **train_kw: Any,
) -> None:
    """Run the persistence battery against TARGET (module:factory; default: the reference bot).

    \b
    TARGET's factory has one of three shapes:
      store app:  factory(state_dir, *, readonly=False, **store_kw) -> object with
                  .store (a StateStore) and step()
      plain app:  factory(state_dir) -> object with save(), step() and snapshot()
      component:  factory() -> a Persistent (state_dict(), load_state_dict())
    A step that returns a mapping with an "id" is acknowledged work: it must survive
    any crash, and ids must be unique. An app whose step() saves by itself is judged
    on those saves too. The current directory is on sys.path, as in pytest.

    With --train CMD instead of TARGET: crash a training job at every operation of every
    checkpoint save, resume it, and compare with an uninterrupted run (resume_points).
    """
    if train is not None:
        if target is not None:
            raise click.UsageError(
                "give either TARGET (a component or app) or --train CMD (a training job), not both"
            )
        if skip or exclude:
            raise click.UsageError(
                "--skip and --exclude choose checks of the battery for TARGET; --train runs resume_points only"
            )
        run_train_check(train, json_path=json_path, seed=seed, **train_kw)
        return
    from rich.console import Console
    from rich.table import Table

    from persistkit.testing.battery import (
        DEFAULT_TARGET,
        FAIL,
        NO_VERDICT,
        PASS,
        SKIPPED,
        Battery,
        CheckResult,
        Settings,
        Target,
        TargetError,
    )

    spec = target or DEFAULT_TARGET
    _current_directory_importable()
    console = Console()
    settings = Settings(
        steps=steps,
        kills=kills,
        seed=seed,
        max_save_seconds=max_save_seconds,
        max_bytes=max_bytes,
        observe=observe,
        skip=skip,
        exclude=exclude,
    )
    try:
        resolved = Target(spec)
        battery = Battery(resolved, settings, keep=keep)
    except TargetError as err:
        raise click.BadParameter(str(err), param_hint="TARGET") from None
    console.print(f"persistkit check: [bold]{spec}[/bold] ({resolved.kind})")
    start = time.perf_counter()

    marks = {
        PASS: "[green]pass[/green]",
        FAIL: "[red]FAIL[/red]",
        NO_VERDICT: "[yellow]no verdict[/yellow]",
        SKIPPED: "[dim]skipped[/dim]",
    }

    def progress(result: CheckResult) -> None:
        took = "" if result.status == SKIPPED else f"  ({result.seconds:.1f} s)"
        console.print(f"  {result.name:<14} {marks[result.status]}{took}")

    try:
        results = battery.run(progress)
    finally:
        battery.close()
    total = time.perf_counter() - start
    ran = [r for r in results if r.status != SKIPPED]
    passed = all(r.passed for r in ran)

    table = Table(title=f"persistkit check {spec}")
    table.add_column("check")
    table.add_column("result")
    table.add_column("figures")
    table.add_column("time", justify="right")
    for r in results:
        figures = ", ".join(f"{k}: {v}" for k, v in r.figures.items())
        table.add_row(r.name, marks[r.status], figures, f"{r.seconds:.1f} s" if r.status != SKIPPED else "-")
    console.print(table)
    for r in results:
        if r.status in (FAIL, NO_VERDICT):
            console.print(
                f"[red]{r.name}[/red]:" if r.status == FAIL else f"[yellow]{r.name}[/yellow]:", end=" "
            )
            console.print(r.detail, markup=False, highlight=False)
    for r in results:
        for note in r.notes:
            console.print(f"{r.name}: {note}", markup=False, highlight=False)
    skipped = [r.name for r in results if r.status == SKIPPED]
    if skipped:
        console.print(f"skipped (--skip), not verified: {', '.join(skipped)}", markup=False, highlight=False)
    if keep:
        console.print(f"state directories kept under {battery.workdir}")
    elif not passed:
        console.print("(the state directories named above are deleted; rerun with --keep to keep them)")
    failed = sum(r.status == FAIL for r in ran)
    unjudged = sum(r.status == NO_VERDICT for r in ran)
    if passed:
        verdict = f"all {len(ran)} checks that ran passed" if skipped else "all checks passed"
    else:
        verdict = ", ".join(
            part
            for part in (
                f"{failed} check(s) failed" if failed else "",
                f"{unjudged} check(s) gave no verdict" if unjudged else "",
            )
            if part
        )
    console.print(f"{verdict} in {total:.1f} s")

    if json_path is not None:
        from persistkit.io import atomic_write

        doc: dict[str, Any] = {
            "target": spec,
            "passed": passed,
            "seconds": round(total, 2),
            "settings": vars(settings),
            "skipped": [r.name for r in results if r.status == SKIPPED],
            "excluded": dict(battery.excluded),
            "checks": [r.to_dict() for r in results],
        }
        atomic_write(json_path.resolve(), json.dumps(doc, indent=2, default=str).encode())
        console.print(f"report written to {json_path}")
    raise SystemExit(0 if passed else 1)


def _current_directory_importable() -> None:
    """Import TARGET as pytest would: the current directory first on sys.path, in children too."""
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if here not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([here, *parts])
