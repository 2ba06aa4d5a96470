"""The persistence verifier: pytest plugin, strategies and crash/fault/lifecycle harnesses.

Everything here is resolved lazily (PEP 562): the pytest plugin imports this
package, and loading the plugin must not import hypothesis, cryptography,
torch or scikit-learn. Each name loads its module on first use.

Example::

    from persistkit.testing import PersistenceMachine, assert_unique_nonces, first_difference
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from persistkit import _lazy

if TYPE_CHECKING:  # what mypy and IDEs see; at run time each name is loaded on first use (_LAZY)
    from persistkit.testing.budget import Budget as Budget
    from persistkit.testing.budget import measure as measure
    from persistkit.testing.compare import assert_same as assert_same
    from persistkit.testing.compare import first_difference as first_difference
    from persistkit.testing.corruptions import Corruption as Corruption
    from persistkit.testing.corruptions import Corruptions as Corruptions
    from persistkit.testing.crash_points import CrashPoints as CrashPoints
    from persistkit.testing.crash_points import CrashReport as CrashReport
    from persistkit.testing.disk_faults import DiskFaults as DiskFaults
    from persistkit.testing.disk_faults import FaultReport as FaultReport
    from persistkit.testing.fs import CrashSimulator as CrashSimulator
    from persistkit.testing.fs import Snapshot as Snapshot
    from persistkit.testing.fs.faultfs import Fault as Fault
    from persistkit.testing.fs.faultfs import FaultFS as FaultFS
    from persistkit.testing.fs.recordfs import RecordingFS as RecordingFS
    from persistkit.testing.fs.testfs import HookedFS as HookedFS
    from persistkit.testing.lifecycle import Lifecycle as Lifecycle
    from persistkit.testing.machine import PersistenceMachine as PersistenceMachine
    from persistkit.testing.nonces import assert_unique_nonces as assert_unique_nonces
    from persistkit.testing.objects import FaultObjectStore as FaultObjectStore
    from persistkit.testing.objects import MemoryObjectStore as MemoryObjectStore
    from persistkit.testing.objects import ObjectCrashReport as ObjectCrashReport
    from persistkit.testing.objects import ObjectCrashState as ObjectCrashState
    from persistkit.testing.objects import ObjectFault as ObjectFault
    from persistkit.testing.objects import ObjectLog as ObjectLog
    from persistkit.testing.objects import ObjectOp as ObjectOp
    from persistkit.testing.objects import ObjectSpace as ObjectSpace
    from persistkit.testing.objects import RecordingObjectStore as RecordingObjectStore
    from persistkit.testing.objects import SimulatedCrash as SimulatedCrash
    from persistkit.testing.objects import object_crash_points as object_crash_points
    from persistkit.testing.objects import object_crash_states as object_crash_states
    from persistkit.testing.objects import record_objects as record_objects
    from persistkit.testing.objects import serve_objects as serve_objects
    from persistkit.testing.objects import snapshot_objects as snapshot_objects
    from persistkit.testing.observe.intercept import Interceptor as Interceptor
    from persistkit.testing.roundtrip import Roundtrip as Roundtrip
    from persistkit.testing.roundtrip import roundtrip as roundtrip

# name -> module that defines it
_LAZY: dict[str, str] = {
    "PersistenceMachine": "persistkit.testing.machine",
    "assert_unique_nonces": "persistkit.testing.nonces",
    "first_difference": "persistkit.testing.compare",
    "assert_same": "persistkit.testing.compare",
    "CrashPoints": "persistkit.testing.crash_points",
    "CrashReport": "persistkit.testing.crash_points",
    "DiskFaults": "persistkit.testing.disk_faults",
    "FaultReport": "persistkit.testing.disk_faults",
    "Corruptions": "persistkit.testing.corruptions",
    "Corruption": "persistkit.testing.corruptions",
    "Roundtrip": "persistkit.testing.roundtrip",
    "roundtrip": "persistkit.testing.roundtrip",
    "Lifecycle": "persistkit.testing.lifecycle",
    "Interceptor": "persistkit.testing.observe.intercept",
    "measure": "persistkit.testing.budget",
    "Budget": "persistkit.testing.budget",
    # the test file systems, on one mutation hook (wrap persistkit.io's PersistFS via use_fs)
    "HookedFS": "persistkit.testing.fs.testfs",
    "RecordingFS": "persistkit.testing.fs.recordfs",
    "FaultFS": "persistkit.testing.fs.faultfs",
    "Fault": "persistkit.testing.fs.faultfs",
    "CrashSimulator": "persistkit.testing.fs",
    "Snapshot": "persistkit.testing.fs",
    "FaultObjectStore": "persistkit.testing.objects",
    "MemoryObjectStore": "persistkit.testing.objects",
    "ObjectCrashReport": "persistkit.testing.objects",
    "ObjectCrashState": "persistkit.testing.objects",
    "ObjectFault": "persistkit.testing.objects",
    "ObjectLog": "persistkit.testing.objects",
    "ObjectOp": "persistkit.testing.objects",
    "ObjectSpace": "persistkit.testing.objects",
    "RecordingObjectStore": "persistkit.testing.objects",
    "SimulatedCrash": "persistkit.testing.objects",
    "object_crash_points": "persistkit.testing.objects",
    "object_crash_states": "persistkit.testing.objects",
    "record_objects": "persistkit.testing.objects",
    "serve_objects": "persistkit.testing.objects",
    "snapshot_objects": "persistkit.testing.objects",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    return _lazy.resolve(__name__, _LAZY, globals(), name)


def __dir__() -> list[str]:
    return _lazy.listing(globals(), __all__)
