"""Retention policies: which saved copies to keep. Pure: no I/O, only decisions with reasons.

Modelled on restic's ``forget`` flags and Orbax's preservation policies. A
policy looks at items (an id, a time, and whether something pins it) and
says which ones it keeps and why; ``decide`` takes the union of everything
kept, always keeps pinned items and the newest item, and explains each choice
so a dry run can show it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "AnyOf",
    "Decision",
    "Item",
    "KeepDaily",
    "KeepLast",
    "KeepWeekly",
    "KeepWithin",
    "Policy",
    "decide",
]


@dataclass(frozen=True)
class Item:
    """Something that can be kept or removed: ``id`` is unique, ``time`` is when it was made (UTC)."""

    id: str
    time: dt.datetime
    pinned: str = ""  # why it must be kept regardless (e.g. "being restored from"), or ""


@dataclass(frozen=True)
class Decision:
    item: Item
    keep: bool
    reasons: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        verb = "keep" if self.keep else "remove"
        why = "; ".join(self.reasons) if self.reasons else "no policy keeps it"
        return f"{verb} {self.item.id}: {why}"


class Policy(Protocol):
    def keeps(self, items: Sequence[Item], now: dt.datetime) -> dict[str, str]:
        """Ids this policy keeps (``items`` are newest first), each with the reason."""
        ...


@dataclass(frozen=True)
class KeepLast:
    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("KeepLast(n) needs n >= 0")

    def keeps(self, items: Sequence[Item], now: dt.datetime) -> dict[str, str]:
        return {it.id: f"one of the {self.n} most recent" for it in items[: self.n]}


@dataclass(frozen=True)
class _KeepPerBucket:
    n: int

    def bucket(self, t: dt.datetime) -> object:  # pragma: no cover - overridden
        raise NotImplementedError

    label = "bucket"

    def keeps(self, items: Sequence[Item], now: dt.datetime) -> dict[str, str]:
        kept: dict[str, str] = {}
        seen: list[object] = []
        for it in items:  # newest first: the first item of each bucket is that bucket's newest
            b = self.bucket(it.time)
            if b in seen:
                continue
            if len(seen) >= self.n:
                break
            seen.append(b)
            kept[it.id] = f"newest of {self.label} {b}"
        return kept


@dataclass(frozen=True)
class KeepDaily(_KeepPerBucket):
    """The newest item of each of the ``n`` most recent days that have items (UTC days)."""

    label = "day"

    def bucket(self, t: dt.datetime) -> object:
        return t.astimezone(dt.UTC).date().isoformat()


@dataclass(frozen=True)
class KeepWeekly(_KeepPerBucket):
    """The newest item of each of the ``n`` most recent ISO weeks that have items."""

    label = "week"

    def bucket(self, t: dt.datetime) -> object:
        year, week, _ = t.astimezone(dt.UTC).isocalendar()
        return f"{year}-W{week:02d}"


@dataclass(frozen=True)
class KeepWithin:
    """Everything made within ``period`` before now."""

    period: dt.timedelta

    def keeps(self, items: Sequence[Item], now: dt.datetime) -> dict[str, str]:
        return {it.id: f"made within {self.period} of now" for it in items if now - it.time <= self.period}


@dataclass(frozen=True)
class AnyOf:
    """Keeps what any of its policies keeps."""

    policies: tuple[Policy, ...]

    def __init__(self, *policies: Policy) -> None:
        object.__setattr__(self, "policies", tuple(policies))

    def keeps(self, items: Sequence[Item], now: dt.datetime) -> dict[str, str]:
        kept: dict[str, list[str]] = {}
        for policy in self.policies:
            for item_id, reason in policy.keeps(items, now).items():
                kept.setdefault(item_id, []).append(reason)
        return {k: "; ".join(v) for k, v in kept.items()}


def decide(policy: Policy, items: Sequence[Item], now: dt.datetime | None = None) -> list[Decision]:
    """One decision per item (newest first). Pinned items and the newest item are always kept."""
    now = now or dt.datetime.now(dt.UTC)
    ordered = sorted(items, key=lambda it: (it.time, it.id), reverse=True)
    kept = policy.keeps(ordered, now)
    decisions = []
    for index, it in enumerate(ordered):
        reasons = []
        if it.pinned:
            reasons.append(f"pinned: {it.pinned}")
        if index == 0:
            reasons.append("the newest copy is always kept")
        if it.id in kept:
            reasons.append(kept[it.id])
        decisions.append(Decision(it, bool(reasons), tuple(reasons)))
    return decisions
