"""roundtrip: through bundles, state stores and envelopes; exact, type-aware, and it names the difference."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import decimal

import numpy as np
import pytest

from persistkit.testing.roundtrip import Roundtrip


@dataclasses.dataclass
class Config:
    lr: float
    layers: list[int]
    window: np.ndarray


VALUE = {
    "prices": np.array([1.5, np.nan, -0.0], dtype=np.float32),
    "config": Config(0.001, [64, 64], np.arange(4, dtype=np.int16)),
    "when": dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC),
    "qty": decimal.Decimal("0.00100000"),
    "recent": collections.deque([1, 2, 3], maxlen=5),
    "pair": (1, "a"),
}


@pytest.mark.parametrize("via", ["envelope", "state"])
def test_tree_values_and_dataclasses_round_trip_exactly(tmp_path, via):
    loaded = Roundtrip(tmp_path)(VALUE, via=via)
    assert type(loaded["config"]) is Config and loaded["config"].window.dtype == np.int16
    assert loaded is not VALUE


def test_bundles_round_trip_arrays_and_models(tmp_path):
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    forest = RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(x, x[:, 0] > 0)
    rt = Roundtrip(tmp_path)
    assert rt(np.arange(6.0).reshape(2, 3), via="bundle").shape == (2, 3)
    loaded = rt(forest, via="bundle")
    assert loaded is not forest and (loaded.predict(x) == forest.predict(x)).all()


def test_torch_modules_compare_their_weights(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    loaded = Roundtrip(tmp_path)(net, via="bundle")
    assert torch.equal(loaded[0].weight, net[0].weight) and loaded is not net


def test_a_torch_module_comes_back_from_a_bundle_as_a_module_of_its_class(tmp_path):
    torch = pytest.importorskip("torch")

    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

    net = Head()
    loaded = Roundtrip(tmp_path)(net, via="bundle")
    assert type(loaded) is Head and loaded is not net
    assert loaded.lin.weight.data_ptr() != net.lin.weight.data_ptr()
    assert torch.equal(loaded.lin.weight, net.lin.weight)


class Forgetful:
    def __init__(self):
        self.balance = 0
        self.history = []

    def state_dict(self):
        return {"balance": self.balance}

    def load_state_dict(self, state):
        self.balance = state["balance"]


def test_a_forgotten_field_is_named(tmp_path):
    wallet = Forgetful()
    wallet.balance, wallet.history = 5, [5]
    with pytest.raises(AssertionError, match=r"roundtrip\(via='state'\): .* at value.history: length 1 != 0"):
        Roundtrip(tmp_path)(wallet, via="state")


def test_components_without_a_default_constructor_need_a_factory(tmp_path):
    class NeedsArgs(Forgetful):
        def __init__(self, owner):
            super().__init__()
            self.owner = owner

        def state_dict(self):
            return {"balance": self.balance, "history": self.history}

        def load_state_dict(self, state):
            self.balance, self.history = state["balance"], state["history"]

    with pytest.raises(TypeError, match="pass factory=lambda: NeedsArgs"):
        Roundtrip(tmp_path)(NeedsArgs("me"), via="state")
    assert Roundtrip(tmp_path)(NeedsArgs("me"), via="state", factory=lambda: NeedsArgs("me")).owner == "me"


def test_unknown_route_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="via must be one of"):
        Roundtrip(tmp_path)(1, via="pickle")


def test_sb3_models_compare_parameters_and_deterministic_actions(tmp_path):
    sb3 = pytest.importorskip("stable_baselines3")
    model = sb3.PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(64)
    loaded = Roundtrip(tmp_path)(model, via="bundle")
    obs = np.zeros(4, dtype=np.float32)
    assert (
        loaded is not model
        and loaded.predict(obs, deterministic=True)[0] == model.predict(obs, deterministic=True)[0]
    )


class Wallet:
    def __init__(self):
        self.balance = 0
        self.history = []

    def state_dict(self):
        return {"balance": self.balance, "history": list(self.history)}

    def load_state_dict(self, state):
        self.balance, self.history = state["balance"], list(state["history"])


@pytest.mark.parametrize("via", [None, "bundle", "envelope", "state"])
def test_persistent_objects_take_the_state_dict_route_on_every_route(tmp_path, via):
    wallet = Wallet()
    wallet.balance, wallet.history = 7, [3, 4]
    loaded = Roundtrip(tmp_path)(wallet, **({} if via is None else {"via": via}))
    assert isinstance(loaded, Wallet) and loaded is not wallet
    assert (loaded.balance, loaded.history) == (7, [3, 4])


def test_a_persistent_that_forgets_a_field_is_named_without_via(tmp_path):
    wallet = Forgetful()
    wallet.balance, wallet.history = 5, [5]
    with pytest.raises(AssertionError, match=r"roundtrip\(via='state'\): .* at value.history"):
        Roundtrip(tmp_path)(wallet)
