"""AutosaveCadence: the pure policy behind the state store's autosave thread."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from persistkit.policy.autosave import AutosaveCadence

everies = st.floats(min_value=0.001, max_value=1e6)
draws = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


def test_defaults_save_every_five_minutes_and_retry_at_the_next_tick():
    cadence = AutosaveCadence()
    assert cadence.delay() == 300.0
    assert cadence.delay(failures=3) == 300.0


def test_retries_back_off_from_retry_after_up_to_every():
    cadence = AutosaveCadence(every=60.0, retry_after=5.0)
    assert [cadence.delay(failures=n) for n in range(6)] == [60.0, 5.0, 10.0, 20.0, 40.0, 60.0]
    assert cadence.delay(failures=10_000) == 60.0  # no overflow however long the disk stays full


def test_jitter_spreads_symmetrically_around_every():
    cadence = AutosaveCadence(every=100.0, jitter=0.2)
    assert cadence.delay(rand=0.0) == pytest.approx(80.0)
    assert cadence.delay(rand=0.5) == pytest.approx(100.0)
    assert cadence.delay(rand=0.999999) == pytest.approx(120.0, abs=1e-3)


@given(
    every=everies,
    jitter=st.floats(0, 0.99),
    retry=st.none() | everies,
    failures=st.integers(0, 200),
    rand=draws,
)
def test_delay_is_always_positive_finite_and_bounded(every, jitter, retry, failures, rand):
    cadence = AutosaveCadence(every=every, retry_after=retry, jitter=jitter)
    delay = cadence.delay(failures=failures, rand=rand)
    assert math.isfinite(delay) and 0 < delay <= every * (1 + jitter)
    if failures and retry is not None:
        assert delay <= every and delay <= cadence.delay(failures=failures + 1, rand=rand)


@given(every=everies, jitter=st.floats(0, 0.99), rand=st.floats(0.0001, 0.9999))
def test_jitter_is_symmetric_so_the_mean_interval_is_every(every, jitter, rand):
    cadence = AutosaveCadence(every=every, jitter=jitter)
    assert cadence.delay(rand=rand) + cadence.delay(rand=1 - rand) == pytest.approx(2 * every)


def test_of_reads_the_store_argument():
    assert AutosaveCadence.of(0) is None and AutosaveCadence.of(None) is None
    assert AutosaveCadence.of(2) == AutosaveCadence(every=2.0)
    custom = AutosaveCadence(every=10.0, retry_after=1.0)
    assert AutosaveCadence.of(custom) is custom
    with pytest.raises(TypeError, match="seconds or an AutosaveCadence"):
        AutosaveCadence.of("300")
    with pytest.raises(TypeError):
        AutosaveCadence.of(True)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"every": 0}, "every must be a positive"),
        ({"every": -1.0}, "every must be a positive"),
        ({"every": math.inf}, "every must be a positive"),
        ({"every": math.nan}, "every must be a positive"),
        ({"retry_after": 0}, "retry_after must be a positive"),
        ({"jitter": 1.0}, "jitter must be in"),
        ({"jitter": -0.1}, "jitter must be in"),
    ],
)
def test_invalid_cadences_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        AutosaveCadence(**kwargs)


def test_invalid_arguments_to_delay_are_refused():
    cadence = AutosaveCadence()
    with pytest.raises(ValueError, match="failures"):
        cadence.delay(failures=-1)
    with pytest.raises(ValueError, match="rand"):
        cadence.delay(rand=1.0)
