"""``persistkit archive create|list|verify|restore|prune``. Exit codes: 0 ok, 1 failed/unsafe, 2 usage.

No command reports success for work it did not do: a root that does not exist,
or a verify that found nothing to verify, exits 1 and says why.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from persistkit.errors import PersistkitError, UnsafeArchiveError

if TYPE_CHECKING:
    from persistkit.archive import Archiver

ROOT = click.option("--root", default=".", type=click.Path(file_okay=False), help="workspace root")
KEEP = click.option(
    "--keep", default=5, show_default=True, type=click.IntRange(min=1), help="archives to keep"
)


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _archiver(root: str, keep: int = 5) -> Archiver:
    """The workspace's Archiver; exits 1 if ``root`` is not an existing directory (a typo, most likely)."""
    from persistkit.archive import Archiver
    from persistkit.io import current_fs

    if not current_fs().is_dir(root):
        _fail(f"workspace root {root!r} does not exist or is not a directory; check --root.")
    return Archiver(root, keep=keep)


@click.group("archive")
def archive_group() -> None:
    """Timestamped training archives with retention and safe restore."""


@archive_group.command("create")
@ROOT
@KEEP
def create(root: str, keep: int) -> None:
    """Archive logs/, models/, config/ and root checkpoints, verify, then prune."""
    arc = _archiver(root, keep)
    try:
        report = arc.create_report()
    except PersistkitError as err:
        _fail(str(err))
    click.echo(f"{report.path}  ({report.files} files, {report.bytes} bytes, {report.symlinks} symlinks)")
    for source in report.skipped_sources:
        click.echo(f"  skipped missing source: {source}")
    for name in report.excluded:
        click.echo(f"  left out (key or lock file): {name}")
    for name in report.changed_while_archiving:
        click.echo(f"  changed while archiving: {name}")
    for name in report.pruned:
        click.echo(f"  pruned: {name}")
    if set(report.skipped_sources) == set(arc.sources) and report.files == 0:
        click.echo(
            f"warning: none of {', '.join(arc.sources)} exists under {arc.root}; is --root right?", err=True
        )


@archive_group.command("list")
@ROOT
def list_(root: str) -> None:
    """Archives persistkit made in this workspace, oldest first."""
    arc = _archiver(root)
    try:
        archives = arc.list()
    except PersistkitError as err:
        _fail(str(err))
    if not archives:
        click.echo(f"no archives in {arc.archive_dir}", err=True)
    for path in archives:
        try:
            size = f"{path.stat().st_size} bytes"
        except OSError:
            size = "(removed meanwhile)"
        click.echo(f"{path.name}  {size}")


@archive_group.command("verify")
@ROOT
@click.argument("paths", nargs=-1, type=click.Path(exists=True, dir_okay=False))
def verify(root: str, paths: tuple[str, ...]) -> None:
    """Check archives as restore would (all archives of the workspace if none given); exit 1 on any problem."""
    arc = _archiver(root) if not paths else None
    try:
        targets = [Path(p) for p in paths] or (arc.list() if arc else [])
    except PersistkitError as err:
        _fail(str(err))
    if not targets:
        _fail(f"no archives to verify in {arc.archive_dir if arc else root}; nothing was checked.")
    from persistkit.archive import Archiver

    checker = arc or Archiver(root)
    bad = 0
    for path in targets:
        try:
            report = checker.verify(path)
        except PersistkitError as err:
            click.echo(f"FAIL {path}")
            click.echo(f"     {err}")
            bad += 1
            continue
        click.echo(f"{'ok  ' if report.ok else 'FAIL'} {path} ({report.checked} files)")
        for problem in report.problems:
            click.echo(f"     {problem}")
        bad += not report.ok
    sys.exit(1 if bad else 0)


@archive_group.command("restore")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.argument("into", type=click.Path())
def restore(path: str, into: str) -> None:
    """Extract PATH safely into the new directory INTO, after checking it as verify does."""
    from persistkit.archive import restore as do_restore

    try:
        click.echo(do_restore(path, into))
    except UnsafeArchiveError as err:
        click.echo(f"unsafe archive, nothing restored: {err}", err=True)
        sys.exit(1)
    except PersistkitError as err:
        _fail(str(err))


@archive_group.command("prune")
@ROOT
@KEEP
@click.option("--dry-run", is_flag=True, help="only explain what would be kept or removed")
def prune(root: str, keep: int, dry_run: bool) -> None:
    """Apply retention: keep the newest KEEP archives (and any being restored from)."""
    arc = _archiver(root, keep)
    try:
        decisions = arc.prune(dry_run=dry_run)
    except PersistkitError as err:
        _fail(str(err))
    for decision in decisions:
        click.echo(("would " if dry_run and not decision.keep else "") + decision.describe())
