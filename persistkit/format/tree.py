"""A safe codec for state values: exact round trips, never pickle.

Size: one wire format in one file, over 500 lines by design (kept whole on purpose).

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
     13  numpy scalar         [dtype descr, raw bytes]  (empty when the itemsize is 0)
     14  OrderedDict          [[key, value], ...]
     15  embedded model       [codec name, payload]   (see ``model_hook``)
     16  (reserved)
     17  uuid.UUID            16 raw bytes
     18  Records (a list)     ["dict"|"tuple", keys or arity, row count, [column, ...], [kind, ...]]
                              column kinds: "v" (values, packed as usual) or "dt" (datetimes of one
                              time zone as microseconds since the epoch, plus ["dt", tz])

    tz: nil | ["offset", days, seconds, microseconds, name or nil] | ["zone", key]
        (a fixed offset named exactly as its default, e.g. timezone(timedelta(0), "UTC"),
        is stored without the name: it comes back equal, same tzname, as timezone.utc)

dtype descrs are ``numpy.lib.format.dtype_to_descr`` output, rebuilt with
``descr_to_dtype`` (no code runs). Object dtypes, dtype metadata, and dtypes
that a descr cannot describe exactly are refused on both sides.

One deliberate conversion: ``bytearray`` and ``memoryview`` are stored as
``bytes`` (msgpack's C packer takes them natively, and a Python pre-walk of
every value to catch them would cost more than the feature is worth).

Nesting, the same on both sides (encode refuses what decode would refuse):

* lists and dicts: at most 1024 inside each other within one msgpack payload
  (msgpack's unpack stack). A tuple/set/frozenset payload is itself a list, so
  1023 fit in one.
* ext values with a msgpack payload (every code except 1, 6, 8 and 17): at
  most 32 inside each other (``TreeLimits.max_depth``). Big ints, Decimals,
  datetimes and UUIDs do not count. Their payloads hold no ext values; a
  datetime's time zone is unpacked with no ext_hook.

Why decoding is bounded:

* every msgpack length is capped by the input size, and every payload (the
  whole input, then each ext payload) is first walked with
  ``Unpacker.skip()``, which runs at C speed and allocates nothing. msgpack
  allocates each array at its declared length *before* it reads the
  elements, and ext payloads are unpacked while the outer arrays are still
  alive. Without the walk, 20 KB of nested headers that claim long arrays
  would allocate hundreds of MB.
* nesting of ext values (tuple in tuple ...) recurses through ``ext_hook``.
  ``msgpack.unpackb`` keeps a ~40 KB parser context on the C stack, so only
  the outermost level uses it. Deeper levels use reused, heap-allocated
  ``Unpacker`` objects, at about 2 KB of C stack per level. The default depth
  of 32 fits a 128 KiB thread stack, and the ceiling of 64 fits 160 KiB.
  With ``unpackb`` at every level, 24 nested tuples crashed a thread that
  had a 1 MiB stack.
* numpy shapes are checked against the payload before any allocation.
  Big integers and Decimal strings have size caps, which ``encode`` enforces
  too, so nothing is written that could not be read back.
* msgpack's own timestamp ext (-1) is never written. msgpack decodes it before
  ``ext_hook`` sees it, so a forged one comes back as an int (nanoseconds),
  never as a foreign type.

Hand-written on purpose: msgpack gives C-speed packing for the common types,
and the ext table above is the minimum needed for exact types without pickle.
"""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import re
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgpack

from persistkit.errors import FormatError, NewerFormatError, PersistkitError, UnsupportedTypeError

__all__ = ["CODEC_VERSION", "ModelHook", "ModelResolver", "Records", "TreeLimits", "decode", "encode"]


class Records(list):  # type: ignore[type-arg]
    """A list of uniform rows (dicts with the same keys, or tuples of one length), stored by column.

    Histories such as trade logs are thousands of rows of the same shape;
    column storage packs each field in one go instead of calling back into
    Python for every datetime and tuple. It decodes as a plain ``list``.
    """


CODEC_VERSION = 1
_VERSION_BYTE = bytes([CODEC_VERSION])

ModelHook = Callable[[object], "tuple[str, bytes] | None"]
ModelResolver = Callable[[str, bytes], object]

