"""The one exception tree of persistkit.

Every failure persistkit raises on purpose is one of these. Each message names
the file, member or field involved and says what to do about it.

::

    PersistkitError
     ├── IntegrityError        (also ValueError)   bytes changed: truncation, bit flip, tamper, splice
     ├── FormatError           (also ValueError)   not a persistkit file, unknown codec, newer format
     │    └── NewerFormatError                    intact, but needs a newer persistkit or an unregistered codec
     ├── WrongKeyError         (also ValueError)   the password or key file does not open this file
     ├── UntrustedTypeError    (also TypeError)    loading would run code the caller did not trust
     ├── UnsupportedTypeError  (also TypeError)    a value persistkit cannot store without pickle
     ├── UnsafeArchiveError    (also ValueError)   zip-slip, zip bomb, escaping symlink, ...
     ├── BudgetExceededError   (also ValueError)   a size or count limit would be exceeded
     ├── MigrationError        (also ValueError)   stored state is newer than the code, or a step failed
     ├── LockedError           (also RuntimeError) another writer holds the store or archive directory
     ├── NotFoundError         (also KeyError)     no such bundle member or alias
     ├── NoVersionError        (also FileNotFoundError) a model-store group holds no version yet
     └── PersistIOError        (also OSError)      the operating system refused a file operation

Exceptions are picklable with all their attributes, because crash tests carry
them across process boundaries.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Any

__all__ = [
    "BudgetExceededError",
    "FormatError",
    "IntegrityError",
    "LockedError",
    "MigrationError",
    "NewerFormatError",
    "NoVersionError",
    "NotFoundError",
    "PersistIOError",
    "PersistkitError",
    "UnsafeArchiveError",
    "UnsupportedTypeError",
    "UntrustedTypeError",
    "WrongKeyError",
]


class PersistkitError(Exception):
    """Root of every error persistkit raises on purpose.

    ``path``, ``member`` and ``field`` say where the problem is, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        member: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = os.fspath(path) if path is not None else None
        self.member = member
        self.field = field

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only constructor arguments are not replayed by the default
        # BaseException pickling, so rebuild from the message and restore state.
        return (_rebuild, (type(self), self.message), self.__dict__.copy())


def _rebuild(cls: type[PersistkitError], message: str) -> PersistkitError:
    err = cls.__new__(cls, message)
    Exception.__init__(err, message)
    return err


class IntegrityError(PersistkitError, ValueError):
    """Stored bytes no longer match what was written (truncation, bit flip, tamper)."""


class FormatError(PersistkitError, ValueError):
    """The bytes are not a persistkit format this version can read."""


class NewerFormatError(FormatError):
    """Intact data this program cannot read: a newer persistkit wrote it, or a codec that is not registered.

    Never a sign of damage, so a state store never falls back past it (that would roll back acknowledged
    data) and never quarantines it: upgrade persistkit, or register the codec, and load again.
    """


class WrongKeyError(PersistkitError, ValueError):
    """The password or key does not open this file (told apart from tampering)."""


class UntrustedTypeError(PersistkitError, TypeError):
    """Loading would construct types the caller has not trusted."""

    def __init__(
        self,
        message: str,
        *,
        types: list[str] | tuple[str, ...] = (),
        path: str | os.PathLike[str] | None = None,
        member: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message, path=path, member=member, field=field)
        self.types = list(types)


class UnsupportedTypeError(PersistkitError, TypeError):
    """A value cannot be stored without pickle; ``field`` is its path in the value."""


class UnsafeArchiveError(PersistkitError, ValueError):
    """An archive tries to escape its target, bomb memory, or smuggle special files."""


class BudgetExceededError(PersistkitError, ValueError):
    """A configured size or count budget would be exceeded."""


class MigrationError(PersistkitError, ValueError):
    """Stored state cannot be brought to the schema version of the running code."""


class LockedError(PersistkitError, RuntimeError):
    """Another writer holds the lock; ``pid`` is the holder when known."""

    def __init__(
        self,
        message: str,
        *,
        pid: int | None = None,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(message, path=path)
        self.pid = pid


class NotFoundError(PersistkitError, KeyError):
    """A bundle member or alias that is not there; the message lists what is."""


class NoVersionError(PersistkitError, FileNotFoundError):
    """A ModelStore symbol/agent/timeframe has no saved version yet."""


class PersistIOError(PersistkitError, OSError):
    """The operating system refused a file operation; ``errno`` says why."""

    def __init__(
        self,
        message: str,
        *,
        errno: int | None = None,
        path: str | os.PathLike[str] | None = None,
        operation: str | None = None,
    ) -> None:
        super().__init__(message, path=path)
        self.errno = errno
        self.operation = operation

    def __reduce__(self) -> tuple[Any, ...]:
        state = self.__dict__.copy()
        state["errno"] = self.errno  # lives in OSError's C struct, not in __dict__
        return (_rebuild, (type(self), self.message), state)

    def __setstate__(self, state: dict[str, Any] | None) -> None:
        state = dict(state or {})
        errno_value = state.pop("errno", None)
        self.__dict__.update(state)
        self.errno = errno_value


def describe_errno(code: int | None) -> str:
    """``ENOSPC (No space left on device)`` for messages; ``unknown errno`` if None."""
    if code is None:
        return "unknown errno"
    name = _errno.errorcode.get(code, str(code))
    return f"{name} ({os.strerror(code)})"
