"""A small torch trainer, written the way a team writes one: ``torch.save`` checkpoints, no persistkit.

    persistkit check tests.apps.torch_trainer:open_trainer --kills 5

Each ``step()`` is one SGD step of a tiny regression model on seeded data. Every
``SAVE_EVERY`` steps the trainer checkpoints by itself (it saves as it goes) and
returns ``{"id": "ckpt-<step>"}``: that checkpoint is acknowledged work. ``save()``
writes a checkpoint only when steps ran since the last one, so a ``save()`` right
after the trainer's own checkpoint writes nothing. The checkpoint is written
with ``torch.save`` to a temp file, fsynced, renamed over ``checkpoint.pt``
and the directory is fsynced; a sha256 of the payload is kept inside it, so
damage is detected.
"""

from __future__ import annotations

import hashlib
import io
import os

import torch

SAVE_EVERY = 10
FILE = "checkpoint.pt"


class Trainer:
    def __init__(self, state_dir: str) -> None:
        os.makedirs(state_dir, exist_ok=True)
        self.dir = state_dir
        self.path = os.path.join(state_dir, FILE)
        torch.manual_seed(0)
        self.model = torch.nn.Linear(8, 1)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.steps = 0
        self.losses: list[float] = []
        self.saved_at = 0
        if os.path.exists(self.path):
            self.load()

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.steps)
        x = torch.randn(16, 8, generator=g)
        return x, x.sum(dim=1, keepdim=True) * 0.5

    def step(self) -> dict[str, str] | None:
        x, y = self._batch()
        self.opt.zero_grad()
        loss = torch.nn.functional.mse_loss(self.model(x), y)
        loss.backward()
        self.opt.step()
        self.steps += 1
        self.losses = [*self.losses[-49:], round(loss.item(), 6)]
        if self.steps % SAVE_EVERY == 0:
            self.save()
            return {"id": f"ckpt-{self.steps}"}
        return None

    def snapshot(self) -> dict[str, object]:
        return {
            "steps": self.steps,
            "model": {k: v.clone() for k, v in self.model.state_dict().items()},
            "momentum": [s["momentum_buffer"].clone() for s in self.opt.state.values()],
            "losses": list(self.losses),
        }

    def save(self) -> None:
        if self.saved_at == self.steps and os.path.exists(self.path):
            return  # nothing new since the last checkpoint
        buf = io.BytesIO()
        torch.save(
            {"steps": self.steps, "model": self.model.state_dict(), "opt": self.opt.state_dict(),
             "losses": self.losses},
            buf,
        )  # fmt: skip
        payload = buf.getvalue()
        tmp = self.path + ".tmp"
        try:
            # torch.save(obj, path) keeps its descriptor open when a write fails (until the writer
            # is garbage-collected; disk_faults reports the leak): give it a file we close ourselves
            with open(tmp, "wb") as f:
                torch.save({"sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self.saved_at = self.steps

    def load(self) -> None:
        outer = torch.load(self.path, weights_only=True)
        payload = outer["payload"]
        if hashlib.sha256(payload).hexdigest() != outer["sha256"]:
            raise ValueError(f"{self.path} is damaged (sha256 mismatch); restore it from a backup")
        state = torch.load(io.BytesIO(payload), weights_only=True)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.steps = self.saved_at = state["steps"]
        self.losses = list(state["losses"])


def open_trainer(state_dir: str) -> Trainer:
    return Trainer(state_dir)
