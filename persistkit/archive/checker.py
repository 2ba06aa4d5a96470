"""The one checker: ``verify()`` reports its problems, ``restore()`` refuses on them.

Security-critical, with ``restore``: anything that could escape the target (alone or through
other links), exhaust the disk, or differ from the manifest is a problem here."""

from __future__ import annotations

import builtins
import collections
import contextlib
import errno as _errno
import hashlib
import itertools
import json
import os
import re
import stat as _stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from persistkit import naming
from persistkit.archive.base import (
    ARCHIVE_MANIFEST,
    CHUNK,
    FORMAT,
    RestoreLimits,
    VerifyReport,
)
from persistkit.errors import (
    FormatError,
    IntegrityError,
    PersistkitError,
    UnsafeArchiveError,
)
from persistkit.format.manifest import BUNDLE_AUTH, BUNDLE_MANIFEST
from persistkit.io import current_fs
from persistkit.io.fs import io_error, io_errors
from persistkit.io.zipio import ZIP_DAMAGE_OR_IO

MAX_MANIFEST_BYTES = 64 << 20  # ~250 bytes an entry: room for RestoreLimits.max_entries and more
_MAX_LINK_BYTES = 4096  # PATH_MAX: a longer "link target" is not one
_MAX_LINK_HOPS = 40  # as the kernel's ELOOP limit
_ALLOWANCE = 1 << 20  # bytes any member may expand to before the ratio is enforced
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KINDS = ("file", "dir", "symlink", "external-symlink", "skipped")
_DRIVE = re.compile(r"^[A-Za-z]:")
_NOT_RESTORED = "Nothing was restored."


@dataclass(frozen=True)
class _Problem:
    message: str  # without the archive's path; restore() prefixes it
    member: str | None = None
    error: type[PersistkitError] = IntegrityError


@dataclass
class _Member:
    info: zipfile.ZipInfo
    rel: str  # normalised relative path
    kind: str  # what the zip itself says: "file", "dir" or "symlink"
    target: str = ""  # a symlink's target, read while planning


