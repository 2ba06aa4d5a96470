from __future__ import annotations

import collections
import contextlib
import datetime as dt
import decimal
import math
import struct
import tracemalloc
import uuid
import zoneinfo

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from persistkit.errors import FormatError, UnsupportedTypeError
from persistkit.format.tree import TreeLimits, decode, encode


def same(a, b, path="v"):
    """Exact equality in type and value, recursively; floats by bit pattern."""
    assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if type(a) is float:
        assert struct.pack("<d", a) == struct.pack("<d", b), f"{path}: {a!r} != {b!r}"
    elif type(a) is complex:
        same(a.real, b.real, path + ".real")
        same(a.imag, b.imag, path + ".imag")
    elif type(a) is decimal.Decimal:
        assert str(a) == str(b), path
    elif type(a) in (list, tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}[{i}]")
    elif type(a) is collections.deque:
        assert a.maxlen == b.maxlen, path
        same(list(a), list(b), path)
    elif type(a) in (dict, collections.OrderedDict):
        assert list(a) == list(b) or set(map(repr, a)) == set(map(repr, b)), path
        for k in a:
            same(a[k], b[k], f"{path}[{k!r}]")
    elif type(a) is np.ndarray:
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert a.flags.f_contiguous == b.flags.f_contiguous or a.ndim < 2, path
        assert a.tobytes(order="A") == b.tobytes(order="A"), path
        assert b.flags.writeable, f"{path}: decoded array is read-only"
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), path
    elif type(a) in (dt.datetime, dt.time):
        assert a == b and a.fold == b.fold and a.tzinfo == b.tzinfo, path
        assert repr(a.tzinfo) == repr(b.tzinfo), path
    elif type(a) in (set, frozenset):
        assert a == b or repr(sorted(map(repr, a))) == repr(sorted(map(repr, b))), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def roundtrip(value):
    out = decode(encode(value))
    same(value, out)
    return out


EXAMPLES = {
    "none": None,
    "bools": [True, False],
    "ints": [0, -1, 2**63 - 1, 2**64 - 1, -(2**63), 2**64, -(2**63) - 1, 10**200, -(10**200)],
    "floats": [0.0, -0.0, 1.5, math.inf, -math.inf, math.nan, 5e-324, 1.7976931348623157e308],
    "strs": ["", "ascii", "ünïcødé ✓", "\x00nul"],
    "bytes": [b"", b"\x00\xff" * 10],
    "complex": [1 + 2j, complex(-0.0, math.inf)],
    "decimals": [decimal.Decimal(x) for x in ("0", "-0", "1.10", "NaN", "-sNaN", "Infinity", "1E+999")],
    "tuple": (1, (2, (3,)), ()),
    "set": {1, "a", (2, 3)},
    "frozenset": frozenset({frozenset({1}), 2}),
    "deque": collections.deque([1, 2, 3], maxlen=5),
    "deque_unbounded": collections.deque(["x"]),
    "dict_keys": {
        1: "int",
        "s": "str",
        (1, "t"): "tuple",
        None: "none",
        2.5: "float",
        b"b": "bytes",
        frozenset({1}): "frozenset",
        decimal.Decimal("1.5"): "dec",
    },
    "bool_keys": {True: 1, False: 0},
    "ordered": collections.OrderedDict([("b", 1), ("a", 2)]),
    "datetimes": [
        dt.datetime(2024, 2, 29, 12, 30, 15, 123456),
        dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=-5, minutes=-30))),
        dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=2), "CEST")),
        dt.datetime(2021, 11, 7, 1, 30, fold=1, tzinfo=zoneinfo.ZoneInfo("America/New_York")),
    ],
    "date": dt.date(1999, 12, 31),
    "time": dt.time(23, 59, 59, 999999, tzinfo=dt.UTC),
    "timedelta": dt.timedelta(days=-3, seconds=7, microseconds=11),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
}

