"""``LocalSpace``: a model store's versions in a directory (``root/SYMBOL/AGENT/TIMEFRAME/<stamp>.models``).

Beside each version: ``<version>.config.json`` (the config, ``{}`` when none; plaintext, on the
store's own disk) and, for bundles with their own key, ``<version>.models.key``. Names come from
``persistkit.io.names.allocate`` (unique and monotonic across processes, under the group's lock);
settings and aliases are rewritten atomically under the store's directory lock.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from persistkit.errors import IntegrityError, PersistkitError
from persistkit.io import DirectoryLock, atomic_write, current_fs
from persistkit.io.documents import parse_document
from persistkit.io.fs import io_error
from persistkit.io.names import allocate
from persistkit.model_store.space import (
    ALIASES,
    ALIASES_ADVICE,
    SETTINGS_ADVICE,
    STORE_FILE,
    AliasEvents,
    StoreSettings,
    alias_index_bytes,
    parse_alias_index,
    parse_settings,
    skipped_decision,
)
from persistkit.model_store.version import Version
from persistkit.naming import MODEL_SUFFIX, MODEL_VERSIONS, is_model_group, parse_model_version
from persistkit.policy.retention import Decision, Item, Policy, decide

__all__ = ["CONFIG_SUFFIX", "LocalSpace", "config_path"]

log = logging.getLogger("persistkit")

CONFIG_SUFFIX = ".config.json"


def config_path(bundle: str | os.PathLike[str]) -> str:
    """``<stamp>.config.json`` beside the version ``<stamp>.models``."""
    path = os.fspath(bundle)
    return path[: -len(MODEL_SUFFIX)] + CONFIG_SUFFIX


class LocalSpace:
    """Versions, settings and aliases under one directory (see the module docstring)."""

    remote = False

    def __init__(self, root: str | os.PathLike[str], *, lock_timeout: float, key_file: str | None) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.lock_timeout = lock_timeout
        self.default_key_file = key_file

    # -- names --

    def location(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/")) if key else self.root

    def version(self, group: str, name: str) -> Version:
        return Version(group, name, self.location(f"{group}/{name}"))

    def version_of(self, given: object) -> Version:
        if isinstance(given, Version):
            if given.remote:
                raise ValueError(f"{given} is a version of a store in a bucket, not of the store {self.root}")
            target = given.location
        elif isinstance(given, str | os.PathLike):
            target = os.path.abspath(os.fspath(given))
        else:
            raise TypeError(f"a version is a Version or a path, not {type(given).__name__}")
        rel = os.path.relpath(target, self.root).replace(os.sep, "/")
        parsed = None if rel.startswith("../") else parse_model_version(rel)
        if parsed is None:
            raise ValueError(f"{target} is not a bundle version inside the store {self.root}")
        return self.version(*parsed)

    def exclusive(self) -> DirectoryLock:
        return DirectoryLock(self.root, timeout=self.lock_timeout)

    # -- settings --

    def _read(self, path: str) -> bytes | None:
        fs = current_fs()
        if not fs.exists(path):
            return None
        try:
            return fs.read_bytes(path)
        except OSError as err:
            raise io_error("read", path, err) from err

    def read_settings(self) -> StoreSettings | None:
        path = self.location(STORE_FILE)
        data = self._read(path)
        if data is None:
            return None
        return parse_document(path, data, parse_settings, what="the store settings", advice=SETTINGS_ADVICE)

    def write_settings(self, new: StoreSettings, old: StoreSettings | None) -> StoreSettings:
        atomic_write(self.location(STORE_FILE), new.encode())  # the caller holds the store's lock
        return new

    # -- versions --

    def publish(
        self,
        group: str,
        build: Callable[[str], object],
        *,
        when: dt.datetime | None,
        config: Any,
        encrypted: bool,
    ) -> Version:
        directory = self.location(group)
        # Unique and monotonic per group, across processes and after pruning; an explicit ``when``
        # backfills that moment instead (the store's lock serialises those).
        name = allocate(directory, MODEL_VERSIONS, when=when, lock_timeout=self.lock_timeout)
        version = self.version(group, name)
        # Config first: a version never exists without its config (a config without a version is ignored).
        config_file = config_path(version.location)
        atomic_write(config_file, json.dumps(config, indent=2).encode() + b"\n")
        try:
            build(version.location)
        except BaseException:
            try:  # a failed save leaves nothing new behind (save_bundle removes its own key file)
                current_fs().unlink(config_file)
            except OSError as err:
                log.warning("could not remove the config %s of a failed save: %s", config_file, err)
            raise
        return version

    def _listed(self, group: str) -> tuple[list[Version], list[tuple[str, str]]]:
        """(the versions of ``group``, oldest first; (path, problem) of version-shaped names that are not)."""
        fs = current_fs()
        directory = self.location(group)
        if not fs.is_dir(directory):
            return [], []
        found, problems = [], []
        for name in fs.listdir(directory):
            key = MODEL_VERSIONS.parse(name)
            if key is not None:
                found.append((key, self.version(group, name)))
            elif (problem := MODEL_VERSIONS.problem(name)) is not None:
                problems.append((os.path.join(directory, name), problem))
        return [v for _, v in sorted(found, key=lambda kv: kv[0])], problems

    def versions(self, group: str) -> list[Version]:
        found, problems = self._listed(group)
        for path, problem in problems:
            log.warning("%s: skipped, not a version: %s", path, problem)
        return found

    def latest(self, group: str) -> Version | None:
        found = self.versions(group)
        return found[-1] if found else None

    def fetch(self, version: Version) -> str:
        return version.location

    def published(self, version: Version) -> bool:
        return current_fs().is_file(version.location)

    def _groups(self) -> list[str]:
        fs = current_fs()
        if not fs.is_dir(self.root):
            return []
        groups = []
        for dirpath, _dirs, files in fs.walk(self.root):
            group = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            if is_model_group(group) and any(MODEL_VERSIONS.pattern.fullmatch(f) for f in files):
                groups.append(group)
        return sorted(groups)

    # -- aliases --

    def read_aliases(self) -> AliasEvents:
        path = self.location(ALIASES)
        try:
            data = self._read(path)
        except PersistkitError as err:
            raise IntegrityError(
                f"{path}: the alias index is unreadable ({err}). {ALIASES_ADVICE}", path=path
            ) from err
        if data is None:
            return []
        return parse_document(path, data, parse_alias_index, what="the alias index", advice=ALIASES_ADVICE)

    def change_aliases(self, change: Callable[[AliasEvents], bool]) -> bool:
        events = self.read_aliases()  # the caller holds the store's lock
        if not change(events):
            return False
        atomic_write(self.location(ALIASES), alias_index_bytes(events))
        return True

    # -- retention --

    def plan(
        self,
        policy: Policy,
        pins: Mapping[str, list[str]],
        grace: dt.timedelta,
        now: dt.datetime,
        required: bool | str,
    ) -> list[Decision]:
        """Versions through ``decide``, pinned: aliased ones and the newest that is intact.

        ``check_intact``: the manifest and every member's bytes check out; no key needed.
        """
        from persistkit.bundle import check_intact

        decisions: list[Decision] = []
        for group in self._groups():
            found, problems = self._listed(group)
            intact = None
            for version in reversed(found):
                try:
                    check_intact(version.location, require_encryption=required)
                except PersistkitError:
                    continue
                intact = version
                break
            items = []
            for version in found:
                why = list(pins.get(version.key, []))
                if version == intact:
                    why.append("the newest version that is intact")
                items.append(Item(version.location, version.when, "; ".join(why)))
            decisions += decide(policy, items, now)
            decisions += [skipped_decision(path, problem, now) for path, problem in problems]
        return decisions

    def remove(self, decisions: Sequence[Decision]) -> list[Version]:
        fs = current_fs()
        victims = sorted(
            (self.version_of(d.item.id) for d in decisions if not d.keep),
            key=lambda v: (v.group, MODEL_VERSIONS.sort_key(v.name)),
        )
        for version in victims:
            for victim in (version.location, config_path(version.location), version.location + ".key"):
                try:
                    fs.unlink(victim)
                except FileNotFoundError:
                    pass
                except OSError as err:
                    raise io_error("delete", victim, err) from err
        for directory in sorted({os.path.dirname(v.location) for v in victims}):
            try:
                fs.fsync_dir(directory)
            except OSError as err:
                raise io_error("fsync", directory, err) from err
        return victims

    def __repr__(self) -> str:
        return f"LocalSpace({Path(self.root)!s})"
