"""Model bundles: several models and their metadata in one encrypted, authenticated file.

::

    path = pk.save_bundle("models/x.models", {"policy": ppo, "signal": pipeline, "q_table": q},
                          metadata={"ensemble_weights": [0.6, 0.4]}, config=cfg)
    b = pk.load_bundle(path, env=env)     # key read from models/x.models.key, written at save time
    b.models["policy"].learn(1000, reset_num_timesteps=False)

The container layout, the manifest and how it is authenticated are described
in ``persistkit.format.manifest``; member encodings in
``persistkit.format.codecs``. Every save is atomic (``persistkit.io``): a
crash leaves the old bundle or the new one, whole.

Trust. An encrypted bundle is authenticated before anything in it is parsed,
so its members load with the pinned allowlists (plus ``trusted=[...]``). An
unencrypted bundle has digests but no authenticity: members that construct
objects (scikit-learn, SB3, models embedded in tree values) load only when the
caller opts in with ``trusted=True`` (the pinned allowlists) or
``trusted=[names]`` (the allowlists plus those names); otherwise
``UntrustedTypeError`` lists the types.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import importlib.metadata
import logging
import os
import platform
import re
import secrets
import stat
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persistkit import keys, naming
from persistkit.errors import (
    FormatError,
    IntegrityError,
    NotFoundError,
    PersistkitError,
    UnsafeArchiveError,
    WrongKeyError,
)
from persistkit.format import manifest as mf
from persistkit.io import atomic_writer, current_fs
from persistkit.io.atomic import close_later, keep_open
from persistkit.io.fs import PathLike, describe_file_type, io_error
from persistkit.io.lock import PublishLock

# KEY_SUFFIX and default_key_path live in persistkit.keys; re-exported here for compatibility.
from persistkit.keys import KEY_SUFFIX as KEY_SUFFIX
from persistkit.keys import default_key_path as default_key_path

__all__ = [
    "Bundle",
    "MemberReport",
    "Report",
    "VersionSkewWarning",
    "check_intact",
    "inspect",
    "load_bundle",
    "save_bundle",
    "verify",
]

log = logging.getLogger("persistkit")

# Encrypted members above this size are sealed and written segment by segment (see save_bundle).
STREAM_THRESHOLD = 1 << 20
_MAX_NAME_BYTES = 200
# Libraries whose version can change how a member decodes, per codec.
_RELEVANT = {
    "numpy": ("numpy",),
    "tree": ("numpy",),
    "sklearn": ("scikit-learn", "skops", "numpy"),
    "sklearn-trees": ("scikit-learn", "numpy"),
    "torch": ("torch", "safetensors"),
    "sb3": ("stable-baselines3", "torch", "gymnasium"),
}
_ENV_PACKAGES = ("numpy", "scikit-learn", "skops", "stable-baselines3", "gymnasium", "torch", "safetensors")


class VersionSkewWarning(UserWarning):
    """A bundle was saved under other versions of the libraries its members depend on."""


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: ``models`` by name, ``metadata`` (with ``created``, ``environment``, ...), ``manifest``."""

    path: Path
    models: dict[str, Any]
    metadata: dict[str, Any]
    manifest: mf.Manifest

    def __getitem__(self, name: str) -> Any:
        return self.models[name]

    def __contains__(self, name: object) -> bool:
        return name in self.models

    def __iter__(self) -> Iterator[str]:
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)

    def keys(self) -> Any:
        return self.models.keys()

    def __repr__(self) -> str:
        models = ", ".join(f"{name}: {type(model).__name__}" for name, model in self.models.items())
        encrypted = "encrypted" if self.manifest.encryption is not None else "plain"
        return f"<Bundle {str(self.path)!r} ({encrypted}) models={{{models}}} metadata keys={sorted(self.metadata)}>"


@dataclass(frozen=True)
class MemberReport:
    name: str
    role: str
    codec: str
    plain_len: int
    types: tuple[str, ...] = ()  # what loading would construct (sklearn / SB3 / embedded models)


