from __future__ import annotations

import collections
import datetime as dt
import decimal
import enum
import math
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import uuid
import zoneinfo

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from persistkit.errors import FormatError, NewerFormatError, PersistkitError, UnsupportedTypeError
from persistkit.format.tree import Records, TreeLimits, decode, encode

# -- exactness helpers ------------------------------------------------------------------


def zone(tz):
    """What identifies a time zone: offset and name for fixed offsets, the key for IANA zones.

    timezone(timedelta(0), "UTC") comes back as timezone.utc: same offset and name, other repr.
    """
    if tz is None or type(tz) is zoneinfo.ZoneInfo:
        return (type(tz).__name__, getattr(tz, "key", None))
    return (type(tz).__name__, tz.utcoffset(None), tz.tzname(None))


def canon(x):
    """An order-free fingerprint of a hashable value that differs whenever type or value differ."""
    t = type(x)
    if t is float:
        return ("float", struct.pack("<d", x))
    if t is complex:
        return ("complex", canon(x.real), canon(x.imag))
    if t is tuple:
        return ("tuple", tuple(canon(v) for v in x))
    if t in (set, frozenset):
        return (t.__name__, tuple(sorted(canon(v) for v in x)))
    if t is decimal.Decimal:
        return ("Decimal", str(x))
    if t in (dt.datetime, dt.time):
        return (t.__name__, x.replace(tzinfo=None).isoformat(), x.fold, zone(x.tzinfo))
    if isinstance(x, np.generic):
        return ("numpy", type(x).__name__, repr(x.dtype), x.tobytes())
    return (t.__name__, repr(x))


def same(a, b, path="v"):
    """Exact equality in type and value, recursively; floats by bit pattern, dicts in order."""
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
        assert [canon(k) for k in a] == [canon(k) for k in b], f"{path}: keys differ"
        for (k, x), y in zip(a.items(), b.values()):
            same(x, y, f"{path}[{k!r}]")
    elif type(a) in (set, frozenset):
        assert sorted(map(canon, a)) == sorted(map(canon, b)), path
    elif type(a) is np.ndarray:
        assert a.dtype == b.dtype and a.shape == b.shape, path
        if a.ndim > 1 and a.flags.f_contiguous and not a.flags.c_contiguous:
            assert b.flags.f_contiguous, f"{path}: Fortran order lost"
        assert a.tobytes(order="A") == b.tobytes(order="A"), path
        assert b.flags.writeable, f"{path}: decoded array is read-only"
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), path
    elif type(a) in (dt.datetime, dt.time):
        assert a.replace(tzinfo=None) == b.replace(tzinfo=None) and a.fold == b.fold, (
            f"{path}: {a!r} != {b!r}"
        )
        assert zone(a.tzinfo) == zone(b.tzinfo), f"{path}: {a.tzinfo!r} != {b.tzinfo!r}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def roundtrip(value):
    out = decode(encode(value))
    same(value, out)
    return out


SUPPORTED = {
    type(None), bool, int, float, str, bytes, complex, decimal.Decimal, list, tuple, dict, set, frozenset,
    collections.deque, collections.OrderedDict, dt.datetime, dt.date, dt.time, dt.timedelta, uuid.UUID,
    np.ndarray,
}  # fmt: skip


def assert_supported(value, path="v"):
    """Everything decode returns is one of the supported types, all the way down."""
    t = type(value)
    assert t in SUPPORTED or (isinstance(value, np.generic) and t.__module__ == "numpy"), f"{path}: {t}"
    if t in (list, tuple, set, frozenset, collections.deque):
        for i, v in enumerate(value):
            assert_supported(v, f"{path}[{i}]")
    elif t in (dict, collections.OrderedDict):
        for k, v in value.items():
            assert_supported(k, f"{path}<key>")
            assert_supported(v, f"{path}[{k!r}]")
    elif t is np.ndarray:
        assert not value.dtype.hasobject, path
    elif t in (dt.datetime, dt.time) and value.tzinfo is not None:
        assert type(value.tzinfo) in (dt.timezone, zoneinfo.ZoneInfo), path


# -- exact round trips ---------------------------------------------------------------------

NEW_YORK = zoneinfo.ZoneInfo("America/New_York")

