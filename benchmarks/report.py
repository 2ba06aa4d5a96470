"""Turn pytest-benchmark JSON into benchmarks/RESULTS.md.

Usage: python benchmarks/report.py results.json RESULTS.md

One row per comparison: persistkit's median, the anchor's median, the ratio,
the target, and whether it was met. Sizes come from ``extra_info["bytes"]``.
"""

from __future__ import annotations

import json
import platform
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

TARGET = re.compile(
    r"^(?P<metric>time|size|rate)(?P<op><=|>=)(?:(?P<factor>[\d.]+)\*(?P<anchor>[\w.-]+)|(?P<anchor2>[\w.-]+)\+(?P<delta>[\d.]+)|(?P<abs>[\d.]+)s)$"
)


def fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def value(row: dict[str, Any], metric: str) -> float:
    if metric == "size":
        return float(row["extra_info"]["bytes"])
    median = float(row["stats"]["median"])
    if metric == "rate":
        return float(row["extra_info"].get("records", 1)) / median
    return median


def other_anchors(group: list[dict[str, Any]], mine: dict[str, Any], shown_anchor: str | None) -> str:
    """Every other anchor measured in the group, with persistkit's time as a ratio of it."""
    pk = value(mine, "time")
    out = []
    for r in group:
        role = r["extra_info"]["role"]
        if role in ("persistkit", shown_anchor) or not r["stats"]["median"]:
            continue
        t = value(r, "time")
        out.append(f"{role} {fmt_time(t)} ({pk / t:.2f}\u00d7)")
    return "; ".join(out) or "—"


def evaluate(rows: list[dict[str, Any]]) -> list[list[str]]:
    table: list[list[str]] = []
    by_comparison: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        info = row.get("extra_info", {})
        if "comparison" in info:
            by_comparison[info["comparison"]].append(row)
    for comparison, group in by_comparison.items():
        ours = [r for r in group if r["extra_info"]["role"] == "persistkit"]
        for mine in ours:
            target = mine["extra_info"].get("target", "report")
            match = TARGET.match(target)
            metric = match["metric"] if match else "time"
            pk = value(mine, metric)
            shown = (
                fmt_bytes(pk) if metric == "size" else f"{pk:,.0f}/s" if metric == "rate" else fmt_time(pk)
            )
            anchor_name = (match["anchor"] or match["anchor2"]) if match else None
            anchors = [r for r in group if r["extra_info"]["role"] == anchor_name]
            if not anchors and metric == "size" and "anchor_bytes" in mine["extra_info"]:
                anchors = [
                    {"extra_info": {"bytes": mine["extra_info"]["anchor_bytes"]}, "stats": {"median": 0}}
                ]
            if not anchors and metric == "time" and "anchor_seconds" in mine["extra_info"]:
                # an anchor computed in the benchmark itself (crash_points' limit: load() time + copy time)
                anchors = [{"extra_info": {}, "stats": {"median": mine["extra_info"]["anchor_seconds"]}}]
            if "rss_added" in mine["extra_info"]:
                shown += f", peak RSS +{fmt_bytes(mine['extra_info']['rss_added'])}"
            if match is None or (anchor_name and not anchors):
                if "states" in mine["extra_info"] and pk:  # crash_points rows: states per second too
                    shown += f" ({mine['extra_info']['states'] / pk:,.0f} states/s)"
                others = [r for r in group if r["extra_info"]["role"] != "persistkit"]
                note = ", ".join(f"{r['extra_info']['role']} {fmt_time(value(r, 'time'))}" for r in others)
                table.append(
                    [comparison, mine["name"], shown, note or "—", "—", target or "report", "reported", "—"]
                )
                continue
            if match["abs"]:
                limit = float(match["abs"])
                ok = pk <= limit
                table.append(
                    [comparison, mine["name"], shown, "—", "—", target, "met" if ok else "MISSED", "—"]
                )
                continue
            anchor = anchors[0]
            av = value(anchor, metric)
            a_shown = (
                fmt_bytes(av) if metric == "size" else f"{av:,.0f}/s" if metric == "rate" else fmt_time(av)
            )
            if match["delta"]:
                diff = pk - av
                ok = diff <= float(match["delta"])
                ratio = f"+{diff * 1e3:.0f} ms"
            else:
                r = pk / av if av else float("inf")
                factor = float(match["factor"])
                ok = r <= factor if match["op"] == "<=" else r >= factor
                ratio = f"{r:.2f}\u00d7"
            table.append(
                [
                    comparison,
                    mine["name"],
                    shown,
                    f"{anchor_name} {a_shown}",
                    ratio,
                    target,
                    "met" if ok else "MISSED",
                    other_anchors(group, mine, anchor_name) if metric == "time" else "—",
                ]
            )
    return table


def render(data: dict[str, Any]) -> str:
    rows = evaluate(data["benchmarks"])
    machine = data.get("machine_info", {})
    lines = [
        "# Benchmark results",
        "",
        "Generated by `nox -s bench` (`benchmarks/report.py`). Each ratio compares medians measured in the same run.",
        "How to read it, and what limits the rows that miss: `benchmarks/README.md`.",
        "",
        f"Machine: {machine.get('cpu', {}).get('brand_raw', platform.processor() or 'unknown CPU')}, "
        f"{machine.get('cpu', {}).get('count', '?')} cores, Python {machine.get('python_version', platform.python_version())}, "
        f"{machine.get('system', platform.system())} {machine.get('release', platform.release())}. "
        f"Run at {data.get('datetime', '?')}.",
        "",
        "| comparison | persistkit row | persistkit | anchor | ratio | target | status | other anchors (ratio) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    met = sum(r[6] == "met" for r in rows)
    missed = sum(r[6] == "MISSED" for r in rows)
    lines += [
        "",
        f"{met} targets met, {missed} missed, {len(rows) - met - missed} reported without a target.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    src, dst = Path(argv[1]), Path(argv[2])
    data = json.loads(src.read_text())
    text = render(data)
    dst.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
