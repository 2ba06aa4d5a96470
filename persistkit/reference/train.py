"""Reference training script: a tiny SB3 A2C on CartPole and a small sklearn signal model.

    python -m persistkit.reference.train [--root DIR] [--no-archive] [--timesteps N]

Runs inside ``persistkit.training_session`` (archive and clean workspace on
entry, final archive on any exit), writes a training log and
``logs/trades/trade_traces_YYYYMMDD_HHMMSS.jsonl``, and saves the models as
one encrypted bundle through ``ModelStore``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from persistkit.archive import training_session
from persistkit.io import atomic_write, current_fs

log = logging.getLogger("persistkit.reference.train")


def train_models(timesteps: int, seed: int = 0) -> dict[str, Any]:
    import gymnasium as gym
    from sklearn.linear_model import SGDClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from stable_baselines3 import A2C

    env = gym.make("CartPole-v1")
    policy = A2C("MlpPolicy", env, n_steps=8, seed=seed, device="cpu", verbose=0)
    policy.learn(total_timesteps=timesteps)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((400, 4))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    signal = make_pipeline(StandardScaler(), SGDClassifier(loss="log_loss", random_state=seed)).fit(X, y)
    return {"policy": policy, "signal": signal, "attention": np.full(4, 0.25)}


def save_models(root: Path, models: dict[str, Any], metadata: dict[str, Any]) -> Path:
    """One encrypted bundle under models/SYMBOL/AGENT/TIMEFRAME/, with its key beside it."""
    from persistkit.model_store import ModelStore

    saved = ModelStore(root / "models").save(
        models, symbol="BTC/USDT", agent="A2C", timeframe="1m", metadata=metadata
    )
    return saved.path


def write_trade_traces(root: Path, models: dict[str, Any]) -> Path:
    """Roll the trained policy for a few episodes and record every action as a JSON line."""
    import gymnasium as gym

    env = gym.make("CartPole-v1")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d_%H%M%S")
    path = root / "logs" / "trades" / f"trade_traces_{stamp}.jsonl"
    lines = []
    obs, _ = env.reset(seed=0)
    for step in range(50):
        action, _ = models["policy"].predict(obs, deterministic=True)
        obs, reward, terminated, truncated, _ = env.step(int(action))
        lines.append(json.dumps({"step": step, "action": int(action), "reward": float(reward)}))
        if terminated or truncated:
            obs, _ = env.reset()
    current_fs().makedirs(path.parent)
    atomic_write(path, ("\n".join(lines) + "\n").encode())
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m persistkit.reference.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--root", default=".")
    parser.add_argument("--no-archive", action="store_true", help="skip archiving before and after training")
    parser.add_argument("--timesteps", type=int, default=256)
    args = parser.parse_args(argv)
    root = Path(os.path.abspath(args.root))
    current_fs().makedirs(root / "logs")
    with training_session(root, archive=not args.no_archive) as session:
        current_fs().makedirs(root / "logs" / "trades")
        handler = logging.FileHandler(root / "logs" / "training.log")  # io-ok: the training log itself
        logging.getLogger("persistkit").addHandler(handler)
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        try:
            log.info("training A2C for %d timesteps", args.timesteps)
            models = train_models(args.timesteps)
            traces = write_trade_traces(root, models)
            path = save_models(root, models, {"timesteps": args.timesteps, "config": {"env": "CartPole-v1"}})
            log.info("saved %s; traces in %s", path, traces)
            print(f"saved {path}")
            print(
                f"archives: {session.initial_archive} -> (final on exit)"
                if session.archiver
                else "no archive"
            )
        finally:
            handler.close()
            log.removeHandler(handler)
            logging.getLogger("persistkit").removeHandler(handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
