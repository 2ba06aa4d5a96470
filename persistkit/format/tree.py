"""A safe codec for state values: exact round trips, never pickle.

Stability: this is a storage contract. ``persistkit.state`` (``BoundedLog``
checkpoints use ``Records``), the bundle codecs and the golden files in
``fixtures/`` depend on it. Extend it only by adding ext codes; every existing
file must keep decoding (``tests/format/test_tree.py``,
``tests/state/test_golden_v1.py``, ``tests/test_bundle.py``).

``encode`` turns a tree of plain values into bytes; ``decode`` turns bytes
back into the same tree, equal in value *and* type. Decoding never imports or
calls anything named by the input, and every limit is relative to the input
size, so hostile bytes cannot run code or exhaust memory: they raise
``FormatError``.

Wire format (a storage contract: codes are never reused)::

    byte 0      codec version (1)
    bytes 1..   one msgpack object; maps may have any supported hashable keys

    ext  type                 payload (msgpack unless noted)
    ---  -------------------  --------------------------------------------------
      1  int beyond 64 bits   signed big-endian two's complement bytes (raw)
      2  tuple                array of items
      3  set                  array of items
      4  frozenset            array of items
      5  complex              [real, imag]
      6  decimal.Decimal      str(value) (UTF-8, raw)
      7  collections.deque    [maxlen or nil, [items]]
      8  datetime.datetime    struct "<HBBBBBIB" (y, mo, d, h, mi, s, us, fold) + msgpack tz
      9  datetime.date        [y, mo, d]
     10  datetime.time        [h, mi, s, us, fold, tz]
     11  datetime.timedelta   [days, seconds, microseconds]
     12  numpy.ndarray        [dtype descr, shape, fortran order, raw bytes]
     13  numpy scalar         [dtype descr, raw bytes]
     14  OrderedDict          [[key, value], ...]
     15  embedded model       [codec name, payload]   (see ``model_hook``)
     16  (reserved)
     17  uuid.UUID            16 raw bytes
     18  Records (a list)     ["dict"|"tuple", keys or arity, row count, [column, ...], [kind, ...]]
                              column kinds: "v" (values, packed as usual) or "dt" (datetimes of one
                              time zone as microseconds since the epoch, plus ["dt", tz])

    tz: nil | ["offset", days, seconds, microseconds, name or nil] | ["zone", key]

One deliberate conversion: ``bytearray`` and ``memoryview`` are stored as
``bytes`` (msgpack's C packer takes them natively, and a Python pre-walk of
every value to catch them would cost more than the feature is worth).

Hand-written on purpose: msgpack gives C-speed packing for the common types,
and the ext table above is the minimum needed for exact types without pickle.
"""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from persistkit.errors import FormatError, PersistkitError, UnsupportedTypeError

__all__ = ["CODEC_VERSION", "ModelHook", "ModelResolver", "Records", "TreeLimits", "decode", "encode"]


class Records(list):  # type: ignore[type-arg]
    """A list of uniform rows (dicts with the same keys, or tuples of one length), stored by column.

    Histories such as trade logs are thousands of rows of the same shape;
    column storage packs each field in one go instead of calling back into
    Python for every datetime and tuple. It decodes as a plain ``list``.
    """


CODEC_VERSION = 1

ModelHook = Callable[[object], "tuple[str, bytes] | None"]
ModelResolver = Callable[[str, bytes], object]

_BIGINT, _TUPLE, _SET, _FROZENSET, _COMPLEX, _DECIMAL, _DEQUE = 1, 2, 3, 4, 5, 6, 7
_DATETIME, _DATE, _TIME, _TIMEDELTA, _NDARRAY, _NPSCALAR, _ODICT = 8, 9, 10, 11, 12, 13, 14
_MODEL, _UUID, _RECORDS = 15, 17, 18
_EPOCH = dt.datetime(1970, 1, 1)
_MICRO = dt.timedelta(microseconds=1)

_DT_FIELDS = struct.Struct("<HBBBBBIB")
_MAX_DEPTH = 256  # containers of any kind, checked when locating an encoding problem
# Nesting of ext-typed containers (tuple, set, frozenset, deque, OrderedDict, ...).
# Each level is a nested msgpack unpack with ~40 KB of C stack, so it is capped
# well below what an 8 MB thread stack holds; encode refuses what decode would.
_MAX_EXT_DEPTH = 32


