"""How ``resume_points`` runs a training job and reads what it did: the progress protocol.

A training job is a command (any program; ``{dir}`` in its arguments is replaced by the
directory it checkpoints into) or a Python callable ``train(dir)``. It tells the verifier
three things, through lines on its standard output or error (either; they are read as one
stream):

``resumed from step N`` (or ``RESUME N``)
    once, at start: the step it continues from (0 on a fresh start). Optional: without
    it the first ``STEP`` line says where it started (``STEP n`` means it started at n-1).
``STEP n``
    after step n's update. Steps are counted, so a step run twice is seen.
``WEIGHTS <text>``
    optional, at the end: the final weights as text (a digest, or numbers; numbers are
    compared within the tolerance). Instead, ``weights=`` names a file under the directory
    (``final.pt``, ``.npz``, ``.safetensors``, ``.json``; anything else is compared by
    bytes) or a callable ``weights(dir)``; a callable job may also return its weights.

The patterns are options (``step_pattern=``, ``resume_pattern=``) for a script that
prints its own words. Python's output is made unbuffered (``PYTHONUNBUFFERED=1``) so the
lines appear when they happen; another program must flush them. ``report_step``,
``report_resume`` and ``report_weights`` print them for you.

Runs start in one of two ways. The reference run is always the real command, cold, under
the syscall observer. A resume of ``python script.py ...`` (this interpreter) runs *warm*:
forked from a process that has already imported the script's third-party modules (torch
costs seconds to import on a loaded machine, a fork milliseconds), with ``sys.argv``,
the working directory, the environment and ``__main__`` as a fresh interpreter would have
them. ``resume_points`` first checks that a warm run from the empty directory ends with
the reference's weights, and falls back to cold runs when it does not.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.util
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_RESUME_PATTERN",
    "DEFAULT_STEP_PATTERN",
    "RunOutput",
    "Training",
    "parse_output",
    "preload",
    "read_weights_file",
    "report_resume",
    "report_step",
    "report_weights",
    "weights_difference",
]

DEFAULT_STEP_PATTERN = r"^\s*STEP\s+(\d+)\b"
DEFAULT_RESUME_PATTERN = r"^\s*(?:RESUME\s+|resumed from step\s+)(\d+)\b"
WEIGHTS_PATTERN = r"^\s*WEIGHTS\s+(\S.*?)\s*$"
DIR = "{dir}"

# Runs a command with its standard output and error in one file that *it* opens, so that under
# the syscall observer each line it prints is an operation in the same log as its saves: the
# position of a STEP line among the file operations says which save followed which step.
_WITH_OUTPUT = (
    "import os, sys\n"
    "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)\n"
    "os.dup2(fd, 1); os.dup2(fd, 2); os.close(fd)\n"
    "try:\n"
    "    os.execvp(sys.argv[2], sys.argv[2:])\n"
    "except OSError as err:\n"
    "    os.write(2, f'cannot run {sys.argv[2]!r}: {err}\\n'.encode()); os._exit(127)\n"
)


def _emit(line: str) -> None:
    os.write(1, (line + "\n").encode())  # one write(2) per line, unbuffered


def report_step(step: int) -> None:
    """Print ``STEP n``: step n's update is done."""
    _emit(f"STEP {int(step)}")


def report_resume(step: int) -> None:
    """Print ``RESUME n``: this run continues after step n (0: a fresh start)."""
    _emit(f"RESUME {int(step)}")


def report_weights(value: Any) -> None:
    """Print ``WEIGHTS <sha256>`` of ``value`` (arrays, tensors, mappings and lists of them)."""
    _emit(f"WEIGHTS {weights_digest(value)}")


