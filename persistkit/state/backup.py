"""Off-site backups of a ``StateStore`` to an object store (S3, or any fsspec URL with conditional writes).

``StateStore(dir, backup_to="s3://bucket/bots/NAME", backup_every=60)`` copies
the store there from a background thread; ``StateStore.restore_from(url,
into=dir)`` brings it back on another machine. Layout under the URL (one
store per URL)::

    BACKUP.json                                     the pointer (JSON), replaced only by compare-and-swap
    objects/g000007-<token>-STORE                   the store description (store id, KDF salt)
    objects/g000007-<token>-CURRENT                 the CURRENT that committed generation 7
    objects/g000007-<token>-MANIFEST                its MANIFEST
    objects/g000007-<token>-risk.pk                 one object per component file
    objects/g000007-<token>-trades.journal.000000000012-000000000020
                                                    a closed journal segment: records 12 to 19 of
                                                    ``trades`` appended after generation 7's checkpoint

The pointer names the generation, the sha256 and size of every object above,
the journal segments in order, and when the state it describes was taken.

**One object per file, each created create-only** (``If-None-Match: *``), not
one packed object: the files already are self-checking envelopes (encrypted
and authenticated with a key), so packing them would add a second container
format with nothing to gain, while separate objects let journal segments be
added to a generation without uploading it again. The random ``<token>`` of
each generation upload keeps names unique, so a round that died half-way never
collides with a later one (e.g. a store restored on another machine committing
the same generation number).

**A round** (``backup_now()``, or the background thread every ``backup_every``
seconds and right after each commit):

1. under the store's lock, for microseconds and with no network I/O, note the
   generation in force (always a COMMITTED one: ``gen-N.tmp-*`` directories
   are never read), its CURRENT, and how many records each journal has
   acknowledged;
2. outside the lock: if the pointer names an older generation, upload the
   STORE, CURRENT, MANIFEST and component files of this one (their digests are
   checked against the MANIFEST first, so a locally damaged file is never
   shipped);
3. cut each journal at a record boundary: the records after the last shipped
   segment up to the last acknowledged one that is on disk in full (checksum
   verified). That range becomes one immutable segment object. A segment
   never holds a torn record or a record that was not acknowledged, and
   segments chain exactly (each starts where the previous one ended);
4. move the pointer with compare-and-swap, never backwards: a pointer naming
   a newer generation than the one in force (another machine running the same
   store) is an error, never overwritten;
5. delete objects the new pointer no longer names (older generations, merged
   segments, leftovers of rounds that died). Past ``MAX_SEGMENTS`` segments a
   generation's journal is shipped again as one merged segment, so the pointer
   stays small.

Under the object-store crash model (any prefix of completed PUTs and DELETEs;
an upload that never completed is invisible) the pointer always names objects
that exist in full: objects are created before the pointer names them and
deleted only after it stopped naming them.

**What a restore can lose**: the appends acknowledged after the last shipped
segment, and everything in a checkpoint committed after the last round that
succeeded. While the object store is reachable that is at most ``backup_every``
seconds of appends (plus one round's upload time); while it is not, it grows
with the outage, and ``stats()["backup"]`` shows it (``pending_records``,
``pending_generations``, ``seconds_since_success``, ``last_error``).

**The network never stops the bot.** Rounds run on their own thread. A failed
round is retried with exponential backoff (``retry_after`` doubling, at most
``every``; each request is itself retried a bounded number of times by
``persistkit.io.remote``); ``append()`` and ``save()`` never wait for it (a
round holds the store's lock only to note the snapshot of step 1, and waits for
it at most ``LOCK_WAIT`` seconds). ``close()`` gives a final round ``grace``
seconds and logs what was left; on SIGTERM/SIGINT the final checkpoint goes up
in the saving thread, within the signal's ``grace`` deadline. ``backup_every=None``
runs no thread: rounds happen on ``store.backup.backup_now()`` and at close.

**Encryption.** With ``password=``/``key_file=`` every component, MANIFEST and
CURRENT is an encrypted envelope and every journal record payload is encrypted
before it is written locally, so nothing of the state leaves the machine in
plaintext. What is visible in the bucket: component and log names, sizes,
generation and sequence numbers, times, and the store id and KDF salt (never
the key). Without a key the state is uploaded as it is on disk.

**Restore** downloads the pointed generation and its segments, checks each
object's sha256 (and size) before anything is parsed, writes them into a
hidden temp directory beside ``into`` through ``persistkit.io``, checks CURRENT
and the generation with the store's own checker (``generations.check_generation``)
and every journal record (authenticated with a key), and only then renames the
directory into place. A crash mid-restore leaves ``into`` absent (or empty, as it
was) and a hidden ``.<name>.pk-tmp-*`` directory beside it, never a half store.

Limitation: a store restored on another machine has the same store id. Do not
keep the original running once you restored it elsewhere: both would number
new generations alike, and with a key, their journals would then use the same
per-generation keys. The restored store's backups refuse to move the pointer
back if the original moved it further (step 4).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno as _errno
import hashlib
import json
import logging
import os
import random
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import xxhash

from persistkit.errors import IntegrityError, PersistIOError, PersistkitError
from persistkit.format import envelope, tree
from persistkit.io import atomic_write, current_fs
from persistkit.io.fs import io_error
from persistkit.io.remote import is_url
from persistkit.naming import temp_name_for, temp_pid
from persistkit.policy.autosave import AutosaveCadence
from persistkit.state import generations as gens
from persistkit.state.journal import JournalReader, journal_cipher, parse_record
from persistkit.state.store import STORE_FILE, StateStore

if TYPE_CHECKING:
    from persistkit.format.crypto import Key
    from persistkit.io.objects import ObjectStore

__all__ = ["POINTER", "BackupStatus", "RestoreReport", "StoreBackup", "restore"]

log = logging.getLogger("persistkit")

POINTER = "BACKUP.json"
OBJECTS = "objects"
FORMAT = "persistkit.state-backup"
MAX_SEGMENTS = 32  # per journal; past it the journal is shipped again as one merged segment
RESTORE_ATTEMPTS = 5  # a restore that races a backup's cleanup reads the moved pointer again


class _Moved(Exception):
    """The generation being read was retired locally (a newer one committed): start the round again."""


@dataclass
class BackupStatus:
    """How far the off-site copy is behind the store (``stats()["backup"]``)."""

    url: str
    running: bool  # the background thread is alive
    in_round: bool  # a round is under way now
    local_generation: int | None
    remote_generation: int | None  # None: nothing backed up yet (as far as this process knows)
    pending_generations: int  # 1 when the generation in force is not backed up yet (older ones never are)
    pending_records: int  # acknowledged journal records not yet in a shipped segment
    last_success: float | None  # epoch seconds of the last round that shipped everything it saw
    seconds_since_success: float | None
    last_error: str | None
    failures: int  # consecutive failed rounds
    rounds: int
    uploaded_bytes: int
    uploaded_objects: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RestoreReport:
    """What ``StateStore.restore_from`` put into ``directory``."""

    url: str
    directory: str
    store_id: str
    generation: int
    components: list[str]
    journal_records: dict[str, int]
    bytes: int
    objects: int
    as_of: dt.datetime  # when the backed-up state was taken (the round's snapshot)
    age_seconds: float  # how old that state was when restored
    uploaded_at: dt.datetime  # when the pointer was written

    def summary(self) -> str:
        records = sum(self.journal_records.values())
        return (
            f"restored generation {self.generation} of store {self.store_id} from {self.url} into "
            f"{self.directory}: {len(self.components)} components, {records} journal records, "
            f"{self.bytes} bytes; state as of {self.as_of.isoformat(timespec='seconds')} "
            f"({self.age_seconds:.0f} s old)"
        )


@dataclass
class _Snapshot:
    generation: int
    current: bytes
    positions: dict[str, int]  # log -> next sequence number (every record below it was acknowledged)
    taken_at: float


@dataclass
class _Pointer:
    """The decoded BACKUP.json."""

    store: str
    generation: int
    token: str
    files: dict[str, dict[str, Any]]  # file name in the generation -> {"key", "sha256", "size"}
    journals: dict[
        str, dict[str, Any]
    ]  # log -> {"first_seq", "segments": [{"key","first","end","sha256","size"}]}
    as_of: float
    uploaded_at: float
    extra: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        doc = {
            "format": FORMAT,
            "version": 1,
            "store": self.store,
            "generation": self.generation,
            "token": self.token,
            "files": self.files,
            "journals": self.journals,
            "as_of": self.as_of,
            "uploaded_at": self.uploaded_at,
        }
        return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"

    def keys(self) -> set[str]:
        keys = {entry["key"] for entry in self.files.values()}
        for journal in self.journals.values():
            keys.update(seg["key"] for seg in journal["segments"])
        return keys

    def shipped(self, log_name: str) -> int:
        journal = self.journals[log_name]
        segments = journal["segments"]
        return int(segments[-1]["end"]) if segments else int(journal["first_seq"])


def _bad_pointer(url: str, where: str, what: str) -> IntegrityError:
    return IntegrityError(
        f"{url}: field {where} {what}: the backup pointer is damaged or was not written by persistkit. "
        "Restore BACKUP.json from a bucket version (if versioning is on), or point backup_to/restore_from "
        "at the right URL.",
        path=url,
        field=where,
    )


def _entry(url: str, where: str, value: Any, *, segment: bool = False) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad_pointer(url, where, "is not a table")
    if not isinstance(value.get("key"), str) or not value["key"].startswith(f"{OBJECTS}/"):
        raise _bad_pointer(url, f"{where}.key", "is not an object name under objects/")
    if not isinstance(value.get("sha256"), str) or len(value["sha256"]) != 64:
        raise _bad_pointer(url, f"{where}.sha256", "is not a sha256")
    if type(value.get("size")) is not int or value["size"] < 0:
        raise _bad_pointer(url, f"{where}.size", "is not a size")
    if segment:
        for name in ("first", "end"):
            if type(value.get(name)) is not int or value[name] < 0:
                raise _bad_pointer(url, f"{where}.{name}", "is not a sequence number")
        if value["end"] <= value["first"]:
            raise _bad_pointer(url, where, "covers no record")
    return value


def parse_pointer(data: bytes, url: str) -> _Pointer:
    """Decode and check BACKUP.json; IntegrityError naming the URL and field on anything malformed."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise _bad_pointer(url, "(the document)", f"is not JSON ({err})") from err
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _bad_pointer(url, "format", f"is not {FORMAT!r}")
    if doc.get("version") != 1:
        raise PersistkitError(
            f"{url}: backup format version {doc.get('version')!r} is newer than this persistkit reads; "
            "upgrade persistkit.",
            path=url,
            field="version",
        )
    for name, kind in (("store", str), ("token", str), ("generation", int)):
        if type(doc.get(name)) is not kind:
            raise _bad_pointer(url, name, f"is not a {kind.__name__}")
    for name in ("as_of", "uploaded_at"):
        if not isinstance(doc.get(name), int | float) or isinstance(doc.get(name), bool):
            raise _bad_pointer(url, name, "is not a time")
    files = doc.get("files")
    if not isinstance(files, dict) or not {STORE_FILE, gens.CURRENT, gens.GENERATION_MANIFEST} <= set(files):
        raise _bad_pointer(url, "files", "does not list STORE, CURRENT and MANIFEST")
    for name, value in files.items():
        if not isinstance(name, str) or not gens.NAME_RE.fullmatch(name):
            raise _bad_pointer(url, f"files[{name!r}]", "is not a file name")
        _entry(url, f"files[{name!r}]", value)
    journals = doc.get("journals")
    if not isinstance(journals, dict):
        raise _bad_pointer(url, "journals", "is not a table")
    for name, journal in journals.items():
        where = f"journals[{name!r}]"
        if not isinstance(name, str) or not gens.NAME_RE.fullmatch(name) or not isinstance(journal, dict):
            raise _bad_pointer(url, where, "is not a journal entry")
        if type(journal.get("first_seq")) is not int or journal["first_seq"] < 0:
            raise _bad_pointer(url, f"{where}.first_seq", "is not a sequence number")
        segments = journal.get("segments")
        if not isinstance(segments, list):
            raise _bad_pointer(url, f"{where}.segments", "is not a list")
        expected = journal["first_seq"]
        for i, seg in enumerate(segments):
            _entry(url, f"{where}.segments[{i}]", seg, segment=True)
            if seg["first"] != expected:
                raise _bad_pointer(
                    url,
                    f"{where}.segments[{i}].first",
                    f"is {seg['first']}, not {expected}: segments do not chain",
                )
            expected = seg["end"]
    return _Pointer(
        doc["store"],
        doc["generation"],
        doc["token"],
        files,
        journals,
        float(doc["as_of"]),
        float(doc["uploaded_at"]),
    )


