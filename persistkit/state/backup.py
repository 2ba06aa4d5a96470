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
4. move the pointer with compare-and-swap (``swap_until``: a refused swap reads
   the pointer again, so an answer lost after the swap landed is a success and a
   server refusing its own etag is a typed error), never backwards: a pointer
   naming a newer generation than the one in force (another machine running the
   same store) is an error, never overwritten;
5. delete objects the pointer stopped naming more than ``RETIRE_GRACE`` seconds
   ago (the pointer lists them under ``retired``, so a restore that read the
   previous pointer finishes), and leftovers of rounds that died once they are as
   old. Past ``MAX_SEGMENTS`` segments a generation's journal is shipped again as
   one merged segment, so the pointer stays small.

**Lineage.** Each pointer names the off-site generation it replaced (``parent``:
its number and the sha256 of its MANIFEST, the generation's identity by content).
A round uploads only when the local history provably descends from what the
pointer names: it is the generation in force, or one CURRENT still lists with the
same MANIFEST on disk, or the lineage file says so. ``.persistkit.backup.json``
in the store's directory records, at every commit and round, that the generation
in force descends from a given off-site one; a store checks at load that it
descends from the generation recorded there. A store that fell back to an older
checkpoint (its newest was damaged) or was put back from an older copy (a VM
snapshot) numbers new generations like the ones it lost, with other content: its
rounds are refused, nothing off-site is replaced or deleted, and
``stats()["backup"]["refused"]`` says why.

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
was) and a hidden ``.<name>.restore-*`` directory beside it, never a half store
(the next restore there sweeps it). Errors name the bucket object a bad file came
from, never the temp copy. Every read of the pointer is capped and checked
(``persistkit.io.documents``): times are finite and datetime-sized, keys are ones
persistkit makes.

Limitation: a store restored on another machine has the same store id. Do not
keep the original running once you restored it elsewhere: both would number
new generations alike, and with a key, their journals would then use the same
per-generation keys. The restored store's backups refuse to move the pointer
back if the original moved it further (step 4).
"""

from __future__ import annotations

import datetime as dt
import errno as _errno
import hashlib
import json
import logging
import os
import random
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import xxhash

from persistkit.errors import IntegrityError, NewerFormatError, PersistIOError, PersistkitError
from persistkit.format import envelope, tree
from persistkit.io import atomic_write, current_fs
from persistkit.io.atomic import claim, remove_tree, sweep_dead_writers
from persistkit.io.documents import DocumentError, Fields, load_strict_json, parse_document
from persistkit.io.fs import io_error
from persistkit.io.objects import Fetched, rename_paths, swap_until
from persistkit.io.remote import is_url
from persistkit.naming import BACKUP_LINEAGE_NAME, restore_temp_name
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
RETIRE_GRACE = (
    3600.0  # seconds an object stays after the pointer stopped naming it: restores under way finish
)
RESTORE_ATTEMPTS = 1000  # a restore tries the newest pointer again while it moves on (and nothing else)
LINEAGE_FORMAT = "persistkit.backup-lineage"


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
    refused: str | None  # why rounds refuse to replace the off-site copy (a history it does not descend from)
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


@dataclass(frozen=True)
class _LocalGeneration:
    """The generation in force, as a round read it: its lineage, MANIFEST and CURRENT's history."""

    lineage: Lineage
    manifest_bytes: bytes
    manifest: dict[str, Any]
    history: list[int]


