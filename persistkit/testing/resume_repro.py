"""A standalone repro folder for one failing ``resume_points`` state, shrunk first.

The folder holds:

``state/``         the crash state's directory, without the files the failure does not need
                   (each file is dropped in turn, largest first, and kept out when the resume
                   still fails the same way; ``shrink=`` caps the resumes this costs)
``script/``        the training script(s) the command names, copied
``reproduce.sh``   copies ``state/`` to a fresh directory and runs the command on it
``README.md``      the verdict, the crash state (description and losses), the ``Fix:`` line,
                   what the uninterrupted run did, and the command
"""

from __future__ import annotations

import inspect
import os
import shlex
import shutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from persistkit.testing.resume import ResumeRun, StateResult

__all__ = ["write_repro"]


def _state_files(root: str) -> list[tuple[int, str]]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = os.path.join(dirpath, name)
            try:
                size = os.lstat(full).st_size
            except OSError:
                continue
            out.append((size, os.path.relpath(full, root)))
    return sorted(out, reverse=True)


def shrink(run: ResumeRun, result: StateResult) -> list[str]:
    """Files of the state that can go while the resume still fails with the same verdict."""
    assert result.plan is not None
    run.sim.materialize(result.plan)
    dropped: list[str] = []
    budget = run.shrink
    for _size, rel in _state_files(run.root):
        if budget <= 0:
            break
        budget -= 1
        if run.rerun(result, [*dropped, rel]) == result.verdict:
            dropped.append(rel)
    return dropped


def write_repro(run: ResumeRun, result: StateResult, folder: str) -> str:
    assert result.plan is not None
    dropped = shrink(run, result) if run.shrink > 0 else []
    if os.path.lexists(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    state = os.path.join(folder, "state")
    run.sim.materialize(result.plan, root=state)
    for rel in dropped:
        full = os.path.join(state, rel)
        if os.path.lexists(full):
            os.unlink(full)
    command = _copy_scripts(run, folder)
    script = os.path.join(folder, "reproduce.sh")
    with open(script, "w", encoding="utf-8") as f:
        f.write(_shell(run, command))
    os.chmod(script, 0o700)
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
        f.write(_readme(run, result, command, dropped))
    return folder


def _copy_scripts(run: ResumeRun, folder: str) -> list[str]:
    """The command with every file it names (outside the directory) copied into ``script/``."""
    training = run.training
    target = os.path.join(folder, "script")
    os.makedirs(target)
    if training.command is None:
        fn = training.function
        try:
            source = inspect.getsourcefile(fn)  # type: ignore[arg-type]
        except TypeError:
            source = None
        if source:
            shutil.copy2(source, os.path.join(target, os.path.basename(source)))
        module = getattr(fn, "__module__", "")
        qual = getattr(fn, "__qualname__", "")
        name = os.path.splitext(os.path.basename(source or ""))[0]
        if source and "<" not in qual and module:
            code = f"import sys, pathlib; sys.path.insert(0, 'script'); from {name} import {qual}; {qual}(pathlib.Path(sys.argv[1]))"
            return ["python3", "-c", code, "{dir}"]
        return ["# the job is a Python callable that is not importable by name:", f"{module}.{qual}(dir)"]
    out = [training.command[0]]  # the program (an interpreter, or a script found on PATH) is not copied
    for arg in training.command[1:]:
        path = arg if os.path.isabs(arg) else os.path.join(training.cwd, arg)
        if "{dir}" not in arg and os.path.isfile(path) and not path.startswith(run.root + os.sep):
            shutil.copy2(path, os.path.join(target, os.path.basename(path)))
            out.append(os.path.join("script", os.path.basename(path)))
        else:
            out.append(arg)
    return out


def _shell(run: ResumeRun, command: list[str]) -> str:
    here = 'cd "$(dirname "$0")"'
    uses_dir = any("{dir}" in a for a in command)
    lines = [
        "#!/bin/sh",
        "# Rebuild the crash state in a fresh directory and resume the job from it.",
        "set -e",
        here,
    ]
    if uses_dir:
        lines += ["dir=$(mktemp -d)", 'cp -a state/. "$dir"', 'echo "crash state copied to $dir"']
        shown = " ".join(
            '"$dir"' if a == "{dir}" else shlex.quote(a).replace("{dir}", "'\"$dir\"'") for a in command
        )
    else:
        lines += [
            f"# the command writes to {run.root} itself: the crash state goes there (its content is replaced)",
            f"dir={shlex.quote(run.root)}",
            'rm -rf "$dir" && mkdir -p "$dir" && cp -a state/. "$dir"',
        ]
        shown = shlex.join(command)
    lines += [shown, ""]
    return "\n".join(lines)


def _readme(run: ResumeRun, result: StateResult, command: list[str], dropped: list[str]) -> str:
    ref = run.reference
    losses = (
        "\n".join(f"- {loss.describe(run.root)}" for loss in result.losses)
        or "- none (a process kill: the page cache survived)"
    )
    save = run.saves_[result.save - 1]
    files = "\n".join(f"- `{rel}`" for rel in sorted(save.files)) or "- (none)"
    shrunk = (
        f"Shrunk: {', '.join(f'`{d}`' for d in dropped)} removed from the state; the resume fails the same way without them."
        if dropped
        else "Shrunk: every file of the state is needed for the failure (or shrinking was off)."
    )
    return f"""# resume_points repro: {result.verdict}

Job: `{run.training.describe()}`

## The crash state

{result.model}: {result.description}

Lost:
{losses}

During {save.describe()}; the files that save left:
{files}

{shrunk}

## What happened

{result.detail}

The uninterrupted run printed steps 1-{max(ref.output.steps, default=0)} and ended with the final weights the
verdict compares with (tolerance {run.tolerance:g}). In this state the newest complete checkpoint was step
{result.newest_complete}; the run had saved step {result.committed} before the crash; the resume started from
step {result.resumed_from}.

Fix: {result.fix}

## Reproduce

```sh
sh reproduce.sh
```

It copies `state/` to a fresh directory and runs `{" ".join(command)}` there (`{{dir}}`: that directory).

The resume's output ended:

```
{result.output_tail}
```
"""
