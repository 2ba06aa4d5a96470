"""The persistence verifier: pytest plugin, strategies and crash/fault/lifecycle harnesses.

Everything here is resolved lazily (PEP 562): the pytest plugin imports this
package, and loading the plugin must not import hypothesis, cryptography,
torch or scikit-learn. Each name loads its module on first use.

Example::

    from persistkit.testing import PersistenceMachine, assert_unique_nonces, first_difference
"""

from __future__ import annotations

from typing import Any

from persistkit import _lazy

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