_BIGINT, _TUPLE, _SET, _FROZENSET, _COMPLEX, _DECIMAL, _DEQUE = 1, 2, 3, 4, 5, 6, 7
_DATETIME, _DATE, _TIME, _TIMEDELTA, _NDARRAY, _NPSCALAR, _ODICT = 8, 9, 10, 11, 12, 13, 14
_MODEL, _UUID, _RECORDS = 15, 17, 18
_EPOCH = dt.datetime(1970, 1, 1)
_MICRO = dt.timedelta(microseconds=1)

_DT_FIELDS = struct.Struct("<HBBBBBIB")
_NAN_TEXT = re.compile(r"[+-]?s?nan[0-9]*", re.IGNORECASE)  # str() of every NaN Decimal
_MAX_LEVELS = 1024  # lists/dicts inside each other in one msgpack payload: msgpack's unpack stack
# Nesting of ext-typed values (tuple, set, frozenset, deque, OrderedDict, ...) that encode
# writes and decode reads by default; TreeLimits may raise the decode side up to the ceiling.
_MAX_EXT_DEPTH = 32
_EXT_DEPTH_CEILING = 64  # C stack: see "Why decoding is bounded" above
_MAX_BIGINT_BYTES = 64 * 1024
_MAX_DECIMAL_CHARS = 10_000

# msgpack.ExtType(code, data) re-checks its arguments in Python; on the hot path the
# codec builds it directly (the code is a constant, the data is always bytes).
_new_tuple = tuple.__new__
_ExtType = msgpack.ExtType


@dataclass(frozen=True)
class TreeLimits:
    """Decoding limits. Sizes are also capped by the input length itself.

    ``max_depth`` counts nested ext values with msgpack payloads (see "Nesting"
    in the module docstring); it cannot exceed 64, because each level uses C
    stack. ``max_bytes`` refuses larger inputs outright (``None``: no cap).
    """

    max_depth: int = _MAX_EXT_DEPTH
    max_bigint_bytes: int = _MAX_BIGINT_BYTES
    max_decimal_chars: int = _MAX_DECIMAL_CHARS
    max_ndim: int = 64
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.max_depth <= _EXT_DEPTH_CEILING:
            raise ValueError(
                f"TreeLimits.max_depth must be between 0 and {_EXT_DEPTH_CEILING} (got {self.max_depth}): "
                "each level of nested tuples/sets/deques uses C stack while decoding."
            )


class _Unsupported(Exception):
    """Raised inside the packer's ``default``; args: (offending object, reason or "")."""


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
    raise _Unsupported(tz, f"time zone {type(tz)!r}: use datetime.timezone or zoneinfo.ZoneInfo")


def _dtype_problem(dtype: Any) -> str:
    """Why ``dtype`` cannot be stored exactly as a descr ("" if it can be, at this level and below)."""
    if dtype.kind not in "biufcmMSUVO":
        return f"dtype {dtype} is not a fixed-size numpy dtype"
    if dtype.hasobject:
        return "object dtype: its elements would need pickle"
    if dtype.metadata:
        return "dtype metadata cannot be stored"
    if dtype.subdtype is not None:
        return _dtype_problem(dtype.subdtype[0])
    for spec in (dtype.fields or {}).values():
        problem = _dtype_problem(spec[0])
        if problem:
            return problem
    return ""


def _portable_descr(dtype: Any) -> Any:
    from numpy.lib.format import descr_to_dtype, dtype_to_descr

    problem = _dtype_problem(dtype)
    if not problem:
        try:
            descr = dtype_to_descr(dtype)
        except ValueError:  # overlapping or out-of-order structured fields
            descr = None
        if descr is not None and descr_to_dtype(descr) == dtype:
            return descr
        problem = f"dtype {dtype} has no exact portable description"
    raise _Unsupported(dtype, problem)


