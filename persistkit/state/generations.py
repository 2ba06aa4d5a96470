"""The on-disk layout of a state store, and the commit protocol. A storage contract::

Size: just over 500 lines: the layout, the one generation checker and the commit
protocol are one storage contract.

    store/
      .persistkit.lock                 writer lock (flock; released by the kernel if the writer dies)
      CURRENT                          envelope(kind="current"): {"generation": N, "store": id, "manifest": digest,
                                       "history": the committed generations kept, oldest first}
      gen-000007/                      one directory per committed checkpoint (names: persistkit.naming)
        MANIFEST                       envelope(kind="manifest"): generation, store id, created, the
                                       history CURRENT will list once it commits, and for each
                                       component: file, schema version, size, xxh3 digest; for each
                                       journal: file, first sequence number, salt (encrypted stores)
        <component>.pk                 envelope(kind="component", codec="tree", schema=version,
                                       meta={component, generation, store})
        <log>.journal                  appends made after this checkpoint (see journal.py)
      gen-000008.tmp-<token>/          a checkpoint being written (never read; removed on open)
      gen-000005.retired-<token>/      an old checkpoint being deleted (never read; removed on open)
      gen-000006.corrupt-<UTC ts>/     a quarantined generation (never deleted by persistkit)
      gen-000006.log.journal.corrupt-<UTC ts>
                                       a copy of a journal whose last record was damaged (never
                                       read; never deleted by persistkit)

Commit: write every file of ``gen-N.tmp-*``, fsync each, fsync the directory,
rename it to ``gen-N``, fsync the store directory, then atomically replace
``CURRENT`` (temp file, fsync, rename, fsync). A crash before ``CURRENT``
is durable leaves the previous checkpoint in force; after it, the new one.
Every component of a generation commits together.

Only generations listed in ``CURRENT``'s history were ever committed: a
``gen-N`` renamed into place whose ``CURRENT`` never landed is an orphan, is
never used as a fallback, and is removed by the next writer.

If ``CURRENT`` itself is damaged, the history recorded in the newest readable
generation's ``MANIFEST`` stands in for it: an orphan older than that
generation is still never used (nor adopted into the history). An orphan
*newer* than every committed generation cannot be told apart from a
generation whose ``CURRENT`` was lost: it is what a crash between the rename
and the ``CURRENT`` switch leaves, so it may be loaded, with a reported
fallback. No append is acknowledged while such an orphan exists (the store
refuses appends until a save removes it), so loading it loses none.

The generation number and store id are inside every component file, the
manifest and ``CURRENT``; in encrypted stores they are authenticated, so a
rolled-back, spliced or foreign file is detected.

``check_generation`` is the one place these rules are applied: loading raises
at the first problem, ``state inspect --verify`` collects them all.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
from dataclasses import dataclass, field
from typing import Any

import xxhash

from persistkit import naming
from persistkit.errors import FormatError, IntegrityError, PersistkitError, WrongKeyError
from persistkit.format import envelope, tree
from persistkit.format.crypto import Key
from persistkit.io import atomic_write, current_fs
from persistkit.io.fs import io_error
from persistkit.naming import gen_name

__all__ = [
    "CURRENT",
    "GENERATION_MANIFEST",
    "GenerationFiles",
    "GenerationProblems",
    "LoadedGeneration",
    "check_generation",
    "commit_generation",
    "gen_name",
    "list_generations",
    "problem_reason",
    "quarantine",
    "read_current",
    "read_generation",
    "remove_generation",
]

CURRENT = "CURRENT"
# A generation's manifest (not a bundle's manifest.json, nor a training archive's MANIFEST.json).
GENERATION_MANIFEST = "MANIFEST"
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")  # a component's name: also its file's


def component_file(name: str) -> str:
    return f"{name}.pk"


def journal_file(name: str) -> str:
    return f"{name}.journal"


@dataclass
class GenerationFiles:
    """What one checkpoint holds, ready to be written: encoded component states."""

    generation: int
    store_id: str
    components: dict[str, tuple[int, bytes]]  # name -> (schema version, tree-encoded state)
    journals: dict[str, int]  # log name -> first sequence number of its new journal
    journal_salts: dict[str, bytes] = field(default_factory=dict)
    history: list[int] = field(
        default_factory=list
    )  # committed generations kept, oldest first, incl. this one


def _seal(payload: bytes, *, kind: str, schema: int, meta: dict[str, Any], key: Key | None) -> bytes:
    return envelope.seal(payload, kind=kind, codec="tree", schema=schema, meta=meta, key=key)


def commit_generation(directory: str, files: GenerationFiles, *, key: Key | None) -> dict[str, int]:
    """Write and commit one generation; returns bytes written per component."""
    fs = current_fs()
    n = files.generation
    final = os.path.join(directory, gen_name(n))
    tmp = os.path.join(directory, naming.gen_temp_name(n))
    sizes: dict[str, int] = {}
    entries: dict[str, Any] = {}
    try:
        fs.mkdir(tmp)
        for name, (version, encoded) in files.components.items():
            meta = {"component": name, "generation": n, "store": files.store_id}
            sealed = _seal(encoded, kind="component", schema=version, meta=meta, key=key)
            _write_synced(os.path.join(tmp, component_file(name)), sealed)
            sizes[name] = len(sealed)
            entries[name] = {
                "file": component_file(name),
                "version": version,
                "bytes": len(sealed),
                "digest": xxhash.xxh3_128_hexdigest(sealed),
            }
        journals = {}
        for name, first in files.journals.items():
            _create_empty(os.path.join(tmp, journal_file(name)))
            journals[name] = {
                "file": journal_file(name),
                "first_seq": first,
                "salt": files.journal_salts.get(name),
            }
        manifest = {
            "generation": n,
            "store": files.store_id,
            "created": _now(),
            "components": entries,
            "journals": journals,
            "history": list(files.history or [n]),
        }
        sealed_manifest = _seal(
            tree.encode(manifest, root="manifest"),
            kind="manifest",
            schema=1,
            meta={"generation": n, "store": files.store_id},
            key=key,
        )
        _write_synced(os.path.join(tmp, GENERATION_MANIFEST), sealed_manifest)
        fs.fsync_dir(tmp)
        fs.replace(tmp, final)
        fs.fsync_dir(directory)
    except OSError as err:
        _remove_tree_quietly(tmp)
        raise io_error("write checkpoint", final, err) from err
    current = {
        "generation": n,
        "store": files.store_id,
        "manifest": xxhash.xxh3_128_hexdigest(sealed_manifest),
        "history": list(files.history or [n]),
    }
    atomic_write(
        os.path.join(directory, CURRENT),
        _seal(
            tree.encode(current, root="CURRENT"),
            kind="current",
            schema=1,
            meta={"generation": n, "store": files.store_id},
            key=key,
        ),
    )
    return sizes


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def _write_synced(path: str, data: bytes) -> None:
    fs = current_fs()
    handle = fs.create(path)
    try:
        fs.write(handle, data)
        fs.fsync(handle)
    finally:
        fs.close(handle)


def _create_empty(path: str) -> None:
    fs = current_fs()
    fs.close(fs.create(path))


def _remove_tree_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        remove_generation(path)


def retire_generation(directory: str, n: int) -> None:
    """Delete generation ``n``: first rename it out of the way (one atomic step), then remove it.

    A deletion that fails part-way therefore never leaves a half-empty ``gen-N``
    that could pass for a checkpoint; leftovers are removed on the next open.
    """
    fs = current_fs()
    retired = os.path.join(directory, naming.gen_retired_name(n))
    fs.replace(os.path.join(directory, gen_name(n)), retired)
    # The rename retired it; a failed deletion only leaves a leftover that the next writer removes.
    _remove_tree_quietly(retired)


def remove_generation(path: str) -> None:
    fs = current_fs()
    if not fs.exists(path):
        return
    for name in fs.listdir(path):
        fs.unlink(os.path.join(path, name))
    fs.rmdir(path)


def highest_generation_number(directory: str) -> int:
    """The highest number any generation ever used here, including quarantined and unfinished ones.

    New generations never reuse a number: journal keys are derived from it.
    """
    numbers = (naming.generation_number(name) for name in current_fs().listdir(directory))
    return max((n for n in numbers if n is not None), default=0)


def find_journal(directory: str, n: int, log: str) -> str | None:
    """The journal of ``log`` written after generation ``n``, also inside a quarantined directory."""
    fs = current_fs()
    for name in sorted(fs.listdir(directory)):
        parsed = naming.parse_generation(name)
        if parsed is not None and parsed.number == n and parsed.state in ("committed", "corrupt"):
            path = os.path.join(directory, name, journal_file(log))
            if fs.exists(path):
                return path
    return None


def list_generations(directory: str) -> tuple[list[int], list[str]]:
    """Committed generation numbers (ascending) and leftover temp directories."""
    fs = current_fs()
    gens, tmps = [], []
    for name in fs.listdir(directory):
        parsed = naming.parse_generation(name)
        if parsed is None:
            continue
        if parsed.state == "committed" and fs.is_dir(os.path.join(directory, name)):
            gens.append(parsed.number)
        elif parsed.state in ("tmp", "retired"):
            tmps.append(name)
    return sorted(gens), tmps


def quarantine(directory: str, name: str) -> str:
    """Rename ``name`` to ``name.corrupt-<UTC timestamp>``; never delete it. Returns the new path."""
    fs = current_fs()
    target = os.path.join(directory, naming.quarantine_name(name))
    try:
        fs.replace(os.path.join(directory, name), target)
        fs.fsync_dir(directory)
    except OSError as err:
        raise io_error("quarantine", os.path.join(directory, name), err) from err
    return target


def quarantine_copy(directory: str, source: str) -> str:
    """Keep a copy of ``source`` (a file inside a generation) as ``gen-N.<file>.corrupt-<UTC timestamp>``.

    For damaged files of a generation that stays in use (and is later pruned): the copy sits beside
    the store, is never read and never deleted by persistkit. Returns its path.
    """
    relative = os.path.relpath(source, directory).replace(os.sep, ".")
    target = os.path.join(directory, naming.quarantine_name(relative))
    try:
        atomic_write(target, current_fs().read_bytes(source))
    except OSError as err:
        raise io_error("keep a copy of", source, err) from err
    return target


def _open(data: bytes, *, key: Key | None, source: str, kind: str) -> envelope.Opened:
    opened = envelope.open_envelope(data, key=key, source=source)
    if opened.header.kind != kind:
        raise IntegrityError(
            f"{source}: holds a {opened.header.kind!r} envelope, expected {kind!r}.", path=source
        )
    return opened


def read_current(directory: str, *, key: Key | None) -> dict[str, Any] | None:
    """The CURRENT pointer, or None on a first run. Raises on damage."""
    path = os.path.join(directory, CURRENT)
    fs = current_fs()
    try:
        data = fs.read_bytes(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise io_error("read", path, err) from err
    value = tree.decode(_open(data, key=key, source=path, kind="current").payload, source=path)
    if not isinstance(value, dict) or type(value.get("generation")) is not int:
        raise FormatError(f"{path}: malformed CURRENT pointer.", path=path)
    return value


def current_token(directory: str) -> bytes | None:
    """The raw bytes of CURRENT (None if absent or unreadable): they change with every commit."""
    try:
        return current_fs().read_bytes(os.path.join(directory, CURRENT))
    except OSError:
        return None


@dataclass
class LoadedGeneration:
    generation: int
    store_id: str
    states: dict[str, tuple[int, object]]  # name -> (schema version, decoded state)
    journals: dict[str, dict[str, Any]]
    sizes: dict[str, int]
    history: list[int] | None = None  # as recorded in the manifest (None in stores written before it was)
    components: dict[str, dict[str, Any]] = field(default_factory=dict)  # the manifest's entries


class GenerationProblems:
    """What ``check_generation`` does with a problem: raise it at once, or collect every one.

    Collected problems are short reasons (the path is left out): ``manifest`` for
    the generation's MANIFEST, ``components`` per component name.
    """

    def __init__(self, *, collect: bool) -> None:
        self.collect = collect
        self.manifest = ""
        self.components: dict[str, str] = {}

    def found(
        self,
        path: str,
        reason: str,
        *,
        component: str | None = None,
        error: PersistkitError | None = None,
        cause: BaseException | None = None,
    ) -> None:
        if not self.collect:
            raise (error or IntegrityError(f"{path}: {reason}.", path=path, member=component)) from cause
        if component is None:
            self.manifest = self.manifest or reason
        else:
            self.components.setdefault(component, reason)


def problem_reason(err: BaseException) -> str:
    """A short reason for a collected problem: the OS error's text, or the typed error with its message."""
    if isinstance(err, OSError) and not isinstance(err, PersistkitError):
        return f"unreadable ({err.strerror})"
    return f"{type(err).__name__}: {err}"


