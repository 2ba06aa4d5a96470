"""stable-baselines3 as data: A2C, PPO, DQN and SAC rebuild exactly and keep learning; no cloudpickle."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

import gymnasium as gym
import torch

from persistkit.errors import FormatError, UnsupportedTypeError, UntrustedTypeError
from persistkit.format import tree
from persistkit.format.codecs import sb3 as sb3c


def make(algo: str, **extra):
    from stable_baselines3 import A2C, DQN, PPO, SAC

    small = {"net_arch": [16]}  # fresh each time: SB3 adds keys to policy_kwargs in place
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium/SB3 chatter about env checks
        if algo == "A2C":
            env = gym.make("CartPole-v1")
            model = A2C("MlpPolicy", env, n_steps=8, policy_kwargs=small, seed=0, device="cpu", **extra)
        elif algo == "PPO":
            env = gym.make("CartPole-v1")
            kw = {"n_steps": 32, "batch_size": 16, "n_epochs": 2, "policy_kwargs": small, **extra}
            model = PPO("MlpPolicy", env, seed=0, device="cpu", **kw)
        elif algo == "DQN":
            env = gym.make("CartPole-v1")
            kw = {"learning_starts": 16, "buffer_size": 200, "batch_size": 8, "policy_kwargs": small, **extra}
            model = DQN("MlpPolicy", env, seed=0, device="cpu", **kw)
        else:
            env = gym.make("Pendulum-v1")
            kw = {"learning_starts": 16, "buffer_size": 200, "batch_size": 8, "policy_kwargs": small, **extra}
            model = SAC("MlpPolicy", env, seed=0, device="cpu", **kw)
        model.learn(48)
    return model, env


def same_parameters(a, b) -> None:
    pa, pb = a.get_parameters(), b.get_parameters()
    assert pa.keys() == pb.keys()
    for name in pa:
        for key, value in pa[name].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, pb[name][key]), f"{name}.{key}"


def same_actions(a, b, env) -> None:
    obs = np.stack([env.observation_space.sample() for _ in range(8)])
    assert np.array_equal(a.predict(obs, deterministic=True)[0], b.predict(obs, deterministic=True)[0])


@pytest.mark.parametrize("algo", ["A2C", "PPO", "DQN", "SAC"])
def test_round_trip_rebuilds_parameters_optimizer_and_counters(algo):
    model, env = make(algo)
    payload = sb3c.encode(model)
    back = sb3c.decode(payload, env=env)
    assert type(back) is type(model)
    same_parameters(model, back)
    same_actions(model, back, env)
    assert back.num_timesteps == model.num_timesteps
    assert back._n_updates == model._n_updates
    for name in model._get_torch_save_params()[0]:
        if name.endswith("optimizer"):
            a = model.get_parameters()[name]["state"]
            b = back.get_parameters()[name]["state"]
            assert a.keys() == b.keys()
    if algo == "SAC":
        assert torch.equal(model.log_ent_coef, back.log_ent_coef)
    before = back.num_timesteps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back.learn(32, reset_num_timesteps=False)
    assert back.num_timesteps >= before + 32


def test_schedules_and_policy_kwargs_are_data():
    from stable_baselines3.common.utils import LinearSchedule

    model, env = make(
        "PPO",
        learning_rate=LinearSchedule(3e-4, 1e-5, 0.5),
        clip_range=LinearSchedule(0.3, 0.1, 1.0),
        policy_kwargs={"net_arch": [8], "activation_fn": torch.nn.ReLU, "optimizer_class": torch.optim.AdamW},
    )
    payload = sb3c.encode(model)
    names = sb3c.audit(payload)
    assert "torch.nn.modules.activation.ReLU" in names and "torch.optim.adamw.AdamW" in names
    back = sb3c.decode(payload, env=env)
    assert back.policy_kwargs["activation_fn"] is torch.nn.ReLU
    assert isinstance(back.policy.optimizer, torch.optim.AdamW)
    for progress in (1.0, 0.75, 0.2):
        assert back.lr_schedule(progress) == model.lr_schedule(progress)
        assert back.clip_range(progress) == model.clip_range(progress)
    assert b"cloudpickle" not in payload and b":serialized:" not in payload


def test_replay_buffer_only_when_asked():
    model, env = make("DQN")
    without = sb3c.decode(sb3c.encode(model), env=env)
    assert without.replay_buffer.pos == 0
    with_buffer = sb3c.decode(sb3c.encode(model, save_replay_buffer=True), env=env)
    used = model.replay_buffer.pos
    assert with_buffer.replay_buffer.pos == used and used > 0
    for attr in ("observations", "actions", "rewards", "dones"):
        assert np.array_equal(
            getattr(with_buffer.replay_buffer, attr)[:used], getattr(model.replay_buffer, attr)[:used]
        )


def test_a_function_schedule_is_tabulated_and_rebuilt_without_pickle():
    model, env = make("PPO", learning_rate=lambda p: 3e-4 * p, clip_range=lambda p: 0.1 + 0.2 * p)
    assert sb3c.info(model)["tabulated_schedules"] == ["clip_range", "learning_rate"]
    payload = sb3c.encode(model, member="policy")
    back = sb3c.decode(payload, env=env)
    assert isinstance(back.learning_rate, sb3c.TabulatedSchedule)
    assert "<lambda>" in repr(back.learning_rate) and back.learning_rate.values.size == sb3c.SCHEDULE_POINTS
    grid = np.concatenate([np.linspace(0.0, 1.0, 37), np.random.default_rng(0).random(50)])
    for p in grid:  # linear schedules are exact up to rounding
        assert back.lr_schedule(p) == pytest.approx(model.lr_schedule(p), rel=1e-12, abs=1e-18)
        assert back.clip_range(p) == pytest.approx(model.clip_range(p), rel=1e-12)
    assert back.policy.optimizer.param_groups[0]["lr"] == pytest.approx(
        model.policy.optimizer.param_groups[0]["lr"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back.learn(32, reset_num_timesteps=False)
    # saved again, the table is kept as it is (not sampled a second time)
    again = sb3c.decode(sb3c.encode(back), env=env)
    assert np.array_equal(again.learning_rate.values, back.learning_rate.values)
    assert b"cloudpickle" not in payload and b":serialized:" not in payload


def test_a_curved_function_schedule_is_close_between_the_points():
    model, env = make("A2C", learning_rate=lambda p: 1e-3 * p**3)
    back = sb3c.decode(sb3c.encode(model), env=env)
    for p in np.random.default_rng(1).random(200):
        assert abs(back.lr_schedule(p) - 1e-3 * p**3) <= 1e-3 * 6 * (1 / 1000) ** 2 / 8 + 1e-18


def test_a_schedule_that_fails_or_a_function_elsewhere_is_refused_at_save_naming_the_attribute():
    model, _ = make("A2C")
    model.learning_rate = lambda p: 1e-3 if p > 0.5 else float("nan")
    with pytest.raises(UnsupportedTypeError, match=r"learning_rate.*finite number.*tabulated") as info:
        sb3c.encode(model, member="policy")
    assert info.value.member == "policy" and info.value.field == "learning_rate"
    model.learning_rate = 1e-3
    model.custom_hook = lambda x: x  # not a schedule: there is no way to store it as data
    with pytest.raises(UnsupportedTypeError, match=r"custom_hook") as info:
        sb3c.encode(model, member="policy")
    assert info.value.field == "custom_hook"


def test_classes_outside_the_allowlist_need_trusted():
    from stable_baselines3.common.torch_layers import FlattenExtractor

    class Custom(FlattenExtractor):
        pass

    Custom.__module__ = "tests_custom_module"
    Custom.__qualname__ = "Custom"
    model, env = make("A2C")
    model.policy_kwargs = {**model.policy_kwargs, "features_extractor_class": Custom}
    payload = sb3c.encode(model)
    with pytest.raises(UntrustedTypeError, match=r"tests_custom_module\.Custom") as info:
        sb3c.decode(payload, env=env)
    assert info.value.types == ["tests_custom_module.Custom"]
    with pytest.raises(FormatError, match="not available in this environment"):
        sb3c.decode(payload, env=env, trusted=["tests_custom_module.Custom"])


def test_wrong_env_is_a_clear_error():
    model, _ = make("A2C")
    with pytest.raises(FormatError, match="does not match the one the model was trained on"):
        sb3c.decode(sb3c.encode(model), env=gym.make("Acrobot-v1"))


def test_loads_without_an_env_for_predict():
    model, env = make("PPO")
    back = sb3c.decode(sb3c.encode(model))
    assert back.get_env() is None
    same_actions(model, back, env)


def test_an_sb3_zip_is_refused_without_unpickling():
    with pytest.raises(FormatError, match=r"stable-baselines3 zip.*cloudpickle"):
        sb3c.decode(b"PK\x03\x04rest of an SB3 zip")


def test_malformed_payloads_are_format_errors():
    with pytest.raises(FormatError, match="not a persistkit SB3 member"):
        sb3c.decode(tree.encode({"format": 1, "algorithm": "x"}))
    bad_names = tree.encode(
        {"format": 1, "algorithm": "stable_baselines3.ppo.ppo.PPO", "data": tree.encode({"__class__": b""}),
         "params": [b"", b""], "variables": [b"", b""], "replay_buffer": None, "versions": {}}
    )  # fmt: skip
    with pytest.raises(FormatError, match="refusing SB3 attribute name"):
        sb3c.decode(bad_names)