@dataclass(frozen=True)
class Report:
    """What ``verify`` checked: every member's envelope, digest and binding to this bundle."""

    path: Path
    encrypted: bool
    authenticated: bool
    members: tuple[MemberReport, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return True  # verify raises instead of returning a failed report


# -- environment ------------------------------------------------------------------------


@functools.cache
def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, str | None]:
    """Versions recorded in every bundle (read from package metadata; nothing heavy is imported)."""
    from persistkit import __version__

    env: dict[str, str | None] = {"persistkit": __version__, "python": platform.python_version()}
    env.update({name: _version(name) for name in _ENV_PACKAGES})
    return env


_GITDIRS: dict[str, str] = {}


def _find_gitdir(start: str) -> str | None:
    """The .git directory of the work tree containing ``start``.

    Found ones are cached (the walk up costs ~30 us a save); "none" is not, so a
    repository created while the process runs is seen by the next save.
    """
    cached = _GITDIRS.get(start)
    if cached is not None and current_fs().exists(cached):
        return cached
    found = _walk_to_gitdir(start)
    if found is not None:
        if len(_GITDIRS) > 64:
            _GITDIRS.clear()
        _GITDIRS[start] = found
    return found


def _walk_to_gitdir(start: str) -> str | None:
    fs = current_fs()
    directory = start
    while True:
        dotgit = os.path.join(directory, ".git")
        if fs.exists(dotgit):
            break
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent
    try:
        if fs.is_file(dotgit):  # a worktree or submodule: "gitdir: <path>"
            text = fs.read_bytes(dotgit).decode().strip()
            if not text.startswith("gitdir:"):
                return None
            return os.path.join(directory, text[len("gitdir:") :].strip())
    except (OSError, UnicodeDecodeError):
        return None
    return dotgit


def _git_commit(start: str) -> str | None:
    """HEAD's commit of the git work tree containing ``start``, read from .git (no git binary needed)."""
    fs = current_fs()
    gitdir = _find_gitdir(os.path.abspath(start))
    if gitdir is None:
        return None
    try:
        head = fs.read_bytes(os.path.join(gitdir, "HEAD")).decode().strip()
        if not head.startswith("ref:"):
            return head if re.fullmatch(r"[0-9a-f]{40,64}", head) else None
        ref = head[4:].strip()
        common = gitdir
        if fs.exists(os.path.join(gitdir, "commondir")):
            common = os.path.join(gitdir, fs.read_bytes(os.path.join(gitdir, "commondir")).decode().strip())
        for base in (gitdir, common):
            loose = os.path.join(base, ref)
            if fs.is_file(loose):
                return fs.read_bytes(loose).decode().strip() or None
        packed = os.path.join(common, "packed-refs")
        if fs.is_file(packed):
            for line in fs.read_bytes(packed).decode().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref:
                    return parts[0]
    except (OSError, UnicodeDecodeError):
        return None
    return None


# -- names and keys ---------------------------------------------------------------------


def check_member_name(name: object) -> str:
    """Refuse member names that could not be a single safe archive entry."""
    if type(name) is not str or not name:
        raise UnsafeArchiveError(f"member names must be non-empty strings, not {name!r}.", member=str(name))
    problem = None
    if "/" in name or "\\" in name:
        problem = "contains a path separator"
    elif ".." in name:
        problem = "contains '..'"
    elif "\x00" in name:
        problem = "contains a NUL byte"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "contains a control character"
    elif len(name.encode("utf-8", "surrogatepass")) > _MAX_NAME_BYTES:
        problem = f"is longer than {_MAX_NAME_BYTES} bytes"
    else:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            problem = "is not valid Unicode"
    if problem:
        raise UnsafeArchiveError(
            f"member name {name!r} {problem}; use a plain name such as 'policy' or 'q_table'.", member=name
        )
    return name


