"""Children for the SIGKILL storms in test_kill_storms.py, run by ``persistkit.testing.forkserver``.

Each prints one line per acknowledged operation, written after the call returned
(one write(2) per line): ``ACK <path> <seq>``. The harness kills the child at a
seeded random moment; everything printed before the kill was acknowledged.
"""

from __future__ import annotations

import os
import sys

import numpy as np

import persistkit as pk
from persistkit import archive as _archive  # noqa: F401  (preloaded for the fork server)
from persistkit import bundle as _bundle  # noqa: F401
from persistkit import model_store as _model_store  # noqa: F401

SYMBOL, AGENT, TIMEFRAME = "BTCUSDT", "ppo", "1h"
KEEP = 3


def _ack(*parts: object) -> None:
    os.write(1, (" ".join(str(p) for p in ("ACK", *parts)) + "\n").encode())


def models_for(seq: int) -> dict[str, object]:
    return {
        "weights": np.full((64, 64), float(seq), dtype=np.float32),
        "table": {"seq": seq, "name": f"v{seq}"},
    }


def model_store_child(argv: list[str]) -> int:
    """argv: root first_seq. Save versions forever, pruning to KEEP after each save."""
    root, seq = argv[0], int(argv[1])
    store = pk.ModelStore(root)
    while True:
        path = store.save(
            models_for(seq), symbol=SYMBOL, agent=AGENT, timeframe=TIMEFRAME, metadata={"seq": seq}
        )
        _ack(path, seq)
        store.prune(keep=KEEP)
        seq += 1


def archive_child(argv: list[str]) -> int:
    """argv: root. Create archives forever (create() verifies, then prunes to KEEP)."""
    archiver = pk.Archiver(argv[0], keep=KEEP)
    while True:
        path = archiver.create()
        _ack(path)


def restore_child(argv: list[str]) -> int:
    """argv: archive into. One restore; ACK when it returned."""
    pk.Archiver(os.path.dirname(argv[0])).restore(argv[0], argv[1])
    _ack(argv[1])
    return 0


if __name__ == "__main__":  # pragma: no cover - manual runs
    sys.exit(
        {"store": model_store_child, "archive": archive_child, "restore": restore_child}[sys.argv[1]](
            sys.argv[2:]
        )
    )
