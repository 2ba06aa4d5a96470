"""Type-aware deep equality that names the path of the first difference.

``first_difference(expected, actual)`` returns ``None`` when the two are
equal, else a message such as ``value['layers'][2]: dtype float32 != float64``.

* Types: exact (tuple is not list, dict is not OrderedDict, bool is not int).
* numpy: exact type, dtype, shape and values; NaNs must sit at the same positions.
* floats: NaN equals NaN, and ``-0.0`` differs from ``0.0`` (exact round trips).
* mappings: the same keys with equal values, in any order: ``{"a": 1, "b": 2}``
  equals ``{"b": 2, "a": 1}``. Order counts only for ``OrderedDict``, whose own
  ``==`` says it does. ``defaultdict`` compares its ``default_factory``; a dict
  or list subclass also compares its attributes.
* containers: deque maxlen; sets by members.
* buffers by content: ``bytearray``, ``memoryview`` (format and shape too),
  ``array.array`` (typecode too), ``io.BytesIO``/``io.StringIO`` (value and position).
* dataclasses and plain objects: same type, then field by field: ``__dict__``
  and every ``__slots__`` entry of every class in the MRO (base-class slots included).
* pandas: DataFrame/Series/Index by shape, index, columns, names, dtype per
  column and values (NaN equals NaN in the same position; ``-0.0`` is not ``0.0``);
  a ``RangeIndex`` equals an int64 ``Index`` with the same values, as in
  ``pandas.testing``; a DatetimeIndex ``freq`` is not compared. ``attrs`` are.
* pyarrow: Table/RecordBatch by schema (names, types, nullability, metadata) and
  column values; arrays and chunked arrays by type, nulls and values.
* polars: DataFrame/Series by schema (names, dtypes) and values.
* scikit-learn: ``get_params()``, then ``predict``/``predict_proba``/``decision_function``/
  ``transform`` on seeded probe data.
* torch: tensors exactly (dtype, shape, NaN positions); modules by ``state_dict()``.
* stable-baselines3: parameters, then deterministic actions on seeded probe observations.

There is no depth limit: nesting is walked with an explicit stack, and a pair
of objects already under comparison is not entered again (cycles end there,
and are equal when every other path is). Heavy libraries are imported only
when an object of theirs is compared.
"""

from __future__ import annotations

import array
import collections
import dataclasses
import io
import math
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["assert_same", "first_difference", "live_state"]

_PROBE_ROWS = 16


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
    return _Comparison().diff(expected, actual, path)


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
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__qualname__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _family(obj: Any) -> str:
    return type(obj).__module__.split(".", 1)[0]


def _typename(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def _slot_names(cls: type) -> list[str]:
    """Every ``__slots__`` attribute of ``cls`` and its bases, names mangled as Python stores them."""
    names: list[str] = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for name in [slots] if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__"):
                continue
            if name.startswith("__") and not name.endswith("__"):
                name = f"_{klass.__name__.lstrip('_')}{name}"
            if name not in names:
                names.append(name)
    return names


def _object_state(obj: Any) -> dict[str, Any] | None:
    """``__dict__`` plus every slot of every class in the MRO; None for objects with neither."""
    names = _slot_names(type(obj))
    attrs = getattr(obj, "__dict__", None)
    if not names and not isinstance(attrs, dict):
        return None
    state = dict(attrs) if isinstance(attrs, dict) else {}
    _unset = object()
    for name in names:
        value = getattr(obj, name, _unset)
        state[name] = "<unset slot>" if value is _unset else value
    return state


def _diff_float(a: float, b: float, path: str) -> str | None:
    if math.isnan(a) and math.isnan(b):
        return None
    if a == b and math.copysign(1.0, a) == math.copysign(1.0, b):
        return None
    return f"{path}: {a!r} != {b!r}"


def _first_byte_difference(x: bytes, y: bytes, path: str, what: str) -> str | None:
    if x == y:
        return None
    at = next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y)))
    if at == min(len(x), len(y)):
        return f"{path}: {what} length {len(x)} != {len(y)}"
    return f"{path}: {what} differs at byte {at} ({x[at : at + 8]!r}... != {y[at : at + 8]!r}...)"


