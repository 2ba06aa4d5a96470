"""PyTorch Lightning: a tiny regression model, checkpointed by ``ModelCheckpoint`` every N steps.

    python lightning_loop.py --out DIR [--epochs 4] [--mid-epoch]

An epoch is 5 optimizer steps. ``ModelCheckpoint(every_n_epochs=1, save_top_k=-1,
save_last=True)`` keeps every checkpoint (``step=N.ckpt``) and ``last.ckpt``; a restart
resumes from ``last.ckpt`` when there is one. A callback prints ``resumed from step N`` at the
start of fitting and ``STEP n`` after each optimizer step. Final weights: DIR/final.pt.

``--mid-epoch`` checkpoints every 3 steps instead (``every_n_train_steps=3``): Lightning then
resumes inside an epoch, restarts that epoch's batches from the first one, and ends with
other weights than an uninterrupted run, without a warning.
"""

import argparse
import os

import pytorch_lightning as L
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--epochs", type=int, default=4)
parser.add_argument("--mid-epoch", action="store_true")
args = parser.parse_args()
torch.set_num_threads(1)
L.seed_everything(0, verbose=False)


class Regression(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def training_step(self, batch, _index):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class Progress(Callback):
    def on_train_start(self, trainer, _module):
        print(f"resumed from step {trainer.global_step}", flush=True)

    def on_train_batch_end(self, trainer, *_):
        print(f"STEP {trainer.global_step}", flush=True)


x = torch.randn(40, 4, generator=torch.Generator().manual_seed(1))
data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=False)
checkpoints = os.path.join(args.out, "checkpoints")
every = {"every_n_train_steps": 3} if args.mid_epoch else {"every_n_epochs": 1}
trainer = L.Trainer(
    max_epochs=args.epochs,
    accelerator="cpu",
    devices=1,
    logger=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    deterministic=True,
    callbacks=[
        ModelCheckpoint(dirpath=checkpoints, filename="{step}", save_top_k=-1, save_last=True, **every),
        Progress(),
    ],
)
model = Regression()
last = os.path.join(checkpoints, "last.ckpt")
trainer.fit(model, loader, ckpt_path=last if os.path.exists(last) else None)
torch.save(model.state_dict(), os.path.join(args.out, "final.pt"))