class _Encoder:
    def __init__(self, model_hook: ModelHook | None) -> None:
        self.model_hook = model_hook
        self.depth = 0
        # Keyed by id() with the object kept alive: equal timezones can differ in name
        # (timezone(+2h, "CEST") == timezone(+2h)), and dtypes compare equal loosely.
        self._tz_cache: dict[int, tuple[dt.tzinfo | None, bytes]] = {}
        self._descr_cache: dict[int, tuple[Any, Any]] = {}
        self._packers: list[msgpack.Packer] = []

    def pack(self, obj: object) -> bytes:
        # One reusable Packer per nesting level (a level's packer is busy while
        # `default` runs for its children): creating a Packer per tuple costs
        # more than packing the tuple.
        while len(self._packers) <= self.depth:
            self._packers.append(msgpack.Packer(default=self.default, strict_types=True, use_bin_type=True))
        return self._packers[self.depth].pack(obj)  # type: ignore[no-any-return]

    def ext(self, code: int, obj: list[Any], nested: bool = True) -> Any:
        """An ext value whose payload packs ``obj`` (a list) with the packer of the next level.

        ``nested``: ``obj`` holds user values that may nest lists and dicts. msgpack packs
        1025 levels but unpacks 1024, so such payloads are packed inside a one-item list
        whose header is then dropped: the packer then refuses what the unpacker would.
        """
        depth = self.depth + 1
        if depth > _MAX_EXT_DEPTH:
            raise _TooDeep
        self.depth = depth
        try:
            packers = self._packers
            if len(packers) <= depth:
                packers.append(msgpack.Packer(default=self.default, strict_types=True, use_bin_type=True))
            if nested:
                return _new_tuple(_ExtType, (code, packers[depth].pack([obj])[1:]))
            return _new_tuple(_ExtType, (code, packers[depth].pack(obj)))
        finally:
            self.depth = depth - 1

    def default(self, obj: object) -> Any:
        handler = _ENCODERS.get(type(obj))
        if handler is not None:
            return handler(self, obj)
        if type(obj).__module__ == "numpy":
            if self.model_hook is not None and getattr(getattr(obj, "dtype", None), "hasobject", False):
                # object arrays are refused below; a hook may know how to store them as data
                member = self.model_hook(obj)
                if member is not None:
                    return self.ext(_MODEL, [member[0], member[1]], nested=False)
            packed = self.numpy(obj)
            if packed is not None:
                return packed
        if self.model_hook is not None:
            member = self.model_hook(obj)
            if member is not None:
                codec, payload = member
                return self.ext(_MODEL, [codec, payload], nested=False)
        raise _Unsupported(obj, "")

    def bigint(self, n: int) -> Any:
        # beyond the 64-bit range msgpack handles natively
        size = (n.bit_length() + 8) // 8
        if size > _MAX_BIGINT_BYTES:
            raise _Unsupported(n, f"an integer of {size} bytes; at most {_MAX_BIGINT_BYTES} are stored")
        return _new_tuple(_ExtType, (_BIGINT, n.to_bytes(size, "big", signed=True)))

    def decimal(self, value: decimal.Decimal) -> Any:
        text = str(value)
        if len(text) > _MAX_DECIMAL_CHARS:
            raise _Unsupported(value, f"a Decimal of {len(text)} characters; at most {_MAX_DECIMAL_CHARS}")
        return _new_tuple(_ExtType, (_DECIMAL, text.encode()))

    def datetime(self, obj: dt.datetime) -> Any:
        # The hottest type in trading state (every trade has two): fixed-width fields
        # plus a cached time zone, instead of a nested msgpack list.
        tz = obj.tzinfo
        entry = self._tz_cache.get(id(tz))
        if entry is None:
            # msgpack.packb, not self.pack: the packer of the current level is busy packing our caller
            entry = self._tz_cache[id(tz)] = (tz, msgpack.packb(_tz_encode(tz)))
        fields = _DT_FIELDS.pack(
            obj.year, obj.month, obj.day, obj.hour, obj.minute, obj.second, obj.microsecond, obj.fold
        )
        return _new_tuple(_ExtType, (_DATETIME, fields + entry[1]))

    def records(self, rows: Records) -> Any:
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

    def descr(self, dtype: Any) -> Any:
        entry = self._descr_cache.get(id(dtype))
        if entry is None:
            entry = self._descr_cache[id(dtype)] = (dtype, _portable_descr(dtype))
        return entry[1]

    def numpy(self, obj: object) -> Any:
        import numpy as np

        if type(obj) is np.ndarray:
            descr = self.descr(obj.dtype)
            fortran = bool(obj.ndim > 1 and obj.flags.f_contiguous and not obj.flags.c_contiguous)
            raw = obj.tobytes(order="F" if fortran else "C")
            return self.ext(_NDARRAY, [descr, list(obj.shape), fortran, raw], nested=False)
        if isinstance(obj, np.generic):
            descr = self.descr(obj.dtype)
            # np.str_("").tobytes() is 4 bytes although its dtype is <U0: store what the dtype says
            raw = obj.tobytes() if obj.dtype.itemsize else b""
            return self.ext(_NPSCALAR, [descr, raw], nested=False)
        return None


