"""Save TEXT to TARGET.

usage: python in_place.py correct|buggy TARGET TEXT

correct: write TARGET.tmp, flush and fsync it, os.replace it over TARGET, fsync the directory.
buggy:   `with open(TARGET, "w") as f: f.write(TEXT)`, the most common save in Python: open()
         truncates TARGET first, so a crash, even of the process alone, before the write leaves
         an empty file (and a full disk leaves it empty or cut short).
"""

import contextlib
import os
import sys


def main() -> None:
    mode, target, text = sys.argv[1:]
    if mode not in ("correct", "buggy"):
        sys.exit("usage: in_place.py correct|buggy TARGET TEXT")
    print(f"saving {target}", flush=True)
    if mode == "buggy":
        with open(target, "w") as f:
            f.write(text)
        print("saved", flush=True)
        return
    tmp = target + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
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
    print("progress: renamed", file=sys.stderr, flush=True)
    print("saved", flush=True)


main()