def check_generation(
    directory: str,
    n: int,
    *,
    key: Key | None,
    store_id: str | None,
    problems: GenerationProblems,
    manifest_digest: str | None = None,
    wanted: set[str] | None = None,
    decode: bool = True,
    model_resolver: tree.ModelResolver | None = None,
) -> LoadedGeneration | None:
    """The one check of a committed generation; loading raises, ``state inspect --verify`` collects.

    Rules: the MANIFEST opens (MAC with a key), names generation ``n`` (else rolled back or
    moved) and this store, is the one CURRENT committed (``manifest_digest``), and keeps to its
    schema (``manifest_schema_problem``: a forged plain manifest is an error, never a crash). Every
    component it lists is there, matches its digest, opens as a component envelope, and names
    itself, ``n`` and the store (else spliced). ``WrongKeyError`` is always raised. Returns
    None when the manifest itself is unusable (collecting only).
    """
    fs = current_fs()
    gdir = os.path.join(directory, gen_name(n))
    mpath = os.path.join(gdir, GENERATION_MANIFEST)
    try:
        mdata = fs.read_bytes(mpath)
        manifest = tree.decode(_open(mdata, key=key, source=mpath, kind="manifest").payload, source=mpath)
    except WrongKeyError:
        raise
    except OSError as err:
        problems.found(mpath, f"cannot be read ({err.strerror})", cause=err)
        return None
    except PersistkitError as err:
        problems.found(mpath, problem_reason(err), error=err)
        return None
    named = manifest.get("generation") if isinstance(manifest, dict) else "?"
    if not isinstance(manifest, dict) or named != n:
        problems.found(mpath, f"names generation {named}, not {n}: a rolled-back or moved generation")
        return None
    if store_id is not None and manifest.get("store") != store_id:
        problems.found(mpath, f"belongs to another store (id {manifest.get('store')!r})")
        return None
    if manifest_digest is not None and xxhash.xxh3_128_hexdigest(mdata) != manifest_digest:
        problems.found(mpath, "is not the one CURRENT committed (replaced)")
    malformed = manifest_schema_problem(manifest)
    if malformed is not None:
        where, what = malformed
        problems.found(
            mpath,
            f"field {where} {what}: a damaged or hand-edited manifest",
            error=IntegrityError(
                f"{mpath}: field {where} {what}, so this generation cannot be trusted (a damaged or "
                "hand-edited manifest). persistkit falls back to an older generation if one is intact; "
                "otherwise restore the store from a backup.",
                path=mpath,
                field=where,
            ),
        )
        return None
    states: dict[str, tuple[int, object]] = {}
    sizes: dict[str, int] = {}
    entries: dict[str, dict[str, Any]] = dict(manifest["components"])
    for name, entry in entries.items():
        if wanted is not None and name not in wanted:
            continue
        path = os.path.join(gdir, entry["file"])
        try:
            data = fs.read_bytes(path)
        except FileNotFoundError as err:
            problems.found(path, "missing", component=name, cause=err)
            continue
        except OSError as err:
            problems.found(path, f"cannot be read ({err.strerror})", component=name, cause=err)
            continue
        if xxhash.xxh3_128_hexdigest(data) != entry["digest"]:
            problems.found(
                path, "does not match the generation manifest (replaced or damaged)", component=name
            )
            continue
        try:
            opened = _open(data, key=key, source=path, kind="component")
        except WrongKeyError:
            raise
        except PersistkitError as err:
            problems.found(path, problem_reason(err), component=name, error=err)
            continue
        meta = opened.header.meta
        if (
            meta.get("component") != name
            or meta.get("generation") != n
            or meta.get("store") != manifest["store"]
        ):
            problems.found(
                path,
                f"holds {meta.get('component')!r} of generation {meta.get('generation')} (store "
                f"{meta.get('store')!r}), not {name!r} of {n}: a spliced file",
                component=name,
            )
            continue
        sizes[name] = len(data)
        if decode:
            states[name] = (
                opened.header.schema,
                tree.decode(opened.payload, source=path, model_resolver=model_resolver),
            )
    recorded = manifest.get("history")
    history = None
    if isinstance(recorded, list) and n in recorded and all(type(x) is int for x in recorded):
        history = [x for x in recorded if x <= n]
    return LoadedGeneration(
        n, manifest["store"], states, dict(manifest.get("journals", {})), sizes, history, entries
    )


