"""Save on SIGINT/SIGTERM without saving inside the interrupted frame.

The handler only records the signal and starts a saver thread, so a
component lock held by the interrupted code cannot deadlock the save. The
saver takes the store's lock (waiting for the current ``store.atomic()``
block to finish), saves within the grace budget, then re-delivers the signal;
the main thread's handler, now chaining, passes it to whatever was installed
before: the default action terminates the process, Python's default SIGINT
handler raises KeyboardInterrupt, a custom handler runs, SIG_IGN is honoured.

A second signal exits at once. The last consistent checkpoint is intact,
because checkpoints commit atomically.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING

from persistkit.shutdown import SignalHandlers

if TYPE_CHECKING:
    from persistkit.state.store import StateStore

__all__ = ["SignalSaver"]

log = logging.getLogger("persistkit")


class SignalSaver:
    def __init__(
        self,
        store: StateStore,
        *,
        grace: float = 10.0,
        exit_on_signal: bool = True,
        signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM),
    ) -> None:
        self.store = store
        self.grace = grace
        self.exit_on_signal = exit_on_signal
        self.signals = signals
        self.handlers = SignalHandlers(signals, self._handle)
        self.previous = self.handlers.previous
        self.received: int | None = None
        self.chaining = False
        self.saver: threading.Thread | None = None

    def install(self) -> SignalSaver:
        self.handlers.install()
        return self

    def uninstall(self) -> None:
        self.handlers.uninstall()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.chaining:
            self.handlers.chain(signum, frame)
            return
        if self.received is not None:
            os._exit(128 + signum)  # second signal: exit now; the last checkpoint is consistent
        self.received = signum
        self.store.request_stop(signum)
        self.saver = threading.Thread(
            target=self._final_save, args=(signum,), name="persistkit-signal-save", daemon=True
        )
        self.saver.start()
        timer = threading.Timer(self.grace, self._deadline, args=(signum,))
        timer.daemon = True
        timer.start()

    def _deadline(self, signum: int) -> None:
        if self.saver is not None and self.saver.is_alive():
            log.error(
                "persistkit: final save did not finish within %.1f s; exiting with the last checkpoint",
                self.grace,
            )
            os._exit(128 + signum)

    def _final_save(self, signum: int) -> None:
        store = self.store
        with store.lock:
            store.final_save(signum)
            if not self.exit_on_signal or self.previous.get(signum) == signal.SIG_IGN:
                return
            # Re-deliver while still holding the lock, so no further work is done after
            # the saved state; the main thread's handler now chains to the previous one.
            self.chaining = True
            os.kill(os.getpid(), signum)