_ENCODERS: dict[type, Callable[[_Encoder, Any], Any]] = {
    int: _Encoder.bigint,
    tuple: lambda self, obj: self.ext(_TUPLE, list(obj)),
    set: lambda self, obj: self.ext(_SET, list(obj)),
    frozenset: lambda self, obj: self.ext(_FROZENSET, list(obj)),
    complex: lambda self, obj: self.ext(_COMPLEX, [obj.real, obj.imag], nested=False),
    decimal.Decimal: _Encoder.decimal,
    collections.deque: lambda self, obj: self.ext(_DEQUE, [obj.maxlen, list(obj)]),
    dt.datetime: _Encoder.datetime,
    dt.date: lambda self, obj: self.ext(_DATE, [obj.year, obj.month, obj.day], nested=False),
    dt.time: lambda self, obj: self.ext(
        _TIME,
        [obj.hour, obj.minute, obj.second, obj.microsecond, obj.fold, _tz_encode(obj.tzinfo)],
        nested=False,
    ),
    dt.timedelta: lambda self, obj: self.ext(
        _TIMEDELTA, [obj.days, obj.seconds, obj.microseconds], nested=False
    ),
    collections.OrderedDict: lambda self, obj: self.ext(_ODICT, [[k, v] for k, v in obj.items()]),
    Records: _Encoder.records,
    uuid.UUID: lambda self, obj: _new_tuple(_ExtType, (_UUID, obj.bytes)),
}


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
        # [value]: one level of nesting in hand, as in ext(); its 1-byte header becomes the version
        return _VERSION_BYTE + memoryview(encoder.pack([value]))[1:]
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


def _leaf_problem(obj: object) -> str | None:
    """For the leaf types msgpack packs natively: None if fine, else why not; "?" if not a leaf."""
    t = type(obj)
    if t is str:
        try:
            obj.encode()  # type: ignore[attr-defined]
        except UnicodeEncodeError:
            return "a str with a lone surrogate, which is not valid UTF-8"
        return None
    if t is int:
        size = (obj.bit_length() + 8) // 8  # type: ignore[attr-defined]
        return None if size <= _MAX_BIGINT_BYTES else f"an integer of {size} bytes"
    if t in (type(None), bool, bytes, float):
        return None
    return "?"


def _too_deep(path: str) -> UnsupportedTypeError:
    return UnsupportedTypeError(
        f"{path}: nested too deeply (more than {_MAX_LEVELS} lists/dicts inside each other, or more than "
        f"{_MAX_EXT_DEPTH} tuples/sets/deques/arrays/...); flatten the structure.",
        field=path,
    )


# Where an ext container's items sit in its own payload: tuple/set payloads are [items];
# deque [maxlen, [items]]; OrderedDict [[k, v], ...]; Records [.., [[column or rows]], ..].
_ITEM_LEVEL: dict[type, int] = {
    tuple: 2,
    set: 2,
    frozenset: 2,
    collections.deque: 3,
    collections.OrderedDict: 3,
    Records: 4,
}


