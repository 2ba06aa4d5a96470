"""``pk.inspect(path)``: say what any persistkit file is, without a key and without decrypting.

The kind is sniffed from the content, never from the name. What ``path`` is,
how it is recognised, and what ``inspect`` returns:

- model bundle: a zip holding ``manifest.json`` and ``manifest.auth``
  -> ``persistkit.format.manifest.Manifest`` (as ``persistkit.bundle.inspect``);
- training archive (``Archiver.create``): a zip holding a persistkit ``MANIFEST.json``
  -> ``persistkit.archive.VerifyReport``;
- state-store directory: a ``STORE`` file or ``gen-*`` directories
  -> ``persistkit.state.audit.StoreInfo``;
- envelope file (``STORE``, ``CURRENT``, ``MANIFEST``, ``*.pk`` components): the envelope magic
  -> ``persistkit.format.envelope.Header``;
- journal (``*.journal``): its first record's framing and checksum
  -> ``persistkit.state.audit.JournalInfo``;
- key file: one line of base64 holding 32 bytes -> ``KeyFileInfo`` (fingerprint and mode, never the key).

Only what files say about themselves is read: a bundle's manifest (its
digest is checked), envelope headers, journal framing, the fingerprint of a
key file. Nothing is decrypted. An archive is not encrypted, so inspecting one
recomputes its members' sha256 (``Archiver.verify``); problems are listed in
the report rather than raised, as in ``StoreInfo``.

Errors: a missing or unreadable path raises ``PersistIOError``; anything that
is not a persistkit file raises ``FormatError``, and a persistkit file cut off
or damaged where the kind itself is read raises ``IntegrityError``. Each names
the path.

``path`` may also be an object-store URL (``s3://bucket/models/.../x.models``,
``s3://bucket/archives/x.zip``): the object is downloaded into a private temp
directory (``remote_copy``), checked against the persistkit record beside it
when there is one (``<object>.json``: ModelStore versions and pushed archives
have one), then inspected or verified like a local file; errors name the URL.
A bad URL, a missing bucket or object, or refused credentials raise
``PersistIOError`` naming the URL with what to do.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from persistkit import naming
from persistkit.errors import FormatError, IntegrityError, PersistkitError
from persistkit.io import current_fs
from persistkit.io.fs import PathLike, describe_file_type, io_error
from persistkit.io.remote import is_url
from persistkit.io.zipio import ZIP_DAMAGE, ZIP_DAMAGE_OR_IO

if TYPE_CHECKING:  # the format and state modules load only when a file needs them
    from persistkit.archive import VerifyReport
    from persistkit.bundle import Report
    from persistkit.format.envelope import Header
    from persistkit.format.manifest import Manifest
    from persistkit.state.audit import JournalInfo, StoreInfo
    from persistkit.state.journal import Record

__all__ = ["FileReport", "Info", "KeyFileInfo", "RemoteCopy", "inspect", "remote_copy", "to_json", "verify"]

# What persistkit files look like, for every "not a persistkit file" message.
KINDS_HELP = (
    "persistkit files are: model bundles and training archives (zip files holding manifest.json or "
    "MANIFEST.json), state-store directories (a STORE file and gen-* directories), envelope files "
    "(STORE, CURRENT, MANIFEST, *.pk; they start with the bytes \\x89PKENV), journals (*.journal) and "
    "key files (one line of base64)."
)
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


@dataclass(frozen=True)
class KeyFileInfo:
    """A key file: its fingerprint (as ``persistkit keygen`` printed it) and permissions. Never the key."""

    path: str
    fingerprint: str
    mode: int

    @property
    def secure(self) -> bool:
        """Only the owner can read or write it (mode 0600 or stricter)."""
        return not self.mode & 0o077


Info: TypeAlias = "Manifest | StoreInfo | VerifyReport | Header | JournalInfo | KeyFileInfo"


@dataclass(frozen=True)
class FileReport:
    """What ``verify`` checked in a persistkit file other than a bundle (which gets ``bundle.Report``).

    ``kind``: "archive", "state store", "envelope", "journal" or "key file". ``authenticated``:
    whether MACs were checked (False for plain files, and for encrypted ones verified without
    a key). ``checked`` says in words what was read and checked; ``unchecked`` what was not.
    """

    path: Path
    kind: str
    authenticated: bool
    checked: str
    unchecked: str = ""
    info: Any = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return True  # verify raises instead of returning a failed report


@dataclass(frozen=True)
class RemoteCopy:
    """A downloaded object: its URL, the local temp copy, and the record it was checked against (or None)."""

    url: str
    path: str
    record: str | None  # URL of the persistkit record whose sha256 and size the download matched


@contextlib.contextmanager
def remote_copy(url: str, *, storage_options: Mapping[str, Any] | None = None) -> Iterator[RemoteCopy]:
    """Download the object at ``url`` into a private temp directory for the duration of the block.

    Streamed, and checked against the record beside the object when there is one (a mismatch is an
    ``IntegrityError`` before anything reads it). Persistkit errors raised in the block name ``url``
    instead of the temp copy. The copy is removed afterwards.
    """
    from persistkit.archive.remote import download_checked, name_url, open_store, split_url

    parent, name = split_url(url)
    store = open_store(parent, storage_options)
    url = store.url_of(name)
    fs = current_fs()
    directory = os.path.join(tempfile.gettempdir(), f"persistkit-fetch-{os.getpid()}-{secrets.token_hex(6)}")
    try:
        fs.mkdir(directory, mode=0o700)
    except OSError as err:
        raise io_error("create temp directory for", directory, err) from err
    local = os.path.join(directory, name)
    try:
        record = download_checked(store, name, local)
        try:
            yield RemoteCopy(url, local, None if record is None else store.url_of(name + ".json"))
        except PersistkitError as err:
            name_url(err, local, url)
            raise
    finally:
        with contextlib.suppress(OSError):
            for leftover in fs.listdir(directory):  # the copy, or an atomic temp of a failed download
                with contextlib.suppress(OSError):
                    fs.unlink(os.path.join(directory, leftover))
            fs.rmdir(directory)


def verify(
    path: PathLike,
    *,
    password: str | None = None,
    key_file: PathLike | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Report | FileReport:
    """Read and check every byte of any persistkit file; raise the typed error of the first problem.

    A bundle is checked by ``persistkit.bundle.verify`` and returns its ``Report``;
    anything else ``inspect`` recognises returns a ``FileReport``: an archive's members
    against their sha256, a state store's every committed generation (MACs too with
    ``password``/``key_file``), an envelope's checksums (and GCM tags with a key), a
    journal's every record, a key file's format. Damage raises ``IntegrityError``
    naming the file; a key for a file that is not encrypted raises ``FormatError``.
    A URL is downloaded and checked first (``remote_copy``).
    """
    if is_url(path):
        with remote_copy(str(path), storage_options=storage_options) as copy:
            return verify(copy.path, password=password, key_file=key_file)
    from persistkit.bundle import verify as verify_bundle
    from persistkit.format import manifest as mf

    source = os.path.abspath(os.fspath(path))
    fs = current_fs()
    try:
        mode = fs.stat(source).st_mode
    except OSError as err:
        raise io_error("verify", source, err) from err
    is_dir = stat.S_ISDIR(mode)
    if not is_dir and not stat.S_ISREG(mode):
        # A FIFO would block the read forever and /dev/zero would never end: refuse before opening.
        raise FormatError(
            f"{source} is not a persistkit file: it is {describe_file_type(mode)}, not a regular file or a "
            "store directory. Pass the path of a bundle, archive, store or key file.",
            path=source,
        )
    try:
        head = b"" if is_dir else _head(source, 4)
    except OSError as err:
        raise io_error("verify", source, err) from err
    if head.startswith(_ZIP_MAGICS):
        try:
            with fs.open_read(source) as raw, zipfile.ZipFile(raw) as zf:
                names = set(zf.namelist())
        except ZIP_DAMAGE_OR_IO:
            names = {mf.BUNDLE_MANIFEST}  # let the bundle reader say what is wrong, as it always has
        if mf.BUNDLE_MANIFEST in names or mf.BUNDLE_AUTH in names:
            return verify_bundle(source, password=password, key_file=key_file)
    try:
        info = inspect(source)
    except FormatError:
        if not is_dir and (source.endswith(".models") or _has_zip_directory(source)):
            # a damaged bundle: its own reader says what is wrong, as it always has
            return verify_bundle(source, password=password, key_file=key_file)
        raise
    keyed = password is not None or key_file is not None
    from persistkit.archive import VerifyReport
    from persistkit.format.envelope import Header
    from persistkit.state.audit import JournalInfo, StoreInfo

    if isinstance(info, VerifyReport):
        _no_key_for_plain(source, "a training archive", keyed)
        _raise_problems(source, info.problems)
        return FileReport(
            Path(source), "archive", False, f"{info.checked} files against MANIFEST.json", info=info
        )
    if isinstance(info, StoreInfo):
        from persistkit.state.audit import inspect_store

        if not info.encrypted:
            _no_key_for_plain(source, "a state store created without a password or key file", keyed)
        full = inspect_store(source, verify=True, password=password, key_file=key_file)
        _raise_problems(source, full.problems)
        gens = sum(1 for g in full.generations if g.status in ("current", "previous"))
        unchecked = ""
        if full.encrypted and not keyed:
            unchecked = "MACs (encrypted store, no password or key file given)"
        return FileReport(
            Path(source),
            "state store",
            full.encrypted and keyed,
            f"{gens} committed generation(s)",
            unchecked,
            full,
        )
    if isinstance(info, Header):
        return _verify_envelope(source, info, password=password, key_file=key_file)
    if isinstance(info, JournalInfo):
        _no_key_for_plain(source, "a journal on its own (its key is derived from its store's)", keyed)
        _raise_problems(source, [info.problem] if info.problem else [])
        return FileReport(Path(source), "journal", False, f"{info.records} records", info=info)
    return FileReport(Path(source), "key file", False, "its format", info=info)


def _has_zip_directory(source: str) -> bool:
    """A zip central directory or end record in the last 64 KiB (where zip readers look)."""
    try:
        with current_fs().open_read(source) as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - 65536, 0))
            tail = bytes(f.read())
    except OSError:
        return False
    return b"PK\x01\x02" in tail or b"PK\x05\x06" in tail


def _head(source: str, n: int) -> bytes:
    with current_fs().open_read(source) as f:
        return bytes(f.read(n))


def _no_key_for_plain(source: str, what: str, keyed: bool) -> None:
    if keyed:
        raise FormatError(
            f"{source} is {what}, so there is no key to check: verify it without password=/key_file=. "
            "(If it should be encrypted, its files were replaced with plain ones: restore it from a backup.)",
            path=source,
        )


def _raise_problems(source: str, problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise IntegrityError(
            f"{source}: damaged: {problems[0]}{more}. Restore it from a backup.", path=source
        )


def _verify_envelope(
    source: str, header: Header, *, password: str | None, key_file: PathLike | None
) -> FileReport:
    from persistkit.format import envelope
    from persistkit.keys import read_key_file

    keyed = password is not None or key_file is not None
    if not header.encrypted:
        _no_key_for_plain(source, "an envelope that is not encrypted", keyed)
    data = current_fs().read_bytes(source)
    if header.encrypted and not keyed:
        return FileReport(
            Path(source),
            "envelope",
            False,
            "its header and length",
            "the payload's checksums and GCM tags (encrypted, no password or key file given)",
            header,
        )
    key = read_key_file(key_file) if key_file is not None else None
    envelope.open_envelope(
        data, key=key, password=password, source=source, allow_unencrypted=not header.encrypted
    )
    how = "checksums and GCM tags" if header.encrypted else "checksums"
    return FileReport(Path(source), "envelope", header.encrypted, how, info=header)


def inspect(path: PathLike, *, storage_options: Mapping[str, Any] | None = None) -> Info:
    """Describe the persistkit file or state store at ``path``; no key needed, nothing decrypted.

    Returns, by what ``path`` holds (see the module docstring): a bundle's
    ``Manifest`` | a state store's ``StoreInfo`` | an archive's
    ``VerifyReport`` | an envelope's ``Header`` | a journal's ``JournalInfo``
    | a key file's ``KeyFileInfo``. ``to_json(info)`` turns any of them into
    JSON-ready data.

    Raises ``PersistIOError`` when ``path`` is missing or unreadable,
    ``FormatError`` when it is not a persistkit file, ``IntegrityError`` when
    it is one whose structure is damaged or cut off. A URL is downloaded and checked
    first (``remote_copy``).
    """
    if is_url(path):
        with remote_copy(str(path), storage_options=storage_options) as copy:
            return inspect(copy.path)
    source = os.path.abspath(os.fspath(path))
    fs = current_fs()
    try:
        st = fs.stat(source)
    except OSError as err:
        raise io_error("inspect", source, err) from err
    if stat.S_ISDIR(st.st_mode):
        return _inspect_directory(source)
    if not stat.S_ISREG(st.st_mode):
        raise _not_persistkit(source, "it is not a regular file or a directory")
    if st.st_size == 0:
        if source.endswith(".journal") and naming.parse_generation(os.path.basename(os.path.dirname(source))):
            # A checkpoint starts every journal empty; with no bytes to sniff, only the place can tell.
            return _journal_info(source, first_seq=0)
        raise _not_persistkit(source, "it is empty (0 bytes); if it should be one, it was truncated")
    from persistkit.format.envelope import HEADER_SPAN_MAX

    try:
        with fs.open_read(source) as f:
            head = f.read(HEADER_SPAN_MAX)
    except OSError as err:
        raise io_error("inspect", source, err) from err
    if head.startswith(_ZIP_MAGICS):
        return _inspect_zip(source)
    return _inspect_plain_file(source, head, st)


def _not_persistkit(source: str, why: str, hint: str = "") -> FormatError:
    return FormatError(f"{source} is not a persistkit file: {why}.{hint} {KINDS_HELP}", path=source)


def _inspect_directory(source: str) -> StoreInfo:
    from persistkit.state.audit import inspect_store
    from persistkit.state.store import STORE_FILE

    try:
        names = current_fs().listdir(source)
    except OSError as err:
        raise io_error("inspect", source, err) from err
    if STORE_FILE not in names and not any(naming.parse_generation(n) for n in names):
        hint = ""
        if naming.parse_generation(os.path.basename(source)):
            hint = " It looks like one generation of a state store: inspect its parent directory."
        raise _not_persistkit(source, "a directory without a STORE file or gen-* directories", hint)
    return inspect_store(source)


def _inspect_zip(source: str) -> Manifest | VerifyReport:
    from persistkit.archive import ARCHIVE_MANIFEST, Archiver
    from persistkit.bundle import inspect as inspect_bundle
    from persistkit.format import manifest as mf

    try:
        with current_fs().open_read(source) as raw, zipfile.ZipFile(raw) as zf:
            names = set(zf.namelist())
    except OSError as err:
        raise io_error("inspect", source, err) from err
    except ZIP_DAMAGE as err:
        raise _damaged_zip(source, err) from err
    if mf.BUNDLE_MANIFEST in names or mf.BUNDLE_AUTH in names:
        return inspect_bundle(source)  # checks the manifest digest; raises naming what is wrong
    archiver = Archiver(os.path.dirname(source))
    if ARCHIVE_MANIFEST in names:
        try:
            made_by_persistkit = archiver._made_by_persistkit(Path(source))
            report = archiver.verify(source)
        except ZIP_DAMAGE as err:  # what the archive reader lets through (e.g. a mangled method field)
            raise _damaged_zip(source, err) from err
        if not made_by_persistkit:
            raise _not_persistkit(
                source,
                f"a zip whose {ARCHIVE_MANIFEST} is not a persistkit archive manifest (damaged, or written by "
                "another tool)",
            )
        return report
    raise _not_persistkit(
        source,
        "a zip without a persistkit manifest",
        " It is some other zip file (an SB3 or skops file?); re-save models with persistkit.save_bundle.",
    )


def _damaged_zip(source: str, err: BaseException) -> IntegrityError:
    return IntegrityError(
        f"{source}: a zip file whose structure is damaged or truncated ({type(err).__name__}: {err}). "
        "persistkit bundles and archives are zip files; this one was cut off or overwritten. Restore it "
        "from a backup.",
        path=source,
    )


def _inspect_plain_file(source: str, head: bytes, st: os.stat_result) -> Header | JournalInfo | KeyFileInfo:
    from persistkit.format import envelope

    try:
        header = envelope.read_header(head, source=source)
    except FormatError as err:
        if head.startswith(envelope.MAGIC):
            raise  # ours, but from a newer persistkit: the message says to upgrade
        found = _key_file(source, st) or _journal(source, head)
        if found is not None:
            return found
        hint = ""
        if head[:1] in (b"\x80", b"(", b"}", b"]"):
            hint = " It looks like a pickle, which persistkit never loads."
        raise _not_persistkit(
            source, "it is neither a zip, a directory, an envelope, a journal nor a key file", hint
        ) from err
    if st.st_size != header.total_len:
        what = "truncated" if st.st_size < header.total_len else "has extra bytes appended"
        raise IntegrityError(
            f"{source}: {what}: {st.st_size} bytes, its envelope header promises {header.total_len}. The "
            "file is damaged; restore it from a backup or an older generation.",
            path=source,
        )
    return header


def _key_file(source: str, st: os.stat_result) -> KeyFileInfo | None:
    from persistkit.keys import KEY_FILE_MAX_BYTES, read_key_file

    if st.st_size > KEY_FILE_MAX_BYTES:
        return None
    try:
        key = read_key_file(source, on_insecure="ignore")
    except FormatError:
        return None
    return KeyFileInfo(source, key.fingerprint, stat.S_IMODE(st.st_mode))


def _journal(source: str, head: bytes) -> JournalInfo | None:
    """A journal if a record's framing, op and checksum hold at byte 0, or further on (damaged start)."""
    from persistkit.state import journal

    record = _first_record(source, head)
    if record is None and journal._only_garbage_follows(head, 0):
        return None
    # With the first record damaged the reader reports the damage at byte 0, whatever first_seq says.
    return _journal_info(source, first_seq=record.seq if record is not None else 0)