ARRAYS = {
    "float32": np.arange(12, dtype=np.float32).reshape(3, 4),
    "fortran": np.asfortranarray(np.arange(12, dtype=np.int64).reshape(3, 4)),
    "zero_d": np.array(3.5),
    "empty": np.zeros((0, 5), dtype=np.int16),
    "bool": np.array([True, False]),
    "complex": np.array([1 + 2j], dtype=np.complex64),
    "unicode": np.array(["a", "bcd"]),
    "bytes": np.array([b"xy", b"z"]),
    "datetime64": np.array(["2020-01-01", "NaT"], dtype="datetime64[ns]"),
    "timedelta64": np.array([1, 2], dtype="timedelta64[s]"),
    "structured": np.array([(1, 2.0, b"ab")], dtype=[("a", "<i4"), ("b", ">f8"), ("c", "S2")]),
    "nested_struct": np.zeros(2, dtype=[("p", [("x", "f4"), ("y", "f4")]), ("sub", "i2", (2, 2))]),
    "nan": np.array([np.nan, 1.0, -np.nan]),
    "big_endian": np.arange(3, dtype=">u4"),
    "non_contiguous": np.arange(20).reshape(4, 5)[:, ::2],
}

SCALARS = [
    np.float32(1.25),
    np.float64(-0.0),
    np.int8(-3),
    np.uint64(2**64 - 1),
    np.bool_(True),
    np.complex128(1j),
    np.datetime64("2020-01-01T00:00"),
    np.timedelta64(5, "ms"),
    np.str_("s"),
    np.zeros(1, dtype=[("a", "i4"), ("b", "f4")])[0],
]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_exact_roundtrip(name):
    roundtrip(EXAMPLES[name])


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_array_roundtrip(name):
    arr = ARRAYS[name]
    out = roundtrip(arr)
    if name == "fortran":
        assert out.flags.f_contiguous and not out.flags.c_contiguous
    if name == "nan":
        assert np.array_equal(np.isnan(arr), np.isnan(out))


@pytest.mark.parametrize("scalar", SCALARS, ids=lambda s: type(s).__name__)
def test_numpy_scalar_roundtrip(scalar):
    roundtrip(scalar)


def test_everything_nested_together():
    roundtrip({"examples": EXAMPLES, "arrays": ARRAYS, "scalars": SCALARS})


def test_bytearray_is_stored_as_bytes_by_design():
    assert decode(encode(bytearray(b"ab"))) == b"ab"


class Foo:
    pass


def test_unsupported_type_names_its_path():
    with pytest.raises(UnsupportedTypeError) as info:
        encode({"trades": [{}, {}, {}, {"when": Foo()}]})
    assert str(info.value).startswith("state['trades'][3]['when']: <class ")
    assert "Foo" in str(info.value) and "state_dict()" in str(info.value)
    assert info.value.field == "state['trades'][3]['when']"


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (collections.defaultdict(list), "state"),
        ({"k": True.__class__.__mro__[1](5)}, None),  # plain int is fine
        ([np.array([object()], dtype=object)], "state[0]"),
        ({"k": {Foo()}}, "state['k']{"),
        ({"t": (1, Foo())}, "state['t'][1]"),
        (collections.deque([Foo()]), "state[0]"),
        ({"z": dt.datetime(2020, 1, 1, tzinfo=dt.tzinfo())}, "state['z']"),
    ],
)
def test_unsupported_values_and_subclasses(value, where):
    if where is None:
        roundtrip(value)
        return
    with pytest.raises(UnsupportedTypeError) as info:
        encode(value)
    assert info.value.field.startswith(where)


def test_builtin_subclasses_are_refused_not_downgraded():
    class MyStr(str):
        pass

    import enum

    class Side(enum.IntEnum):
        BUY = 1

    for bad in (MyStr("x"), Side.BUY, np.ma.masked_array([1])):
        with pytest.raises(UnsupportedTypeError):
            encode({"v": bad})


def test_cycles_are_reported():
    a = []
    a.append(a)
    with pytest.raises(UnsupportedTypeError, match=r"state\['x'\]\[0\]: reference cycle"):
        encode({"x": a})


def test_custom_root_name():
    with pytest.raises(UnsupportedTypeError, match=r"^risk\[0\]"):
        encode([Foo()], root="risk")


class Model:
    def __init__(self, w):
        self.w = w


def test_model_hook_and_resolver():
    hook = lambda obj: ("dummy", bytes(obj.w)) if type(obj) is Model else None  # noqa: E731
    data = encode({"m": Model([1, 2]), "n": 3}, model_hook=hook)
    seen = []
    out = decode(
        data, model_resolver=lambda codec, payload: seen.append((codec, payload)) or Model(list(payload))
    )
    assert seen == [("dummy", b"\x01\x02")] and out["m"].w == [1, 2] and out["n"] == 3
    with pytest.raises(FormatError, match="embeds a 'dummy' model"):
        decode(data)
    with pytest.raises(UnsupportedTypeError):
        encode(Foo(), model_hook=hook)


# -- hostile input --------------------------------------------------------------