def _locate(value: object, root: str, encoder: _Encoder, cause: BaseException) -> None:
    """Raise UnsupportedTypeError at the first value the fast path could not encode.

    Iterative (a state may nest deeper than Python's recursion limit), and counting nesting
    as the encoder does: lists/dicts per msgpack payload, ext values across payloads.
    """
    # (value, path, its level in the current payload, ext depth, ids of the containers above)
    pending: list[tuple[object, str, int, int, frozenset[int]]] = [(value, root, 1, 0, frozenset())]
    while pending:
        obj, path, level, ext_depth, above = pending.pop()
        t = type(obj)
        problem = _leaf_problem(obj)
        if problem is None:
            continue
        if problem != "?":
            raise _unsupported(path, obj, problem) from cause
        if t in _ITEM_LEVEL:
            ext_depth, item_level = ext_depth + 1, _ITEM_LEVEL[t]
            if ext_depth > _MAX_EXT_DEPTH:
                raise _too_deep(path) from cause
        elif t is list or t is dict:
            if level > _MAX_LEVELS:
                raise _too_deep(path) from cause
            item_level = level + 1
        else:
            encoder.depth = ext_depth  # so that its own ext nesting counts from here
            try:
                encoder.pack(obj)
            except _TooDeep:
                raise _too_deep(path) from cause
            except (_Unsupported, TypeError, ValueError, OverflowError) as err:
                why = ""
                if isinstance(err, _Unsupported) and len(err.args) == 2:
                    inner, why = err.args
                    if not why and inner is not obj:
                        why = f"holds {type(inner)!r}"
                raise _unsupported(path, obj, why) from cause
            finally:
                encoder.depth = 0
            continue
        if id(obj) in above:
            raise UnsupportedTypeError(
                f"{path}: reference cycle; state must be a tree.", field=path
            ) from cause
        inside = above | {id(obj)}
        children: list[tuple[object, str]] = []
        if t in (dict, collections.OrderedDict):
            for k, v in obj.items():  # type: ignore[attr-defined]
                children.append((k, f"{path}<key {k!r}>"))
                children.append((v, f"{path}[{k!r}]"))
        elif t in (set, frozenset):
            children = [(v, f"{path}{{{v!r}}}") for v in obj]  # type: ignore[attr-defined]
        else:
            assert isinstance(obj, list | tuple | collections.deque)
            children = [(v, f"{path}[{i}]") for i, v in enumerate(obj)]
        pending.extend(
            (child, child_path, item_level, ext_depth, inside) for child, child_path in reversed(children)
        )


# -- decoding ------------------------------------------------------------------