def weights_digest(value: Any) -> str:
    h = hashlib.sha256()
    for name, leaf in _leaves(value):
        h.update(name.encode() + b"\0")
        arr = _array(leaf)
        if arr is not None:
            h.update(f"{arr.dtype.str}{arr.shape}".encode())
            h.update(arr.tobytes())
        else:
            h.update(repr(leaf).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class RunOutput:
    """What one run printed, read through the protocol."""

    text: str
    steps: tuple[int, ...]
    resumed: int | None  # from the resume line; None when it printed none
    weights_line: str | None

    @property
    def started_at(self) -> int | None:
        """The step this run continued from: its resume line, else the first STEP minus one."""
        if self.resumed is not None:
            return self.resumed
        return self.steps[0] - 1 if self.steps else None

    @property
    def repeated(self) -> list[int]:
        """Steps this run counted twice (or counted although it resumed after them)."""
        seen: set[int] = set()
        out = []
        floor = self.resumed if self.resumed is not None else -1
        for s in self.steps:
            if s in seen or s <= floor:
                out.append(s)
            seen.add(s)
        return out

    def tail(self, lines: int = 12) -> str:
        return "\n".join(self.text.rstrip().splitlines()[-lines:])


@dataclass(frozen=True)
class Protocol:
    step: re.Pattern[str]
    resume: re.Pattern[str]
    weights: re.Pattern[str] = field(default_factory=lambda: re.compile(WEIGHTS_PATTERN, re.M))

    @classmethod
    def of(cls, step: str | None, resume: str | None) -> Protocol:
        def compiled(pattern: str, what: str, flags: int) -> re.Pattern[str]:
            try:
                rx = re.compile(pattern, flags | re.M)
            except re.error as err:
                raise ValueError(f"{what}={pattern!r} is not a regular expression: {err}") from None
            if rx.groups < 1:
                raise ValueError(f"{what}={pattern!r} needs one group that captures the step number")
            return rx

        return cls(
            compiled(step or DEFAULT_STEP_PATTERN, "step_pattern", 0),
            compiled(resume or DEFAULT_RESUME_PATTERN, "resume_pattern", re.I),
        )

    def number(self, m: re.Match[str]) -> int:
        return int(next(g for g in m.groups() if g is not None))

    def line_step(self, line: str) -> int | None:
        m = self.step.search(line)
        return self.number(m) if m else None


def parse_output(text: str, protocol: Protocol) -> RunOutput:
    steps = tuple(protocol.number(m) for m in protocol.step.finditer(text))
    resume = protocol.resume.search(text)
    weights = None
    for m in protocol.weights.finditer(text):
        weights = m.group(1)
    return RunOutput(text, steps, protocol.number(resume) if resume else None, weights)


# -- weights ------------------------------------------------------------------------------------


def read_weights_file(path: str) -> Any:
    """The content of a final-weights file, by its suffix (raw bytes for unknown suffixes)."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".pt", ".pth", ".bin", ".ckpt"):
        import torch

        return torch.load(path, map_location="cpu", weights_only=True)
    if suffix == ".npy":
        import numpy as np

        return np.load(path, allow_pickle=False)
    if suffix == ".npz":
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(path)
    if suffix == ".json":
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    with open(path, "rb") as f:
        return f.read()


def _leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for key in sorted(value, key=str):
            yield from _leaves(value[key], f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{prefix}[{i}]")
    else:
        yield prefix or "weights", value


def _array(leaf: Any) -> Any:
    """``leaf`` as a numpy array when it is numeric (tensors, arrays, floats), else None."""
    if isinstance(leaf, bool | str | bytes) or leaf is None:
        return None
    if hasattr(leaf, "detach") and hasattr(leaf, "cpu"):
        leaf = leaf.detach().cpu().numpy()
    import numpy as np

    if isinstance(leaf, np.ndarray | np.generic | float | int):
        arr = np.asarray(leaf)
        return arr if arr.dtype.kind in "fciub" else None
    return None


def _numbers(text: str) -> list[float] | None:
    parts = [p for p in re.split(r"[\s,;\[\]()]+", text) if p]
    try:
        return [float(p) for p in parts] if parts else None
    except ValueError:
        return None


def weights_difference(expected: Any, got: Any, tolerance: float = 0.0) -> tuple[str | None, float | None]:
    """(None, max |diff|) when ``got`` equals ``expected`` (bit-exact, or within ``tolerance``),
    else (what differs first, max |diff| where one was measured)."""
    import numpy as np

    if isinstance(expected, str) and isinstance(got, str):
        a, b = _numbers(expected), _numbers(got)
        if a is None or b is None or len(a) != len(b):
            return (None, 0.0) if expected == got else (f"WEIGHTS {got!r}, expected {expected!r}", None)
        expected, got = np.asarray(a), np.asarray(b)
    mine, theirs = dict(_leaves(expected)), dict(_leaves(got))
    if list(mine) != list(theirs):
        missing = sorted(set(mine) - set(theirs))
        extra = sorted(set(theirs) - set(mine))
        return (f"different weights: missing {missing[:4]}, unexpected {extra[:4]}", None)
    worst = 0.0
    for name, want in mine.items():
        have = theirs[name]
        a, b = _array(want), _array(have)
        if a is None or b is None:
            if a is not None or b is not None or want != have:
                return (f"{name}: {_short(have)}, expected {_short(want)}", None)
            continue
        if a.shape != b.shape or a.dtype != b.dtype:
            return (f"{name}: {b.dtype}{list(b.shape)}, expected {a.dtype}{list(a.shape)}", None)
        if a.dtype.kind in "fc":
            fa, fb = (
                a.astype(np.complex128 if a.dtype.kind == "c" else np.float64),
                b.astype(np.complex128 if a.dtype.kind == "c" else np.float64),
            )
            both_nan = np.isnan(fa) & np.isnan(fb)
            diff = np.where(both_nan, 0.0, np.abs(fa - fb))
            d = float(np.nanmax(np.where(np.isnan(diff), np.inf, diff))) if diff.size else 0.0
        else:
            d = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
        worst = max(worst, d)
        exact = a.tobytes() == b.tobytes()
        if (tolerance == 0.0 and not exact) or d > tolerance:
            return (f"{name}: max |diff| {d:.3g} (tolerance {tolerance:g})", worst)
    return (None, worst)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- the job ------------------------------------------------------------------------------------


@dataclass
class Training:
    """A training job: ``command`` (argv with ``{dir}``) or ``function(dir)``, run in ``cwd``/``env``."""

    command: tuple[str, ...] | None
    function: Callable[[Path], Any] | None
    root: str
    cwd: str
    env: dict[str, str]
    weights: str | Callable[[Path], Any] | None = None
    warm: bool = True
    threads: dict[str, Any] = field(default_factory=dict)  # thread pools a fresh process would have
    fresh: dict[str, Any] = field(default_factory=dict)  # sys.path and warning filters of a fresh interpreter

    @classmethod
    def of(
        cls,
        train: Sequence[str] | str | Callable[[Path], Any],
        root: str,
        *,
        cwd: str | None,
        env: Mapping[str, str] | None,
        weights: str | Callable[[Path], Any] | None,
        warm: bool,
    ) -> Training:
        base = dict(os.environ if env is None else env)
        base["PYTHONUNBUFFERED"] = "1"
        if callable(train):
            return cls(None, train, root, os.path.abspath(cwd or os.getcwd()), base, weights, warm)
        if isinstance(train, str):
            import shlex

            train = shlex.split(train)
        argv = tuple(str(a) for a in train)
        if not argv:
            raise ValueError("train= is an empty command")
        return cls(argv, None, root, os.path.abspath(cwd or os.getcwd()), base, weights, warm)

    def argv(self) -> list[str]:
        assert self.command is not None
        return [a.replace(DIR, self.root) for a in self.command]

    def describe(self) -> str:
        if self.command is not None:
            import shlex

            return shlex.join(self.command)
        fn = self.function
        return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}(dir)"

    def traced_argv(self, output: str) -> list[str]:
        """The command that runs the job with its output in ``output`` (for the observed run)."""
        return [sys.executable, "-I", "-S", "-c", _WITH_OUTPUT, output, *self.argv()]

    # -- warm starts ---------------------------------------------------------------------------
    def python_script(self) -> tuple[str, list[str]] | None:
        """(script or "-m module", argv) when the command runs a Python script with this interpreter."""
        if self.command is None:
            return None
        argv = self.argv()
        exe = shutil.which(argv[0]) if not os.path.isabs(argv[0]) else argv[0]
        if exe is None or os.path.realpath(exe) != os.path.realpath(sys.executable):
            return None
        rest = argv[1:]
        if rest[:1] == ["-m"] and len(rest) >= 2:
            return ("-m " + rest[1], rest[1:])
        if rest and not rest[0].startswith("-") and rest[0].endswith(".py"):
            script = rest[0] if os.path.isabs(rest[0]) else os.path.join(self.cwd, rest[0])
            return (script, [script, *rest[1:]])
        return None

    def preload(self) -> list[str]:
        """Third-party modules the script imports at its top level (imported once, before forking)."""
        target = self.python_script()
        if target is None:
            return []
        script = target[0]
        if script.startswith("-m "):
            spec = importlib.util.find_spec(script[3:])
            script = spec.origin if spec is not None and spec.origin else ""
        try:
            with open(script, encoding="utf-8") as f:
                tree = ast.parse(f.read())
        except (OSError, SyntaxError, ValueError):
            return []
        here = os.path.dirname(os.path.abspath(script))
        names: list[str] = []
        for node in tree.body:
            if isinstance(node, ast.Import):
                names += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.append(node.module)
        out = []
        for name in dict.fromkeys(names):
            top = name.split(".")[0]
            try:
                spec = importlib.util.find_spec(top)
            except (ImportError, ValueError):
                continue
            origin = spec.origin if spec is not None else None
            if origin and origin not in ("built-in", "frozen") and not origin.startswith(here + os.sep):
                out.append(name)
        return out


def run_job(training: Training, output: str, warm: bool) -> dict[str, Any]:
    """Run the job once (in a child of the calling process), then read its weights.

    Returns ``exit`` (the exit status, negative for a signal), and ``weights`` (the value) or
    ``weights_error`` (why they could not be read); a warm run also returns ``modules``, the
    modules the job had imported (``preload`` them before forking the next worker). Called
    inside an isolated worker.
    """
    modules: list[str] = []
    function, script = training.function, training.python_script()
    if function is not None:
        code, returned, modules = _fork_and_run(lambda: function(Path(training.root)), training, output)
    elif warm and script is not None:
        target, argv = script
        code, returned, modules = _fork_and_run(lambda: _run_script(target, argv), training, output)
    else:
        with open(output, "wb") as out:
            proc = subprocess.run(
                training.argv(), cwd=training.cwd, env=training.env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, check=False,
            )  # fmt: skip
        code, returned = proc.returncode, None
    result: dict[str, Any] = {"exit": code, "modules": modules}
    if code != 0:
        return result
    try:
        result["weights"] = read_weights(training, returned)
    except Exception as err:
        result["weights_error"] = f"{type(err).__name__}: {err}"
    return result


def read_weights(training: Training, returned: Any) -> Any:
    spec = training.weights
    if callable(spec):
        return spec(Path(training.root))
    if isinstance(spec, str):
        path = spec.replace(DIR, training.root)
        return read_weights_file(path if os.path.isabs(path) else os.path.join(training.root, path))
    return returned  # a callable job's return value, or None (the WEIGHTS line decides)


def _run_script(target: str, argv: list[str]) -> None:
    import runpy

    sys.argv = list(argv)
    if target.startswith("-m "):
        runpy.run_module(target[3:], run_name="__main__", alter_sys=True)
    else:
        sys.path[0] = os.path.dirname(os.path.abspath(target))
        runpy.run_path(target, run_name="__main__")


_POOLED = ("sklearn", "lightgbm", "xgboost", "scipy", "threadpoolctl")


def thread_settings() -> dict[str, Any]:
    """The sizes of this process's thread pools (torch's, and BLAS/OpenMP's through threadpoolctl).

    A worker's runner caps them at one thread (``persistkit.testing.isolate``: an OpenMP pool
    does not survive a fork); a warm job gets them back, so it computes as a fresh process would.
    """
    out: dict[str, Any] = {}
    torch = sys.modules.get("torch")
    if torch is not None:
        with contextlib.suppress(Exception):
            out["torch"] = int(torch.get_num_threads())
    if any(name in sys.modules for name in _POOLED):
        with contextlib.suppress(Exception):
            from threadpoolctl import threadpool_info

            out["pools"] = threadpool_info()
    return out


# What a fresh interpreter of the job starts with, for a forked one to start the same way: the parent
# here is often pytest, whose sys.path, warning filters ("error") and root log handlers are its own.
_PROBE = (
    "import json, sys, warnings\n"
    "p = lambda x: getattr(x, 'pattern', x)\n"
    "f = [(a, p(m), c.__module__ + ':' + c.__qualname__, p(mod), n) for a, m, c, mod, n in warnings.filters]\n"
    "print(json.dumps({'path': sys.path[1:], 'filters': f}))\n"
)


def fresh_interpreter(training: Training) -> dict[str, Any]:
    """sys.path (after its first entry) and warning filters of ``python`` started with the job's env and cwd."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", _PROBE], cwd=training.cwd, env=training.env, capture_output=True, text=True,
            timeout=60, check=True,
        )  # fmt: skip
        value: dict[str, Any] = json.loads(out.stdout)
        return value
    except (OSError, ValueError, subprocess.SubprocessError):
        return {}