EXAMPLES = {
    "none": None,
    "bools": [True, False],
    "ints": [0, -1, 2**63 - 1, 2**64 - 1, -(2**63), 2**64, -(2**63) - 1, 10**200, -(10**200)],
    "floats": [0.0, -0.0, 1.5, math.inf, -math.inf, math.nan, -math.nan, 5e-324, 1.7976931348623157e308],
    "nan_payload": struct.unpack("<d", b"\x01\x00\x00\x00\x00\x00\xf8\x7f")[0],
    "strs": ["", "ascii", "ünïcødé ✓", "\x00nul", "𝄞"],
    "bytes": [b"", b"\x00\xff" * 10],
    "complex": [1 + 2j, complex(-0.0, math.inf), complex(math.nan, -0.0)],
    "decimals": [
        decimal.Decimal(x)
        for x in ("0", "-0", "1.10", "NaN", "-sNaN", "NaN123", "Infinity", "-Infinity", "1E+999")
    ],
    "tuple": (1, (2, (3,)), ()),
    "set": {1, "a", (2, 3)},
    "frozenset": frozenset({frozenset({1}), 2}),
    "empty_containers": [[], (), {}, set(), frozenset(), collections.deque()],
    "deque": collections.deque([1, 2, 3], maxlen=5),
    "deque_unbounded": collections.deque(["x"]),
    "deque_maxlen_zero": collections.deque(maxlen=0),
    "dict_keys": {
        1: "int",
        "s": "str",
        (1, "t"): "tuple",
        None: "none",
        2.5: "float",
        -0.0: "negative zero",
        b"b": "bytes",
        frozenset({1}): "frozenset",
        decimal.Decimal("1.5"): "dec",
        dt.datetime(2020, 1, 1): "datetime",
        dt.date(2020, 1, 2): "date",
        uuid.UUID(int=7): "uuid",
        2**80: "bigint",
    },
    "bool_keys": {True: 1, False: 0},
    "ordered": collections.OrderedDict([("b", 1), ("a", 2)]),
    "ordered_nested": collections.OrderedDict([((1, 2), collections.OrderedDict(z=[1]))]),
    "datetimes": [
        dt.datetime(2024, 2, 29, 12, 30, 15, 123456),
        dt.datetime(1, 1, 1),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
        dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=-5, minutes=-30))),
        dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=2), "CEST")),
        dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=23, minutes=59, microseconds=1))),
        dt.datetime(2021, 11, 7, 1, 30, fold=1, tzinfo=NEW_YORK),
        dt.datetime(2021, 11, 7, 1, 30, fold=0, tzinfo=NEW_YORK),
    ],
    # timezone(+2h, "CEST") == timezone(+2h): one value holding both must keep both names
    "equal_zones_different_names": [
        dt.datetime(2024, 6, 1, tzinfo=dt.timezone(dt.timedelta(hours=2), "CEST")),
        dt.datetime(2024, 6, 1, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        dt.datetime(2024, 6, 1, tzinfo=dt.timezone(dt.timedelta(hours=2), "EET")),
        dt.time(1, tzinfo=dt.timezone(dt.timedelta(hours=2), "CEST")),
        dt.time(1, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    ],
    "date": dt.date(1999, 12, 31),
    "time": dt.time(23, 59, 59, 999999, tzinfo=dt.UTC),
    "time_fold": dt.time(1, 30, fold=1, tzinfo=NEW_YORK),
    "time_naive": dt.time(),
    "timedelta": [dt.timedelta(days=-3, seconds=7, microseconds=11), dt.timedelta.max, dt.timedelta.min],
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
}

ARRAYS = {
    "float32": np.arange(12, dtype=np.float32).reshape(3, 4),
    "fortran": np.asfortranarray(np.arange(12, dtype=np.int64).reshape(3, 4)),
    "fortran_3d": np.asfortranarray(np.arange(24, dtype=np.float64).reshape(2, 3, 4)),
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
    "aligned_struct": np.ones(3, dtype=np.dtype([("a", "u1"), ("b", "<i4")], align=True)),
    "padded_struct": np.zeros(2, dtype=np.dtype({"names": ["a"], "formats": ["<i4"], "itemsize": 16})),
    "titled_struct": np.zeros(2, dtype=[(("Title", "a"), "<i4")]),
    "empty_struct": np.zeros(3, dtype=np.dtype([])),
    "void": np.zeros(2, dtype="V3"),
    "nan": np.array([np.nan, 1.0, -np.nan]),
    "big_endian": np.arange(3, dtype=">u4"),
    "non_contiguous": np.arange(20).reshape(4, 5)[:, ::2],
    "float16": np.array([0.5, -0.0], dtype=np.float16),
}

SCALARS = [
    np.float32(1.25),
    np.float64(-0.0),
    np.float16(np.nan),
    np.longdouble(1) / 3,
    np.int8(-3),
    np.uint64(2**64 - 1),
    np.bool_(True),
    np.complex128(1j),
    np.datetime64("2020-01-01T00:00"),
    np.datetime64("NaT"),
    np.timedelta64(5, "ms"),
    np.str_("s"),
    np.str_(""),
    np.bytes_(b""),
    np.bytes_(b"ab"),
    np.void(b""),
    np.void(b"\x00\x01"),
    np.zeros(1, dtype=[("a", "i4"), ("b", "f4")])[0],
]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_exact_roundtrip(name):
    roundtrip(EXAMPLES[name])


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_array_roundtrip(name):
    arr = ARRAYS[name]
    out = roundtrip(arr)
    if arr.dtype.kind in "biufcmM":
        assert np.array_equal(arr, out, equal_nan=arr.dtype.kind in "fcmM")
    if name.startswith("fortran"):
        assert out.flags.f_contiguous and not out.flags.c_contiguous
    out[...] = arr  # writeable, and not a view of anything the decoder keeps


@pytest.mark.parametrize("scalar", SCALARS, ids=lambda s: f"{type(s).__name__}-{s.dtype}")
def test_numpy_scalar_roundtrip(scalar):
    out = roundtrip(scalar)
    assert type(out) is type(scalar) and out.dtype == scalar.dtype


def test_everything_nested_together():
    roundtrip({"examples": EXAMPLES, "arrays": ARRAYS, "scalars": SCALARS, "in_tuple": (EXAMPLES, ARRAYS)})


def test_bytearray_is_stored_as_bytes_by_design():
    out = decode(encode([bytearray(b"ab"), memoryview(b"cd")]))
    assert out == [b"ab", b"cd"] and all(type(v) is bytes for v in out)


def test_decode_takes_any_bytes_like():
    data = encode({"a": (1, 2)})
    for form in (data, bytearray(data), memoryview(data)):
        assert decode(form) == {"a": (1, 2)}


def test_largest_stored_integer_and_decimal_roundtrip():
    big = 2 ** (64 * 1024 * 8 - 1) - 1  # exactly 64 KiB of two's complement
    assert decode(encode(big)) == big
    dec = decimal.Decimal("9" * 10_000)
    assert decode(encode(dec)) == dec


# The wire format is a storage contract: these bytes were written by the first release of
# the codec. They must keep decoding to the same values, and encode must keep writing them.
GOLDEN = {
    "tuple_bigint": ("01c71a029301c70901400000000000000000c70901ff0000000000000000", (1, 2**70, -(2**64))),
    "datetime_utc": (
        "01c71808ea070105091e00fa0000000095a66f6666736574000000c0",
        dt.datetime(2026, 1, 5, 9, 30, 0, 250, tzinfo=dt.UTC),
    ),
    "decimal_deque": (
        "0192c705062d302e3130c70c07920391cb3ff8000000000000",
        [decimal.Decimal("-0.10"), collections.deque([1.5], maxlen=3)],
    ),
    "set_date_time_td": (
        "0194d5049101c7060993cd07e4021dc7070a960102030400c0d60b93ff0500",
        [frozenset({1}), dt.date(2020, 2, 29), dt.time(1, 2, 3, 4), dt.timedelta(days=-1, seconds=5)],
    ),
    "ordered_uuid_complex": (
        "01c72f0e9292a175d8110000000000000000000000000000000192a163c7130592cb3ff0000000000000cb4000000000000000",
        collections.OrderedDict([("u", uuid.UUID(int=1)), ("c", 1 + 2j)]),
    ),
    "ndarray_scalar": (
        "0192c7130c94a33c6932920202c2c4080000010002000300c70b0d92a33c6634c4040000003f",
        [np.arange(4, dtype="<i2").reshape(2, 2), np.float32(0.5)],
    ),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_bytes_are_stable(name):
    hexdata, value = GOLDEN[name]
    same(value, decode(bytes.fromhex(hexdata)))
    assert encode(value).hex() == hexdata


def test_golden_records_bytes_are_stable():
    rows = [{"t": dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "x": 1.0}] * 2
    hexdata = (
        "01c7461295a46469637492a174a178029292cf0006474846204000cf000647484620400092cb3ff0000000000000"
        "cb3ff00000000000009292a2647495a66f6666736574000000c0a176"
    )
    assert encode(Records(rows)).hex() == hexdata
    same(rows, decode(bytes.fromhex(hexdata)))


# -- what cannot be stored --------------------------------------------------------------------


class Foo:
    pass


def test_unsupported_type_names_its_path():
    with pytest.raises(UnsupportedTypeError) as info:
        encode({"trades": [{}, {}, {}, {"when": Foo()}]})
    message = str(info.value)
    assert message.startswith(f"state['trades'][3]['when']: {Foo!r} cannot be stored without pickle.")
    assert "in state_dict()" in message and message.endswith("or register a codec for it.")
    assert info.value.field == "state['trades'][3]['when']"


class Side(enum.IntEnum):
    BUY = 1


class MyStr(str):
    pass


class MyDatetime(dt.datetime):
    pass


Point = collections.namedtuple("Point", "x y")


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"k": {Foo()}}, "state['k']{"),
        ({"t": (1, Foo())}, "state['t'][1]"),
        (collections.deque([0, Foo()]), "state[1]"),
        ({"o": collections.OrderedDict(a=[Foo()])}, "state['o']['a'][0]"),
        ({Foo(): 1}, "state<key "),
        ({(1, Foo()): 1}, "state<key "),
        ({"z": dt.datetime(2020, 1, 1, tzinfo=dt.tzinfo())}, "state['z']"),
        ([np.array([object()], dtype=object)], "state[0]"),
        # subclasses of supported types are refused, never silently downgraded
        (collections.defaultdict(list), "state"),
        ({"side": Side.BUY}, "state['side']"),
        ({"s": MyStr("x")}, "state['s']"),
        ({"p": Point(1, 2)}, "state['p']"),
        ({"when": MyDatetime(2020, 1, 1)}, "state['when']"),
        ({"m": np.ma.masked_array([1])}, "state['m']"),
        ({"r": np.rec.array([(1,)], dtype=[("a", "i4")])}, "state['r']"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_unsupported_values_and_subclasses_name_their_path(value, field):
    with pytest.raises(UnsupportedTypeError) as info:
        encode(value)
    assert type(info.value) is UnsupportedTypeError
    assert info.value.field.startswith(field), info.value.field
    assert str(info.value).startswith(info.value.field + ": ")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("\ud800", "lone surrogate"),
        (2 ** (64 * 1024 * 8), "integer of 65537 bytes"),
        (decimal.Decimal("1" * 10_001), "Decimal of 10001 characters"),
        (np.array([1.0], dtype=np.dtype("<f8", metadata={"unit": "m"})), "dtype metadata"),
        (np.zeros(2, dtype=np.dtypes.StringDType()), "not a fixed-size numpy dtype"),
        (np.array([None]), "object dtype: its elements would need pickle"),
        (
            np.zeros(1, np.dtype({"names": ["a", "b"], "formats": ["<i4", "<i4"], "offsets": [4, 0]})),
            "portable",
        ),
        (dt.datetime(2020, 1, 1, tzinfo=dt.tzinfo()), "time zone"),
    ],
    ids=[
        "surrogate",
        "bigint",
        "decimal",
        "metadata",
        "stringdtype",
        "object",
        "out_of_order_fields",
        "tzinfo",
    ],
)
def test_values_decode_would_refuse_are_refused_at_encode_with_a_reason(value, reason):
    with pytest.raises(UnsupportedTypeError, match=r"^state\['v'\]\[0\]: .*" + reason) as info:
        encode({"v": [value]})
    assert info.value.field == "state['v'][0]"