class _Decoder:
    def __init__(self, total: int, limits: TreeLimits, resolver: ModelResolver | None, source: str) -> None:
        self.limits = limits
        self.resolver = resolver
        self.source = source
        self.depth = 0
        self._tz_cache: dict[bytes, dt.tzinfo | None] = {}
        # Unpackers are reused (one per ext depth, since a level's unpacker is busy while its
        # ext_hook runs): creating one per tuple would cost more than unpacking the tuple.
        # Their limits are the whole input's size; the skip() walk bounds each payload.
        n = max(total, 1)
        self._caps: dict[str, Any] = {
            # ext -1 never reaches ext_hook and cannot be refused: make it a plain int (see above)
            "timestamp": 2,
            "max_str_len": n,
            "max_bin_len": n,
            "max_array_len": n,
            "max_map_len": n,
            "max_ext_len": n,
        }
        self._total = n
        self._checker = msgpack.Unpacker(max_buffer_size=n, **self._caps)
        self._unpackers: list[msgpack.Unpacker] = []
        self._plain = msgpack.Unpacker(max_buffer_size=n, **self._caps)  # no ext_hook: exts stay ExtType

    def check(self, data: bytes | memoryview) -> None:
        """Every declared element must be present before msgpack allocates room for it."""
        n = len(data)
        checker = self._checker
        start = checker.tell()
        checker.feed(data)
        checker.skip()
        if checker.tell() - start != n:
            raise self.fail("trailing bytes after the value")

    def unpack_plain(self, data: bytes) -> Any:
        """Unpack a payload that holds no ext values (a time zone spec); ext values stay inert."""
        self.check(data)
        self._plain.feed(data)
        return self._plain.unpack()

    def fail(self, what: str) -> FormatError:
        return FormatError(
            f"{self.source}: malformed state data ({what}). The file is damaged or was not written by "
            "persistkit; restore it from a backup or an older generation.",
            field=self.source,
        )

    def unpack(self, data: bytes | memoryview) -> Any:
        self.check(data)
        depth = self.depth
        if depth == 0:
            return msgpack.unpackb(data, ext_hook=self.ext_hook, strict_map_key=False, **self._caps)
        unpackers = self._unpackers
        while len(unpackers) < depth:
            unpackers.append(
                msgpack.Unpacker(
                    ext_hook=self.ext_hook, strict_map_key=False, max_buffer_size=self._total, **self._caps
                )
            )
        unpacker = unpackers[depth - 1]
        unpacker.feed(data)
        return unpacker.unpack()  # complete and exactly n bytes: the checker walked it

    def ext_hook(self, code: int, data: bytes) -> Any:
        builder = _BUILDERS.get(code)
        if builder is None:
            raise self.fail(f"unknown ext type {code}; it may come from a newer persistkit")
        if code in _NOT_NESTED:
            return builder(self, data)
        self.depth += 1
        try:
            if self.depth > self.limits.max_depth:
                raise self.fail(f"nesting deeper than {self.limits.max_depth}")
            return builder(self, data)
        finally:
            self.depth -= 1

    def items(self, data: bytes, n: int | None = None) -> list[Any]:
        value = self.unpack(data)
        if type(value) is not list or (n is not None and len(value) != n):
            raise self.fail("bad ext payload")
        return value

    def bigint(self, data: bytes) -> int:
        if not data or len(data) > self.limits.max_bigint_bytes:
            raise self.fail("bad big integer")
        return int.from_bytes(data, "big", signed=True)

    def complex(self, data: bytes) -> complex:
        real, imag = self.items(data, 2)
        if type(real) is not float or type(imag) is not float:
            raise self.fail("bad complex")
        return complex(real, imag)

    def decimal(self, data: bytes) -> decimal.Decimal:
        if len(data) > self.limits.max_decimal_chars:
            raise self.fail("decimal too long")
        try:
            text = data.decode("ascii")
            value = decimal.Decimal(text)
        except (UnicodeDecodeError, decimal.InvalidOperation) as err:
            raise self.fail("bad decimal") from err
        if value.is_nan() and not _NAN_TEXT.fullmatch(text):
            # a decimal context without the InvalidOperation trap turns garbage into NaN
            raise self.fail("bad decimal")
        return value

    def deque(self, data: bytes) -> collections.deque[Any]:
        maxlen, values = self.items(data, 2)
        if not (maxlen is None or (type(maxlen) is int and maxlen >= 0)) or type(values) is not list:
            raise self.fail("bad deque")
        return collections.deque(values, maxlen)

    def datetime(self, data: bytes) -> dt.datetime:
        size = _DT_FIELDS.size
        if len(data) <= size:
            raise self.fail("bad datetime")
        tz_bytes = data[size:]
        try:
            tz = self._tz_cache[tz_bytes]
        except KeyError:
            tz = self._tz_cache[tz_bytes] = self.tz(self.unpack_plain(tz_bytes))
        y, mo, d, h, mi, s, us, fold = _DT_FIELDS.unpack_from(data)
        return dt.datetime(y, mo, d, h, mi, s, us, tzinfo=tz, fold=fold)

    def time(self, data: bytes) -> dt.time:
        h, mi, s, us, fold, tz = self.items(data, 6)
        return dt.time(h, mi, s, us, tzinfo=self.tz(tz), fold=fold)

    def odict(self, data: bytes) -> collections.OrderedDict[Any, Any]:
        pairs = self.items(data)
        if any(type(p) is not list or len(p) != 2 for p in pairs):
            raise self.fail("bad OrderedDict")
        return collections.OrderedDict((k, v) for k, v in pairs)

    def model(self, data: bytes) -> object:
        codec, payload = self.items(data, 2)
        if type(codec) is not str or type(payload) is not bytes:
            raise self.fail("bad embedded model")
        if self.resolver is None:
            raise FormatError(
                f"{self.source}: this value embeds a {codec!r} model; load it through the API that "
                "saved it (StateStore or load_bundle), which knows how to rebuild models.",
                field=self.source,
            )
        try:
            return self.resolver(codec, payload)
        except (PersistkitError, ImportError):
            raise  # typed errors, and "pip install 'persistkit[extra]'" hints, pass through as they are
        except Exception as err:
            raise FormatError(
                f"{self.source}: the embedded {codec!r} model could not be rebuilt "
                f"({type(err).__name__}: {err!s:.200}). The file is damaged, or the model needs a "
                "different version of its library.",
                field=self.source,
            ) from err

    def uuid(self, data: bytes) -> uuid.UUID:
        if len(data) != 16:
            raise self.fail("bad UUID")
        return uuid.UUID(bytes=data)

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

    def npscalar(self, data: bytes) -> Any:
        descr, raw = self.items(data, 2)
        return self.ndarray(descr, [], False, raw)[()]

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
        if dtype.itemsize == 0 and dtype.kind != "V" and shape:
            # numpy widens S0/U0 arrays to S1/U1, so a huge shape would allocate for real;
            # encode writes them only as scalars (shape []).
            raise self.fail(f"zero-size {dtype} array")
        order: Literal["C", "F"] = "F" if fortran else "C"
        try:
            if dtype.itemsize == 0:
                return np.zeros(tuple(shape), dtype=dtype, order=order)  # zeros: S0 -> S1 is allocated
            flat = np.frombuffer(bytearray(raw), dtype=dtype)  # bytearray: writeable, owned
            return flat.reshape(tuple(shape), order=order)
        except (ValueError, TypeError, MemoryError) as err:
            raise self.fail("bad array") from err


