"""``persistkit state ...``: look into a StateStore directory without disturbing its writer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from persistkit.errors import PersistkitError
from persistkit.units import size

if TYPE_CHECKING:  # the store modules load only when a command runs
    from persistkit.state.audit import StoreInfo

__all__ = ["state_group"]


@click.group("state")
def state_group() -> None:
    """Inspect state stores (the directories of pk.StateStore)."""


@state_group.command("inspect")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--verify",
    is_flag=True,
    help="Check every checksum, and every file against its generation manifest "
    "(with --password or --key-file, the MACs of an encrypted store too).",
)
@click.option("--password", envvar="PERSISTKIT_PASSWORD", help="Store password (or set PERSISTKIT_PASSWORD).")
@click.option(
    "--key-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Store key file."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
def inspect_command(
    directory: Path, verify: bool, password: str | None, key_file: Path | None, as_json: bool
) -> None:
    """List generations, components, sizes, schema versions and journal lengths of DIRECTORY.

    Takes no lock and writes nothing, so it is safe while the bot runs.
    Exits 1 if something is damaged.
    """
    from persistkit.cli import cli_advice
    from persistkit.keys import check_one
    from persistkit.state.audit import inspect_store

    try:
        check_one(password, key_file)  # the one rule, its advice named as flags
    except ValueError as err:
        raise click.UsageError(cli_advice(str(err))) from None
    keyed = password is not None or key_file is not None
    flag = "--password" if password is not None else "--key-file"
    try:
        if keyed and not inspect_store(directory).encrypted:
            # The store says it is plain: a flag mismatch, not tampering (a plain file in an
            # encrypted store is still reported as possibly forged).
            raise click.UsageError(
                f"{directory.resolve()} is not encrypted (it was created without a password or key file), so "
                f"{flag} has nothing to check: run `persistkit state inspect {directory} --verify` without it. "
                "If this store should be encrypted, its files were replaced with plain ones: restore it from a "
                "backup."
            )
        info = inspect_store(directory, verify=verify, password=password, key_file=key_file)
    except PersistkitError as err:
        click.echo(f"persistkit state inspect: {cli_advice(str(err))}", err=True)
        raise SystemExit(1) from None
    if as_json:
        doc = info.to_dict()
        doc["authenticated"] = verify and info.encrypted and keyed
        click.echo(json.dumps(doc, indent=2, default=str))
    else:
        print_store_table(info, authenticated=keyed)
    if info.problems:
        raise SystemExit(1)


def print_store_table(info: StoreInfo, *, authenticated: bool = False) -> None:
    from persistkit.naming import gen_name

    current = gen_name(info.current) if info.current is not None else "none (no checkpoint yet)"
    click.echo(f"state store {info.directory}")
    click.echo(
        f"  id {info.store_id or '?'}   encrypted: {'yes' if info.encrypted else 'no'}   CURRENT -> {current}"
    )
    if not info.generations:
        click.echo("  no generations")
    for gen in info.generations:
        click.echo("")
        click.echo(f"  {gen.directory}  {gen.status}  {gen.created}  {size(gen.bytes)}")
        if gen.components:
            width = max(len(c.name) for c in gen.components)
            click.echo(f"    {'component'.ljust(width)}  schema  {'bytes':>10}")
            for c in gen.components:
                schema = str(c.schema) if c.schema is not None else "?"
                note = f"  !! {c.problem}" if c.problem else ""
                click.echo(f"    {c.name.ljust(width)}  {schema:>6}  {c.bytes:>10}{note}")
        for j in gen.journals:
            torn = f", torn tail of {j.torn_bytes} bytes (unacknowledged)" if j.torn_bytes else ""
            note = f"  !! {j.problem}" if j.problem else ""
            click.echo(f"    journal {j.name}: {j.records} records, {j.bytes} bytes{torn}{note}")
    for name in info.quarantined_files:
        click.echo(f"\n  {name}  quarantined")
    click.echo("")
    if info.problems:
        click.echo(f"{len(info.problems)} problem(s):")
        for problem in info.problems:
            click.echo(f"  {problem}")
    elif info.verified and info.encrypted and not authenticated:
        click.echo(
            "verified: every committed generation's checksums and manifests are intact; MACs NOT checked "
            "(encrypted store, no --key-file or --password), so a forged file would not be noticed"
        )
    elif info.verified:
        how = ", MACs included" if info.encrypted else " (not encrypted: checksums, no MACs)"
        click.echo(f"verified: every committed generation is intact{how}")
