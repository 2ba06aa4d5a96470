"""``ModelStore``: versioned bundles, ``models/SYMBOL/AGENT/TIMEFRAME/<stamp>.models``, in a directory or a bucket.

::

    store = pk.ModelStore("models")                 # or pk.ModelStore("s3://bucket/models")
    version = store.save({"policy": ppo}, symbol="BTC/USDT", agent="ppo", timeframe="1h", config=cfg)
    store.tag(version, "production")
    bundle = store.load("production", env=env)
    store.prune(keep=5)          # never the newest valid version, never an aliased one

One class over a small protocol (``space.VersionSpace``) with two implementations: a directory
(``local.LocalSpace``) and an object store (``bucket.BucketSpace``). Versions are ``Version``
values: ``str(version)`` is the path or URL.

Once the store has saved an encrypted version, ``<root>/store.json`` says so, and every load
through the store refuses a plain version as a forged downgrade (``persistkit.keys``), even without
a key file beside it. When saves use one store key (a bucket store's ``key_file``, by default
``<cache_dir>/store.key``; a local store given ``key_file=``), ``store.json`` also holds that key's
fingerprint: a writer with another key, or none (which would mint a new one), is refused with
advice instead of publishing versions nobody else can open.

Aliases live in ``<root>/aliases.json``. It keeps every assignment with the time it started and
ended, so the store can say which version was live when (``history(alias)``, ``live_at(alias,
when)``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from persistkit.errors import (
    FormatError,
    IntegrityError,
    NotFoundError,
    NoVersionError,
    PersistIOError,
    PersistkitError,
    WrongKeyError,
)
from persistkit.io import current_fs
from persistkit.io.fs import PathLike
from persistkit.io.remote import is_url
from persistkit.model_store.bucket import ORPHAN_GRACE, BucketSpace
from persistkit.model_store.local import LocalSpace, config_path
from persistkit.model_store.space import (
    ALIASES,
    STORE_FILE,
    AliasEvents,
    StoreKey,
    StoreSettings,
    VersionSpace,
    live_event,
    move_alias,
    retention_policy,
)
from persistkit.model_store.version import AliasEvent, Version
from persistkit.naming import is_alias, model_group, parse_model_version
from persistkit.policy.retention import Decision, Policy

if TYPE_CHECKING:  # the bundle package loads only when a version is read
    from persistkit.bundle import Bundle
    from persistkit.io.objects import ObjectStore

__all__ = ["ModelStore"]

log = logging.getLogger("persistkit")


class ModelStore:
    """Versioned bundles under ``root`` (a directory, or an object-store URL), with retention and aliases.

    ``key_file``: the store key every save seals with and every load tries (a bucket store defaults
    to ``<cache_dir>/store.key``, created on its first save; copy it to the other machines; a local
    store without one writes a key beside each version). ``cache_dir``, ``storage_options`` and
    ``progress`` apply to a bucket: where downloads are kept (checked by sha256 before every use),
    the options for ``fsspec``/``s3fs``, and whether large transfers show a bar.
    """

    def __init__(
        self,
        root: PathLike = "models",
        *,
        lock_timeout: float = 30.0,
        cache_dir: PathLike | None = None,
        key_file: PathLike | None = None,
        storage_options: Mapping[str, Any] | None = None,
        progress: bool | None = None,
    ) -> None:
        self.lock_timeout = lock_timeout
        self.space: VersionSpace
        if is_url(root):
            self.space = BucketSpace(
                os.fspath(root),
                cache_dir=cache_dir,
                key_file=key_file,
                storage_options=storage_options,
                progress=progress,
            )
        else:
            if storage_options is not None or cache_dir is not None:
                raise ValueError(
                    f"cache_dir= and storage_options= are for a store in a bucket; {os.fspath(root)!r} is a "
                    "local directory"
                )
            key = os.path.abspath(os.fspath(key_file)) if key_file is not None else None
            self.space = LocalSpace(root, lock_timeout=lock_timeout, key_file=key)
        self.root = self.space.root

    # -- layout --

    @property
    def remote(self) -> ObjectStore:
        """The object store a bucket store reads and writes through (AttributeError for a local store)."""
        if not isinstance(self.space, BucketSpace):
            raise AttributeError(f"the model store {self.root} is a local directory, not a bucket")
        return self.space.objects

    @property
    def cache_dir(self) -> str:
        if not isinstance(self.space, BucketSpace):
            raise AttributeError(f"the model store {self.root} is a local directory: it has no cache")
        return self.space.cache_dir

    @property
    def key_file(self) -> str | None:
        """The store key's path (None: a local store that keeps a key beside each version)."""
        return self.space.default_key_file

    config_path = staticmethod(config_path)  # ``<stamp>.config.json`` beside a local version

    def group(self, symbol: str, agent: str, timeframe: str) -> str:
        """The group of one symbol/agent/timeframe, relative to the root: ``BTC-USDT/ppo/1h``."""
        return model_group(symbol, agent, timeframe)

    def directory(self, symbol: str, agent: str, timeframe: str) -> str:
        """The path or URL of one symbol/agent/timeframe's versions."""
        return self.space.location(self.group(symbol, agent, timeframe))

    # -- settings and keys --

    @property
    def encrypted(self) -> bool:
        """True once this store has saved an encrypted version: every version must then be encrypted."""
        settings = self.space.read_settings()
        return settings is not None and settings.encrypted

    def _settings_path(self) -> str:
        return self.space.location(STORE_FILE)

    def load_options(self, **load_kw: Any) -> dict[str, Any]:
        """The ``load_bundle`` keywords this store loads its versions with (its key, its encryption rule)."""
        if self.encrypted:
            load_kw.setdefault(
                "require_encryption",
                f"the model store {self.root} saves encrypted bundles ({self._settings_path()})",
            )
        key_file = self.space.default_key_file
        if "password" not in load_kw and "key_file" not in load_kw and key_file and os.path.exists(key_file):
            load_kw["key_file"] = key_file
        return load_kw

    def _seal_with_store_key(self, bundle_kw: dict[str, Any]) -> None:
        """Before an encrypted save: the store's key (default, recorded or checked), and ``store.json``.

        The first encrypted save records the key's fingerprint; later ones must use the same key. A
        writer with no key file, which would mint a new key, or with another key, is refused: every
        reader would get ``WrongKeyError`` on what it published.
        """
        settings = self.space.read_settings()
        password = bundle_kw.get("password")
        key_file = bundle_kw.get("key_file")
        if password is None and key_file is None and self.space.default_key_file is not None:
            key_file = bundle_kw["key_file"] = self.space.default_key_file
        recorded = settings.key if settings is not None else None
        if password is None and key_file is None:  # a key beside each version (a local store's default)
            if recorded is not None:
                raise self._key_refused(recorded, "no key_file= or password= (a new key beside the version)")
            if settings is None or not settings.encrypted:
                self.space.write_settings(StoreSettings(True), settings)
            return
        if recorded is not None:
            self._check_store_key(recorded, password, key_file)
            return
        ours = self._store_key(password, key_file, mint=settings is None or not settings.encrypted)
        if ours is None:  # an older store with encrypted versions and no recorded key; no key file here
            path = os.path.abspath(str(key_file))
            raise WrongKeyError(
                f"the model store {self.root} already holds encrypted versions ({self._settings_path()}), and "
                f"there is no key file at {path}: saving would make a new key that none of its readers has. "
                "Copy the store's key file from the machine that saves to this store to that path (or pass "
                "key_file=), then save again.",
                path=path,
                field="key_file",
            )
        stands = self.space.write_settings(StoreSettings(True, ours), settings)
        if stands.key is not None and stands.key != ours:  # another writer recorded its key first
            self._check_store_key(stands.key, password, key_file)

    def _store_key(self, password: str | None, key_file: PathLike | None, *, mint: bool) -> StoreKey | None:
        """The StoreKey of what this save seals with; None if the key file is missing and not ``mint``."""
        from persistkit.format.crypto import KdfParams, Key, new_salt
        from persistkit.keys import read_key_file, write_key_file

        if password is not None:
            params = KdfParams()
            salt = new_salt()
            key = Key.from_password(password, salt=salt, params=params)
            return StoreKey("password", key.fingerprint, salt.hex(), (params.n, params.r, params.p))
        assert key_file is not None
        path = os.path.abspath(os.fspath(key_file))
        if current_fs().exists(path):
            return StoreKey("key file", read_key_file(path).fingerprint)
        if not mint:
            return None
        try:
            return StoreKey("key file", write_key_file(path).fingerprint)
        except PersistIOError:  # made by another thread or process meanwhile: use it
            return StoreKey("key file", read_key_file(path).fingerprint)

    def _check_store_key(self, recorded: StoreKey, password: str | None, key_file: PathLike | None) -> None:
        from persistkit.format.crypto import KdfParams, Key
        from persistkit.keys import read_key_file

        if recorded.kind == "password" and password is not None:
            assert recorded.salt is not None and recorded.kdf is not None
            params = KdfParams(*recorded.kdf)
            params.check(self._settings_path())
            fingerprint = Key.from_password(
                password, salt=bytes.fromhex(recorded.salt), params=params
            ).fingerprint
            if fingerprint != recorded.fingerprint:
                raise self._key_refused(recorded, "a password that derives another key")
            return
        if recorded.kind == "key file" and key_file is not None:
            path = os.path.abspath(os.fspath(key_file))
            if not current_fs().exists(path):
                raise self._key_refused(recorded, f"no key file at {path} (a new key would be made)")
            fingerprint = read_key_file(path).fingerprint
            if fingerprint != recorded.fingerprint:
                raise self._key_refused(recorded, f"the key file {path} (fingerprint {fingerprint})")
            return
        given = "password=" if password is not None else f"key_file={str(key_file)!r}"
        raise self._key_refused(recorded, given)

    def _key_refused(self, recorded: StoreKey, given: str) -> WrongKeyError:
        return WrongKeyError(
            f"the model store {self.root} seals its versions with {recorded.describe()} "
            f"({self._settings_path()}), but this save has {given}: its readers could not open what it "
            f"publishes. Copy the store's key to this machine (`persistkit keygen` printed its fingerprint) "
            f"and pass it as key_file= (or the store's password=), then save again. Nothing was saved.",
            path=self._settings_path(),
            field="key",
        )

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
    ) -> Version:
        """Save a new version (``bundle_kw`` goes to ``save_bundle``) with its config; return it.

        In a bucket: uploaded create-only under the next free name, recorded, then made the latest by
        compare-and-swap (``bucket.BucketSpace``); in a directory: under the store's lock.
        """
        from persistkit.bundle import save_bundle
        from persistkit.format.codecs.json import to_jsonable

        group = self.group(symbol, agent, timeframe)
        meta = dict(metadata or {})
        meta.setdefault("store", {"symbol": symbol, "agent": agent, "timeframe": timeframe})
        config_doc = to_jsonable(config if config is not None else meta.get("config", {}), "config")
        encrypt = bool(bundle_kw.get("encrypt", True))
        with self.space.exclusive():
            if encrypt:
                self._seal_with_store_key(bundle_kw)
            elif self.encrypted:
                raise ValueError(
                    f"the model store {self.root} saves encrypted bundles ({self._settings_path()}), so a plain "
                    "version would be refused as a forged one when loaded; drop encrypt=False, or use another "
                    "store for unencrypted models."
                )

            def build(path: str) -> object:
                return save_bundle(path, models, meta, config=config, **bundle_kw)

            return self.space.publish(group, build, when=when, config=config_doc, encrypted=encrypt)

    # -- reading --

    def versions(self, symbol: str, agent: str, timeframe: str) -> list[Version]:
        """Every version, oldest first."""
        return self.space.versions(self.group(symbol, agent, timeframe))

    def latest(self, symbol: str, agent: str, timeframe: str) -> Version | None:
        """The newest version, or None (in a bucket: the one the group's latest pointer names)."""
        return self.space.latest(self.group(symbol, agent, timeframe))

    def fetch(self, version: Version | PathLike) -> str:
        """A local path holding ``version``'s bytes: the file itself, or a checked copy in the cache."""
        return self.space.fetch(self.space.version_of(version))

    def load_latest(
        self, symbol: str, agent: str, timeframe: str, *, fallback: bool = False, **load_kw: Any
    ) -> Bundle:
        """Load the newest version. With ``fallback``, a damaged newest version is skipped for the next older
        one, with a warning on the ``persistkit`` logger naming what was skipped and why; wrong keys still raise.
        """
        from persistkit.bundle import load_bundle

        group = self.group(symbol, agent, timeframe)
        newest = self.space.latest(group)
        if newest is None:
            where = self.space.location(group)
            raise NoVersionError(
                f"no bundle versions under {where} (symbol={symbol!r}, agent={agent!r}, "
                f"timeframe={timeframe!r}); save one with ModelStore.save(...) first, or check the names.",
                path=where,
            )
        candidates = [newest]
        if fallback:
            candidates += [v for v in reversed(self.space.versions(group)) if v != newest]
        load_kw = self.load_options(**load_kw)
        last: PersistkitError | None = None
        for version in candidates:
            try:
                local = self._fetch_newest(version, group) if version is newest else self.space.fetch(version)
                return load_bundle(local, **load_kw)
            except (IntegrityError, FormatError) as err:
                if not fallback:
                    raise
                log.warning("skipping damaged bundle %s (%s); trying the previous version", version, err)
                last = err
        assert last is not None
        raise last

    def _fetch_newest(self, newest: Version, group: str) -> str:
        try:
            return self.space.fetch(newest)
        except PersistIOError as err:
            # pruned by another machine between our reading the pointer and the record: read it again
            import errno

            again = self.space.latest(group) if err.errno == errno.ENOENT else None
            if again is None or again == newest:
                raise
            return self.space.fetch(again)

    def load(self, alias_or_version: str | Version | PathLike, **load_kw: Any) -> Bundle:
        """Load a version by alias (``"production"``), Version, path or URL."""
        from persistkit.bundle import load_bundle

        target: object = alias_or_version
        if isinstance(alias_or_version, str) and is_alias(alias_or_version):
            current = self.aliases().get(alias_or_version)
            if current is not None:
                target = current
            elif self.space.remote or not current_fs().exists(os.path.abspath(alias_or_version)):
                known = ", ".join(map(repr, sorted(self.aliases()))) or "none"
                aliases = self.space.location(ALIASES)
                raise NotFoundError(
                    f"no alias {alias_or_version!r} in {aliases} (aliases: {known}); tag a version first "
                    "with ModelStore.tag(version, alias), or pass a version's path or URL.",
                    path=aliases,
                    field=alias_or_version,
                )
        if self.space.remote:
            local = self.space.fetch(self.space.version_of(target))
        elif isinstance(target, str | os.PathLike):
            local = os.fspath(target)  # a local store loads any bundle path, in the store or not
        else:
            raise TypeError(f"load() takes an alias, a Version or a path, not {type(target).__name__}")
        return load_bundle(local, **self.load_options(**load_kw))

    # -- aliases --

    def tag(self, version: Version | PathLike, alias: str, *, when: dt.datetime | None = None) -> None:
        """Point ``alias`` at ``version`` (a version of this store); the change is logged in its history.

        In a bucket the index is replaced by compare-and-swap, so two machines moving aliases at once
        never lose a move; if a concurrent ``prune`` removed the version while the alias was being
        moved, the move is undone and NotFoundError raised, so an alias never stays on a missing version.
        """
        if not is_alias(alias):
            raise ValueError(f"alias {alias!r}: use letters, digits, '.', '_' and '-'")
        target = self.space.version_of(version)
        with self.space.exclusive():
            if not self.space.published(target):
                raise self._missing(target, alias)
            before: dict[str, str] = {}

            def point(events: AliasEvents) -> bool:
                before.clear()
                before.update({e["alias"]: e["path"] for e in events if e["until"] is None})
                return move_alias(events, alias, target.key, when)

            if not self.space.change_aliases(point):
                return  # already there
            if not self.space.published(target):  # pruned meanwhile: never leave the alias dangling
                self._step_back(alias, target.key, before.get(alias))
                raise self._missing(target, alias)

    def _missing(self, version: Version, alias: str) -> NotFoundError:
        if not self.space.remote:
            return NotFoundError(f"cannot tag {version} as {alias!r}: no such bundle", path=version.location,
                                 field=alias)  # fmt: skip
        record = version.location + ".json"
        return NotFoundError(
            f"cannot tag {version} as {alias!r}: no such published version (no record {record}). Check the "
            "URL with versions(), or save the model first.",
            path=version.location,
            field=alias,
        )

    def _step_back(self, alias: str, key: str, previous: str | None) -> None:
        """Undo a move of ``alias`` onto the pruned ``key``: back to ``previous`` if that still exists.

        Moving back is a move like any other, so it is checked the same way: if ``previous`` was
        pruned too meanwhile, the alias is closed (pointing nowhere) rather than left on it.
        """

        def back(events: AliasEvents) -> bool:
            current = [e for e in events if e["alias"] == alias and e["until"] is None]
            if not current or current[0]["path"] != key:
                return False  # moved again by someone else: theirs stands
            if previous is None:
                events.remove(current[0])
                return True
            return move_alias(events, alias, previous, None)

        def close(events: AliasEvents) -> bool:
            current = [e for e in events if e["alias"] == alias and e["until"] is None]
            if not current or current[0]["path"] != previous:
                return False
            current[0]["until"] = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
            return True

        if self.space.change_aliases(back) and previous is not None:
            earlier = self._by_key(previous)
            if not self.space.published(earlier):
                log.warning("alias %r: %s was pruned too; the alias now points nowhere", alias, earlier)
                self.space.change_aliases(close)

    def _by_key(self, key: str) -> Version:
        parsed = parse_model_version(key)
        assert parsed is not None, key  # alias indexes are checked when read
        return self.space.version(*parsed)

    def _current_aliases(self) -> dict[str, Version]:
        return {e["alias"]: self._by_key(e["path"]) for e in self.space.read_aliases() if e["until"] is None}

    def aliases(self) -> dict[str, Version]:
        """Each alias and the version it points at now."""
        return self._current_aliases()

    def history(self, alias: str | None = None) -> list[AliasEvent]:
        """Every assignment of ``alias`` (or of all aliases), oldest first; paths are locations."""
        return [
            AliasEvent(e["alias"], self.space.location(e["path"]), e["since"], e["until"])
            for e in self.space.read_aliases()
            if alias is None or e["alias"] == alias
        ]

    def live_at(self, alias: str, when: dt.datetime) -> Version | None:
        """The version ``alias`` pointed at, at time ``when``."""
        event = live_event(self.history(alias), when)
        return None if event is None else self.space.version_of(event.path)

    # -- retention --

    def _plan(self, keep: int | None, policy: Policy | None, grace: dt.timedelta) -> list[Decision]:
        chosen = retention_policy(keep, policy)
        pins: dict[str, list[str]] = {}
        for alias, version in self._current_aliases().items():
            pins.setdefault(version.key, []).append(f"alias {alias!r} points at it")
        required = self.load_options().get("require_encryption", False)
        return self.space.plan(chosen, pins, grace, dt.datetime.now(dt.UTC), required)

    def prune_plan(
        self,
        keep: int | None = None,
        *,
        policy: Policy | None = None,
        orphan_grace: dt.timedelta = ORPHAN_GRACE,
    ) -> list[Decision]:
        """What ``prune`` would do, with reasons: one ``Decision`` per version, newest first per group.

        The policy is ``KeepLast(keep)`` unless ``policy=`` (any ``persistkit.policy.retention``
        policy) is given. Whatever it says, ``decide`` keeps the newest version, and these are pinned:
        every version an alias points at now; in a directory, the newest version that is intact
        (``check_intact``: no key needed); in a bucket, the one the latest pointer names. A bucket plan
        also has the orphans a killed publisher left (objects never recorded, uploads never completed),
        removed once older than ``orphan_grace``. Names shaped like versions that are not (an
        impossible date) are kept, and say so.
        """
        with self.space.exclusive():
            return self._plan(keep, policy, orphan_grace)

    def prune(
        self,
        keep: int | None = None,
        *,
        dry_run: bool = False,
        policy: Policy | None = None,
        orphan_grace: dt.timedelta = ORPHAN_GRACE,
    ) -> list[Version]:
        """Remove what ``prune_plan`` does not keep (per symbol/agent/timeframe); return it, oldest first.

        ``dry_run`` removes nothing, returns what would go and logs every decision with its reasons on
        the ``persistkit`` logger.
        """
        with self.space.exclusive():
            decisions = self._plan(keep, policy, orphan_grace)
            if dry_run:
                for decision in decisions:
                    log.info("prune (dry run): %s", decision.describe())
                victims = [self._victim(d.item.id) for d in decisions if not d.keep]
                return sorted(victims, key=lambda v: (v.group, v.when, v.location))
            return self.space.remove(decisions)

    def _victim(self, location: str) -> Version:
        base, _, upload = location.partition("?uploadId=")
        version = self.space.version_of(base)
        return Version(version.group, version.name, location, version.remote) if upload else version

    def __repr__(self) -> str:
        return f"ModelStore({self.root!r})"