def _start_fresh(fresh: Mapping[str, Any], first: str) -> None:
    import importlib
    import warnings

    if "path" in fresh:
        sys.path[:] = [first, *fresh["path"]]
    if "filters" in fresh:
        filters = []
        for action, message, category, module, lineno in fresh["filters"]:
            modname, _, qual = category.partition(":")
            try:
                cls = importlib.import_module(modname)
                for part in qual.split("."):
                    cls = getattr(cls, part)
            except (ImportError, AttributeError):
                continue
            # as warnings.filterwarnings() stores them: patterns compiled, except a module given as a plain name
            filters.append((action, re.compile(message, re.I) if message else None, cls,
                            (module if module == "__main__" else re.compile(module)) if module else None, lineno))  # fmt: skip
        current: list[Any] = warnings.filters  # type: ignore[assignment]  # a list at run time
        current[:] = filters
        warnings._filters_mutated()  # type: ignore[attr-defined]  # what filterwarnings() itself calls
    logging = sys.modules.get("logging")
    if logging is not None:
        root = logging.getLogger()
        root.handlers[:] = []
        root.setLevel(logging.WARNING)


def _restore_threads(settings: Mapping[str, Any]) -> None:
    torch = sys.modules.get("torch")
    if torch is not None and "torch" in settings:
        with contextlib.suppress(Exception):
            torch.set_num_threads(settings["torch"])
    if settings.get("pools"):
        with contextlib.suppress(Exception):
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=settings["pools"])


