"""persistkit.sb3.fine_tune: continue training a bundled SB3 model and record the lineage."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

import gymnasium as gym

import persistkit as pk
from persistkit.errors import NotFoundError
from persistkit.format.crypto import KdfParams
from persistkit.sb3 import fine_tune, linear_schedule


def ppo(**kw):
    from stable_baselines3 import PPO

    env = gym.make("CartPole-v1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PPO("MlpPolicy", env, n_steps=32, batch_size=16, n_epochs=1, policy_kwargs={"net_arch": [8]},
                    seed=0, device="cpu", **kw)  # fmt: skip
        model.learn(64)
    return model


def test_bundle_save_load_then_learn_continues_counting(tmp_path):
    model = ppo(learning_rate=linear_schedule(1e-3, 1e-4))
    path = pk.save_bundle(tmp_path / "x.models", {"policy": model, "q_table": np.ones(4)})
    loaded = pk.load_bundle(path, env=gym.make("CartPole-v1"))["policy"]
    assert loaded.num_timesteps == model.num_timesteps == 64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded.learn(32, reset_num_timesteps=False)
    assert loaded.num_timesteps == 96
    assert pk.inspect(path).member("policy").info["num_timesteps"] == 64


def test_fine_tune_writes_a_child_bundle_with_lineage(tmp_path):
    parent = pk.save_bundle(tmp_path / "x.models", {"policy": ppo(), "q_table": np.arange(3.0)},
                            metadata={"note": "parent"}, config={"lr": 1})  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        child = fine_tune(parent, "policy", gym.make("CartPole-v1"), 64)
    assert child == tmp_path / "x.ft128.models"
    assert (tmp_path / "x.ft128.models.key").exists()  # the key lives beside each bundle
    bundle = pk.load_bundle(child, env=gym.make("CartPole-v1"))
    lineage = bundle.metadata["lineage"]
    assert lineage["parent_sha256"] == hashlib.sha256(parent.read_bytes()).hexdigest()
    assert lineage["timesteps_before"] == 64 and lineage["timesteps_after"] == 128
    assert lineage["parent_bundle_id"] == pk.inspect(parent).bundle_id
    assert bundle["policy"].num_timesteps == 128
    assert bundle.metadata["note"] == "parent" and bundle.metadata["config"] == {"lr": 1}
    np.testing.assert_array_equal(bundle["q_table"], np.arange(3.0))
    assert pk.load_bundle(parent, env=gym.make("CartPole-v1"))["policy"].num_timesteps == 64  # untouched


def test_fine_tune_keeps_the_password_and_the_chosen_path(tmp_path):
    parent = pk.save_bundle(tmp_path / "p.models", {"policy": ppo()}, password="pw", kdf=KdfParams.floor())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        child = fine_tune(
            parent, "policy", gym.make("CartPole-v1"), 32, save_to=tmp_path / "c.models", password="pw"
        )
    assert child == tmp_path / "c.models"
    assert pk.inspect(child).encryption.key_source == "password"
    assert pk.load_bundle(child, password="pw")["policy"].num_timesteps == 96


def test_fine_tune_refuses_a_non_sb3_member(tmp_path):
    parent = pk.save_bundle(tmp_path / "x.models", {"q": np.ones(2)})
    with pytest.raises(TypeError, match="not an SB3 model"):
        fine_tune(parent, "q", gym.make("CartPole-v1"), 10)
    with pytest.raises(NotFoundError, match="no member 'nope'") as info:
        fine_tune(parent, "nope", gym.make("CartPole-v1"), 10)
    assert isinstance(info.value, KeyError) and info.value.member == "nope" and info.value.path == str(parent)


def test_fine_tuning_a_store_version_publishes_a_new_version_of_its_group(tmp_path):
    store = pk.ModelStore(tmp_path / "models")
    parent = store.save({"policy": ppo()}, symbol="BTC/USDT", agent="ppo", timeframe="1h", config={"lr": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        child = fine_tune(store.latest("BTC/USDT", "ppo", "1h"), "policy", gym.make("CartPole-v1"), 32)
    assert store.versions("BTC/USDT", "ppo", "1h") == [parent, child]
    assert store.latest("BTC/USDT", "ppo", "1h") == child
    assert not list(tmp_path.rglob("*.ft*.models"))
    loaded = store.load_latest("BTC/USDT", "ppo", "1h", env=gym.make("CartPole-v1"))
    assert loaded["policy"].num_timesteps == 96
    lineage = loaded.metadata["lineage"]
    assert lineage["parent_version"] == parent.name and lineage["parent_path"] == str(parent)
    assert lineage["parent_bundle_id"] == pk.inspect(parent).bundle_id
    assert loaded.metadata["store"] == {"symbol": "BTC/USDT", "agent": "ppo", "timeframe": "1h"}
    assert loaded.metadata["config"] == {"lr": 1}
    assert (child.parent / (child.name + ".key")).exists()  # its own key, as every store version


def test_fine_tune_publishes_into_the_store_it_is_given_and_needs_a_group_for_it(tmp_path):
    other = pk.ModelStore(tmp_path / "staging")
    parent = pk.ModelStore(tmp_path / "models").save(
        {"policy": ppo()}, symbol="ETH", agent="ppo", timeframe="4h"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        child = fine_tune(parent, "policy", gym.make("CartPole-v1"), 32, store=other)
    assert other.versions("ETH", "ppo", "4h") == [child]
    loose = pk.save_bundle(tmp_path / "loose.models", {"policy": ppo()})
    with pytest.raises(ValueError, match=r"no 'store' group.*save_to="):
        fine_tune(loose, "policy", gym.make("CartPole-v1"), 32, store=other)


def test_a_lambda_learning_rate_survives_a_bundle_as_a_table_or_as_the_function_given_back(tmp_path):
    def schedule(p):
        return 3e-4 * p

    model = ppo(learning_rate=lambda p: 3e-4 * p)
    path = pk.save_bundle(tmp_path / "x.models", {"policy": model})
    assert pk.inspect(path).member("policy").info["tabulated_schedules"] == ["learning_rate"]
    tabled = pk.load_bundle(path, env=gym.make("CartPole-v1"))["policy"]
    assert tabled.lr_schedule(0.37) == pytest.approx(3e-4 * 0.37, rel=1e-12)
    exact = pk.load_bundle(path, env=gym.make("CartPole-v1"), custom_objects={"learning_rate": schedule})[
        "policy"
    ]
    assert exact.learning_rate is schedule and exact.lr_schedule(0.37) == schedule(0.37)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exact.learn(32, reset_num_timesteps=False)
    assert exact.num_timesteps == 96


def test_fine_tune_a_remote_version_publishes_the_child_into_the_remote_store(s3_bucket, tmp_path):
    """A parent on object storage: fetched (checked) into the cache, child published as the next version,
    lineage naming the parent's URL; without store= the URL is refused with advice."""
    server, bucket = s3_bucket

    def remote(cache):
        return pk.ModelStore(f"s3://{bucket}/models", cache_dir=tmp_path / cache,
                             key_file=tmp_path / "store.key", storage_options=server.storage_options)  # fmt: skip

    import datetime as dt

    when = dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)
    parent = remote("trainer").save(
        {"policy": ppo()}, symbol="BTC/USDT", agent="ppo", timeframe="1h", when=when
    )
    with pytest.raises(ValueError, match="is on object storage: pass store=ModelStore"):
        fine_tune(parent, "policy", gym.make("CartPole-v1"), 32)
    store = remote("tuner")  # another machine: its own cache, the shared key
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        child = fine_tune(parent, "policy", gym.make("CartPole-v1"), 32, store=store)
    assert isinstance(child, str) and child.startswith(f"s3://{bucket}/models/BTC-USDT/ppo/1h/")
    assert store.versions("BTC/USDT", "ppo", "1h") == [parent, child]
    assert store.latest("BTC/USDT", "ppo", "1h") == child
    loaded = remote("server").load_latest("BTC/USDT", "ppo", "1h", env=gym.make("CartPole-v1"))
    assert loaded["policy"].num_timesteps == 96
    lineage = loaded.metadata["lineage"]
    assert lineage["parent_path"] == parent and lineage["timesteps_before"] == 64
    assert lineage["parent_version"] == parent.name
