"""persistkit: persistence you can prove.

Public names are resolved lazily (PEP 562) so that ``import persistkit`` stays
light: numpy, cryptography, torch, sklearn, sb3, hypothesis and pytest load
only when the feature that needs them is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from persistkit import _lazy
from persistkit.errors import (
    BudgetExceededError,
    FormatError,
    IntegrityError,
    LockedError,
    MigrationError,
    PersistIOError,
    PersistkitError,
    UnsafeArchiveError,
    UnsupportedTypeError,
    UntrustedTypeError,
    WrongKeyError,
)

__version__ = "0.1.0"

# name -> module that defines it; imported on first attribute access.
_LAZY: dict[str, str] = {
    # bundles
    "Bundle": "persistkit.bundle",
    "Report": "persistkit.bundle",
    "save_bundle": "persistkit.bundle",
    "load_bundle": "persistkit.bundle",
    "inspect": "persistkit.inspection",
    "verify": "persistkit.inspection",
    "Manifest": "persistkit.format.manifest",
    "VersionSkewWarning": "persistkit.bundle",
    "InsecureKeyFileWarning": "persistkit.keys",
    "ModelStore": "persistkit.model_store",
    # archives
    "Archiver": "persistkit.archive",
    "backup_before_overwrite": "persistkit.archive",
    "training_session": "persistkit.archive",
    # state
    "StateStore": "persistkit.state",
    "BoundedLog": "persistkit.state",
    "Persistent": "persistkit.state",
    "LoadReport": "persistkit.state",
    "Checkpoint": "persistkit.state",
    "StateRecoveredWarning": "persistkit.state.store",
    # retention policies (Archiver(keep=...), ModelStore.prune, dry runs)
    "KeepLast": "persistkit.policy.retention",
    "KeepDaily": "persistkit.policy.retention",
    "KeepWeekly": "persistkit.policy.retention",
    "KeepWithin": "persistkit.policy.retention",
    "AnyOf": "persistkit.policy.retention",
}

__all__ = [
    "BudgetExceededError",
    "FormatError",
    "IntegrityError",
    "LockedError",
    "MigrationError",
    "PersistIOError",
    "PersistkitError",
    "UnsafeArchiveError",
    "UnsupportedTypeError",
    "UntrustedTypeError",
    "WrongKeyError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    return _lazy.resolve(__name__, _LAZY, globals(), name)


def __dir__() -> list[str]:
    return _lazy.listing(globals(), __all__)


if TYPE_CHECKING:  # pragma: no cover - lets type checkers see the lazily resolved names
    from persistkit.archive import Archiver as Archiver
    from persistkit.archive import backup_before_overwrite as backup_before_overwrite
    from persistkit.archive import training_session as training_session
    from persistkit.bundle import Bundle as Bundle
    from persistkit.bundle import Report as Report
    from persistkit.bundle import VersionSkewWarning as VersionSkewWarning
    from persistkit.bundle import load_bundle as load_bundle
    from persistkit.bundle import save_bundle as save_bundle
    from persistkit.format.manifest import Manifest as Manifest
    from persistkit.inspection import inspect as inspect
    from persistkit.inspection import verify as verify
    from persistkit.keys import InsecureKeyFileWarning as InsecureKeyFileWarning
    from persistkit.model_store import ModelStore as ModelStore
    from persistkit.policy.retention import AnyOf as AnyOf
    from persistkit.policy.retention import KeepDaily as KeepDaily
    from persistkit.policy.retention import KeepLast as KeepLast
    from persistkit.policy.retention import KeepWeekly as KeepWeekly
    from persistkit.policy.retention import KeepWithin as KeepWithin
    from persistkit.state import BoundedLog as BoundedLog
    from persistkit.state import Checkpoint as Checkpoint
    from persistkit.state import LoadReport as LoadReport
    from persistkit.state import Persistent as Persistent
    from persistkit.state import StateStore as StateStore
    from persistkit.state.store import StateRecoveredWarning as StateRecoveredWarning
