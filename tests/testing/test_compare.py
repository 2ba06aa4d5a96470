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
        (
            collections.OrderedDict(a=1, b=2),
            collections.OrderedDict(b=2, a=1),
            "value: OrderedDict key order ['a', 'b'] != ['b', 'a']",
        ),
        ({"a": 1, "b": 2}, {"b": 3, "a": 1}, "value['b']: 2 != 3"),
        ({"a": 1}, collections.OrderedDict(a=1), "value: type builtins.dict != collections.OrderedDict"),
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


def test_dict_key_order_is_not_a_difference():
    # issue 21 item 5: a round trip that rebuilds a dict in another order is still the same state
    assert first_difference({"a": 1, "b": {"x": 1, "y": 2}}, {"b": {"y": 2, "x": 1}, "a": 1}) is None
    assert first_difference(collections.Counter("aab"), collections.Counter("baa")) is None


def test_defaultdict_compares_its_factory():
    assert first_difference(collections.defaultdict(list), collections.defaultdict(int)).startswith(
        "value: default_factory <class 'list'> != <class 'int'>"
    )


class Slotted:
    __slots__ = ("__pin", "balance")

    def __init__(self, balance, pin):
        self.balance = balance
        self.__pin = pin


class SlottedChild(Slotted):
    __slots__ = ("name",)

    def __init__(self, balance, pin, name="acct"):
        super().__init__(balance, pin)
        self.name = name


class DictChild(Slotted):  # no __slots__ of its own: instances have a __dict__ and the base's slots
    def __init__(self, balance, pin):
        super().__init__(balance, pin)
        self.note = "same"


@pytest.mark.parametrize("cls", [SlottedChild, DictChild])
def test_slots_of_base_classes_are_compared(cls):
    assert first_difference(cls(5, 1234), cls(5, 1234)) is None
    assert first_difference(cls(5, 1234), cls(6, 1234)) == "value.balance: 5 != 6"
    assert first_difference(cls(5, 1234), cls(5, 4321)) == "value._Slotted__pin: 1234 != 4321"


def test_buffers_compare_by_content():
    import array
    import io

    assert first_difference(io.BytesIO(b"new state"), io.BytesIO(b"old state")).startswith(
        "value: content differs at byte 0"
    )
    assert first_difference(io.BytesIO(b"same"), io.BytesIO(b"same")) is None
    moved = io.BytesIO(b"same")
    moved.seek(2)
    assert first_difference(io.BytesIO(b"same"), moved) == "value: position 0 != 2"
    assert first_difference(io.StringIO("abc"), io.StringIO("abd")).startswith(
        "value: content differs at byte 2"
    )
    assert first_difference(bytearray(b"abc"), bytearray(b"abcd")) == "value: content length 3 != 4"
    assert first_difference(memoryview(b"ab"), memoryview(b"ac")).startswith(
        "value: content differs at byte 1"
    )
    assert first_difference(memoryview(b"abcd").cast("H"), memoryview(b"abcd")).startswith(
        "value: memoryview format/shape"
    )
    assert (
        first_difference(array.array("d", [1.0, 2.0]), array.array("d", [1.0, 3.0])) == "value[1]: 2.0 != 3.0"
    )
    assert first_difference(array.array("d", [float("nan")]), array.array("d", [float("nan")])) is None
    assert (
        first_difference(array.array("i", [1]), array.array("l", [1])) == "value: array typecode 'i' != 'l'"
    )


def nested(depth, leaf):
    value = [leaf]
    for _ in range(depth):
        value = [value]
    return value


def test_deep_nesting_has_no_cut_off():
    assert first_difference(nested(250, 1), nested(250, 1)) is None
    problem = first_difference(nested(250, 1), nested(250, 2))
    assert problem == "value" + "[0]" * 251 + ": 1 != 2"
    # far deeper than the interpreter's recursion limit: walked with an explicit stack
    assert first_difference(nested(20_000, 1), nested(20_000, 2)).endswith("[0]: 1 != 2")


def test_cycles_end_and_still_find_differences():
    a, b = {"n": 1}, {"n": 1}
    a["self"], b["self"] = a, b
    assert first_difference(a, b) is None
    c, d = [1], [2]
    c.append(c)
    d.append(d)
    assert first_difference(c, d) == "value[0]: 1 != 2"


def test_pandas_frames_compare_by_value_with_dtypes():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(
        {"price": [1.5, np.nan, 3.0], "qty": [1, 2, 3], "sym": ["a", None, "c"]},
        index=pd.Index(["x", "y", "z"], name="id"),
    )
    assert first_difference(frame, frame.copy(deep=True)) is None  # equal frames are equal
    assert first_difference(frame, frame.astype({"qty": "float64"})) == "value['qty']: dtype int64 != float64"
    changed = frame.copy()
    changed.loc["z", "price"] = 3.5
    assert first_difference(frame, changed) == "value['price'].iloc[2]: np.float64(3.0) != np.float64(3.5)"
    moved_nan = frame.copy()
    moved_nan["price"] = [np.nan, 2.0, 3.0]
    assert first_difference(frame, moved_nan).startswith("value['price'].iloc[0]: NaN positions differ")
    assert first_difference(frame, frame.rename(index={"x": "w"})).startswith(
        "value.index.iloc[0]: 'x' != 'w'"
    )
    assert first_difference(frame, frame[["qty", "price", "sym"]]).startswith("value.columns.iloc[0]")
    assert first_difference(frame["qty"], frame["qty"].copy()) is None
    assert first_difference(frame["qty"], frame["qty"].rename("n")) == "value.name: 'qty' != 'n'"
    assert first_difference(pd.DataFrame({"a": [1]}), pd.DataFrame({"a": [1]}, index=pd.Index([0]))) is None


def test_arrow_tables_compare_by_value_with_types():
    pa = pytest.importorskip("pyarrow")
    table = pa.table({"price": [1.5, float("nan"), None], "sym": ["a", "b", None]})
    same = pa.table({"price": [1.5, float("nan"), None], "sym": ["a", "b", None]})
    assert first_difference(table, same) is None
    assert first_difference(
        table, table.cast(pa.schema([("price", pa.float32()), ("sym", pa.string())]))
    ) == ("value.schema['price']: type double != float")
    changed = pa.table({"price": [1.5, float("nan"), None], "sym": ["a", "B", None]})
    assert first_difference(table, changed) == "value['sym'][1]: 'b' != 'B'"
    assert first_difference(pa.array([1, None]), pa.array([None, 1])).startswith("value null mask[0]")


def test_polars_frames_compare_by_value_with_dtypes():
    pl = pytest.importorskip("polars")
    frame = pl.DataFrame({"price": [1.5, float("nan"), None], "qty": [1, 2, 3]})
    assert first_difference(frame, frame.clone()) is None
    assert first_difference(frame, frame.with_columns(pl.col("qty").cast(pl.Int32))) == (
        "value['qty']: dtype Int64 != Int32"
    )
    assert (
        first_difference(frame, frame.with_columns(pl.Series("qty", [1, 2, 4]))) == "value['qty'][2]: 3 != 4"
    )
