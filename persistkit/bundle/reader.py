"""Reading bundles: open, authenticate, then parse (``load_bundle``, ``inspect``)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persistkit import keys, naming
from persistkit.bundle.provenance import warn_skew
from persistkit.errors import (
    FormatError,
    IntegrityError,
    NotFoundError,
    PersistkitError,
    UnsafeArchiveError,
    WrongKeyError,
)
from persistkit.format import manifest as mf
from persistkit.io import current_fs
from persistkit.io.fs import PathLike, describe_file_type, io_error

if TYPE_CHECKING:
    from persistkit.format.codecs import DecodeContext


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


# -- reading ----------------------------------------------------------------------------


def _entry_is_unsafe(name: str) -> bool:
    """Absolute paths, '..' segments, drive letters, control characters: zip-slip material."""
    return naming.entry_path_problem(name, control_characters=False) is not None


class OpenedBundle:
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
            if mf.BUNDLE_MANIFEST not in by_name or mf.BUNDLE_AUTH not in by_name:
                raise self._not_bundle(view, "it has no manifest.json / manifest.auth")
            for special in (mf.BUNDLE_MANIFEST, mf.BUNDLE_AUTH):
                if sum(e.name == special for e in entries) != 1:
                    raise IntegrityError(
                        f"{self.source}: {special} appears more than once: the bundle was tampered with. Restore "
                        "it from a backup.",
                        path=self.source,
                        member="manifest",
                    )
            m_entry, a_entry = by_name[mf.BUNDLE_MANIFEST], by_name[mf.BUNDLE_AUTH]
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

    def __enter__(self) -> OpenedBundle:
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
        from persistkit.format.codecs import REGISTRY
        from persistkit.format.codecs import metadata as metac

        for m in self.manifest.members:
            known = metac.CODECS if m.role == "metadata" else REGISTRY.names()
            if m.codec not in known:
                raise FormatError(
                    f"{self.source}: member {m.name!r} uses codec {m.codec!r}, which this persistkit does not "
                    f"know (it knows {', '.join(sorted(known))}). It may come from a newer persistkit: upgrade "
                    "to read it. persistkit never falls back to pickle.",
                    path=self.source,
                    member=m.name,
                )
        expected = [m.file for m in self.manifest.members] + [mf.BUNDLE_MANIFEST, mf.BUNDLE_AUTH]
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


def _check_trust(
    opened: OpenedBundle, entry: mf.MemberEntry, payload: Any, ctx: DecodeContext, encrypted: bool
) -> None:
    """Refuse a member of an unencrypted bundle that would construct types, unless the caller trusts it."""
    from persistkit.errors import UntrustedTypeError
    from persistkit.format.codecs import audit_member, get_codec

    trusted = ctx.trusted
    if encrypted or trusted is True or (not isinstance(trusted, bool) and len(trusted) > 0):
        return
    if not get_codec(entry.codec).constructs_types:
        return
    types = audit_member(entry.codec, payload, ctx)
    if not types:
        return
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
    modules: Mapping[str, Callable[[], Any]] | None = None,
    as_state_dict: bool = False,
    custom_objects: Mapping[str, Any] | None = None,
) -> Bundle:
    """Verify and load a bundle. ``members`` limits which models are rebuilt (all are verified).

    A torch ``nn.Module`` member is rebuilt by ``modules={"name": MyNet}``
    (the class or a zero-argument factory; weights go in with
    ``load_state_dict(strict=True)``); without one it raises
    ``UntrustedTypeError``, unless ``as_state_dict=True`` asks for the state dict.
    ``custom_objects`` replaces attributes of every SB3 member before it is
    rebuilt, as in SB3's own ``load`` (``{"learning_rate": fn}`` brings back the
    function a tabulated schedule was made from).

    A bundle must be encrypted (a plain one is refused as a forged downgrade)
    when ``password=`` or ``key_file=`` is given, when its key file is beside
    it, or with ``require_encryption`` (True, or the reason as text for the
    error message); see ``persistkit.keys``.

    ``env`` and ``device`` are handed to SB3 models (and ``device`` to torch
    members). Raises WrongKeyError (key), IntegrityError (damage, tampering;
    names the member), FormatError (not a bundle, unknown codec, newer format),
    UntrustedTypeError (see the module docstring), UnsafeArchiveError.
    """
    from persistkit.format.codecs import DecodeContext, decode_member
    from persistkit.format.codecs import metadata as metac

    if trusted is not True and trusted is not False and isinstance(trusted, str):
        raise TypeError("trusted= takes True/False or a list of type names, not a single string")
    with OpenedBundle(path) as opened:
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
        warn_skew(manifest, opened.source)
        load_ctx = DecodeContext(
            trusted=trusted,
            env=env,
            device=device,
            modules=modules or {},
            as_state_dict=as_state_dict,
            custom_objects=custom_objects,
        )
        models: dict[str, Any] = {}
        metadata: dict[str, Any] = {}
        for index, entry in enumerate(manifest.members):
            envelope = opened.open_member(index, entry, master, plaintext_digest=False)
            source = f"{opened.source}:{entry.name}"
            if entry.role == "metadata":
                try:
                    metadata = metac.decode(entry.codec, envelope.view, source=source)
                except PersistkitError as err:
                    err.path, err.member = opened.source, entry.name
                    raise
            elif wanted is None or entry.name in wanted:
                ctx = load_ctx.for_member(entry.name, source=source, meta=envelope.header.meta)
                try:
                    _check_trust(opened, entry, envelope.view, ctx, master is not None)
                    models[entry.name] = decode_member(entry.codec, envelope.view, ctx)
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
    with OpenedBundle(path) as opened:
        return opened.manifest
