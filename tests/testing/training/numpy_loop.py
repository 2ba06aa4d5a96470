"""Linear regression by SGD in numpy, checkpointed with ``np.save`` every N steps.

    python numpy_loop.py --out DIR [--steps 20] [--every 5] [--save inplace|replace|durable|marker-first]

The checkpoint is one array, ``[step, w...]`` in DIR/ckpt.npy: ``inplace`` writes it over the
old file (``np.save`` opens it with "wb"), ``replace`` writes a temp file and renames it without
fsync, ``durable`` writes a temp file, fsyncs it, renames it and fsyncs the directory.
``marker-first`` writes one file per save (ckpt-N.npy) and a ``latest`` file naming it, the
marker before the data (the rotating shape of ckpt-chaos's README). A ``.npy`` file has no checksum: a page of it lost on power loss
reads back as zeros, and the resume goes on from wrong weights without an error. The final
weights are printed as ``WEIGHTS <sha256>`` and written to DIR/final.npy; no torch, so this
job starts in a fraction of a second.
"""

import argparse
import hashlib
import os

import numpy as np

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--every", type=int, default=5)
parser.add_argument("--save", default="durable", choices=["inplace", "replace", "durable", "marker-first"])
parser.add_argument("--dim", type=int, default=1535)  # 1536 float64: a 12 KiB array, three pages of data
args = parser.parse_args()

os.makedirs(args.out, exist_ok=True)
marker = os.path.join(args.out, "latest")


def checkpoint_path():
    if args.save != "marker-first":
        return os.path.join(args.out, "ckpt.npy")
    if not os.path.exists(marker):
        return None
    with open(marker) as f:
        return os.path.join(args.out, f"ckpt-{int(f.read())}.npy")


def save(step, state):
    if args.save == "inplace":
        np.save(os.path.join(args.out, "ckpt.npy"), state)
    elif args.save == "marker-first":
        with open(marker, "w") as f:
            f.write(str(step))
        np.save(os.path.join(args.out, f"ckpt-{step}.npy"), state)
    else:
        ckpt = os.path.join(args.out, "ckpt.npy")
        with open(ckpt + ".tmp", "wb") as f:
            np.save(f, state)
            if args.save == "durable":
                f.flush()
                os.fsync(f.fileno())
        os.replace(ckpt + ".tmp", ckpt)
        if args.save == "durable":
            fd = os.open(args.out, os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(fd)
            os.close(fd)


truth = np.random.default_rng(0).standard_normal(args.dim)
w = np.zeros(args.dim)
step = 0
ckpt = checkpoint_path()
if ckpt is not None and os.path.exists(ckpt):
    saved = np.load(ckpt, allow_pickle=False)
    step, w = int(saved[0]), saved[1:].copy()
print(f"resumed from step {step}", flush=True)

while step < args.steps:
    step += 1
    x = np.random.default_rng(step).standard_normal((8, args.dim))
    w -= 0.01 * x.T @ (x @ w - x @ truth) / len(x)
    print(f"STEP {step}", flush=True)
    if step % args.every == 0:
        save(step, np.concatenate([[float(step)], w]))

np.save(os.path.join(args.out, "final.npy"), w)
print("WEIGHTS", hashlib.sha256(w.tobytes()).hexdigest(), flush=True)
