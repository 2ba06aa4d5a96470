"""``persistkit ...``: the command line.

Subcommands live in ``persistkit/commands/`` and are imported only when invoked,
so ``persistkit --help`` stays fast and never loads torch or sklearn.
Exit codes: 0 ok, 1 a check failed (corruption, wrong key, unsafe archive), 2 usage.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import click

from persistkit import __version__

# command name -> "module:attribute" of a click.Command
SUBCOMMANDS: dict[str, str] = {
    "inspect": "persistkit.commands.inspect:inspect_command",
    "verify": "persistkit.commands.inspect:verify_command",
    "keygen": "persistkit.commands.bundle:keygen_command",
    "state": "persistkit.commands.state:state_group",
    "archive": "persistkit.commands.archive:archive_group",
    "check": "persistkit.commands.check:check_command",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use (click docs pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *SUBCOMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module_name, attr = target.split(":")
        command: Any = getattr(importlib.import_module(module_name), attr)
        if not isinstance(command, click.Command):  # pragma: no cover - programming error
            raise TypeError(f"{target} is not a click command")
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="persistkit")
def cli() -> None:
    """persistkit: persistence you can prove."""


_ARG = r"(?<![\w-]){name}=(?![\w'\"(])"


def cli_advice(message: str, *, password_flag: str = "--password") -> str:  # noqa: S107
    """Error text written for the Python API, with its keyword arguments named as CLI flags.

    persistkit's errors say what to pass (``password=``, ``key_file=``); on the command line
    the same advice is ``--password`` (or ``--password-env VAR``) and ``--key-file``.
    """
    message = message.replace(
        "pass allow_unencrypted=True if plain files are expected here",
        "leave out --key-file/--password if plain files are expected here",
    )
    message = re.sub(_ARG.format(name="password"), password_flag, message)
    return re.sub(_ARG.format(name="key_file"), "--key-file", message)


def main() -> None:
    cli(prog_name="persistkit")
