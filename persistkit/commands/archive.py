"""``persistkit archive create|list|verify|restore|prune``. Exit codes: 0 ok, 1 failed/unsafe, 2 usage."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from persistkit.errors import PersistkitError, UnsafeArchiveError

ROOT = click.option("--root", default=".", type=click.Path(file_okay=False), help="workspace root")
KEEP = click.option(
    "--keep", default=5, show_default=True, type=click.IntRange(min=1), help="archives to keep"
)


def _archiver(root: str, keep: int = 5):  # type: ignore[no-untyped-def]
    from persistkit.archive import Archiver

    return Archiver(root, keep=keep)


@click.group("archive")
def archive_group() -> None:
    """Timestamped training archives with retention and safe restore."""


@archive_group.command("create")
@ROOT
@KEEP
def create(root: str, keep: int) -> None:
    """Archive logs/, models/, config/ and root checkpoints, verify, then prune."""
    try:
        report = _archiver(root, keep).create_report()
    except PersistkitError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    click.echo(f"{report.path}  ({report.files} files, {report.bytes} bytes, {report.symlinks} symlinks)")
    for source in report.skipped_sources:
        click.echo(f"  skipped missing source: {source}")
    for name in report.changed_while_archiving:
        click.echo(f"  changed while archiving: {name}")
    for name in report.pruned:
        click.echo(f"  pruned: {name}")


@archive_group.command("list")
@ROOT
def list_(root: str) -> None:
    """Archives persistkit made in this workspace, oldest first."""
    for path in _archiver(root).list():
        click.echo(f"{path.name}  {path.stat().st_size} bytes")


@archive_group.command("verify")
@ROOT
@click.argument("paths", nargs=-1, type=click.Path(exists=True, dir_okay=False))
def verify(root: str, paths: tuple[str, ...]) -> None:
    """Recompute every member's sha256 against the manifest (all archives if none given)."""
    arc = _archiver(root)
    targets = [Path(p) for p in paths] or arc.list()
    bad = 0
    for path in targets:
        report = arc.verify(path)
        click.echo(f"{'ok  ' if report.ok else 'FAIL'} {path} ({report.checked} files)")
        for problem in report.problems:
            click.echo(f"     {problem}")
        bad += not report.ok
    sys.exit(1 if bad else 0)


@archive_group.command("restore")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.argument("into", type=click.Path())
def restore(path: str, into: str) -> None:
    """Extract PATH safely into the new directory INTO."""
    from persistkit.archive import restore as do_restore

    try:
        click.echo(do_restore(path, into))
    except UnsafeArchiveError as err:
        click.echo(f"unsafe archive, nothing restored: {err}", err=True)
        sys.exit(1)
    except PersistkitError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)


@archive_group.command("prune")
@ROOT
@KEEP
@click.option("--dry-run", is_flag=True, help="only explain what would be kept or removed")
def prune(root: str, keep: int, dry_run: bool) -> None:
    """Apply retention: keep the newest KEEP archives (and any being restored from)."""
    for decision in _archiver(root, keep).prune(dry_run=dry_run):
        click.echo(("would " if dry_run and not decision.keep else "") + decision.describe())
