"""Stop signals (SIGINT, SIGTERM): the one place that installs a handler and puts back what was there.

Python runs signal handlers on the main thread only, so off the main thread
nothing is installed (``install()`` returns False) and the caller relies on its
other exit paths (``finally``, atexit). ``uninstall()`` restores the previous
handler only where ours is still installed: a handler installed after ours wins.
Used by ``StateStore.start()`` (save, then chain) and ``training_session``
(unwind, then archive).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

__all__ = ["SignalHandlers", "handling"]

Handler = Callable[[int, FrameType | None], Any]


class SignalHandlers:
    def __init__(self, signals: tuple[int, ...], handler: Handler) -> None:
        self.signals = signals
        self.handler = handler
        self.previous: dict[int, Any] = {}

    def install(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False
        for sig in self.signals:
            self.previous[sig] = signal.signal(sig, self.handler)
        return True

    def uninstall(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, prev in self.previous.items():
            if signal.getsignal(sig) == self.handler:
                signal.signal(sig, prev if prev is not None else signal.SIG_DFL)

    def chain(self, signum: int, frame: FrameType | None) -> None:
        """Hand ``signum`` to the handler that was there before ours (for good: ours is removed)."""
        prev = self.previous.get(signum, signal.SIG_DFL)
        signal.signal(signum, prev if prev is not None else signal.SIG_DFL)
        if prev in (signal.SIG_DFL, None):
            os.kill(os.getpid(), signum)  # default action, e.g. terminate
        elif callable(prev):
            prev(signum, frame)


@contextlib.contextmanager
def handling(signals: tuple[int, ...], handler: Handler) -> Iterator[SignalHandlers]:
    """Run the block with ``handler`` on ``signals`` (main thread only), then put the old ones back."""
    handlers = SignalHandlers(signals, handler)
    handlers.install()
    try:
        yield handlers
    finally:
        handlers.uninstall()
