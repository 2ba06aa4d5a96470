"""resume_points and ckpt-chaos on the same training scripts, in the same run: verdict tables and wall times.

    python benchmarks/resume_side_by_side.py [--only NAME ...] [--out FILE]

ckpt-chaos (0.1.8, pinned in the dev extra) is run the way its README shows: ``ckpt-chaos run``
with ``--checkpoint-glob`` (only for checkpoints named by their step: it refuses others), ``--step-regex "resumed from step (\\d+)"``, ``--result-file`` and its
default crash modes (``before`` and ``torn``, at most 40 crash points), so it kills a fresh copy of
the command at each file event under ``{out}`` and resumes it. persistkit runs ``resume_points``
on the same command: every operation of every checkpoint save, process kills and power loss.

The scripts are the kinds ckpt-chaos's README shows (``torch.save`` over the checkpoint in place;
the same with a temp file and ``os.replace``, no fsync; a rotating checkpoint whose ``latest``
marker is written before the data), a correct control of each, and training jobs built on the
catalog's writers (``np.save`` in place, Lightning's ``ModelCheckpoint``). Every one lives in
tests/testing/training/. persistkit must find every failure kind ckpt-chaos finds on a script,
and the power-loss failures it cannot see (``replace``: temp + os.replace without fsync).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
JOBS = ROOT / "tests" / "testing" / "training"
VERDICTS = ("pass", "HARD_FAIL", "SILENT_DIVERGENCE", "LOST_WORK", "DUPLICATED_WORK")
STEP_REGEX = r"resumed from step (\d+)"


@dataclass(frozen=True)
class Script:
    name: str
    what: str
    argv: tuple[str, ...]  # with {out}
    result: str  # the final-weights file under {out}
    # ckpt-chaos --checkpoint-glob: it needs a step number in the name; without one, no LOST_WORK
    glob: str | None

    def command(self, placeholder: str) -> list[str]:
        return [sys.executable, *(a.replace("{out}", placeholder) for a in self.argv)]


def torch_loop(save: str, what: str) -> Script:
    glob = "{out}/ckpt-*.pt" if save in ("marker-first", "rotating") else None
    return Script(
        f"torch {save}",
        what,
        (str(JOBS / "torch_loop.py"), "--out", "{out}", "--save", save),
        "final.pt",
        glob,
    )


SCRIPTS = [
    torch_loop("inplace", "`torch.save` over ckpt.pt in place"),
    torch_loop("replace", "`torch.save` to a temp file, `os.replace`, no fsync"),
    torch_loop("marker-first", "ckpt-N.pt per save, `latest` marker written before the data"),
    torch_loop("durable", "temp file, fsync, `os.replace`, directory fsync (control)"),
    torch_loop("rotating", "ckpt-N.pt written durably, then `latest` replaced durably (nothing corrupts; a crash between the two redoes a save)"),
    Script("numpy inplace", "`np.save` over ckpt.npy in place (no checksum)",
           (str(JOBS / "numpy_loop.py"), "--out", "{out}", "--save", "inplace"), "final.npy", None),
    Script("numpy durable", "`np.save` to a temp file, fsync, rename, directory fsync (control)",
           (str(JOBS / "numpy_loop.py"), "--out", "{out}", "--save", "durable"), "final.npy", None),
    Script("sb3 plain", "SB3 2.9.2 A2C fine-tuned in rounds, `model.save` over a2c.zip (zip written in place)",
           (str(JOBS / "sb3_finetune.py"), "--root", "{out}", "--plain", "--rounds", "3"), "final.pt", None),
    Script("lightning", "Lightning 2.6.6 `ModelCheckpoint` every epoch + last.ckpt",
           (str(JOBS / "lightning_loop.py"), "--out", "{out}"), "final.pt", "{out}/checkpoints/step=*.ckpt"),
]  # fmt: skip


@dataclass
class ToolRun:
    tool: str
    counts: dict[str, int]
    seconds: float
    states: int
    by_model: dict[str, dict[str, int]] = field(default_factory=dict)
    note: str = ""

    @property
    def failures(self) -> set[str]:
        return {v for v, n in self.counts.items() if v != "pass" and n}

    @property
    def per_minute(self) -> float:
        return 60.0 * self.states / self.seconds if self.seconds else 0.0


def run_persistkit(script: Script, *, max_states: int | None = None) -> ToolRun:
    from persistkit.testing.resume import ResumePoints

    work = tempfile.mkdtemp(prefix="pk-side-")
    try:
        t0 = time.perf_counter()
        # SB3's logger makes /tmp/SB3-<time> directories on every run: not saved state
        report = ResumePoints(work)(script.command("{dir}"), weights=script.result, check=False, shrink=0,
                                    max_states=max_states, cwd=str(ROOT),
                                    allow_outside=[os.path.join(tempfile.gettempdir(), "SB3-*")])  # fmt: skip
        seconds = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    counts = {v: report.counts().get(v, 0) for v in VERDICTS}
    by_model = {m: {v: report.counts(m).get(v, 0) for v in VERDICTS} for m in ("process", "power-loss")}
    return ToolRun("persistkit", counts, seconds, report.states, by_model)


def run_ckpt_chaos(script: Script, *, max_points: int = 40, timeout: int = 600) -> ToolRun:
    from ckpt_chaos.runner import rejudge

    work = Path(tempfile.mkdtemp(prefix="cc-side-"))
    try:
        cmd = [
            sys.executable, "-m", "ckpt_chaos", "run", *(("--checkpoint-glob", script.glob) if script.glob else ()),
            "--step-regex", STEP_REGEX, "--result-file", "{out}/" + script.result, "--max-points", str(max_points), "--timeout", str(timeout),
            "--work", str(work / "run"), "--", *script.command("{out}"),
        ]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - t0
        if not (work / "run").is_dir():
            raise RuntimeError(
                f"ckpt-chaos did not run ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            )
        rows = [r for r in rejudge(work / "run") if not r.label.startswith("no crash")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tally = collections.Counter("pass" if r.verdict == "PASS" else r.verdict for r in rows)
    counts = {v: tally.get(v, 0) for v in VERDICTS}
    drift = sum(bool(r.drift) for r in rows)
    note = f"{drift} crash points drifted from the plan" if drift else ""
    return ToolRun("ckpt-chaos", counts, seconds, len(rows), {"process": counts}, note)


def compare(script: Script, *, max_states: int | None = None, max_points: int = 40) -> dict[str, Any]:
    ours = run_persistkit(script, max_states=max_states)
    theirs = run_ckpt_chaos(script, max_points=max_points)
    return {"script": script, "persistkit": ours, "ckpt-chaos": theirs}


def _cells(run: ToolRun, model: str | None = None) -> str:
    counts = run.by_model.get(model, {}) if model else run.counts
    return " | ".join(str(counts.get(v, 0)) for v in VERDICTS)


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| script | tool | crash states | " + " | ".join(VERDICTS) + " | wall time | states/min |",
        "|---|---|---|" + "---|" * len(VERDICTS) + "---|---|",
    ]
    for res in results:
        s: Script = res["script"]
        ours: ToolRun = res["persistkit"]
        theirs: ToolRun = res["ckpt-chaos"]
        name = f"{s.name}: {s.what}"
        for model in ("process", "power-loss"):
            n = sum(ours.by_model[model].values())
            lines.append(f"| {name} | persistkit, {model} | {n} | {_cells(ours, model)} | | |")
        lines.append(
            f"| {name} | **persistkit, total** | {ours.states} | {_cells(ours)} | {ours.seconds:.0f} s | {ours.per_minute:.0f} |"
        )
        lines.append(
            f"| {name} | ckpt-chaos (kills) | {theirs.states} | {_cells(theirs)} | {theirs.seconds:.0f} s | "
            f"{theirs.per_minute:.1f} |" + (f" {theirs.note}" if theirs.note else "")
        )
    lines += ["", "| script | ckpt-chaos finds | persistkit finds | persistkit finds everything ckpt-chaos finds |",
              "|---|---|---|---|"]  # fmt: skip
    for res in results:
        ours, theirs = res["persistkit"], res["ckpt-chaos"]
        lines.append(
            f"| {res['script'].name} | {', '.join(sorted(theirs.failures)) or '—'} | "
            f"{', '.join(sorted(ours.failures)) or '—'} | {'yes' if theirs.failures <= ours.failures else '**no**'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="script names to run (default: all)")
    parser.add_argument(
        "--out", default=None, help="also write the markdown tables (and a JSON beside it) here"
    )
    args = parser.parse_args(argv)
    chosen = [s for s in SCRIPTS if args.only is None or s.name in args.only]
    results = []
    for script in chosen:
        print(f"== {script.name}", flush=True)
        res = compare(script)
        for tool in ("persistkit", "ckpt-chaos"):
            run = res[tool]
            print(
                f"   {tool}: {run.states} states in {run.seconds:.0f} s: {run.counts} {run.note}", flush=True
            )
        results.append(res)
        if args.out:  # one line per script as it ends, so a later script's failure keeps the earlier numbers
            with Path(args.out).with_suffix(".jsonl").open("a") as f:
                row = {"script": script.name, **{t: vars(res[t]) for t in ("persistkit", "ckpt-chaos")}}
                f.write(json.dumps(row) + "\n")
    text = markdown(results)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        doc = [
            {"script": r["script"].name, **{t: vars(r[t]) for t in ("persistkit", "ckpt-chaos")}}
            for r in results
        ]
        Path(args.out).with_suffix(".json").write_text(json.dumps(doc, indent=1))
    return 0 if all(r["ckpt-chaos"].failures <= r["persistkit"].failures for r in results) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    sys.exit(main())
