"""first_difference names the path of the first difference, exactly and type-aware."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pytest

from persistkit.format import tree
from persistkit.testing.compare import assert_same, first_difference, live_state


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (np.zeros(3, np.float32), np.zeros(3, np.float64), "value: dtype float32 != float64"),
        (np.zeros((2, 3)), np.zeros((3, 2)), "value: shape (2, 3) != (3, 2)"),
        (np.array([1.0, np.nan]), np.array([np.nan, 1.0]), "value[0]: NaN positions differ"),
        (
            np.array(["2020-01-01", "NaT"], dtype="datetime64[D]"),
            np.array(["NaT", "2020-01-02"], dtype="datetime64[D]"),
            "value[0]: NaT positions differ",
        ),
        (np.array([0.0]), np.array([-0.0]), "value[0]: "),
        (np.array([1, 2, 3]), np.array([1, 5, 3]), "value[1]: "),
        ((1, 2), [1, 2], "value: type builtins.tuple != builtins.list"),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}, "value: key order"),
        ({"a": {"b": [1, 2]}}, {"a": {"b": [1, 3]}}, "value['a']['b'][1]: 2 != 3"),
        ({"a": 1}, {}, "value['a']: missing"),
        (collections.deque([1], maxlen=2), collections.deque([1], maxlen=3), "value: deque maxlen 2 != 3"),
        (float("nan"), 1.0, "value: nan != 1.0"),
        (True, 1, "value: type builtins.bool != builtins.int"),
    ],
)
def test_differences_are_named_by_path(a, b, expected):
    problem = first_difference(a, b)
    assert problem is not None and problem.startswith(expected), problem


@pytest.mark.parametrize(
    "value",
    [
        np.array([1.0, np.nan, -0.0]),
        np.array(["2020-01-01", "NaT"], dtype="datetime64[D]"),
        np.array([1 + 2j, complex(np.nan, 0)]),
        {"x": [1, (2, 3)], "y": {1, 2}, "z": float("nan")},
        collections.OrderedDict(a=1),
    ],
)
def test_equal_values_have_no_difference(value):
    import copy

    assert first_difference(value, copy.deepcopy(value)) is None


@dataclasses.dataclass
class Point:
    x: int
    tags: list[str]


class Plain:
    def __init__(self, n):
        self.n = n


def test_dataclasses_and_plain_objects_compare_field_by_field():
    assert first_difference(Point(1, ["a"]), Point(1, ["b"])) == "value.tags[0]: 'a' != 'b'"
    assert first_difference(Plain(1), Plain(2)) == "value.n: 1 != 2"
    assert first_difference(Plain(1), Plain(1)) is None


def test_tree_records_compare_as_the_list_they_decode_to():
    rows = [{"id": 1}, {"id": 2}]
    assert first_difference(tree.Records(rows), list(rows)) is None
    assert first_difference(tree.Records(rows), [{"id": 1}]) == "value: length 2 != 1"


def test_sklearn_models_compare_params_and_predictions():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = (x[:, 0] > 0).astype(int)
    a = LogisticRegression(C=1.0).fit(x, y)
    b = LogisticRegression(C=1.0).fit(x, y)
    assert first_difference(a, b) is None
    b.coef_ = b.coef_ * 2
    problem = first_difference(a, b)
    assert problem is not None and problem.startswith(("value.predict(probe)", "value.predict_proba(probe)"))
    assert first_difference(a, LogisticRegression(C=2.0).fit(x, y)).startswith("value.get_params()['C']")


def test_cython_trees_compare_by_what_pickle_would_store():
    import pickle

    from sklearn.tree import DecisionTreeClassifier

    x = np.arange(40, dtype=float).reshape(20, 2)
    tree = DecisionTreeClassifier(max_depth=2, random_state=0).fit(x, np.arange(20) % 2).tree_
    copy = pickle.loads(pickle.dumps(tree))
    assert tree != copy and first_difference({"t": tree}, {"t": copy}) is None
    _cls, args, state = copy.__reduce__()
    state["nodes"]["threshold"][0] += 1.0
    changed = type(tree)(*args)
    changed.__setstate__(state)
    problem = first_difference({"t": tree}, {"t": changed})
    assert problem is not None and problem.startswith("value['t'].__reduce__()[1]['nodes']"), problem


def test_torch_tensors_compare_dtype_and_values():
    torch = pytest.importorskip("torch")
    assert first_difference(torch.zeros(2), torch.zeros(2, dtype=torch.float64)).startswith("value: dtype")
    assert first_difference(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, float("nan")])) is None
    assert first_difference(torch.tensor([1, 2]), torch.tensor([1, 3])) == "value[1]: 2 != 3"


def test_assert_same_raises_with_the_path():
    with pytest.raises(AssertionError, match=r"state\['b'\]: 1 != 2"):
        assert_same({"b": 1}, {"b": 2}, what="state")


def test_live_state_sees_attributes_state_dict_forgets():
    class Forgetful:
        def __init__(self):
            self.kept, self.forgotten = 1, [1, 2]

        def state_dict(self):
            return {"kept": self.kept}

    assert live_state(Forgetful()) == {"kept": 1, "forgotten": [1, 2]}
