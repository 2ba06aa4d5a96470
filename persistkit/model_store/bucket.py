"""``BucketSpace``: a model store's versions in an object store (``ModelStore("s3://bucket/models")``).

Same layout as a directory (``SYMBOL/AGENT/TIMEFRAME/<stamp>.models``). Publishing a version:

1. the bundle is written and encrypted locally (a staging file in ``cache_dir``), its sha256 taken;
2. it is uploaded create-only under the next free name (If-None-Match: *): if another writer took
   that name first, the next one is tried, so names are unique across machines and sort after every
   name seen;
3. its record ``<version>.models.json`` (sha256, size; the config only for a store that does not
   encrypt, since the bucket is not trusted) is created: from then on ``versions()`` lists it;
4. the group's ``LATEST.json`` pointer is moved to it with compare-and-swap (``swap_until``),
   unless a later version is already there.

Steps 2 to 4 are 3 requests beyond the upload: one LIST names the free name and gives the
pointer's etag (``_upload_new``). A publisher killed before 3 leaves an unlisted object (never a
partial one: an upload is invisible until complete), which ``prune`` removes once it is older than
``orphan_grace``; killed before 4, ``latest()`` still names the previous version, which exists.

Everything read back from the bucket goes through the one validating reader
(``persistkit.io.documents``): the pointer's ``name`` and an alias's ``path`` must be versions of
this store by ``persistkit.naming``'s rule before a cache path is built from them, records and
settings are size-capped and typed. Every download is checked against the recorded sha256 before it
is parsed or cached.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from persistkit.errors import IntegrityError, PersistkitError
from persistkit.io import current_fs
from persistkit.io.atomic import claim, sweep_dead_writers
from persistkit.io.documents import Fields, parse_document, read_document
from persistkit.io.fs import io_error
from persistkit.io.objects import RECORD_SUFFIX, Fetched, Record, Uploaded, parse_record, swap_until
from persistkit.io.remote import is_url, remote_store, sha256_file
from persistkit.model_store.space import (
    ALIAS_INDEX_LIMIT,
    ALIASES,
    ALIASES_ADVICE,
    SETTINGS_ADVICE,
    STORE_FILE,
    AliasEvents,
    StoreSettings,
    alias_index_bytes,
    orphan_decision,
    parse_alias_index,
    parse_settings,
    skipped_decision,
)
from persistkit.model_store.version import Version
from persistkit.naming import (
    MODEL_SUFFIX,
    MODEL_VERSIONS,
    component_problem,
    next_candidate,
    parse_model_version,
    scratch_name,
)
from persistkit.policy.retention import Decision, Item, Policy, decide
from persistkit.progress import transfer

if TYPE_CHECKING:
    from persistkit.io.objects import ObjectStore

__all__ = [
    "LATEST",
    "NAME_WINDOW",
    "ORPHAN_GRACE",
    "VERSION_RECORD",
    "BucketSpace",
    "LatestPointer",
    "default_cache_dir",
]

log = logging.getLogger("persistkit")

LATEST = "LATEST.json"  # per group: {"name", "sha256", "size"} of the newest published version
VERSION_RECORD = "persistkit.remote-version"  # the format of <version>.models.json
_MAX_NAME_ATTEMPTS = 1000
ORPHAN_GRACE = dt.timedelta(days=1)  # unrecorded objects younger than this may belong to a live publisher
# A publish lists the names stamped since this long ago: enough for any clock the writers share,
# few enough that the listing is one request whatever the group's history (see _upload_new).
NAME_WINDOW = dt.timedelta(hours=1)
LATEST_ADVICE = "Delete it: the next save writes a new one, and versions() still lists every version."


def default_cache_dir(url: str) -> str:
    """``$XDG_CACHE_HOME/persistkit/<protocol>/<bucket>/<prefix>`` (``~/.cache`` without XDG)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    protocol, _, rest = url.partition("://")
    return os.path.join(base, "persistkit", protocol, *[p for p in rest.split("/") if p])


