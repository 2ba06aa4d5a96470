"""The reference training script, as a user runs it: in a real subprocess."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from persistkit.archive import Archiver


def run_train(root, *extra):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "persistkit.reference.train",
            "--root",
            str(root),
            "--timesteps",
            "64",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def test_train_with_archives_before_and_after(tmp_path):
    root = tmp_path / "ws"
    (root / "logs").mkdir(parents=True)
    (root / "logs" / "training.log").write_text("previous session\n")
    run_train(root)
    archives = Archiver(root).list()
    assert len(archives) == 2  # the workspace before training, and the session after it
    with zipfile.ZipFile(archives[0]) as zf:
        assert zf.read("logs/training.log") == b"previous session\n"
    with zipfile.ZipFile(archives[-1]) as zf:
        names = zf.namelist()
        assert any(n.startswith("logs/trades/trade_traces_") and n.endswith(".jsonl") for n in names)
        assert any(n.endswith(".models") for n in names)
        assert b"training A2C" in zf.read("logs/training.log")
    assert [
        p.name for p in root.iterdir() if p.name.startswith("logs_backup_")
    ]  # old logs moved, not deleted
    bundles = list((root / "models").rglob("*.models"))
    assert len(bundles) == 1


def test_train_no_archive_and_the_model_loads(tmp_path):
    pytest.importorskip("stable_baselines3")
    import gymnasium as gym
    import numpy as np

    import persistkit as pk

    root = tmp_path / "ws"
    run_train(root, "--no-archive")
    assert not (root / "archives").exists()
    (bundle,) = list((root / "models").rglob("*.models"))
    loaded = pk.load_bundle(bundle, env=gym.make("CartPole-v1"))
    action, _ = loaded["policy"].predict(np.zeros(4, dtype=np.float32), deterministic=True)
    assert int(action) in (0, 1)
    assert loaded["signal"].predict(np.zeros((1, 4))).shape == (1,)
