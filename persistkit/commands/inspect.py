"""``persistkit inspect`` / ``verify``: any persistkit file from the command line.

Bundles, training archives, state stores, envelope files, journals and key files:
``persistkit.inspection`` sniffs the kind by content and delegates; this module prints.

Both accept object-store URLs (``s3://bucket/archives/x.zip``): the object is
downloaded, checked against the persistkit record beside it when there is one
(the output says whether one was found), then inspected or verified as a local
file. Credentials and endpoint come from the usual AWS environment.

Exit codes: 0 ok, 1 a check failed (damage, tampering, wrong or missing key,
a missing object or bucket, refused credentials), 2 usage error.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from persistkit.errors import PersistkitError
from persistkit.units import size

if TYPE_CHECKING:
    from persistkit.format.envelope import Header
    from persistkit.format.manifest import Manifest
    from persistkit.inspection import Info, RemoteCopy

__all__ = ["inspect_command", "verify_command"]


def _summary(info: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in info.items() if k not in ("observation_space", "action_space"))


def _encryption(manifest: Manifest) -> str:
    info = manifest.encryption
    if info is None:
        return "no (integrity digests only, no authenticity)"
    if info.key_source == "password":
        return f"{info.alg}, password (scrypt n={info.kdf.n}, r={info.kdf.r}, p={info.kdf.p})"
    return f"{info.alg}, key file"


def _existing_or_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A local path must exist (as click.Path(exists=True) checks); a URL is checked when downloaded."""
    from persistkit.io import current_fs
    from persistkit.io.remote import is_url

    if not is_url(value) and not current_fs().exists(value):
        raise click.BadParameter(f"Path {value!r} does not exist.", ctx=ctx, param=param)
    return value


@contextlib.contextmanager
def _local(file: str) -> Iterator[tuple[str, RemoteCopy | None]]:
    """``file`` itself, or for a URL its downloaded copy (checked against its record when there is one)."""
    from persistkit.inspection import remote_copy
    from persistkit.io.remote import is_url

    if not is_url(file):
        yield file, None
        return
    with remote_copy(file) as copy:
        yield copy.path, copy


def _record_line(copy: RemoteCopy) -> str:
    if copy.record is not None:
        return f"  downloaded, sha256 and size checked against its record {copy.record}"
    return "  downloaded; no persistkit record beside it, so only its content was checked"


@click.command("inspect")
@click.argument("file", callback=_existing_or_url)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
def inspect_command(file: str, as_json: bool) -> None:
    """Show what the persistkit FILE is and holds. No key needed; nothing is decrypted.

    FILE may be a bundle, a training archive, a state-store directory, an
    envelope file (STORE, CURRENT, MANIFEST, *.pk), a journal or a key file,
    or the URL of one in an object store (s3://bucket/...).
    Exits 1 if it is not a persistkit file or something in it is damaged.
    """
    from persistkit.inspection import inspect, to_json

    try:
        with _local(file) as (local, copy):
            info = inspect(local)
            doc = to_json(info) if as_json else None
    except (PersistkitError, ImportError) as err:
        from persistkit.cli import cli_advice

        click.echo(f"persistkit inspect: {cli_advice(str(err))}", err=True)
        raise SystemExit(1) from None
    if doc is not None:
        if copy is not None:
            if "path" in doc:
                doc["path"] = copy.url  # not the temp copy, which is gone by now
            doc["remote"] = {"url": copy.url, "record": copy.record}
        click.echo(json.dumps(doc, indent=2, default=str))
    else:
        _print_info(file, info)
        if copy is not None:
            click.echo(_record_line(copy))
    if _problems(info):
        raise SystemExit(1)


def _problems(info: Info) -> list[str]:
    from persistkit.archive import VerifyReport
    from persistkit.state.audit import JournalInfo, StoreInfo

    if isinstance(info, StoreInfo | VerifyReport):
        return list(info.problems)
    if isinstance(info, JournalInfo) and info.problem:
        return [info.problem]
    return []


def _print_info(file: str | Path, info: Info) -> None:
    from persistkit.archive import VerifyReport
    from persistkit.format.envelope import Header
    from persistkit.format.manifest import Manifest
    from persistkit.state.audit import JournalInfo, StoreInfo

    if isinstance(info, Manifest):
        _print_manifest(file, info)
    elif isinstance(info, StoreInfo):
        from persistkit.commands.state import print_store_table

        print_store_table(info)
    elif isinstance(info, VerifyReport):
        click.echo(f"{file}  persistkit training archive")
        click.echo(
            f"  {info.checked} files checked against MANIFEST.json: " + ("intact" if info.ok else "DAMAGED")
        )
        for problem in info.problems:
            click.echo(f"  !! {problem}")
    elif isinstance(info, Header):
        _print_header(file, info)
    elif isinstance(info, JournalInfo):
        click.echo(f"{file}  persistkit journal")
        click.echo(f"  records     {info.records} (from sequence {info.first_seq})")
        click.echo(f"  size        {size(info.bytes)}")
        if info.torn_bytes:
            click.echo(
                f"  torn tail   {info.torn_bytes} bytes (an append never acknowledged; dropped on load)"
            )
        if info.problem:
            click.echo(f"  !! {info.problem}")
    else:
        click.echo(f"{file}  persistkit key file")
        click.echo(f"  fingerprint {info.fingerprint}")
        safe = "only the owner can read it" if info.secure else "READABLE BY OTHERS: run chmod 600"
        click.echo(f"  mode        {info.mode:04o} ({safe})")


