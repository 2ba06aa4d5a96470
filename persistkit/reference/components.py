"""The components of the reference trading bot, each ``Persistent``.

They mirror what a real bot keeps (see shared/seeds: analytics, risk manager,
ML signal model, deep model, Q-table, attention weights) and are small enough
to run thousands of simulated minutes per second.
"""

from __future__ import annotations

import collections
import datetime as dt
import math
from typing import Any

import numpy as np

from persistkit.format.tree import Records

N_FEATURES = 4
REGIMES = ("trend", "range", "volatile")
STRATEGIES = ("momentum", "mean_revert")


class PriceFeed:
    """A seeded synthetic price series with regime switches; one step is one simulated minute."""

    def __init__(self, seed: int = 0, start: dt.datetime | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.now = start or dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        self.price = 100.0
        self.history: collections.deque[float] = collections.deque([100.0], maxlen=64)
        self.drift = 0.0

    def next(self) -> float:
        if self.rng.random() < 0.01:
            self.drift = float(self.rng.normal(0, 0.0005))
        self.price *= math.exp(self.drift + float(self.rng.normal(0, 0.002)))
        self.now += dt.timedelta(minutes=1)
        self.history.append(self.price)
        return self.price

    def features(self) -> np.ndarray:
        h = np.asarray(self.history, dtype=np.float64)
        if h.size < 16:
            return np.zeros(N_FEATURES)
        r = np.diff(np.log(h))
        return np.array([r[-1], r[-5:].sum(), r[-15:].sum(), r[-15:].std()]) * 100

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self.rng.bit_generator.state,
            "now": self.now,
            "price": self.price,
            "history": list(self.history),
            "drift": self.drift,
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.rng.bit_generator.state = s["rng"]
        self.now, self.price, self.drift = s["now"], s["price"], s["drift"]
        self.history = collections.deque(s["history"], maxlen=64)


class RiskManager:
    """Totals, streaks, drawdown, the last 10 trades and a daily loss that resets at UTC midnight."""

    def __init__(self, balance: float = 10_000.0) -> None:
        self.balance = balance
        self.total_trades = self.wins = self.losses = 0
        self.gross_profit = self.gross_loss = 0.0
        self.peak_balance = balance
        self.drawdown = 0.0
        self.win_streak = self.loss_streak = 0
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=10)
        self.daily_loss = 0.0
        self.day = dt.date(2026, 1, 1)
        self.last_trade_id = -1

    def tick(self, now: dt.datetime) -> None:
        """Reset the daily loss at UTC midnight of simulated time, trade or no trade."""
        if now.date() != self.day:
            self.day, self.daily_loss = now.date(), 0.0

    def on_trade(self, trade: dict[str, Any]) -> None:
        self.tick(trade["closed"])
        pnl = trade["pnl"]
        self.balance += pnl
        self.total_trades += 1
        if pnl >= 0:
            self.wins += 1
            self.gross_profit += pnl
            self.win_streak, self.loss_streak = self.win_streak + 1, 0
        else:
            self.losses += 1
            self.gross_loss += -pnl
            self.daily_loss += -pnl
            self.win_streak, self.loss_streak = 0, self.loss_streak + 1
        self.peak_balance = max(self.peak_balance, self.balance)
        self.drawdown = (self.peak_balance - self.balance) / self.peak_balance
        self.recent.append(trade)
        self.last_trade_id = trade["id"]

    def allows_trading(self) -> bool:
        return self.daily_loss < 0.05 * self.peak_balance and self.drawdown < 0.5

    def state_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, collections.deque) else v) for k, v in vars(self).items()}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        for k, v in s.items():
            setattr(self, k, collections.deque(v, maxlen=10) if k == "recent" else v)


class SignalModel:
    """An sklearn SGD logistic model plus scaler, its last 10,000 examples and its track record."""

    def __init__(self, seed: int = 0) -> None:
        from sklearn.linear_model import SGDClassifier
        from sklearn.preprocessing import StandardScaler

        self.model = SGDClassifier(loss="log_loss", random_state=seed)
        self.scaler = StandardScaler()
        self.examples: collections.deque[tuple[list[float], int]] = collections.deque(maxlen=10_000)
        self.feature_importance = np.zeros(N_FEATURES)
        self.fitted = False
        self.trades = 0
        self.wins = 0
        self.total_profit = 0.0

    def probability_up(self, x: np.ndarray) -> float:
        if not self.fitted:
            return 0.5
        return float(self.model.predict_proba(self.scaler.transform(x[None, :]))[0, 1])

    def learn(self, x: np.ndarray, up: bool, pnl: float) -> None:
        self.examples.append(([float(v) for v in x], int(up)))
        self.trades += 1
        self.wins += int(pnl >= 0)
        self.total_profit += pnl
        if len(self.examples) >= 20 and self.trades % 10 == 0:
            X = np.array([e[0] for e in list(self.examples)[-500:]])
            y = np.array([e[1] for e in list(self.examples)[-500:]])
            if len(set(y.tolist())) == 2:
                self.scaler.fit(X)
                self.model.partial_fit(self.scaler.transform(X), y, classes=np.array([0, 1]))
                self.fitted = True
                self.feature_importance = np.abs(self.model.coef_[0])

    @property
    def win_rate(self) -> float:
        return self.wins / self.trades if self.trades else 0.0

    @property
    def average_profit(self) -> float:
        return self.total_profit / self.trades if self.trades else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "scaler": self.scaler,
            "examples": Records(self.examples),  # 10,000 uniform rows: stored by column
            "feature_importance": self.feature_importance,
            "fitted": self.fitted,
            "trades": self.trades,
            "wins": self.wins,
            "total_profit": self.total_profit,
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.model, self.scaler = s["model"], s["scaler"]
        self.examples = collections.deque((tuple(e) for e in s["examples"]), maxlen=10_000)
        self.feature_importance, self.fitted = s["feature_importance"], s["fitted"]
        self.trades, self.wins, self.total_profit = s["trades"], s["wins"], s["total_profit"]

    def fingerprint(self) -> dict[str, Any]:
        if not self.fitted:
            return {"fitted": False, "trades": self.trades}
        return {
            "coef": self.model.coef_.tolist(),
            "intercept": self.model.intercept_.tolist(),
            "mean": self.scaler.mean_.tolist(),
            "trades": self.trades,
            "examples": len(self.examples),
        }


