"""A small long-running worker for the lifecycle zoo cases; speaks the ACK line protocol.

    python worker.py --state-dir DIR --steps N --mode good|no-save-on-term|ack-before-durable

State: an append-only journal of processed item ids (``items.jsonl``), plus
running statistics kept in memory and saved in ``stats.json`` at shutdown.
``ACK <id>`` is printed once an item is durable.

Modes:
* ``good``: journal appends are fsynced before the ACK; SIGTERM stops the loop
  between steps, the statistics are saved, ``SAVED <digest>`` is printed.
* ``no-save-on-term`` (BUG): the SIGTERM handler prints ``SAVED`` and calls
  ``os._exit(0)``, which skips the ``finally`` block that saves: the
  statistics since the last periodic save are lost.
* ``ack-before-durable`` (BUG): items are acknowledged when queued, and the
  queue is written (and fsynced) every 50 ms, so a crash loses acknowledged work.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import tempfile
import time


def out(line):
    os.write(1, (line + "\n").encode())


class Worker:
    def __init__(self, state_dir, mode):
        self.dir = state_dir
        self.mode = mode
        os.makedirs(state_dir, exist_ok=True)
        self.journal = os.path.join(state_dir, "items.jsonl")
        self.items = []
        if os.path.exists(self.journal):
            with open(self.journal) as f:
                for line in f:
                    if line.endswith("\n"):
                        self.items.append(json.loads(line)["id"])
        self.stats = {"steps": 0, "total": 0}
        stats_path = os.path.join(state_dir, "stats.json")
        if os.path.exists(stats_path):
            with open(stats_path) as f:
                self.stats = json.load(f)
        self.pending = []
        self.stop = False
        self.flushed = time.monotonic()
        self.stop = False

    def digest(self):
        data = json.dumps({"items": self.items + self.pending, "stats": self.stats}, sort_keys=True)
        return hashlib.sha256(data.encode()).hexdigest()[:16]

    def flush(self):
        if not self.pending:
            return
        with open(self.journal, "a") as f:
            for item in self.pending:
                f.write(json.dumps({"id": item}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.items += self.pending
        self.pending = []

    def save_stats(self):
        self.flush()
        fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.stats, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.dir, "stats.json"))

    def step(self):
        item = len(self.items) + len(self.pending)
        self.stats["steps"] += 1
        self.stats["total"] += item % 7
        self.pending.append(item)
        if self.mode == "ack-before-durable":
            out(f"ACK {item}")
            if time.monotonic() - self.flushed > 0.05:
                self.flush()
                self.flushed = time.monotonic()
        else:
            self.flush()
            out(f"ACK {item}")


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--mode", default="good")
    args = parser.parse_args(argv)
    worker = Worker(args.state_dir, args.mode)

    def on_term(signum, frame):
        if worker.mode == "no-save-on-term":
            out(f"SAVED {worker.digest()}")
            os._exit(0)  # the bug: skips the finally block below, where the save lives
        worker.stop = True  # finish the current step, then save and exit

    signal.signal(signal.SIGTERM, on_term)
    out(f"READY {len(worker.items)}")
    try:
        for _ in range(args.steps):
            if worker.stop:
                break
            worker.step()
            time.sleep(0.0005)  # a unit of real work
    finally:
        worker.save_stats()
        if args.steps:
            out(f"SAVED {worker.digest()}")
    out(f"DONE {worker.digest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
