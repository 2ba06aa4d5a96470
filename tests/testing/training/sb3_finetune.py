"""Seed 000's fine-tuning, in rounds: each round continues the newest A2C version in a ModelStore.

    python sb3_finetune.py --root DIR [--rounds 3] [--timesteps 16] [--plain]

DIR/models holds the store (``init`` makes the first version). Each round loads the newest
version, trains it ``--timesteps`` more (``persistkit.sb3.fine_tune``: the model is not
re-created, ``num_timesteps`` keeps counting) and publishes the result as the next version,
then prints ``STEP <round>``. A restart resumes from the newest version's timesteps. Every
round is seeded, so a resume ends with the same policy as an uninterrupted run; the final
policy is printed as ``WEIGHTS <sha256>``.

``--plain`` is the same loop the way SB3's docs show it, without persistkit: ``model.save``
over DIR/a2c.zip after each round (the zip is written in place), ``A2C.load`` on restart;
the final policy also goes to DIR/final.pt.
"""

import argparse
import os
import sys

import gymnasium as gym
import torch
from stable_baselines3 import A2C

from persistkit.model_store import ModelStore
from persistkit.sb3 import fine_tune
from persistkit.testing.training import report_weights

GROUP = ("CARTPOLE", "A2C", "1m")

parser = argparse.ArgumentParser()
parser.add_argument("--root", required=True)
parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("--timesteps", type=int, default=16)
parser.add_argument("--init", action="store_true", help="save the model to fine-tune as the first version")
parser.add_argument("--plain", action="store_true", help="model.save/A2C.load on DIR/a2c.zip, no ModelStore")
args = parser.parse_args()
torch.set_num_threads(1)

if args.plain:
    path = os.path.join(args.root, "a2c.zip")
    if os.path.exists(path):
        model = A2C.load(path, device="cpu")
    else:
        model = A2C("MlpPolicy", gym.make("CartPole-v1"), n_steps=8, seed=0, device="cpu")
    done = model.num_timesteps // args.timesteps
    print(f"resumed from step {done}", flush=True)
    for round_ in range(done, args.rounds):
        torch.manual_seed(round_)
        env = gym.make("CartPole-v1")
        env.reset(seed=round_)
        env.action_space.seed(round_)
        model.set_env(env)
        model.learn(args.timesteps, reset_num_timesteps=False)
        model.save(path)
        print(f"STEP {round_ + 1}", flush=True)
    torch.save(model.policy.state_dict(), os.path.join(args.root, "final.pt"))
    report_weights(model.policy.state_dict())
    sys.exit(0)
store = ModelStore(os.path.join(args.root, "models"))

if args.init:
    model = A2C("MlpPolicy", gym.make("CartPole-v1"), n_steps=8, seed=0, device="cpu")
    store.save({"policy": model}, symbol=GROUP[0], agent=GROUP[1], timeframe=GROUP[2])
    sys.exit(0)

latest = store.latest(*GROUP)
done = store.load_latest(*GROUP)["policy"].num_timesteps // args.timesteps
print(f"resumed from step {done}", flush=True)
for round_ in range(done, args.rounds):
    torch.manual_seed(round_)
    env = gym.make("CartPole-v1")
    env.reset(seed=round_)
    env.action_space.seed(round_)
    fine_tune(store.latest(*GROUP), "policy", env, args.timesteps, store=store)
    print(f"STEP {round_ + 1}", flush=True)

report_weights(store.load_latest(*GROUP)["policy"].policy.state_dict())