class DeepSignalModel:
    """A small torch LSTM over recent returns. Weights are kept as numpy arrays until used,
    so a bot that only restarts and reads its state does not pay for importing torch."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._module: Any = None
        self._weights: dict[str, np.ndarray] | None = None
        self.updates = 0

    def _materialize(self) -> Any:
        if self._module is None:
            import torch

            torch.manual_seed(self.seed)
            self._module = torch.nn.ModuleDict(
                {"lstm": torch.nn.LSTM(1, 8, batch_first=True), "head": torch.nn.Linear(8, 1)}
            )
            start = self._weights if self._weights is not None else _initial_lstm_weights(self.seed)
            self._module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in start.items()})
            self._optimizer = torch.optim.SGD(self._module.parameters(), lr=0.01)
        return self._module

    def score(self, history: list[float]) -> float:
        import torch

        module = self._materialize()
        r = np.diff(np.log(np.asarray(history[-17:], dtype=np.float32))) * 100
        with torch.no_grad():
            out, _ = module["lstm"](torch.from_numpy(r.reshape(1, -1, 1).astype(np.float32)))
            return float(module["head"](out[:, -1]).item())

    def learn(self, history: list[float], target: float) -> None:
        import torch

        module = self._materialize()
        r = np.diff(np.log(np.asarray(history[-17:], dtype=np.float32))) * 100
        out, _ = module["lstm"](torch.from_numpy(r.reshape(1, -1, 1).astype(np.float32)))
        loss = (module["head"](out[:, -1]).squeeze() - float(target)) ** 2
        self._optimizer.zero_grad()
        loss.backward()
        self._optimizer.step()
        self._weights = None
        self.updates += 1

    def weights(self) -> dict[str, np.ndarray]:
        if self._module is not None:
            return {k: v.detach().numpy().copy() for k, v in self._module.state_dict().items()}
        if self._weights is not None:
            return self._weights
        return dict(_initial_lstm_weights(self.seed).items())

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights(), "updates": self.updates, "seed": self.seed}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self._weights, self.updates, self.seed = dict(s["weights"]), s["updates"], s["seed"]
        self._module = None


def _initial_lstm_weights(seed: int) -> dict[str, np.ndarray]:
    """Deterministic initial LSTM weights without importing torch (same shapes as the module)."""
    rng = np.random.default_rng(seed)
    k = 1 / math.sqrt(8)
    shapes = {
        "lstm.weight_ih_l0": (32, 1),
        "lstm.weight_hh_l0": (32, 8),
        "lstm.bias_ih_l0": (32,),
        "lstm.bias_hh_l0": (32,),
        "head.weight": (1, 8),
        "head.bias": (1,),
    }
    return {n: rng.uniform(-k, k, s).astype(np.float32) for n, s in shapes.items()}


class QTable:
    """Strategy Q-values by market regime, with epsilon-greedy exploration."""

    def __init__(self, seed: int = 0) -> None:
        self.q: dict[tuple[str, str], float] = {(r, s): 0.0 for r in REGIMES for s in STRATEGIES}
        self.epsilon = 0.2
        self.rng = np.random.default_rng(seed + 1)

    def choose(self, regime: str) -> str:
        if self.rng.random() < self.epsilon:
            return STRATEGIES[int(self.rng.integers(len(STRATEGIES)))]
        return max(STRATEGIES, key=lambda s: self.q[(regime, s)])

    def update(self, regime: str, strategy: str, reward: float) -> None:
        key = (regime, strategy)
        self.q[key] += 0.1 * (reward - self.q[key])
        self.epsilon = max(0.02, self.epsilon * 0.999)

    def state_dict(self) -> dict[str, Any]:
        return {"q": dict(self.q), "epsilon": self.epsilon, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.q, self.epsilon = dict(s["q"]), s["epsilon"]
        self.rng.bit_generator.state = s["rng"]


class AttentionWeights:
    """Learned feature weights (numpy), nudged toward features that predicted well."""

    def __init__(self) -> None:
        self.weights = np.full(N_FEATURES, 1.0 / N_FEATURES)

    def update(self, x: np.ndarray, reward: float) -> None:
        self.weights = np.clip(self.weights + 0.01 * reward * np.sign(x), 0.01, None)
        self.weights /= self.weights.sum()

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.weights = np.array(s["weights"], dtype=np.float64)