@dataclass(frozen=True)
class Lineage:
    """One generation of a store, by content: its number and the sha256 of its MANIFEST file.

    Two generations with the same number are the same generation only if their MANIFESTs are: a
    store that fell back to an older checkpoint, or was put back from an older copy (a VM snapshot),
    numbers new generations like the ones it lost, with other content.
    """

    generation: int
    manifest: str

    def as_dict(self) -> dict[str, Any]:
        return {"generation": self.generation, "manifest": self.manifest}

    def describe(self) -> str:
        return f"generation {self.generation} (MANIFEST sha256 {self.manifest[:12]}...)"


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
    parent: Lineage | None = None  # the off-site generation this one replaced (its lineage)
    retired: dict[str, float] = field(default_factory=dict)  # object key -> when it stopped being named

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
            "parent": None if self.parent is None else self.parent.as_dict(),
            "retired": self.retired,
        }
        return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"

    @property
    def lineage(self) -> Lineage:
        return Lineage(self.generation, self.files[gens.GENERATION_MANIFEST]["sha256"])

    def keys(self) -> set[str]:
        keys = {entry["key"] for entry in self.files.values()}
        for journal in self.journals.values():
            keys.update(seg["key"] for seg in journal["segments"])
        return keys

    def shipped(self, log_name: str) -> int:
        journal = self.journals[log_name]
        segments = journal["segments"]
        return int(segments[-1]["end"]) if segments else int(journal["first_seq"])

    def same_content(self, other: _Pointer) -> bool:
        """Whether both name the same objects (times and the retired list aside)."""
        return (self.store, self.generation, self.token, self.files, self.journals) == (
            other.store, other.generation, other.token, other.files, other.journals)  # fmt: skip


POINTER_LIMIT = 8 << 20  # a pointer names every component file and up to MAX_SEGMENTS segments per journal
POINTER_ADVICE = (
    "Restore BACKUP.json from a bucket version (if versioning is on), or point backup_to/restore_from at "
    "the right URL."
)
MAX_GENERATION = 10**15
_KEY_RE = re.compile(rf"{OBJECTS}/g\d{{6,16}}-[0-9a-f]{{8}}-[A-Za-z0-9_][A-Za-z0-9_.-]{{0,160}}")


def _object_entry(doc: Fields, *, segment: bool = False) -> dict[str, Any]:
    key = doc.text(
        "key",
        check=lambda v: _KEY_RE.fullmatch(v) is not None,
        what="an object name persistkit makes under objects/",
    )
    entry: dict[str, Any] = {"key": key, "sha256": doc.sha256("sha256"), "size": doc.integer("size")}
    if segment:
        entry["first"] = doc.integer("first")
        entry["end"] = doc.integer("end")
        if entry["end"] <= entry["first"]:
            raise DocumentError(doc.where, "covers no record")
    return entry


def _parse_pointer_fields(doc: Fields) -> _Pointer:
    doc.one_of("format", [FORMAT])
    doc.one_of("version", [1])
    store = doc.text("store", check=lambda v: 0 < len(v) <= 200, what="a store id")
    generation = doc.integer("generation", high=MAX_GENERATION)
    token = doc.text(
        "token", check=lambda v: re.fullmatch(r"[0-9a-f]{8}", v) is not None, what="a round token"
    )
    files: dict[str, dict[str, Any]] = {}
    for name, entry in doc.entries("files"):
        if not gens.NAME_RE.fullmatch(name):
            raise DocumentError(entry.where, "is not a file name")
        files[name] = _object_entry(entry)
    if not {STORE_FILE, gens.CURRENT, gens.GENERATION_MANIFEST} <= set(files):
        raise DocumentError("files", "does not list STORE, CURRENT and MANIFEST")
    journals: dict[str, dict[str, Any]] = {}
    for name, journal in doc.entries("journals"):
        if not gens.NAME_RE.fullmatch(name):
            raise DocumentError(journal.where, "is not a journal name")
        first_seq = journal.integer("first_seq")
        segments = [
            _object_entry(seg, segment=True) for seg in journal.items("segments", most=10 * MAX_SEGMENTS)
        ]
        expected = first_seq
        for i, seg in enumerate(segments):
            if seg["first"] != expected:
                raise DocumentError(
                    f"{journal.where}.segments[{i}].first",
                    f"is {seg['first']}, not {expected}: segments do not chain",
                )
            expected = seg["end"]
        journals[name] = {"first_seq": first_seq, "segments": segments}
    parent = None
    if doc.value.get("parent") is not None:
        entry = doc.table("parent")
        parent = Lineage(entry.integer("generation", high=MAX_GENERATION), entry.sha256("manifest"))
    retired: dict[str, float] = {}
    if "retired" in doc:
        table = doc.table("retired")
        for key in table.value:
            if not _KEY_RE.fullmatch(key):
                raise DocumentError(
                    f"retired[{key!r}]", "is not an object name persistkit makes under objects/"
                )
            retired[key] = table.epoch(key)
    return _Pointer(store, generation, token, files, journals, doc.epoch("as_of"), doc.epoch("uploaded_at"),
                    parent, retired)  # fmt: skip