# -- saving -----------------------------------------------------------------------------


def _metadata_doc(
    metadata: Mapping[str, Any] | None, config: Any, created: str, env: Mapping[str, str | None]
) -> dict[str, Any]:
    from persistkit.format.codecs.json import to_jsonable

    if metadata is not None and not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping (a dict), not {type(metadata).__name__}")
    doc: dict[str, Any] = to_jsonable(dict(metadata or {}), "metadata")
    if config is not None:
        doc["config"] = to_jsonable(config, "config")
    doc.setdefault("created", created)
    doc.setdefault("environment", dict(env))
    commit = _git_commit(os.getcwd())
    if commit is not None:
        doc.setdefault("git_commit", commit)
    return doc


def save_bundle(
    path: PathLike,
    models: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
    *,
    password: str | None = None,
    key_file: PathLike | None = None,
    encrypt: bool = True,
    compression: str = "zstd",
    config: Any = None,
    save_replay_buffer: bool = False,
    kdf: Any = None,
    level: int = 3,
) -> Path:
    """Write ``models`` and ``metadata`` to one bundle file, atomically; return its path.

    Encryption (AES-256-GCM) is on by default. ``password=`` derives the key
    with scrypt (``kdf=`` sets its cost); ``key_file=`` uses (or creates) that
    key file; with neither, the key file is ``<path>.key`` beside the bundle:
    reused when it exists, otherwise created with mode 0600 and logged at INFO
    on the ``persistkit`` logger. ``encrypt=False`` writes digests only.

    ``compression="zstd"`` compresses members where it helps (raw float arrays
    and model weights are stored as they are); ``"none"`` never compresses.
    ``config`` is stored as ``metadata["config"]``. ``save_replay_buffer``
    stores SB3 replay buffers as arrays.
    """
    if not isinstance(models, Mapping):
        raise TypeError(f"models must be a mapping of name -> model, not {type(models).__name__}")
    if compression not in ("zstd", "none"):
        raise ValueError(f"compression must be 'zstd' or 'none', not {compression!r}")
    names = [check_member_name(n) for n in models]
    target = os.path.abspath(os.fspath(path))
    if not encrypt and (password is not None or key_file is not None):
        raise ValueError("encrypt=False writes no key: drop password= / key_file=, or encrypt")
    when = dt.datetime.now(dt.UTC)
    created = when.isoformat(timespec="microseconds")
    env = environment()
    doc = _metadata_doc(metadata, config, created, env)
    fs = current_fs()
    try:
        fs.makedirs(os.path.dirname(target))
    except OSError as err:
        raise io_error("create directory for", target, err) from err

    # The key file and the bundle it opens are published as a pair: a second process saving the same
    # new path waits here, then finds and reuses the key written by the first. A key file elsewhere
    # is guarded by its own directory's lock too (taken in path order, so two savers cannot deadlock).
    guarded = {os.path.dirname(target)}
    if encrypt and password is None and key_file is not None:
        guarded.add(os.path.dirname(os.path.abspath(os.fspath(key_file))))
    with contextlib.ExitStack() as held:
        for directory in sorted(guarded):
            held.enter_context(PublishLock(directory))
        master, new_key_path = (
            keys.for_save(target, password=password, key_file=key_file, kdf=kdf) if encrypt else (None, None)
        )
        try:
            _write_bundle(target, names, models, doc, master, when, created, env, compression,
                          save_replay_buffer, level)  # fmt: skip
        except BaseException:
            if new_key_path is not None:  # a failed save leaves nothing new behind
                try:
                    fs.unlink(new_key_path)
                except OSError as err:
                    log.warning("could not remove the key file %s of a failed save: %s", new_key_path, err)
            raise
    if new_key_path is not None:
        log.info(
            "saved bundle %s; its new key was written to %s (mode 0600). Keep it: the bundle cannot be opened "
            "without it.",
            target,
            new_key_path,
        )
    else:
        log.debug("saved bundle %s", target)
    return Path(target)