def ext(code, obj):
    return bytes([1]) + msgpack.packb(
        msgpack.ExtType(code, msgpack.packb(obj, use_bin_type=True)), use_bin_type=True
    )


def dt_ext(y, mo, d, tz):
    payload = struct.pack("<HBBBBBIB", y, mo, d, 0, 0, 0, 0, 0) + msgpack.packb(tz)
    return bytes([1]) + msgpack.packb(msgpack.ExtType(8, payload))


HOSTILE = {
    "empty": b"",
    "newer_version": b"\x02\xc0",
    "old_version": b"\x00\xc0",
    "trailing_garbage": bytes([1]) + msgpack.packb(1) + b"\x01",
    "bad_utf8": bytes([1]) + b"\xa2\xff\xfe",
    "huge_array_header": bytes([1]) + b"\xdd\xff\xff\xff\xff",
    "huge_str_header": bytes([1]) + b"\xdb\xff\xff\xff\xff",
    "unknown_ext": ext(99, 1),
    "object_dtype": ext(12, ["|O", [1], False, b"\x00" * 8]),
    "shape_mismatch": ext(12, ["<f8", [1000000000], False, b"\x00" * 8]),
    "negative_shape": ext(12, ["<f8", [-1], False, b""]),
    "bad_descr": ext(12, [["not", "a", "dtype"], [1], False, b"\x00"]),
    "scalar_obj": ext(13, ["|O", b"\x00" * 8]),
    "bad_complex": ext(5, ["a", "b"]),
    "bad_decimal": bytes([1]) + msgpack.packb(msgpack.ExtType(6, b"not a number")),
    "bad_datetime": dt_ext(2020, 13, 1, None),
    "short_datetime": bytes([1]) + msgpack.packb(msgpack.ExtType(8, b"\x01\x02")),
    "bad_tz": dt_ext(2020, 1, 1, ["evil", "os.system"]),
    "unknown_zone": dt_ext(2020, 1, 1, ["zone", "../../etc/passwd"]),
    "unhashable_key": bytes([1]) + b"\x81\x91\x01\x01",
    "bad_deque": ext(7, [-1, []]),
    "bad_uuid": bytes([1]) + msgpack.packb(msgpack.ExtType(17, b"short")),
    "empty_bigint": bytes([1]) + msgpack.packb(msgpack.ExtType(1, b"")),
    "model_without_resolver": ext(15, ["sklearn", b"x"]),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_raises_format_error(name):
    with pytest.raises(FormatError) as info:
        decode(HOSTILE[name], source="store/gen-1/risk")
    assert type(info.value) is FormatError
    assert "store/gen-1/risk" in str(info.value)


def test_newer_version_says_upgrade():
    with pytest.raises(FormatError, match="newer persistkit"):
        decode(HOSTILE["newer_version"])


def test_deep_nesting_is_bounded():
    deep = bytes([1]) + b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(FormatError):
        decode(deep)
    nested = msgpack.packb(1)
    for _ in range(40):
        nested = msgpack.packb(msgpack.ExtType(2, b"\x91" + nested))
    with pytest.raises(FormatError):
        decode(bytes([1]) + nested)
    with pytest.raises(FormatError, match="deeper than 3"):
        decode(encode(((((1,),),),)), limits=TreeLimits(max_depth=3))


def test_encode_refuses_what_decode_would_refuse():
    value = 1
    for _ in range(33):
        value = (value,)
    with pytest.raises(UnsupportedTypeError, match="nested too deeply") as info:
        encode({"v": value})
    assert info.value.field.startswith("state['v'][0][0]")
    for _ in range(2):
        value = value[0]
    roundtrip({"v": value})  # 31 levels: fine both ways


def test_deep_plain_lists_are_fine_up_to_the_limit():
    value = []
    for _ in range(200):
        value = [value]
    roundtrip(value)


def test_tiny_input_cannot_allocate_much():
    tracemalloc.start()
    try:
        for payload in (HOSTILE["shape_mismatch"], HOSTILE["huge_array_header"], HOSTILE["huge_str_header"]):
            with pytest.raises(FormatError):
                decode(payload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"peak {peak} bytes for inputs under 100 bytes"


def test_every_truncation_is_rejected():
    data = encode({"examples": EXAMPLES, "arrays": {k: ARRAYS[k] for k in ("float32", "structured")}})
    for cut in range(len(data)):
        with pytest.raises(FormatError):
            decode(data[:cut])
    print(f"\n{len(data)} truncations rejected")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_escape_untyped(data):
    with contextlib.suppress(FormatError):
        decode(b"\x01" + data)


# -- properties -----------------------------------------------------------------

hashables = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=5)
    | st.binary(max_size=5)
    | st.floats(allow_nan=False),
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
    max_leaves=5,
)
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | st.complex_numbers()
    | st.decimals()
    | st.datetimes(timezones=st.none() | st.timezones())
    | st.dates()
    | st.times()
    | st.timedeltas()
    | st.uuids()
    | hnp.arrays(hnp.scalar_dtypes(), hnp.array_shapes(min_dims=0, max_dims=3, max_side=3))
    | hnp.from_dtype(np.dtype("f4"))
    | hnp.from_dtype(np.dtype("i8"))
)


