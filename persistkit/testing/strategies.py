"""Hypothesis strategies for persistence tests, in Hypothesis house style.

Names are plural; every argument is keyword-only with a default; sizes are
``min_size``/``max_size``; invalid arguments raise ``InvalidArgument`` when
the strategy is first drawn from.

Example (``roundtrip`` is a function-scoped fixture: one instance serves every
example, which is fine for it, so that health check is suppressed; each example
writes and fsyncs a file, so there is no deadline)::

    from hypothesis import HealthCheck, given, settings
    from persistkit.testing import strategies as pks

    @settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(pks.state_values())
    def test_state_roundtrips(roundtrip, value):
        roundtrip(value, via="envelope")
"""

from __future__ import annotations

import collections
import datetime as dt
import keyword
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.extra import numpy as hnp

__all__ = [
    "arrays",
    "bundle_members",
    "metadata",
    "sklearn_estimators",
    "state_values",
    "trade_records",
]

_SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "EURUSD", "AAPL", "ES")
_STRATEGIES = ("momentum", "mean_reversion", "breakout")
SKLEARN_KINDS = (
    "LinearRegression",
    "Ridge",
    "LogisticRegression",
    "DecisionTreeClassifier",
    "RandomForestClassifier",
    "StandardScaler",
    "MinMaxScaler",
)


def _check_size(name: str, value: int, *, low: int = 0) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise InvalidArgument(
            f"Expected an int >= {low} but got {name}={value!r} (type={type(value).__name__})"
        )


def _check_range(min_name: str, min_value: int, max_name: str, max_value: int) -> None:
    if min_value > max_value:
        raise InvalidArgument(f"Cannot have {min_name}={min_value!r} > {max_name}={max_value!r}")


_timezones = st.one_of(
    st.none(),
    st.just(dt.UTC),
    st.builds(
        dt.timezone, st.timedeltas(min_value=dt.timedelta(hours=-23), max_value=dt.timedelta(hours=23))
    ),
)


def _hashable_leaves() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.text(max_size=12),
        st.binary(max_size=12),
        st.dates(),
        st.decimals(allow_nan=False, places=4),
    )


def state_values(
    *,
    max_leaves: int = 20,
    allow_nan: bool = True,
    allow_arrays: bool = True,
) -> st.SearchStrategy[Any]:
    """Values the persistkit tree codec round-trips exactly.

    Scalars (None, bool, big ints, floats with NaN/inf/-0.0, complex, str, bytes, Decimal,
    UUID, datetime with and without timezone, date, time, timedelta), numpy arrays and
    scalars, nested in dicts (any hashable keys), lists, tuples, sets, frozensets,
    deques (with maxlen) and OrderedDicts.
    """

    def build() -> st.SearchStrategy[Any]:
        _check_size("max_leaves", max_leaves, low=1)
        leaves = [
            _hashable_leaves(),
            st.floats(allow_nan=allow_nan),
            st.complex_numbers(allow_nan=allow_nan),
            st.uuids(),
            st.datetimes(timezones=_timezones),
            st.times(),
            st.timedeltas(),
        ]
        if allow_arrays:
            leaves.append(arrays(max_dims=2, max_side=4, allow_nan=allow_nan))
        keys = st.one_of(
            st.text(max_size=8), st.integers(-1000, 1000), st.tuples(st.integers(0, 9), st.text(max_size=3))
        )

        def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
            return st.one_of(
                st.lists(children, max_size=4),
                st.tuples(children, children),
                st.dictionaries(keys, children, max_size=4),
                st.builds(
                    collections.OrderedDict, st.lists(st.tuples(st.text(max_size=4), children), max_size=3)
                ),
                st.builds(
                    lambda items, extra: collections.deque(
                        items, maxlen=len(items) + extra if extra >= 0 else None
                    ),
                    st.lists(children, max_size=3),
                    st.integers(-1, 2),
                ),
                st.sets(_hashable_leaves(), max_size=4),
                st.frozensets(_hashable_leaves(), max_size=4),
            )

        return st.recursive(st.one_of(*leaves), extend, max_leaves=max_leaves)

    return st.deferred(build)


