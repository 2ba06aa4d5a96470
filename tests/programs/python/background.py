"""Save TEXT to TARGET (temp file, fsync, os.replace, fsync the directory) in a daemon process.

usage: python background.py correct|buggy TARGET TEXT

correct: fork a child to save, wait for it, and exit with its status.
buggy:   fork a child that detaches the way daemons do (a new session, stdin, stdout and stderr
         closed) and exit 0 at once. The command has "succeeded" while the state is still the
         old one: the child starts saving only once the parent is gone (it waits for the end of
         a pipe only the parent holds), as a slow save would.
"""

import contextlib
import os
import sys
import traceback


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def save(target: str, data: bytes) -> None:
    tmp = target + ".tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fd = os.open(os.path.dirname(os.path.abspath(target)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main() -> None:
    mode, target, text = sys.argv[1:]
    if mode not in ("correct", "buggy"):
        sys.exit("usage: background.py correct|buggy TARGET TEXT")
    print(f"saving {target} in a child", flush=True)
    gone_r, gone_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(gone_w)
        code = 1
        try:
            if mode == "buggy":
                os.setsid()
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.close(null)
                while os.read(gone_r, 1):  # until the parent has exited
                    pass
            save(target, text.encode())
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(gone_r)
    if mode == "buggy":
        print("progress: the save goes on in the background", file=sys.stderr, flush=True)
        return  # the bug: the command returns before the save has happened
    _, status = os.waitpid(pid, 0)
    os.close(gone_w)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit("the save failed")
    print("saved", flush=True)


main()