def _print_header(file: str | Path, header: Header) -> None:
    click.echo(f"{file}  persistkit envelope, format {header.version}")
    click.echo(f"  kind        {header.kind}")
    click.echo(f"  codec       {header.codec} (schema {header.schema})")
    click.echo(f"  created     {header.created}")
    click.echo(f"  compression {header.compression}")
    enc = header.encryption
    if enc is None:
        click.echo("  encrypted   no (checksums only)")
    elif enc.kdf is not None:
        click.echo(f"  encrypted   {enc.alg}, password (scrypt n={enc.kdf.n}, r={enc.kdf.r}, p={enc.kdf.p})")
    else:
        click.echo(f"  encrypted   {enc.alg}, key file")
    click.echo(
        f"  size        {size(header.plain_len)} plain, {size(header.stored_len)} stored, "
        f"{size(header.total_len)} file"
    )
    for name, value in header.meta.items():
        click.echo(f"  meta        {name} = {value}")


def _print_manifest(file: str | Path, manifest: Manifest) -> None:
    import shutil
    import sys

    from rich.console import Console
    from rich.table import Table

    # Piped output (a file, a CI log) gets a wide table instead of rich's 80-column default.
    width = None if sys.stdout.isatty() else max(160, shutil.get_terminal_size().columns)
    console = Console(soft_wrap=False, width=width)
    console.print(f"[bold]{file}[/bold]  persistkit bundle, format {manifest.version}", highlight=False)
    console.print(f"  created     {manifest.created}", highlight=False)
    console.print(f"  bundle id   {manifest.bundle_id}", highlight=False)
    console.print(f"  encrypted   {_encryption(manifest)}", highlight=False)
    env = ", ".join(f"{k} {v}" for k, v in manifest.environment.items() if v is not None)
    console.print(f"  saved with  {env}", highlight=False)
    table = Table(show_header=True, header_style="bold")
    for column in (
        "member",
        "role",
        "codec",
        "compression",
        "size",
        "stored",
        "digest (xxh3-128)",
        "details",
    ):
        table.add_column(column, overflow="fold")
    for m in manifest.members:
        table.add_row(
            m.name,
            m.role,
            m.codec,
            m.compression,
            size(m.plain_len),
            size(m.envelope_len),
            m.digest[:16] + "…",
            _summary(dict(m.info)),
        )
    console.print(table)


@click.command("verify")
@click.argument("files", nargs=-1, required=True)
@click.option(
    "--key-file", type=click.Path(dir_okay=False, path_type=Path), help="Key file (default: FILE.key beside)."
)
@click.option(
    "--password-env", metavar="VAR", help="Name of the environment variable that holds the password."
)
def verify_command(files: tuple[str, ...], key_file: Path | None, password_env: str | None) -> None:
    """Read and check every byte of each persistkit FILE (bundle, archive, state store, envelope, journal).

    FILE may be an object-store URL (s3://bucket/...): downloaded and checked against the
    persistkit record beside it when there is one, then verified like a local file.

    A bundle: key, manifest MAC, members, digests. An archive: every member's sha256.
    A state store: every committed generation (MACs too with --key-file/--password-env).
    Exits 0 when all are intact, 1 when any is damaged or the key is wrong.
    """
    from persistkit.bundle import Report
    from persistkit.cli import cli_advice
    from persistkit.inspection import verify

    if key_file is not None and password_env is not None:
        raise click.UsageError("pass --key-file or --password-env, not both")
    password = None
    if password_env is not None:
        password = os.environ.get(password_env)
        if not password:
            raise click.UsageError(f"environment variable {password_env} is not set (or empty)")
    flag = f"--password-env {password_env or 'VAR'}"
    failed = 0
    for file in files:
        copy = None
        try:
            with _local(file) as (local, copy):
                report = verify(local, password=password, key_file=key_file)
        except PersistkitError as err:
            failed += 1
            where = f" (member {err.member})" if err.member else ""
            click.echo(f"FAILED {file}{where}: {cli_advice(str(err), password_flag=flag)}", err=True)
            continue
        except (OSError, ImportError) as err:
            failed += 1
            click.echo(f"FAILED {file}: {err}", err=True)
            continue
        if isinstance(report, Report):
            how = "authenticated" if report.authenticated else "digests only (unencrypted)"
            click.echo(f"ok     {file}: {len(report.members)} members intact, {how}")
            if copy is not None:
                click.echo("     " + _record_line(copy))
            continue
        how = ", authenticated" if report.authenticated else ""
        click.echo(f"ok     {file}: {report.kind}, {report.checked} intact{how}")
        if copy is not None:
            click.echo("     " + _record_line(copy))
        if report.unchecked:
            click.echo(
                f"       not checked: {cli_advice(report.unchecked, password_flag=flag)}; pass --key-file or "
                "--password-env to check them"
            )
    if failed:
        click.echo(f"{failed} of {len(files)} file(s) failed verification", err=True)
        raise SystemExit(1)
