"""The object-store model: recording (``log``), faults (``faults``), in-memory stores (``memory``) and
crash states judged by the one verdict loop (``states``). The same pipeline as files, for buckets.

Every store persistkit opens at a URL passes through the hook in
``persistkit.io.objects`` (``use_object_store``), so a test can:

- record it: ``record_objects()`` wraps every new store in a
  ``RecordingObjectStore``; the shared ``ObjectLog`` holds each completed
  PUT (create-only or compare-and-swap) and DELETE with its key and bytes, and
  every read, in order;
- inject faults: ``FaultObjectStore`` fails the n-th operation with exactly the
  error the real layer raises for a dropped connection, throttling or expired
  credentials (the raw failure goes through ``RemoteStore.error``), once or
  persistently, or "crashes" the process (``SimulatedCrash``) before or after an
  operation completes;
- replay it: ``MemoryObjectStore`` honours create-only and If-Match like S3
  (an etag changes on every PUT; an upload that did not complete is invisible),
  and ``serve_objects(objects)`` replaces every new store by one over those
  objects, which is fast enough to check hundreds of crash states.

The crash model for object stores: a crash leaves the objects that were there
before plus any prefix of the completed PUTs and DELETEs; an upload that never
completed is invisible. ``object_crash_states(initial, log)`` yields those
states; ``object_crash_points(save, check, url=...)`` records ``save()``
against the real store, checks the recording explains the bucket it left, then
runs ``check()`` in every crash state and fails naming the first bad state,
the operation that made it, and a "Fix:" hint. Observing no operation is an
error (``NotJudgeable``), never a pass.

Example::

    from persistkit.testing import object_crash_points

    def test_publish_is_atomic(s3_bucket, tmp_path):
        server, bucket = s3_bucket
        url, opts = f"s3://{bucket}/models", server.storage_options

        def save():
            ModelStore(url, storage_options=opts, cache_dir=tmp_path / "w").save(
                {"m": model}, symbol="BTC", agent="ppo", timeframe="1h")

        def check():  # runs once per crash state, against an in-memory copy of it
            store = ModelStore(url, storage_options=opts, cache_dir=tmp_path / "r", key_file=...)
            for version in store.versions("BTC", "ppo", "1h"):
                store.load(version)

        report = object_crash_points(save, check, url=url, storage_options=opts)
        print(report.summary())   # "5 crash states (object store) of a save with 4 completed PUTs/DELETEs ..."

Lower level, for a harness of your own::

    with record_objects() as log:
        save()
    for state in object_crash_states(initial_objects, log):
        with state.serve():
            check()
"""

from persistkit.testing.objects.faults import FAILURES, FaultObjectStore, ObjectFault, raw_failure
from persistkit.testing.objects.log import (
    ObjectLog,
    ObjectOp,
    RecordingObjectStore,
    SimulatedCrash,
    record_objects,
)
from persistkit.testing.objects.memory import MemoryObjectStore, ObjectSpace, serve_objects, snapshot_objects
from persistkit.testing.objects.states import (
    ObjectCrashReport,
    ObjectCrashState,
    object_crash_points,
    object_crash_states,
)

__all__ = [
    "FAILURES",
    "FaultObjectStore",
    "MemoryObjectStore",
    "ObjectCrashReport",
    "ObjectCrashState",
    "ObjectFault",
    "ObjectLog",
    "ObjectOp",
    "ObjectSpace",
    "RecordingObjectStore",
    "SimulatedCrash",
    "object_crash_points",
    "object_crash_states",
    "raw_failure",
    "record_objects",
    "serve_objects",
    "snapshot_objects",
]