def _write_bundle(
    target: str,
    names: list[str],
    models: Mapping[str, Any],
    doc: dict[str, Any],
    master: Any,
    when: dt.datetime,
    created: str,
    env: dict[str, str | None],
    compression: str,
    save_replay_buffer: bool,
    level: int,
) -> None:
    from persistkit.format.codecs import encode_member
    from persistkit.format.envelope import seal_parts, seal_stream
    from persistkit.io.zipio import ZipStreamWriter

    key_info = mf.new_key_info(master) if master is not None else None
    bundle_id = secrets.token_hex(16)
    entries: list[mf.MemberEntry] = []

    def add(zw: ZipStreamWriter, index: int, name: str, role: str, obj: Any) -> None:
        if role == "metadata":
            encoded = encode_member(obj, codec="json", name="metadata")
        else:
            encoded = encode_member(obj, name=name, save_replay_buffer=save_replay_buffer)
        comp = compression if encoded.compressible else "none"
        meta = {**encoded.meta, "bundle": bundle_id, "member": name, "index": index}
        file = mf.METADATA_FILE if role == "metadata" else mf.member_file(name)
        seal_kw: dict[str, Any] = {"kind": f"bundle-{role}", "codec": encoded.codec, "compression": comp, "key": master,
                   "meta": meta, "level": level, "created": when}  # fmt: skip
        if master is not None and memoryview(encoded.payload).nbytes > STREAM_THRESHOLD:
            # Large encrypted members are sealed segment by segment into one reused buffer and
            # written as they come: no ciphertext copy of the whole member in memory.
            stream = seal_stream(encoded.payload, **seal_kw)
            last: list[bytes] = []

            def remember_trailer(pieces: Iterator[bytes | memoryview]) -> Iterator[bytes | memoryview]:
                for piece in pieces:
                    yield piece
                last[:] = [bytes(piece)]

            zw.add_stream(file, stream.size, remember_trailer(stream.pieces))
            envelope_len, trailer = stream.size, last[0]
        else:
            pieces = seal_parts(encoded.payload, **seal_kw)
            zw.add(file, pieces)
            envelope_len, trailer = sum(memoryview(p).nbytes for p in pieces), bytes(pieces[-1])
        entries.append(
            mf.MemberEntry(
                name=name,
                role=role,
                file=file,
                codec=encoded.codec,
                compression=comp,
                plain_len=memoryview(encoded.payload).nbytes,
                envelope_len=envelope_len,
                digest=mf.digest(encoded.payload),
                envelope_digest=trailer.hex(),
                info=dict(encoded.info),
            )
        )

    replaced = keep_open(target)
    try:
        with atomic_writer(target) as writer:
            zw = ZipStreamWriter(writer.write, when=when)
            for index, name in enumerate(names):
                add(zw, index, name, "model", models[name])
            add(zw, len(names), "metadata", "metadata", doc)
            manifest = mf.Manifest(bundle_id, created, env, key_info, tuple(entries))
            manifest_bytes = mf.encode(manifest)
            zw.add(mf.MANIFEST_NAME, [manifest_bytes])
            zw.add(mf.AUTH_NAME, [mf.auth_record(manifest_bytes, master=master, info=key_info)])
            zw.finish()
    finally:
        close_later(replaced)


# -- reading ----------------------------------------------------------------------------


def _entry_is_unsafe(name: str) -> bool:
    """Absolute paths, '..' segments, drive letters, control characters: zip-slip material."""
    return naming.entry_path_problem(name, control_characters=False) is not None


