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
import errno
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persistkit.errors import (
    FormatError,
    IntegrityError,
    NotFoundError,
    NoVersionError,
    PersistIOError,
    PersistkitError,
    UnsafeArchiveError,
)
from persistkit.io import DirectoryLock, atomic_write, current_fs
from persistkit.io.fs import PathLike, io_error
from persistkit.io.remote import Uploaded, is_url
from persistkit.naming import Stamped, allocate, next_candidate
from persistkit.policy.retention import Decision, Item, KeepLast, Policy, decide
from persistkit.progress import transfer

__all__ = ["AliasEvent", "ModelStore", "RemoteModelStore", "safe_component"]

if TYPE_CHECKING:  # the bundle package loads only when a version is read
    from persistkit.bundle import Bundle

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

    def __new__(cls, root: PathLike = "models", **kwargs: Any) -> ModelStore:
        # ModelStore("s3://bucket/models"): the same API over object storage (RemoteModelStore).
        from persistkit.io.remote import is_url

        if cls is ModelStore and is_url(root):
            return super().__new__(RemoteModelStore)
        return super().__new__(cls)

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

        directory = self.directory(symbol, agent, timeframe)
        meta, config_doc = _version_docs(metadata, config, symbol, agent, timeframe)
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

    def load_options(self, **load_kw: Any) -> dict[str, Any]:
        """The ``load_bundle`` keywords this store loads its versions with (its key, its encryption rule)."""
        return self._load_kw(dict(load_kw))

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
    ) -> Bundle:
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

    def load(self, alias_or_path: str | PathLike, **load_kw: Any) -> Bundle:
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
            data = fs.read_bytes(path)
        except OSError as err:
            raise IntegrityError(
                f"{path}: the alias index is unreadable ({err}). Restore it from a backup, or delete it to "
                "forget all aliases.",
                path=path,
            ) from err
        return parse_alias_index(data, path)

    def _write_index(self, events: Sequence[Mapping[str, Any]]) -> None:
        atomic_write(self._aliases_path(), alias_index_bytes(events))

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
        with self._lock():
            events = self._read_index()
            if move_alias(events, alias, rel, when):
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
        event = live_event(self.history(alias), when)
        return None if event is None else Path(event.path)

    # -- retention --

    def prune_plan(self, keep: int | None = None, *, policy: Policy | None = None) -> list[Decision]:
        """What ``prune`` would do, with reasons: one ``Decision`` per version, newest first per group.

        The policy is ``KeepLast(keep)`` unless ``policy=`` (any ``persistkit.policy.retention``
        policy) is given. Whatever it says, ``decide`` keeps the newest version, and these are pinned:
        the newest version that is intact (``check_intact``: the manifest and every member's bytes
        check out; no key needed) and every version an alias points at now.
        """
        with self._lock():
            return self._plan(_policy(keep, policy))

    def _plan(self, policy: Policy) -> list[Decision]:
        from persistkit.bundle import check_intact

        pins: dict[str, list[str]] = {}
        for alias, target in self.aliases().items():
            pins.setdefault(os.path.abspath(target), []).append(f"alias {alias!r} points at it")
        required = self._load_kw({}).get("require_encryption", False)
        decisions: list[Decision] = []
        for directory in self._groups():
            found = self._sorted_versions(directory)
            intact = None
            for path in reversed(found):
                try:
                    check_intact(path, require_encryption=required)
                except PersistkitError:
                    continue
                intact = str(path)
                break
            items = []
            for path in found:
                why = list(pins.get(str(path), []))
                if str(path) == intact:
                    why.append("the newest version that is intact")
                items.append(Item(str(path), _version_time(path.name), "; ".join(why)))
            decisions += decide(policy, items)
        return decisions

    def prune(
        self, keep: int | None = None, *, dry_run: bool = False, policy: Policy | None = None
    ) -> list[Path]:
        """Delete the versions ``prune_plan`` does not keep (per symbol/agent/timeframe); return them.

        ``dry_run`` deletes nothing, returns what would go and logs every decision with its reasons on
        the ``persistkit`` logger (``prune_plan`` returns them).
        """
        fs = current_fs()
        with self._lock():
            decisions = self._plan(_policy(keep, policy))
            victims = sorted(
                (Path(d.item.id) for d in decisions if not d.keep),
                key=lambda p: (str(p.parent), VERSIONS.sort_key(p.name)),
            )
            if dry_run:
                for decision in decisions:
                    log.info("prune (dry run): %s", decision.describe())
                return victims
            for path in victims:
                for victim in (str(path), self.config_path(path), str(path) + ".key"):
                    try:
                        fs.unlink(victim)
                    except FileNotFoundError:
                        pass
                    except OSError as err:
                        raise io_error("delete", victim, err) from err
            for directory in sorted({str(p.parent) for p in victims}):
                try:
                    fs.fsync_dir(directory)
                except OSError as err:
                    raise io_error("fsync", directory, err) from err
        return victims