def test_cycles_are_reported():
    a = []
    a.append(a)
    with pytest.raises(UnsupportedTypeError, match=r"^state\['x'\]\[0\]: reference cycle"):
        encode({"x": a})
    d = {}
    d["t"] = (1, d)  # through an ext value
    with pytest.raises(UnsupportedTypeError, match=r"^state\['t'\]\[1\]: reference cycle"):
        encode(d)


def test_shared_references_are_not_cycles():
    shared = [1, 2]
    out = roundtrip({"a": shared, "b": (shared, shared)})
    assert out["a"] is not out["b"][0]  # a tree: sharing is not preserved, by design


def test_custom_root_name():
    with pytest.raises(UnsupportedTypeError, match=r"^risk\[0\]"):
        encode([Foo()], root="risk")


def test_encode_refuses_what_decode_would_refuse():
    value = 1
    for _ in range(33):
        value = (value,)
    with pytest.raises(UnsupportedTypeError, match="nested too deeply") as info:
        encode({"v": value})
    assert info.value.field.startswith("state['v'][0][0]")
    roundtrip({"v": value[0]})  # 32 levels: fine both ways


def nest(value, levels, container=list):
    for _ in range(levels):
        value = container([value])
    return value


def unnest(value, levels):
    """Walk down a chain made by nest() (iteratively: == and same() would hit the recursion limit)."""
    for _ in range(levels):
        assert type(value) in (list, tuple) and len(value) == 1
        value = value[0]
    return value