@dataclass
class _Plan:
    members: builtins.list[_Member] = field(default_factory=builtins.list)
    problems: builtins.list[_Problem] = field(default_factory=builtins.list)
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)  # the manifest, by normalised path
    readable: bool = True  # False: over a budget, so member data is not decompressed at all

    def unsafe(self, message: str, member: str | None = None) -> None:
        self.problems.append(_Problem(message, member, UnsafeArchiveError))

    def damaged(self, message: str, member: str | None = None) -> None:
        self.problems.append(_Problem(message, member, IntegrityError))


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _norm(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def _check_name(name: str, seen: set[str]) -> str:
    """The normalised relative path of a member, or raise UnsafeArchiveError."""
    problem = naming.entry_path_problem(name)
    if problem:
        raise UnsafeArchiveError(f"member name {name!r} {problem}", member=name)
    norm = _norm(name)
    key = norm.lower()
    if key in seen:
        raise UnsafeArchiveError(f"member name {name!r} appears twice (or differs only in case)", member=name)
    seen.add(key)
    return norm


def _kind_of(info: zipfile.ZipInfo, plan: _Plan) -> str | None:
    """The kind the zip stores, from its mode bits and name; None (and a problem) if it cannot be one."""
    name = info.orig_filename
    mode = info.external_attr >> 16
    kind_bits = _stat.S_IFMT(mode)
    if _stat.S_ISCHR(mode) or _stat.S_ISBLK(mode) or _stat.S_ISFIFO(mode) or _stat.S_ISSOCK(mode):
        plan.unsafe(f"member {name!r} is a device or special file", name)
        return None
    if name.endswith("/"):
        if kind_bits not in (0, _stat.S_IFDIR):
            plan.damaged(
                f"{name}: its name says directory but its mode says otherwise (a changed mode byte)", name
            )
            return None
        return "dir"
    if kind_bits == _stat.S_IFDIR:
        return "dir"
    if kind_bits == _stat.S_IFLNK:
        return "symlink"
    if kind_bits in (0, _stat.S_IFREG):
        return "file"
    plan.unsafe(f"member {name!r} has an unknown file type {kind_bits:o}", name)
    return None


def read_capped(zf: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes:
    """At most ``cap`` + 1 bytes of a member: callers treat a longer result as over the cap."""
    with zf.open(info) as f:
        return f.read(cap + 1)


def _read_problem(err: BaseException, what: str, src: Path) -> str:
    """The problem text for an exception raised while reading member data, or re-raise a real I/O error."""
    # EINVAL: zipfile seeking to a negative offset, from damaged headers; other errnos are the disk's
    if isinstance(err, OSError) and not isinstance(err, PersistkitError) and err.errno != _errno.EINVAL:
        raise io_error("read archive", src, err) from err
    return f"{what} is damaged ({type(err).__name__}: {err})"


def _plan(zf: zipfile.ZipFile, src: Path, archive_size: int, limits: RestoreLimits) -> _Plan:
    """Everything that can be checked without decompressing file data; cost bounded by the archive."""
    plan = _Plan()
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        plan.unsafe(f"{len(infos)} entries, over the limit of {limits.max_entries}")
        plan.readable = False
        return plan
    spans = sorted(
        (
            (i.header_offset, i.header_offset + 30 + len(i.orig_filename.encode()) + i.compress_size, i)
            for i in infos
        ),
        key=lambda span: span[:2],  # two members at one offset must not fall through to comparing ZipInfos
    )
    for (_, end_a, a), (start_b, _, b) in itertools.pairwise(spans):
        if start_b < end_a:
            plan.unsafe(
                f"members {a.filename!r} and {b.filename!r} overlap in the file (a zip bomb trick)",
                b.filename,
            )
            plan.readable = False
    seen: set[str] = set()
    declared = 0
    for info in infos:
        name = info.orig_filename  # zipfile cuts names at a NUL byte; the original is what the archive claims
        try:
            rel = _check_name(name, seen)
        except UnsafeArchiveError as err:
            plan.unsafe(err.message, name)
            continue
        if info.header_offset < 0 or info.header_offset + 30 > archive_size:
            plan.damaged(f"{name}: its local header lies outside the file (damaged)", name)
            continue
        if info.flag_bits & 0x1:
            plan.unsafe(f"member {name!r} is zip-encrypted; persistkit never writes encrypted members", name)
            continue
        kind = _kind_of(info, plan)
        if kind is None:
            continue
        declared += info.file_size
        if info.file_size > _ALLOWANCE and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            plan.unsafe(
                f"member {name!r} claims to expand {info.file_size / max(info.compress_size, 1):.0f}x "
                f"(over {limits.max_ratio:.0f}x): a zip bomb",
                name,
            )
            plan.readable = False
        plan.members.append(_Member(info, rel, kind))
    _plan_tree(plan)
    budget = _budget(archive_size, limits)
    if declared > budget:
        plan.unsafe(
            f"its members claim {declared} bytes uncompressed, more than the {budget} bytes allowed for an "
            f"archive of {archive_size} bytes ({limits.max_ratio:.0f}x, at most {limits.max_total_bytes}): "
            "refusing to fill the disk"
        )
        plan.readable = False
    _plan_links(zf, src, plan)
    _plan_manifest(zf, src, plan)
    return plan


def _plan_tree(plan: _Plan) -> None:
    """Refuse a file that is also the directory of another member (``logs/a`` and ``logs/a/b``).

    No file system can hold both, so such an archive would verify and then fail half-way through its
    restore. Judged as a case-sensitive and as a case-insensitive file system would.
    """
    for fold in (False, True):
        parents: dict[str, str] = {}
        for m in plan.members:
            parts = (m.rel.lower() if fold else m.rel).split("/")
            for i in range(1, len(parts)):
                parents.setdefault("/".join(parts[:i]), m.info.filename)
        for m in plan.members:
            below = parents.get(m.rel.lower() if fold else m.rel)
            if m.kind == "file" and below is not None:
                case = " (as a case-insensitive file system sees it)" if fold else ""
                plan.unsafe(
                    f"member {m.info.filename!r} is a file, but {below!r} needs it to be a directory{case}: "
                    "no file system holds both, so it cannot be restored",
                    m.info.filename,
                )
                return


def _budget(archive_size: int, limits: RestoreLimits) -> int:
    return min(limits.max_total_bytes, max(int(limits.max_ratio * archive_size), _ALLOWANCE))


def _plan_links(zf: zipfile.ZipFile, src: Path, plan: _Plan) -> None:
    """Read every link target, then resolve each against all the links the archive would lay down."""
    if not plan.readable:
        return  # already refused as over a budget: read nothing more
    links: dict[str, _Member] = {}
    for m in plan.members:
        if m.kind != "symlink":
            continue
        name = m.info.orig_filename
        try:
            data = read_capped(zf, m.info, _MAX_LINK_BYTES)
            if len(data) > _MAX_LINK_BYTES:
                raise ValueError(f"a link target over {_MAX_LINK_BYTES} bytes")
            m.target = data.decode("utf-8", "strict")
        except ZIP_DAMAGE_OR_IO as err:
            plan.unsafe(_read_problem(err, f"symlink member {name!r}", src), name)
            continue
        links[m.rel.lower()] = m
    exact = {m.rel: m.target for m in links.values()}
    folded = {key: m.target for key, m in links.items()}
    for m in plan.members:
        parts = m.rel.lower().split("/")
        below = next(
            ("/".join(parts[:i]) for i in range(1, len(parts)) if "/".join(parts[:i]) in links), None
        )
        if below is not None:
            plan.unsafe(
                f"member {m.info.filename!r} lies below the symlink {links[below].info.filename!r}: "
                "it would be written through the link",
                m.info.filename,
            )
    for m in links.values():
        # As a case-sensitive filesystem resolves it, and as a case-insensitive one does.
        reason = _escapes(m.rel, m.target, exact, fold=False) or _escapes(m.rel, m.target, folded, fold=True)
        if reason:
            plan.unsafe(f"symlink {m.info.filename!r} -> {m.target!r} {reason}", m.info.filename)


def _escapes(rel: str, target: str, links: dict[str, str], *, fold: bool) -> str:
    """Why the link at ``rel`` would lead outside the restore target once every link exists; '' if not.

    Resolution follows the other links the way the kernel would, so chains (a/b -> .., a/b/c -> ..)
    and links to links are judged together, whatever order they are laid down in.
    """
    if not target or "\x00" in target or target.startswith("/") or _DRIVE.match(target):
        return "points outside the restore target (absolute or empty)"
    # The link's own directory is resolved too: it may itself lie below other links.
    resolved: builtins.list[str] = []
    pending = collections.deque([*(rel.lower() if fold else rel).split("/")[:-1], *target.split("/")])
    hops = 0
    while pending:
        part = pending.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return "points outside the restore target"
            resolved.pop()
            continue
        resolved.append(part.lower() if fold else part)
        link = links.get("/".join(resolved))
        if link is not None:
            hops += 1
            if hops > _MAX_LINK_HOPS:
                return "is part of a loop of links"
            resolved.pop()
            if not link or link.startswith("/") or _DRIVE.match(link):
                return "points outside the restore target through another link"
            pending.extendleft(reversed(link.split("/")))
    return ""


def _plan_manifest(zf: zipfile.ZipFile, src: Path, plan: _Plan) -> None:
    by_rel = {m.rel: m for m in plan.members}
    manifest = by_rel.get(ARCHIVE_MANIFEST)
    if manifest is None:
        names = {m.rel for m in plan.members}
        if BUNDLE_MANIFEST in names and BUNDLE_AUTH in names:
            plan.problems.append(
                _Problem(
                    "this is a persistkit model bundle, not a training archive; open it with "
                    "pk.load_bundle(), or check it with `persistkit verify`",
                    error=FormatError,
                )
            )
        else:
            plan.damaged(
                f"{ARCHIVE_MANIFEST} is missing: the archive is damaged or was not made by persistkit",
                ARCHIVE_MANIFEST,
            )
        return
    if manifest.kind != "file":
        plan.damaged(
            f"{ARCHIVE_MANIFEST}: stored as a {manifest.kind}, not a file (a changed mode byte)",
            ARCHIVE_MANIFEST,
        )
        return
    if manifest.info.file_size > MAX_MANIFEST_BYTES:
        plan.unsafe(
            f"{ARCHIVE_MANIFEST} claims {manifest.info.file_size} bytes (over {MAX_MANIFEST_BYTES})",
            ARCHIVE_MANIFEST,
        )
        return
    if not plan.readable:
        return
    try:
        data = read_capped(zf, manifest.info, MAX_MANIFEST_BYTES)
    except ZIP_DAMAGE_OR_IO as err:
        plan.damaged(_read_problem(err, ARCHIVE_MANIFEST, src), ARCHIVE_MANIFEST)
        return
    if len(data) > MAX_MANIFEST_BYTES:
        plan.unsafe(f"{ARCHIVE_MANIFEST} is over {MAX_MANIFEST_BYTES} bytes", ARCHIVE_MANIFEST)
        return
    doc, problem = parse_manifest(data)
    if problem:
        plan.damaged(problem, ARCHIVE_MANIFEST)
        return
    entries = _manifest_entries(doc, plan)
    if entries is None:
        return
    plan.entries = entries
    for m in plan.members:
        if m is manifest:
            continue
        name = m.info.orig_filename
        entry = entries.get(m.rel)  # exact: a name whose case changed is not the member the manifest lists
        if entry is None:
            plan.damaged(f"{name}: in the zip but not in the manifest", name)
        elif entry["kind"] in ("external-symlink", "skipped"):
            plan.damaged(f"{name}: in the zip, but the manifest says it was not stored", name)
        elif entry["kind"] != m.kind:
            plan.damaged(
                f"{name}: the zip stores a {m.kind} where the manifest lists a {entry['kind']} "
                "(a changed mode byte: damaged or altered)",
                name,
            )
        elif m.kind == "file" and m.info.file_size != entry["size"]:
            plan.damaged(f"{name}: size differs from the manifest (damaged or altered)", name)
        elif m.kind == "symlink" and m.target and m.target != entry["target"]:
            plan.damaged(f"{name}: symlink target differs from the manifest (damaged or altered)", name)
    present = {m.rel for m in plan.members}
    for key, entry in entries.items():
        if entry["kind"] in ("file", "dir", "symlink") and key not in present:
            plan.damaged(f"{entry['path']}: listed in the manifest but missing from the zip", entry["path"])


def parse_manifest(data: bytes) -> tuple[Any, str]:
    try:
        return json.loads(data.decode("utf-8", "strict")), ""
    except (ValueError, RecursionError) as err:  # RecursionError: absurdly deep nesting
        return (
            None,
            f"{ARCHIVE_MANIFEST} is not valid JSON ({type(err).__name__}): damaged or not persistkit's",
        )


def _manifest_entries(doc: Any, plan: _Plan) -> dict[str, dict[str, Any]] | None:
    """The manifest's entries by normalised path; None if it is not a manifest at all."""
    if not isinstance(doc, dict):
        plan.damaged(f"{ARCHIVE_MANIFEST} is not a JSON object but {type(doc).__name__}", ARCHIVE_MANIFEST)
        return None
    if doc.get("format") != FORMAT:
        plan.damaged(
            f"{ARCHIVE_MANIFEST} has format {_short(doc.get('format'))}, not {FORMAT!r}", ARCHIVE_MANIFEST
        )
        return None
    files = doc.get("files")
    if not isinstance(files, builtins.list):
        plan.damaged(f"{ARCHIVE_MANIFEST}: 'files' is {type(files).__name__}, not a list", ARCHIVE_MANIFEST)
        return None
    entries: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(files):
        where = f"{ARCHIVE_MANIFEST} files[{i}]"
        if not isinstance(entry, dict):
            plan.damaged(f"{where} is {type(entry).__name__}, not an object", ARCHIVE_MANIFEST)
            continue
        path, kind = entry.get("path"), entry.get("kind")
        if not isinstance(path, str) or not _norm(path):
            plan.damaged(f"{where}: 'path' is {_short(path)}, not a member name", ARCHIVE_MANIFEST)
            continue
        if not isinstance(kind, str) or kind not in _KINDS:
            plan.damaged(f"{path}: the manifest gives it kind {_short(kind)}", path)
            continue
        if kind == "file":
            size, digest = entry.get("size"), entry.get("sha256")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                plan.damaged(f"{path}: the manifest gives it size {_short(size)}", path)
                continue
            if not isinstance(digest, str) or not _HEX64.match(digest):
                plan.damaged(f"{path}: the manifest gives it sha256 {_short(digest)}", path)
                continue
        if kind in ("symlink", "external-symlink") and not isinstance(entry.get("target"), str):
            plan.damaged(f"{path}: the manifest gives it no link target", path)
            continue
        key = _norm(path)
        if key in entries:
            plan.damaged(f"{path}: listed twice in the manifest", path)
            continue
        entries[key] = entry
    return entries


def _check_content(
    zf: zipfile.ZipFile,
    m: _Member,
    plan: _Plan,
    src: Path,
    limits: RestoreLimits,
    sink: Any = None,
) -> _Problem | None:
    """Stream one regular member through sha256 (and ``sink``), measuring its expansion as it goes."""
    info = m.info
    name = info.orig_filename
    digest = hashlib.sha256()
    size = 0
    try:
        with zf.open(info) as f:
            while chunk := f.read(CHUNK):
                size += len(chunk)
                if size > _ALLOWANCE and size > limits.max_ratio * max(info.compress_size, 1):
                    return _Problem(
                        f"member {name!r} expands more than {limits.max_ratio:.0f}x "
                        "(measured while extracting): a zip bomb",
                        name,
                        UnsafeArchiveError,
                    )
                digest.update(chunk)
                if sink is not None:
                    sink(chunk)
    except PersistkitError:
        raise  # the sink's own, typed, I/O errors
    except ZIP_DAMAGE_OR_IO as err:
        # A method zipfile does not know is refused as unsafe; a bad CRC or stream is damage.
        error = UnsafeArchiveError if isinstance(err, NotImplementedError) else IntegrityError
        return _Problem(_read_problem(err, f"member {name!r}", src), name, error)
    entry = plan.entries.get(m.rel)
    if entry is None or entry["kind"] != "file":
        return None  # reported while planning
    if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
        return _Problem(f"{name}: sha256 or size differs from the manifest (damaged or altered)", name)
    return None


@contextlib.contextmanager
def _open_zip(src: Path, problems: builtins.list[_Problem]) -> Iterator[tuple[zipfile.ZipFile | None, int]]:
    """The archive opened as a zip, with its size; (None, size) and a problem if it is not a readable zip."""
    fs = current_fs()
    with io_errors("open archive", src):
        raw: BinaryIO = fs.open_read(src)
    with raw:
        try:
            size = os.fstat(raw.fileno()).st_size
        except (OSError, ValueError, AttributeError):
            size = fs.stat(src).st_size
        try:
            zf = zipfile.ZipFile(raw)
        except ZIP_DAMAGE_OR_IO as err:
            problems.append(
                _Problem(
                    _read_problem(err, "the zip structure", src) + ": not a readable zip",
                    error=IntegrityError,
                )
            )
            yield None, size
            return
        with zf:
            yield zf, size


def verify_archive(path: Path, limits: RestoreLimits) -> VerifyReport:
    problems: builtins.list[_Problem] = []
    checked = 0
    with _open_zip(path, problems) as (zf, size):
        if zf is not None:
            plan = _plan(zf, path, size, limits)
            problems += plan.problems
            for m in plan.members:
                if m.kind == "symlink" and m.rel in plan.entries:
                    checked += 1
                if m.kind != "file" or m.rel == ARCHIVE_MANIFEST or not plan.readable:
                    continue
                checked += 1
                problem = _check_content(zf, m, plan, path, limits)
                if problem:
                    problems.append(problem)
    return VerifyReport(path, checked, [p.message for p in problems])


def _refuse(problems: builtins.list[_Problem], src: Path) -> None:
    if not problems:
        return
    order = (UnsafeArchiveError, FormatError, IntegrityError)
    first = min(problems, key=lambda p: order.index(p.error) if p.error in order else len(order))
    more = (
        f" (and {len(problems) - 1} more problems: `persistkit archive verify` lists them)"
        if len(problems) > 1
        else ""
    )
    if first.error is UnsafeArchiveError:
        advice = f"{_NOT_RESTORED} Do not trust this archive."
    elif first.error is FormatError:
        advice = _NOT_RESTORED
    else:
        advice = f"{_NOT_RESTORED} Restore from another archive; `persistkit archive verify` shows which are intact."
    raise first.error(f"{src}: {first.message}{more}. {advice}", path=src, member=first.member)