@dataclass(frozen=True)
class LatestPointer:
    """A group's ``LATEST.json``: the name of its newest published version, with its sha256 and size."""

    name: str
    sha256: str
    size: int

    def encode(self) -> bytes:
        doc = {"format": "persistkit.latest", "version": 1, "name": self.name, "sha256": self.sha256,
               "size": self.size}  # fmt: skip
        return json.dumps(doc).encode()


def parse_latest(doc: Fields) -> LatestPointer:
    doc.one_of("format", ["persistkit.latest"])
    doc.one_of("version", [1])
    name = doc.text(
        "name",
        check=lambda v: MODEL_VERSIONS.parse(v) is not None,
        what="a version name of this group (<stamp>.models)",
    )
    return LatestPointer(name, doc.sha256("sha256"), doc.integer("size"))


class BucketSpace:
    """Versions, settings and aliases under one object-store URL (see the module docstring)."""

    remote = True

    def __init__(
        self,
        url: str,
        *,
        cache_dir: str | os.PathLike[str] | None,
        key_file: str | os.PathLike[str] | None,
        storage_options: Mapping[str, Any] | None,
        progress: bool | None,
    ) -> None:
        self.root = url.rstrip("/")
        self.objects: ObjectStore = remote_store(self.root, storage_options=storage_options)
        self.progress = progress  # None: a bar for large transfers on a terminal (persistkit.progress)
        self.cache_dir = (
            os.path.abspath(os.fspath(cache_dir)) if cache_dir is not None else default_cache_dir(self.root)
        )
        # keys never leave this machine: the store's key file lives here (copy it to the other machines)
        self.default_key_file: str | None = (
            os.path.abspath(os.fspath(key_file))
            if key_file is not None
            else os.path.join(self.cache_dir, "store.key")
        )
        self._settings: StoreSettings | None = None  # once encrypted with a recorded key, it stays so

    # -- names --

    def location(self, key: str) -> str:
        return self.objects.url_of(key)

    def version(self, group: str, name: str) -> Version:
        return Version(group, name, self.location(f"{group}/{name}"), remote=True)

    def version_of(self, given: object) -> Version:
        if isinstance(given, Version):
            text = given.location
        elif isinstance(given, str | os.PathLike):
            text = os.fspath(given)
        else:
            raise TypeError(f"a version is a Version or a URL, not {type(given).__name__}")
        prefix = self.objects.url + "/"
        key = text[len(prefix) :] if text.startswith(prefix) else text
        parsed = None if is_url(key) else parse_model_version(key)
        if parsed is None:
            raise ValueError(f"{text!r} is not a version of the store {self.root}")
        return self.version(*parsed)

    def exclusive(self) -> Any:
        import contextlib

        return contextlib.nullcontext()  # every write is conditional: no lock spans machines

    def _cache_path(self, version: Version) -> str:
        # built only from a Version, whose group and name passed persistkit.naming's rule
        return os.path.join(self.cache_dir, *version.group.split("/"), version.name)

    # -- settings --

    def read_settings(self) -> StoreSettings | None:
        if self._settings is not None:
            return self._settings
        found = read_document(
            self.objects, STORE_FILE, parse_settings, what="the store settings", advice=SETTINGS_ADVICE
        )
        settings = None if found is None else found[0]
        if settings is not None and settings.encrypted and settings.key is not None:
            self._settings = settings
        return settings

    def write_settings(self, new: StoreSettings, old: StoreSettings | None) -> StoreSettings:
        if old is None:
            self.objects.put_new(STORE_FILE, new.encode())  # create-only: the first writer's stand
        else:
            url = self.location(STORE_FILE)

            def record(current: Fetched | None) -> bytes | None:
                now = None if current is None else parse_document(
                    url, current.data, parse_settings, what="the store settings", advice=SETTINGS_ADVICE
                )  # fmt: skip
                return None if now is not None and now.key is not None else new.encode()

            swap_until(self.objects, STORE_FILE, record, what="the store settings")
        stands = self.read_settings()
        assert stands is not None  # written above, and never deleted
        return stands

    # -- publishing --

    def publish(
        self,
        group: str,
        build: Callable[[str], object],
        *,
        when: dt.datetime | None,
        config: Any,
        encrypted: bool,
    ) -> Version:
        fs = current_fs()
        staging_dir = os.path.join(self.cache_dir, ".staging")
        local_dir = os.path.join(self.cache_dir, *group.split("/"))
        for directory in (local_dir, staging_dir):
            try:
                fs.makedirs(directory)
            except OSError as err:
                raise io_error("create directory", directory, err) from err
        sweep_dead_writers(staging_dir)  # what publishers that died left
        staging = os.path.join(staging_dir, scratch_name(f"publish{MODEL_SUFFIX}", "staging"))
        with claim(staging):
            try:
                build(staging)
                name, uploaded, pointer_etag, newest = self._upload_new(group, staging, when)
                record: dict[str, Any] = {"format": VERSION_RECORD, "version": 1, "name": name,
                                          "sha256": uploaded.sha256, "size": uploaded.size, "encrypted": encrypted}  # fmt: skip
                if (
                    not encrypted
                ):  # the bucket is not trusted: an encrypted store's config stays in its bundle
                    record["config"] = config
                record_key = f"{group}/{name}{RECORD_SUFFIX}"
                body = json.dumps(record, indent=1).encode()
                # "taken" after a retry whose first attempt got through is our own record: fine
                if not self.objects.put_new(record_key, body) and self.objects.get(record_key).data != body:
                    raise IntegrityError(
                        f"{self.location(record_key)}: a record already exists for a name this writer just "
                        "created; another tool writes into this store. Check the bucket.",
                        path=self.location(record_key),
                    )
                self.advance_latest(group, LatestPointer(name, uploaded.sha256, uploaded.size), pointer_etag,
                                    newest=newest)  # fmt: skip
                version = self.version(group, name)
                try:  # the uploaded bytes are the cache's first entry
                    fs.replace(staging, self._cache_path(version))
                except OSError as err:
                    log.warning("could not keep %s in the cache: %s", name, err)
            finally:
                if fs.exists(staging):
                    try:
                        fs.unlink(staging)
                    except OSError as err:
                        log.warning("could not remove the staging file %s: %s", staging, err)
        return version

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
        after = MODEL_VERSIONS.stamp(when if when is not None else now - NAME_WINDOW)
        listed = self.objects.list_objects(group, start_after=after)
        taken = [p for p in (MODEL_VERSIONS.parse(o.name) for o in listed) if p is not None]
        pointer_etag = next((o.etag for o in listed if o.name == LATEST), None)
        candidate = next_candidate(MODEL_VERSIONS, taken, when)
        # every name not listed sorts before ``after``: above the listed ones is above them all
        newest = not taken or candidate > max(taken)
        try:
            total = current_fs().stat(staging).st_size
        except OSError as err:
            raise io_error("read for upload", staging, err) from err
        with transfer(f"uploading {group}", total, show=self.progress) as advance:
            for _ in range(_MAX_NAME_ATTEMPTS):
                name = MODEL_VERSIONS.name(*candidate)
                uploaded = self.objects.upload_new(f"{group}/{name}", staging, progress=advance)
                if uploaded is not None:
                    return name, uploaded, pointer_etag, newest
                candidate = (candidate[0], candidate[1] + 1)  # another writer took it: the next one
        raise PersistkitError(
            f"{self.location(group)}: {_MAX_NAME_ATTEMPTS} version names in a row were taken by other "
            "writers; something else is writing there. Check the bucket.",
            path=self.location(group),
        )

    def _read_latest(self, group: str) -> LatestPointer | None:
        found = read_document(
            self.objects, f"{group}/{LATEST}", parse_latest, what="the latest pointer", advice=LATEST_ADVICE
        )
        return None if found is None else found[0]

    def advance_latest(self, group: str, pointer: LatestPointer, etag: str | None, *, newest: bool) -> None:
        """Point ``LATEST.json`` at ``pointer.name`` unless it already names a later version.

        ``newest``: the name sorts after the pointer as it was when ``etag`` was listed, so the first
        swap goes out on that etag without reading the pointer; if the pointer moved since, it is read
        and compared before every further attempt (``swap_until``).
        """
        key = f"{group}/{LATEST}"
        url = self.location(key)
        ours = MODEL_VERSIONS.sort_key(pointer.name)
        body = pointer.encode()

        def onto(current: Fetched | None) -> bytes | None:
            if current is not None:
                there = parse_document(url, current.data, parse_latest, what="the latest pointer",
                                       advice=LATEST_ADVICE)  # fmt: skip
                if MODEL_VERSIONS.sort_key(there.name) >= ours:
                    return None  # a later version is already published: ours stays listed in versions()
            return body

        swap_until(
            self.objects,
            key,
            onto,
            first=(etag, body) if newest else None,
            what=f"the latest pointer (the version {pointer.name} is saved and listed, but the pointer was "
            "not moved to it)",
        )

    # -- reading --

    def _listed(self, group: str) -> tuple[list[str], list[tuple[str, str]]]:
        """(names of the published versions of ``group``, oldest first; (URL, problem) of bad names)."""
        names = self.objects.list(group)
        found, problems = [], []
        for name in names:
            if not name.endswith(MODEL_SUFFIX + RECORD_SUFFIX):
                continue
            version = name[: -len(RECORD_SUFFIX)]
            if MODEL_VERSIONS.parse(version) is not None:
                found.append(version)
            elif (problem := MODEL_VERSIONS.problem(version)) is not None:
                problems.append((self.location(f"{group}/{name}"), problem))
        return sorted(found, key=MODEL_VERSIONS.sort_key), problems

    def versions(self, group: str) -> list[Version]:
        names, problems = self._listed(group)
        for url, problem in problems:
            log.warning("%s: skipped, not a version record: %s", url, problem)
        return [self.version(group, n) for n in names]

    def latest(self, group: str) -> Version | None:
        """The version the group's latest pointer names (one GET), or None."""
        pointer = self._read_latest(group)
        if pointer is None:
            found = self.versions(group)  # versions saved, pointer not written yet (publisher died)
            return found[-1] if found else None
        return self.version(group, pointer.name)

    def record(self, version: Version) -> Record:
        key = version.key + RECORD_SUFFIX
        return parse_record(self.location(key), self.objects.get(key).data, (VERSION_RECORD,))

    def fetch(self, version: Version) -> str:
        """The local cached copy of a version (downloaded and sha256-checked if needed); its path."""
        record = self.record(version)
        local = self._cache_path(version)
        fs = current_fs()
        if fs.exists(local):
            if sha256_file(local) == (record.sha256, record.size):
                return local
            log.warning("cached copy %s does not match its record; downloading it again", local)
        try:
            fs.makedirs(os.path.dirname(local))
        except OSError as err:
            raise io_error("create directory", os.path.dirname(local), err) from err
        with transfer(f"downloading {version.key}", record.size, show=self.progress) as advance:
            # not fsynced: a cached copy is checked against its record's sha256 before every use, so one
            # torn by a power loss is downloaded again, never loaded
            self.objects.download_verified(
                version.key, local, record.sha256, record.size, progress=advance, durable=False
            )
        return local

    def published(self, version: Version) -> bool:
        return self.objects.get_or_none(version.key + RECORD_SUFFIX) is not None

    # -- aliases: <root>/aliases.json, the local format, replaced by compare-and-swap --

    def read_aliases(self) -> AliasEvents:
        found = read_document(
            self.objects, ALIASES, parse_alias_index, what="the alias index", advice=ALIASES_ADVICE,
            limit=ALIAS_INDEX_LIMIT,
        )  # fmt: skip
        return [] if found is None else found[0]

    def change_aliases(self, change: Callable[[AliasEvents], bool]) -> bool:
        url = self.location(ALIASES)

        def apply(current: Fetched | None) -> bytes | None:
            events = [] if current is None else parse_document(
                url, current.data, parse_alias_index, what="the alias index", advice=ALIASES_ADVICE
            )  # fmt: skip
            return alias_index_bytes(events) if change(events) else None

        written = swap_until(self.objects, ALIASES, apply, limit=ALIAS_INDEX_LIMIT, what="the alias index")
        return written is not None

    # -- retention --

    def _groups(self) -> list[str]:
        groups = []
        for symbol in self.objects.list_dirs(""):
            if component_problem(symbol) is not None:
                continue  # not a symbol (the probe's prefix, another tool's objects)
            for agent in self.objects.list_dirs(symbol):
                if component_problem(agent) is not None:
                    continue
                for timeframe in self.objects.list_dirs(f"{symbol}/{agent}"):
                    if component_problem(timeframe) is None:
                        groups.append(f"{symbol}/{agent}/{timeframe}")
        return sorted(groups)

    def plan(
        self,
        policy: Policy,
        pins: Mapping[str, list[str]],
        grace: dt.timedelta,
        now: dt.datetime,
        required: bool | str,
    ) -> list[Decision]:
        """Versions through ``decide`` (the latest pointer's and aliased ones pinned), orphans, uploads.

        Orphans, objects a publisher uploaded but never recorded (it died in between), and multipart
        uploads of versions never completed are removed once older than ``grace``: a younger one may
        belong to a publisher that is about to record it.
        """
        decisions: list[Decision] = []
        for group in self._groups():
            listed = self.objects.list_objects(group)
            names = {o.name for o in listed}
            pointer = self._read_latest(group) if LATEST in names else None
            items = []
            for entry in sorted(listed, key=lambda o: o.name):
                if not entry.name.endswith(MODEL_SUFFIX):
                    continue
                location = self.location(f"{group}/{entry.name}")
                if MODEL_VERSIONS.parse(entry.name) is None:
                    problem = MODEL_VERSIONS.problem(entry.name)
                    if problem is not None:
                        decisions.append(skipped_decision(location, problem, entry.modified))
                    continue
                if entry.name + RECORD_SUFFIX not in names:
                    decisions.append(orphan_decision(location, entry.modified, grace, now))
                    continue
                version = self.version(group, entry.name)
                why = list(pins.get(version.key, []))
                if pointer is not None and pointer.name == entry.name:
                    why.append("the latest pointer names it")
                items.append(Item(location, version.when, "; ".join(why)))
            decisions += decide(policy, items, now)
        for upload in self.objects.list_uploads():
            # Decided here rather than by decide(): these are not versions (no policy counts them), and
            # decide() would always keep the newest one. Only uploads of this store's version names.
            if parse_model_version(upload.key) is not None:
                decisions.append(orphan_decision(upload.url, upload.started, grace, now, upload=True))
        return decisions

    def remove(self, decisions: Sequence[Decision]) -> list[Version]:
        """Each version's record goes first (it stops being listed), then its data object.

        A version an alias was moved to meanwhile (``tag`` on another machine) gets its record back
        and stays. Orphans are deleted and uploads aborted; each is reported as the version it was of
        (an upload's location names it: ``<url>?uploadId=...``).
        """
        removed: list[Version] = []
        records: dict[str, tuple[Version, bytes]] = {}
        for decision in decisions:
            if decision.keep:
                continue
            location, _, upload_id = decision.item.id.partition("?uploadId=")
            version = self.version_of(location)
            if upload_id:
                self.objects.abort_upload(version.key, upload_id)
                removed.append(Version(version.group, version.name, decision.item.id, remote=True))
            elif decision.reasons and decision.reasons[0].startswith("orphan"):
                self.objects.delete(version.key)
                removed.append(version)
            else:
                key = version.key + RECORD_SUFFIX
                found = self.objects.get_or_none(key)
                if found is None:
                    continue  # pruned by another machine meanwhile
                records[version.key] = (version, found.data)
                self.objects.delete(key)  # the data goes once no alias has moved onto it (below)
        if records:
            aliased = {e["path"] for e in self.read_aliases() if e["until"] is None}
            for key, (version, record) in records.items():
                if key in aliased:  # tagged while we pruned: the version stays
                    self.objects.put_new(key + RECORD_SUFFIX, record)
                    continue
                self.objects.delete(key)
                removed.append(version)
        return sorted(removed, key=lambda v: (v.group, MODEL_VERSIONS.sort_key(v.name), v.location))

    def __repr__(self) -> str:
        return f"BucketSpace({self.root})"
