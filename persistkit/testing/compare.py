"""Type-aware deep equality that names the path of the first difference.

``first_difference(expected, actual)`` returns ``None`` when the two are
equal, else a message such as ``value['layers'][2]: dtype float32 != float64``.

* numpy: exact type, dtype, shape and values; NaNs must sit at the same positions.
* floats: NaN equals NaN, and ``-0.0`` differs from ``0.0`` (exact round trips).
* containers: exact type (tuple is not list), dict keys and order, deque maxlen.
* dataclasses and plain objects: same type, then field by field.
* scikit-learn: ``get_params()``, then ``predict``/``predict_proba``/``decision_function``/
  ``transform`` on seeded probe data.
* torch: tensors exactly (dtype, shape, NaN positions); modules by ``state_dict()``.
* stable-baselines3: parameters, then deterministic actions on seeded probe observations.

Heavy libraries are imported only when an object of theirs is compared.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["assert_same", "first_difference", "live_state"]

_PROBE_ROWS = 16
_MAX_DEPTH = 200


def _as_list_types() -> tuple[type, ...]:
    module = sys.modules.get("persistkit.format.tree")
    records = getattr(module, "Records", None)
    return (records,) if isinstance(records, type) else ()


class _LazyTypes:
    """``x in _AS_LIST``: tree.Records, looked up only once persistkit.format.tree is loaded."""

    def __contains__(self, t: object) -> bool:
        return t in _as_list_types()


_AS_LIST = _LazyTypes()


def first_difference(expected: Any, actual: Any, path: str = "value") -> str | None:
    """The path and nature of the first difference, or None when equal."""
    return _diff(expected, actual, path, 0)


def assert_same(expected: Any, actual: Any, *, what: str = "value") -> None:
    """Raise AssertionError naming the first difference."""
    problem = first_difference(expected, actual, what)
    if problem is not None:
        raise AssertionError(problem)


def live_state(obj: Any) -> Any:
    """A comparable deep copy of a live component: its attributes, else its ``state_dict()``.

    Comparing every attribute of the live object (not only what ``state_dict()``
    returns) is what catches a ``state_dict`` that forgets a field. Objects that
    cannot be deep-copied (they hold locks, files) fall back to ``state_dict()``.
    """
    import copy

    if hasattr(obj, "__dict__") and type(obj).__module__.split(".")[0] != "persistkit":
        try:
            return copy.deepcopy(dict(vars(obj)))
        except Exception:  # noqa: S110 - not copyable: compare what it persists instead
            pass
    if callable(getattr(obj, "state_dict", None)):
        return copy.deepcopy(dict(obj.state_dict()))
    if callable(getattr(type(obj), "__getstate__", None)):
        return copy.deepcopy(obj.__getstate__())
    return copy.deepcopy(obj)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _family(obj: Any) -> str:
    return type(obj).__module__.split(".", 1)[0]


def _diff(a: Any, b: Any, path: str, depth: int) -> str | None:
    if depth > _MAX_DEPTH:
        return None
    if a is b:
        return None
    ta, tb = type(a), type(b)
    if ta in _AS_LIST or tb in _AS_LIST:
        # tree.Records is a storage hint ("store these rows by column") that decodes as a list
        ta = list if ta in _AS_LIST else ta
        tb = list if tb in _AS_LIST else tb
        if ta is list and tb is list:
            return _diff_sequence(a, b, path, depth)
    if ta is not tb:
        return f"{path}: type {ta.__module__}.{ta.__qualname__} != {tb.__module__}.{tb.__qualname__}"
    fam = _family(a)
    if fam == "numpy":
        return _diff_numpy(a, b, path)
    if fam == "torch":
        return _diff_torch(a, b, path, depth)
    if fam == "sklearn" or (fam != "builtins" and _is_sklearn(a)):
        return _diff_sklearn(a, b, path, depth)
    if fam == "stable_baselines3":
        return _diff_sb3(a, b, path, depth)
    if isinstance(a, float):
        return _diff_float(a, b, path)
    if isinstance(a, complex):
        if _diff_float(a.real, b.real, path) or _diff_float(a.imag, b.imag, path):
            return f"{path}: {_short(a)} != {_short(b)}"
        return None
    if isinstance(a, (str, bytes, int, bool, type(None))):
        return None if a == b else f"{path}: {_short(a)} != {_short(b)}"
    if isinstance(a, Mapping):
        return _diff_mapping(a, b, path, depth)
    if isinstance(a, collections.deque):
        if a.maxlen != b.maxlen:
            return f"{path}: deque maxlen {a.maxlen} != {b.maxlen}"
        return _diff_sequence(list(a), list(b), path, depth)
    if isinstance(a, (list, tuple)):
        if hasattr(a, "_fields"):  # namedtuple: name the fields
            for name in a._fields:
                problem = _diff(getattr(a, name), getattr(b, name), f"{path}.{name}", depth + 1)
                if problem:
                    return problem
            return None
        return _diff_sequence(a, b, path, depth)
    if isinstance(a, (set, frozenset)):
        if a == b:
            return None
        missing, extra = a - b, b - a
        return f"{path}: set differs (missing {_short(sorted(map(repr, missing)))}, extra {_short(sorted(map(repr, extra)))})"
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        for f in dataclasses.fields(a):
            problem = _diff(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}", depth + 1)
            if problem:
                return problem
        return None
    try:
        equal = a == b
        if isinstance(equal, bool) and equal:
            return None
    except Exception:  # noqa: S110 - fall through to field-by-field comparison
        pass
    state_a, state_b = _object_state(a), _object_state(b)
    if state_a is not None and state_b is not None:
        problem = _diff_mapping(state_a, state_b, path, depth, attr=True)
        if problem is None and type(a).__eq__ is not object.__eq__:  # type: ignore[comparison-overlap]
            return (
                f"{path}: {ta.__qualname__}.__eq__ says the objects differ, though every attribute is equal"
            )
        return problem
    return f"{path}: {_short(a)} != {_short(b)}"


def _object_state(obj: Any) -> dict[str, Any] | None:
    if hasattr(obj, "__dict__"):
        return dict(vars(obj))
    slots = getattr(type(obj), "__slots__", None)
    if slots:
        names = [slots] if isinstance(slots, str) else list(slots)
        return {n: getattr(obj, n) for n in names if hasattr(obj, n)}
    return None


def _diff_float(a: float, b: float, path: str) -> str | None:
    if math.isnan(a) and math.isnan(b):
        return None
    if a == b and math.copysign(1.0, a) == math.copysign(1.0, b):
        return None
    return f"{path}: {a!r} != {b!r}"


def _key(k: Any) -> str:
    return f"[{k!r}]"


def _diff_mapping(
    a: Mapping[Any, Any], b: Mapping[Any, Any], path: str, depth: int, attr: bool = False
) -> str | None:
    keys_a, keys_b = list(a), list(b)

    def fmt(k: Any) -> str:
        return f"{path}.{k}" if attr else f"{path}{_key(k)}"

    for k in keys_a:
        if k not in b:
            return f"{fmt(k)}: missing (expected {_short(a[k])})"
    for k in keys_b:
        if k not in a:
            return f"{fmt(k)}: unexpected (got {_short(b[k])})"
    for k in keys_a:
        problem = _diff(a[k], b[k], fmt(k), depth + 1)
        if problem:
            return problem
    if not attr and keys_a != keys_b:
        return f"{path}: key order {_short(keys_a)} != {_short(keys_b)}"
    return None


def _diff_sequence(a: Any, b: Any, path: str, depth: int) -> str | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        problem = _diff(x, y, f"{path}[{i}]", depth + 1)
        if problem:
            return problem
    if len(a) != len(b):
        return f"{path}: length {len(a)} != {len(b)}"
    return None


# -- numpy ---------------------------------------------------------------------------


def _diff_numpy(a: Any, b: Any, path: str) -> str | None:
    import numpy as np

    if isinstance(a, np.ndarray):
        if a.dtype != b.dtype:
            return f"{path}: dtype {a.dtype} != {b.dtype}"
        if a.shape != b.shape:
            return f"{path}: shape {a.shape} != {b.shape}"
        if a.dtype.hasobject:
            for idx in np.ndindex(a.shape):
                problem = _diff(a[idx], b[idx], f"{path}[{', '.join(map(str, idx))}]", 1)
                if problem:
                    return problem
            return None
        if a.dtype.kind in "fcmM":
            # NaN (floats) and NaT (datetimes) never equal themselves: compare where they sit
            missing, label = (np.isnan, "NaN") if a.dtype.kind in "fc" else (np.isnat, "NaT")
            gap_a, gap_b = missing(a), missing(b)
            if not np.array_equal(gap_a, gap_b):
                idx = tuple(int(i) for i in np.argwhere(gap_a != gap_b)[0])
                return f"{path}{list(idx)}: {label} positions differ ({a[idx]!r} != {b[idx]!r})"
            same = (a == b) | gap_a
            # -0.0 and 0.0 compare equal; an exact round trip keeps the sign bit
            if a.dtype.kind == "c":
                same &= (np.signbit(a.real) == np.signbit(b.real)) & (
                    np.signbit(a.imag) == np.signbit(b.imag)
                )
            elif a.dtype.kind == "f":
                same &= np.signbit(a) == np.signbit(b)
        elif a.dtype.fields is not None or a.dtype.kind == "V":
            if a.tobytes() == b.tobytes():
                return None
            return f"{path}: structured array contents differ"
        else:
            same = a == b
        if bool(np.all(same)):
            return None
        idx = tuple(int(i) for i in np.argwhere(~same)[0])
        return f"{path}{list(idx)}: {a[idx]!r} != {b[idx]!r}"
    if isinstance(a, np.generic):
        if a.dtype != b.dtype:
            return f"{path}: dtype {a.dtype} != {b.dtype}"
        return _diff_numpy(np.asarray(a), np.asarray(b), path)
    if isinstance(a, np.dtype):
        return None if a == b else f"{path}: {a} != {b}"
    try:
        return None if bool(a == b) else f"{path}: {_short(a)} != {_short(b)}"
    except Exception:
        return f"{path}: cannot compare {type(a).__name__} values"


# -- torch ---------------------------------------------------------------------------


def _diff_torch(a: Any, b: Any, path: str, depth: int) -> str | None:
    import torch

    if isinstance(a, torch.Tensor):
        if a.dtype != b.dtype:
            return f"{path}: dtype {a.dtype} != {b.dtype}"
        if tuple(a.shape) != tuple(b.shape):
            return f"{path}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        if a.requires_grad != b.requires_grad:
            return f"{path}: requires_grad {a.requires_grad} != {b.requires_grad}"
        x, y = a.detach().cpu(), b.detach().cpu()
        if x.dtype.is_floating_point or x.dtype.is_complex:
            nan_x, nan_y = torch.isnan(x), torch.isnan(y)
            if not torch.equal(nan_x, nan_y):
                idx = tuple(int(i) for i in torch.nonzero(nan_x != nan_y)[0])
                return f"{path}{list(idx)}: NaN positions differ"
            same = (x == y) | nan_x
        else:
            same = x == y
        if bool(same.all()):
            return None
        idx = tuple(int(i) for i in torch.nonzero(~same)[0])
        return f"{path}{list(idx)}: {x[idx].item()!r} != {y[idx].item()!r}"
    if isinstance(a, torch.nn.Module):
        return _diff_mapping(dict(a.state_dict()), dict(b.state_dict()), f"{path}.state_dict()", depth + 1)
    if isinstance(a, (torch.dtype, torch.device, torch.Size)):
        return None if a == b else f"{path}: {a} != {b}"
    state_a, state_b = _object_state(a), _object_state(b)
    if state_a is not None and state_b is not None:
        return _diff_mapping(state_a, state_b, path, depth, attr=True)
    return None if a == b else f"{path}: {_short(a)} != {_short(b)}"


# -- scikit-learn ----------------------------------------------------------------------


def _is_sklearn(obj: Any) -> bool:
    if "sklearn" not in sys.modules:
        return False
    from sklearn.base import BaseEstimator

    return isinstance(obj, BaseEstimator)


def _probe_rows(n_features: int, seed: int = 0) -> Any:
    import numpy as np

    return np.random.default_rng(seed).normal(size=(_PROBE_ROWS, n_features))


def _diff_sklearn(a: Any, b: Any, path: str, depth: int) -> str | None:
    if not hasattr(a, "get_params"):
        state_a, state_b = _object_state(a), _object_state(b)
        if state_a is not None and state_b is not None:
            return _diff_mapping(state_a, state_b, path, depth, attr=True)
        if a == b:
            return None
        # Cython types (sklearn.tree._tree.Tree) have neither __dict__ nor __eq__: compare what pickle
        # would store, (constructor arguments, state); __reduce__ only reads the object.
        try:
            reduced_a, reduced_b = a.__reduce__(), b.__reduce__()
        except Exception:
            reduced_a = reduced_b = None
        if isinstance(reduced_a, tuple) and isinstance(reduced_b, tuple) and len(reduced_a) >= 2:
            return _diff_sequence(list(reduced_a[1:3]), list(reduced_b[1:3]), f"{path}.__reduce__()", depth)
        return f"{path}: {_short(a)} != {_short(b)}"
    params_a, params_b = a.get_params(deep=False), b.get_params(deep=False)
    problem = _diff_mapping(params_a, params_b, f"{path}.get_params()", depth + 1)
    if problem:
        return problem
    fitted_a = hasattr(a, "n_features_in_")
    if fitted_a != hasattr(b, "n_features_in_"):
        return f"{path}: fitted {fitted_a} != {not fitted_a}"
    if not fitted_a:
        return None
    if a.n_features_in_ != b.n_features_in_:
        return f"{path}.n_features_in_: {a.n_features_in_} != {b.n_features_in_}"
    probe = _probe_rows(int(a.n_features_in_))
    for method in ("predict", "predict_proba", "decision_function", "transform", "score_samples"):
        if not hasattr(a, method):
            continue
        try:
            out_a = getattr(a, method)(probe)
        except Exception:  # noqa: S112 - a method that does not apply to this estimator
            continue
        try:
            out_b = getattr(b, method)(probe)
        except Exception as err:
            return f"{path}.{method}(probe): original works, loaded raises {type(err).__name__}: {err}"
        problem = _diff(out_a, out_b, f"{path}.{method}(probe)", depth + 1)
        if problem:
            return problem
    return None


# -- stable-baselines3 ------------------------------------------------------------------


def _diff_sb3(a: Any, b: Any, path: str, depth: int) -> str | None:
    if not hasattr(a, "get_parameters"):
        state_a, state_b = _object_state(a), _object_state(b)
        if state_a is not None and state_b is not None:
            return _diff_mapping(state_a, state_b, path, depth, attr=True)
        return None if a == b else f"{path}: {_short(a)} != {_short(b)}"
    problem = _diff(a.get_parameters(), b.get_parameters(), f"{path}.get_parameters()", depth + 1)
    if problem:
        return problem
    space = a.observation_space
    space.seed(0)
    observations = [space.sample() for _ in range(8)]
    for i, obs in enumerate(observations):
        act_a, _ = a.predict(obs, deterministic=True)
        act_b, _ = b.predict(obs, deterministic=True)
        problem = _diff(act_a, act_b, f"{path}.predict(probe[{i}], deterministic=True)", depth + 1)
        if problem:
            return problem
    return None
