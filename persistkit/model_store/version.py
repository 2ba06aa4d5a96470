"""``Version``: one version of a model store, wherever the store lives."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from persistkit.naming import MODEL_VERSIONS

__all__ = ["AliasEvent", "Version"]


@dataclass(frozen=True, eq=False)
class Version:
    """One version of a ``ModelStore``: its group (``BTC-USDT/ppo/1h``), its name, and where it is.

    ``location`` is an absolute path for a store in a directory and a URL for a store in a bucket;
    ``str(version)`` is that location. A local version is a path-like (``open``, ``Path(v)``,
    ``load_bundle(v)`` take it) and equals its ``Path``; a bucket version equals its URL string. A
    Version is only ever made from names that pass ``persistkit.naming``'s model-store rule.
    """

    group: str
    name: str
    location: str
    remote: bool = False

    @property
    def key(self) -> str:
        """``SYMBOL/AGENT/TIMEFRAME/<name>``: the version's place relative to the store's root."""
        return f"{self.group}/{self.name}"

    @property
    def path(self) -> Path:
        """The bundle file of a local version (a bucket version has none: ``ModelStore.fetch`` it)."""
        if self.remote:
            raise ValueError(f"{self.location} is in a bucket: ModelStore.fetch(version) gives a local copy")
        return Path(self.location)

    @property
    def url(self) -> str:
        """The version's URL (``file://`` for a local one)."""
        return self.location if self.remote else Path(self.location).as_uri()

    @property
    def when(self) -> dt.datetime:
        """When the version was stamped (UTC; its counter added as microseconds, so times sort as names)."""
        when = MODEL_VERSIONS.time(self.name)
        assert when is not None, self.name  # a Version is only made from a valid version name
        return when

    def __fspath__(self) -> str:
        if self.remote:
            raise TypeError(
                f"{self.location} is in a bucket, not a local file: ModelStore.fetch(version) gives a local copy"
            )
        return self.location

    def __str__(self) -> str:
        return self.location

    def __repr__(self) -> str:
        return f"Version({self.location!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Version):
            return (self.remote, self.location) == (other.remote, other.location)
        if self.remote:
            return isinstance(other, str) and other == self.location
        if isinstance(other, os.PathLike):
            return Path(self.location) == Path(os.fspath(other))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.location) if self.remote else hash(Path(self.location))

    def __lt__(self, other: object) -> bool:
        """Versions sort as their names do (oldest first), group by group."""
        if not isinstance(other, Version):
            return NotImplemented
        return self._order() < other._order()

    def _order(self) -> tuple[bool, str, tuple[str, int], str]:
        return self.remote, self.group, MODEL_VERSIONS.sort_key(self.name), self.location


@dataclass(frozen=True)
class AliasEvent:
    """``alias`` pointed at ``path`` (the version's location) from ``since`` until ``until`` (None: still does)."""

    alias: str
    path: str
    since: str
    until: str | None