def arrays(
    *,
    dtypes: st.SearchStrategy[np.dtype[Any]] | None = None,
    max_dims: int = 3,
    max_side: int = 5,
    allow_nan: bool = True,
) -> st.SearchStrategy[np.ndarray[Any, Any]]:
    """numpy arrays of any non-object dtype (bool, ints, floats incl. NaN, complex, datetime64,
    timedelta64, fixed-width strings), up to ``max_dims`` dimensions of ``max_side`` each,
    in C or Fortran order."""

    def build() -> st.SearchStrategy[np.ndarray[Any, Any]]:
        _check_size("max_dims", max_dims)
        _check_size("max_side", max_side)
        chosen = dtypes or st.one_of(
            hnp.boolean_dtypes(),
            hnp.integer_dtypes(),
            hnp.unsigned_integer_dtypes(),
            hnp.floating_dtypes(),
            hnp.complex_number_dtypes(),
            hnp.datetime64_dtypes(),
            hnp.timedelta64_dtypes(),
            hnp.byte_string_dtypes(max_len=4),
            hnp.unicode_string_dtypes(max_len=4),
        )
        shapes = hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=max_side)

        def elements(dtype: np.dtype[Any]) -> st.SearchStrategy[Any] | None:
            if dtype.kind in "fc" and not allow_nan:
                return hnp.from_dtype(dtype, allow_nan=False)
            return None

        base = chosen.flatmap(lambda d: hnp.arrays(d, shapes, elements=elements(d)))
        return st.tuples(base, st.booleans()).map(lambda t: np.asfortranarray(t[0]) if t[1] else t[0])

    return st.deferred(build)


def trade_records(
    *,
    min_id: int = 0,
    max_id: int = 10**9,
    symbols: Sequence[str] = _SYMBOLS,
) -> st.SearchStrategy[dict[str, Any]]:
    """Closed trades as a trading bot journals them: id, symbol, side, Decimal quantity, prices,
    tz-aware open/close times (close >= open), duration, leverage, pnl, strategy."""

    def build() -> st.SearchStrategy[dict[str, Any]]:
        _check_size("min_id", min_id)
        _check_size("max_id", max_id)
        _check_range("min_id", min_id, "max_id", max_id)
        if not symbols:
            raise InvalidArgument("symbols must not be empty")
        prices = st.floats(min_value=1e-4, max_value=1e6, allow_nan=False, allow_infinity=False)
        opened = st.datetimes(
            min_value=dt.datetime(2015, 1, 1),
            max_value=dt.datetime(2035, 1, 1),
            timezones=st.just(dt.UTC),
        )
        held = st.timedeltas(min_value=dt.timedelta(0), max_value=dt.timedelta(days=30))

        @st.composite
        def trade(draw: st.DrawFn) -> dict[str, Any]:
            start, duration = draw(opened), draw(held)
            return {
                "id": draw(st.integers(min_id, max_id)),
                "symbol": draw(st.sampled_from(list(symbols))),
                "side": draw(st.sampled_from(["long", "short"])),
                "qty": draw(
                    st.decimals(min_value=0, max_value=10**6, places=8, allow_nan=False, allow_infinity=False)
                ),
                "entry": draw(prices),
                "exit": draw(prices),
                "opened": start,
                "closed": start + duration,
                "duration": duration.total_seconds(),
                "leverage": draw(st.integers(1, 20)),
                "pnl": draw(st.floats(-1e6, 1e6, allow_nan=False)),
                "strategy": draw(st.sampled_from(_STRATEGIES)),
            }

        return trade()

    return st.deferred(build)