def _diff_buffer(a: Any, b: Any, path: str) -> str | None:
    if isinstance(a, memoryview):
        if (a.format, a.shape) != (b.format, b.shape):
            return f"{path}: memoryview format/shape {a.format}{a.shape} != {b.format}{b.shape}"
        return _first_byte_difference(a.tobytes(), b.tobytes(), path, "content")
    if isinstance(a, array.array):
        if a.typecode != b.typecode:
            return f"{path}: array typecode {a.typecode!r} != {b.typecode!r}"
        if a.tobytes() == b.tobytes():  # bitwise, so NaN equals NaN and -0.0 is not 0.0
            return None
        if len(a) != len(b):
            return f"{path}: length {len(a)} != {len(b)}"
        at = next(i for i in range(len(a)) if a[i : i + 1].tobytes() != b[i : i + 1].tobytes())
        return f"{path}[{at}]: {a[at]!r} != {b[at]!r}"
    if isinstance(a, (io.BytesIO, io.StringIO)):
        va, vb = a.getvalue(), b.getvalue()
        if va != vb:
            if isinstance(va, str):
                va, vb = va.encode("utf-8", "surrogatepass"), vb.encode("utf-8", "surrogatepass")
            return _first_byte_difference(va, vb, path, "content")
        if a.tell() != b.tell():
            return f"{path}: position {a.tell()} != {b.tell()}"
        return None
    return _first_byte_difference(bytes(a), bytes(b), path, "content")


_BUFFERS = (bytearray, memoryview, array.array, io.BytesIO, io.StringIO)

_Work = tuple[Any, Any, str] | Callable[[], "str | None"]


