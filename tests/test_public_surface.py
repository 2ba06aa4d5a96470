"""The public names of ``persistkit`` and ``persistkit.testing`` are a contract: pinned exactly."""

from __future__ import annotations

import warnings

import persistkit as pk
import persistkit.testing

PERSISTKIT_ALL = [
    "AnyOf",
    "Archiver",
    "BoundedLog",
    "BudgetExceededError",
    "Bundle",
    "Checkpoint",
    "FormatError",
    "InsecureKeyFileWarning",
    "IntegrityError",
    "KeepDaily",
    "KeepLast",
    "KeepWeekly",
    "KeepWithin",
    "LoadReport",
    "LockedError",
    "Manifest",
    "MigrationError",
    "ModelStore",
    "PersistIOError",
    "Persistent",
    "PersistkitError",
    "Report",
    "StateRecoveredWarning",
    "StateStore",
    "UnsafeArchiveError",
    "UnsupportedTypeError",
    "UntrustedTypeError",
    "VersionSkewWarning",
    "WrongKeyError",
    "__version__",
    "backup_before_overwrite",
    "inspect",
    "load_bundle",
    "save_bundle",
    "training_session",
    "verify",
]

TESTING_ALL = [
    "Budget",
    "Corruption",
    "Corruptions",
    "CrashPoints",
    "CrashReport",
    "CrashSimulator",
    "DiskFaults",
    "Fault",
    "FaultFS",
    "FaultObjectStore",
    "FaultReport",
    "HookedFS",
    "Interceptor",
    "Lifecycle",
    "MemoryObjectStore",
    "ObjectCrashReport",
    "ObjectCrashState",
    "ObjectFault",
    "ObjectLog",
    "ObjectOp",
    "ObjectSpace",
    "PersistenceMachine",
    "RecordingFS",
    "RecordingObjectStore",
    "Roundtrip",
    "SimulatedCrash",
    "Snapshot",
    "assert_same",
    "assert_unique_nonces",
    "first_difference",
    "measure",
    "object_crash_points",
    "object_crash_states",
    "record_objects",
    "roundtrip",
    "serve_objects",
    "snapshot_objects",
]


def test_persistkit_all_is_pinned():
    assert sorted(pk.__all__) == PERSISTKIT_ALL


def test_persistkit_testing_all_is_pinned():
    assert sorted(persistkit.testing.__all__) == TESTING_ALL


def test_retention_policies_and_warnings_are_exported():
    from persistkit.format.crypto import InsecureKeyFileWarning
    from persistkit.policy import retention
    from persistkit.state.store import StateRecoveredWarning

    assert pk.KeepLast is retention.KeepLast and pk.AnyOf is retention.AnyOf
    assert pk.KeepDaily is retention.KeepDaily and pk.KeepWeekly is retention.KeepWeekly
    assert pk.KeepWithin is retention.KeepWithin
    assert pk.StateRecoveredWarning is StateRecoveredWarning
    assert pk.InsecureKeyFileWarning is InsecureKeyFileWarning
    for warning in (pk.StateRecoveredWarning, pk.InsecureKeyFileWarning, pk.VersionSkewWarning):
        assert issubclass(warning, UserWarning)


def test_bundle_repr_is_readable_and_holds_no_key_material(tmp_path):
    path = pk.save_bundle(tmp_path / "x.models", {"weights": [1.0, 2.0]}, metadata={"run": 7}, password="pw")
    bundle = pk.load_bundle(path, password="pw")
    text = repr(bundle)
    assert text.startswith("<Bundle ") and "(encrypted)" in text and "weights: list" in text
    assert "run" in text and "salt" not in text and "b'" not in text and len(text) < 300


def test_load_report_repr_is_a_summary(tmp_path):
    store = pk.StateStore(tmp_path / "state", autosave_every=0)
    store.register("log", pk.BoundedLog(5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = store.load()
    store.close()
    assert repr(report) == "<LoadReport generation None; log: defaults>"


def test_register_keeps_the_component_type(tmp_path):
    """mypy sees BoundedLog[T] come back from StateStore.register (checked with mypy itself)."""
    import subprocess
    import sys

    src = tmp_path / "typed.py"
    src.write_text(
        "import datetime as dt\n"
        "import persistkit as pk\n"
        "store = pk.StateStore('s')\n"
        "trades = store.register('trades', pk.BoundedLog[dt.datetime](10))\n"
        "reveal_type(trades)\n"
        "trades.append(1)\n"
    )
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", str(src)], capture_output=True, text=True)
    assert 'Revealed type is "persistkit.state.bounded.BoundedLog[datetime.datetime]"' in out.stdout
    assert 'incompatible type "int"; expected "datetime"' in out.stdout  # the element type is enforced


def test_sizes_print_one_way():
    from persistkit.units import size

    assert [size(n) for n in (0, 812, 1024, 1772, 3 * 1024**2, 5 * 1024**4)] == [
        "0 B", "812 B", "1.0 KiB", "1.7 KiB", "3.0 MiB", "5.0 TiB",
    ]  # fmt: skip
