"""StateStore: consistent checkpoints of every component of a long-running process.

See ``persistkit.state.generations`` for the on-disk layout and commit
protocol, and ``persistkit.state.journal`` for journaled appends, including
the one damage a load cannot detect: a journal cut exactly at a record boundary.
Reports live in ``state.reports``, how a component's state is read and put back in
``state.components``.
Why this module is over 500 lines: ``StateStore`` is one lock and one set of
fields (generation in force, history, open journal writers, spent journals) that
recovery, commit and journaling all read and change; each of their invariants
("a journal is never reopened after a failed append", "an orphan newer than the
generation in force is removed before an append is acknowledged") spans all three.
Splitting them into mixins would spread one invariant over several files; the
pieces with their own seams (generations, journal, retention, components,
reports, signals) are already modules of their own.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import logging
import os
import random
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import xxhash

from persistkit import naming
from persistkit.errors import (
    BudgetExceededError,
    FormatError,
    IntegrityError,
    MigrationError,
    NewerFormatError,
    PersistIOError,
    PersistkitError,
    UntrustedTypeError,
    WrongKeyError,
)
from persistkit.format import codecs, envelope, tree
from persistkit.format.crypto import KdfParams, Key, RecordCipher, new_salt
from persistkit.io import DirectoryLock, atomic_write, current_fs
from persistkit.io.fs import io_error
from persistkit.keys import check_one, read_key_file
from persistkit.policy.autosave import AutosaveCadence
from persistkit.policy.retention import Decision, Item, KeepLast, decide
from persistkit.state import generations as gens
from persistkit.state.bounded import BoundedLog
from persistkit.state.components import Registration, has_state_api, load_state, run_validator
from persistkit.state.journal import APPEND, CLEAR, JournalReader, JournalWriter, SyncPolicy, journal_cipher
from persistkit.state.plain import plain_kind, plain_state
from persistkit.state.reports import Checkpoint as Checkpoint
from persistkit.state.reports import ComponentReport as ComponentReport
from persistkit.state.reports import LoadReport as LoadReport
from persistkit.state.reports import Persistent as Persistent
from persistkit.state.reports import StateRecoveredWarning as StateRecoveredWarning
from persistkit.state.reports import Status

if TYPE_CHECKING:
    from persistkit.state.backup import RestoreReport, StoreBackup

__all__ = [
    "Checkpoint",
    "CheckpointObserver",
    "ComponentReport",
    "LoadReport",
    "Persistent",
    "StateStore",
    "observe_checkpoints",
]

# errors that say this program cannot read intact data; never a reason to fall back or quarantine
_NOT_DAMAGE = (WrongKeyError, MigrationError, NewerFormatError, UntrustedTypeError)

log = logging.getLogger("persistkit")
_C = TypeVar("_C")

_NAME_RE = gens.NAME_RE
STORE_FILE = "STORE"


@dataclass
class _Replay:
    """What replaying one log's journals gave."""

    items: list[tuple[int, Any]] = field(default_factory=list)
    records: int = 0
    torn_records: int = 0
    torn_bytes: int = 0
    damage: list[str] = field(default_factory=list)
    damaged_files: list[str] = field(default_factory=list)


class _JournalDamaged(Exception):
    """Carries a journal error out of the generation loop: it is never a reason to fall back."""

    def __init__(self, error: PersistkitError) -> None:
        super().__init__(str(error))
        self.error = error


