"""Checking bundles: ``verify`` (full read, every checksum and MAC) and ``check_intact``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from persistkit import keys
from persistkit.bundle.reader import OpenedBundle
from persistkit.errors import PersistkitError
from persistkit.io.fs import PathLike


@dataclass(frozen=True)
class MemberReport:
    name: str
    role: str
    codec: str
    plain_len: int
    types: tuple[str, ...] = ()  # what loading would construct (the member codec's audit)


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


def check_intact(path: PathLike, *, require_encryption: bool | str = False) -> None:
    """Raise unless the bundle would load as saved; needs no key, but uses the key file beside it if any.

    Checks the manifest digest, the layout and every member's length, digest
    and envelope checksum; with the key beside the bundle, also the MAC and
    every GCM tag (as ``verify``). Retention (``ModelStore.prune``) uses it to
    tell which version is really the newest good one.
    """
    with OpenedBundle(path) as opened:
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
    from persistkit.format.codecs import DecodeContext, audit_member

    reports: list[MemberReport] = []
    with OpenedBundle(path) as opened:
        master = opened.master_key(
            password=password, key_file=key_file, require_encryption=require_encryption
        )
        opened.check_layout()
        for index, entry in enumerate(opened.manifest.members):
            envelope = opened.open_member(index, entry, master)
            types: list[str] = []
            if entry.role == "model":
                ctx = DecodeContext(name=entry.name, source=f"{opened.source}:{entry.name}")
                try:
                    types = audit_member(entry.codec, envelope.view, ctx)
                except PersistkitError as err:
                    err.path, err.member = opened.source, entry.name  # the bundle names the member
                    raise
            reports.append(MemberReport(entry.name, entry.role, entry.codec, entry.plain_len, tuple(types)))
            del envelope
        return Report(Path(opened.path), master is not None, master is not None, tuple(reports))
