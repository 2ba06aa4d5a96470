"""``persistkit keygen``: key files for bundles from the command line.

``inspect`` and ``verify`` work on any persistkit file and live in ``commands/inspect.py``;
they are re-exported here for the old import path.
"""

from __future__ import annotations

from pathlib import Path

import click

from persistkit.commands.inspect import inspect_command as inspect_command
from persistkit.commands.inspect import verify_command as verify_command
from persistkit.errors import PersistkitError

__all__ = ["inspect_command", "keygen_command", "verify_command"]


@click.command("keygen")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def keygen_command(path: Path) -> None:
    """Create a new random key file at PATH (mode 0600) for save_bundle(key_file=...)."""
    from persistkit.keys import write_key_file

    try:
        key = write_key_file(path)
    except PersistkitError as err:
        click.echo(f"persistkit keygen: {err}", err=True)
        raise SystemExit(1) from None
    click.echo(f"wrote key {key.fingerprint} to {path} (mode 0600); keep a copy somewhere safe")
