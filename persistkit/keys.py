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

import base64
import binascii
import errno
import os
import stat
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from persistkit.errors import FormatError, IntegrityError, PersistIOError, WrongKeyError

if TYPE_CHECKING:
    from persistkit.format.crypto import KdfParams, Key

__all__ = [
    "KEY_FILE_MAX_BYTES",
    "KEY_SUFFIX",
    "InsecureKeyFileWarning",
    "KeyChoice",
    "check_one",
    "default_key_path",
    "for_load",
    "for_save",
    "read_key_file",
    "requirement",
    "write_key_file",
]

KEY_SUFFIX = ".key"

PathLike = str | os.PathLike[str]
OnInsecure = Literal["warn", "error", "ignore"]
KEY_FILE_MAX_BYTES = 1024


class InsecureKeyFileWarning(UserWarning):
    """A key file can be read or written by group or others."""


def default_key_path(path: PathLike) -> str:
    """Where the key of ``path`` lives when none is passed: ``<path>.key``."""
    return os.path.abspath(os.fspath(path)) + KEY_SUFFIX


def write_key_file(path: PathLike, key: Key | None = None) -> Key:
    """Create a key file (mode 0600) holding ``key`` or a new random key; never overwrite one.

    The key is published with a hard link, which refuses an existing name: of
    two threads or processes creating the same key file at once, one wins and
    the other gets the "already exists" error (never a key file that changed
    under a writer that already sealed with it).
    """
    from persistkit.format.crypto import Key
    from persistkit.io import atomic_write, current_fs

    key = key or Key.generate()
    target = os.path.abspath(os.fspath(path))
    exists = PersistIOError(
        f"key file {target!r} already exists; refusing to overwrite a key (files sealed with it "
        "could no longer be opened). Delete it yourself if you are sure, or choose another path.",
        errno=errno.EEXIST,
        path=target,
        operation="write key file",
    )
    if current_fs().exists(target):
        raise exists
    try:
        atomic_write(target, base64.b64encode(key.material()) + b"\n", mode=0o600, exclusive=True)
    except PersistIOError as err:
        if err.errno == errno.EEXIST:  # created by another writer since the check above
            raise exists from None
        raise
    return Key(key.material(), source=f"key file {target}")


def read_key_file(path: PathLike, *, on_insecure: OnInsecure = "warn") -> Key:
    """Read a key file; warn (or fail, or ignore) when group or others can access it."""
    if on_insecure not in ("warn", "error", "ignore"):
        raise ValueError("on_insecure must be 'warn', 'error' or 'ignore'")
    from persistkit.format.crypto import KEY_BYTES, Key
    from persistkit.io import current_fs

    target = os.path.abspath(os.fspath(path))
    fs = current_fs()
    try:
        st = fs.stat(target)
        if not stat.S_ISREG(st.st_mode):
            raise FormatError(f"key file {target!r} is not a regular file.", path=target)
        if st.st_size > KEY_FILE_MAX_BYTES:
            raise FormatError(
                f"{target!r} is not a persistkit key file: it is {st.st_size} bytes, a key file is "
                f"{len(base64.b64encode(bytes(KEY_BYTES))) + 1}.",
                path=target,
            )
        raw = fs.read_bytes(target)
    except FileNotFoundError:
        raise PersistIOError(
            f"key file not found: looked for {target!r}. Pass key_file= pointing at the key saved with "
            "this file, or password= if it was sealed with a password.",
            errno=errno.ENOENT,
            path=target,
            operation="read key file",
        ) from None
    except OSError as err:
        raise PersistIOError(
            f"cannot read key file {target!r}: {err.strerror}. Fix its permissions or pass another key_file=.",
            errno=err.errno,
            path=target,
            operation="read key file",
        ) from err
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077 and on_insecure != "ignore":
        message = (
            f"key file {target!r} is readable by group or others (mode {mode:04o}); anyone who can read "
            f"it can open your files. Run `chmod 600 {target}`."
        )
        if on_insecure == "error":
            raise PersistIOError(message, errno=errno.EACCES, path=target, operation="read key file")
        warnings.warn(message, InsecureKeyFileWarning, stacklevel=2)
    try:
        material = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        material = b""
    if len(material) != KEY_BYTES:
        # Never echo the content: a damaged key file is still mostly key.
        raise FormatError(
            f"{target!r} is not a persistkit key file (expected {KEY_BYTES} random bytes in base64 on one "
            "line). Point key_file= at the right file, or create a new key with write_key_file().",
            path=target,
        )
    return Key(material, source=f"key file {target}")


def check_one(password: str | None, key_file: PathLike | None) -> None:
    """The rule every reader and writer shares: a password or a key file, never both."""
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

    check_one(password, key_file)
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

    check_one(password, key_file)
    if password is not None:
        return Key.from_password(password, params=kdf), None
    where = os.path.abspath(os.fspath(key_file)) if key_file is not None else default_key_path(path)
    if current_fs().exists(where):
        return read_key_file(where), None
    return write_key_file(where), where
