"""A strict reader for the UBJSON that XGBoost writes (``Booster.save_raw("ubj")``), for validation only.

Written by hand on purpose: the xgboost codec must look at every tree before
XGBoost's own loader does (XGBoost 3.2 segfaults on a tree whose child index
points outside it, see ``xgboost.py``), and the UBJSON packages on PyPI either
turn each number of a typed array into a Python object (a 100-tree model holds
~100,000) or are unmaintained. Here a typed array (``[$d#L<n>...``) becomes
one ``numpy.frombuffer`` view.

Strict means: only the forms XGBoost writes are accepted (keys with an int64
length, counted containers without an end marker, objects ended by ``}``),
duplicate keys and trailing bytes are refused, and every count is checked
against the bytes that are left before anything is allocated, so what this
reader accepts XGBoost reads the same way. Anything else is ``UBJError``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

__all__ = ["Span", "UBJError", "column", "length", "loads"]

_MAX_DEPTH = 64
# marker -> (struct format, numpy dtype) of a number; UBJSON numbers are big-endian.
_FORMATS = {
    "i": (">b", ">i1"),
    "U": (">B", ">u1"),
    "I": (">h", ">i2"),
    "l": (">i", ">i4"),
    "L": (">q", ">i8"),
    "d": (">f", ">f4"),
    "D": (">d", ">f8"),
}
_SCALAR = {ord(marker): struct.Struct(fmt) for marker, (fmt, _) in _FORMATS.items()}
_TYPED = {ord(marker): (dtype, struct.calcsize(fmt)) for marker, (fmt, dtype) in _FORMATS.items()}
_COUNT = struct.Struct(">Bq")  # 'L' + int64, the only length form XGBoost writes
_L, _S, _OBJ, _END, _ARR, _TYPE, _HASH = (ord(c) for c in "LS{}[$#")
_CONSTANTS = {ord("T"): True, ord("F"): False, ord("Z"): None}
_INT64 = struct.Struct(">q")


def _key(name: str) -> bytes:
    return b"L" + _INT64.pack(len(name)) + name.encode()


# A tree object exactly as XGBoost writes it: these keys in this order, each typed array of this
# element type, "id" an int, "tree_param" an object of string values. ``loads`` reads trees of this
# layout in one pass (about 4x faster); any deviation falls back to the general reader.
_TREE_ARRAYS = (
    ("base_weights", "d"), ("categories", "l"), ("categories_nodes", "l"), ("categories_segments", "L"),
    ("categories_sizes", "L"), ("default_left", "U"),
)  # fmt: skip
_TREE_ARRAYS_AFTER_ID = (
    ("left_children", "l"), ("loss_changes", "d"), ("parents", "l"), ("right_children", "l"),
    ("split_conditions", "d"), ("split_indices", "l"), ("split_type", "U"), ("sum_hessian", "d"),
)  # fmt: skip
_TREE_PARAMS = ("num_deleted", "num_feature", "num_nodes", "size_leaf_vector")


def _array_prefix(name: str, kind: str) -> tuple[str, bytes, str, int]:
    fmt, dtype = _FORMATS[kind]
    return name, _key(name) + b"[$" + kind.encode() + b"#L", dtype, struct.calcsize(fmt)


_FAST_BEFORE_ID = tuple(_array_prefix(n, k) for n, k in _TREE_ARRAYS)
_FAST_AFTER_ID = tuple(_array_prefix(n, k) for n, k in _TREE_ARRAYS_AFTER_ID)
_FAST_ID = _key("id")
_FAST_TREE_PARAM = _key("tree_param") + b"{"
_FAST_PARAMS = tuple((name, _key(name) + b"SL") for name in _TREE_PARAMS)


class UBJError(ValueError):
    """The bytes are not UBJSON of the shape XGBoost writes; the message says where."""


# A typed array not yet read: (offset, count, dtype) in the data (see ``column``). A plain tuple,
# since building a NamedTuple per array cost more than the rest of reading a tree.
Span = tuple[int, int, str]


def length(array: Any) -> int:
    """The number of items of a ``Span`` or a numpy array."""
    return int(array[1]) if type(array) is tuple else len(array)


def column(data: bytes, arrays: Sequence[Any], dtype: str) -> tuple[Any, Any]:
    """(all items of ``arrays`` concatenated as ``dtype``, the length of each), in a few numpy calls.

    ``arrays`` holds ``Span`` s of ``data`` (trees read by the fast path) and numpy arrays; reading
    100 trees' spans costs about as much as reading one, where ``numpy.frombuffer`` per array would
    cost a microsecond each.
    """
    import numpy as np

    lengths = np.fromiter((length(a) for a in arrays), dtype=np.int64, count=len(arrays))
    if all(type(a) is tuple and a[2] == dtype for a in arrays):
        item = np.dtype(dtype).itemsize
        starts = np.fromiter((a[0] for a in arrays), dtype=np.int64, count=len(arrays))
        nbytes = lengths * item
        total = int(nbytes.sum())
        # byte index of every item byte: each span's start, plus the running offset inside it
        shift = np.repeat(starts - (np.cumsum(nbytes) - nbytes), nbytes)
        raw = np.frombuffer(data, dtype=np.uint8)[shift + np.arange(total)]
        return raw.view(dtype), lengths
    parts = [
        np.frombuffer(data, dtype=a[2], count=a[1], offset=a[0]) if type(a) is tuple else a for a in arrays
    ]
    if not parts:
        return np.zeros(0, dtype=dtype), lengths
    return np.concatenate(parts).astype(dtype, copy=False), lengths


def loads(data: bytes) -> Any:
    """The document; typed arrays come back as read-only numpy arrays (views of ``data``), except in
    trees of XGBoost's own layout, where they are ``Span`` s to read with ``column``."""
    import numpy as np

    size = len(data)
    frombuffer = np.frombuffer
    pos = 0

    def fail(what: str) -> UBJError:
        return UBJError(f"{what} at byte {pos}")

    def count(limit_per_item: int) -> int:
        nonlocal pos
        if pos + 9 > size:
            raise fail("unexpected end of data")
        marker, n = _COUNT.unpack_from(data, pos)
        if marker != _L:
            raise fail("expected an int64 length")
        pos += 9
        if n < 0 or n * limit_per_item > size - pos:
            raise fail(f"length {n} is negative or longer than the data left")
        return int(n)

    def text() -> str:
        nonlocal pos
        n = count(1)
        start = pos
        pos += n
        try:
            return data[start:pos].decode("utf-8")
        except UnicodeDecodeError as err:
            raise fail("a string is not UTF-8") from err

    def arrays(out: dict[str, Any], prefixes: tuple[tuple[str, bytes, str, int], ...]) -> bool:
        nonlocal pos
        for name, prefix, dtype, item in prefixes:
            if not data.startswith(prefix, pos):
                return False
            start = pos + len(prefix)
            if start + 8 > size:
                return False
            (n,) = _INT64.unpack_from(data, start)
            start += 8
            if n < 0 or n * item > size - start:
                return False
            out[name] = (start, n, dtype)
            pos = start + n * item
        return True

    def fast_tree() -> dict[str, Any] | None:
        """A tree in XGBoost's own layout, read in one pass; None (pos unchanged) for anything else."""
        nonlocal pos
        begin = pos
        out: dict[str, Any] = {}
        if arrays(out, _FAST_BEFORE_ID) and data.startswith(_FAST_ID, pos):
            pos += len(_FAST_ID)
            fmt = _SCALAR.get(data[pos]) if pos < size else None
            if fmt is not None and data[pos] not in (ord("d"), ord("D")) and pos + 1 + fmt.size <= size:
                (out["id"],) = fmt.unpack_from(data, pos + 1)
                pos += 1 + fmt.size
                if arrays(out, _FAST_AFTER_ID) and data.startswith(_FAST_TREE_PARAM, pos):
                    pos += len(_FAST_TREE_PARAM)
                    params: dict[str, str] = {}
                    for name, prefix in _FAST_PARAMS:
                        if not data.startswith(prefix, pos) or pos + len(prefix) + 8 > size:
                            break
                        (n,) = _INT64.unpack_from(data, pos + len(prefix))
                        start = pos + len(prefix) + 8
                        if n < 0 or n > 64 or start + n > size:
                            break
                        try:
                            params[name] = data[start : start + n].decode("ascii")
                        except UnicodeDecodeError:
                            break
                        pos = start + n
                    else:
                        if data[pos : pos + 2] == b"}}":
                            pos += 2
                            out["tree_param"] = params
                            return out
        pos = begin
        return None

    def value(depth: int) -> Any:
        nonlocal pos
        if pos >= size:
            raise fail("unexpected end of data")
        marker = data[pos]
        pos += 1
        if marker == _OBJ:
            if data.startswith(_FAST_BEFORE_ID[0][1], pos):
                tree = fast_tree()
                if tree is not None:
                    return tree
            if depth >= _MAX_DEPTH:
                raise fail("nesting deeper than 64")
            out: dict[str, Any] = {}
            while True:
                if pos < size and data[pos] == _END:
                    pos += 1
                    return out
                key = text()
                if key in out:
                    raise fail(f"duplicate key {key!r}")
                out[key] = value(depth + 1)
        if marker == _ARR:
            if depth >= _MAX_DEPTH:
                raise fail("nesting deeper than 64")
            if pos + 2 <= size and data[pos] == _TYPE:
                typed = _TYPED.get(data[pos + 1])
                if typed is None or pos + 2 >= size or data[pos + 2] != _HASH:
                    raise fail("malformed typed array")
                pos += 3
                dtype, item = typed
                n = count(item)
                arr = frombuffer(data, dtype=dtype, count=n, offset=pos)
                pos += n * item
                return arr
            if pos >= size or data[pos] != _HASH:
                raise fail("array without a count")
            pos += 1
            return [value(depth + 1) for _ in range(count(1))]
        if marker == _S:
            return text()
        fmt = _SCALAR.get(marker)
        if fmt is not None:
            if pos + fmt.size > size:
                raise fail("unexpected end of data")
            (number,) = fmt.unpack_from(data, pos)
            pos += fmt.size
            return number
        if marker in _CONSTANTS:
            return _CONSTANTS[marker]
        pos -= 1
        raise fail(f"unexpected marker {bytes([marker])!r}")

    doc = value(0)
    if pos != size:
        raise fail("trailing bytes after the document")
    return doc
