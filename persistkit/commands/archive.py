"""``persistkit archive create|list|verify|restore|prune|push|pull``. Exit codes: 0 ok, 1 failed/unsafe, 2 usage.

No command reports success for work it did not do: a root that does not exist,
or a verify that found nothing to verify, exits 1 and says why.

``--remote URL`` (``s3://bucket/archives``) works on the off-site copies
(``persistkit.archive.remote``); credentials and endpoint come from the usual
AWS environment (``AWS_PROFILE``, ``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``...).
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


REMOTE = click.option(
    "--remote",
    metavar="URL",
    help="object-store URL of the off-site archives, e.g. s3://bucket/archives (credentials from the AWS "
    "environment)",
)


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _archiver(root: str, keep: int = 5, remote: str | None = None) -> Archiver:
    """The workspace's Archiver; exits 1 if ``root`` is not an existing directory (a typo, most likely)."""
    from persistkit.archive import Archiver
    from persistkit.io import current_fs

    if not current_fs().is_dir(root):
        _fail(f"workspace root {root!r} does not exist or is not a directory; check --root.")
    return Archiver(root, keep=keep, remote=remote, remote_keep=keep)


@click.group("archive")
def archive_group() -> None:
    """Timestamped training archives with retention and safe restore."""


@archive_group.command("create")
@ROOT
@KEEP
@REMOTE
def create(root: str, keep: int, remote: str | None) -> None:
    """Archive logs/, models/, config/ and root checkpoints, verify, then prune.

    With --remote URL the verified archive is pushed and proven off-site before anything is pruned.
    """
    arc = _archiver(root, keep, remote)
    try:
        report = arc.create_report()
    except (PersistkitError, ImportError) as err:
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
    if report.remote is not None:
        click.echo(f"  pushed: {report.remote.url} ({report.remote.checked} files checked end-to-end)")
        for name in report.remote.pruned:
            click.echo(f"  pruned remotely: {name}")
    if set(report.skipped_sources) == set(arc.sources) and report.files == 0:
        click.echo(
            f"warning: none of {', '.join(arc.sources)} exists under {arc.root}; is --root right?", err=True
        )


@archive_group.command("list")
@click.argument("directory", required=False, default=None, metavar="[ROOT]")
@click.option("--root", "root_option", default=None, help="workspace root (the same as ROOT)")
@REMOTE
def list_(directory: str | None, root_option: str | None, remote: str | None) -> None:
    """Archives persistkit made in the workspace ROOT (default: .), or under --remote URL, oldest first."""
    if directory is not None and root_option is not None and directory != root_option:
        raise click.UsageError(f"give the workspace once: ROOT {directory!r} or --root {root_option!r}")
    root = directory or root_option or "."
    if remote is not None:
        _list_remote(root, remote)
        return
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


