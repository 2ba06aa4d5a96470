"""Strategies generate what persistkit round-trips exactly, and validate their arguments."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import InvalidArgument

from persistkit.testing import strategies as pks
from persistkit.testing.roundtrip import Roundtrip

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(pks.state_values())
def test_state_values_round_trip_exactly(tmp_path, value):
    Roundtrip(tmp_path)(value, via="envelope")


@FAST
@given(pks.trade_records(), pks.metadata(), pks.arrays())
def test_records_metadata_and_arrays_round_trip(tmp_path, trade, meta, array):
    assert trade["closed"] >= trade["opened"] and trade["closed"].tzinfo is not None
    assert all(k.isidentifier() for k in meta)
    Roundtrip(tmp_path)([trade, meta, array], via="envelope")


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pks.sklearn_estimators())
def test_sklearn_estimators_are_small_and_fitted(tmp_path, model):
    assert hasattr(model, "n_features_in_") and 1 <= model.n_features_in_ <= 4
    Roundtrip(tmp_path)(model, via="envelope")


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pks.bundle_members())
def test_bundle_members_save_as_bundles(tmp_path, members):
    assert 1 <= len(members) <= 3
    for value in members.values():
        Roundtrip(tmp_path)(value, via="bundle")


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        (lambda: pks.state_values(max_leaves=0), "max_leaves"),
        (lambda: pks.arrays(max_dims=-1), "max_dims"),
        (lambda: pks.trade_records(min_id=5, max_id=1), "min_id=5 > max_id=1"),
        (lambda: pks.metadata(min_size=3, max_size=2), "min_size=3 > max_size=2"),
        (lambda: pks.bundle_members(max_size=-1), "max_size"),
        (lambda: pks.sklearn_estimators(kinds=["SVC"]), "kinds must be a non-empty subset"),
    ],
)
def test_invalid_arguments_raise_when_drawn(strategy, message):
    lazy = strategy()  # building the strategy never raises ...
    with pytest.raises(InvalidArgument, match=message):
        lazy.validate()  # ... using it (validation happens on first draw) does