def _policy(keep: int | None, policy: Policy | None) -> Policy:
    if policy is not None:
        if keep is not None:
            raise ValueError("pass keep= or policy=, not both (KeepLast(keep) is the policy keep= means)")
        return policy
    if type(keep) is not int or keep < 0:
        raise ValueError("keep must be a non-negative int (or pass policy=)")
    return KeepLast(keep)


def _version_time(name: str) -> dt.datetime:
    when = VERSIONS.time(name)
    assert when is not None, name  # only parsed version names get here
    return when


# -- object storage ----------------------------------------------------------------------

LATEST = "LATEST.json"  # per group: {"name", "sha256", "size"} of the newest published version
RECORD_SUFFIX = ".json"  # <version>.models.json: the version record; a version exists once it does
VERSION_RECORD = "persistkit.remote-version"  # its format
_MAX_NAME_ATTEMPTS = 1000
ORPHAN_GRACE = dt.timedelta(days=1)  # unrecorded objects younger than this may belong to a live publisher
# A publish lists the names stamped since this long ago: enough for any clock the writers share,
# few enough that the listing is one request whatever the group's history (see _upload_new).
NAME_WINDOW = dt.timedelta(hours=1)


def default_cache_dir(url: str) -> str:
    """``$XDG_CACHE_HOME/persistkit/<protocol>/<bucket>/<prefix>`` (``~/.cache`` without XDG)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    protocol, _, rest = url.partition("://")
    return os.path.join(base, "persistkit", protocol, *[p for p in rest.split("/") if p])


class RemoteModelStore(ModelStore):
    """A ModelStore at an fsspec URL (``ModelStore("s3://bucket/models")`` returns one).

    Same layout (``SYMBOL/AGENT/TIMEFRAME/<stamp>.models``) and the same
    calls; paths are URLs (``str``). Publishing a version:

    1. the bundle is written and encrypted locally (in ``cache_dir``), its sha256 taken;
    2. it is uploaded create-only under the next free name (If-None-Match: *):
       if another writer took that name first, the next one is tried, so names
       are unique across machines and sort after every name seen;
    3. its record ``<version>.models.json`` (sha256, size, config) is created:
       from then on ``versions()`` lists it;
    4. the group's ``LATEST.json`` pointer is moved to it with compare-and-swap
       (If-Match), unless a later version is already there.

    Steps 2 to 4 are 3 requests beyond the upload: one LIST names the free
    name and gives the pointer's etag (``_upload_new``). A publisher killed
    before 3 leaves an unlisted object (never a partial one: an upload is
    invisible until complete), which ``prune`` removes once it is older than
    ``orphan_grace``; killed before 4, ``latest()`` still names the previous
    version, which exists. Every download is checked against the recorded
    sha256 before it is parsed or cached. Aliases live in ``aliases.json``
    (the local format), replaced with compare-and-swap.

    Keys never leave this machine: bundles are encrypted before upload with
    ``key_file`` (default ``<cache_dir>/store.key``, created on first save;
    copy it to the other machines) or ``password=``. The bucket is not
    trusted: an encrypted bundle is authenticated by its key when loaded.
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
        from persistkit.io.remote import remote_store

        url = os.fspath(root).rstrip("/")
        self.root = url
        self.lock_timeout = lock_timeout
        self.remote = remote_store(url, storage_options=storage_options)
        self.progress = progress  # None: a bar for large transfers on a terminal (persistkit.progress)
        self._encrypted_seen = False  # once the store says it is encrypted, it always is: asked once
        self.cache_dir = (
            os.path.abspath(os.fspath(cache_dir)) if cache_dir is not None else default_cache_dir(url)
        )
        self.key_file = (
            os.path.abspath(os.fspath(key_file))
            if key_file is not None
            else os.path.join(self.cache_dir, "store.key")
        )

    # -- layout --

    def group(self, symbol: str, agent: str, timeframe: str) -> str:
        """The key prefix of one symbol/agent/timeframe: ``BTC-USDT/ppo/1h``."""
        return "/".join(
            (
                safe_component(symbol, "symbol"),
                safe_component(agent, "agent"),
                safe_component(timeframe, "timeframe"),
            )
        )

    def directory(self, symbol: str, agent: str, timeframe: str) -> str:
        return self.remote.url_of(self.group(symbol, agent, timeframe))

    def _cache_path(self, key: str) -> str:
        return os.path.join(self.cache_dir, *key.split("/"))

    # -- store settings --

    @property
    def encrypted(self) -> bool:
        if self._encrypted_seen:
            return True
        found = self.remote.get_or_none(STORE_FILE)
        if found is None:
            return False
        try:
            doc = json.loads(found.data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as err:
            url = self.remote.url_of(STORE_FILE)
            raise IntegrityError(
                f"{url}: the store settings are unreadable ({err}). Restore the object from a backup; if this "
                'store saves encrypted bundles, it holds {"format": "persistkit.model-store", "version": 1, '
                '"encrypted": true}.',
                path=url,
            ) from err
        self._encrypted_seen = isinstance(doc, dict) and doc.get("encrypted") is True
        return self._encrypted_seen

    def _store_path(self) -> str:
        return self.remote.url_of(STORE_FILE)

    # -- writing --

    def save(  # type: ignore[override]
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
    ) -> str:
        """Publish a new version (see the class docstring); return its URL."""
        from persistkit.bundle import save_bundle

        group = self.group(symbol, agent, timeframe)
        meta, config_doc = _version_docs(metadata, config, symbol, agent, timeframe)
        encrypt = bundle_kw.get("encrypt", True)
        if encrypt and "password" not in bundle_kw and "key_file" not in bundle_kw:
            bundle_kw["key_file"] = self.key_file
        if encrypt:
            if not self.encrypted:  # create-only: the first writer sets it, and nobody can unset it by racing
                doc = {"format": "persistkit.model-store", "version": 1, "encrypted": True}
                self.remote.put_new(STORE_FILE, json.dumps(doc, indent=1).encode() + b"\n")
                self._encrypted_seen = True
        elif self.encrypted:
            raise ValueError(
                f"the model store {self.root} saves encrypted bundles ({self._store_path()}), so a plain "
                "version would be refused as a forged one when loaded; drop encrypt=False, or use another "
                "store for unencrypted models."
            )
        local_dir = self._cache_path(group)
        staging = self._staging_path()
        fs = current_fs()
        for directory in (local_dir, os.path.dirname(staging)):
            try:
                fs.makedirs(directory)
            except OSError as err:
                raise io_error("create directory", directory, err) from err
        try:
            save_bundle(staging, models, meta, config=config, **bundle_kw)
            name, uploaded, pointer_etag, newest = self._upload_new(group, staging, when)
            digest, size = uploaded.sha256, uploaded.size
            record = {"format": VERSION_RECORD, "version": 1, "name": name, "sha256": digest,
                      "size": size, "encrypted": bool(encrypt), "config": config_doc}  # fmt: skip
            record_key = f"{group}/{name}{RECORD_SUFFIX}"
            body = json.dumps(record, indent=1).encode()
            # "taken" after a retry whose first attempt got through is our own record: fine
            if not self.remote.put_new(record_key, body) and self.remote.get(record_key).data != body:
                raise IntegrityError(
                    f"{self.remote.url_of(record_key)}: a record already exists for a name this writer just "
                    "created; another tool writes into this store. Check the bucket.",
                    path=self.remote.url_of(record_key),
                )
            self._advance_latest(group, name, digest, size, pointer_etag, newest=newest)
            try:  # the uploaded bytes are the cache's first entry
                fs.replace(staging, os.path.join(local_dir, name))
            except OSError as err:
                log.warning("could not keep %s in the cache: %s", name, err)
        finally:
            if fs.exists(staging):
                try:
                    fs.unlink(staging)
                except OSError as err:
                    log.warning("could not remove the staging file %s: %s", staging, err)
        return self.remote.url_of(f"{group}/{name}")

    def _staging_path(self) -> str:
        """``<cache_dir>/.staging/<pid>-<random>.models``; files of publishers that died are removed first.

        Not a persistkit temp name on purpose: ``cleanup_stale_temps`` would take a temp of this process
        that no atomic write owns for debris, while another thread is uploading it.
        """
        import secrets

        from persistkit.io.atomic import pid_alive

        directory = os.path.join(self.cache_dir, ".staging")
        fs = current_fs()
        if fs.is_dir(directory):
            for name in fs.listdir(directory):
                pid = name.split("-", 1)[0]
                if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
                    try:
                        fs.unlink(os.path.join(directory, name))
                    except OSError as err:
                        log.warning("could not remove the stale staging file %s: %s", name, err)
        return os.path.join(directory, f"{os.getpid()}-{secrets.token_hex(8)}{SUFFIX}")

    def _upload_new(
        self, group: str, staging: str, when: dt.datetime | None
    ) -> tuple[str, Uploaded, str | None, bool]:
        """Upload ``staging`` create-only under the next free version name of ``group``.

        One LIST names the candidates: the group's objects whose names sort after the start of
        ``NAME_WINDOW`` ago (or the backfilled second), which are all that can collide with a name
        stamped now, and ``LATEST.json`` (it sorts after every stamp) with its etag. A name stamped
        now sorts after every name listed, hence after every name in the group, the pointer's
        included: the pointer can then be swapped on the listed etag without being read.

        Returns the name, what was uploaded, the pointer's etag as listed (None: no pointer yet) and
        whether the name is known to sort after the pointer's.
        """
        now = dt.datetime.now(dt.UTC)
        after = VERSIONS.stamp(when if when is not None else now - NAME_WINDOW)
        listed = self.remote.list_objects(group, start_after=after)
        taken = [p for p in (VERSIONS.parse(o.name) for o in listed) if p is not None]
        pointer_etag = next((o.etag for o in listed if o.name == LATEST), None)
        candidate = next_candidate(VERSIONS, taken, when)
        # every name not listed sorts before ``after``: above the listed ones is above them all
        newest = not taken or candidate > max(taken)
        try:
            total = current_fs().stat(staging).st_size
        except OSError as err:
            raise io_error("read for upload", staging, err) from err
        with transfer(f"uploading {group}", total, show=self.progress) as advance:
            for _ in range(_MAX_NAME_ATTEMPTS):
                name = VERSIONS.name(*candidate)
                uploaded = self.remote.upload_new(f"{group}/{name}", staging, progress=advance)
                if uploaded is not None:
                    return name, uploaded, pointer_etag, newest
                candidate = (candidate[0], candidate[1] + 1)  # another writer took it: the next one
        raise PersistkitError(
            f"{self.remote.url_of(group)}: {_MAX_NAME_ATTEMPTS} version names in a row were taken by other "
            "writers; something else is writing there. Check the bucket.",
            path=self.remote.url_of(group),
        )

    def _read_latest(self, group: str) -> dict[str, Any] | None:
        found = self.remote.get_or_none(f"{group}/{LATEST}")
        return None if found is None else self._parse_pointer(group, found.data)

    def _parse_pointer(self, group: str, data: bytes) -> dict[str, Any]:
        url = self.remote.url_of(f"{group}/{LATEST}")
        try:
            doc = json.loads(data.decode("utf-8"))
            if not (
                isinstance(doc, dict)
                and isinstance(doc.get("name"), str)
                and isinstance(doc.get("sha256"), str)
            ):
                raise ValueError("name and sha256 are missing")
        except (UnicodeDecodeError, ValueError) as err:
            raise IntegrityError(
                f"{url}: the latest pointer is unreadable ({err}). Delete it: the next save writes a new one, "
                "and versions() still lists every version.",
                path=url,
            ) from err
        return doc

    def _advance_latest(
        self, group: str, name: str, digest: str, size: int, etag: str | None, *, newest: bool
    ) -> None:
        """Point ``LATEST.json`` at ``name`` unless it already names a later version (compare-and-swap).

        ``newest``: ``name`` sorts after the pointer as it was when ``etag`` was listed, so the first
        swap goes out on that etag without reading the pointer; if the pointer moved since, it is read
        and compared before every further attempt.
        """
        body = json.dumps({"format": "persistkit.latest", "version": 1, "name": name, "sha256": digest,
                           "size": size}).encode()  # fmt: skip
        key = f"{group}/{LATEST}"
        for attempt in range(_MAX_NAME_ATTEMPTS):
            if attempt or not newest:
                found = self.remote.get_or_none(key)
                etag = None if found is None else found.etag
                if found is not None:
                    current = self._parse_pointer(group, found.data)
                    parsed = VERSIONS.parse(current["name"])
                    if parsed is not None and parsed >= VERSIONS.sort_key(name):
                        return  # a later version is already published: ours stays listed in versions()
            if self.remote.swap(key, body, etag) is not None:
                return
            # another publisher moved the pointer since we read it: read it again
        url = self.remote.url_of(key)
        raise PersistkitError(
            f"{url}: the latest pointer changed under every one of {_MAX_NAME_ATTEMPTS} compare-and-swap "
            f"attempts; the version {name} is saved and listed, but the pointer was not moved to it. Check "
            "what else writes there, then save again.",
            path=url,
        )

    # -- reading --

    def _records(self, group: str) -> list[str]:
        """Names of the published versions of ``group`` (those with a record), oldest first."""
        names = self.remote.list(group)
        published = [n[: -len(RECORD_SUFFIX)] for n in names if n.endswith(SUFFIX + RECORD_SUFFIX)]
        return sorted((n for n in published if VERSIONS.parse(n) is not None), key=VERSIONS.sort_key)

    def _record(self, group: str, name: str) -> dict[str, Any]:
        from persistkit.io.objects import parse_record

        key = f"{group}/{name}{RECORD_SUFFIX}"
        return parse_record(self.remote.url_of(key), self.remote.get(key).data, (VERSION_RECORD,))

    def versions(self, symbol: str, agent: str, timeframe: str) -> list[str]:  # type: ignore[override]
        group = self.group(symbol, agent, timeframe)
        return [self.remote.url_of(f"{group}/{n}") for n in self._records(group)]

    def latest(self, symbol: str, agent: str, timeframe: str) -> str | None:  # type: ignore[override]
        """The version the group's latest pointer names (one GET), or None."""
        group = self.group(symbol, agent, timeframe)
        pointer = self._read_latest(group)
        if pointer is None:
            found = self._records(group)  # versions saved, pointer not written yet (publisher died)
            return self.remote.url_of(f"{group}/{found[-1]}") if found else None
        return self.remote.url_of(f"{group}/{pointer['name']}")

    def fetch(self, url_or_name: str) -> str:
        """The local cached copy of a version (downloaded and sha256-checked if needed); its path."""
        from persistkit.io.remote import sha256_file

        group, name = self._version_key(url_or_name)
        key = f"{group}/{name}"
        record = self._record(group, name)
        local = self._cache_path(key)
        fs = current_fs()
        if fs.exists(local):
            if sha256_file(local) == (record["sha256"], record["size"]):
                return local
            log.warning("cached copy %s does not match its record; downloading it again", local)
        try:
            fs.makedirs(os.path.dirname(local))
        except OSError as err:
            raise io_error("create directory", os.path.dirname(local), err) from err
        with transfer(f"downloading {key}", record["size"], show=self.progress) as advance:
            # not fsynced: a cached copy is checked against its record's sha256 before every use, so one
            # torn by a power loss is downloaded again, never loaded
            self.remote.download_verified(
                key, local, record["sha256"], record["size"], progress=advance, durable=False
            )
        return local

    def _load_kw(self, load_kw: dict[str, Any]) -> dict[str, Any]:
        load_kw = super()._load_kw(load_kw)
        if "password" not in load_kw and "key_file" not in load_kw and os.path.exists(self.key_file):
            load_kw["key_file"] = self.key_file
        return load_kw

    def load_latest(
        self, symbol: str, agent: str, timeframe: str, *, fallback: bool = False, **load_kw: Any
    ) -> Bundle:
        from persistkit.bundle import load_bundle

        group = self.group(symbol, agent, timeframe)
        newest = self.latest(symbol, agent, timeframe)
        if newest is None:
            raise NoVersionError(
                f"no bundle versions under {self.remote.url_of(group)} (symbol={symbol!r}, agent={agent!r}, "
                f"timeframe={timeframe!r}); save one with ModelStore.save(...) first, or check the names.",
                path=self.remote.url_of(group),
            )
        candidates = [newest]
        if fallback:
            candidates += [u for u in reversed(self.versions(symbol, agent, timeframe)) if u != newest]
        load_kw = self._load_kw(load_kw)
        last: PersistkitError | None = None
        for url in candidates:
            try:
                if url is newest:
                    local = self._fetch_newest(newest, symbol, agent, timeframe)
                else:
                    local = self.fetch(url)
                return load_bundle(local, **load_kw)
            except (IntegrityError, FormatError) as err:
                if not fallback:
                    raise
                log.warning("skipping damaged bundle %s (%s); trying the previous version", url, err)
                last = err
        assert last is not None
        raise last

    def _fetch_newest(self, newest: str, symbol: str, agent: str, timeframe: str) -> str:
        try:
            return self.fetch(newest)
        except PersistIOError as err:
            # pruned by another machine between our reading the pointer and the record: read it again
            again = self.latest(symbol, agent, timeframe) if err.errno == errno.ENOENT else None
            if again is None or again == newest:
                raise
            return self.fetch(again)

    def load(self, alias_or_path: str | PathLike, **load_kw: Any) -> Bundle:
        """Load a version by alias (``"production"``) or URL."""
        from persistkit.bundle import load_bundle

        target = os.fspath(alias_or_path)
        if _ALIAS.match(target):
            current = self.aliases().get(target)
            if current is None:
                known = ", ".join(map(repr, sorted(self.aliases()))) or "none"
                raise NotFoundError(
                    f"no alias {target!r} in {self._aliases_path()} (aliases: {known}); tag a version first "
                    "with ModelStore.tag(url, alias), or pass a version URL.",
                    path=self._aliases_path(),
                    field=target,
                )
            target = current
        return load_bundle(self.fetch(target), **self._load_kw(load_kw))

    # -- aliases: <root>/aliases.json, the local format, replaced by compare-and-swap --

    def _aliases_path(self) -> str:
        return self.remote.url_of(ALIASES)

    def _version_key(self, url_or_name: str) -> tuple[str, str]:
        """(group, name) of a version given by URL or by key relative to the root."""
        prefix = self.remote.url + "/"
        key = url_or_name[len(prefix) :] if url_or_name.startswith(prefix) else url_or_name
        group, _, name = key.rpartition("/")
        if VERSIONS.parse(name) is None or not group or is_url(key):
            raise ValueError(f"{url_or_name!r} is not a version of the store {self.root}")
        return group, name

    def _read_aliases(self) -> tuple[list[dict[str, Any]], str | None]:
        found = self.remote.get_or_none(ALIASES)
        if found is None:
            return [], None
        return parse_alias_index(found.data, self._aliases_path()), found.etag

    def _read_index(self) -> list[dict[str, Any]]:
        return self._read_aliases()[0]

    def _swap_aliases(self, change: Callable[[list[dict[str, Any]]], bool]) -> bool:
        """Apply ``change`` to the index and write it back with If-Match; again on a lost race.

        False when ``change`` found nothing to change.
        """
        for _ in range(_MAX_NAME_ATTEMPTS):
            events, etag = self._read_aliases()
            if not change(events):
                return False
            if self.remote.swap(ALIASES, alias_index_bytes(events), etag) is not None:
                return True
        url = self._aliases_path()
        raise PersistkitError(
            f"{url}: the alias index changed under every one of {_MAX_NAME_ATTEMPTS} compare-and-swap "
            "attempts; check what else writes there, then tag again.",
            path=url,
        )

    def tag(self, path: PathLike, alias: str, *, when: dt.datetime | None = None) -> None:
        """Point ``alias`` at the version ``path`` (its URL); the change is logged in the alias history.

        The index is replaced with compare-and-swap, so two machines moving aliases at once never
        lose a move. The version must be published (its record exists); if a concurrent ``prune``
        removed it while the alias was being moved, the move is undone and NotFoundError raised, so
        an alias never stays on a missing version.
        """
        if type(alias) is not str or not _ALIAS.match(alias):
            raise ValueError(f"alias {alias!r}: use letters, digits, '.', '_' and '-'")
        group, name = self._version_key(os.fspath(path))
        rel = f"{group}/{name}"
        record = f"{rel}{RECORD_SUFFIX}"

        def missing() -> NotFoundError:
            url = self.remote.url_of(rel)
            return NotFoundError(
                f"cannot tag {url} as {alias!r}: no such published version (no record "
                f"{self.remote.url_of(record)}). Check the URL with versions(), or save the model first.",
                path=url,
                field=alias,
            )

        if self.remote.get_or_none(record) is None:
            raise missing()
        before: dict[str, Any] = {}

        def point(events: list[dict[str, Any]]) -> bool:
            before.clear()
            before.update({e["alias"]: e["path"] for e in events if e["until"] is None})
            return move_alias(events, alias, rel, when)

        if not self._swap_aliases(point):
            return  # already there
        if self.remote.get_or_none(record) is None:  # pruned meanwhile: never leave the alias dangling
            self._step_back(alias, rel, before.get(alias))
            raise missing()

    def _step_back(self, alias: str, rel: str, previous: str | None) -> None:
        """Undo a move of ``alias`` onto the pruned ``rel``: back to ``previous`` if that still exists.

        Moving back is a move like any other, so it is checked the same way: if ``previous`` was
        pruned too meanwhile, the alias is closed (pointing nowhere) rather than left on it.
        """

        def back(events: list[dict[str, Any]]) -> bool:
            current = [e for e in events if e["alias"] == alias and e["until"] is None]
            if not current or current[0]["path"] != rel:
                return False  # moved again by someone else: theirs stands
            if previous is None:
                events.remove(current[0])
                return True
            return move_alias(events, alias, previous, None)

        def close(events: list[dict[str, Any]]) -> bool:
            current = [e for e in events if e["alias"] == alias and e["until"] is None]
            if not current or current[0]["path"] != previous:
                return False
            current[0]["until"] = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
            return True

        if (
            self._swap_aliases(back)
            and previous is not None
            and self.remote.get_or_none(previous + RECORD_SUFFIX) is None
        ):
            log.warning("alias %r: %s was pruned too; the alias now points nowhere", alias, previous)
            self._swap_aliases(close)

    def aliases(self) -> dict[str, str]:  # type: ignore[override]
        """Each alias and the URL of the version it points at now."""
        return {e["alias"]: self.remote.url_of(e["path"]) for e in self._read_index() if e["until"] is None}

    def history(self, alias: str | None = None) -> list[AliasEvent]:
        """Every assignment of ``alias`` (or of all aliases), oldest first; paths are URLs."""
        return [
            AliasEvent(e["alias"], self.remote.url_of(e["path"]), e["since"], e["until"])
            for e in self._read_index()
            if alias is None or e["alias"] == alias
        ]

    def live_at(self, alias: str, when: dt.datetime) -> str | None:  # type: ignore[override]
        """The URL of the version ``alias`` pointed at, at time ``when``."""
        event = live_event(self.history(alias), when)
        return None if event is None else event.path

    # -- retention --

    def _all_groups(self) -> list[str]:
        groups = []
        for symbol in self.remote.list_dirs(""):
            if symbol.startswith("."):
                continue
            for agent in self.remote.list_dirs(symbol):
                for timeframe in self.remote.list_dirs(f"{symbol}/{agent}"):
                    groups.append(f"{symbol}/{agent}/{timeframe}")
        return sorted(groups)

    def prune_plan(
        self,
        keep: int | None = None,
        *,
        policy: Policy | None = None,
        orphan_grace: dt.timedelta = ORPHAN_GRACE,
    ) -> list[Decision]:
        """What ``prune`` would do, with reasons: versions, orphans and abandoned uploads.

        Versions go through ``persistkit.policy.retention.decide`` (``KeepLast(keep)`` or ``policy``);
        the version the latest pointer names and every aliased version are pinned. Orphans, objects a
        publisher uploaded but never recorded (it died in between), and multipart uploads never
        completed are removed once older than ``orphan_grace``: a younger one may belong to a
        publisher that is about to record it.
        """
        return self._remote_plan(_policy(keep, policy), orphan_grace, dt.datetime.now(dt.UTC))

    def _remote_plan(self, policy: Policy, grace: dt.timedelta, now: dt.datetime) -> list[Decision]:
        pins: dict[str, list[str]] = {}
        for alias, url in self.aliases().items():
            pins.setdefault(url, []).append(f"alias {alias!r} points at it")
        decisions: list[Decision] = []
        for group in self._all_groups():
            listed = self.remote.list_objects(group)
            names = {o.name for o in listed}
            pointer = self._read_latest(group) if LATEST in names else None
            items = []
            for entry in sorted(listed, key=lambda o: o.name):
                if not entry.name.endswith(SUFFIX) or VERSIONS.parse(entry.name) is None:
                    continue
                url = self.remote.url_of(f"{group}/{entry.name}")
                if entry.name + RECORD_SUFFIX not in names:
                    decisions.append(_orphan(url, entry.modified, grace, now))
                    continue
                why = list(pins.get(url, []))
                if pointer is not None and pointer["name"] == entry.name:
                    why.append("the latest pointer names it")
                items.append(Item(url, _version_time(entry.name), "; ".join(why)))
            decisions += decide(policy, items, now)
        for upload in self.remote.list_uploads():
            # Decided here rather than by decide(): these are not versions (no policy counts them),
            # and decide() would always keep the newest one.
            decisions.append(_orphan(upload.url, upload.started, grace, now, upload=True))
        return decisions

    def prune(  # type: ignore[override]
        self,
        keep: int | None = None,
        *,
        dry_run: bool = False,
        policy: Policy | None = None,
        orphan_grace: dt.timedelta = ORPHAN_GRACE,
    ) -> list[str]:
        """Remove what ``prune_plan`` does not keep; return the URLs of the versions and orphans removed.

        Each version's record goes first (it stops being listed), then its data object. A version an
        alias was moved to meanwhile (``tag`` on another machine) gets its record back and stays.
        """
        decisions = self._remote_plan(_policy(keep, policy), orphan_grace, dt.datetime.now(dt.UTC))
        if dry_run:
            for decision in decisions:
                log.info("prune (dry run): %s", decision.describe())
            return _oldest_first([d.item.id for d in decisions if not d.keep])
        removed: list[str] = []
        records: dict[str, bytes] = {}
        for decision in decisions:
            if decision.keep:
                continue
            url = decision.item.id
            if "?uploadId=" in url:
                key, _, upload_id = url[len(self.remote.url) + 1 :].partition("?uploadId=")
                self.remote.abort_upload(key, upload_id)
            elif decision.reasons and decision.reasons[0].startswith("orphan"):
                self.remote.delete(url[len(self.remote.url) + 1 :])
            else:
                key = url[len(self.remote.url) + 1 :] + RECORD_SUFFIX
                found = self.remote.get_or_none(key)
                if found is None:
                    continue  # pruned by another machine meanwhile
                records[url] = found.data
                self.remote.delete(key)
                continue  # the data goes once no alias has moved onto it (below)
            removed.append(url)
        if records:
            aliased = set(self.aliases().values())
            for url, record in records.items():
                key = url[len(self.remote.url) + 1 :]
                if url in aliased:  # tagged while we pruned: the version stays
                    self.remote.put_new(key + RECORD_SUFFIX, record)
                    continue
                self.remote.delete(key)
                removed.append(url)
        return _oldest_first(removed)


def _oldest_first(urls: Sequence[str]) -> list[str]:
    def key(url: str) -> tuple[str, tuple[str, int]]:
        group, _, name = url.partition("?")[0].rpartition("/")
        return group, VERSIONS.parse(name) or ("", 0)

    return sorted(urls, key=key)


def _orphan(
    url: str, since: dt.datetime, grace: dt.timedelta, now: dt.datetime, *, upload: bool = False
) -> Decision:
    what = "an upload never completed" if upload else "an object without a record (its publisher died)"
    age = now - since
    item = Item(url, since)
    if age < grace:
        reason = f"orphan: {what}, but only {age} old (grace {grace}): its writer may still finish it"
        return Decision(item, True, (reason,))
    return Decision(item, False, (f"orphan: {what}, {age} old (grace {grace})",))


def _version_docs(
    metadata: Mapping[str, Any] | None, config: Any, symbol: str, agent: str, timeframe: str
) -> tuple[dict[str, Any], Any]:
    """A version's bundle metadata (naming its group) and its config document, local or remote."""
    from persistkit.format.codecs.json import to_jsonable

    meta = dict(metadata or {})
    meta.setdefault("store", {"symbol": symbol, "agent": agent, "timeframe": timeframe})
    return meta, to_jsonable(config if config is not None else meta.get("config", {}), "config")


# -- aliases, local or remote: one index format, one rule for moving an alias ----------------


def parse_alias_index(data: bytes, where: str) -> list[dict[str, Any]]:
    """The events of an alias index (``aliases.json``), checked; ``where`` names it in errors."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise IntegrityError(
            f"{where}: the alias index is unreadable ({err}). Restore it from a backup, or delete it to "
            "forget all aliases.",
            path=where,
        ) from err
    events = doc.get("events") if isinstance(doc, dict) else None
    if not isinstance(events, list) or not all(
        isinstance(e, dict) and {"alias", "path", "since", "until"} <= set(e) for e in events
    ):
        raise IntegrityError(f"{where}: the alias index is malformed; restore it from a backup.", path=where)
    return events


def alias_index_bytes(events: Sequence[Mapping[str, Any]]) -> bytes:
    doc = {"format": "persistkit.aliases", "version": 1, "events": list(events)}
    return json.dumps(doc, indent=1).encode() + b"\n"


def move_alias(events: list[dict[str, Any]], alias: str, path: str, when: dt.datetime | None) -> bool:
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