@dataclass(frozen=True)
class TreeLimits:
    """Decoding limits. Sizes are also capped by the input length itself."""

    max_depth: int = _MAX_EXT_DEPTH
    max_bigint_bytes: int = 64 * 1024
    max_decimal_chars: int = 10_000
    max_ndim: int = 64


class _Unsupported(Exception):
    pass


class _TooDeep(Exception):
    pass


# -- encoding ------------------------------------------------------------------


def _tz_encode(tz: dt.tzinfo | None) -> list[Any] | None:
    if tz is None:
        return None
    if type(tz) is dt.timezone:
        offset = tz.utcoffset(None)
        name = tz.tzname(None)
        default_name = dt.timezone(offset).tzname(None)
        return [
            "offset",
            offset.days,
            offset.seconds,
            offset.microseconds,
            None if name == default_name else name,
        ]
    if type(tz).__module__ == "zoneinfo" and type(tz).__name__ == "ZoneInfo":
        key = getattr(tz, "key", None)
        if isinstance(key, str):
            return ["zone", key]
    raise _Unsupported(tz)


class _Encoder:
    def __init__(self, model_hook: ModelHook | None) -> None:
        self.model_hook = model_hook
        self.depth = 0
        self._tz_cache: dict[dt.tzinfo | None, bytes] = {}
        self._packers: list[msgpack.Packer] = []

    def tz_bytes(self, tz: dt.tzinfo | None) -> bytes:
        cached = self._tz_cache.get(tz)
        if cached is None:
            # not self.pack: the packer of the current level is busy packing our caller
            cached = self._tz_cache[tz] = msgpack.packb(_tz_encode(tz))
        return cached

    def pack(self, obj: object) -> bytes:
        # One reusable Packer per nesting level (a level's packer is busy while
        # `default` runs for its children): creating a Packer per tuple costs
        # more than packing the tuple.
        while len(self._packers) <= self.depth:
            self._packers.append(msgpack.Packer(default=self.default, strict_types=True, use_bin_type=True))
        return self._packers[self.depth].pack(obj)  # type: ignore[no-any-return]

    def ext(self, code: int, obj: object) -> msgpack.ExtType:
        self.depth += 1
        try:
            if self.depth > _MAX_EXT_DEPTH:
                raise _TooDeep
            return msgpack.ExtType(code, self.pack(obj))
        finally:
            self.depth -= 1

    def default(self, obj: object) -> Any:
        t = type(obj)
        if t is int:
            n = obj  # beyond the 64-bit range msgpack handles natively
            assert isinstance(n, int)
            return msgpack.ExtType(_BIGINT, n.to_bytes((n.bit_length() + 8) // 8, "big", signed=True))
        if t is tuple:
            return self.ext(_TUPLE, list(obj))  # type: ignore[call-overload]
        if t is set:
            return self.ext(_SET, list(obj))  # type: ignore[call-overload]
        if t is frozenset:
            return self.ext(_FROZENSET, list(obj))  # type: ignore[call-overload]
        if t is complex:
            assert isinstance(obj, complex)
            return self.ext(_COMPLEX, [obj.real, obj.imag])
        if t is decimal.Decimal:
            return msgpack.ExtType(_DECIMAL, str(obj).encode())
        if t is collections.deque:
            assert isinstance(obj, collections.deque)
            return self.ext(_DEQUE, [obj.maxlen, list(obj)])
        if t is dt.datetime:
            # The hottest type in trading state (every trade has two): fixed-width fields
            # plus a cached time zone, instead of a nested msgpack list.
            assert isinstance(obj, dt.datetime)
            return msgpack.ExtType(
                _DATETIME,
                _DT_FIELDS.pack(
                    obj.year, obj.month, obj.day, obj.hour, obj.minute, obj.second, obj.microsecond, obj.fold
                )
                + self.tz_bytes(obj.tzinfo),
            )
        if t is dt.date:
            assert isinstance(obj, dt.date)
            return self.ext(_DATE, [obj.year, obj.month, obj.day])
        if t is dt.time:
            assert isinstance(obj, dt.time)
            return self.ext(
                _TIME, [obj.hour, obj.minute, obj.second, obj.microsecond, obj.fold, _tz_encode(obj.tzinfo)]
            )
        if t is dt.timedelta:
            assert isinstance(obj, dt.timedelta)
            return self.ext(_TIMEDELTA, [obj.days, obj.seconds, obj.microseconds])
        if t is collections.OrderedDict:
            assert isinstance(obj, collections.OrderedDict)
            return self.ext(_ODICT, [[k, v] for k, v in obj.items()])
        if t is Records:
            assert isinstance(obj, Records)
            return self.records(obj)
        if t is uuid.UUID:
            assert isinstance(obj, uuid.UUID)
            return msgpack.ExtType(_UUID, obj.bytes)
        if t.__module__ == "numpy":
            packed = self.numpy(obj)
            if packed is not None:
                return packed
        if self.model_hook is not None:
            member = self.model_hook(obj)
            if member is not None:
                codec, payload = member
                return self.ext(_MODEL, [codec, payload])
        raise _Unsupported(obj)

    def records(self, rows: Records) -> msgpack.ExtType:
        """Column storage when every row has the same shape; otherwise a plain list (still exact)."""
        first = rows[0] if rows else None
        shape: Any = None
        if type(first) is dict and all(type(k) is str for k in first):
            keys = list(first)
            if all(type(r) is dict and list(r) == keys for r in rows):
                kind, shape, columns = "dict", keys, [[r[k] for r in rows] for k in keys]
        elif type(first) is tuple:
            n = len(first)
            if all(type(r) is tuple and len(r) == n for r in rows):
                kind, shape, columns = (
                    "tuple",
                    n,
                    [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(n)],
                )
        if shape is None or not columns:
            return self.ext(_RECORDS, ["list", 0, len(rows), [list(rows)], ["v"]])
        kinds: list[Any] = []
        packed: list[Any] = []
        for column in columns:
            uniform, tz = _uniform_datetimes(column)
            if uniform:
                base = _EPOCH.replace(tzinfo=tz)
                packed.append([(d - base) // _MICRO for d in column])
                kinds.append(["dt", _tz_encode(tz)])
            else:
                packed.append(column)
                kinds.append("v")
        return self.ext(_RECORDS, [kind, shape, len(rows), packed, kinds])

    def numpy(self, obj: object) -> msgpack.ExtType | None:
        import numpy as np

        if type(obj) is np.ndarray:
            if obj.dtype.hasobject:
                raise _Unsupported(obj)
            descr = np.lib.format.dtype_to_descr(obj.dtype)
            fortran = bool(obj.ndim > 1 and obj.flags.f_contiguous and not obj.flags.c_contiguous)
            raw = obj.tobytes(order="F" if fortran else "C")
            return self.ext(_NDARRAY, [descr, list(obj.shape), fortran, raw])
        if isinstance(obj, np.generic):
            if obj.dtype.hasobject:
                raise _Unsupported(obj)
            descr = np.lib.format.dtype_to_descr(obj.dtype)
            return self.ext(_NPSCALAR, [descr, np.asarray(obj).tobytes()])
        return None


def _uniform_datetimes(column: list[Any]) -> tuple[bool, dt.tzinfo | None]:
    """(True, shared tzinfo) if every value is a datetime with that fixed zone and fold 0."""
    if not column or type(column[0]) is not dt.datetime:
        return False, None
    tz = column[0].tzinfo
    if tz is not None and (type(tz) is not dt.timezone):
        return False, None  # zones with DST rules keep per-value storage (fold, offsets)
    for d in column:
        if type(d) is not dt.datetime or d.tzinfo is not tz or d.fold:
            return False, None
    return True, tz


def encode(value: object, *, root: str = "state", model_hook: ModelHook | None = None) -> bytes:
    """Encode ``value``; raise UnsupportedTypeError naming the path of a bad value.

    ``root`` names the value in error messages (``state['trades'][3]['when']``).
    ``model_hook`` may turn objects the codec does not know (models) into
    ``(codec name, payload)``; they are embedded and handed back to the
    ``model_resolver`` passed to ``decode``.
    """
    encoder = _Encoder(model_hook)
    try:
        return bytes([CODEC_VERSION]) + encoder.pack(value)
    except (_Unsupported, _TooDeep, TypeError, ValueError, OverflowError, RecursionError) as err:
        # The C packer cannot say where the bad value sits; walk the tree to find it.
        _locate(value, root, _Encoder(model_hook), err)
        raise UnsupportedTypeError(f"{root}: cannot be encoded ({err})", field=root) from err


def _unsupported(path: str, obj: object, why: str = "") -> UnsupportedTypeError:
    detail = f" ({why})" if why else ""
    return UnsupportedTypeError(
        f"{path}: {type(obj)!r}{detail} cannot be stored without pickle. Convert it to a supported type "
        "(dict, list, tuple, set, str, int, float, Decimal, datetime, numpy array, ...) in state_dict(), "
        "or register a codec for it.",
        field=path,
    )


_EXT_CONTAINERS = (tuple, set, frozenset, collections.deque, collections.OrderedDict)


def _locate(
    obj: object,
    path: str,
    encoder: _Encoder,
    cause: BaseException,
    depth: int = 0,
    stack: frozenset[int] = frozenset(),
    ext_depth: int = 0,
) -> None:
    """Raise UnsupportedTypeError at the first value the fast path could not encode."""
    t = type(obj)
    if t in _EXT_CONTAINERS:
        ext_depth += 1
    if depth > _MAX_DEPTH or ext_depth > _MAX_EXT_DEPTH:
        raise UnsupportedTypeError(
            f"{path}: nested too deeply (more than {_MAX_DEPTH} containers, or more than {_MAX_EXT_DEPTH} "
            "tuples/sets/deques inside each other); flatten the structure.",
            field=path,
        ) from cause
    if t in (type(None), bool, str, bytes, float, int):
        return
    children: list[tuple[str, object]] = []
    if t in (list, tuple, collections.deque):
        assert isinstance(obj, list | tuple | collections.deque)
        children = [(f"{path}[{i}]", v) for i, v in enumerate(obj)]
    elif t in (dict, collections.OrderedDict):
        for k, v in obj.items():  # type: ignore[attr-defined]
            _locate(k, f"{path}<key {k!r}>", encoder, cause, depth + 1, stack, ext_depth)
            children.append((f"{path}[{k!r}]", v))
    elif t in (set, frozenset):
        children = [(f"{path}{{{v!r}}}", v) for v in obj]  # type: ignore[attr-defined]
    elif t is Records:
        assert isinstance(obj, Records)
        children = [(f"{path}[{i}]", v) for i, v in enumerate(obj)]
    else:
        try:
            encoder.pack(obj)
        except (_Unsupported, _TooDeep, TypeError, ValueError, OverflowError) as err:
            inner = err.args[0] if isinstance(err, _Unsupported) and err.args else obj
            why = (
                "object dtype"
                if inner is obj and getattr(getattr(obj, "dtype", None), "hasobject", False)
                else ""
            )
            if inner is not obj:
                why = f"holds {type(inner)!r}"
            raise _unsupported(path, obj, why) from cause
        return
    if id(obj) in stack:
        raise UnsupportedTypeError(f"{path}: reference cycle; state must be a tree.", field=path) from cause
    inner_stack = stack | {id(obj)}
    for child_path, child in children:
        _locate(child, child_path, encoder, cause, depth + 1, inner_stack, ext_depth)


# -- decoding ------------------------------------------------------------------


class _Decoder:
    def __init__(self, total: int, limits: TreeLimits, resolver: ModelResolver | None, source: str) -> None:
        self.total = max(total, 1)
        self.limits = limits
        self.resolver = resolver
        self.source = source
        self.depth = 0

    def fail(self, what: str) -> FormatError:
        return FormatError(
            f"{self.source}: malformed state data ({what}). The file is damaged or was not written by "
            "persistkit; restore it from a backup or an older generation.",
            field=self.source,
        )

    def unpack(self, data: bytes) -> Any:
        n = len(data)
        return msgpack.unpackb(
            data,
            ext_hook=self.ext_hook,
            strict_map_key=False,
            raw=False,
            use_list=True,
            max_str_len=n,
            max_bin_len=n,
            max_array_len=n,
            max_map_len=n,
            max_ext_len=n,
        )

    def ext_hook(self, code: int, data: bytes) -> Any:
        self.depth += 1
        try:
            if self.depth > self.limits.max_depth:
                raise self.fail(f"nesting deeper than {self.limits.max_depth}")
            return self.build(code, data)
        finally:
            self.depth -= 1

    def items(self, data: bytes, n: int | None = None) -> list[Any]:
        value = self.unpack(data)
        if type(value) is not list or (n is not None and len(value) != n):
            raise self.fail("bad ext payload")
        return value

    def build(self, code: int, data: bytes) -> Any:
        if code == _BIGINT:
            if not data or len(data) > self.limits.max_bigint_bytes:
                raise self.fail("bad big integer")
            return int.from_bytes(data, "big", signed=True)
        if code == _TUPLE:
            return tuple(self.items(data))
        if code == _SET:
            return set(self.items(data))
        if code == _FROZENSET:
            return frozenset(self.items(data))
        if code == _COMPLEX:
            real, imag = self.items(data, 2)
            if type(real) is not float or type(imag) is not float:
                raise self.fail("bad complex")
            return complex(real, imag)
        if code == _DECIMAL:
            if len(data) > self.limits.max_decimal_chars:
                raise self.fail("decimal too long")
            try:
                return decimal.Decimal(data.decode("ascii"))
            except (UnicodeDecodeError, decimal.InvalidOperation) as err:
                raise self.fail("bad decimal") from err
        if code == _DEQUE:
            maxlen, values = self.items(data, 2)
            if not (maxlen is None or (type(maxlen) is int and maxlen >= 0)) or type(values) is not list:
                raise self.fail("bad deque")
            return collections.deque(values, maxlen)
        if code == _DATETIME:
            if len(data) <= _DT_FIELDS.size:
                raise self.fail("bad datetime")
            y, mo, d, h, mi, s, us, fold = _DT_FIELDS.unpack_from(data)
            tz = self.tz(self.unpack(data[_DT_FIELDS.size :]))
            return dt.datetime(y, mo, d, h, mi, s, us, tzinfo=tz, fold=fold)
        if code == _DATE:
            y, mo, d = self.items(data, 3)
            return dt.date(y, mo, d)
        if code == _TIME:
            h, mi, s, us, fold, tz = self.items(data, 6)
            return dt.time(h, mi, s, us, tzinfo=self.tz(tz), fold=fold)
        if code == _TIMEDELTA:
            days, seconds, micro = self.items(data, 3)
            return dt.timedelta(days=days, seconds=seconds, microseconds=micro)
        if code == _NDARRAY:
            return self.ndarray(*self.items(data, 4))
        if code == _NPSCALAR:
            descr, raw = self.items(data, 2)
            arr = self.ndarray(descr, [], False, raw)
            return arr[()]
        if code == _ODICT:
            pairs = self.items(data)
            if any(type(p) is not list or len(p) != 2 for p in pairs):
                raise self.fail("bad OrderedDict")
            return collections.OrderedDict((k, v) for k, v in pairs)
        if code == _MODEL:
            codec, payload = self.items(data, 2)
            if type(codec) is not str or type(payload) is not bytes:
                raise self.fail("bad embedded model")
            if self.resolver is None:
                raise FormatError(
                    f"{self.source}: this value embeds a {codec!r} model; load it through the API that "
                    "saved it (StateStore or load_bundle), which knows how to rebuild models.",
                    field=self.source,
                )
            return self.resolver(codec, payload)
        if code == _RECORDS:
            return self.records(data)
        if code == _UUID:
            if len(data) != 16:
                raise self.fail("bad UUID")
            return uuid.UUID(bytes=data)
        raise self.fail(f"unknown ext type {code}; it may come from a newer persistkit")

    def records(self, data: bytes) -> list[Any]:
        kind, shape, count, columns, kinds = self.items(data, 5)
        if type(count) is not int or type(columns) is not list or type(kinds) is not list:
            raise self.fail("bad records")
        if len(columns) != len(kinds) or any(type(c) is not list or len(c) != count for c in columns):
            raise self.fail("records columns do not match the row count")
        if kind == "list":
            return list(columns[0]) if columns else []
        decoded = []
        for column, ckind in zip(columns, kinds, strict=True):
            if ckind == "v":
                decoded.append(column)
            elif type(ckind) is list and len(ckind) == 2 and ckind[0] == "dt":
                base = _EPOCH.replace(tzinfo=self.tz(ckind[1]))
                if any(type(v) is not int for v in column):
                    raise self.fail("bad datetime column")
                decoded.append([base + v * _MICRO for v in column])
            else:
                raise self.fail("unknown records column kind")
        if not decoded:
            raise self.fail("records without columns")  # never written; would let a few bytes claim any size
        rows = list(zip(*decoded, strict=True))
        if kind == "dict" and type(shape) is list and len(shape) == len(decoded):
            return [dict(zip(shape, row, strict=True)) for row in rows]
        if kind == "tuple" and type(shape) is int and shape == len(decoded):
            return rows
        raise self.fail("bad records shape")

    def tz(self, spec: Any) -> dt.tzinfo | None:
        if spec is None:
            return None
        if type(spec) is list and len(spec) == 5 and spec[0] == "offset":
            _, days, seconds, micro, name = spec
            offset = dt.timedelta(days=days, seconds=seconds, microseconds=micro)
            return dt.timezone(offset) if name is None else dt.timezone(offset, name)
        if type(spec) is list and len(spec) == 2 and spec[0] == "zone" and type(spec[1]) is str:
            import zoneinfo

            try:
                return zoneinfo.ZoneInfo(spec[1])
            except (zoneinfo.ZoneInfoNotFoundError, ValueError) as err:
                raise FormatError(
                    f"{self.source}: time zone {spec[1]!r} is not known on this machine; install tzdata.",
                    field=self.source,
                ) from err
        raise self.fail("bad time zone")

    def ndarray(self, descr: Any, shape: Any, fortran: Any, raw: Any) -> Any:
        import numpy as np

        if type(shape) is not list or len(shape) > self.limits.max_ndim:
            raise self.fail("bad array shape")
        if (
            any(type(n) is not int or n < 0 for n in shape)
            or type(raw) is not bytes
            or type(fortran) is not bool
        ):
            raise self.fail("bad array header")
        try:
            dtype = np.lib.format.descr_to_dtype(descr)
        except Exception as err:  # numpy raises several types for a bad descr
            raise self.fail(f"bad dtype {descr!r:.80}") from err
        if dtype.hasobject:
            raise self.fail("object dtype refused: it would need pickle")
        count = 1
        for n in shape:
            count *= n
        if count * dtype.itemsize != len(raw):
            raise self.fail(f"array data is {len(raw)} bytes, shape {shape} needs {count * dtype.itemsize}")
        try:
            dims = tuple(shape)
            if dtype.itemsize == 0:
                return np.empty(dims, dtype=dtype, order="F" if fortran else "C")
            flat = np.frombuffer(bytearray(raw), dtype=dtype)  # bytearray: writeable, owned
            return flat.reshape(dims, order="F" if fortran else "C")
        except (ValueError, TypeError, MemoryError) as err:
            raise self.fail("bad array") from err


def decode(
    data: bytes | bytearray | memoryview,
    *,
    limits: TreeLimits | None = None,
    model_resolver: ModelResolver | None = None,
    source: str = "value",
) -> object:
    """Decode bytes from ``encode``; any malformed input raises FormatError naming ``source``."""
    buf = bytes(data)
    decoder = _Decoder(len(buf), limits or TreeLimits(), model_resolver, source)
    if not buf:
        raise decoder.fail("empty")
    if buf[0] != CODEC_VERSION:
        if buf[0] > CODEC_VERSION:
            raise FormatError(
                f"{source}: written by a newer persistkit (tree codec {buf[0]}); "
                "upgrade persistkit to read it.",
                field=source,
            )
        raise decoder.fail(f"unknown codec version {buf[0]}")
    try:
        return decoder.unpack(buf[1:])
    except PersistkitError:
        raise  # our own typed errors, including those of a model resolver
    except Exception as err:  # msgpack, datetime and numpy raise many types for hostile input
        raise decoder.fail(f"{type(err).__name__}: {err}"[:200]) from err