def _list_remote(root: str, url: str) -> None:
    arc = _archiver(root, remote=url)
    try:
        archives = arc.list_remote()
    except (PersistkitError, ImportError) as err:
        _fail(str(err))
    if not archives:
        click.echo(f"no archives under {arc.remote}", err=True)
    for entry in archives:
        size = f"{entry.size} bytes" if entry.size is not None else "size unknown"
        when = entry.created or "-"
        state = entry.state if entry.verified is None else f"{entry.state} {entry.verified}"
        click.echo(f"{entry.name}  {size}  created {when}  {state}")
    for entry in archives:
        if entry.problem is not None:
            click.echo(
                f"{entry.problem}: not persistkit's, left alone (rename or delete it yourself).", err=True
            )
    incomplete = [e.name for e in archives if e.state != "verified" and e.problem is None]
    if incomplete:
        click.echo(
            f"{len(incomplete)} archive(s) not proven off-site ({', '.join(incomplete)}): push them again "
            "from the workspace that made them (`persistkit archive push`).",
            err=True,
        )


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
@click.argument("source")
@click.argument("into", required=False, type=click.Path())
@click.option("--into", "into_option", type=click.Path(), help="the new directory to restore into")
def restore(source: str, into: str | None, into_option: str | None) -> None:
    """Extract SOURCE safely into the new directory INTO, after checking it as verify does.

    SOURCE is an archive file, or the URL of one pushed with `archive push` (downloaded and
    checked against its record first; then the same checks as a local restore).
    """
    from persistkit.archive import restore as do_restore
    from persistkit.io import current_fs
    from persistkit.io.remote import is_url

    if (into is None) == (into_option is None):
        raise click.UsageError("give the target directory once: INTO or --into DIR")
    target = into if into is not None else into_option
    assert target is not None
    if not is_url(source) and not current_fs().is_file(source):
        raise click.BadParameter(f"{source!r} is not an archive file or an s3:// URL", param_hint="SOURCE")
    try:
        if is_url(source):
            from persistkit.archive.remote import restore_url

            click.echo(restore_url(source, target))
        else:
            click.echo(do_restore(source, target))
    except UnsafeArchiveError as err:
        click.echo(f"unsafe archive, nothing restored: {err}", err=True)
        sys.exit(1)
    except (PersistkitError, ImportError) as err:
        _fail(str(err))


@archive_group.command("prune")
@ROOT
@KEEP
@REMOTE
@click.option("--dry-run", is_flag=True, help="only explain what would be kept or removed")
def prune(root: str, keep: int, remote: str | None, dry_run: bool) -> None:
    """Apply retention: keep the newest KEEP archives (and any being restored from).

    With --remote URL: the off-site copies proven by a push (unfinished pushes are left alone).
    """
    arc = _archiver(root, keep, remote)
    try:
        decisions = arc.prune_remote(dry_run=dry_run) if remote else arc.prune(dry_run=dry_run)
    except (PersistkitError, ImportError) as err:
        _fail(str(err))
    for decision in decisions:
        click.echo(("would " if dry_run and not decision.keep else "") + decision.describe())


@archive_group.command("push")
@ROOT
@KEEP
@click.option("--remote", metavar="URL", required=True, help="object-store URL, e.g. s3://bucket/archives")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, dir_okay=False))
def push(root: str, keep: int, remote: str, paths: tuple[str, ...]) -> None:
    """Push archives off-site (default: the newest of the workspace), prove each copy, then prune remotely.

    Each archive is verified, uploaded create-only, recorded (sha256, size, manifest digest),
    downloaded back and checked end-to-end; only then does remote retention keep the newest
    KEEP proven copies. A failed push deletes nothing, here or remotely.
    """
    arc = _archiver(root, keep, remote)
    try:
        targets = [Path(p) for p in paths] or arc.list()[-1:]
        if not targets:
            _fail(f"no archives to push in {arc.archive_dir}; run `persistkit archive create` first.")
        for path in targets:
            report = arc.push(path)
            how = "uploaded" if report.uploaded else "already there"
            click.echo(
                f"{report.url}  ({how}, {report.size} bytes, sha256 {report.sha256[:16]}..., "
                f"{report.checked} files checked end-to-end)"
            )
            for name in report.pruned:
                click.echo(f"  pruned remotely: {name}")
    except (PersistkitError, ImportError) as err:
        _fail(str(err))


@archive_group.command("pull")
@ROOT
@click.option("--remote", metavar="URL", required=True, help="object-store URL, e.g. s3://bucket/archives")
@click.argument("names", nargs=-1, required=True)
def pull(root: str, remote: str, names: tuple[str, ...]) -> None:
    """Download the remote archives NAMES into the workspace's archive directory, checked and verified."""
    arc = _archiver(root, remote=remote)
    try:
        for name in names:
            click.echo(arc.pull(name))
    except UnsafeArchiveError as err:
        click.echo(f"unsafe archive name, nothing pulled: {err}", err=True)
        sys.exit(1)
    except (PersistkitError, ImportError) as err:
        _fail(str(err))