@pytest.mark.parametrize(
    ("wrap", "fits"),
    [(lambda v: v, 1024), (lambda v: (v,), 1023)],  # a tuple's payload is itself a list
    ids=["top", "in_tuple"],
)
def test_plain_nesting_up_to_msgpacks_limit_roundtrips_and_beyond_is_refused(wrap, fits):
    """msgpack unpacks 1024 lists inside each other per payload (and packs 1025)."""
    deepest = decode(encode(wrap(nest([], fits - 1))))
    assert unnest(deepest, fits - 1 + (fits == 1023)) == []
    with pytest.raises(UnsupportedTypeError, match="nested too deeply") as info:
        encode(wrap(nest([], fits)))
    assert info.value.field.startswith("state" + "[0]" * fits)


def test_an_unsupported_value_deep_down_is_found_beyond_pythons_recursion_limit():
    with pytest.raises(UnsupportedTypeError) as info:
        encode(nest(Foo(), 1020))
    assert info.value.field == "state" + "[0]" * 1020
    assert "nested too deeply" not in str(info.value)


@pytest.mark.parametrize(
    "leaf",
    [dt.datetime(2020, 1, 1, tzinfo=dt.UTC), 2**70, decimal.Decimal("1.5"), uuid.UUID(int=3)],
    ids=["datetime", "bigint", "Decimal", "UUID"],
)
def test_values_without_nested_payloads_do_not_count_as_nesting(leaf):
    roundtrip(nest(leaf, 32, container=tuple))


