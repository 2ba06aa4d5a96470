"""A plain PyTorch training loop that checkpoints every N steps and resumes from its checkpoint.

    python torch_loop.py --out DIR [--steps 20] [--every 5] [--save KIND]

It prints ``resumed from step N`` once, ``STEP n`` after each optimizer step, and writes the
final weights to DIR/final.pt. ``--save`` picks how a checkpoint is written, one of the
shapes found in real training code:

``inplace``       ``torch.save`` straight over DIR/ckpt.pt
``replace``       ``torch.save`` to ckpt.pt.tmp, then ``os.replace`` (no fsync)
``durable``       as ``replace`` with the temp file fsynced before the rename and the directory after
``marker-first``  one file per save (ckpt-N.pt) and a ``latest`` file naming it, written before the data
``rotating``      ckpt-N.pt written durably first, then ``latest`` replaced durably

Everything is seeded, so an uninterrupted run and a correct resume end with the same bytes.
"""

import argparse
import os

import torch
import torch.nn.functional as F

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--every", type=int, default=5)
parser.add_argument(
    "--save", default="durable", choices=["inplace", "replace", "durable", "marker-first", "rotating"]
)
parser.add_argument("--width", type=int, default=16)
args = parser.parse_args()

torch.manual_seed(0)
torch.set_num_threads(1)
model = torch.nn.Sequential(torch.nn.Linear(8, args.width), torch.nn.Tanh(), torch.nn.Linear(args.width, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
os.makedirs(args.out, exist_ok=True)
rotating = args.save in ("marker-first", "rotating")


def fsync_path(path, directory=False):
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_path():
    if not rotating:
        return os.path.join(args.out, "ckpt.pt")
    marker = os.path.join(args.out, "latest")
    if not os.path.exists(marker):
        return None
    with open(marker) as f:
        return os.path.join(args.out, f"ckpt-{int(f.read())}.pt")


def save(step):
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step}
    if args.save == "inplace":
        torch.save(state, os.path.join(args.out, "ckpt.pt"))
        return
    if args.save == "marker-first":
        with open(os.path.join(args.out, "latest"), "w") as f:
            f.write(str(step))
        torch.save(state, os.path.join(args.out, f"ckpt-{step}.pt"))
        return
    target = os.path.join(args.out, f"ckpt-{step}.pt" if rotating else "ckpt.pt")
    torch.save(state, target + ".tmp")
    if args.save != "replace":
        fsync_path(target + ".tmp")
    os.replace(target + ".tmp", target)
    if args.save != "replace":
        fsync_path(args.out, directory=True)
    if rotating:
        marker = os.path.join(args.out, "latest")
        with open(marker + ".tmp", "w") as f:
            f.write(str(step))
            f.flush()
            os.fsync(f.fileno())
        os.replace(marker + ".tmp", marker)
        fsync_path(args.out, directory=True)


step = 0
path = checkpoint_path()
if path is not None and os.path.exists(path):
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    step = state["step"]
print(f"resumed from step {step}", flush=True)

while step < args.steps:
    step += 1
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(step))
    opt.zero_grad()
    F.mse_loss(model(x), x.sum(1, keepdim=True)).backward()
    opt.step()
    print(f"STEP {step}", flush=True)
    if step % args.every == 0:
        save(step)

torch.save(model.state_dict(), os.path.join(args.out, "final.pt"))