class _Opened:
    """A mapped bundle whose structure and manifest have been checked (not yet the members)."""

    def __init__(self, path: PathLike) -> None:
        from persistkit.io.zipio import ZipStructureError, map_file, read_entries

        self.path = os.path.abspath(os.fspath(path))
        self.source = self.path
        try:
            mode = current_fs().stat(self.path).st_mode
        except OSError as err:
            raise io_error("open", self.path, err) from err
        if not stat.S_ISREG(mode):
            # A FIFO would block the read forever and /dev/zero would never end: refuse before opening.
            raise FormatError(
                f"{self.source} is not a persistkit bundle: it is {describe_file_type(mode)}, not a regular "
                "file. Pass the path of a bundle file (e.g. models/x.models).",
                path=self.source,
            )
        self.mapped = map_file(self.path)
        try:
            view = self.mapped.view
            try:
                entries = read_entries(view)
            except ZipStructureError as err:
                raise self._structure_error(err, view) from err
            for entry in entries:
                if _entry_is_unsafe(entry.name):
                    raise UnsafeArchiveError(
                        f"{self.source}: entry {entry.name!r} tries to escape the archive (zip-slip). This "
                        "file was crafted or mangled; do not extract it. persistkit refuses to load it.",
                        path=self.source,
                        member=entry.name,
                    )
            self.entries = entries
            by_name = {e.name: e for e in entries}
            if mf.MANIFEST_NAME not in by_name or mf.AUTH_NAME not in by_name:
                raise self._not_bundle(view, "it has no manifest.json / manifest.auth")
            for special in (mf.MANIFEST_NAME, mf.AUTH_NAME):
                if sum(e.name == special for e in entries) != 1:
                    raise IntegrityError(
                        f"{self.source}: {special} appears more than once: the bundle was tampered with. Restore "
                        "it from a backup.",
                        path=self.source,
                        member="manifest",
                    )
            m_entry, a_entry = by_name[mf.MANIFEST_NAME], by_name[mf.AUTH_NAME]
            if m_entry.size > mf.MAX_MANIFEST or a_entry.size > 4096:
                raise IntegrityError(
                    f"{self.source}: the manifest is implausibly large; the bundle is damaged.",
                    path=self.source,
                    member="manifest",
                )
            self.manifest_bytes = bytes(view[m_entry.start : m_entry.start + m_entry.size])
            auth_bytes = bytes(view[a_entry.start : a_entry.start + a_entry.size])
            self.mac = mf.check_digest(self.manifest_bytes, auth_bytes, source=self.source)
            self.manifest = mf.decode(self.manifest_bytes, source=self.source)
        except BaseException:
            self.close()
            raise

    def _structure_error(self, err: Any, view: memoryview) -> PersistkitError:
        if err.looks_like_zip:
            return IntegrityError(
                f"{self.source}: the bundle's zip structure is damaged or truncated ({err}). Restore it from a "
                "backup.",
                path=self.source,
                member=err.entry,
            )
        return self._not_bundle(view, "it is not a zip container")

    def _not_bundle(self, view: memoryview, why: str) -> FormatError:
        head = bytes(view[:8])
        hint = ""
        if head.startswith(b"\x80") or head[:1] in (b"(", b"}", b"]"):
            hint = " It looks like a pickle, which persistkit never loads."
        elif head.startswith(b"PK") and why.startswith("it has no manifest"):
            hint = (
                " It is some other zip file (an SB3 or skops file?); persistkit loads only its own bundles. "
                "Re-save the model with persistkit.save_bundle."
            )
        return FormatError(f"{self.source} is not a persistkit bundle: {why}.{hint}", path=self.source)

    def close(self) -> None:
        self.mapped.close()

    def __enter__(self) -> _Opened:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- keys --

    def master_key(
        self, *, password: str | None, key_file: PathLike | None, require_encryption: bool | str = False
    ) -> Any:
        """The checked master key (None for unencrypted bundles); the manifest MAC is verified here.

        Whether the bundle must be encrypted, and with which key, is decided by ``persistkit.keys``.
        """
        required = keys.requirement(require_encryption)
        choice = keys.for_load(self.path, password=password, key_file=key_file, required=required)
        info = self.manifest.encryption
        choice.check_encrypted(info is not None, source=self.source, member="manifest")
        if info is None:
            return None
        if choice.key is None and choice.password is None:
            raise choice.missing_key(source=self.source, key_source=info.key_source)
        master = mf.open_key(info, key=choice.key, password=choice.password, source=self.source)
        mf.check_auth(self.manifest_bytes, self.mac, master=master, info=info, source=self.source)
        return master

    # -- members --

    def check_layout(self) -> None:
        """The zip entries are exactly the manifest's members, in order, then manifest and auth;
        every codec is one this persistkit knows."""
        from persistkit.format.codecs import CODECS

        for m in self.manifest.members:
            if m.codec not in CODECS or (m.role == "metadata" and m.codec != "json"):
                raise FormatError(
                    f"{self.source}: member {m.name!r} uses codec {m.codec!r}, which this persistkit does not "
                    f"know (it knows {', '.join(sorted(CODECS))}). It may come from a newer persistkit: upgrade "
                    "to read it. persistkit never falls back to pickle.",
                    path=self.source,
                    member=m.name,
                )
        expected = [m.file for m in self.manifest.members] + [mf.MANIFEST_NAME, mf.AUTH_NAME]
        actual = [e.name for e in self.entries]
        if actual == expected:
            return
        by_file = {m.file: m.name for m in self.manifest.members}
        twice = next((n for n in actual if actual.count(n) > 1), None)
        missing = next((n for n in expected if n not in actual), None)
        extra = next((n for n in actual if n not in expected), None)
        if twice is not None:
            member, what = by_file.get(twice, twice), f"{twice} appears twice"
        elif missing is not None:
            member, what = (
                by_file.get(missing, missing),
                f"member {by_file.get(missing, missing)!r} is missing",
            )
        elif extra is not None:
            member, what = extra, f"entry {extra!r} is not listed in the manifest (added or copied in)"
        else:
            moved = next(a for a, e in zip(actual, expected, strict=True) if a != e)
            member, what = by_file.get(moved, moved), f"{moved} is out of place (members were reordered)"
        raise IntegrityError(
            f"{self.source}: {what}. The bundle was altered after it was written; restore it from a backup.",
            path=self.source,
            member=member,
        )

    def open_member(
        self,
        index: int,
        entry: mf.MemberEntry,
        master: Any,
        *,
        plaintext_digest: bool = True,
        keyless: bool = False,
    ) -> Any:
        """Verify one member and return its opened envelope (``.view`` may point into the mapping).

        ``plaintext_digest=False`` skips re-hashing the plaintext: the envelope's own checks (trailer,
        GCM tags, exact lengths) already tie its bytes to ``envelope_digest`` in the manifest, so the
        plaintext digest adds no detection there; ``verify`` checks it anyway.

        ``keyless=True`` (an encrypted member, no key at hand): check what needs no key, the member's
        length, its digest in the manifest and the envelope checksum over every byte, and return None.
        """
        from persistkit.format.envelope import TRAILER, open_envelope

        source = f"{self.source}:{entry.name}"
        zentry = self.entries[index]
        view = self.mapped.view[zentry.start : zentry.start + zentry.size]

        def altered(what: str) -> IntegrityError:
            return IntegrityError(
                f"{self.source}: member {entry.name!r} {what}. It was altered, swapped or copied in from another "
                "bundle after the bundle was written; restore the bundle from a backup.",
                path=self.source,
                member=entry.name,
            )

        if zentry.size != entry.envelope_len:
            raise altered(f"is {zentry.size} bytes, the manifest says {entry.envelope_len}")
        if bytes(view[zentry.size - TRAILER :]).hex() != entry.envelope_digest:
            raise altered("does not match its digest in the manifest")
        try:
            opened = open_envelope(view, key=master, source=source)
        except WrongKeyError:
            if keyless:  # the envelope checks its checksum before it asks for a key
                return None
            raise
        except PersistkitError as err:
            if err.member is None:
                err.member = entry.name
            raise
        header = opened.header
        meta = header.meta
        if (
            header.kind != f"bundle-{entry.role}"
            or header.codec != entry.codec
            or meta.get("bundle") != self.manifest.bundle_id
            or meta.get("member") != entry.name
            or meta.get("index") != index
        ):
            raise altered(
                "belongs to another bundle or position (its sealed header disagrees with the manifest)"
            )
        if header.plain_len != entry.plain_len or (
            plaintext_digest and mf.digest(opened.view) != entry.digest
        ):
            raise altered("has content that does not match the manifest digest")
        return opened