class _Comparison:
    """One comparison: a work stack (no recursion depth limit) and the pairs already entered."""

    def __init__(self) -> None:
        self.entered: set[tuple[int, int]] = set()
        self.alive: list[tuple[Any, Any]] = []  # entered pairs stay referenced: their ids cannot be reused

    def diff(self, a: Any, b: Any, path: str) -> str | None:
        stack: list[_Work] = [(a, b, path)]
        while stack:
            item = stack.pop()
            problem = item() if callable(item) else self._step(*item, stack)
            if problem is not None:
                return problem
        return None

    def _enter(self, a: Any, b: Any) -> bool:
        """False when this pair is already being compared (a cycle): it is not walked twice."""
        key = (id(a), id(b))
        if key in self.entered:
            return False
        self.entered.add(key)
        self.alive.append((a, b))
        return True

    def _step(self, a: Any, b: Any, path: str, stack: list[_Work]) -> str | None:
        if a is b:
            return None
        ta, tb = type(a), type(b)
        if ta in _AS_LIST or tb in _AS_LIST:
            # tree.Records is a storage hint ("store these rows by column") that decodes as a list
            ta = list if ta in _AS_LIST else ta
            tb = list if tb in _AS_LIST else tb
            if ta is list and tb is list:
                return self._sequence(a, b, path, stack)
        if ta is not tb:
            return f"{path}: type {_typename(ta)} != {_typename(tb)}"
        fam = _family(a)
        if fam == "numpy":
            return self._numpy(a, b, path)
        if fam == "torch":
            return self._torch(a, b, path, stack)
        if fam == "pandas":
            return self._pandas(a, b, path)
        if fam == "pyarrow":
            return self._arrow(a, b, path)
        if fam == "polars":
            return self._polars(a, b, path)
        if fam == "sklearn" or (fam != "builtins" and _is_sklearn(a)):
            return self._sklearn(a, b, path, stack)
        if fam == "stable_baselines3":
            return self._sb3(a, b, path, stack)
        if isinstance(a, float):
            return _diff_float(a, b, path)
        if isinstance(a, complex):
            if _diff_float(a.real, b.real, path) or _diff_float(a.imag, b.imag, path):
                return f"{path}: {_short(a)} != {_short(b)}"
            return None
        if isinstance(a, (str, bytes, int, bool, type(None))):
            return None if a == b else f"{path}: {_short(a)} != {_short(b)}"
        if isinstance(a, _BUFFERS):
            return _diff_buffer(a, b, path) or self._extra_attributes(
                a, b, path, stack, builtin=ta in _BUFFERS
            )
        if not self._enter(a, b):
            return None
        if isinstance(a, Mapping):
            return self._mapping(a, b, path, stack)
        if isinstance(a, collections.deque):
            if a.maxlen != b.maxlen:
                return f"{path}: deque maxlen {a.maxlen} != {b.maxlen}"
            return self._sequence(list(a), list(b), path, stack)
        if isinstance(a, (list, tuple)):
            if hasattr(a, "_fields"):  # namedtuple: name the fields
                stack.extend((getattr(a, n), getattr(b, n), f"{path}.{n}") for n in reversed(a._fields))
                return None
            stack.append(lambda: self._extra_attributes(a, b, path, stack, builtin=ta in (list, tuple)))
            return self._sequence(a, b, path, stack)
        if isinstance(a, (set, frozenset)):
            if a == b:
                return self._extra_attributes(a, b, path, stack, builtin=ta in (set, frozenset))
            missing, extra = a - b, b - a
            return (
                f"{path}: set differs (missing {_short(sorted(map(repr, missing)))}, "
                f"extra {_short(sorted(map(repr, extra)))})"
            )
        if dataclasses.is_dataclass(a) and not isinstance(a, type):
            stack.extend(
                (getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
                for f in reversed(dataclasses.fields(a))
            )
            return None
        try:
            equal = a == b
            if isinstance(equal, bool) and equal:
                return None
        except Exception:  # noqa: S110 - fall through to field-by-field comparison
            pass
        state_a, state_b = _object_state(a), _object_state(b)
        if state_a is not None and state_b is not None:
            if type(a).__eq__ is not object.__eq__:  # type: ignore[comparison-overlap]
                stack.append(
                    lambda: (
                        f"{path}: {ta.__qualname__}.__eq__ says the objects differ, though every attribute is equal"
                    )
                )
            return self._mapping(state_a, state_b, path, stack, attr=True)
        return f"{path}: {_short(a)} != {_short(b)}"

    def _extra_attributes(
        self, a: Any, b: Any, path: str, stack: list[_Work], *, builtin: bool
    ) -> str | None:
        """A subclass of a builtin container may carry attributes of its own: compare them too."""
        if builtin:
            return None
        state_a, state_b = _object_state(a) or {}, _object_state(b) or {}
        if state_a or state_b:
            return self._mapping(state_a, state_b, path, stack, attr=True)
        return None

    def _mapping(
        self, a: Mapping[Any, Any], b: Mapping[Any, Any], path: str, stack: list[_Work], attr: bool = False
    ) -> str | None:
        def at(k: Any) -> str:
            return f"{path}.{k}" if attr else f"{path}[{k!r}]"

        for k in a:
            if k not in b:
                return f"{at(k)}: missing (expected {_short(a[k])})"
        for k in b:
            if k not in a:
                return f"{at(k)}: unexpected (got {_short(b[k])})"
        if not attr:
            if isinstance(a, collections.OrderedDict) and list(a) != list(b):
                keys_a, keys_b = list(a), list(b)
                stack.append(lambda: f"{path}: OrderedDict key order {_short(keys_a)} != {_short(keys_b)}")
            factory_a, factory_b = getattr(a, "default_factory", None), getattr(b, "default_factory", None)
            if factory_a != factory_b:
                return f"{path}: default_factory {factory_a!r} != {factory_b!r}"
            if type(a) is not dict:
                stack.append(lambda: self._extra_attributes(a, b, path, stack, builtin=False))
        stack.extend((a[k], b[k], at(k)) for k in reversed(list(a)))
        return None

    def _sequence(self, a: Any, b: Any, path: str, stack: list[_Work]) -> str | None:
        if len(a) != len(b):
            n_a, n_b = len(a), len(b)
            stack.append(lambda: f"{path}: length {n_a} != {n_b}")
        n = min(len(a), len(b))
        stack.extend((a[i], b[i], f"{path}[{i}]") for i in reversed(range(n)))
        return None

    # -- numpy -------------------------------------------------------------------------

    def _numpy(self, a: Any, b: Any, path: str) -> str | None:
        import numpy as np

        if isinstance(a, np.ndarray):
            if a.dtype != b.dtype:
                return f"{path}: dtype {a.dtype} != {b.dtype}"
            if a.shape != b.shape:
                return f"{path}: shape {a.shape} != {b.shape}"
            if a.dtype.hasobject:
                for idx in np.ndindex(a.shape):
                    problem = self.diff(a[idx], b[idx], f"{path}[{', '.join(map(str, idx))}]")
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
            return self._numpy(np.asarray(a), np.asarray(b), path)
        if isinstance(a, np.dtype):
            return None if a == b else f"{path}: {a} != {b}"
        try:
            return None if bool(a == b) else f"{path}: {_short(a)} != {_short(b)}"
        except Exception:
            return f"{path}: cannot compare {type(a).__name__} values"

    # -- torch -------------------------------------------------------------------------

    def _torch(self, a: Any, b: Any, path: str, stack: list[_Work]) -> str | None:
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
            return self.diff(dict(a.state_dict()), dict(b.state_dict()), f"{path}.state_dict()")
        if isinstance(a, (torch.dtype, torch.device, torch.Size)):
            return None if a == b else f"{path}: {a} != {b}"
        state_a, state_b = _object_state(a), _object_state(b)
        if state_a is not None and state_b is not None:
            return self._mapping(state_a, state_b, path, stack, attr=True)
        return None if a == b else f"{path}: {_short(a)} != {_short(b)}"

    # -- pandas ------------------------------------------------------------------------

    def _pandas(self, a: Any, b: Any, path: str) -> str | None:
        import pandas as pd

        if isinstance(a, pd.DataFrame):
            if a.shape != b.shape:
                return f"{path}: shape {a.shape} != {b.shape}"
            problem = self._index(a.columns, b.columns, f"{path}.columns") or self._index(
                a.index, b.index, f"{path}.index"
            )
            if problem:
                return problem
            for i, column in enumerate(a.columns):  # by position: column labels may repeat
                problem = self._values(a.iloc[:, i], b.iloc[:, i], f"{path}[{column!r}]")
                if problem:
                    return problem
            return self.diff(dict(a.attrs), dict(b.attrs), f"{path}.attrs")
        if isinstance(a, pd.Series):
            if len(a) != len(b):
                return f"{path}: length {len(a)} != {len(b)}"
            return (
                self.diff(a.name, b.name, f"{path}.name")
                or self._index(a.index, b.index, f"{path}.index")
                or self._values(a, b, path)
                or self.diff(dict(a.attrs), dict(b.attrs), f"{path}.attrs")
            )
        if isinstance(a, pd.Index):
            return self._index(a, b, path)
        if isinstance(a, pd.api.extensions.ExtensionArray):
            return self._values(pd.Series(a, copy=False), pd.Series(b, copy=False), path)
        try:
            equal = a == b
            if isinstance(equal, bool):
                return None if equal else f"{path}: {_short(a)} != {_short(b)}"
        except Exception:  # noqa: S110 - compare what pickle would store instead
            pass
        return self.diff(a.__reduce__()[1:3], b.__reduce__()[1:3], f"{path}.__reduce__()")

    def _index(self, a: Any, b: Any, path: str) -> str | None:
        import pandas as pd

        ranges = (pd.RangeIndex, pd.Index)
        if type(a) is not type(b) and not (type(a) in ranges and type(b) in ranges):
            return f"{path}: type {_typename(type(a))} != {_typename(type(b))}"
        if len(a) != len(b):
            return f"{path}: length {len(a)} != {len(b)}"
        if isinstance(a, pd.MultiIndex):
            problem = self.diff(list(a.dtypes), list(b.dtypes), f"{path}.dtypes")
        else:
            problem = None if a.dtype == b.dtype else f"{path}: dtype {a.dtype} != {b.dtype}"
        return (
            problem
            or self.diff(list(a.names), list(b.names), f"{path}.names")
            or self._values(a.to_series(index=range(len(a))), b.to_series(index=range(len(b))), path)
        )

    def _values(self, a: Any, b: Any, path: str) -> str | None:
        """The values of two Series (same length): dtype first, then NaN positions and values."""
        import numpy as np

        if a.dtype != b.dtype:
            return f"{path}: dtype {a.dtype} != {b.dtype}"
        if isinstance(a.dtype, np.dtype):
            return self._numpy(a.to_numpy(), b.to_numpy(), f"{path}.iloc")
        return self._numpy(a.to_numpy(dtype=object), b.to_numpy(dtype=object), f"{path}.iloc")

    # -- pyarrow -----------------------------------------------------------------------

    def _arrow(self, a: Any, b: Any, path: str) -> str | None:
        import pyarrow as pa

        if isinstance(a, (pa.Table, pa.RecordBatch)):
            problem = self._schema(a.schema, b.schema, f"{path}.schema")
            if problem:
                return problem
            if a.num_rows != b.num_rows:
                return f"{path}: num_rows {a.num_rows} != {b.num_rows}"
            for i, name in enumerate(a.schema.names):
                problem = self._arrow_values(a.column(i), b.column(i), f"{path}[{name!r}]")
                if problem:
                    return problem
            return None
        if isinstance(a, (pa.Array, pa.ChunkedArray)):
            if a.type != b.type:
                return f"{path}: type {a.type} != {b.type}"
            if len(a) != len(b):
                return f"{path}: length {len(a)} != {len(b)}"
            return self._arrow_values(a, b, path)
        if isinstance(a, pa.Schema):
            return self._schema(a, b, path)
        if isinstance(a, pa.Scalar):
            if a.type != b.type:
                return f"{path}: type {a.type} != {b.type}"
            return self.diff(a.as_py(), b.as_py(), path)
        equals = getattr(a, "equals", None)
        if callable(equals):
            return None if equals(b) else f"{path}: {_short(a)} != {_short(b)}"
        return None if a == b else f"{path}: {_short(a)} != {_short(b)}"

    def _schema(self, a: Any, b: Any, path: str) -> str | None:
        if a.names != b.names:
            return self.diff(list(a.names), list(b.names), f"{path}.names")
        for fa, fb in zip(a, b, strict=True):
            if fa.type != fb.type:
                return f"{path}[{fa.name!r}]: type {fa.type} != {fb.type}"
            if fa.nullable != fb.nullable:
                return f"{path}[{fa.name!r}]: nullable {fa.nullable} != {fb.nullable}"
            if not fa.equals(fb, check_metadata=True):
                return self.diff(fa.metadata, fb.metadata, f"{path}[{fa.name!r}].metadata")
        return self.diff(a.metadata, b.metadata, f"{path}.metadata")

    def _arrow_values(self, a: Any, b: Any, path: str) -> str | None:
        import pyarrow as pa

        if isinstance(a, pa.ChunkedArray):
            a, b = a.combine_chunks(), b.combine_chunks()
        if a.type != b.type:
            return f"{path}: type {a.type} != {b.type}"
        nulls_a = a.is_null().to_numpy(zero_copy_only=False)
        problem = self._numpy(nulls_a, b.is_null().to_numpy(zero_copy_only=False), f"{path} null mask")
        if problem:
            return problem
        if pa.types.is_floating(a.type):  # NaN equals NaN, -0.0 is not 0.0: numpy's rules
            return self._numpy(
                a.fill_null(0).to_numpy(zero_copy_only=False),
                b.fill_null(0).to_numpy(zero_copy_only=False),
                path,
            )
        if a.equals(b):
            return None
        return self.diff(a.to_pylist(), b.to_pylist(), path)

    # -- polars ------------------------------------------------------------------------

    def _polars(self, a: Any, b: Any, path: str) -> str | None:
        import polars as pl

        if isinstance(a, pl.DataFrame):
            names_a, names_b = list(a.schema), list(b.schema)
            if names_a != names_b:
                return self.diff(names_a, names_b, f"{path}.columns")
            if a.height != b.height:
                return f"{path}: height {a.height} != {b.height}"
            for name in names_a:
                problem = self._polars(a.get_column(name), b.get_column(name), f"{path}[{name!r}]")
                if problem:
                    return problem
            return None
        if isinstance(a, pl.Series):
            if a.dtype != b.dtype:
                return f"{path}: dtype {a.dtype} != {b.dtype}"
            if a.name != b.name:
                return f"{path}.name: {a.name!r} != {b.name!r}"
            if len(a) != len(b):
                return f"{path}: length {len(a)} != {len(b)}"
            problem = self._numpy(a.is_null().to_numpy(), b.is_null().to_numpy(), f"{path} null mask")
            if problem:
                return problem
            if a.dtype.is_float():
                return self._numpy(a.fill_null(0).to_numpy(), b.fill_null(0).to_numpy(), path)
            if a.equals(b, check_dtypes=True, check_names=True, null_equal=True):
                return None
            return self.diff(a.to_list(), b.to_list(), path)
        try:
            equal = a == b
            if isinstance(equal, bool):
                return None if equal else f"{path}: {_short(a)} != {_short(b)}"
        except Exception:  # noqa: S110
            pass
        return f"{path}: cannot compare polars {type(a).__name__} values"

    # -- scikit-learn ------------------------------------------------------------------

    def _sklearn(self, a: Any, b: Any, path: str, stack: list[_Work]) -> str | None:
        if not hasattr(a, "get_params"):
            state_a, state_b = _object_state(a), _object_state(b)
            if state_a is not None and state_b is not None:
                return self._mapping(state_a, state_b, path, stack, attr=True)
            if a == b:
                return None
            # Cython types (sklearn.tree._tree.Tree) have neither __dict__ nor __eq__: compare what
            # pickle would store, (constructor arguments, state); __reduce__ only reads the object.
            try:
                reduced_a, reduced_b = a.__reduce__(), b.__reduce__()
            except Exception:
                reduced_a = reduced_b = None
            if isinstance(reduced_a, tuple) and isinstance(reduced_b, tuple) and len(reduced_a) >= 2:
                return self.diff(list(reduced_a[1:3]), list(reduced_b[1:3]), f"{path}.__reduce__()")
            return f"{path}: {_short(a)} != {_short(b)}"
        params_a, params_b = a.get_params(deep=False), b.get_params(deep=False)
        problem = self.diff(params_a, params_b, f"{path}.get_params()")
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
            problem = self.diff(out_a, out_b, f"{path}.{method}(probe)")
            if problem:
                return problem
        return None

    # -- stable-baselines3 -------------------------------------------------------------

    def _sb3(self, a: Any, b: Any, path: str, stack: list[_Work]) -> str | None:
        if not hasattr(a, "get_parameters"):
            state_a, state_b = _object_state(a), _object_state(b)
            if state_a is not None and state_b is not None:
                return self._mapping(state_a, state_b, path, stack, attr=True)
            return None if a == b else f"{path}: {_short(a)} != {_short(b)}"
        problem = self.diff(a.get_parameters(), b.get_parameters(), f"{path}.get_parameters()")
        if problem:
            return problem
        space = a.observation_space
        space.seed(0)
        observations = [space.sample() for _ in range(8)]
        for i, obs in enumerate(observations):
            act_a, _ = a.predict(obs, deterministic=True)
            act_b, _ = b.predict(obs, deterministic=True)
            problem = self.diff(act_a, act_b, f"{path}.predict(probe[{i}], deterministic=True)")
            if problem:
                return problem
        return None


def _is_sklearn(obj: Any) -> bool:
    if "sklearn" not in sys.modules:
        return False
    from sklearn.base import BaseEstimator

    return isinstance(obj, BaseEstimator)


def _probe_rows(n_features: int, seed: int = 0) -> Any:
    import numpy as np

    return np.random.default_rng(seed).normal(size=(_PROBE_ROWS, n_features))