def tree_values():
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.tuples(inner, inner)
            | st.dictionaries(hashables, inner, max_size=4)
            | st.sets(hashables, max_size=4)
            | st.frozensets(hashables, max_size=3)
            | st.builds(collections.deque, st.lists(inner, max_size=3), st.none() | st.integers(3, 5))
            | st.builds(collections.OrderedDict, st.dictionaries(st.text(max_size=3), inner, max_size=3))
        ),
        max_leaves=12,
    )


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree_values())
def test_property_exact_roundtrip(value):
    roundtrip(value)


# -- column storage for uniform rows ------------------------------------------------

from persistkit.format.tree import Records  # noqa: E402

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

RECORDS = {
    "dict_rows": [
        {"id": i, "when": T0 + dt.timedelta(seconds=i), "pnl": i * 0.5, "tag": ("a", i)} for i in range(50)
    ],
    "tuple_rows": [(T0 + dt.timedelta(minutes=i), float(i)) for i in range(50)],
    "naive_datetimes": [(dt.datetime(1960, 1, 1) + dt.timedelta(days=i),) for i in range(5)],
    "offset_zone": [{"t": dt.datetime(2020, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))}]
    * 3,
    "dst_zone_kept_per_value": [
        {"t": dt.datetime(2021, 11, 7, 1, 30, fold=f, tzinfo=zoneinfo.ZoneInfo("America/New_York"))}
        for f in (0, 1)
    ],
    "mixed_rows": [{"a": 1}, {"b": 2}, (1, 2), "x"],
    "mixed_column": [{"v": 1}, {"v": T0}, {"v": None}],
    "empty": [],
    "empty_dicts": [{}, {}],
}


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_records_roundtrip_as_plain_lists(name):
    rows = RECORDS[name]
    out = decode(encode({"items": Records(rows)}))["items"]
    same(rows, out)
    assert type(out) is list


def test_records_are_smaller_and_decode_like_lists():
    rows = RECORDS["dict_rows"] * 40
    columnar = encode(Records(rows))
    plain = encode(rows)
    assert len(columnar) < len(plain)
    assert decode(columnar) == decode(plain) == rows


def test_unsupported_value_inside_records_names_its_row():
    rows = [{"when": T0}, {"when": Foo()}]
    with pytest.raises(UnsupportedTypeError, match=r"^trades\['items'\]\[1\]\['when'\]"):
        encode({"items": Records(rows)}, root="trades")


@pytest.mark.parametrize(
    "payload",
    [
        ["dict", ["a"], 5, [[1, 2]], ["v"]],  # column shorter than the row count
        ["dict", ["a", "b"], 1, [[1]], ["v"]],  # keys and columns disagree
        ["tuple", 3, 1, [[1]], ["v"]],
        ["dict", ["a"], 1, [["not an int"]], [["dt", None]]],
        ["dict", ["a"], 1, [[1]], ["zz"]],
        ["nope", 0, 0, [], []],
        ["dict", ["a"], 10**9, [[]], ["v"]],
        ["dict", [], 10**9, [], []],
    ],
    ids=[
        "short-column",
        "key-mismatch",
        "arity",
        "bad-dt",
        "bad-kind",
        "bad-kind2",
        "huge-count",
        "no-columns",
    ],
)
def test_hostile_records_raise_format_error(payload):
    with pytest.raises(FormatError):
        decode(ext(18, payload))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "id": st.integers(),
                "t": st.datetimes(timezones=st.just(dt.UTC)),
                "x": st.floats(),
                "s": st.text(),
            }
        ),
        max_size=20,
    )
)
def test_property_records_roundtrip(rows):
    out = decode(encode(Records(rows)))
    same(rows, out)