def _relevant_skew(manifest: mf.Manifest) -> list[tuple[str, str | None, str | None]]:
    packages: list[str] = []
    for m in manifest.members:
        for name in _RELEVANT.get(m.codec, ()):
            if name not in packages:
                packages.append(name)
    now = environment()
    return [
        (name, manifest.environment.get(name), now.get(name))
        for name in packages
        if manifest.environment.get(name) is not None and manifest.environment.get(name) != now.get(name)
    ]


def _warn_skew(manifest: mf.Manifest, source: str) -> None:
    skew = _relevant_skew(manifest)
    if not skew:
        return
    saved = ", ".join(f"{n} {old}" for n, old, _ in skew)
    current = ", ".join(f"{n} {new or 'not installed'}" for n, _, new in skew)
    warnings.warn(
        f"{source} was saved with {saved}; this environment has {current}. It loaded, but check the models "
        "behave as before, then re-save the bundle to record the new versions.",
        VersionSkewWarning,
        stacklevel=3,
    )


def _trust_for(
    opened: _Opened, entry: mf.MemberEntry, payload: Any, trusted: Sequence[str] | bool, encrypted: bool
) -> Sequence[str] | bool:
    from persistkit.errors import UntrustedTypeError
    from persistkit.format.codecs import CONSTRUCTING, audit_member

    if encrypted or trusted is True or (not isinstance(trusted, bool) and len(trusted) > 0):
        return trusted
    if entry.codec not in CONSTRUCTING and entry.codec != "tree":
        return trusted
    types = audit_member(entry.codec, payload, source=f"{opened.source}:{entry.name}")
    if not types:
        return trusted
    raise UntrustedTypeError(
        f"{opened.source}: member {entry.name!r} would construct {', '.join(types)}, and the bundle is not "
        "encrypted, so nothing proves who wrote it. If you trust its origin, pass trusted=True (persistkit's "
        "pinned allowlists) or trusted=[...] with extra type names.",
        types=types,
        path=opened.source,
        member=entry.name,
    )


