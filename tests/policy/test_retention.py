from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from persistkit.policy.retention import AnyOf, Item, KeepDaily, KeepLast, KeepWeekly, KeepWithin, decide

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def items_at(*hours_ago, pinned=()):
    return [
        Item(f"a{i}", NOW - dt.timedelta(hours=h), "restoring" if f"a{i}" in pinned else "")
        for i, h in enumerate(hours_ago)
    ]


def kept(decisions):
    return {d.item.id for d in decisions if d.keep}


def test_keep_last_keeps_exactly_n_newest():
    items = items_at(0, 1, 2, 3, 4, 5)
    assert kept(decide(KeepLast(3), items, NOW)) == {"a0", "a1", "a2"}


def test_keep_daily_takes_the_newest_of_each_recent_day():
    items = items_at(1, 2, 25, 26, 49, 73)  # today twice, yesterday twice, 2 and 3 days ago
    assert kept(decide(KeepDaily(2), items, NOW)) == {"a0", "a2"}


def test_keep_weekly_and_within_compose():
    items = items_at(0, 24 * 3, 24 * 8, 24 * 15, 24 * 40)
    assert kept(decide(KeepWeekly(2), items, NOW)) == {"a0", "a1"}  # NOW is a Monday: 3 days ago is last week
    both = decide(AnyOf(KeepWeekly(1), KeepWithin(dt.timedelta(days=10))), items, NOW)
    assert kept(both) == {"a0", "a1", "a2"}
    reasons = {d.item.id: d.describe() for d in both}
    assert "within" in reasons["a1"] and "no policy keeps it" in reasons["a4"]


def test_pinned_and_newest_are_always_kept_with_reasons():
    items = items_at(0, 1, 2, pinned=("a2",))
    decisions = {d.item.id: d for d in decide(KeepLast(0), items, NOW)}
    assert decisions["a0"].keep and "newest" in decisions["a0"].describe()
    assert decisions["a2"].keep and "pinned: restoring" in decisions["a2"].describe()
    assert not decisions["a1"].keep


def test_invalid_policy():
    with pytest.raises(ValueError, match="n >= 0"):
        KeepLast(-1)


item_lists = st.lists(
    st.builds(
        lambda n, minutes, pin: Item(f"i{n}", NOW - dt.timedelta(minutes=minutes), "pin" if pin else ""),
        st.integers(0, 10**6),
        st.integers(0, 60 * 24 * 60),
        st.booleans(),
    ),
    max_size=40,
    unique_by=lambda it: it.id,
)
policies = st.one_of(
    st.builds(KeepLast, st.integers(0, 10)),
    st.builds(KeepDaily, st.integers(0, 10)),
    st.builds(KeepWeekly, st.integers(0, 5)),
    st.builds(KeepWithin, st.timedeltas(min_value=dt.timedelta(0), max_value=dt.timedelta(days=30))),
)


@settings(max_examples=200, deadline=None)
@given(items=item_lists, policy=policies, other=policies)
def test_properties(items, policy, other):
    decisions = decide(policy, items, NOW)
    assert len(decisions) == len(items)  # one decision per item
    ids = kept(decisions)
    if items:
        newest = max(items, key=lambda it: (it.time, it.id))
        assert newest.id in ids  # the newest copy is never removed
    assert {it.id for it in items if it.pinned} <= ids  # pinned copies are never removed
    unpinned_kept = ids - {it.id for it in items if it.pinned}
    if isinstance(policy, KeepLast):
        assert len(unpinned_kept) <= max(policy.n, 1)  # KeepLast(n) keeps at most n (plus the newest)
    union = kept(decide(AnyOf(policy, other), items, NOW))
    assert union == ids | kept(decide(other, items, NOW))  # AnyOf is the union
    assert all(d.reasons for d in decisions if d.keep)  # every kept copy says why
