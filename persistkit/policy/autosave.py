"""When a state store's background thread saves next: a pure cadence policy.

The autosave thread asks ``delay()`` how long to wait before its next attempt,
passing the number of consecutive failed saves and a uniform random draw. The
policy reads no clock, draws no random numbers and touches no files, so it is
tested without sleeping and replayed exactly.

* ``every``: seconds between attempts while saves succeed (the store saves
  only if something changed since the last checkpoint).
* ``retry_after``: after a failed save (a full disk, a read-only remount),
  retry after this many seconds, doubling per consecutive failure, never
  waiting longer than ``every``. ``None`` retries at the next regular tick.
* ``jitter``: spreads the saves of many processes that started together
  (one host, one shared disk) by up to ``jitter * every`` either way; the
  mean interval stays ``every``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["AutosaveCadence"]


@dataclass(frozen=True)
class AutosaveCadence:
    every: float = 300.0
    retry_after: float | None = None
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.every, int | float) and math.isfinite(self.every) and self.every > 0):
            raise ValueError(f"every must be a positive number of seconds, not {self.every!r}")
        if self.retry_after is not None and not (
            isinstance(self.retry_after, int | float)
            and math.isfinite(self.retry_after)
            and self.retry_after > 0
        ):
            raise ValueError(
                f"retry_after must be a positive number of seconds or None, not {self.retry_after!r}"
            )
        if not (isinstance(self.jitter, int | float) and 0 <= self.jitter < 1):
            raise ValueError(f"jitter must be in [0, 1), not {self.jitter!r}")

    def delay(self, *, failures: int = 0, rand: float = 0.5) -> float:
        """Seconds to wait before the next attempt; ``rand`` is a uniform draw from [0, 1)."""
        if failures < 0:
            raise ValueError(f"failures must be >= 0, not {failures}")
        if not 0 <= rand < 1:
            raise ValueError(f"rand must be in [0, 1), not {rand}")
        if failures and self.retry_after is not None:
            # 2**60 already exceeds any sane ``every``; the cap keeps the float finite.
            return min(self.every, self.retry_after * 2.0 ** min(failures - 1, 60))
        return self.every * (1 + self.jitter * (2 * rand - 1))

    @classmethod
    def of(cls, value: float | AutosaveCadence | None) -> AutosaveCadence | None:
        """Read ``StateStore(autosave_every=...)``: seconds, a cadence, or ``0``/``None`` for no autosave."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(
                f"autosave_every must be seconds or an AutosaveCadence, not {type(value).__name__}"
            )
        if value == 0:
            return None
        return cls(every=float(value))
