"""``persistkit inspect`` / ``verify``: any persistkit file from the command line.

Bundles, training archives, state stores, envelope files, journals and key files:
``persistkit.inspection`` sniffs the kind by content and delegates; this module prints.

Exit codes: 0 ok, 1 a check failed (damage, tampering, wrong or missing key),
2 usage error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from persistkit.errors import PersistkitError
from persistkit.units import size

if TYPE_CHECKING:
    from persistkit.format.envelope import Header
    from persistkit.format.manifest import Manifest
    from persistkit.inspection import Info

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


@click.command("inspect")
@click.argument("file", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
def inspect_command(file: Path, as_json: bool) -> None:
    """Show what the persistkit FILE is and holds. No key needed; nothing is decrypted.

    FILE may be a bundle, a training archive, a state-store directory, an
    envelope file (STORE, CURRENT, MANIFEST, *.pk), a journal or a key file.
    Exits 1 if it is not a persistkit file or something in it is damaged.
    """
    from persistkit.inspection import inspect, to_json

    try:
        info = inspect(file)
    except PersistkitError as err:
        from persistkit.cli import cli_advice

        click.echo(f"persistkit inspect: {cli_advice(str(err))}", err=True)
        raise SystemExit(1) from None
    if as_json:
        click.echo(json.dumps(to_json(info), indent=2, default=str))
    else:
        _print_info(file, info)
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


def _print_info(file: Path, info: Info) -> None:
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


def _print_header(file: Path, header: Header) -> None:
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


def _print_manifest(file: Path, manifest: Manifest) -> None:
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
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--key-file", type=click.Path(dir_okay=False, path_type=Path), help="Key file (default: FILE.key beside)."
)
@click.option(
    "--password-env", metavar="VAR", help="Name of the environment variable that holds the password."
)
def verify_command(files: tuple[Path, ...], key_file: Path | None, password_env: str | None) -> None:
    """Read and check every byte of each persistkit FILE (bundle, archive, state store, envelope, journal).

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
        try:
            report = verify(file, password=password, key_file=key_file)
        except PersistkitError as err:
            failed += 1
            where = f" (member {err.member})" if err.member else ""
            click.echo(f"FAILED {file}{where}: {cli_advice(str(err), password_flag=flag)}", err=True)
            continue
        except OSError as err:
            failed += 1
            click.echo(f"FAILED {file}: {err}", err=True)
            continue
        if isinstance(report, Report):
            how = "authenticated" if report.authenticated else "digests only (unencrypted)"
            click.echo(f"ok     {file}: {len(report.members)} members intact, {how}")
            continue
        how = ", authenticated" if report.authenticated else ""
        click.echo(f"ok     {file}: {report.kind}, {report.checked} intact{how}")
        if report.unchecked:
            click.echo(
                f"       not checked: {cli_advice(report.unchecked, password_flag=flag)}; pass --key-file or "
                "--password-env to check them"
            )
    if failed:
        click.echo(f"{failed} of {len(files)} file(s) failed verification", err=True)
        raise SystemExit(1)
