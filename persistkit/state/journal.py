"""Append-only journals for ``BoundedLog`` components.

A journal lives inside the generation directory it extends
(``gen-000007/trades.journal``) and holds the appends made after that
checkpoint. Each record is::

    u32 length | u64 sequence | u8 op | payload (length bytes) | xxh3-64 of everything before

``op`` is 1 for append (payload: one tree-encoded item) and 2 for clear.
With a store key the payload is AES-GCM encrypted under the journal's own
data key (derived per store, log and generation) with the sequence number as
nonce. A (key, nonce) pair is never used twice: a writable store checkpoints
(and so starts fresh journals) whenever it recovered one, and a journal whose
write failed is cut back to its last good record and takes no more records
(the failed record's nonce was used); the store starts a new generation.

Recovery follows protocol-aware recovery (FAST'18): a short or zero-filled
record at the end of the file is a torn append that was never acknowledged,
and is dropped and reported; a last record that is on disk in full but fails
its checksum (or is out of sequence) is damage, reported loudly; a bad record
followed by good ones is damage to acknowledged data and raises
``IntegrityError``. A journal that the generation's manifest lists but that is
missing raises ``IntegrityError`` too (every checkpoint creates its journals).

Limitation: a journal cut exactly at a record boundary, down to 0 bytes, is
indistinguishable from one that took fewer appends, so the appends after the
cut are lost without a report. Nothing outside the journal changes when an
append is acknowledged, so detecting it would need extra metadata written per
append (or, for the 0-byte case only, a journal header: a format change for
every journal reader, including ``pk.inspect``'s content sniffing). Such a cut
does not come from a crash (an append that never finished leaves a torn, short
record, which is reported); it takes a tool that truncates the file. Keep
backups of the store if that is in your threat model.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import xxhash

from persistkit.errors import IntegrityError, PersistIOError
from persistkit.io.fs import FileHandle, current_fs, io_error

if TYPE_CHECKING:
    from persistkit.format.crypto import Key, RecordCipher

__all__ = [
    "APPEND",
    "CLEAR",
    "JournalReader",
    "JournalWriter",
    "Record",
    "SyncPolicy",
    "journal_cipher",
    "parse_record",
]

log = logging.getLogger("persistkit")

SyncPolicy = Literal["always", "batch", "none"]
RECORD = struct.Struct("<IQB")
CHECK = 8
APPEND, CLEAR = 1, 2
MAX_RECORD = 64 * 1024 * 1024


@dataclass(frozen=True)
class Record:
    seq: int
    op: int
    payload: bytes


def frame(seq: int, op: int, payload: bytes) -> bytes:
    head = RECORD.pack(len(payload), seq, op)
    return head + payload + xxhash.xxh3_64_digest(head + payload)


class JournalWriter:
    """Appends records to one journal file with the chosen sync policy.

    ``always``: write and fsync before ``append`` returns (durable when it returns).
    ``batch``: records collect in memory and a flusher writes and fsyncs them every
    ``batch_ms`` milliseconds (group commit): at most that window is lost in a crash.
    ``none``: like batch without the fsync; the next checkpoint makes the data durable.
    """

    BUFFER_LIMIT = 1 << 20

    def __init__(
        self,
        path: str,
        *,
        sync: SyncPolicy = "always",
        batch_ms: float = 5.0,
        next_seq: int = 0,
        cipher: object | None = None,
    ) -> None:
        if sync not in ("always", "batch", "none"):
            raise ValueError(f"sync must be 'always', 'batch' or 'none', not {sync!r}")
        self.path = path
        self.sync = sync
        self.batch_ms = batch_ms
        self.next_seq = next_seq
        self.records = 0
        self._cipher = cipher
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self._closed = False
        self._failed = False
        self._error: BaseException | None = None
        try:
            self._handle: FileHandle = current_fs().open_append(path)
        except OSError as err:
            raise io_error("open journal", path, err) from err
        self._buffer = bytearray()
        self._flusher: threading.Thread | None = None
        if sync != "always":
            self._flusher = threading.Thread(target=self._flush_loop, name="persistkit-journal", daemon=True)
            self._flusher.start()

    def append(self, op: int, payload: bytes) -> int:
        """Write one record; returns its sequence number. Durability depends on the policy."""
        with self._lock:
            if self._closed:
                raise PersistIOError(
                    f"journal {self.path!r} is closed; call save() on the store to start a new one.",
                    path=self.path,
                )
            if self._error is not None:
                raise io_error("fsync journal (batch)", self.path, self._error) from self._error  # type: ignore[arg-type]
            seq = self.next_seq
            data = self._cipher.encrypt(seq, payload) if self._cipher is not None else payload  # type: ignore[attr-defined]
            record = frame(seq, op, data)
            if self.sync == "always":
                self._write(record, durable=True)
            else:
                self._buffer += record
                if len(self._buffer) >= self.BUFFER_LIMIT:
                    self._write_buffer(durable=False)
            self.next_seq += 1
            self.records += 1
        if self.sync != "always":
            self._dirty.set()
        return seq

    @property
    def failed(self) -> bool:
        """True once a write failed: this journal takes no more records (see ``_write``)."""
        return self._failed

    def _write(self, data: bytes | bytearray, *, durable: bool) -> None:
        """Caller holds the lock."""
        fs = current_fs()
        start = self._handle.offset
        try:
            if data:
                fs.write(self._handle, data)
            if durable:
                fs.fsync(self._handle)
        except OSError as err:
            # Nothing of the failed write was acknowledged: cut it off again, so the journal is
            # exactly as before (a later load sees no torn record). Either way this journal takes
            # no more records: the failed record's sequence number was used as a nonce under this
            # journal's key, so reusing it would repeat a (key, nonce) pair. The store starts a new
            # generation, with a new journal and key, to continue.
            self._failed = True
            self._closed = True
            self._roll_back(start)
            self._close_quietly()
            raise io_error("append to journal", self.path, err) from err

    def _roll_back(self, size: int) -> None:
        fs = current_fs()
        try:
            fs.truncate(self._handle, size)
            fs.fsync(self._handle)
        except OSError as err:
            # What remains is an unacknowledged tail after the last good record; no record will
            # follow it in this file, so a load drops it as torn.
            log.warning("could not cut a failed append off journal %s: %s", self.path, err)

    def _write_buffer(self, *, durable: bool) -> None:
        data, self._buffer = self._buffer, bytearray()
        self._write(data, durable=durable)

    def flush(self) -> None:
        """Make every record appended so far durable."""
        with self._lock:
            if self._failed:
                # The records of the failed write (by the flusher, or an earlier flush) are not on disk.
                raise PersistIOError(
                    f"journal {self.path!r}: an earlier write failed, so appends since the last successful "
                    "flush are not durable. Free space or fix the filesystem, then call save() on the store: "
                    "it checkpoints them and starts a new journal.",
                    path=self.path,
                )
            if not self._closed:
                self._write_buffer(durable=True)

    def _flush_loop(self) -> None:
        while not self._closed:
            self._dirty.wait(0.5)
            if not self._dirty.is_set() or self._closed:
                continue
            time.sleep(self.batch_ms / 1000.0)
            self._dirty.clear()
            try:
                if self.sync == "batch":
                    self.flush()
                else:
                    with self._lock:
                        if not self._closed:
                            self._write_buffer(durable=False)
            except PersistIOError as err:
                self._error = err.__cause__ or err
                return

    def _close_quietly(self) -> None:
        with contextlib.suppress(OSError):
            current_fs().close(self._handle)

    def close(self) -> None:
        if not self._closed:
            if self.sync == "batch":
                self.flush()
            elif self.sync == "none":
                with self._lock:
                    self._write_buffer(durable=False)
            # "always": every record is already durable
        with self._lock:
            if not self._closed:
                self._closed = True
                self._close_quietly()
        self._dirty.set()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join(timeout=2)


@dataclass
class JournalReader:
    """Reads a journal.

    What follows the last intact record is one of two things. A torn tail (``torn``,
    ``torn_bytes``): an append that never finished, so it was never acknowledged; its
    record is short (the file ends inside it) or zero-filled (the size grew, the data
    never landed). Or a damaged last record (``damage`` says which and how): its full
    length is on disk but its checksum fails, or it is out of sequence. That record
    was probably acknowledged, so callers must report it loudly.
    """

    path: str
    records: list[Record]
    torn: bool
    torn_bytes: int
    damage: str = ""
    damaged_seq: int | None = None

    @property
    def torn_records(self) -> int:
        return 1 if self.torn else 0

    @property
    def damaged_records(self) -> int:
        return 1 if self.damage else 0

    @classmethod
    def read(cls, path: str, *, cipher: object | None = None, first_seq: int = 0) -> JournalReader:
        fs = current_fs()
        try:
            data = fs.read_bytes(path)
        except FileNotFoundError:
            return cls(path, [], False, 0)
        except OSError as err:
            raise io_error("read journal", path, err) from err
        records: list[Record] = []
        pos = 0
        expected = first_seq
        while pos < len(data):
            record, end = parse_record(data, pos)
            if record is None or record.seq != expected:
                if not _only_garbage_follows(data, pos):
                    raise IntegrityError(
                        f"journal {path!r} is damaged at byte {pos} (record {expected}) while later records "
                        "are intact: acknowledged appends may be affected. Move the journal aside to load the "
                        "checkpoint without it, or restore it from a backup.",
                        path=path,
                        field=f"record {expected}",
                    )
                damage = _tail_damage(data, pos, expected)
                if damage:
                    return cls(path, records, False, 0, f"record {expected} at byte {pos} {damage}", expected)
                return cls(path, records, True, len(data) - pos)
            payload = record.payload
            if cipher is not None:
                payload = cipher.decrypt(record.seq, payload, source=f"{path} record {record.seq}")  # type: ignore[attr-defined]
            records.append(Record(record.seq, record.op, payload))
            expected += 1
            pos = end
        return cls(path, records, False, 0)


def _tail_damage(data: bytes, pos: int, expected: int) -> str:
    """Why the bytes from ``pos`` on are damage rather than a torn append; "" for a torn append."""
    if len(data) - pos < RECORD.size + CHECK or not any(data[pos:]):
        return ""  # cut short inside the header, or zero-filled
    length, seq, op = RECORD.unpack_from(data, pos)
    if op not in (APPEND, CLEAR) or length > MAX_RECORD:
        return "has a damaged header"
    if seq != expected:
        return f"is out of sequence (it says {seq})"
    end = pos + RECORD.size + length + CHECK
    if end > len(data) or not any(data[end - CHECK :]):
        return ""  # the file ends inside the record, or its data never landed
    return "is on disk in full but fails its checksum"


def parse_record(data: bytes, pos: int) -> tuple[Record | None, int]:
    if len(data) - pos < RECORD.size + CHECK:
        return None, pos
    length, seq, op = RECORD.unpack_from(data, pos)
    end = pos + RECORD.size + length + CHECK
    if length > MAX_RECORD or end > len(data) or op not in (APPEND, CLEAR):
        return None, pos
    body = data[pos : end - CHECK]
    if xxhash.xxh3_64_digest(body) != data[end - CHECK : end]:
        return None, pos
    return Record(seq, op, body[RECORD.size :]), end


def _only_garbage_follows(data: bytes, pos: int) -> bool:
    """True if no valid record starts anywhere after ``pos`` (a torn or zero-filled tail)."""
    for start in range(pos + 1, len(data) - RECORD.size - CHECK + 1):
        record, _ = parse_record(data, start)
        if record is not None:
            return False
    return True


def journal_cipher(key: Key | None, store_id: str | None, name: str, generation: int) -> RecordCipher | None:
    """The record cipher of log ``name`` in ``generation`` of store ``store_id``; None for a plain store.

    A fresh salt per (store, log, generation); generation numbers are never reused.
    """
    if key is None:
        return None
    from persistkit.format.crypto import RecordCipher

    salt = xxhash.xxh3_128_digest(f"{store_id}/{name}/{generation}".encode()) * 2
    return RecordCipher(key, salt)