def _object_key(generation: int, token: str, name: str) -> str:
    return f"{OBJECTS}/g{generation:06d}-{token}-{name}"


def _segment_key(generation: int, token: str, log_name: str, first: int, end: int) -> str:
    return _object_key(generation, token, f"{gens.journal_file(log_name)}.{first:012d}-{end:012d}")


def cut_segment(data: bytes, first_seq: int, start: int, stop: int) -> tuple[bytes, int]:
    """The bytes of the intact records ``start`` up to (not incl.) ``stop`` of a journal, and the end seq.

    Parses from the file's first record (number ``first_seq``); stops early at the first record that is
    not on disk in full or fails its checksum. Returns ``(b"", start)`` when none of that range is there.
    """
    pos = 0
    seq = first_seq
    begin: int | None = 0 if start == first_seq else None
    while seq < stop:
        record, end = parse_record(data, pos)
        if record is None or record.seq != seq:
            break
        pos, seq = end, seq + 1
        if seq == start:
            begin = pos
    if begin is None or seq <= start:
        return b"", start
    return data[begin:pos], seq


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class StoreBackup:
    """The off-site copy of one ``StateStore`` (see the module docstring); made by ``StateStore(backup_to=)``."""

    def __init__(
        self,
        store: StateStore,
        url: str,
        *,
        every: float | AutosaveCadence | None = 60.0,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not is_url(url):
            raise ValueError(
                f"backup_to must be an object-store URL such as 's3://bucket/bots/NAME', not {url!r}"
            )
        cadence: AutosaveCadence | None
        if every is None or isinstance(every, AutosaveCadence):
            cadence = every  # None: no thread; rounds run on backup_now() and close() only
        elif isinstance(every, bool) or not isinstance(every, int | float) or not every > 0:
            raise ValueError(
                f"backup_every must be a positive number of seconds or an AutosaveCadence, not {every!r}"
            )
        else:
            cadence = AutosaveCadence(every=float(every), retry_after=min(1.0, float(every)))
        self.store = store
        self.url = url.rstrip("/")
        self.cadence = cadence
        self.storage_options = dict(storage_options or {})
        self._remote: ObjectStore | None = None
        self._key: Key | None = None
        self._key_ready = False
        self._pointer: _Pointer | None = None  # as last read or written by this process
        self._round = threading.Lock()  # one round at a time (thread, backup_now, close)
        self._state = threading.Lock()  # guards the counters below
        self._in_round = False
        self._last_success: float | None = None
        self._last_error: BaseException | None = None
        self._failures = 0
        self._rounds = 0
        self._uploaded_bytes = 0
        self._uploaded_objects = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background thread (``StateStore.load`` does it)."""
        if self._thread is None and not self._stop.is_set() and self.cadence is not None:
            self._thread = threading.Thread(target=self._loop, name="persistkit-backup", daemon=True)
            self._thread.start()

    def committed(self) -> None:
        """A generation was committed: back it up soon (without waiting for ``every``)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop the thread without a final round (a round under way finishes on its own)."""
        self._stop.set()
        self._wake.set()

    def close(self, timeout: float) -> BackupStatus:
        """One last round, given ``timeout`` seconds; logs a warning naming what was left behind."""
        self._stop.set()
        thread, self._thread = self._thread, None
        done = threading.Event()

        def last_round() -> None:
            if thread is not None:
                self._wake.set()
                thread.join(timeout)  # it finishes its round, if one is under way
            try:
                self._try_round()
            finally:
                done.set()

        # on a thread of its own: a request hanging on a dead network cannot hold close() past timeout
        threading.Thread(target=last_round, name="persistkit-backup-close", daemon=True).start()
        done.wait(timeout)
        status = self.status()
        if status.pending_generations or status.pending_records or not done.is_set():
            log.warning(
                "persistkit: closing %s with its backup to %s behind: %d generation(s) and %d journal "
                "record(s) not uploaded%s; last error: %s. They go up at the next start with backup_to=.",
                self.store.directory,
                self.url,
                status.pending_generations,
                status.pending_records,
                "" if done.is_set() else f" (the last round did not finish in {timeout:g} s)",
                status.last_error,
            )
        return status

    def final_round(self) -> None:
        """On a stop signal: one last round in the saving thread, which holds the store's lock.

        The final checkpoint is already durable locally; the signal's grace deadline bounds this round.
        A round of the background thread waits for the store's lock at most ``LOCK_WAIT`` seconds, so
        this one never waits on it for longer.
        """
        self.stop()
        if self._round.acquire(timeout=2 * self.LOCK_WAIT):
            self._round.release()
            self._try_round()
        else:
            log.warning(
                "persistkit: no final backup round of %s: another round is under way", self.store.directory
            )

    def _loop(self) -> None:
        assert self.cadence is not None
        while not self._stop.is_set():
            delay = self.cadence.delay(failures=self._failures, rand=random.random())  # jitter: no crypto
            self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                return
            self._try_round()

    def _try_round(self) -> bool:
        try:
            self.backup_now()
        except Exception as err:  # never kill the bot: keep the error for stats(), retry with backoff
            log.warning(
                "persistkit backup of %s to %s failed (will retry): %s", self.store.directory, self.url, err
            )
            return False
        return True

    # -- status ------------------------------------------------------------------------------

    def status(self) -> BackupStatus:
        with self.store.lock:
            local = self.store.generation
            positions = self.store.journal_positions()
        with self._state:
            pointer = self._pointer
            remote = pointer.generation if pointer is not None else None
            pending_gens = int(local is not None and remote != local)
            # sequence numbers run on across generations: what the remote copy holds of a log ends at
            # the last shipped segment (or its checkpoint's first_seq); every acknowledged record after it is pending
            pending_records = sum(
                max(
                    0,
                    pos - (pointer.shipped(name) if pointer is not None and name in pointer.journals else 0),
                )
                for name, pos in positions.items()
            )
            last = self._last_success
            return BackupStatus(
                url=self.url,
                running=self._thread is not None and self._thread.is_alive(),
                in_round=self._in_round,
                local_generation=local,
                remote_generation=remote,
                pending_generations=pending_gens,
                pending_records=pending_records,
                last_success=last,
                seconds_since_success=None if last is None else max(0.0, time.time() - last),
                last_error=None if self._last_error is None else str(self._last_error),
                failures=self._failures,
                rounds=self._rounds,
                uploaded_bytes=self._uploaded_bytes,
                uploaded_objects=self._uploaded_objects,
            )

    # -- one round ---------------------------------------------------------------------------

    def backup_now(self) -> BackupStatus:
        """Run one round in this thread; raises what made it fail (also kept in ``stats()``)."""
        with self._round:
            with self._state:
                self._in_round = True
            try:
                for _ in range(3):
                    try:
                        self._round_once()
                        break
                    except _Moved:
                        continue  # a newer generation committed under us: back that one up
                else:
                    raise PersistkitError(
                        f"{self.store.directory}: generations were retired faster than {self.url} could take "
                        "them, three rounds in a row; the backup retries. Raise keep_generations or "
                        "backup_every if this persists.",
                        path=self.store.directory,
                    )
            except BaseException as err:
                with self._state:
                    self._last_error = err
                    self._failures += 1
                    self._rounds += 1
                raise
            finally:
                with self._state:
                    self._in_round = False
            with self._state:
                self._last_error = None
                self._failures = 0
                self._rounds += 1
                self._last_success = time.time()
        return self.status()

    def _remote_store(self) -> ObjectStore:
        if self._remote is None:
            from persistkit.io.remote import remote_store

            self._remote = remote_store(self.url, storage_options=self.storage_options)
        return self._remote

    def _store_key(self) -> Key | None:
        if not self._key_ready:
            self._key = self.store.resolve_key(self.store.store_meta())
            self._key_ready = True
        return self._key

    LOCK_WAIT = 1.0

    def _snapshot(self) -> _Snapshot | None:
        store = self.store
        # no network I/O under the lock: a read of CURRENT and a few integers. Waits for it a bounded
        # time: a thread that holds it (a long atomic() block, the final save on a signal) may be
        # waiting for this round to finish.
        if not store.lock.acquire(timeout=self.LOCK_WAIT):
            raise PersistkitError(
                f"{store.directory}: the store's lock was held for over {self.LOCK_WAIT:g} s (a long atomic() "
                "block?); this backup round was skipped and is retried.",
                path=store.directory,
            )
        try:
            generation = store.generation
            if generation is None:
                return None
            current = gens.current_token(store.directory)
            positions = store.journal_positions()
        finally:
            store.lock.release()
        if current is None:
            return None
        return _Snapshot(generation, current, positions, time.time())

    def _round_once(self) -> None:
        snap = self._snapshot()
        if snap is None:
            return  # nothing committed yet
        remote = self._remote_store()
        found = remote.get_or_none(POINTER)
        url = remote.url_of(POINTER)
        pointer = None if found is None else parse_pointer(found.data, url)
        store_id = str(self.store.store_meta().get("store"))
        if pointer is not None and pointer.store != store_id:
            raise PersistkitError(
                f"{url}: holds the backup of another store (id {pointer.store!r}, this one is {store_id!r}); "
                "persistkit never overwrites it. Give each bot its own backup_to URL.",
                path=url,
            )
        if pointer is not None and pointer.generation > snap.generation:
            raise PersistkitError(
                f"{url}: the backup is of generation {pointer.generation}, newer than the one in force here "
                f"({snap.generation}); the pointer never moves backwards. Is the same store running on another "
                "machine (a restored copy, or the original)? Stop one of them.",
                path=url,
            )
        with self._state:
            self._pointer = pointer
        if pointer is None or pointer.generation < snap.generation:
            new = self._upload_generation(snap, store_id)
        else:
            new = _Pointer(
                pointer.store,
                pointer.generation,
                pointer.token,
                dict(pointer.files),
                {
                    name: {"first_seq": j["first_seq"], "segments": list(j["segments"])}
                    for name, j in pointer.journals.items()
                },
                pointer.as_of,
                pointer.uploaded_at,
            )
        merged = self._ship_segments(new, snap)
        changed = pointer is None or new.encode() != pointer.encode()
        if not changed:
            with self._state:
                self._pointer = pointer
            return
        new.as_of = snap.taken_at
        new.uploaded_at = time.time()
        if remote.swap(POINTER, new.encode(), None if found is None else found.etag) is None:
            raise PersistkitError(
                f"{url}: the pointer changed while this round uploaded (another process backs up to this URL); "
                "the uploaded objects stay unnamed and are removed by a later round. Give each bot its own "
                "backup_to URL.",
                path=url,
            )
        with self._state:
            self._pointer = new
        if pointer is None or pointer.generation != new.generation or merged:
            self._collect_garbage(new)

    def _upload(self, key: str, data: bytes) -> dict[str, Any]:
        remote = self._remote_store()
        digest = _sha256(data)
        if not remote.put_new(key, data):
            # taken: a retried request whose first attempt got through wrote it; anything else is foreign
            existing = remote.get(key).data
            if _sha256(existing) != digest:
                url = remote.url_of(key)
                raise PersistkitError(
                    f"{url}: an object of that name already exists with other content; something else writes "
                    "under this backup URL. Give each bot its own backup_to URL.",
                    path=url,
                )
        else:
            with self._state:
                self._uploaded_bytes += len(data)
                self._uploaded_objects += 1
        return {"key": key, "sha256": digest, "size": len(data)}

    def _read_local(self, path: str) -> bytes:
        try:
            return current_fs().read_bytes(path)
        except FileNotFoundError as err:
            raise _Moved() from err
        except OSError as err:
            raise io_error("read for backup", path, err) from err

    def _open(self, data: bytes, kind: str, source: str) -> Any:
        opened = envelope.open_envelope(data, key=self._store_key(), source=source)
        if opened.header.kind != kind:
            raise IntegrityError(
                f"{source}: holds a {opened.header.kind!r} envelope, not {kind!r}.", path=source
            )
        return tree.decode(opened.payload, source=source)

    def _upload_generation(self, snap: _Snapshot, store_id: str) -> _Pointer:
        directory = self.store.directory
        n = snap.generation
        gdir = os.path.join(directory, gens.gen_name(n))
        mpath = os.path.join(gdir, gens.GENERATION_MANIFEST)
        manifest_bytes = self._read_local(mpath)
        current = self._open(snap.current, "current", os.path.join(directory, gens.CURRENT))
        manifest = self._open(manifest_bytes, "manifest", mpath)
        if (
            not isinstance(current, dict)
            or current.get("generation") != n
            or current.get("manifest") != xxhash.xxh3_128_hexdigest(manifest_bytes)
            or not isinstance(manifest, dict)
            or gens.manifest_schema_problem(manifest) is not None
        ):
            raise _Moved()  # CURRENT moved on between the snapshot and this read
        files = {STORE_FILE: self._read_local(os.path.join(directory, STORE_FILE)), gens.CURRENT: snap.current,
                 gens.GENERATION_MANIFEST: manifest_bytes}  # fmt: skip
        for name, entry in manifest["components"].items():
            path = os.path.join(gdir, entry["file"])
            data = self._read_local(path)
            if xxhash.xxh3_128_hexdigest(data) != entry["digest"]:
                raise IntegrityError(
                    f"{path}: does not match {mpath} (damaged on this disk); it is not uploaded and the backup "
                    f"keeps the previous generation. Run `persistkit state inspect {directory} --verify`.",
                    path=path,
                    member=name,
                )
            files[entry["file"]] = data
        token = secrets.token_hex(4)
        entries = {name: self._upload(_object_key(n, token, name), data) for name, data in files.items()}
        journals = {
            name: {"first_seq": int(entry["first_seq"]), "segments": []}
            for name, entry in manifest.get("journals", {}).items()
        }
        return _Pointer(store_id, n, token, entries, journals, snap.taken_at, 0.0)

    def _ship_segments(self, pointer: _Pointer, snap: _Snapshot) -> bool:
        """Upload the newly acknowledged records of each journal as closed segments; True if any was merged."""
        if snap.generation != pointer.generation:
            return False
        gdir = os.path.join(self.store.directory, gens.gen_name(pointer.generation))
        merged = False
        for name, journal in pointer.journals.items():
            shipped = pointer.shipped(name)
            acked = snap.positions.get(name)
            if acked is None or acked <= shipped:
                continue
            data = self._read_local(os.path.join(gdir, gens.journal_file(name)))
            first = int(journal["first_seq"])
            segments = journal["segments"]
            start = first if len(segments) >= MAX_SEGMENTS else shipped
            chunk, end = cut_segment(data, first, start, acked)
            if end <= shipped:
                continue  # acknowledged but not on disk yet (sync="batch"): the next round
            key = _segment_key(pointer.generation, pointer.token, name, start, end)
            seg = {**self._upload(key, chunk), "first": start, "end": end}
            if start == first and segments:
                journal["segments"] = [seg]
                merged = True
            else:
                segments.append(seg)
        return merged

    def _collect_garbage(self, pointer: _Pointer) -> None:
        """Delete the objects ``pointer`` does not name (it is already in place); failures only logged."""
        remote = self._remote_store()
        keep = pointer.keys()
        try:
            names = remote.list(OBJECTS)
        except PersistkitError as err:
            log.warning("could not list %s to remove old backup objects: %s", remote.url_of(OBJECTS), err)
            return
        for name in names:
            key = f"{OBJECTS}/{name}"
            if key in keep:
                continue
            try:
                remote.delete(key)
            except PersistkitError as err:
                log.warning(
                    "could not remove the old backup object %s (retried later): %s", remote.url_of(key), err
                )


# -- restore -------------------------------------------------------------------------------------


def _check_target(into: str) -> None:
    fs = current_fs()
    if fs.exists(into) and (not fs.is_dir(into) or fs.listdir(into)):
        raise PersistIOError(
            f"{into}: is not an empty directory; a restore never writes over anything. Restore into a new or "
            "empty directory (move the old store aside first if you mean to replace it).",
            errno=_errno.EEXIST,
            path=into,
            operation="restore",
        )


def _remove_tree(path: str) -> None:
    fs = current_fs()
    with contextlib.suppress(OSError):
        for top, dirs, files in reversed(list(fs.walk(path))):
            for name in files:
                fs.unlink(os.path.join(top, name))
            for name in dirs:
                fs.rmdir(os.path.join(top, name))
        fs.rmdir(path)


def _remove_dead_stagings(parent: str, name: str) -> None:
    """Remove the temp directories of restores into ``name`` whose process died (killed mid-restore)."""
    from persistkit.io.atomic import pid_alive

    fs = current_fs()
    for entry in fs.listdir(parent):
        pid = temp_pid(entry)
        if pid is None or not entry.startswith(f".{name}.") or pid == os.getpid() or pid_alive(pid):
            continue
        path = os.path.join(parent, entry)
        if fs.is_dir(path):
            _remove_tree(path)


def restore(
    url: str,
    into: str | os.PathLike[str],
    *,
    password: str | None = None,
    key_file: str | os.PathLike[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> RestoreReport:
    """``StateStore.restore_from``: see the module docstring."""
    from persistkit.io.objects import wrap_store
    from persistkit.io.remote import RemoteStore
    from persistkit.keys import check_one

    check_one(password, key_file)
    target = os.path.abspath(os.fspath(into))
    _check_target(target)
    # no probe: a restore only reads, and may run with read-only credentials; through the
    # use_object_store hooks like every remote store (recorded, fault-injected, served from memory in tests)
    remote = wrap_store(RemoteStore(url, storage_options=storage_options, probe=False))
    pointer_url = remote.url_of(POINTER)
    for attempt in range(RESTORE_ATTEMPTS):
        found = remote.get_or_none(POINTER)
        if found is None:
            raise PersistIOError(
                f"{pointer_url}: no state-store backup there (BACKUP.json is missing). Check the URL: it is the "
                "bot's backup_to=, and the bot writes it after its first committed generation.",
                errno=_errno.ENOENT,
                path=pointer_url,
                operation="restore",
            )
        pointer = parse_pointer(found.data, pointer_url)
        try:
            return _restore_pointer(remote, pointer, target, password=password, key_file=key_file)
        except PersistIOError as err:
            gone = err.errno == _errno.ENOENT and err.path != target
            if not gone or attempt == RESTORE_ATTEMPTS - 1:
                raise
            again = remote.get_or_none(POINTER)
            if again is not None and again.data == found.data:
                raise  # the pointer names an object that is not there: damage, not a race
    raise AssertionError("unreachable")  # pragma: no cover


def _restore_pointer(
    remote: ObjectStore,
    pointer: _Pointer,
    target: str,
    *,
    password: str | None,
    key_file: str | os.PathLike[str] | None,
) -> RestoreReport:
    fs = current_fs()
    parent = os.path.dirname(target)
    try:
        fs.makedirs(parent)
    except OSError as err:
        raise io_error("create directory", parent, err) from err
    _remove_dead_stagings(parent, os.path.basename(target))
    staging = os.path.join(parent, temp_name_for(os.path.basename(target)))
    n = pointer.generation
    gdir = os.path.join(staging, gens.gen_name(n))
    total = 0
    objects = 0
    try:
        try:
            fs.mkdir(staging)
            fs.mkdir(gdir)
        except OSError as err:
            raise io_error("create directory", staging, err) from err
        for name, entry in pointer.files.items():
            where = staging if name in (STORE_FILE, gens.CURRENT) else gdir
            # streamed to disk and checked against the recorded sha256 before anything reads it
            remote.download_verified(entry["key"], os.path.join(where, name), entry["sha256"], entry["size"])
            total += entry["size"]
            objects += 1
        for name, journal in pointer.journals.items():
            data = bytearray()
            for seg in journal["segments"]:
                data += remote.get_verified(seg["key"], seg["sha256"], seg["size"])
                objects += 1
            total += len(data)
            atomic_write(os.path.join(gdir, gens.journal_file(name)), bytes(data))
        try:
            fs.fsync_dir(gdir)
            fs.fsync_dir(staging)
        except OSError as err:
            raise io_error("fsync", staging, err) from err
        # the store's own checks, on the restored files: key, CURRENT, the generation, every journal record
        reader = StateStore(staging, readonly=True, password=password, key_file=key_file, autosave_every=None)
        meta = reader.store_meta()
        key = reader.resolve_key(meta)
        store_id = meta.get("store")
        if store_id != pointer.store:
            path = os.path.join(staging, STORE_FILE)
            raise IntegrityError(
                f"{remote.url_of(pointer.files[STORE_FILE]['key'])}: describes store {store_id!r}, but the "
                f"pointer is of {pointer.store!r}: a spliced backup. Nothing was restored.",
                path=path,
            )
        current = gens.read_current(staging, key=key)
        if current is None or current.get("generation") != n or current.get("store") != store_id:
            raise IntegrityError(
                f"{remote.url_of(pointer.files[gens.CURRENT]['key'])}: does not commit generation {n} of store "
                f"{store_id!r}: a spliced backup. Nothing was restored.",
                path=remote.url_of(pointer.files[gens.CURRENT]["key"]),
            )
        loaded = gens.check_generation(
            staging,
            n,
            key=key,
            store_id=store_id,
            problems=gens.GenerationProblems(collect=False),
            manifest_digest=current.get("manifest"),
            decode=False,
        )
        assert loaded is not None  # raising mode
        records: dict[str, int] = {}
        for name, journal in pointer.journals.items():
            listed = loaded.journals.get(name)
            if not isinstance(listed, dict) or listed.get("first_seq") != journal["first_seq"]:
                raise IntegrityError(
                    f"{remote.url_of(POINTER)}: field journals[{name!r}] does not match generation {n}'s "
                    "MANIFEST: a spliced backup. Nothing was restored.",
                    path=remote.url_of(POINTER),
                    field=f"journals[{name!r}]",
                )
            path = os.path.join(gdir, gens.journal_file(name))
            journal_reader = JournalReader.read(
                path, cipher=journal_cipher(key, store_id, name, n), first_seq=journal["first_seq"]
            )
            if journal_reader.torn or journal_reader.damage:
                raise IntegrityError(
                    f"{remote.url_of(POINTER)}: the journal segments of {name!r} do not hold whole records "
                    f"({journal_reader.damage or 'a torn tail'}). Nothing was restored.",
                    path=remote.url_of(POINTER),
                    member=name,
                )
            records[name] = len(journal_reader.records)
        missing = set(loaded.journals) - set(pointer.journals)
        for name in missing:  # every checkpoint creates its journals: an empty one
            atomic_write(os.path.join(gdir, gens.journal_file(name)), b"")
            records[name] = 0
        if fs.exists(target):
            try:
                fs.rmdir(target)  # empty, checked above: the rename puts the whole store in its place
            except OSError as err:
                raise io_error("replace the empty directory", target, err) from err
        try:
            fs.replace(staging, target)
            fs.fsync_dir(parent)
        except OSError as err:
            raise io_error("move the restored store into", target, err) from err
    except BaseException:
        _remove_tree(staging)
        raise
    now = time.time()
    return RestoreReport(
        url=remote.url,
        directory=target,
        store_id=store_id,
        generation=n,
        components=sorted(loaded.components),
        journal_records=records,
        bytes=total,
        objects=objects,
        as_of=dt.datetime.fromtimestamp(pointer.as_of, dt.UTC),
        age_seconds=max(0.0, now - pointer.as_of),
        uploaded_at=dt.datetime.fromtimestamp(pointer.uploaded_at, dt.UTC),
    )
