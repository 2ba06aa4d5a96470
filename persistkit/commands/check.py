"""``persistkit check [TARGET]``: prove a component persists correctly, in one command.

Runs the battery of ``persistkit.testing.battery`` (round-trip, lifecycle,
SIGTERM, a SIGKILL storm, crash points, disk faults, corruption, budgets)
against TARGET and prints a table with each check, pass or fail, and its
figures. Exit code 0 when every check passes, 1 otherwise.
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
from persistkit.testing.battery import DEFAULT_KILLS

__all__ = ["check_command"]


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
    any crash, and ids must be unique. The current directory is on sys.path, as in pytest.

    With --train CMD instead of TARGET: crash a training job at every operation of every
    checkpoint save, resume it, and compare with an uninterrupted run (resume_points).
    """
    if train is not None:
        if target is not None:
            raise click.UsageError(
                "give either TARGET (a component or app) or --train CMD (a training job), not both"
            )
        run_train_check(train, json_path=json_path, seed=seed, **train_kw)
        return
    from rich.console import Console
    from rich.table import Table

    from persistkit.testing.battery import DEFAULT_TARGET, Battery, CheckResult, Settings, Target, TargetError

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
    )
    try:
        resolved = Target(spec)
        battery = Battery(resolved, settings, keep=keep)
    except TargetError as err:
        raise click.BadParameter(str(err), param_hint="TARGET") from None
    console.print(f"persistkit check: [bold]{spec}[/bold] ({resolved.kind})")
    start = time.perf_counter()

    def progress(result: CheckResult) -> None:
        mark = "[green]pass[/green]" if result.passed else "[red]FAIL[/red]"
        console.print(f"  {result.name:<14} {mark}  ({result.seconds:.1f} s)")

    try:
        results = battery.run(progress)
    finally:
        battery.close()
    total = time.perf_counter() - start
    passed = all(r.passed for r in results)

    table = Table(title=f"persistkit check {spec}")
    table.add_column("check")
    table.add_column("result")
    table.add_column("figures")
    table.add_column("time", justify="right")
    for r in results:
        figures = ", ".join(f"{k}: {v}" for k, v in r.figures.items())
        table.add_row(
            r.name,
            "[green]pass[/green]" if r.passed else "[red]FAIL[/red]",
            figures,
            f"{r.seconds:.1f} s",
        )
    console.print(table)
    for r in results:
        if not r.passed:
            console.print(f"[red]{r.name}[/red]:", end=" ")
            console.print(r.detail, markup=False, highlight=False)
    for r in results:
        if r.warnings:
            first = r.warnings[0]
            more = f" (and {len(r.warnings) - 1} more)" if len(r.warnings) > 1 else ""
            console.print(
                f"{r.name}: persistkit logged {len(r.warnings)} warning(s) while faults were injected, "
                f"e.g. {first}{more}",
                markup=False,
                highlight=False,
                style="dim",
            )
    if keep:
        console.print(f"state directories kept under {battery.workdir}")
    elif not passed:
        console.print("(the state directories named above are deleted; rerun with --keep to keep them)")
    verdict = "all checks passed" if passed else f"{sum(not r.passed for r in results)} check(s) failed"
    console.print(f"{verdict} in {total:.1f} s")

    if json_path is not None:
        from persistkit.io import atomic_write

        doc: dict[str, Any] = {
            "target": spec,
            "passed": passed,
            "seconds": round(total, 2),
            "settings": vars(settings),
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