def metadata(*, min_size: int = 0, max_size: int = 8) -> st.SearchStrategy[dict[str, Any]]:
    """Bundle/run metadata: identifier-like keys to None, bool, int, finite float or short text."""

    def build() -> st.SearchStrategy[dict[str, Any]]:
        _check_size("min_size", min_size)
        _check_size("max_size", max_size)
        _check_range("min_size", min_size, "max_size", max_size)
        values = st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-(2**63), 2**63 - 1),
            st.floats(allow_nan=False, allow_infinity=False),
            st.text(max_size=40),
        )
        return st.dictionaries(_names(), values, min_size=min_size, max_size=max_size)

    return st.deferred(build)


def _names() -> st.SearchStrategy[str]:
    return st.from_regex(r"\A[a-z][a-z0-9_]{0,15}\Z").filter(lambda s: not keyword.iskeyword(s))


def bundle_members(
    *,
    min_size: int = 1,
    max_size: int = 3,
    allow_models: bool = True,
) -> st.SearchStrategy[dict[str, Any]]:
    """``{name: member}`` for ``save_bundle``: numpy arrays and (with ``allow_models``) small
    fitted scikit-learn estimators, under identifier-like names."""

    def build() -> st.SearchStrategy[dict[str, Any]]:
        _check_size("min_size", min_size)
        _check_size("max_size", max_size)
        _check_range("min_size", min_size, "max_size", max_size)
        member: st.SearchStrategy[Any] = arrays(max_dims=2, max_side=6)
        if allow_models:
            member = st.one_of(member, sklearn_estimators())
        return st.dictionaries(_names(), member, min_size=min_size, max_size=max_size)

    return st.deferred(build)


def sklearn_estimators(*, kinds: Sequence[str] = SKLEARN_KINDS, max_rows: int = 40) -> st.SearchStrategy[Any]:
    """Small fitted scikit-learn estimators (regressors, classifiers, trees, forests, scalers),
    fitted on seeded random data of 1-4 features."""

    def build() -> st.SearchStrategy[Any]:
        unknown = [k for k in kinds if k not in SKLEARN_KINDS]
        if unknown or not kinds:
            raise InvalidArgument(f"kinds must be a non-empty subset of {SKLEARN_KINDS}, not {list(kinds)!r}")
        _check_size("max_rows", max_rows, low=8)
        return st.builds(
            _fit,
            st.sampled_from(list(kinds)),
            st.integers(0, 2**32 - 1),
            st.integers(8, max_rows),
            st.integers(1, 4),
        )

    return st.deferred(build)


def _fit(kind: str, seed: int, rows: int, features: int) -> Any:
    # Importing or fitting some estimators touches the global ``random`` state, which Hypothesis
    # forbids inside strategies (it would make draws irreproducible); keep it as it was.
    state = random.getstate()
    try:
        return _fit_seeded(kind, seed, rows, features)
    finally:
        random.setstate(state)


def _fit_seeded(kind: str, seed: int, rows: int, features: int) -> Any:
    from sklearn import ensemble, linear_model, preprocessing, tree

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features))
    y_reg = x @ rng.normal(size=features) + rng.normal(scale=0.1, size=rows)
    y_cls = (y_reg > np.median(y_reg)).astype(int)
    y_cls[:2] = [0, 1]  # both classes, always
    makers: dict[str, Any] = {
        "LinearRegression": lambda: linear_model.LinearRegression().fit(x, y_reg),
        "Ridge": lambda: linear_model.Ridge(alpha=float(rng.uniform(0.1, 2))).fit(x, y_reg),
        "LogisticRegression": lambda: linear_model.LogisticRegression(max_iter=200).fit(x, y_cls),
        "DecisionTreeClassifier": lambda: tree.DecisionTreeClassifier(max_depth=3, random_state=seed).fit(
            x, y_cls
        ),
        "RandomForestClassifier": lambda: ensemble.RandomForestClassifier(
            n_estimators=3, max_depth=3, random_state=seed % 2**31
        ).fit(x, y_cls),
        "StandardScaler": lambda: preprocessing.StandardScaler().fit(x),
        "MinMaxScaler": lambda: preprocessing.MinMaxScaler().fit(x),
    }
    return makers[kind]()