class StateStore:
    """Persist registered components together, durably, with recovery and migrations.

    ``directory`` holds generations (see ``persistkit.state.generations``).
    ``readonly=True`` opens without the writer lock, for dashboards and tests.
    ``sync`` is the journal policy of registered ``BoundedLog`` components.
    ``on_corrupt="defaults"`` lets a store whose every generation is damaged
    start from defaults instead of raising ``IntegrityError``.
    ``backup_to="s3://bucket/bots/NAME"`` keeps an off-site copy, updated every
    ``backup_every`` seconds (None: only on ``backup.backup_now()`` and ``close()``)
    from a background thread that never blocks ``append()`` or ``save()``;
    ``restore_from`` brings it back. See ``persistkit.state.backup``.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        autosave_every: float | AutosaveCadence | None = 300.0,
        keep_generations: int = 3,
        password: str | None = None,
        key_file: str | os.PathLike[str] | None = None,
        readonly: bool = False,
        sync: SyncPolicy = "always",
        batch_ms: float = 5.0,
        on_corrupt: Literal["raise", "defaults"] = "raise",
        grace: float = 10.0,
        kdf: KdfParams | None = None,
        backup_to: str | None = None,
        backup_every: float | AutosaveCadence | None = 60.0,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if keep_generations < 1:
            raise ValueError("keep_generations must be at least 1")
        if sync not in ("always", "batch", "none"):
            raise ValueError(f"sync must be 'always', 'batch' or 'none', not {sync!r}")
        check_one(password, key_file)
        self.directory = os.path.abspath(os.fspath(directory))
        self.cadence = AutosaveCadence.of(autosave_every)  # validates; None: no autosave thread
        self.keep_generations = keep_generations
        self.readonly = readonly
        self.sync: SyncPolicy = sync
        self.batch_ms = batch_ms
        self.on_corrupt = on_corrupt
        self.grace = grace
        self.last_error: BaseException | None = None
        self.stop_requested: int | None = None
        self.on_final_save: Callable[[Checkpoint], None] | None = None
        self._password = password
        self._key_file = os.fspath(key_file) if key_file is not None else None
        self._kdf = kdf
        self._key: Key | None = None
        self._lock = threading.RLock()
        self._components: dict[str, Registration] = {}
        self._writers: dict[str, JournalWriter] = {}
        self._next_seq: dict[str, int] = {}
        self._generation: int | None = None
        self._history: list[int] = []  # committed generations kept, oldest first (recorded in CURRENT)
        self._orphan_left = False  # load could not remove a never-committed generation newer than CURRENT's
        # Logs whose journal in the generation in force had a failed append: never reopened (its key
        # and the failed record's nonce were used), so the next save or append starts a new generation.
        self._spent_journals: set[str] = set()
        self._atomic_depth = 0
        self._damaged_journals: list[str] = []  # found by the last load; copied aside by a writer
        self._store_id: str | None = None
        self._loaded = False
        self._closed = False
        self._last_digest: bytes | None = None
        self._stats: dict[str, Any] = {"saves": 0, "last_save_seconds": None, "bytes": {}}
        self._autosave: threading.Thread | None = None
        self._stop = threading.Event()
        self._signals: Any = None
        self._atexit_registered = False
        self._dir_lock: DirectoryLock | None = None
        self._backup: StoreBackup | None = None
        if backup_to is not None:  # off-site copies: persistkit.state.backup (no network I/O here)
            if readonly:
                raise ValueError("backup_to= needs a writable store (readonly=False)")
            from persistkit.state.backup import StoreBackup

            self._backup = StoreBackup(self, backup_to, every=backup_every, storage_options=storage_options)
        self._check_not_a_file()
        if not readonly:
            self._dir_lock = DirectoryLock(self.directory).acquire()

    def _check_not_a_file(self) -> None:
        fs = current_fs()
        if fs.exists(self.directory) and not fs.is_dir(self.directory):
            raise FormatError(
                f"{self.directory}: is not a directory, so it cannot be a state store. Point StateStore at "
                "the directory that holds (or will hold) the store's CURRENT file and gen-* directories.",
                path=self.directory,
            )

    # -- registration --------------------------------------------------------
    def register(
        self,
        name: str,
        component: _C,
        *,
        version: int = 1,
        migrations: Mapping[int, Callable[[Any], Any]] | None = None,
        max_bytes: int | None = None,
        validate: Callable[[Any], Any] | None = None,
    ) -> _C:
        """Register ``component`` under ``name``; returns the component, with its type (a
        ``BoundedLog[Trade]`` stays one)."""
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"component name {name!r} must be letters, digits, '_', '.', '-' (max 100)")
        if name in self._components:
            raise ValueError(f"component {name!r} is already registered")
        if type(version) is not int or version < 1:
            raise ValueError(f"version must be a positive int, not {version!r}")
        is_log = isinstance(component, BoundedLog)
        if not is_log and not has_state_api(component):
            raise TypeError(
                f"component {name!r} ({type(component).__name__}) needs state_dict()/load_state_dict() or "
                "__getstate__/__setstate__; a dict, a list or a numpy array can be registered as it is"
            )
        self._components[name] = Registration(
            name, component, version, dict(migrations or {}), max_bytes, validate, is_log
        )
        if isinstance(component, BoundedLog):
            component._attach(self, name)
        return component

    # -- keys -------------------------------------------------------------------
    def store_meta(self) -> dict[str, Any]:
        """The store description (store id, KDF parameters); no key needed."""
        fs = current_fs()
        path = os.path.join(self.directory, STORE_FILE)
        try:
            data = fs.read_bytes(path)
        except FileNotFoundError:
            if self.readonly:
                return {}
            meta: dict[str, Any] = {"store": new_salt().hex()[:16], "created": time.time()}
            if self._password is not None:
                params = self._kdf or KdfParams()
                meta["kdf"] = {"n": params.n, "r": params.r, "p": params.p, "salt": new_salt()}
            fs.makedirs(self.directory)
            atomic_write(path, envelope.seal(tree.encode(meta, root="STORE"), kind="store", codec="tree"))
            return meta
        except OSError as err:
            raise io_error("read", path, err) from err
        value = tree.decode(envelope.open_envelope(data, source=path).payload, source=path)
        if not isinstance(value, dict) or type(value.get("store")) is not str:
            raise FormatError(f"{path}: malformed store description.", path=path)
        return value

    def resolve_key(self, meta: Mapping[str, Any]) -> Key | None:
        """The key this store was opened with (key_file= or password=), for ``meta``; None without one."""
        if self._key_file is not None:
            return read_key_file(self._key_file)
        if self._password is not None:
            kdf = meta.get("kdf")
            if not isinstance(kdf, dict):
                raise WrongKeyError(
                    f"{self.directory}: this store was created without a password; open it without password=.",
                    path=self.directory,
                )
            params = KdfParams(n=kdf["n"], r=kdf["r"], p=kdf["p"])
            params.check(os.path.join(self.directory, STORE_FILE))
            return Key.from_password(self._password, salt=kdf["salt"], params=params)
        return None

    # -- loading ----------------------------------------------------------------
    def load(self) -> LoadReport:
        """Restore every registered component from the newest consistent checkpoint.

        If loading fails, the writer lock is released (the store is closed), so the
        caller can retry, for instance with ``on_corrupt="defaults"``.
        """
        try:
            return self._load()
        except BaseException:
            if not self.readonly and not self._loaded:
                self.abandon()
            raise

    def _load(self) -> LoadReport:
        with self._lock:
            fs = current_fs()
            self._check_not_a_file()
            if not fs.is_dir(self.directory):
                if self.readonly:
                    return self._all_defaults(None)
                fs.makedirs(self.directory)
            meta = self.store_meta()
            self._store_id = meta.get("store")
            self._key = self.resolve_key(meta)
            if not self.readonly:
                _, tmps = gens.list_generations(self.directory)
                for name in tmps:
                    gens.remove_generation(os.path.join(self.directory, name))
            report = self._load_snapshot() if self.readonly else self._load_locked()
            self._loaded = True
            if not self.readonly:
                needs_checkpoint = (
                    self._generation is None
                    or report.recovered
                    or any(
                        c.journal_records or c.torn_records or c.damaged_records or c.status == "migrated"
                        for c in report.components.values()
                    )
                )
                if needs_checkpoint:
                    # Fresh journals: never append after a replayed or torn tail (sequence
                    # numbers, and with a key the nonces, are never reused).
                    self._save_locked(force=True)
                elif not self._orphan_left:  # else appends are refused until save() removes it
                    self._open_writers()
                if self._backup is not None:
                    self._backup.start()
            return report

    READER_ATTEMPTS = 50

    def _load_snapshot(self) -> LoadReport:
        """A read-only load that is retried while a writer commits under it.

        A writer retires old generations right after it switches CURRENT, so a reader
        that started on one may find its files gone, and take that for damage. A load is
        kept only if CURRENT did not change while it ran; warnings of discarded attempts
        are dropped.
        """
        for attempt in range(self.READER_ATTEMPTS):
            last = attempt == self.READER_ATTEMPTS - 1
            before = gens.current_token(self.directory)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    report = self._load_locked()
                except _NOT_DAMAGE:
                    raise
                except PersistkitError:
                    if last or gens.current_token(self.directory) == before:
                        raise
                    time.sleep(min(0.001 * 2**attempt, 0.05))
                    continue
            if not last and gens.current_token(self.directory) != before:
                time.sleep(min(0.001 * 2**attempt, 0.05))
                continue
            for found in caught:
                warnings.warn(found.message, found.category, stacklevel=4)
            return report
        raise AssertionError("unreachable")  # pragma: no cover

    def _all_defaults(self, generation: int | None) -> LoadReport:
        comps = {
            n: ComponentReport(n, "defaults", generation, None, r.version)
            for n, r in self._components.items()
        }
        self._loaded = True
        return LoadReport(generation, comps)

    def _load_locked(self) -> LoadReport:
        failures: list[str] = []
        quarantined: list[str] = []
        current_n: int | None = None
        current: dict[str, Any] | None = None
        try:
            current = gens.read_current(self.directory, key=self._key)
            current_n = current["generation"] if current is not None else None
            if current is not None and current.get("store") != self._store_id:
                raise IntegrityError(
                    f"{os.path.join(self.directory, gens.CURRENT)}: points into another store.",
                    path=self.directory,
                )
        except WrongKeyError:
            raise
        except PersistkitError as err:
            failures.append(f"{gens.CURRENT}: {err}")
            if not self.readonly:
                quarantined.append(gens.quarantine(self.directory, gens.CURRENT))
        committed, _ = gens.list_generations(self.directory)
        if current_n is not None:
            assert current is not None
            recorded = current.get("history")
            if isinstance(recorded, list) and current_n in recorded and all(type(x) is int for x in recorded):
                history = [x for x in recorded if x <= current_n]
            else:  # a CURRENT without a history: every generation up to it counts as committed
                history = [x for x in committed if x <= current_n]
            if not self.readonly:
                for n in committed:
                    if n not in history:  # renamed into place but never committed: not acknowledged
                        try:
                            gens.retire_generation(self.directory, n)
                        except OSError as err:
                            # as after a failed save: no append until a save removes it
                            self._orphan_left |= n > current_n
                            log.warning("could not remove uncommitted %s: %s", gens.gen_name(n), err)
            candidates = [current_n] + [n for n in reversed(history) if n < current_n and n in committed]
        else:
            # No readable CURRENT: newest first; the manifest of the one that loads names the
            # history (see below), so an orphan older than it is neither loaded nor adopted.
            candidates = list(reversed(committed))
            history = list(committed)
        if not candidates:
            if failures and self.on_corrupt == "raise":
                raise IntegrityError(
                    f"{self.directory}: no readable checkpoint ({'; '.join(failures)}). Restore the store from a "
                    "backup, or open it with on_corrupt='defaults' to start over.",
                    path=self.directory,
                )
            self._generation = None
            return LoadReport(None, self._defaults_report(), quarantined, failures)

        committed_manifest = current.get("manifest") if current is not None else None
        for n in candidates:
            try:
                loaded = gens.read_generation(
                    self.directory,
                    n,
                    key=self._key,
                    store_id=self._store_id,
                    manifest_digest=committed_manifest if n == current_n else None,
                    model_resolver=self._model_resolver(),
                )
                report = self._apply(loaded, recovered=bool(failures))
            except _JournalDamaged as damaged:
                # The checkpoint itself is intact and the newest; only the appends after it are
                # damaged. An older generation would roll back acknowledged data: never fall back.
                raise damaged.error from damaged.error.__cause__
            except _NOT_DAMAGE:
                # Not damage: this program cannot read intact data (wrong key, migration, a newer
                # persistkit or an unregistered codec, an untrusted type). Falling back would roll back
                # acknowledged data and quarantine good checkpoints: refuse, change nothing.
                raise
            except PersistkitError as err:
                failures.append(f"{gens.gen_name(n)}: {err}")
                if not self.readonly and n in committed:
                    quarantined.append(gens.quarantine(self.directory, gens.gen_name(n)))
                continue
            if current_n is None and loaded.history is not None:
                history = loaded.history
                if not self.readonly:
                    for x in committed:
                        if x < n and x not in history:  # renamed into place, never committed
                            with contextlib.suppress(OSError):
                                gens.retire_generation(self.directory, x)
            self._generation = n
            self._history = [
                x for x in history if x <= n and f"{gens.gen_name(x)}" not in " ".join(quarantined)
            ]
            if n not in self._history:
                self._history.append(n)
            journal_damage = report.failures
            if not self.readonly:
                # The recovery checkpoint, and later pruning, retire this generation: keep the evidence.
                quarantined += [gens.quarantine_copy(self.directory, p) for p in self._damaged_journals]
            report.quarantined = quarantined
            report.failures = failures + journal_damage
            if journal_damage:
                warnings.warn(
                    f"state store {self.directory}: dropped damaged journal records after "
                    f"{gens.gen_name(n)}: {'; '.join(journal_damage)}",
                    StateRecoveredWarning,
                    stacklevel=4,
                )
            if failures:
                where = ", ".join(quarantined) if quarantined else "(read-only: left in place)"
                warnings.warn(
                    f"state store {self.directory}: fell back to {gens.gen_name(n)} because newer data is "
                    f"damaged; quarantined {where}. Details: {'; '.join(failures)}",
                    StateRecoveredWarning,
                    stacklevel=4,
                )
            return report
        if self.on_corrupt == "defaults":
            warnings.warn(
                f"state store {self.directory}: every checkpoint is damaged; starting from defaults as "
                f"requested (on_corrupt='defaults'). Details: {'; '.join(failures)}",
                StateRecoveredWarning,
                stacklevel=4,
            )
            self._generation = None
            return LoadReport(None, self._defaults_report(), quarantined, failures)
        raise IntegrityError(
            f"{self.directory}: every checkpoint is damaged ({'; '.join(failures)}). Quarantined copies are kept "
            "beside it; restore from a backup, or open with on_corrupt='defaults' to start over.",
            path=self.directory,
        )

    def _defaults_report(self) -> dict[str, ComponentReport]:
        for name, reg in self._components.items():
            if reg.is_log:
                self._next_seq[name] = 0
        return {n: ComponentReport(n, "defaults", None, None, r.version) for n, r in self._components.items()}

    def _model_resolver(self) -> tree.ModelResolver:
        return lambda codec, payload: codecs.decode_member(codec, payload)

    def _model_hook(self) -> tree.ModelHook:
        return codecs.model_hook

    def _apply(self, loaded: gens.LoadedGeneration, *, recovered: bool) -> LoadReport:
        """Migrate, validate and hand states to components; replay journals. Atomic per generation."""
        prepared: dict[str, tuple[Any, ComponentReport]] = {}
        for name, reg in self._components.items():
            if name not in loaded.states:
                prepared[name] = (
                    None,
                    ComponentReport(name, "defaults", loaded.generation, None, reg.version),
                )
                continue
            stored_version, state = loaded.states[name]
            state, status = self._migrate(reg, stored_version, state)
            if reg.validate is not None:
                problem = run_validator(reg.validate, state)
                if problem:
                    raise IntegrityError(
                        f"{gens.gen_name(loaded.generation)}/{name}: stored state rejected by the validator: "
                        f"{problem}",
                        member=name,
                    )
            if reg.is_log:
                _check_log_state(state, loaded.generation, name, self.directory)
            rep = ComponentReport(
                name, "recovered" if recovered else status, loaded.generation, stored_version, reg.version
            )
            prepared[name] = (state, rep)
        # journals: read everything before touching any component
        replays: dict[str, _Replay] = {}
        for name, reg in self._components.items():
            if not reg.is_log:
                continue
            state = prepared[name][0]
            first = state.get("seq", 0) if isinstance(state, dict) else 0
            try:
                replays[name] = self._read_journals(
                    name, loaded.generation, first, listed=name in loaded.journals
                )
            except PersistkitError as err:
                raise _JournalDamaged(err) from err
        damage: list[str] = []
        self._damaged_journals = []
        for name, (state, rep) in prepared.items():
            reg = self._components[name]
            if state is not None:
                load_state(reg, state)
            if reg.is_log:
                replay = replays[name]
                if state is None:
                    reg.component.load_state_dict({"items": []})
                for op, value in replay.items:
                    if op == APPEND:
                        reg.component.replay_append(value)
                    else:
                        reg.component.replay_clear()
                rep.journal_records = replay.records
                rep.torn_records, rep.torn_bytes = replay.torn_records, replay.torn_bytes
                rep.damaged_records = len(replay.damage)
                first = state.get("seq", 0) if isinstance(state, dict) else 0
                self._next_seq[name] = first + replay.records
                notes = []
                if replay.torn_records:
                    notes.append(
                        f"dropped a torn, unacknowledged last journal record ({replay.torn_bytes} bytes)"
                    )
                if replay.damage:
                    notes.append(f"dropped a damaged last journal record: {'; '.join(replay.damage)}")
                    damage += replay.damage
                    self._damaged_journals += replay.damaged_files
                rep.detail = "; ".join(notes)
        unregistered = [n for n in loaded.states if n not in self._components]
        return LoadReport(
            loaded.generation,
            {n: r for n, (_, r) in prepared.items()},
            failures=damage,
            unregistered=unregistered,
        )

    def _read_journals(self, name: str, generation: int, first: int, *, listed: bool) -> _Replay:
        """Replay the journal after ``generation`` and, after a fallback, every later one that chains on.

        Damage before the last record of the first journal raises: the appends after it were
        acknowledged, and no older generation holds them. So does a missing first journal that
        the generation's manifest lists (``listed``): every checkpoint creates its journals.
        """
        replay = _Replay()
        seq = first
        n = generation
        highest = gens.highest_generation_number(self.directory)
        while n <= highest:
            path = gens.find_journal(self.directory, n, name)
            n += 1
            if path is None:
                if n - 1 == generation and listed:
                    missing = os.path.join(self.directory, gens.gen_name(generation), gens.journal_file(name))
                    raise IntegrityError(
                        f"{missing}: the journal of {name!r} is missing, though {gens.gen_name(generation)}"
                        f"/{gens.GENERATION_MANIFEST} lists it (every checkpoint creates its journals): the appends "
                        "acknowledged after that checkpoint are gone. Restore the file from a backup; to "
                        "accept losing them, create an empty file at that path and load again.",
                        path=missing,
                        member=name,
                        field=f"journals[{name!r}]",
                    )
                continue
            cipher = self._journal_cipher(name, n - 1)
            if n - 1 == generation:
                reader = JournalReader.read(path, cipher=cipher, first_seq=seq)
            else:
                try:  # a later journal chains on only if it starts where we are
                    reader = JournalReader.read(path, cipher=cipher, first_seq=seq)
                except PersistkitError as err:
                    # Appends recorded there cannot be placed after the recovered history: say so
                    # loudly (the file stays where it is for inspection), never drop them silently.
                    warnings.warn(
                        f"state store {self.directory}: journal {path} does not continue the recovered "
                        f"history of {name!r}; its appends were not replayed ({err}).",
                        StateRecoveredWarning,
                        stacklevel=5,
                    )
                    break
            for record in reader.records:
                value = None
                if record.op == APPEND:
                    value = tree.decode(
                        record.payload,
                        source=f"{path} record {record.seq}",
                        model_resolver=self._model_resolver(),
                    )
                replay.items.append((record.op, value))
            seq += len(reader.records)
            replay.torn_records += reader.torn_records
            replay.torn_bytes += reader.torn_bytes
            if reader.damage:
                replay.damaged_files.append(path)
                replay.damage.append(
                    f"journal {path} {reader.damage}: it was probably acknowledged and is lost "
                    "(a writable store keeps a copy of the journal beside the store; restore the "
                    "append from a backup if you need it)"
                )
        replay.records = seq - first
        return replay

    def _journal_cipher(self, name: str, generation: int) -> RecordCipher | None:
        return journal_cipher(self._key, self._store_id, name, generation)

    def _migrate(self, reg: Registration, stored: int, state: Any) -> tuple[Any, Status]:
        if stored > reg.version:
            raise MigrationError(
                f"component {reg.name!r}: stored state has schema version {stored}, newer than this code "
                f"({reg.version}). Upgrade the code that defines it; persistkit never drops fields silently.",
                member=reg.name,
            )
        if stored == reg.version:
            return state, "loaded"
        for step in range(stored, reg.version):
            fn = reg.migrations.get(step)
            if fn is None:
                raise MigrationError(
                    f"component {reg.name!r}: no migration from version {step} to {step + 1} "
                    f"(register(..., migrations={{{step}: upgrade}})).",
                    member=reg.name,
                )
            try:
                state = fn(state)
            except Exception as err:
                raise MigrationError(
                    f"component {reg.name!r}: migration {step}->{step + 1} failed: {type(err).__name__}: {err}",
                    member=reg.name,
                ) from err
        return state, "migrated"

    # -- saving --------------------------------------------------------------------
    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """Hold off checkpoints inside the block, so multi-component updates are saved together."""
        with self._lock:
            self._atomic_depth += 1
            try:
                yield
            finally:
                self._atomic_depth -= 1

    def save(self) -> Checkpoint:
        """Commit every registered component as one generation; durable when it returns."""
        with self._lock:
            return self._save_locked(force=False)

    def _save_locked(self, *, force: bool) -> Checkpoint:
        observers = tuple(_checkpoint_observers)
        if not observers:
            return self._checkpoint_locked(force=force)
        for observer in observers:
            observer.begin(self)
        start = time.perf_counter()
        checkpoint: Checkpoint | None = None
        try:
            checkpoint = self._checkpoint_locked(force=force)
            return checkpoint
        finally:
            for observer in observers:
                observer.end(self, checkpoint, time.perf_counter() - start)

    def _checkpoint_locked(self, *, force: bool) -> Checkpoint:
        if self.readonly:
            raise PersistIOError(
                f"{self.directory}: store opened read-only; cannot save.", path=self.directory
            )
        if self._closed:
            raise PersistIOError(f"{self.directory}: store is closed.", path=self.directory)
        if not self._loaded:
            raise PersistkitError(
                f"{self.directory}: call load() before save(), so saved state never "
                "overwrites a checkpoint that was not read.",
                path=self.directory,
            )
        # A journal whose write failed (also in a batch flusher, or while closing) takes no more records.
        self._spent_journals.update(name for name, writer in self._writers.items() if writer.failed)
        start = time.perf_counter()
        hook = self._model_hook()
        encoded: dict[str, tuple[int, bytes]] = {}
        digest = xxhash.xxh3_128()
        for name, reg in self._components.items():
            state = self._state_of(reg)
            data = tree.encode(state, root=name, model_hook=hook)
            if reg.max_bytes is not None and len(data) > reg.max_bytes:
                raise BudgetExceededError(
                    f"component {name!r}: state is {len(data)} bytes, over its max_bytes={reg.max_bytes}; the "
                    "previous checkpoint is intact. Trim the component's history or raise the budget.",
                    member=name,
                )
            encoded[name] = (reg.version, data)
            digest.update(name.encode() + b"\0" + data)
        unchanged = self._last_digest == digest.digest()
        if not force and unchanged and self._generation is not None and not self._spent_journals:
            # Nothing changed since the last commit. If that save committed but then failed to
            # reopen the journals or to prune, or did not commit and left its generation behind,
            # finish that work now, or appends stay refused.
            if not self._prune():
                raise PersistIOError(
                    f"{self.directory}: a generation of a failed save could not be removed; appends "
                    "stay refused. Free space or fix the filesystem, then call save() again.",
                    path=self.directory,
                )
            self._open_writers()
            return Checkpoint(self._generation, dict(self._stats["bytes"]), time.perf_counter() - start, True)
        n = gens.highest_generation_number(self.directory) + 1
        logs = {name: self._next_seq.get(name, 0) for name, reg in self._components.items() if reg.is_log}
        previous_writers = self._writers
        for writer in previous_writers.values():
            writer.close()
        self._writers = {}
        history = [*self._history, n][-self.keep_generations :]
        files = gens.GenerationFiles(n, self._store_id or "", encoded, logs, history=history)
        try:
            sizes = gens.commit_generation(self.directory, files, key=self._key)
        except BaseException:
            self._after_failed_commit(n, digest.digest(), history)
            raise
        self._generation = n
        self._history = history
        self._last_digest = digest.digest()
        self._spent_journals.clear()
        self._open_writers()
        self._prune()
        if self._backup is not None:
            self._backup.committed()
        elapsed = time.perf_counter() - start
        self._stats.update(saves=self._stats["saves"] + 1, last_save_seconds=elapsed, bytes=sizes)
        return Checkpoint(n, sizes, elapsed)

    def _after_failed_commit(self, n: int, digest: bytes, history: list[int]) -> None:
        """Leave the store usable and bounded after a checkpoint failed part-way."""
        if self._current_generation_on_disk() == n:
            # CURRENT already names the new generation (only a later fsync failed): it is the
            # one in force, so journal after it; the caller still gets the error.
            self._generation = n
            self._history = history
            self._last_digest = digest
            self._spent_journals.clear()
            self._open_writers()
            self._prune()  # this is the next writer: remove what earlier failed saves left
            return
        # Not committed: remove the orphan (never acknowledged) and keep journaling after the
        # checkpoint that is still in force. If it cannot be removed, open no journal: an append
        # acknowledged now would be lost if a damaged CURRENT later left the orphan in force.
        fs = current_fs()
        orphan = os.path.join(self.directory, gens.gen_name(n))
        try:
            if fs.exists(orphan):
                gens.retire_generation(self.directory, n)
        except OSError as err:
            log.warning(
                "could not remove %s of a failed save (appends refused until save() succeeds): %s",
                gens.gen_name(n),
                err,
            )
            return
        if self._generation is not None:
            self._open_writers()

    def _state_of(self, reg: Registration) -> Any:
        comp = reg.component
        if reg.is_log:
            state = comp.state_dict()
            state["seq"] = self._next_seq.get(reg.name, 0)
            return state
        kind = plain_kind(comp)
        if kind is not None:
            return plain_state(comp, kind)
        if hasattr(comp, "state_dict"):
            return dict(comp.state_dict())
        return comp.__getstate__()

    def _current_generation_on_disk(self) -> int | None:
        try:
            current = gens.read_current(self.directory, key=self._key)
        except PersistkitError:
            return None
        return current["generation"] if current else None

    def _open_writers(self) -> None:
        if self._generation is None:
            return
        gdir = os.path.join(self.directory, gens.gen_name(self._generation))
        for name, reg in self._components.items():
            if reg.is_log and name not in self._writers and name not in self._spent_journals:
                self._writers[name] = JournalWriter(
                    os.path.join(gdir, gens.journal_file(name)),
                    sync=self.sync,
                    batch_ms=self.batch_ms,
                    next_seq=self._next_seq.get(name, 0),
                    cipher=self._journal_cipher(name, self._generation),
                )

    def retention(self, *, now: dt.datetime | None = None) -> list[Decision]:
        """Which committed generations in CURRENT's history pruning keeps, and why (the newest ``keep_generations``).

        Any other generation directory (one never committed, e.g. left by a failed save) is removed.
        """
        epoch = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)  # generation numbers order them as time would
        items = [
            Item(
                gens.gen_name(n), epoch + dt.timedelta(seconds=n), "in force" if n == self._generation else ""
            )
            for n in self._history
        ]
        return decide(KeepLast(self.keep_generations), items, now=now)

    def generations_to_keep(self) -> set[int]:
        """The generation numbers ``retention()`` keeps."""
        number = {gens.gen_name(n): n for n in self._history}
        return {number[d.item.id] for d in self.retention() if d.keep}

    def _prune(self) -> bool:
        """Retire every generation that is not among the newest ``keep_generations`` committed ones.

        That includes orphans, also those newer than the one in force (left by a failed save).
        Returns False if such an orphan is still in place (failures are logged, not raised).
        """
        try:
            committed, leftovers = gens.list_generations(self.directory)
        except OSError as err:
            log.warning("could not list %s to remove old generations: %s", self.directory, err)
            return False
        keep = self.generations_to_keep()
        newer_orphan_left = False
        for n in committed:
            if n in keep:
                continue
            try:
                gens.retire_generation(self.directory, n)
            except OSError as err:
                newer_orphan_left |= self._generation is not None and n > self._generation
                log.warning(
                    "could not remove old generation %s (retried at the next save): %s", gens.gen_name(n), err
                )
        for name in leftovers:
            if naming.generation_state(name) == "retired":
                with contextlib.suppress(OSError):
                    gens.remove_generation(os.path.join(self.directory, name))
        return not newer_orphan_left

    # -- journaling (called by BoundedLog) -------------------------------------------
    @property
    def lock(self) -> threading.RLock:
        """The store's lock: a checkpoint and a journaled append never interleave while it is held."""
        return self._lock

    def journal_append(self, name: str, item: Any) -> None:
        """Make ``item`` durable in the journal of the registered log ``name`` (per ``sync=``)."""
        payload = tree.encode(item, root=f"{name}[-1]", model_hook=self._model_hook())
        self._journal(name, APPEND, payload)

    def journal_clear(self, name: str) -> None:
        """Journal that the registered log ``name`` was cleared."""
        self._journal(name, CLEAR, b"")

    def _journal(self, name: str, op: int, payload: bytes) -> None:
        if self.readonly:
            raise PersistIOError(
                f"{self.directory}: store opened read-only; cannot append to {name!r}.", path=self.directory
            )
        if not self._loaded:
            raise PersistkitError(
                f"{self.directory}: call load() before appending to {name!r}.", path=self.directory
            )
        with self._lock:
            failed = self._writers.get(name)
            if failed is not None and failed.failed:  # e.g. a batch flush failed since the last append
                self._writers.pop(name)
                self._spent_journals.add(name)
            if name in self._spent_journals:
                self._start_fresh_journals(name)
            writer = self._writers.get(name)
            if writer is None:
                raise PersistIOError(
                    f"{self.directory}: no journal is open for {name!r}; the last checkpoint "
                    "failed. Call save() to retry.",
                    path=self.directory,
                )
            try:
                writer.append(op, payload)
            except PersistIOError:
                if writer.failed:
                    self._writers.pop(name, None)
                    self._spent_journals.add(name)
                raise
            self._next_seq[name] = writer.next_seq

    def _start_fresh_journals(self, name: str) -> None:
        """After a failed append: commit a checkpoint, which starts new journals (a new key), or raise."""
        journal = os.path.join(self.directory, gens.gen_name(self._generation or 0), gens.journal_file(name))
        if self._atomic_depth:
            raise PersistIOError(
                f"{journal}: an earlier append to {name!r} failed, so its journal takes no more records, "
                "and a new one cannot start inside an atomic() block. Call save() after the block, then "
                "append again.",
                path=journal,
            )
        try:
            self._save_locked(force=True)
        except PersistIOError as err:
            raise PersistIOError(
                f"{journal}: an earlier append to {name!r} failed and starting a new journal failed too "
                f"({err}). Nothing was recorded. Free space or fix the filesystem, then append again "
                "(or call save()).",
                errno=err.errno,
                path=journal,
            ) from err

    def flush(self) -> None:
        """Make every journaled append durable now (for sync='batch' or 'none')."""
        with self._lock:
            for writer in self._writers.values():
                writer.flush()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, *, signals: bool = True, exit_on_signal: bool = True) -> StateStore:
        """Start autosave, and (main thread only) save on SIGINT/SIGTERM; an atexit save backs it up."""
        if not self._loaded:
            self.load()
        if self.cadence is not None and self._autosave is None:
            self._autosave = threading.Thread(
                target=self._autosave_loop, name="persistkit-autosave", daemon=True
            )
            self._autosave.start()
        if signals and threading.current_thread() is threading.main_thread() and self._signals is None:
            from persistkit.state.signals import SignalSaver

            self._signals = SignalSaver(self, grace=self.grace, exit_on_signal=exit_on_signal).install()
        if not self._atexit_registered:
            atexit.register(self._atexit_save)
            self._atexit_registered = True
        return self

    def _autosave_loop(self) -> None:
        cadence = self.cadence
        assert cadence is not None
        failures = 0
        # jitter only spreads save times; it needs no cryptographic randomness
        while not self._stop.wait(cadence.delay(failures=failures, rand=random.random())):
            try:
                self.save()
                self.last_error = None
                failures = 0
            except Exception as err:  # never kill the bot: log, keep, retry (see AutosaveCadence)
                self.last_error = err
                failures += 1
                log.error("persistkit autosave of %s failed (will retry): %s", self.directory, err)

    def _atexit_save(self) -> None:
        if not self._closed and not self.readonly and self._loaded:
            try:
                self.close()
            except Exception as err:  # pragma: no cover - interpreter shutdown
                log.error("persistkit final save at exit failed: %s", err)

    def close(self) -> Checkpoint | None:
        """Final save, stop autosave, close journals and release the lock."""
        if self._closed:
            return None
        self._stop.set()
        checkpoint = None
        try:
            with self._lock:
                try:
                    if not self.readonly and self._loaded:
                        checkpoint = self._save_locked(force=False)
                finally:
                    for writer in self._writers.values():
                        writer.close()
                    self._writers = {}
                    self._closed = True
                    if self._signals is not None:
                        self._signals.uninstall()
                    if self._dir_lock is not None:
                        self._dir_lock.release()
        finally:
            if self._autosave is not None and self._autosave is not threading.current_thread():
                self._autosave.join(timeout=5)
            if self._backup is not None:  # also after a failed final save: the last committed generation
                self._backup.close(timeout=self.grace)  # a bounded last round; logs what it left behind
        return checkpoint

    def request_stop(self, signum: int) -> None:
        """Record that a stop signal arrived (the bot's loop can poll ``stop_requested``)."""
        self.stop_requested = signum

    def final_save(self, signum: int) -> Checkpoint | None:
        """The save on a stop signal: commit, tell ``on_final_save``; a failure is logged and kept in ``last_error``."""
        with self._lock:
            try:
                checkpoint = self.save()
                if self.on_final_save is not None:
                    self.on_final_save(checkpoint)
                if self._backup is not None:  # the bot is stopping: take its final checkpoint off-site now
                    self._backup.final_round()
                return checkpoint
            except Exception as err:
                self.last_error = err
                log.error("persistkit: final save on signal %d failed: %s", signum, err)
                return None

    @property
    def components(self) -> Mapping[str, Any]:
        """The registered components by name (read-only view)."""
        return types.MappingProxyType({name: reg.component for name, reg in self._components.items()})

    def abandon(self) -> None:
        """Drop the store as a killed process would: no final save (tests and crash harnesses)."""
        self._stop.set()
        if self._backup is not None:
            self._backup.stop()
        with self._lock:
            for writer in self._writers.values():
                writer.close()
            self._writers = {}
            self._closed = True
            if self._dir_lock is not None:
                self._dir_lock.release()

    _abandon = abandon  # the old private name, for callers on other branches not yet moved to abandon()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- introspection --------------------------------------------------------------------------
    @property
    def generation(self) -> int | None:
        return self._generation

    def stats(self) -> dict[str, Any]:
        """Bytes per component, last save latency, generation, journal lengths, backup lag (``backup``)."""
        with self._lock:
            return {
                "generation": self._generation,
                "saves": self._stats["saves"],
                "last_save_seconds": self._stats["last_save_seconds"],
                "bytes": dict(self._stats["bytes"]),
                "journal_records": {n: w.records for n, w in self._writers.items()},
                "last_error": repr(self.last_error) if self.last_error else None,
                "backup": self._backup.status().as_dict() if self._backup is not None else None,
            }

    def journal_positions(self) -> dict[str, int]:
        """Per open journal, the next sequence number: every record below it was acknowledged (backups)."""
        with self._lock:
            return {n: w.next_seq for n, w in self._writers.items() if not w.failed}

    @property
    def backup(self) -> StoreBackup | None:
        """The off-site copy (``backup_to=``): ``backup_now()``, ``status()``; None without one."""
        return self._backup

    @classmethod
    def restore_from(
        cls,
        url: str,
        into: str | os.PathLike[str],
        *,
        password: str | None = None,
        key_file: str | os.PathLike[str] | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> RestoreReport:
        """Bring a store backed up with ``backup_to=url`` back into the new or empty directory ``into``.

        Every object is checked against its recorded sha256 before it is parsed, the generation with
        the store's own checker; the store appears in ``into`` all at once. See ``state.backup``.
        """
        from persistkit.state.backup import restore

        return restore(url, into, password=password, key_file=key_file, storage_options=storage_options)


def _check_log_state(state: Any, generation: int, name: str, directory: str) -> None:
    """What a ``BoundedLog`` gets on load: ``{"items": list, "seq": int >= 0, ...}``; else FormatError."""
    path = os.path.join(directory, gens.gen_name(generation), gens.component_file(name))
    problem = ""
    field_name = "items"
    if not isinstance(state, Mapping):
        problem, field_name = f"is {type(state).__name__}, not a table", ""
    elif not isinstance(state.get("items"), (list, tuple)):
        problem = f"is {type(state.get('items')).__name__}, not a list of items"
    elif "seq" in state and (type(state["seq"]) is not int or state["seq"] < 0):
        problem, field_name = f"is {gens.short_repr(state['seq'])}, not a sequence number", "seq"
    if problem:
        where = f"field {field_name!r}" if field_name else "the state"
        raise FormatError(
            f"{path}: {where} of BoundedLog {name!r} {problem}: a damaged or hand-edited checkpoint. "
            "persistkit falls back to an older generation if one is intact; otherwise restore the "
            "store from a backup.",
            path=path,
            member=name,
            field=field_name or None,
        )


class CheckpointObserver(Protocol):
    """Told around every checkpoint of every store (the verifier's budgets time them this way)."""

    def begin(self, store: StateStore) -> None: ...

    def end(self, store: StateStore, checkpoint: Checkpoint | None, seconds: float) -> None:
        """``checkpoint`` is None when the checkpoint raised."""


_checkpoint_observers: list[CheckpointObserver] = []


@contextlib.contextmanager
def observe_checkpoints(observer: CheckpointObserver) -> Iterator[None]:
    """Call ``observer`` around every StateStore checkpoint while the block runs."""
    _checkpoint_observers.append(observer)
    try:
        yield
    finally:
        _checkpoint_observers.remove(observer)
