"""A plain app whose first step imports a module lazily; that module records which process imported it.

``persistkit check`` restarts apps through a fork server that warms the app up
before forking, so the lazily imported module is imported once there, not again
by each restarted child. The import log is the file named by ``LAZY_IMPORT_LOG``.
"""

from __future__ import annotations

import json
import os


class Counter:
    def __init__(self, state_dir: str) -> None:
        os.makedirs(state_dir, exist_ok=True)
        self.path = os.path.join(state_dir, "n.json")
        self.n = 0
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.n = json.load(f)["n"]

    def step(self) -> dict[str, int]:
        from tests.apps import heavy_module  # imported on first use, as torch often is

        self.n = heavy_module.increment(self.n)
        return {"id": self.n}

    def snapshot(self) -> dict[str, int]:
        return {"n": self.n}

    def save(self) -> None:
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w") as f:
                f.write(json.dumps({"n": self.n}))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        fd = os.open(os.path.dirname(self.path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def open_counter(state_dir: str) -> Counter:
    return Counter(state_dir)
