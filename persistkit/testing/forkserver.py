"""A fork server: import heavy modules once, then run each kill cycle in a fresh forked process.

A SIGKILL storm needs hundreds of real processes. Starting Python and
importing torch, scikit-learn and skops costs seconds per process; forking a
process that already imported them costs milliseconds. Each child is a real
process that receives a real SIGKILL; only the import work is shared.

Protocol (one line per message, over the server's stdin/stdout)::

    harness -> server   RUN {"target": "module:function", "argv": [...]}
    server  -> harness  PID <pid>
    child   -> harness  whatever the target prints (e.g. ACK lines), each line one write(2)
    harness -> server   WAIT <pid>
    server  -> harness  EXIT <pid> <returncode>   (-9 for SIGKILL)
    harness -> server   QUIT
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Any

__all__ = ["ForkServer", "kill_cycle", "main", "running"]


def _emit(line: str) -> None:
    os.write(1, (line + "\n").encode())


def _call(spec: str, argv: list[str]) -> Any:
    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)(argv)


def serve(preload: list[str], warm: list[tuple[str, list[str]]] | None = None) -> int:
    for module in preload:
        importlib.import_module(module)
    for spec, argv in warm or []:
        _call(spec, argv)  # before any fork: what it loads lazily is shared by every child
    _emit("READY")
    for raw in sys.stdin:
        cmd, _, rest = raw.strip().partition(" ")
        if cmd == "RUN":
            spec = json.loads(rest)
            pid = os.fork()
            if pid == 0:  # the child: a fresh process for one cycle
                code = 1
                try:
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    signal.signal(signal.SIGINT, signal.SIG_DFL)
                    os.close(0)
                    code = int(_call(spec["target"], spec.get("argv", [])) or 0)
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
                except BaseException as exc:
                    _emit(f"ERROR {type(exc).__name__}: {exc}")
                finally:
                    os._exit(code)
            _emit(f"PID {pid}")
        elif cmd == "WAIT":
            pid = int(rest)
            _, status = os.waitpid(pid, 0)
            _emit(f"EXIT {pid} {os.waitstatus_to_exitcode(status)}")
        elif cmd == "QUIT":
            break
    return 0


class ForkServer:
    """Harness side: start the server, run targets, collect their lines, kill them."""

    def __init__(
        self,
        preload: list[str],
        *,
        env: dict[str, str] | None = None,
        warm: list[tuple[str, list[str]]] | None = None,
        startup_timeout: float = 300.0,
    ) -> None:
        """``preload``: modules to import; ``warm``: ``("module:function", argv)`` calls made after
        the imports and before the first fork (open the app once, so its lazy imports happen here)."""
        cmd = [sys.executable, "-m", "persistkit.testing.forkserver", "--preload", ",".join(preload)]
        if warm:
            cmd += ["--warm", json.dumps([[spec, list(argv)] for spec, argv in warm])]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in: IO[str] = self.proc.stdin
        self._out: IO[str] = self.proc.stdout
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        ready = self.next_line(timeout=startup_timeout)
        if ready != "READY":
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"fork server failed to start (preload {preload}, warm-up {warm}): {ready!r}")

    def _read(self) -> None:
        for line in self._out:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def next_line(self, timeout: float | None = None) -> str | None:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def run(self, target: str, argv: list[str]) -> tuple[int, list[str]]:
        """Fork a child running ``target(argv)``; returns its pid and lines seen before the PID line."""
        self._send(f"RUN {json.dumps({'target': target, 'argv': argv})}")
        early: list[str] = []
        while True:
            line = self.next_line(timeout=60)
            if line is None:
                raise RuntimeError("fork server stopped answering")
            if line.startswith("PID "):
                return int(line.split()[1]), early
            early.append(line)

    def drain(self) -> list[str]:
        """Lines available right now."""
        out: list[str] = []
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return out
            if line is not None:
                out.append(line)

    def wait(self, pid: int) -> tuple[int, list[str]]:
        """Reap ``pid``; returns its exit code and every line that arrived meanwhile."""
        self._send(f"WAIT {pid}")
        rest: list[str] = []
        while True:
            line = self.next_line(timeout=120)
            if line is None:
                raise RuntimeError("fork server stopped answering")
            if line.startswith(f"EXIT {pid} "):
                return int(line.split()[2]), rest
            rest.append(line)

    def _send(self, line: str) -> None:
        self._in.write(line + "\n")
        self._in.flush()

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, ValueError, OSError):
            self._send("QUIT")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._in.close()
        self._reader.join(timeout=5)
        self._out.close()

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def running(pid: int) -> bool:
    """The child has not exited yet (a zombie waiting to be reaped counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_cycle(
    server: ForkServer,
    target: str,
    argv: list[str],
    *,
    after: float,
    ready: str | None = None,
    acks: int = 0,
    timeout: float = 120.0,
) -> tuple[int, list[str]]:
    """Run one child, SIGKILL it (a real signal), reap it; its exit code and lines.

    The kill lands ``after`` seconds past the moment the child printed a line starting with
    ``ready`` (when given) and then ``acks`` lines starting with ``ACK``: timed from what the
    child said, not from its start, so a slow start on a loaded machine does not turn the
    cycle into a kill during start-up. A child that says neither within ``timeout`` seconds
    is killed then (the lines show how far it got).
    """
    pid, lines = server.run(target, argv)
    deadline = time.monotonic() + timeout

    def said_enough() -> bool:
        up = ready is None or any(ln.startswith(ready) for ln in lines)
        return up and sum(ln.startswith("ACK") for ln in lines) >= acks

    while not said_enough():
        if time.monotonic() > deadline or not running(pid):
            after = 0.0  # it will never say it: kill (or reap) it now; its lines tell why
            break
        line = server.next_line(timeout=0.05)
        if line is not None:
            lines.append(line)
    time.sleep(after)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    code, rest = server.wait(pid)
    return code, lines + rest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m persistkit.testing.forkserver")
    parser.add_argument("--preload", default="")
    parser.add_argument("--warm", default="[]")
    args = parser.parse_args(argv)
    warm = [(str(spec), [str(a) for a in argv]) for spec, argv in json.loads(args.warm)]
    return serve([m for m in args.preload.split(",") if m], warm)


if __name__ == "__main__":
    sys.exit(main())