def load_bundle(
    path: PathLike,
    *,
    password: str | None = None,
    key_file: PathLike | None = None,
    trusted: Sequence[str] | bool = False,
    env: object = None,
    device: str = "cpu",
    members: Sequence[str] | None = None,
    require_encryption: bool | str = False,
) -> Bundle:
    """Verify and load a bundle. ``members`` limits which models are rebuilt (all are verified).

    A bundle must be encrypted (a plain one is refused as a forged downgrade)
    when ``password=`` or ``key_file=`` is given, when its key file is beside
    it, or with ``require_encryption`` (True, or the reason as text for the
    error message); see ``persistkit.keys``.

    ``env`` and ``device`` are handed to SB3 models (and ``device`` to torch
    members). Raises WrongKeyError (key), IntegrityError (damage, tampering;
    names the member), FormatError (not a bundle, unknown codec, newer format),
    UntrustedTypeError (see the module docstring), UnsafeArchiveError.
    """
    from persistkit.format.codecs import decode_member

    if trusted is not True and trusted is not False and isinstance(trusted, str):
        raise TypeError("trusted= takes True/False or a list of type names, not a single string")
    with _Opened(path) as opened:
        master = opened.master_key(
            password=password, key_file=key_file, require_encryption=require_encryption
        )
        opened.check_layout()
        manifest = opened.manifest
        wanted = set(members) if members is not None else None
        if wanted is not None:
            unknown = wanted - {m.name for m in manifest.models}
            if unknown:
                have = [m.name for m in manifest.models]
                raise NotFoundError(
                    f"{opened.source} has no member(s) {', '.join(map(repr, sorted(unknown)))}; it has "
                    f"{', '.join(map(repr, have)) or 'no models'}. Pass members= with names from that list.",
                    path=opened.source,
                    member=sorted(unknown)[0],
                )
        _warn_skew(manifest, opened.source)
        models: dict[str, Any] = {}
        metadata: dict[str, Any] = {}
        for index, entry in enumerate(manifest.members):
            envelope = opened.open_member(index, entry, master, plaintext_digest=False)
            source = f"{opened.source}:{entry.name}"
            if entry.role == "metadata":
                doc = decode_member("json", envelope.view, source=source)
                if not isinstance(doc, dict):
                    raise FormatError(f"{source}: the metadata is not a JSON object.", path=opened.source)
                metadata = doc
            elif wanted is None or entry.name in wanted:
                trust = _trust_for(opened, entry, envelope.view, trusted, master is not None)
                try:
                    models[entry.name] = decode_member(
                        entry.codec,
                        envelope.view,
                        trusted=trust,
                        env=env,
                        device=device,
                        meta=envelope.header.meta,
                        source=source,
                    )
                except PersistkitError as err:
                    err.member = entry.name  # codecs name it by source string; the bundle names the member
                    if err.path is None:
                        err.path = opened.source
                    raise
            del envelope
    return Bundle(Path(opened.path), models, metadata, manifest)


