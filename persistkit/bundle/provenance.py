"""Provenance: the environment and git commit a bundle records, and the version-skew warning at load."""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import platform
import re
import warnings

from persistkit.format import manifest as mf
from persistkit.io import current_fs

log = logging.getLogger("persistkit")


class VersionSkewWarning(UserWarning):
    """A bundle was saved under other versions of the libraries its members depend on."""


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
    from persistkit.format.codecs import REGISTRY

    env: dict[str, str | None] = {"persistkit": __version__, "python": platform.python_version()}
    env.update({name: _version(name) for name in REGISTRY.packages()})  # what any codec depends on
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


def git_commit(start: str) -> str | None:
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


def _relevant_skew(manifest: mf.Manifest) -> list[tuple[str, str | None, str | None]]:
    from persistkit.format.codecs import REGISTRY

    packages: list[str] = []
    for m in manifest.members:
        if m.role == "metadata":
            continue  # plain values: no library version changes how they decode
        codec = REGISTRY.find(m.codec)
        for name in codec.packages if codec is not None else ():
            if name not in packages:
                packages.append(name)
    now = environment()
    return [
        (name, manifest.environment.get(name), now.get(name))
        for name in packages
        if manifest.environment.get(name) is not None and manifest.environment.get(name) != now.get(name)
    ]


def warn_skew(manifest: mf.Manifest, source: str) -> None:
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
