"""A directory of versioned bundles: ``models/SYMBOL/AGENT/TIMEFRAME/YYYY-MM-DD_HHMMSS.models``.

::

    store = pk.ModelStore("models")
    path = store.save({"policy": ppo}, symbol="BTC/USDT", agent="ppo", timeframe="1h", config=cfg)
    store.tag(path, "production")
    bundle = store.load("production", env=env)
    store.prune(keep=5)          # never the newest valid version, never an aliased one

Beside each version: ``<version>.config.json`` (the config, ``{}`` when none)
and, for bundles with their own key, ``<version>.models.key``.

Once the store has saved an encrypted version, ``<root>/store.json`` says so,
and every load through the store refuses a plain version as a forged
downgrade (``persistkit.keys``), even without a key file beside it.

Aliases live in ``<root>/aliases.json``, rewritten atomically under the
store's directory lock. It keeps every assignment with the time it started
and ended, so the store can say which version was live when
(``history(alias)``, ``live_at(alias, when)``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persistkit.errors import (
    FormatError,
    IntegrityError,
    NotFoundError,
    NoVersionError,
    PersistkitError,
    UnsafeArchiveError,
)
from persistkit.io import DirectoryLock, atomic_write, current_fs
from persistkit.io.fs import PathLike, io_error
from persistkit.naming import Stamped, allocate

__all__ = ["AliasEvent", "ModelStore", "safe_component"]

log = logging.getLogger("persistkit")

SUFFIX = ".models"
CONFIG_SUFFIX = ".config.json"
ALIASES = "aliases.json"
STORE_FILE = "store.json"  # {"encrypted": true} once the store has saved an encrypted version
VERSIONS = Stamped("", SUFFIX, "%Y-%m-%d_%H%M%S")  # 2024-03-01_120000.models, then _1, _2, ...
_VERSION_RE = VERSIONS.pattern
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def safe_component(value: object, what: str) -> str:
    """A path component for a symbol, agent or timeframe: ``BTC/USDT`` becomes ``BTC-USDT``."""
    if type(value) is not str:
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    name = value.replace("/", "-")
    if not _SAFE.match(name) or ".." in name:
        raise UnsafeArchiveError(
            f"{what} {value!r} is not safe as a directory name; use letters, digits, '.', '_' and '-' "
            "(a '/' becomes '-'), starting with a letter or digit.",
            field=what,
        )
    return name


@dataclass(frozen=True)
class AliasEvent:
    """``alias`` pointed at ``path`` from ``since`` until ``until`` (None: still does)."""

    alias: str
    path: str
    since: str
    until: str | None


class ModelStore:
    """Versioned bundles under ``root``, with retention and aliases."""

    def __init__(self, root: PathLike = "models", *, lock_timeout: float = 30.0) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.lock_timeout = lock_timeout

    # -- layout --

    def directory(self, symbol: str, agent: str, timeframe: str) -> str:
        return os.path.join(
            self.root,
            safe_component(symbol, "symbol"),
            safe_component(agent, "agent"),
            safe_component(timeframe, "timeframe"),
        )

    def _lock(self) -> DirectoryLock:
        return DirectoryLock(self.root, timeout=self.lock_timeout)

    @staticmethod
    def config_path(bundle: PathLike) -> str:
        path = os.fspath(bundle)
        return path[: -len(SUFFIX)] + CONFIG_SUFFIX

    # -- writing --

    def save(
        self,
        models: Mapping[str, Any],
        *,
        symbol: str,
        agent: str,
        timeframe: str,
        metadata: Mapping[str, Any] | None = None,
        config: Any = None,
        when: dt.datetime | None = None,
        **bundle_kw: Any,
    ) -> Path:
        """Save a new version (``bundle_kw`` goes to ``save_bundle``) and its config JSON; return its path."""
        from persistkit.bundle import save_bundle
        from persistkit.format.codecs.json import to_jsonable

        directory = self.directory(symbol, agent, timeframe)
        meta = dict(metadata or {})
        meta.setdefault("store", {"symbol": symbol, "agent": agent, "timeframe": timeframe})
        config_doc = to_jsonable(config if config is not None else meta.get("config", {}), "config")
        encrypt = bundle_kw.get("encrypt", True)
        with self._lock():
            if encrypt and not self.encrypted:
                # Before the first encrypted version exists: from now on a plain version is a forged one.
                doc = {"format": "persistkit.model-store", "version": 1, "encrypted": True}
                atomic_write(self._store_path(), json.dumps(doc, indent=1).encode() + b"\n")
            elif not encrypt and self.encrypted:
                raise ValueError(
                    f"the model store {self.root} saves encrypted bundles ({self._store_path()}), so a plain "
                    "version would be refused as a forged one when loaded; drop encrypt=False, or use another "
                    "store for unencrypted models."
                )
            # Unique and monotonic per group, across processes and after pruning (persistkit.naming);
            # an explicit ``when`` backfills that moment instead.
            name = allocate(directory, VERSIONS, when=when, lock_timeout=self.lock_timeout)
            path = os.path.join(directory, name)
            # Config first: a version never exists without its config (a config without a version is ignored).
            config_path = self.config_path(path)
            atomic_write(config_path, json.dumps(config_doc, indent=2).encode() + b"\n")
            try:
                return save_bundle(path, models, meta, config=config, **bundle_kw)
            except BaseException:
                try:  # a failed save leaves nothing new behind (save_bundle removes its own key file)
                    current_fs().unlink(config_path)
                except OSError as err:
                    log.warning("could not remove the config %s of a failed save: %s", config_path, err)
                raise

    # -- reading --

    def _store_path(self) -> str:
        return os.path.join(self.root, STORE_FILE)

    @property
    def encrypted(self) -> bool:
        """True once this store has saved an encrypted version: every version must then be encrypted."""
        path = self._store_path()
        fs = current_fs()
        if not fs.exists(path):
            return False
        try:
            doc = json.loads(fs.read_bytes(path).decode("utf-8"))
        except OSError as err:
            raise io_error("read", path, err) from err
        except (UnicodeDecodeError, ValueError) as err:
            raise IntegrityError(
                f"{path}: the store settings are unreadable ({err}). Restore the file from a backup; if this "
                'store saves encrypted bundles, it holds {"format": "persistkit.model-store", "version": 1, '
                '"encrypted": true}.',
                path=path,
            ) from err
        return isinstance(doc, dict) and doc.get("encrypted") is True

    def _load_kw(self, load_kw: dict[str, Any]) -> dict[str, Any]:
        if self.encrypted:
            load_kw.setdefault(
                "require_encryption",
                f"the model store {self.root} saves encrypted bundles ({self._store_path()})",
            )
        return load_kw

    def _groups(self) -> list[str]:
        fs = current_fs()
        out: list[str] = []
        if not fs.is_dir(self.root):
            return out
        for dirpath, _dirs, files in fs.walk(self.root):
            if any(_VERSION_RE.match(f) for f in files):
                out.append(dirpath)
        return sorted(out)

    @staticmethod
    def _sorted_versions(directory: str) -> list[Path]:
        fs = current_fs()
        if not fs.is_dir(directory):
            return []
        found = []
        for name in fs.listdir(directory):
            key = VERSIONS.parse(name)
            if key is not None:
                found.append((key, Path(directory) / name))
        return [p for _, p in sorted(found)]

    def versions(self, symbol: str, agent: str, timeframe: str) -> list[Path]:
        """Every version, oldest first."""
        return self._sorted_versions(self.directory(symbol, agent, timeframe))

    def latest(self, symbol: str, agent: str, timeframe: str) -> Path | None:
        """The newest version (by name), or None."""
        found = self.versions(symbol, agent, timeframe)
        return found[-1] if found else None

    def load_latest(
        self, symbol: str, agent: str, timeframe: str, *, fallback: bool = False, **load_kw: Any
    ) -> Any:
        """Load the newest version. With ``fallback``, a damaged newest version is skipped for the next older
        one, with a warning on the ``persistkit`` logger naming what was skipped and why; wrong keys still raise.
        """
        from persistkit.bundle import load_bundle

        found = self.versions(symbol, agent, timeframe)
        if not found:
            directory = self.directory(symbol, agent, timeframe)
            raise NoVersionError(
                f"no bundle versions under {directory} (symbol={symbol!r}, agent={agent!r}, "
                f"timeframe={timeframe!r}); save one with ModelStore.save(...) first, or check the names.",
                path=directory,
            )
        last: PersistkitError | None = None
        load_kw = self._load_kw(load_kw)
        for path in reversed(found):
            try:
                return load_bundle(path, **load_kw)
            except (IntegrityError, FormatError) as err:
                if not fallback:
                    raise
                log.warning("skipping damaged bundle %s (%s); trying the previous version", path, err)
                last = err
        assert last is not None
        raise last

    def load(self, alias_or_path: str | PathLike, **load_kw: Any) -> Any:
        """Load a bundle by alias (``"production"``) or path."""
        from persistkit.bundle import load_bundle

        target = alias_or_path
        if isinstance(alias_or_path, str) and _ALIAS.match(alias_or_path):
            current = self.aliases().get(alias_or_path)
            if current is not None:
                target = current
            elif not current_fs().exists(os.path.abspath(alias_or_path)):
                known = ", ".join(map(repr, sorted(self.aliases()))) or "none"
                raise NotFoundError(
                    f"no alias {alias_or_path!r} in {self._aliases_path()} (aliases: {known}); tag a version "
                    "first with ModelStore.tag(path, alias), or pass a bundle path.",
                    path=self._aliases_path(),
                    field=alias_or_path,
                )
        return load_bundle(target, **self._load_kw(load_kw))

    # -- aliases --

    def _aliases_path(self) -> str:
        return os.path.join(self.root, ALIASES)

    def _read_index(self) -> list[dict[str, Any]]:
        fs = current_fs()
        path = self._aliases_path()
        if not fs.exists(path):
            return []
        try:
            doc = json.loads(fs.read_bytes(path).decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise IntegrityError(
                f"{path}: the alias index is unreadable ({err}). Restore it from a backup, or delete it to "
                "forget all aliases.",
                path=path,
            ) from err
        events = doc.get("events") if isinstance(doc, dict) else None
        if not isinstance(events, list) or not all(
            isinstance(e, dict) and {"alias", "path", "since", "until"} <= set(e) for e in events
        ):
            raise IntegrityError(
                f"{path}: the alias index is malformed; restore it from a backup.", path=path
            )
        return events

    def _write_index(self, events: Sequence[Mapping[str, Any]]) -> None:
        doc = {"format": "persistkit.aliases", "version": 1, "events": list(events)}
        atomic_write(self._aliases_path(), json.dumps(doc, indent=1).encode() + b"\n")

    def tag(self, path: PathLike, alias: str, *, when: dt.datetime | None = None) -> None:
        """Point ``alias`` at the bundle ``path`` (which must be in this store); the change is logged."""
        if type(alias) is not str or not _ALIAS.match(alias):
            raise ValueError(f"alias {alias!r}: use letters, digits, '.', '_' and '-'")
        target = os.path.abspath(os.fspath(path))
        rel = os.path.relpath(target, self.root)
        if rel.startswith("..") or not _VERSION_RE.match(os.path.basename(target)):
            raise ValueError(f"{target} is not a bundle version inside the store {self.root}")
        if not current_fs().is_file(target):
            raise FileNotFoundError(f"cannot tag {target}: no such bundle")
        moment = (when or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat(timespec="microseconds")
        with self._lock():
            events = self._read_index()
            for event in events:
                if event["alias"] == alias and event["until"] is None:
                    if event["path"] == rel:
                        return
                    event["until"] = moment
            events.append({"alias": alias, "path": rel, "since": moment, "until": None})
            self._write_index(events)

    def aliases(self) -> dict[str, Path]:
        """Each alias and the bundle it points at now."""
        return {e["alias"]: Path(self.root) / e["path"] for e in self._read_index() if e["until"] is None}

    def history(self, alias: str | None = None) -> list[AliasEvent]:
        """Every assignment of ``alias`` (or of all aliases), oldest first."""
        return [
            AliasEvent(e["alias"], str(Path(self.root) / e["path"]), e["since"], e["until"])
            for e in self._read_index()
            if alias is None or e["alias"] == alias
        ]

    def live_at(self, alias: str, when: dt.datetime) -> Path | None:
        """The bundle ``alias`` pointed at, at time ``when``."""
        moment = when.astimezone(dt.UTC)
        for event in reversed(self.history(alias)):
            since = dt.datetime.fromisoformat(event.since)
            until = dt.datetime.fromisoformat(event.until) if event.until else None
            if since <= moment and (until is None or moment < until):
                return Path(event.path)
        return None

    # -- retention --

    def prune(self, keep: int, *, dry_run: bool = False) -> list[Path]:
        """Keep the ``keep`` newest versions per symbol/agent/timeframe; delete older ones; return them.

        Never deleted, whatever ``keep`` says: the newest version that is
        intact (``check_intact``: the manifest and every member's bytes check
        out; no key needed) and every version an alias points at now.
        """
        from persistkit.bundle import check_intact

        if type(keep) is not int or keep < 0:
            raise ValueError("keep must be a non-negative int")
        fs = current_fs()
        removed: list[Path] = []
        with self._lock():
            protected = {os.path.abspath(p) for p in self.aliases().values()}
            required = self._load_kw({}).get("require_encryption", False)
            for directory in self._groups():
                found = self._sorted_versions(directory)
                keepers = {str(p) for p in found[-keep:]} if keep else set()
                for path in reversed(found):
                    try:
                        check_intact(path, require_encryption=required)
                    except PersistkitError:
                        continue
                    keepers.add(str(path))  # the newest intact version
                    break
                victims = [p for p in found if str(p) not in keepers and str(p) not in protected]
                removed.extend(victims)
                if dry_run or not victims:
                    continue
                for path in victims:
                    for victim in (str(path), self.config_path(path), str(path) + ".key"):
                        try:
                            fs.unlink(victim)
                        except FileNotFoundError:
                            pass
                        except OSError as err:
                            raise io_error("delete", victim, err) from err
                try:
                    fs.fsync_dir(directory)
                except OSError as err:
                    raise io_error("fsync", directory, err) from err
        return removed