def inspect(path: PathLike) -> mf.Manifest:
    """The manifest of a bundle, without a key and without decrypting anything.

    Only the manifest's own digest is checked; ``verify`` checks everything.
    """
    with _Opened(path) as opened:
        return opened.manifest


def check_intact(path: PathLike, *, require_encryption: bool | str = False) -> None:
    """Raise unless the bundle would load as saved; needs no key, but uses the key file beside it if any.

    Checks the manifest digest, the layout and every member's length, digest
    and envelope checksum; with the key beside the bundle, also the MAC and
    every GCM tag (as ``verify``). Retention (``ModelStore.prune``) uses it to
    tell which version is really the newest good one.
    """
    with _Opened(path) as opened:
        info = opened.manifest.encryption
        choice = keys.for_load(opened.path, required=keys.requirement(require_encryption))
        choice.check_encrypted(info is not None, source=opened.source, member="manifest")
        master = None
        if info is not None and choice.key is not None:
            master = opened.master_key(password=None, key_file=None)
        opened.check_layout()
        for index, entry in enumerate(opened.manifest.members):
            envelope = opened.open_member(index, entry, master, keyless=info is not None and master is None)
            del envelope


def verify(
    path: PathLike,
    *,
    password: str | None = None,
    key_file: PathLike | None = None,
    require_encryption: bool | str = False,
) -> Report:
    """Read and check every byte: key, manifest MAC, layout, each envelope, each digest.

    Raises the typed error of the first problem (naming the member) and
    returns a ``Report`` when the bundle is intact. Members are not rebuilt;
    the types they would construct are listed in the report.
    """
    from persistkit.format.codecs import audit_member

    reports: list[MemberReport] = []
    with _Opened(path) as opened:
        master = opened.master_key(
            password=password, key_file=key_file, require_encryption=require_encryption
        )
        opened.check_layout()
        for index, entry in enumerate(opened.manifest.members):
            envelope = opened.open_member(index, entry, master)
            types: list[str] = []
            if entry.role == "model":
                types = audit_member(entry.codec, envelope.view, source=f"{opened.source}:{entry.name}")
            reports.append(MemberReport(entry.name, entry.role, entry.codec, entry.plain_len, tuple(types)))
            del envelope
        return Report(Path(opened.path), master is not None, master is not None, tuple(reports))
