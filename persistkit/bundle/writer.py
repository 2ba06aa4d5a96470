"""Writing bundles: ``save_bundle`` (names checked, members encoded, sealed, published atomically)."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from persistkit import keys
from persistkit.bundle.provenance import environment, git_commit, log
from persistkit.errors import (
    UnsafeArchiveError,
)
from persistkit.format import manifest as mf
from persistkit.io import atomic_writer, current_fs
from persistkit.io.atomic import close_later, keep_open
from persistkit.io.fs import PathLike, io_error
from persistkit.io.lock import PublishLock

STREAM_THRESHOLD = 1 << 20
_MAX_NAME_BYTES = 200


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
    from persistkit.format.codecs import metadata as metac

    if metadata is not None and not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping (a dict), not {type(metadata).__name__}")
    doc: dict[str, Any] = dict(metadata or {})
    metac.encode(doc)  # refuse what cannot be stored before any key or file is made
    if config is not None:
        metac.encode({"config": config}, root="config")
        doc["config"] = config
    doc.setdefault("created", created)
    doc.setdefault("environment", dict(env))
    commit = git_commit(os.getcwd())
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
    from persistkit.format.codecs import EncodeContext, encode_member
    from persistkit.format.codecs import metadata as metac
    from persistkit.format.envelope import seal_parts, seal_stream
    from persistkit.io.zipio import ZipStreamWriter

    key_info = mf.new_key_info(master) if master is not None else None
    bundle_id = secrets.token_hex(16)
    entries: list[mf.MemberEntry] = []

    def add(zw: ZipStreamWriter, index: int, name: str, role: str, obj: Any) -> None:
        if role == "metadata":
            encoded = metac.encode_member(obj)
        else:
            encoded = encode_member(obj, EncodeContext(name=name, save_replay_buffer=save_replay_buffer))
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
            zw.add(mf.BUNDLE_MANIFEST, [manifest_bytes])
            zw.add(mf.BUNDLE_AUTH, [mf.auth_record(manifest_bytes, master=master, info=key_info)])
            zw.finish()
    finally:
        close_later(replaced)
