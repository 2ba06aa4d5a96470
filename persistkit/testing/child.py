"""A child process that runs any ``persistkit check`` target and speaks the lifecycle line protocol.

    python -m persistkit.testing.child --target module:factory --state-dir DIR --steps N

It opens the target (see ``persistkit.testing.battery.Target``), starts the
store's autosave and signal handling, prints ``READY <generation>``, then
steps. When a step returns a mapping with an ``"id"`` (a closed trade, say),
the store's journals are flushed and ``ACK <id>`` is printed: that work is
durable. Each step runs inside ``store.atomic()``, so autosave and the
final save on a signal never see half a step. On SIGTERM the store's final save prints ``SAVED <generation>
<digest>``; a normal end prints ``DONE <digest>``. With ``--snapshots DIR`` the
state behind each digest is written to ``DIR/<digest>``, so that the battery
compares states (type-aware, mapping order ignored), not only fingerprints.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["main"]


def _write(line: str) -> None:
    os.write(1, (line + "\n").encode())  # one write(2) per line: never interleaved on a pipe


def main(argv: list[str] | None = None) -> int:
    from persistkit.testing.battery import Target, digest, write_snapshot

    parser = argparse.ArgumentParser(prog="python -m persistkit.testing.child")
    parser.add_argument("--target", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--autosave-every", type=float, default=300.0)
    parser.add_argument("--snapshots", default=None)
    args = parser.parse_args(argv)
    app = Target(args.target).open(args.state_dir, autosave_every=args.autosave_every)
    store = app.store

    def fingerprint_of(snapshot: Any) -> str:
        return digest(snapshot) if args.snapshots is None else write_snapshot(args.snapshots, snapshot)

    store.on_final_save = lambda cp: _write(f"SAVED {cp.generation} {fingerprint_of(app.snapshot())}")
    store.start()
    _write(f"READY {store.generation}")
    for _ in range(args.steps):
        with store.atomic():  # no checkpoint (autosave, signal) in the middle of a step
            result = app.step()
        if isinstance(result, Mapping) and "id" in result:
            store.flush()
            _write(f"ACK {result['id']}")
    store.close()
    _write(f"DONE {fingerprint_of(app.snapshot())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