# Ext values encode writes without a nested packer: they do not count towards max_depth,
# and they unpack no ext values (datetime's time zone goes through an Unpacker without ext_hook).
_NOT_NESTED = frozenset({_BIGINT, _DECIMAL, _DATETIME, _UUID})

_BUILDERS: dict[int, Callable[[_Decoder, bytes], Any]] = {
    _BIGINT: _Decoder.bigint,
    _TUPLE: lambda self, data: tuple(self.items(data)),
    _SET: lambda self, data: set(self.items(data)),
    _FROZENSET: lambda self, data: frozenset(self.items(data)),
    _COMPLEX: _Decoder.complex,
    _DECIMAL: _Decoder.decimal,
    _DEQUE: _Decoder.deque,
    _DATETIME: _Decoder.datetime,
    _DATE: lambda self, data: dt.date(*self.items(data, 3)),
    _TIME: _Decoder.time,
    _TIMEDELTA: lambda self, data: dt.timedelta(*self.items(data, 3)),
    _NDARRAY: lambda self, data: self.ndarray(*self.items(data, 4)),
    _NPSCALAR: _Decoder.npscalar,
    _ODICT: _Decoder.odict,
    _MODEL: _Decoder.model,
    _UUID: _Decoder.uuid,
    _RECORDS: _Decoder.records,
}


def decode(
    data: bytes | bytearray | memoryview,
    *,
    limits: TreeLimits | None = None,
    model_resolver: ModelResolver | None = None,
    source: str = "value",
) -> object:
    """Decode bytes from ``encode``; any malformed input raises FormatError naming ``source``.

    Errors raised by ``model_resolver`` pass through when they are persistkit
    errors or ImportErrors; any other exception becomes a FormatError.
    """
    limits = limits or TreeLimits()
    buf = data if type(data) is bytes else bytes(data)
    decoder = _Decoder(len(buf), limits, model_resolver, source)
    if not buf:
        raise decoder.fail("empty")
    if limits.max_bytes is not None and len(buf) > limits.max_bytes:
        raise FormatError(
            f"{source}: {len(buf)} bytes of state data, more than the {limits.max_bytes} this reader "
            "accepts (TreeLimits.max_bytes).",
            field=source,
        )
    if buf[0] != CODEC_VERSION:
        if buf[0] > CODEC_VERSION:
            raise NewerFormatError(
                f"{source}: written by a newer persistkit (tree codec {buf[0]}); "
                "upgrade persistkit to read it.",
                field=source,
            )
        raise decoder.fail(f"unknown codec version {buf[0]}")
    try:
        return decoder.unpack(memoryview(buf)[1:])
    except (PersistkitError, ImportError):
        raise  # our own typed errors, and those a model resolver chose to raise
    except Exception as err:  # msgpack, datetime and numpy raise many types for hostile input
        raise decoder.fail(f"{type(err).__name__}: {err}"[:200]) from err