def _first_record(source: str, head: bytes) -> Record | None:
    from persistkit.state import journal

    if len(head) < journal.RECORD.size:
        return None
    length, _, _ = journal.RECORD.unpack_from(head)
    if length > journal.MAX_RECORD:
        return None
    data = head
    span = journal.RECORD.size + length + journal.CHECK
    if span > len(head):  # read just the first record, not a whole large foreign file
        try:
            with current_fs().open_read(source) as f:
                data = f.read(span)
        except OSError as err:
            raise io_error("inspect", source, err) from err
    return journal.parse_record(data, 0)[0]


def _journal_info(source: str, *, first_seq: int) -> JournalInfo:
    from persistkit.state.audit import describe_journal

    info = describe_journal(source, os.path.basename(source), first_seq=first_seq)
    # describe_journal names a journal inside a generation; standalone, the file may be named anything.
    info.name = os.path.basename(source).removesuffix(".journal")
    info.file = source
    return info


def to_json(info: Info) -> dict[str, Any]:
    """JSON-ready data for any result of ``inspect``; a bundle keeps its manifest's own layout."""
    from dataclasses import asdict

    from persistkit.archive import VerifyReport
    from persistkit.format.envelope import Header
    from persistkit.format.manifest import Manifest
    from persistkit.state.audit import JournalInfo, StoreInfo

    if isinstance(info, Manifest):
        return info.to_json()
    if isinstance(info, StoreInfo):
        return {"format": "persistkit.state-store", **info.to_dict()}
    if isinstance(info, VerifyReport):
        return {
            "format": "persistkit.archive",
            "path": str(info.path),
            "checked": info.checked,
            "ok": info.ok,
            "problems": list(info.problems),
        }
    if isinstance(info, Header):
        return {"format": "persistkit.envelope", **_header_json(info)}
    if isinstance(info, JournalInfo):
        return {"format": "persistkit.journal", **asdict(info)}
    return {"format": "persistkit.key-file", **asdict(info), "secure": info.secure}


def _header_json(header: Header) -> dict[str, Any]:
    enc = header.encryption
    encryption = None
    if enc is not None:
        kdf = None if enc.kdf is None else {"name": "scrypt", "n": enc.kdf.n, "r": enc.kdf.r, "p": enc.kdf.p}
        encryption = {"alg": enc.alg, "key": enc.key_source, "kdf": kdf, "segment": enc.segment}
    return {
        "version": header.version,
        "kind": header.kind,
        "codec": header.codec,
        "schema": header.schema,
        "created": header.created,
        "compression": header.compression,
        "plain_len": header.plain_len,
        "stored_len": header.stored_len,
        "payload_len": header.payload_len,
        "total_len": header.total_len,
        "encrypted": header.encrypted,
        "encryption": encryption,
        "meta": dict(header.meta),
    }