def parse_pointer(data: bytes, url: str) -> _Pointer:
    """Decode and check BACKUP.json; IntegrityError naming the URL and field on anything malformed.

    Every time is a finite number of seconds a datetime can hold, every object key one persistkit
    makes, every file name one a generation holds. A pointer of a newer backup format is a
    NewerFormatError (intact, but not readable here), never taken for damage.
    """
    try:
        doc = load_strict_json(data)
    except DocumentError:
        doc = None
    if (
        isinstance(doc, dict)
        and doc.get("format") == FORMAT
        and type(doc.get("version")) is int
        and doc["version"] > 1
    ):
        raise NewerFormatError(
            f"{url}: backup format version {doc['version']} is newer than this persistkit reads; upgrade "
            "persistkit.",
            path=url,
            field="version",
        )
    return parse_document(url, data, _parse_pointer_fields, what="the backup pointer", advice=POINTER_ADVICE)


def _parse_lineage(doc: Fields) -> tuple[Lineage, Lineage, str]:
    """The lineage file: (the local generation seen, the off-site one it descends from, the store id)."""
    doc.one_of("format", [LINEAGE_FORMAT])
    doc.one_of("version", [1])
    seen, off_site = doc.table("seen"), doc.table("off_site")
    return (
        Lineage(seen.integer("generation", high=MAX_GENERATION), seen.sha256("manifest")),
        Lineage(off_site.integer("generation", high=MAX_GENERATION), off_site.sha256("manifest")),
        doc.text("store"),
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
        # What this process knows of its history (see "Lineage" in the module docstring)
        self._lineage: Lineage | None = None  # an off-site generation the local history descends from
        self._ancestors: dict[int, str] = {}  # at load: committed generations kept -> MANIFEST sha256
        self._recorded: tuple[Lineage, Lineage] | None = None  # the lineage file as last written
        self._refused: str | None = None  # why the last round refused to replace the off-site copy

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Note the history the store was loaded with, and start the thread (``StateStore.load`` does it)."""
        self._establish_lineage()
        if self._thread is None and not self._stop.is_set() and self.cadence is not None:
            self._thread = threading.Thread(target=self._loop, name="persistkit-backup", daemon=True)
            self._thread.start()

    def committed(self) -> None:
        """A generation was committed: note it in the lineage file, and back it up soon.

        Noted at once (a small file, in the saving thread), so a store killed before its next round
        still proves at restart that it descends from the off-site generation, however many
        checkpoints it committed and pruned meanwhile.
        """
        if self._lineage is not None:
            n = self.store.generation
            sha = None if n is None else self._manifest_sha(n)
            if n is not None and sha is not None:
                try:
                    self._record_lineage(Lineage(n, sha), self._lineage)
                except PersistkitError as err:  # the next round proves it again; never fail a save for it
                    log.warning(
                        "persistkit: could not note the backup lineage of %s: %s", self.store.directory, err
                    )
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
                refused=self._refused,
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
        local = self._local_generation(snap)
        if self._lineage is not None:  # before any network I/O: a restart during an outage still knows
            self._record_lineage(local.lineage, self._lineage)
        remote = self._remote_store()
        found = remote.get_or_none(POINTER, limit=POINTER_LIMIT)
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
        if pointer is not None and not self._descends(pointer.lineage, local):
            self._refused = (
                f"{url}: the off-site backup is {pointer.lineage.describe()}, and this store's history "
                f"({local.lineage.describe()} in force) does not descend from it: the store fell back to an "
                "older checkpoint, was put back from an older copy (a VM snapshot), or runs on another machine "
                "too. Replacing the off-site copy would destroy the only one of that checkpoint, so nothing was "
                "uploaded or deleted. Restore it elsewhere to compare (StateStore.restore_from); if this store "
                "is the one to keep, move BACKUP.json aside in the bucket (or give backup_to a new URL)."
            )
            raise PersistkitError(self._refused, path=url)
        if pointer is not None:
            self._record_lineage(local.lineage, pointer.lineage)
        with self._state:
            self._pointer = pointer
        now = time.time()
        if pointer is None or pointer.generation < snap.generation:
            new = self._upload_generation(snap, local, store_id)
            new.parent = None if pointer is None else pointer.lineage
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
                pointer.parent,
            )
        merged = self._ship_segments(new, snap)
        if pointer is not None:
            # objects the new pointer stops naming stay RETIRE_GRACE seconds, for restores reading it now
            kept = new.keys()
            new.retired = {
                k: t for k, t in pointer.retired.items() if k not in kept and now - t < RETIRE_GRACE
            }
            new.retired.update(dict.fromkeys(pointer.keys() - kept, now))
            if new.same_content(pointer) and new.retired == pointer.retired:
                self._done(local.lineage, pointer)  # nothing new, nothing due
                return
        new.as_of = snap.taken_at
        new.uploaded_at = now
        body = new.encode()

        def conflict(current: Fetched | None) -> bytes | None:
            raise PersistkitError(
                f"{url}: the pointer changed while this round uploaded (another process backs up to this URL); "
                "the uploaded objects stay unnamed and are removed by a later round. Give each bot its own "
                "backup_to URL.",
                path=url,
            )

        # a refused swap reads the pointer again: our own write whose answer was lost is a success, a
        # server that refuses its own etag is a typed error at once (swap_until)
        swap_until(
            remote,
            POINTER,
            conflict,
            limit=POINTER_LIMIT,
            first=(None if found is None else found.etag, body),
        )
        self._done(local.lineage, new)
        if (
            pointer is None
            or pointer.generation != new.generation
            or merged
            or new.retired != pointer.retired
        ):
            self._collect_garbage(new)

    def _done(self, local: Lineage, pointer: _Pointer) -> None:
        """A round succeeded: ``pointer`` is off-site, and the local history descends from it."""
        with self._state:
            self._pointer = pointer
            self._refused = None
        self._lineage = pointer.lineage
        self._record_lineage(local, pointer.lineage)

    # -- lineage --------------------------------------------------------------------------------

    def _local_generation(self, snap: _Snapshot) -> _LocalGeneration:
        """The generation in force, read and checked against CURRENT (``_Moved`` if it moved on meanwhile)."""
        directory = self.store.directory
        mpath = os.path.join(directory, gens.gen_name(snap.generation), gens.GENERATION_MANIFEST)
        manifest_bytes = self._read_local(mpath)
        current = self._open(snap.current, "current", os.path.join(directory, gens.CURRENT))
        manifest = self._open(manifest_bytes, "manifest", mpath)
        if (
            not isinstance(current, dict)
            or current.get("generation") != snap.generation
            or current.get("manifest") != xxhash.xxh3_128_hexdigest(manifest_bytes)
            or not isinstance(manifest, dict)
            or gens.manifest_schema_problem(manifest) is not None
        ):
            raise _Moved()  # CURRENT moved on between the snapshot and this read
        history = current.get("history")
        kept = [x for x in history if type(x) is int] if isinstance(history, list) else []
        return _LocalGeneration(
            Lineage(snap.generation, _sha256(manifest_bytes)), manifest_bytes, manifest, kept
        )

    def _manifest_sha(self, n: int) -> str | None:
        path = os.path.join(self.store.directory, gens.gen_name(n), gens.GENERATION_MANIFEST)
        try:
            return _sha256(current_fs().read_bytes(path))
        except OSError:
            return None

    def _descends(self, off_site: Lineage, local: _LocalGeneration) -> bool:
        """Whether the local history provably descends from the off-site generation ``off_site``.

        Known when this process established it (a round that backed up or found it, or the lineage
        file whose generation the loaded one descends from), or when ``off_site`` is one of the
        generations the store kept (in CURRENT's history) with the same MANIFEST on disk.
        """
        if off_site == local.lineage or off_site == self._lineage:
            return True
        if self._ancestors.get(off_site.generation) == off_site.manifest:
            return True
        return (
            off_site.generation in local.history
            and self._manifest_sha(off_site.generation) == off_site.manifest
        )

    def _establish_lineage(self) -> None:
        """At load: which generations the loaded history holds, and what the lineage file proves of it."""
        directory = self.store.directory
        self._lineage, self._ancestors = None, {}
        try:
            token = gens.current_token(directory)
            if token is None:
                return
            current = self._open(token, "current", os.path.join(directory, gens.CURRENT))
            if not isinstance(current, dict) or type(current.get("generation")) is not int:
                return
            history = current.get("history")
            kept = {x for x in history if type(x) is int} if isinstance(history, list) else set()
            for n in kept | {current["generation"]}:
                sha = self._manifest_sha(n)
                if sha is not None:
                    self._ancestors[n] = sha
            record = self._read_lineage()
        except PersistkitError as err:
            log.warning(
                "persistkit backup of %s: cannot read its lineage (%s); rounds prove it again", directory, err
            )
            return
        if record is not None and self._ancestors.get(record[0].generation) == record[0].manifest:
            self._lineage = record[1]

    def _lineage_path(self) -> str:
        return os.path.join(self.store.directory, BACKUP_LINEAGE_NAME)

    def _read_lineage(self) -> tuple[Lineage, Lineage] | None:
        path = self._lineage_path()
        fs = current_fs()
        if not fs.exists(path):
            return None
        try:
            data = fs.read_bytes(path)
        except OSError as err:
            raise io_error("read", path, err) from err
        store_id = str(self.store.store_meta().get("store"))
        try:
            seen, off_site, store = parse_document(path, data, _parse_lineage, what="the backup lineage",
                                                   advice="It is rebuilt by the next round that proves it.")  # fmt: skip
        except IntegrityError as err:
            log.warning("%s", err)
            return None
        return (seen, off_site) if store == store_id else None

    def _record_lineage(self, seen: Lineage, off_site: Lineage) -> None:
        """Write down that the local generation ``seen`` descends from the off-site one ``off_site``.

        Kept in the store's directory (``.persistkit.backup.json``), so a store restarted after a crash
        proves its descent from the generation it recorded, whatever it pruned meanwhile.
        """
        if self._recorded == (seen, off_site):
            return
        doc = {"format": LINEAGE_FORMAT, "version": 1, "store": str(self.store.store_meta().get("store")),
               "seen": seen.as_dict(), "off_site": off_site.as_dict()}  # fmt: skip
        atomic_write(self._lineage_path(), json.dumps(doc, indent=1).encode() + b"\n")
        self._recorded = (seen, off_site)

    def _upload(self, key: str, data: bytes) -> dict[str, Any]:
        remote = self._remote_store()
        digest = _sha256(data)
        if not remote.put_new(key, data):
            # taken: a retried request whose first attempt got through wrote it; anything else is foreign
            existing = remote.get_or_none(key, limit=len(data))
            if existing is None or _sha256(existing.data) != digest:
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

    def _upload_generation(self, snap: _Snapshot, local: _LocalGeneration, store_id: str) -> _Pointer:
        directory = self.store.directory
        n = snap.generation
        gdir = os.path.join(directory, gens.gen_name(n))
        mpath = os.path.join(gdir, gens.GENERATION_MANIFEST)
        files = {STORE_FILE: self._read_local(os.path.join(directory, STORE_FILE)), gens.CURRENT: snap.current,
                 gens.GENERATION_MANIFEST: local.manifest_bytes}  # fmt: skip
        for name, entry in local.manifest["components"].items():
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
            for name, entry in local.manifest.get("journals", {}).items()
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
        """Delete the objects ``pointer`` does not name (it is already in place); failures only logged.

        Objects it retired stay ``RETIRE_GRACE`` seconds after they stopped being named, so a restore
        that read the previous pointer can finish; objects never named (a round that died) go once
        they are that old too.
        """
        remote = self._remote_store()
        keep = pointer.keys()
        now = time.time()
        try:
            listed = remote.list_objects(OBJECTS)
        except PersistkitError as err:
            log.warning("could not list %s to remove old backup objects: %s", remote.url_of(OBJECTS), err)
            return
        for entry in listed:
            key = f"{OBJECTS}/{entry.name}"
            if key in keep:
                continue
            since = pointer.retired.get(key, entry.modified.timestamp())
            if now - since < RETIRE_GRACE:
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


def restore(
    url: str,
    into: str | os.PathLike[str],
    *,
    password: str | None = None,
    key_file: str | os.PathLike[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> RestoreReport:
    """``StateStore.restore_from``: see the module docstring.

    A restore that finds an object gone (the bot moved on and its grace ran out) reads the pointer
    again and starts over from the newer one, for as long as the pointer keeps moving; a pointer that
    names a missing object and does not move is damage, and the error names that object.
    """
    from persistkit.io.remote import remote_store
    from persistkit.keys import check_one

    check_one(password, key_file)
    target = os.path.abspath(os.fspath(into))
    _check_target(target)
    # reads only (readers never probe: read-only credentials are enough); through the use_object_store
    # hooks like every remote store (recorded, fault-injected, served from memory in tests)
    remote = remote_store(url, storage_options=storage_options)
    pointer_url = remote.url_of(POINTER)
    tried: set[bytes] = set()
    for _ in range(RESTORE_ATTEMPTS):
        found = remote.get_or_none(POINTER, limit=POINTER_LIMIT)
        if found is None:
            raise PersistIOError(
                f"{pointer_url}: no state-store backup there (BACKUP.json is missing). Check the URL: it is the "
                "bot's backup_to=, and the bot writes it after its first committed generation.",
                errno=_errno.ENOENT,
                path=pointer_url,
                operation="restore",
            )
        pointer = parse_pointer(found.data, pointer_url)
        tried.add(found.data)
        try:
            return _restore_pointer(remote, pointer, target, password=password, key_file=key_file)
        except PersistIOError as err:
            gone = err.errno == _errno.ENOENT and err.path != target
            again = remote.get_or_none(POINTER, limit=POINTER_LIMIT) if gone else None
            if again is None or again.data in tried:
                raise  # not a race with the bot's cleanup: the pointer names an object that is not there
            # the bot moved on meanwhile (progress): restore what the pointer names now
    raise PersistkitError(
        f"{pointer_url}: the backup moved on under {RESTORE_ATTEMPTS} restores in a row; stop the bot (or raise "
        "its backup_every) and restore again.",
        path=pointer_url,
    )


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
    sweep_dead_writers(parent)  # restores killed half-way (and any other writer's debris there)
    staging = os.path.join(parent, restore_temp_name(os.path.basename(target)))
    n = pointer.generation
    gdir = os.path.join(staging, gens.gen_name(n))
    pointer_url = remote.url_of(POINTER)
    # every restored file came from a bucket object: errors name that object, never the staging copy
    sources: dict[str, str] = {staging: pointer_url}
    total = 0
    objects = 0
    with claim(staging):
        try:
            try:
                fs.mkdir(staging)
                fs.mkdir(gdir)
            except OSError as err:
                raise io_error("create directory", staging, err) from err
            for name, entry in pointer.files.items():
                local = os.path.join(staging if name in (STORE_FILE, gens.CURRENT) else gdir, name)
                sources[local] = remote.url_of(entry["key"])
                # streamed to disk and checked against the recorded sha256 before anything reads it
                remote.download_verified(entry["key"], local, entry["sha256"], entry["size"])
                total += entry["size"]
                objects += 1
            for name, journal in pointer.journals.items():
                data = bytearray()
                for seg in journal["segments"]:
                    data += remote.get_verified(seg["key"], seg["sha256"], seg["size"])
                    objects += 1
                total += len(data)
                local = os.path.join(gdir, gens.journal_file(name))
                sources[local] = pointer_url  # the journal is its segments, as the pointer lists them
                atomic_write(local, bytes(data))
            try:
                fs.fsync_dir(gdir)
                fs.fsync_dir(staging)
            except OSError as err:
                raise io_error("fsync", staging, err) from err
            try:
                store_id, components, records = _check_restored(
                    remote, pointer, staging, gdir, password, key_file
                )
            except PersistkitError as err:
                rename_paths(err, sources)
                raise
            # what the restore reports, worked out before the store appears (the times were checked)
            report = RestoreReport(
                url=remote.url,
                directory=target,
                store_id=store_id,
                generation=n,
                components=components,
                journal_records=records,
                bytes=total,
                objects=objects,
                as_of=dt.datetime.fromtimestamp(pointer.as_of, dt.UTC),
                age_seconds=max(0.0, time.time() - pointer.as_of),
                uploaded_at=dt.datetime.fromtimestamp(pointer.uploaded_at, dt.UTC),
            )
            # the restored store descends from the generation it was restored from: its backups may move on
            lineage = {"format": LINEAGE_FORMAT, "version": 1, "store": store_id,
                       "seen": pointer.lineage.as_dict(), "off_site": pointer.lineage.as_dict()}  # fmt: skip
            atomic_write(os.path.join(staging, BACKUP_LINEAGE_NAME), json.dumps(lineage, indent=1).encode())
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
            remove_tree(staging)
            raise
    return report


def _check_restored(
    remote: ObjectStore,
    pointer: _Pointer,
    staging: str,
    gdir: str,
    password: str | None,
    key_file: str | os.PathLike[str] | None,
) -> tuple[str, list[str], dict[str, int]]:
    """The store's own checks on the restored files: key, CURRENT, the generation, every journal record.

    Returns (store id, components, records per journal).
    """
    n = pointer.generation
    reader = StateStore(staging, readonly=True, password=password, key_file=key_file, autosave_every=None)
    meta = reader.store_meta()
    key = reader.resolve_key(meta)
    store_id = meta.get("store")
    if store_id != pointer.store:
        url = remote.url_of(pointer.files[STORE_FILE]["key"])
        raise IntegrityError(
            f"{url}: describes store {store_id!r}, but the pointer is of {pointer.store!r}: a spliced backup. "
            "Nothing was restored.",
            path=url,
        )
    current = gens.read_current(staging, key=key)
    if current is None or current.get("generation") != n or current.get("store") != store_id:
        url = remote.url_of(pointer.files[gens.CURRENT]["key"])
        raise IntegrityError(
            f"{url}: does not commit generation {n} of store {store_id!r}: a spliced backup. Nothing was restored.",
            path=url,
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
    pointer_url = remote.url_of(POINTER)
    for name, journal in pointer.journals.items():
        listed = loaded.journals.get(name)
        if not isinstance(listed, dict) or listed.get("first_seq") != journal["first_seq"]:
            raise IntegrityError(
                f"{pointer_url}: field journals[{name!r}] does not match generation {n}'s MANIFEST: a spliced "
                "backup. Nothing was restored.",
                path=pointer_url,
                field=f"journals[{name!r}]",
            )
        path = os.path.join(gdir, gens.journal_file(name))
        journal_reader = JournalReader.read(
            path, cipher=journal_cipher(key, store_id, name, n), first_seq=journal["first_seq"]
        )
        if journal_reader.torn or journal_reader.damage:
            raise IntegrityError(
                f"{pointer_url}: the journal segments of {name!r} do not hold whole records "
                f"({journal_reader.damage or 'a torn tail'}). Nothing was restored.",
                path=pointer_url,
                member=name,
            )
        records[name] = len(journal_reader.records)
    for name in set(loaded.journals) - set(pointer.journals):  # every checkpoint creates its journals
        atomic_write(os.path.join(gdir, gens.journal_file(name)), b"")
        records[name] = 0
    return str(store_id), sorted(loaded.components), records
