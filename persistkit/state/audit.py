"""Audit a state store directory, read-only: ``persistkit state inspect [--verify]``, ``pk.inspect``.

It never takes the writer lock and never writes, so it is safe next to a
running bot. Without a key it reads only what files say about themselves:
envelope headers (kind, schema version, sizes), the CURRENT pointer's header
and the journals' record framing. ``verify=True`` also checks every checksum
(and, given the store's password or key file, every MAC) and that each file
of a committed generation matches its manifest; a quarantined or unfinished
generation is listed but never judged.

A torn last journal record (short, or zero-filled) is not a problem: it was
never acknowledged, and the next load drops it. A damaged record is, also the
last one: its full length is on disk, so it was written, and probably acknowledged.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from persistkit import naming
from persistkit.errors import FormatError, PersistkitError, WrongKeyError
from persistkit.format import envelope, tree
from persistkit.format.crypto import Key
from persistkit.io import current_fs
from persistkit.io.fs import io_error
from persistkit.state import generations as gens
from persistkit.state.journal import JournalReader, journal_cipher, parse_record
from persistkit.state.store import STORE_FILE, StateStore

__all__ = ["ComponentInfo", "GenerationInfo", "JournalInfo", "StoreInfo", "describe_journal", "inspect_store"]

GenStatus = Literal["current", "previous", "orphan", "uncommitted", "quarantined", "unfinished", "retired"]
# Only these are ever loaded, so only these are judged; the rest are listed for the record.
JUDGED: tuple[GenStatus, ...] = ("current", "previous")
_STATE_STATUS: dict[str, GenStatus] = {"tmp": "unfinished", "corrupt": "quarantined", "retired": "retired"}


@dataclass
class ComponentInfo:
    name: str
    file: str
    bytes: int
    schema: int | None = None
    codec: str = ""
    encrypted: bool | None = None
    problem: str = ""


@dataclass
class JournalInfo:
    name: str
    file: str
    bytes: int
    records: int = 0
    first_seq: int | None = None
    torn_bytes: int = 0
    problem: str = ""


@dataclass
class GenerationInfo:
    number: int
    directory: str
    status: GenStatus
    created: str = ""
    manifest_bytes: int = 0
    components: list[ComponentInfo] = field(default_factory=list)
    journals: list[JournalInfo] = field(default_factory=list)
    problem: str = ""

    @property
    def bytes(self) -> int:
        """Every file of the generation: manifest, components and journals."""
        return (
            self.manifest_bytes + sum(c.bytes for c in self.components) + sum(j.bytes for j in self.journals)
        )

    @property
    def problems(self) -> list[str]:
        found = [self.problem] if self.problem else []
        found += [f"{c.file}: {c.problem}" for c in self.components if c.problem]
        found += [f"{j.file}: {j.problem}" for j in self.journals if j.problem]
        return [f"{self.directory}: {p}" for p in found]


@dataclass
class StoreInfo:
    directory: str
    store_id: str | None
    encrypted: bool
    current: int | None
    generations: list[GenerationInfo]
    history: list[int] | None = None  # committed generations CURRENT lists (None: unknown without the key)
    quarantined_files: list[str] = field(default_factory=list)
    verified: bool = False
    problem: str = ""

    @property
    def problems(self) -> list[str]:
        """Everything found wrong, outside quarantined and unfinished generations."""
        found = [self.problem] if self.problem else []
        for g in self.generations:
            if g.status in JUDGED:
                found += g.problems
        return found

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for g, data in zip(self.generations, out["generations"], strict=True):
            data["bytes"] = g.bytes
        out["problems"] = self.problems
        return out


def inspect_store(
    directory: str | os.PathLike[str],
    *,
    verify: bool = False,
    password: str | None = None,
    key_file: str | os.PathLike[str] | None = None,
) -> StoreInfo:
    """Describe the store at ``directory``; ``verify`` checks every file against its manifest.

    Raises ``FormatError`` when ``directory`` is not a state store and
    ``WrongKeyError`` when the password or key file does not fit it.
    """
    fs = current_fs()
    root = os.path.abspath(os.fspath(directory))
    try:
        names = sorted(fs.listdir(root))
    except OSError as err:
        raise io_error("list state store", root, err) from err
    if STORE_FILE not in names and not any(naming.parse_generation(n) for n in names):
        raise FormatError(
            f"{root}: not a persistkit state store (no {STORE_FILE} file and no gen-* directories). "
            "Point at the directory given to StateStore(...).",
            path=root,
        )
    # A read-only store never locks or writes; it gives us the store id and the key.
    reader = StateStore(root, readonly=True, password=password, key_file=key_file, autosave_every=0)
    meta = reader.store_meta()
    store_id = meta.get("store")
    key: Key | None = None
    if verify and (password is not None or key_file is not None):
        key = reader.resolve_key(meta)
    info = StoreInfo(root, store_id, _is_encrypted(root, names, meta), None, [], verified=verify)
    current_digest = _read_current(root, info, key=key if verify else None, check=verify)

    for name in names:
        parsed = naming.parse_generation(name)
        if naming.is_quarantined(name) and not fs.is_dir(os.path.join(root, name)):
            info.quarantined_files.append(name)  # CURRENT, or a copy of a damaged journal
        if parsed is None or not fs.is_dir(os.path.join(root, name)):
            continue
        n = parsed.number
        status: GenStatus
        if parsed.state != "committed":
            status = _STATE_STATUS[parsed.state]
        elif info.current is None:
            status = "previous"  # without CURRENT a load tries every generation, newest first
        elif n == info.current:
            status = "current"
        elif n > info.current:
            status = "uncommitted"  # renamed into place, CURRENT never switched: removed on the next open
        elif info.history is not None and n not in info.history:
            status = "orphan"  # never committed, never loaded; the next writer removes it
        else:
            status = "previous"
        gen = _describe_generation(root, name, n, status)
        if verify and status in JUDGED:
            _verify_generation(
                root,
                gen,
                key=key,
                store_id=store_id,
                check_digest=current_digest if n == info.current else None,
            )
        info.generations.append(gen)
    if info.current is not None and not any(g.status == "current" for g in info.generations):
        info.problem = f"CURRENT names {gens.gen_name(info.current)}, which does not exist"
    return info


def _is_encrypted(root: str, names: list[str], meta: dict[str, Any]) -> bool:
    if "kdf" in meta:
        return True
    if gens.CURRENT in names:
        try:
            data = current_fs().read_bytes(os.path.join(root, gens.CURRENT))
            return envelope.read_header(data).encrypted
        except (OSError, PersistkitError):
            return False
    return False


def _read_current(root: str, info: StoreInfo, *, key: Key | None, check: bool) -> str | None:
    """Fill ``info.current`` from CURRENT; with ``check``, open it fully and return the manifest digest."""
    path = os.path.join(root, gens.CURRENT)
    fs = current_fs()
    if not fs.exists(path):
        return None
    try:
        header = envelope.read_header(fs.read_bytes(path), source=path)
        if not header.encrypted or (check and key is not None):
            value = gens.read_current(root, key=key)
            assert value is not None
            info.current = value["generation"]
            if value.get("store") != info.store_id:
                info.problem = f"CURRENT belongs to another store (id {value.get('store')!r})"
            history = value.get("history")
            if isinstance(history, list) and all(type(x) is int for x in history):
                info.history = list(history)
            digest = value.get("manifest")
            return digest if check and isinstance(digest, str) else None
        number = header.meta.get("generation")
        if type(number) is not int:
            raise FormatError(f"{path}: the CURRENT header names no generation.", path=path)
        info.current = number
    except WrongKeyError:
        raise
    except (OSError, PersistkitError) as err:
        info.problem = f"CURRENT is unreadable ({gens.problem_reason(err)}); the next load falls back to the newest generation"
    return None


def _describe_generation(root: str, name: str, n: int, status: GenStatus) -> GenerationInfo:
    fs = current_fs()
    gdir = os.path.join(root, name)
    gen = GenerationInfo(n, name, status)
    try:
        files = sorted(fs.listdir(gdir))
    except OSError as err:
        gen.problem = f"cannot list ({err.strerror})"
        return gen
    first_seqs: dict[str, int] = {}
    if gens.GENERATION_MANIFEST in files:
        mpath = os.path.join(gdir, gens.GENERATION_MANIFEST)
        try:
            data = fs.read_bytes(mpath)
            gen.manifest_bytes = len(data)
            header = envelope.read_header(data, source=mpath)
            gen.created = header.created
            if not header.encrypted:  # a plain manifest says where each journal starts
                manifest = tree.decode(envelope.open_envelope(data, source=mpath).payload, source=mpath)
                if isinstance(manifest, dict):
                    listed = manifest.get("journals")
                    for log, entry in (listed if isinstance(listed, dict) else {}).items():
                        if isinstance(entry, dict) and type(entry.get("first_seq")) is int:
                            first_seqs[str(log)] = entry["first_seq"]
        except (OSError, PersistkitError) as err:
            gen.problem = f"MANIFEST: {gens.problem_reason(err)}"
    elif status in JUDGED:
        gen.problem = "no MANIFEST"
    for file in files:
        path = os.path.join(gdir, file)
        if file.endswith(".pk"):
            gen.components.append(_describe_component(path, file))
        elif file.endswith(".journal"):
            first = first_seqs.get(file[: -len(".journal")])
            gen.journals.append(describe_journal(path, file, first_seq=first))
    return gen


def _describe_component(path: str, file: str) -> ComponentInfo:
    fs = current_fs()
    info = ComponentInfo(file[: -len(".pk")], file, 0)
    try:
        data = fs.read_bytes(path)
        info.bytes = len(data)
        header = envelope.read_header(data, source=path)
    except (OSError, PersistkitError) as err:
        info.problem = gens.problem_reason(err)
        return info
    info.schema, info.codec, info.encrypted = header.schema, header.codec, header.encrypted
    return info


def describe_journal(path: str, file: str, *, first_seq: int | None, cipher: object = None) -> JournalInfo:
    """Count the records of the journal at ``path`` and name any damage to an acknowledged append."""
    info = JournalInfo(file[: -len(".journal")], file, 0, first_seq=first_seq)
    try:
        data = current_fs().read_bytes(path)
    except OSError as err:
        info.problem = f"unreadable ({err.strerror})"
        return info
    info.bytes = len(data)
    if first_seq is None:  # without the manifest, the first intact record says where it starts
        record, _ = parse_record(data, 0)
        info.first_seq = first_seq = record.seq if record is not None else 0
    try:
        reader = JournalReader.read(path, cipher=cipher, first_seq=first_seq)
    except PersistkitError as err:
        info.problem = gens.problem_reason(err)
        return info
    info.records, info.torn_bytes = len(reader.records), reader.torn_bytes
    if reader.damage:
        info.problem = f"{reader.damage} (damage to an acknowledged append, not a torn write)"
    return info


def _verify_generation(
    root: str,
    gen: GenerationInfo,
    *,
    key: Key | None,
    store_id: str | None,
    check_digest: str | None,
) -> None:
    """Check every file of a committed generation against its manifest (and MACs, given the key)."""
    gdir = os.path.join(root, gen.directory)
    mpath = os.path.join(gdir, gens.GENERATION_MANIFEST)
    encrypted = any(c.encrypted for c in gen.components)
    if encrypted and key is None:
        # Checksums can still be checked; the manifest itself cannot be read.
        problem = _checksum_problem(mpath)
        if problem:
            gen.problem = f"MANIFEST: {problem}"
        for comp in gen.components:
            if not comp.problem:
                comp.problem = _checksum_problem(os.path.join(gdir, comp.file))
        return
    problems = gens.GenerationProblems(collect=True)
    loaded = gens.check_generation(
        root,
        gen.number,
        key=key,
        store_id=store_id,
        problems=problems,
        manifest_digest=check_digest,
        decode=False,
    )
    if problems.manifest:
        gen.problem = f"MANIFEST: {problems.manifest}"
    if loaded is None:
        return
    listed = loaded.components
    by_file = {c.file: c for c in gen.components}
    for name, listing in listed.items():
        described = by_file.get(listing["file"])
        if described is None:
            described = ComponentInfo(name, listing["file"], 0, listing["version"])
            gen.components.append(described)
        described.name = name
        described.problem = described.problem or problems.components.get(name, "")
    for comp in gen.components:
        if comp.file not in {e["file"] for e in listed.values()}:
            comp.problem = comp.problem or "not listed in the generation manifest"
    journals = loaded.journals
    for j in gen.journals:
        entry = journals.get(j.name)
        if entry is None:
            j.problem = j.problem or "not listed in the generation manifest"
            continue
        cipher = journal_cipher(key, store_id, j.name, gen.number)
        checked = describe_journal(
            os.path.join(gdir, j.file), j.file, first_seq=entry["first_seq"], cipher=cipher
        )
        j.records, j.first_seq, j.torn_bytes, j.problem = (
            checked.records,
            checked.first_seq,
            checked.torn_bytes,
            checked.problem,
        )
    on_disk = {j.name for j in gen.journals}
    for log, entry in journals.items():
        if log not in on_disk:  # every checkpoint creates the journals its manifest lists
            gen.journals.append(
                JournalInfo(
                    log,
                    entry["file"],
                    0,
                    first_seq=entry["first_seq"],
                    problem="missing, though the generation manifest lists it: the appends "
                    "acknowledged after this checkpoint are gone",
                )
            )


def _checksum_problem(path: str) -> str:
    """Verify an encrypted envelope's checksum without its key (the MAC needs the key)."""
    try:
        envelope.open_envelope(current_fs().read_bytes(path), source=path)
    except OSError as err:
        return f"unreadable ({err.strerror})"
    except WrongKeyError:
        return ""  # the checksum held (it is checked first); only the key to check the MAC is missing
    except PersistkitError as err:
        return gens.problem_reason(err)
    return ""
