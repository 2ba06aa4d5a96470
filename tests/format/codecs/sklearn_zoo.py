"""Tiny fitted instances of every scikit-learn estimator, for the trust-list coverage test."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

RNG = np.random.RandomState(0)
X = RNG.rand(30, 4) + 0.1
Y_CLASS = np.array([0, 1, 2] * 10)
Y_BIN = np.array([0, 1] * 15)
Y_REG = RNG.rand(30) + 0.1
Y_MULTI = np.c_[Y_CLASS % 2, (Y_CLASS + 1) % 2]
TEXT = ["alpha beta", "beta gamma", "gamma alpha"] * 10
DICTS = [{"a": 1.0, "b": 2.0}, {"a": 3.0}, {"c": 1.0}] * 10


def construct(cls: type) -> Any:
    """One instance with test-friendly parameters (scikit-learn's own test generator when available)."""
    if cls.__name__ == "FrozenEstimator":
        from sklearn.linear_model import LogisticRegression

        return cls(LogisticRegression().fit(X, Y_CLASS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated estimators warn when constructed
        try:
            from sklearn.utils._test_common.instance_generator import _construct_instances

            return next(iter(_construct_instances(cls)))
        except ImportError:  # pragma: no cover - private helper moved
            return cls()


def fit(est: Any, name: str) -> Any:
    """Fit on tiny data of the right shape; raise the last error when nothing fits."""
    if name == "KernelCenterer":
        attempts: list[tuple[Any, ...]] = [(X @ X.T,)]
    elif name == "IsotonicRegression":
        attempts = [(X[:, 0], Y_REG)]
    elif name == "SparseCoder":
        attempts = [(X[:, : est.dictionary.shape[1]],)]
    else:
        attempts = [
            (X, Y_CLASS),
            (X, Y_BIN),
            (X, Y_REG),
            (X, Y_MULTI),
            (X,),
            (TEXT,),
            (TEXT, Y_CLASS),
            (DICTS,),
        ]
    error: Exception | None = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for args in attempts:
            try:
                return est.fit(*args)
            except Exception as err:
                error = err
    assert error is not None
    raise error


def probe_input(name: str) -> Any:
    if name in ("CountVectorizer", "TfidfVectorizer", "HashingVectorizer"):
        return TEXT[:6]
    if name in ("DictVectorizer", "FeatureHasher"):
        return DICTS[:6]
    if name == "KernelCenterer":
        return (X @ X.T)[:6]
    if name == "IsotonicRegression":
        return X[:6, 0]
    if name == "SparseCoder":
        return X[:6, :3]
    return X[:6]


METHODS = ("predict", "predict_proba", "decision_function", "transform", "score_samples")


def outputs(est: Any, probe: Any) -> dict[str, Any]:
    """Deterministic outputs of ``est`` on ``probe`` (methods whose output varies between calls are left out)."""
    out: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method in METHODS:
            if not hasattr(est, method):
                continue
            try:
                first, second = getattr(est, method)(probe), getattr(est, method)(probe)
            except Exception:
                continue
            first, second = _dense(first), _dense(second)
            if _same(first, second):
                out[method] = first
    return out


def _dense(value: Any) -> Any:
    return value.toarray() if hasattr(value, "toarray") else np.asarray(value)


def _same(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "fc":
        return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))
    return a.shape == b.shape and bool(np.array_equal(a, b))