def preload(modules: Sequence[str]) -> None:
    """Import ``modules`` here (each that imports; warnings silenced), so that forks start warm."""
    import importlib
    import warnings

    for name in modules:
        if name in sys.modules:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                importlib.import_module(name)
            except BaseException:  # noqa: S112 - the job imports what it needs itself
                continue


def _third_party_modules(local: Sequence[str]) -> list[str]:
    """Names of the loaded modules that come from installed packages (not the job's own files)."""
    out = []
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if name == "__main__" or not origin or any(origin.startswith(d + os.sep) for d in local):
            continue
        out.append(name)
    return sorted(out)


def _fork_and_run(body: Callable[[], Any], training: Training, output: str) -> tuple[int, Any, list[str]]:
    """Run ``body`` in a forked child with the job's cwd, environment and output file.

    The caller stays as it was (a worker runs many jobs; none may see another's globals).
    A callable job's return value, and the modules it imported, come back pickled through a pipe.
    """
    import pickle

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the job
        code = 1
        try:
            os.close(read_end)
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
            sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
            sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
            os.chdir(training.cwd)
            os.environ.clear()
            os.environ.update(training.env)
            _restore_threads(training.threads)
            script = training.python_script()
            if script is not None and not script[0].startswith("-m "):
                _start_fresh(training.fresh, os.path.dirname(os.path.abspath(script[0])))
            else:
                _start_fresh(training.fresh, training.cwd)
            import atexit

            # the exit handlers registered so far are the parent's (pytest's), not the job's
            atexit._clear()
            try:
                value = body()
                code = 0
            except SystemExit as err:
                code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
                value = None
            except BaseException:
                import traceback

                traceback.print_exc()
                value = None
            atexit._run_exitfuncs()
            local = [training.cwd, training.root]
            script = training.python_script()
            if script is not None and not script[0].startswith("-m "):
                local.append(os.path.dirname(os.path.abspath(script[0])))
            modules = _third_party_modules(local)
            with contextlib.suppress(Exception), os.fdopen(write_end, "wb", closefd=False) as pipe:
                pickle.dump((value if code == 0 else None, modules), pipe, protocol=pickle.HIGHEST_PROTOCOL)
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        blob = pipe.read()  # until the child exits (or closes its end)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    returned, modules = None, []
    if blob:
        with contextlib.suppress(Exception):
            returned, modules = pickle.loads(blob)  # noqa: S301 - our own child's pickle
    return code, returned if code == 0 else None, modules


def exit_text(code: int) -> str:
    if code < 0:
        import signal

        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
