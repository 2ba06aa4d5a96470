"""``training_session``: archive a workspace on entry and on any exit (SIGTERM included)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from persistkit import shutdown
from persistkit.archive.archiver import Archiver
from persistkit.io import current_fs


@dataclass
class TrainingSession:
    root: Path
    archiver: Archiver | None
    initial_archive: Path | None = None
    final_archive: Path | None = None
    moved_logs: Path | None = None


def _unwind_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through training_session's finally


@contextlib.contextmanager
def training_session(
    root: str | os.PathLike[str] = ".", *, archive: bool = True, keep: int = 5, **archiver_kw: Any
) -> Iterator[TrainingSession]:
    """Archive and prepare the workspace on entry; archive the session on any exit.

    On exit (normal, exception, KeyboardInterrupt or SIGTERM) logs are flushed and
    the session's final archive is written. ``archive=False`` skips both, like
    the original training script's ``--no-archive``.
    """
    root_path = Path(os.path.abspath(os.fspath(root)))
    if not archive:
        yield TrainingSession(root_path, None)
        return
    archiver = Archiver(root_path, keep=keep, **archiver_kw)
    session = TrainingSession(root_path, archiver)
    current_fs().makedirs(root_path)  # a new workspace starts empty (its first archive is empty too)
    session.initial_archive = archiver.create()
    session.moved_logs = archiver.prepare_workspace()
    try:
        with shutdown.handling((signal.SIGTERM,), _unwind_on_signal):
            yield session
    finally:
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        session.final_archive = archiver.create()
