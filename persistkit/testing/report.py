"""What the verifier saw during a test session: files, save latencies, crash states, faults.

Fixtures add to the process-wide ``RECORDER``; the plugin prints it as a table
(``--persistkit-report``) and writes it as JSON (``--persistkit-report-json``).
Under xdist each worker ships its part to the controller, which merges them.
Pure Python on purpose: the plugin imports this module.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from typing import Any

from persistkit.units import size

__all__ = ["RECORDER", "Recorder", "render_table"]


@dataclass
class Recorder:
    """Totals for one session (or one worker)."""

    files: dict[str, int] = field(default_factory=dict)  # path -> size in bytes
    save_seconds: list[float] = field(default_factory=list)
    save_log: list[dict[str, Any]] = field(default_factory=list)  # per save: seconds, target, kind, test
    unobserved: list[str] = field(default_factory=list)  # saves whose timing was not seen, and why
    crash_states: int = 0
    faults: int = 0
    corruptions: int = 0
    kills: int = 0
    violations: int = 0
    runs: list[dict[str, Any]] = field(default_factory=list)  # one per fixture call
    test: str = ""  # node id of the running test

    def add_run(self, fixture: str, **figures: Any) -> None:
        self.runs.append({"test": self.test, "fixture": fixture, **figures})
        self.crash_states += int(figures.get("states", 0))
        self.faults += int(figures.get("faults", 0))
        self.corruptions += int(figures.get("corruptions", 0))
        self.kills += int(figures.get("kills", 0))
        self.violations += int(figures.get("violations", 0))

    def add_file(self, path: str, size: int) -> None:
        self.files[path] = size

    def add_save(self, seconds: float, *, target: str = "", kind: str = "") -> None:
        self.save_seconds.append(seconds)
        self.save_log.append({"seconds": seconds, "target": target, "kind": kind, "test": self.test})

    def to_dict(self) -> dict[str, Any]:
        saves = self.save_seconds
        return {
            "files": dict(sorted(self.files.items())),
            "saves": {
                "count": len(saves),
                "median_seconds": statistics.median(saves) if saves else None,
                "max_seconds": max(saves) if saves else None,
                "all_seconds": list(saves),
                "by_user_code": sum(1 for s in self.save_log if s["kind"] == "user save"),
                "all": list(self.save_log),
                "unobserved": list(self.unobserved),
            },
            "crash_states": self.crash_states,
            "faults": self.faults,
            "corruptions": self.corruptions,
            "kills": self.kills,
            "violations": self.violations,
            "runs": list(self.runs),
        }

    def merge(self, data: dict[str, Any]) -> None:
        """Add a worker's ``to_dict()`` to this recorder."""
        self.files.update(data.get("files", {}))
        self.save_seconds.extend(data.get("saves", {}).get("all_seconds", []))
        self.save_log.extend(data.get("saves", {}).get("all", []))
        self.unobserved.extend(data.get("saves", {}).get("unobserved", []))
        for name in ("crash_states", "faults", "corruptions", "kills", "violations"):
            setattr(self, name, getattr(self, name) + int(data.get(name, 0)))
        self.runs.extend(data.get("runs", []))

    def empty(self) -> bool:
        return not (self.files or self.save_seconds or self.runs)

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)


RECORDER = Recorder()


def render_table(rec: Recorder, *, max_files: int = 20) -> list[str]:
    """The terminal summary, as plain lines (no rich: this runs inside pytest's reporter)."""
    lines: list[str] = []
    data = rec.to_dict()
    files = sorted(rec.files.items(), key=lambda kv: (-kv[1], kv[0]))
    lines.append(f"files written: {len(files)}")
    if files:
        width = min(max(len(p) for p, _ in files[:max_files]), 90)
        for path, nbytes in files[:max_files]:
            shown = path if len(path) <= width else "..." + path[-(width - 3) :]
            lines.append(f"  {shown:<{width}}  {size(nbytes):>10}")
        if len(files) > max_files:
            lines.append(f"  ... and {len(files) - max_files} more")
    saves = data["saves"]
    if saves["count"]:
        user = saves["by_user_code"]
        lines.append(
            f"saves: {saves['count']} ({user} by user code, {saves['count'] - user} by persistkit)  "
            f"median {saves['median_seconds'] * 1000:.2f} ms  max {saves['max_seconds'] * 1000:.2f} ms"
        )
        slowest = sorted(rec.save_log, key=lambda s: -s["seconds"])[:5]
        for s in slowest:
            target = s["target"] if len(s["target"]) <= 70 else "..." + s["target"][-67:]
            lines.append(f"  {s['seconds'] * 1000:9.2f} ms  {s['kind'] or 'save'} of {target}")
    else:
        lines.append("saves: 0")
    if rec.unobserved:
        lines.append(f"saves not observed (their time is unknown): {len(rec.unobserved)}")
        for text in rec.unobserved[:5]:
            lines.append(f"  {text}")
    lines.append(
        f"crash states explored: {rec.crash_states}  faults injected: {rec.faults}  "
        f"corruptions tried: {rec.corruptions}  kills: {rec.kills}  violations: {rec.violations}"
    )
    return lines