@pytest.mark.parametrize(
    "leaf",
    [dt.date(2020, 1, 1), np.float32(1), 1j, np.zeros(2)],
    ids=["date", "float32", "complex", "ndarray"],
)
def test_values_with_nested_payloads_count_as_nesting_on_both_sides(leaf):
    roundtrip(nest(leaf, 31, container=tuple))
    with pytest.raises(UnsupportedTypeError, match="nested too deeply") as info:
        encode({"v": nest(leaf, 32, container=tuple)})
    assert info.value.field == "state['v']" + "[0]" * 32


# -- embedded models ------------------------------------------------------------------------


class Model:
    def __init__(self, w):
        self.w = w


def model_hook(obj):
    return ("dummy", bytes(obj.w)) if type(obj) is Model else None


def test_model_hook_and_resolver():
    data = encode({"m": Model([1, 2]), "n": 3, "in_tuple": (Model([3]),)}, model_hook=model_hook)
    seen = []

    def resolver(codec, payload):
        seen.append((codec, payload))
        return Model(list(payload))

    out = decode(data, model_resolver=resolver)
    assert seen == [("dummy", b"\x01\x02"), ("dummy", b"\x03")]
    assert type(out["m"]) is Model and out["m"].w == [1, 2] and out["n"] == 3
    assert out["in_tuple"][0].w == [3]
    with pytest.raises(FormatError, match="embeds a 'dummy' model; load it through the API") as info:
        decode(data)
    assert type(info.value) is FormatError
    with pytest.raises(UnsupportedTypeError, match=r"^state\['f'\]"):
        encode({"f": Foo()}, model_hook=model_hook)


class ResolverTrouble(PersistkitError):
    pass


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (ValueError("bad weights"), FormatError),
        (KeyError("layer"), FormatError),
        (ImportError("pip install 'persistkit[torch]'"), ImportError),
        (ResolverTrouble("typed"), ResolverTrouble),
    ],
    ids=["ValueError", "KeyError", "ImportError", "PersistkitError"],
)
def test_resolver_errors_are_typed(raised, expected):
    data = encode({"m": Model([1])}, model_hook=model_hook)

    def resolver(codec, payload):
        raise raised

    with pytest.raises(expected) as info:
        decode(data, model_resolver=resolver, source="store/gen-1/agent")
    assert type(info.value) is expected
    if expected is FormatError:
        assert "store/gen-1/agent: the embedded 'dummy' model could not be rebuilt" in str(info.value)


# -- hostile input ----------------------------------------------------------------------------


def ext(code, obj):
    return bytes([1]) + msgpack.packb(
        msgpack.ExtType(code, msgpack.packb(obj, use_bin_type=True)), use_bin_type=True
    )


def raw_ext(code, payload):
    return bytes([1]) + msgpack.packb(msgpack.ExtType(code, payload))


def dt_ext(y, mo, d, tz, fold=0):
    return raw_ext(8, struct.pack("<HBBBBBIB", y, mo, d, 0, 0, 0, 0, fold) + msgpack.packb(tz))


def nested_ext_chain(levels, inner=b"\xc0"):
    for _ in range(levels):
        inner = msgpack.packb(msgpack.ExtType(2, b"\x91" + inner))
    return bytes([1]) + inner