def short_repr(value: object) -> str:
    """A forged value, short enough for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _is_int(value: object, *, minimum: int = 0) -> bool:
    return type(value) is int and value >= minimum


def _component_entry_problem(entry: dict[Any, Any]) -> tuple[str, str] | None:
    if not _is_int(entry.get("version"), minimum=1):
        return "version", f"is {short_repr(entry.get('version'))}, not a schema version"
    if not _is_int(entry.get("bytes")):
        return "bytes", f"is {short_repr(entry.get('bytes'))}, not a size"
    if type(entry.get("digest")) is not str:
        return "digest", f"is {short_repr(entry.get('digest'))}, not a digest"
    return None


def _journal_entry_problem(entry: dict[Any, Any]) -> tuple[str, str] | None:
    if not _is_int(entry.get("first_seq")):
        return "first_seq", f"is {short_repr(entry.get('first_seq'))}, not a sequence number"
    if entry.get("salt") is not None and type(entry.get("salt")) is not bytes:
        return "salt", f"is {type(entry.get('salt')).__name__}, not bytes"
    return None


def manifest_schema_problem(manifest: dict[Any, Any]) -> tuple[str, str] | None:
    """(field, what is wrong) for the first field of a decoded MANIFEST that breaks its schema, else None.

    The caller checks which generation and store the manifest names. A file name must be exactly
    the one the entry's name gives (``<name>.pk``, ``<name>.journal``): nothing else is ever read.
    """
    if type(manifest.get("store")) is not str:
        return "store", "is not a store id"
    for table, file_of, check in (("components", component_file, _component_entry_problem),
                                  ("journals", journal_file, _journal_entry_problem)):  # fmt: skip
        entries = manifest.get(table, {} if table == "journals" else None)
        if not isinstance(entries, dict):
            return table, f"is {type(entries).__name__}, not a table of {table}"
        for name, entry in entries.items():
            where = f"{table}[{short_repr(name)}]"
            if type(name) is not str or not NAME_RE.fullmatch(name):
                return where, "is not a component name (letters, digits, '_', '.', '-')"
            if not isinstance(entry, dict):
                return where, f"is {type(entry).__name__}, not an entry"
            if entry.get("file") != file_of(name):
                return f"{where}.file", f"is {short_repr(entry.get('file'))}, not {file_of(name)!r}"
            problem = check(entry)
            if problem is not None:
                return f"{where}.{problem[0]}", problem[1]
    return None


def read_generation(
    directory: str,
    n: int,
    *,
    key: Key | None,
    store_id: str | None,
    manifest_digest: str | None = None,
    wanted: set[str] | None = None,
    model_resolver: tree.ModelResolver | None = None,
) -> LoadedGeneration:
    """Read and check every file of generation ``n``; raises PersistkitError naming what is wrong."""
    loaded = check_generation(
        directory,
        n,
        key=key,
        store_id=store_id,
        problems=GenerationProblems(collect=False),
        manifest_digest=manifest_digest,
        wanted=wanted,
        model_resolver=model_resolver,
    )
    assert loaded is not None  # raising mode: every problem raised
    return loaded
