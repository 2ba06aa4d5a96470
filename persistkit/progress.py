"""Progress bars for long transfers: drawn with rich on a terminal, silent everywhere else.

The one place that decides whether a bar is shown and draws it. Callers (the
object-store transfers in ``persistkit.io.remote``) only report bytes through
the callable ``transfer()`` yields. A bar appears when the transfer is at
least ``THRESHOLD`` bytes and the stream (stderr by default) is a terminal:
piped output, CI logs and small transfers stay quiet. ``show=`` overrides the
decision either way. Nothing here reads or writes files.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import TextIO

__all__ = ["THRESHOLD", "transfer", "wanted"]

THRESHOLD = 8 * 2**20  # "above a few MB": smaller transfers finish before a bar is worth reading


def _quiet(_: int) -> None:
    return None


def wanted(total: int, *, stream: TextIO | None = None, show: bool | None = None) -> bool:
    """Whether ``transfer`` would draw a bar for ``total`` bytes on ``stream``."""
    if show is not None:
        return show
    out = stream if stream is not None else sys.stderr
    try:
        is_tty = out.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        is_tty = False
    return is_tty and total >= THRESHOLD


@contextlib.contextmanager
def transfer(
    description: str, total: int, *, stream: TextIO | None = None, show: bool | None = None
) -> Iterator[Callable[[int], None]]:
    """A context giving ``advance(n_bytes)``; draws a bar while it is open if ``wanted`` says so.

    ``advance`` may be called from any thread (the transfer's event loop calls it).
    """
    if not wanted(total, stream=stream, show=show):
        yield _quiet
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    # show=True draws even where rich would not (a pipe, a log file): the caller asked for it
    console = Console(file=stream if stream is not None else sys.stderr, force_terminal=show or None)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)  # Progress serialises updates with its own lock
