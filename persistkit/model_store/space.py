"""What ``ModelStore`` asks of the place its versions live: the ``VersionSpace`` protocol.

Two implementations: ``LocalSpace`` (a directory, ``local.py``) and ``BucketSpace`` (an object
store URL, ``bucket.py``). Everything else, the save prologue, the key and encryption rules, aliases
and loading, is ``ModelStore``'s, once. Also here: the documents both spaces keep, read by the one
validating reader (``persistkit.io.documents``): the store settings (``store.json``) and the alias
index (``aliases.json``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from persistkit.io.documents import DocumentError, Fields
from persistkit.model_store.version import AliasEvent, Version
from persistkit.naming import is_alias, parse_model_version
from persistkit.policy.retention import Decision, Item, KeepLast, Policy

__all__ = [
    "ALIASES",
    "ALIAS_INDEX_LIMIT",
    "STORE_FILE",
    "AliasEvents",
    "StoreKey",
    "StoreSettings",
    "VersionSpace",
    "alias_index_bytes",
    "live_event",
    "move_alias",
    "orphan_decision",
    "parse_alias_index",
    "parse_settings",
    "retention_policy",
    "skipped_decision",
]

ALIASES = "aliases.json"
STORE_FILE = "store.json"
ALIAS_INDEX_LIMIT = 16 << 20  # every assignment ever made: about 150 bytes each, so some 100,000 moves
SETTINGS_FORMAT = "persistkit.model-store"
SETTINGS_ADVICE = (
    "Restore it from a backup or a bucket version; if this store saves encrypted bundles, it holds "
    '{"format": "persistkit.model-store", "version": 1, "encrypted": true} and the fingerprint of its key.'
)
ALIASES_ADVICE = "Restore it from a backup or a bucket version, or delete it to forget all aliases."

AliasEvents = list[dict[str, Any]]  # {"alias", "path" (SYMBOL/AGENT/TIMEFRAME/<name>), "since", "until"}


# -- store settings: store.json ----------------------------------------------------------


@dataclass(frozen=True)
class StoreKey:
    """The key a store's encrypted versions are sealed with, as far as the bucket may know it.

    ``kind`` is "key file" or "password"; ``fingerprint`` is ``Key.fingerprint`` (never the key). A
    password's key depends on its scrypt salt and cost, so those are kept too: any writer with the same
    password derives the same fingerprint from them.
    """

    kind: str
    fingerprint: str
    salt: str | None = None
    kdf: tuple[int, int, int] | None = None

    def describe(self) -> str:
        return f"a {self.kind} with fingerprint {self.fingerprint}"

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"kind": self.kind, "fingerprint": self.fingerprint}
        if self.salt is not None and self.kdf is not None:
            doc["salt"] = self.salt
            doc["kdf"] = {"n": self.kdf[0], "r": self.kdf[1], "p": self.kdf[2]}
        return doc


@dataclass(frozen=True)
class StoreSettings:
    """``store.json``: whether the store saves encrypted versions, and with which key (None: not recorded)."""

    encrypted: bool
    key: StoreKey | None = None

    def encode(self) -> bytes:
        doc: dict[str, Any] = {"format": SETTINGS_FORMAT, "version": 1, "encrypted": self.encrypted}
        if self.key is not None:
            doc["key"] = self.key.as_dict()
        return json.dumps(doc, indent=1).encode() + b"\n"


def _hex(min_len: int, max_len: int) -> Callable[[str], bool]:
    return lambda v: min_len <= len(v) <= max_len and all(c in "0123456789abcdef" for c in v)


def parse_settings(doc: Fields) -> StoreSettings:
    doc.one_of("format", [SETTINGS_FORMAT])
    doc.one_of("version", [1])
    encrypted = doc.boolean("encrypted", default=False)
    key = None
    if doc.value.get("key") is not None:
        entry = doc.table("key")
        kind = entry.one_of("kind", ["key file", "password"])
        fingerprint = entry.text("fingerprint", check=_hex(8, 64), what="a hex fingerprint")
        salt, kdf = None, None
        if kind == "password":
            salt = entry.text("salt", check=_hex(32, 128), what="a hex scrypt salt")
            cost = entry.table("kdf")
            kdf = (cost.integer("n", low=2, high=2**30), cost.integer("r", low=1, high=64),
                   cost.integer("p", low=1, high=64))  # fmt: skip
        key = StoreKey(kind, fingerprint, salt, kdf)
    return StoreSettings(encrypted, key)


# -- aliases: aliases.json -----------------------------------------------------------------


def parse_alias_index(doc: Fields) -> AliasEvents:
    """The events of an alias index, each checked: an alias name, a version of this store, two times."""
    doc.one_of("format", ["persistkit.aliases"])
    doc.one_of("version", [1])
    events: AliasEvents = []
    for event in doc.items("events"):
        alias = event.text("alias", check=is_alias, what="an alias name (letters, digits, '.', '_', '-')")
        path = event.text(
            "path",
            check=lambda v: parse_model_version(v) is not None,
            what="a version of this store (SYMBOL/AGENT/TIMEFRAME/<stamp>.models)",
        )
        since = event.moment("since")
        until = event.moment("until", optional=True)
        events.append({"alias": alias, "path": path, "since": since, "until": until})
    open_ones = [e["alias"] for e in events if e["until"] is None]
    if len(open_ones) != len(set(open_ones)):
        raise DocumentError("events", "points one alias at two versions at once")
    return events


def alias_index_bytes(events: Sequence[Mapping[str, Any]]) -> bytes:
    doc = {"format": "persistkit.aliases", "version": 1, "events": list(events)}
    return json.dumps(doc, indent=1).encode() + b"\n"


def move_alias(events: AliasEvents, alias: str, path: str, when: dt.datetime | None) -> bool:
    """Point ``alias`` at ``path`` in ``events`` (closing its current assignment); False if it already is."""
    moment = (when or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat(timespec="microseconds")
    for event in events:
        if event["alias"] == alias and event["until"] is None:
            if event["path"] == path:
                return False
            event["until"] = moment
    events.append({"alias": alias, "path": path, "since": moment, "until": None})
    return True


def live_event(history: Sequence[AliasEvent], when: dt.datetime) -> AliasEvent | None:
    """The assignment in ``history`` that was current at ``when``."""
    moment = when.astimezone(dt.UTC)
    for event in reversed(history):
        since = dt.datetime.fromisoformat(event.since)
        until = dt.datetime.fromisoformat(event.until) if event.until else None
        if since <= moment and (until is None or moment < until):
            return event
    return None


# -- retention helpers both spaces use --------------------------------------------------------


def retention_policy(keep: int | None, policy: Policy | None) -> Policy:
    if policy is not None:
        if keep is not None:
            raise ValueError("pass keep= or policy=, not both (KeepLast(keep) is the policy keep= means)")
        return policy
    if type(keep) is not int or keep < 0:
        raise ValueError("keep must be a non-negative int (or pass policy=)")
    return KeepLast(keep)


def orphan_decision(
    location: str, since: dt.datetime, grace: dt.timedelta, now: dt.datetime, *, upload: bool = False
) -> Decision:
    what = "an upload never completed" if upload else "an object without a record (its publisher died)"
    age = now - since
    item = Item(location, since)
    if age < grace:
        reason = f"orphan: {what}, but only {age} old (grace {grace}): its writer may still finish it"
        return Decision(item, True, (reason,))
    return Decision(item, False, (f"orphan: {what}, {age} old (grace {grace})",))


def skipped_decision(location: str, problem: str, when: dt.datetime) -> Decision:
    """A name shaped like a version that is not one (an impossible date): never removed, reported."""
    return Decision(Item(location, when), True, (f"not a version, left alone: {problem}",))


# -- the protocol ------------------------------------------------------------------------------


class VersionSpace(Protocol):
    """Where a ``ModelStore``'s versions, settings and aliases live."""

    root: str  # the store's absolute path or URL
    remote: bool
    default_key_file: str | None  # the store key saves use when given none (None: a key beside each version)

    def location(self, key: str) -> str:
        """The path or URL of ``key`` (``/``-separated, relative to the root)."""

    def version(self, group: str, name: str) -> Version:
        """The Version ``group``/``name`` (both already checked by ``persistkit.naming``)."""

    def version_of(self, given: object) -> Version:
        """The version of this store ``given`` names (a Version, path or URL); ValueError if it names none."""

    def exclusive(self) -> AbstractContextManager[object]:
        """Held around a save, a tag and a prune: the store's directory lock, or nothing (compare-and-swap)."""

    def read_settings(self) -> StoreSettings | None:
        """``store.json``, checked; None if there is none."""

    def write_settings(self, new: StoreSettings, old: StoreSettings | None) -> StoreSettings:
        """Replace ``old`` (None: absent) with ``new``; the settings that stand (another writer's, if it won)."""

    def publish(
        self,
        group: str,
        build: Callable[[str], object],
        *,
        when: dt.datetime | None,
        config: Any,
        encrypted: bool,
    ) -> Version:
        """Make a new version of ``group``: ``build(path)`` writes the bundle; its config goes beside it."""

    def versions(self, group: str) -> list[Version]:
        """The published versions of ``group``, oldest first."""

    def latest(self, group: str) -> Version | None:
        """The newest published version of ``group``, or None."""

    def fetch(self, version: Version) -> str:
        """A local path holding the version's bytes, checked."""

    def published(self, version: Version) -> bool:
        """Whether ``version`` exists (for a bucket: its record does)."""

    def read_aliases(self) -> AliasEvents:
        """The alias index, checked ([] if there is none)."""

    def change_aliases(self, change: Callable[[AliasEvents], bool]) -> bool:
        """Apply ``change`` to the index and write it back (atomically); False when it changed nothing."""

    def plan(
        self,
        policy: Policy,
        pins: Mapping[str, list[str]],
        grace: dt.timedelta,
        now: dt.datetime,
        required: bool | str,
    ) -> list[Decision]:
        """Retention decisions for every version (``pins``: version key -> why it must stay)."""

    def remove(self, decisions: Sequence[Decision]) -> list[Version]:
        """Remove what ``decisions`` do not keep; the versions removed, oldest first."""
