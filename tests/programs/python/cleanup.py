"""Save TEXT to TARGET: temp file, fsync, os.replace, fsync the directory.

usage: python cleanup.py correct|buggy TARGET TEXT

correct: any error removes the temp file before it propagates (the process exits 1).
buggy:   the error propagates and the temp file stays behind. Each failed save leaves a
         TARGET.tmp next to the state (litter that fills the disk that just ran out of space,
         and that a later reader may take for the state).
"""

import contextlib
import os
import sys


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(target: str, data: bytes, *, clean_up: bool) -> None:
    tmp = target + ".tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        print(f"progress: renaming {tmp}", file=sys.stderr, flush=True)
        os.replace(tmp, target)
    except BaseException:
        if clean_up:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    fsync_dir(target)


def main() -> None:
    mode, target, text = sys.argv[1:]
    if mode not in ("correct", "buggy"):
        sys.exit("usage: cleanup.py correct|buggy TARGET TEXT")
    print(f"saving {target}", flush=True)
    save(target, text.encode(), clean_up=mode == "correct")
    print("saved", flush=True)


main()