HOSTILE = {
    "empty": b"",
    "version_only": b"\x01",
    "newer_version": b"\x02\xc0",
    "old_version": b"\x00\xc0",
    "trailing_garbage": bytes([1]) + msgpack.packb(1) + b"\x01",
    "trailing_garbage_in_ext": raw_ext(2, msgpack.packb([1]) + b"\xc0"),
    "bad_utf8": bytes([1]) + b"\xa2\xff\xfe",
    "reserved_byte": bytes([1]) + b"\xc1",
    "huge_array_header": bytes([1]) + b"\xdd\xff\xff\xff\xff",
    "huge_map_header": bytes([1]) + b"\xdf\xff\xff\xff\xff",
    "huge_str_header": bytes([1]) + b"\xdb\xff\xff\xff\xff",
    "huge_bin_header": bytes([1]) + b"\xc6\xff\xff\xff\xff",
    "huge_ext_header": bytes([1]) + b"\xc9\xff\xff\xff\xff\x02",
    "unknown_ext": ext(99, 1),
    "reserved_ext_16": ext(16, 1),
    "negative_ext": bytes([1]) + b"\xd4\xfe\x00",
    "object_dtype": ext(12, ["|O", [1], False, b"\x00" * 8]),
    "object_in_struct": ext(12, [[["a", "|O"]], [1], False, b"\x00" * 8]),
    "shape_mismatch": ext(12, ["<f8", [1000000000], False, b"\x00" * 8]),
    "shape_overflow": ext(12, ["<f8", [2**62, 2**62, 0], False, b""]),
    "negative_shape": ext(12, ["<f8", [-1], False, b""]),
    "float_shape": ext(12, ["<f8", [1.0], False, b"\x00" * 8]),
    "too_many_dims": ext(12, ["<f8", [1] * 65, False, b"\x00" * 8]),
    "zero_size_str_array": ext(12, ["|S0", [10**9], False, b""]),
    "zero_size_unicode_array": ext(12, ["<U0", [10**9], False, b""]),
    "bad_descr": ext(12, [["not", "a", "dtype"], [1], False, b"\x00"]),
    "descr_is_dict": ext(12, [{"names": ["a"]}, [1], False, b"\x00"]),
    "fortran_not_bool": ext(12, ["<f8", [1], 1, b"\x00" * 8]),
    "scalar_obj": ext(13, ["|O", b"\x00" * 8]),
    "scalar_wrong_size": ext(13, ["<f8", b"\x00" * 4]),
    "bad_complex": ext(5, ["a", "b"]),
    "complex_wrong_arity": ext(5, [1.0]),
    "bad_decimal": raw_ext(6, b"not a number"),
    "decimal_not_ascii": raw_ext(6, "\u0661".encode()),  # ARABIC-INDIC DIGIT ONE
    "decimal_too_long": raw_ext(6, b"1" * 10_001),
    "bigint_too_long": raw_ext(1, b"\x01" * (64 * 1024 + 1)),
    "empty_bigint": raw_ext(1, b""),
    "bad_datetime": dt_ext(2020, 13, 1, None),
    "bad_fold": dt_ext(2020, 1, 1, None, fold=2),
    "short_datetime": raw_ext(8, b"\x01\x02"),
    "bad_tz": dt_ext(2020, 1, 1, ["evil", "os.system"]),
    "tz_offset_too_big": dt_ext(2020, 1, 1, ["offset", 1, 0, 0, None]),
    "tz_name_not_str": dt_ext(2020, 1, 1, ["offset", 0, 3600, 0, 5]),
    "unknown_zone": dt_ext(2020, 1, 1, ["zone", "../../etc/passwd"]),
    "zone_not_tzif": dt_ext(2020, 1, 1, ["zone", "zone.tab"]),
    "bad_date": ext(9, [2020, 2, 30]),
    "bad_time": ext(10, [25, 0, 0, 0, 0, None]),
    "timedelta_overflow": ext(11, [10**10, 0, 0]),
    "unhashable_key": bytes([1]) + b"\x81\x91\x01\x01",
    "unhashable_set_item": ext(3, [[1]]),
    "bad_deque": ext(7, [-1, []]),
    "deque_huge_maxlen": ext(7, [2**64 - 1, []]),
    "bad_ordered_dict": ext(14, [[1, 2, 3]]),
    "bad_uuid": raw_ext(17, b"short"),
    "model_without_resolver": ext(15, ["sklearn", b"x"]),
    "bad_model": ext(15, [1, b"x"]),
    "ext_payload_not_msgpack": raw_ext(2, b"\xc1\xc1"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_raises_format_error(name):
    with pytest.raises(FormatError) as info:
        decode(HOSTILE[name], source="store/gen-1/risk")
    # exactly FormatError, except a newer writer's intact data (not damage: see NewerFormatError)
    assert type(info.value) is (NewerFormatError if name == "newer_version" else FormatError)
    assert info.value.field == "store/gen-1/risk"
    assert str(info.value).startswith("store/gen-1/risk: ")


def test_newer_version_says_upgrade():
    with pytest.raises(NewerFormatError, match=r"newer persistkit .* upgrade persistkit"):
        decode(HOSTILE["newer_version"])


def test_msgpack_timestamp_ext_never_leaks_a_foreign_type():
    # ext -1 is decoded by msgpack itself before ext_hook; it must not become msgpack.Timestamp
    out = decode(bytes([1]) + b"\x91\xd6\xff\x00\x00\x00\x01")
    assert out == [1_000_000_000] and type(out[0]) is int


def test_decimal_garbage_is_refused_even_without_the_decimal_trap():
    with decimal.localcontext() as ctx:
        ctx.traps[decimal.InvalidOperation] = False
        assert decimal.Decimal("garbage").is_nan()  # what the context alone would do
        with pytest.raises(FormatError):
            decode(HOSTILE["bad_decimal"])
        assert decode(encode(decimal.Decimal("NaN"))).is_nan()


def test_time_zone_payloads_cannot_recurse():
    tz = msgpack.packb(None)
    for _ in range(5000):  # a datetime whose zone is a datetime whose zone is ...
        tz = msgpack.packb(msgpack.ExtType(8, struct.pack("<HBBBBBIB", 2020, 1, 1, 0, 0, 0, 0, 0) + tz))
    with pytest.raises(FormatError, match="bad time zone"):
        decode(raw_ext(8, struct.pack("<HBBBBBIB", 2020, 1, 1, 0, 0, 0, 0, 0) + tz))


def test_deep_nesting_is_bounded():
    with pytest.raises(FormatError):
        decode(bytes([1]) + b"\x91" * 100_000 + b"\xc0")
    with pytest.raises(FormatError, match="nesting deeper than 32"):
        decode(nested_ext_chain(40))
    with pytest.raises(FormatError, match="deeper than 3"):
        decode(encode(((((1,),),),)), limits=TreeLimits(max_depth=3))
    assert decode(encode((((1,),),)), limits=TreeLimits(max_depth=3)) == (((1,),),)
    assert decode(nested_ext_chain(60), limits=TreeLimits(max_depth=64)) is not None


def test_tree_limits_are_validated_and_max_bytes_enforced():
    with pytest.raises(ValueError, match="max_depth must be between 0 and 64"):
        TreeLimits(max_depth=65)
    data = encode(list(range(100)))
    assert decode(data, limits=TreeLimits(max_bytes=len(data))) == list(range(100))
    with pytest.raises(FormatError, match=r"TreeLimits\.max_bytes") as info:
        decode(data, limits=TreeLimits(max_bytes=len(data) - 1))
    assert type(info.value) is FormatError


def test_nested_ext_values_fit_small_thread_stacks():
    """Each nested ext level once cost ~50 KB of C stack (a segfault, not an error)."""
    child = textwrap.dedent(
        """
        import sys, threading, msgpack
        from persistkit.errors import FormatError
        from persistkit.format.tree import TreeLimits, decode, encode
        out = []
        def run():
            value = 1
            for _ in range(32):
                value = (value,)
            out.append(decode(encode(value)) == value)
            chain = msgpack.packb(1)
            for _ in range(2000):
                chain = msgpack.packb(msgpack.ExtType(2, b"\\x91" + chain))
            for limits in (None, TreeLimits(max_depth=64)):
                try:
                    decode(b"\\x01" + chain, limits=limits)
                except FormatError:
                    out.append("FormatError")
        threading.stack_size(256 * 1024)
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        print(out)
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"child died with {proc.returncode}: {proc.stderr[-2000:]}"
    assert proc.stdout.strip() == "[True, 'FormatError', 'FormatError']"


def peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def refuse(data):
    def run():
        with pytest.raises(FormatError):
            decode(data)

    return run


@pytest.mark.parametrize(
    "name",
    [
        "shape_mismatch",
        "huge_array_header",
        "huge_str_header",
        "zero_size_str_array",
        "zero_size_unicode_array",
    ],
)
def test_tiny_input_cannot_allocate_much(name):
    assert len(HOSTILE[name]) < 100
    assert peak_bytes(refuse(HOSTILE[name])) < 1_000_000


def test_claimed_lengths_cannot_multiply_across_nesting():
    """msgpack allocates arrays at their declared length before reading them; nested claims
    (and nested ext payloads, unpacked while the outer arrays are alive) would multiply."""
    claim = b"\xdd" + (10_000).to_bytes(4, "big")  # "an array of 10,000 items"
    flat = bytes([1]) + claim * 2_000
    inner = b"\xc0"
    for _ in range(6):
        inner = msgpack.packb(msgpack.ExtType(2, claim * 1_000 + inner))
    for data in (flat, bytes([1]) + inner):
        assert len(data) < 64_000
        assert peak_bytes(refuse(data)) < 4_000_000  # unchecked: 80 MB per level


def test_every_truncation_is_rejected():
    value = {
        "examples": EXAMPLES,
        "arrays": {k: ARRAYS[k] for k in ("float32", "structured", "fortran")},
        "scalars": SCALARS[:4],
        "records": Records([{"t": dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "x": 1.0}] * 3),
    }
    data = encode(value)
    for cut in range(len(data)):
        with pytest.raises(FormatError):
            decode(data[:cut])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_format_error_or_decode_to_supported_values(data):
    try:
        out = decode(b"\x01" + data)
    except FormatError as err:
        assert type(err) in (FormatError, NewerFormatError)  # a flipped version byte reads as newer
    else:
        assert_supported(out)


# -- properties -----------------------------------------------------------------------------

FIXED_ZONES = st.builds(
    dt.timezone, st.timedeltas(min_value=dt.timedelta(hours=-23), max_value=dt.timedelta(hours=23))
) | st.builds(
    dt.timezone,
    st.timedeltas(min_value=dt.timedelta(hours=-23), max_value=dt.timedelta(hours=23)),
    st.sampled_from(["CEST", "EST", "UTC", ""]),
)
ZONES = st.none() | st.just(dt.UTC) | FIXED_ZONES | st.timezones()
ARRAY_DTYPES = (
    hnp.scalar_dtypes()
    | hnp.byte_string_dtypes()
    | hnp.unicode_string_dtypes()
    | hnp.array_dtypes(subtype_strategy=hnp.scalar_dtypes(), max_size=3)
)


def numpy_scalars(*, dtypes=ARRAY_DTYPES):
    return dtypes.flatmap(lambda d: hnp.arrays(d, shape=())).map(lambda a: a[()])


def numpy_arrays(*, max_dims=3, max_side=3):
    arrays = hnp.arrays(ARRAY_DTYPES, hnp.array_shapes(min_dims=0, max_dims=max_dims, max_side=max_side))
    return arrays | arrays.map(np.asfortranarray)


def hashable_values(*, max_leaves=5):
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.integers(min_value=-(2**200), max_value=2**200)
        | st.text(max_size=5)
        | st.binary(max_size=5)
        | st.floats()
        | st.decimals().filter(lambda d: not d.is_snan())  # signaling NaNs cannot be hashed
        | st.datetimes(timezones=ZONES)
        | st.dates()
        | st.uuids(),
        lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
        max_leaves=max_leaves,
    )


def leaf_values():
    return (
        st.none()
        | st.booleans()
        | st.integers()
        | st.integers(min_value=-(2**300), max_value=2**300)
        | st.floats()
        | st.text(max_size=10)
        | st.binary(max_size=10)
        | st.complex_numbers()
        | st.decimals()
        | st.datetimes(timezones=ZONES)
        | st.dates()
        | st.times(timezones=ZONES)
        | st.timedeltas()
        | st.uuids()
        | numpy_arrays()
        | numpy_scalars()
    )


def tree_values(*, max_leaves=12):
    return st.recursive(
        leaf_values(),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.tuples(inner, inner)
            | st.dictionaries(hashable_values(), inner, max_size=4)
            | st.sets(hashable_values(), max_size=4)
            | st.frozensets(hashable_values(), max_size=3)
            | st.builds(collections.deque, st.lists(inner, max_size=3), st.none() | st.integers(3, 5))
            | st.builds(
                collections.OrderedDict,
                st.dictionaries(st.text(max_size=3) | hashable_values(), inner, max_size=3),
            )
            | st.lists(inner, max_size=4).map(Records)
        ),
        max_leaves=max_leaves,
    )


def as_decoded(value):
    """What decode returns for ``value``: Records come back as plain lists."""
    if type(value) is Records:
        return [as_decoded(v) for v in value]
    if type(value) in (list, tuple):
        return type(value)(as_decoded(v) for v in value)
    if type(value) is collections.deque:
        return collections.deque((as_decoded(v) for v in value), value.maxlen)
    if type(value) in (dict, collections.OrderedDict):
        return type(value)((k, as_decoded(v)) for k, v in value.items())
    return value


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree_values())
def test_property_exact_roundtrip(value):
    same(as_decoded(value), decode(encode(value)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree_values(max_leaves=6), st.data())
def test_property_corrupted_encodings_raise_format_error_or_decode_to_supported_values(value, data):
    encoded = bytearray(encode(value))
    for _ in range(data.draw(st.integers(1, 3), label="flips")):
        i = data.draw(st.integers(0, len(encoded) - 1), label="offset")
        encoded[i] ^= data.draw(st.integers(1, 255), label="mask")
    try:
        out = decode(bytes(encoded))
    except FormatError as err:
        assert type(err) in (FormatError, NewerFormatError)  # a flipped version byte reads as newer
    else:
        assert_supported(out)


# -- column storage for uniform rows ------------------------------------------------

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

RECORDS = {
    "dict_rows": [
        {"id": i, "when": T0 + dt.timedelta(seconds=i), "pnl": i * 0.5, "tag": ("a", i)} for i in range(50)
    ],
    "tuple_rows": [(T0 + dt.timedelta(minutes=i), float(i)) for i in range(50)],
    "naive_datetimes": [(dt.datetime(1960, 1, 1) + dt.timedelta(days=i),) for i in range(5)],
    "extreme_datetimes": [(dt.datetime.min,), (dt.datetime.max,)],
    "offset_zone": [{"t": dt.datetime(2020, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))}]
    * 3,
    "named_zones_kept_apart": [
        {"t": dt.datetime(2020, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=2), "CEST"))},
        {"t": dt.datetime(2020, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=2)))},
    ],
    "dst_zone_kept_per_value": [
        {"t": dt.datetime(2021, 11, 7, 1, 30, fold=f, tzinfo=NEW_YORK)} for f in (0, 1)
    ],
    "mixed_rows": [{"a": 1}, {"b": 2}, (1, 2), "x"],
    "mixed_column": [{"v": 1}, {"v": T0}, {"v": None}],
    "non_str_keys": [{1: "a"}, {1: "b"}],
    "empty": [],
    "empty_dicts": [{}, {}],
    "empty_tuples": [(), ()],
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
        ["dict", ["a"], 1, [[2**62]], [["dt", None]]],
        ["dict", ["a"], 1, [[1]], ["zz"]],
        ["nope", 0, 0, [], []],
        ["dict", ["a"], 10**9, [[]], ["v"]],
        ["dict", [], 10**9, [], []],
        ["dict", [[1]], 1, [[1]], ["v"]],
        ["dict", ["a"], 1, [[1]]],
    ],
    ids=[
        "short-column",
        "key-mismatch",
        "arity",
        "bad-dt",
        "dt-overflow",
        "bad-kind",
        "bad-kind2",
        "huge-count",
        "no-columns",
        "unhashable-key",
        "wrong-arity",
    ],
)
def test_hostile_records_raise_format_error(payload):
    with pytest.raises(FormatError) as info:
        decode(ext(18, payload))
    assert type(info.value) is FormatError


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "id": st.integers(),
                "t": st.datetimes(timezones=st.just(dt.UTC) | FIXED_ZONES),
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
