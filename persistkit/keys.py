"""Key files, passwords, and the one decision: must this file be encrypted, and with which key?

The rule, for every reader (bundles today; state stores can use the same call):

- ``password=`` or ``key_file=`` passed: the file must be encrypted, with that.
- neither, but a key file sits at the default place (``<bundle>.key``): the
  file must be encrypted, with that key. A plain file there is a forged
  downgrade (an attacker replaced an encrypted file with an unencrypted one),
  never "an unencrypted file that happens to have a key beside it".
- neither, and no key file: the file may be plain, unless the caller knows
  better (``required=``: a ModelStore that has saved encrypted bundles); if it
  is encrypted, opening it fails with WrongKeyError naming where the key was
  looked for.

Writers: ``password=`` derives a key; ``key_file=`` (or the default key path)
reuses the key file there or creates one. The caller publishes a new key file
and the file it opens as a pair (``save_bundle`` does both under one lock) and
removes a key file it created if the save fails.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from persistkit.errors import IntegrityError, WrongKeyError

if TYPE_CHECKING:
    from persistkit.format.crypto import KdfParams, Key

__all__ = [
    "KEY_SUFFIX",
    "KeyChoice",
    "default_key_path",
    "for_load",
    "for_save",
    "read_key_file",
    "requirement",
    "write_key_file",
]

KEY_SUFFIX = ".key"

PathLike = str | os.PathLike[str]


def default_key_path(path: PathLike) -> str:
    """Where the key of ``path`` lives when none is passed: ``<path>.key``."""
    return os.path.abspath(os.fspath(path)) + KEY_SUFFIX


def read_key_file(path: PathLike) -> Key:
    from persistkit.format.crypto import read_key_file as read

    return read(path)


def write_key_file(path: PathLike, key: Key | None = None) -> Key:
    from persistkit.format.crypto import write_key_file as write

    return write(path, key)


def _check_one(password: str | None, key_file: PathLike | None) -> None:
    if password is not None and key_file is not None:
        raise ValueError("pass password= or key_file=, not both")


@dataclass(frozen=True)
class KeyChoice:
    """What opening a file needs: ``key`` or ``password`` (or neither), and whether it must be encrypted.

    ``reason`` says why encryption is required (for messages); ``looked_for`` is
    the default key path that was checked when no key was given.
    """

    key: Key | None
    password: str | None
    required: bool
    reason: str
    looked_for: str | None = None

    def check_encrypted(self, encrypted: bool, *, source: str, member: str | None = None) -> None:
        """Refuse a plain file where an encrypted one is required (a forged downgrade)."""
        if self.required and not encrypted:
            raise IntegrityError(
                f"{source} is not encrypted, but a key or password says it must be ({self.reason}): an "
                "encrypted file may have been replaced by a forged plain one. Restore it from a backup. If it really was saved with encrypt=False, load "
                "it without a key (and move any key file beside it away).",
                path=source,
                member=member,
            )

    def missing_key(self, *, source: str, key_source: str) -> WrongKeyError:
        """The error for an encrypted file when no key or password was found."""
        if key_source == "password":
            return WrongKeyError(
                f"{source} is encrypted with a password; pass password= to open it.", path=source
            )
        return WrongKeyError(
            f"{source} is encrypted with a key file; looked for {self.looked_for} (the key written beside the "
            "bundle at save time) and it is not there. Pass key_file= pointing at the key it was saved with.",
            path=source,
        )


def requirement(require_encryption: bool | str) -> str | None:
    """``require_encryption=`` as a ``for_load(required=...)`` reason: None, or why (True names itself)."""
    if not require_encryption:
        return None
    return require_encryption if isinstance(require_encryption, str) else "require_encryption=True was given"


def for_load(
    path: PathLike,
    *,
    password: str | None = None,
    key_file: PathLike | None = None,
    required: str | None = None,
) -> KeyChoice:
    """The key choice for reading ``path``.

    ``required`` is why the caller knows the file must be encrypted even with
    no key at hand (a model store that saves encrypted bundles), for messages.
    """
    from persistkit.io import current_fs

    _check_one(password, key_file)
    if password is not None:
        return KeyChoice(None, password, True, "password= was given")
    if key_file is not None:
        return KeyChoice(read_key_file(key_file), None, True, f"key_file={os.fspath(key_file)!r} was given")
    beside = default_key_path(path)
    if current_fs().exists(beside):
        return KeyChoice(read_key_file(beside), None, True, f"its key file {beside} is beside it", beside)
    return KeyChoice(None, None, required is not None, required or "", beside)


def for_save(
    path: PathLike, *, password: str | None, key_file: PathLike | None, kdf: KdfParams | None = None
) -> tuple[Key, str | None]:
    """(master key, the key file created for it or None) for writing ``path`` encrypted.

    Call it under the lock that also covers publishing ``path``: the key file
    and the file it opens must appear as a pair.
    """
    from persistkit.format.crypto import Key
    from persistkit.io import current_fs

    _check_one(password, key_file)
    if password is not None:
        return Key.from_password(password, params=kdf), None
    where = os.path.abspath(os.fspath(key_file)) if key_file is not None else default_key_path(path)
    if current_fs().exists(where):
        return read_key_file(where), None
    return write_key_file(where), where
