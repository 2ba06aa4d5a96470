"""numpy arrays and dicts of arrays, as npy without pickle.

Layout: each array is one npy file split in two. Its npy header (numpy's own
header text, parsed back with numpy's literal-only parser) goes into the
member's ``meta["npy"]``, which the bundle stores in the authenticated
envelope header; the array bytes go into the payload. A single array's
payload is then the array's own buffer, so saving copies nothing (the same
zero-copy write safetensors does) and a member can still be turned back into a
standard ``.npy`` file with ``to_npy``.

``meta["npy"]`` is JSON: ``{"kind": "array" | "dict", "arrays": [[key, header,
offset, nbytes], ...]}``. Object dtypes are refused both ways: they would need
pickle (this is npy with ``allow_pickle=False``).
"""

from __future__ import annotations

import functools
import io
import json
import struct
from collections.abc import Mapping
from typing import Any, Literal

from persistkit.errors import FormatError, UnsupportedTypeError
from persistkit.format.codecs.base import (
    Codec,
    Declined,
    DecodeContext,
    EncodeContext,
    Encoded,
    Payload,
    type_family,
)

__all__ = ["ALIGN", "CODEC", "MAX_INDEX_CHARS", "NumpyCodec", "decode", "encode", "is_array_dict", "to_npy"]

ALIGN = 64  # arrays inside a dict payload start at multiples of this
MAX_INDEX_CHARS = 48 * 1024  # beyond this the caller stores the dict with the tree codec instead


def is_array_dict(obj: object) -> bool:
    import numpy as np

    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(type(k) is str and type(v) is np.ndarray for k, v in obj.items())
    )


def _header_text(arr: Any) -> tuple[str, Any]:
    """(npy header text, the array in the memory order the header promises)."""
    import numpy as np

    if arr.dtype.hasobject:
        raise UnsupportedTypeError(
            f"a numpy array of dtype {arr.dtype} holds Python objects and would need pickle; "
            "convert it to a numeric, bool, string or bytes dtype.",
            field="dtype",
        )
    fortran = bool(arr.ndim > 1 and arr.flags.f_contiguous and not arr.flags.c_contiguous)
    if not fortran and not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    # The same dict literal numpy writes into an npy header (keys sorted, trailing ", ").
    descr = np.lib.format.dtype_to_descr(arr.dtype)
    return f"{{'descr': {descr!r}, 'fortran_order': {fortran!r}, 'shape': {tuple(arr.shape)!r}, }}", arr


def _raw(arr: Any) -> memoryview:
    """The array's bytes in its own memory order, without a copy."""
    order = "F" if arr.ndim > 1 and arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"
    if arr.nbytes == 0:
        return memoryview(b"")
    return memoryview(arr.reshape(-1, order=order).view("u1"))


def encode(obj: object) -> tuple[bytes | bytearray | memoryview, dict[str, str]]:
    """(payload, meta). A single array's payload is a view of the array itself: write it before mutating."""
    import numpy as np

    if type(obj) is np.ndarray:
        text, arr = _header_text(obj)
        index = {"kind": "array", "arrays": [[None, text, 0, arr.nbytes]]}
        return _raw(arr), {"npy": json.dumps(index, separators=(",", ":"))}
    if not is_array_dict(obj):
        raise UnsupportedTypeError("the numpy codec stores an ndarray or a non-empty dict of str -> ndarray.")
    assert isinstance(obj, Mapping)
    entries: list[list[Any]] = []
    views: list[memoryview] = []
    offset = 0
    for key, value in obj.items():
        text, arr = _header_text(value)
        pad = -offset % ALIGN
        offset += pad
        entries.append([key, text, offset, arr.nbytes])
        views.append(_raw(arr))
        offset += arr.nbytes
    out = bytearray(offset)
    for (_, _, start, nbytes), view in zip(entries, views, strict=True):
        out[start : start + nbytes] = view
    return out, {"npy": json.dumps({"kind": "dict", "arrays": entries}, separators=(",", ":"))}


def _bad(source: str, what: str) -> FormatError:
    return FormatError(
        f"{source}: the numpy member's index is invalid ({what}). The bundle was written by a newer or "
        "different tool; upgrade persistkit or re-save the bundle.",
        member=source,
    )


def _parse_index(meta: Mapping[str, object] | None, size: int, source: str) -> tuple[str, list[Any]]:
    raw = (meta or {}).get("npy")
    if type(raw) is not str:
        raise _bad(source, "no npy index in the member header")
    try:
        index = json.loads(raw)
    except ValueError as err:
        raise _bad(source, "the npy index is not JSON") from err
    if not isinstance(index, dict) or index.get("kind") not in ("array", "dict"):
        raise _bad(source, "unknown kind")
    arrays = index.get("arrays")
    if not isinstance(arrays, list) or not arrays or (index["kind"] == "array" and len(arrays) != 1):
        raise _bad(source, "array list")
    for entry in arrays:
        if not (isinstance(entry, list) and len(entry) == 4):
            raise _bad(source, "array entry")
        key, text, start, nbytes = entry
        if index["kind"] == "dict" and type(key) is not str:
            raise _bad(source, "dict key")
        if type(text) is not str or type(start) is not int or type(nbytes) is not int:
            raise _bad(source, "array entry types")
        if start < 0 or nbytes < 0 or start + nbytes > size:
            raise _bad(source, f"array bytes [{start}, {start + nbytes}) outside the {size}-byte payload")
    return index["kind"], arrays


def _parse_header(text: str, source: str) -> tuple[tuple[int, ...], bool, Any]:
    try:
        shape, fortran, dtype = _parse_header_cached(text)
    except Exception as err:  # numpy raises ValueError, SyntaxError, ... for bad headers
        raise _bad(source, f"npy header does not parse ({type(err).__name__})") from err
    if dtype.hasobject:
        raise _bad(source, "object dtype refused: it would need pickle")
    return shape, fortran, dtype


@functools.lru_cache(maxsize=256)
def _parse_header_cached(text: str) -> tuple[tuple[int, ...], bool, Any]:
    """numpy's own header parser: a Python literal, checked field by field (no eval).

    Cached (dtypes are immutable) because a model reloads the same few headers.
    """
    import numpy as np

    raw = text.encode("latin1")
    stream = io.BytesIO(struct.pack("<I", len(raw)) + raw)
    shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    return tuple(shape), bool(fortran), dtype


def _array(view: memoryview, text: str, start: int, nbytes: int, source: str, copy: bool) -> Any:
    import numpy as np

    shape, fortran, dtype = _parse_header(text, source)
    count = 1
    for n in shape:
        count *= n
    if count * dtype.itemsize != nbytes:
        raise _bad(
            source, f"shape {shape} of {dtype} needs {count * dtype.itemsize} bytes, the index says {nbytes}"
        )
    order: Literal["C", "F"] = "F" if fortran else "C"
    if dtype.itemsize == 0 or count == 0:
        return np.empty(list(shape), dtype=dtype, order=order)
    flat = np.frombuffer(view, dtype=dtype, count=count, offset=start)
    if copy or view.readonly:
        flat = flat.copy()
    return flat.reshape(list(shape), order=order)


def decode(
    payload: bytes | bytearray | memoryview,
    *,
    meta: Mapping[str, object] | None = None,
    source: str = "numpy member",
    copy: bool = False,
) -> object:
    """Rebuild the array or dict. Arrays own their memory unless ``payload`` is writable and ``copy`` is False."""
    view = memoryview(payload).cast("B") if memoryview(payload).format != "B" else memoryview(payload)
    kind, arrays = _parse_index(meta, view.nbytes, source)
    if kind == "array":
        _, text, start, nbytes = arrays[0]
        return _array(view, text, start, nbytes, source, copy)
    out: dict[str, Any] = {}
    for key, text, start, nbytes in arrays:
        if key in out:
            raise _bad(source, f"key {key!r} appears twice")
        out[key] = _array(view, text, start, nbytes, source, copy)
    return out


def to_npy(
    payload: bytes | bytearray | memoryview, meta: Mapping[str, object], key: str | None = None
) -> bytes:
    """A standard ``.npy`` file for one array of the member (``key`` for dict members)."""
    import numpy as np

    view = memoryview(payload).cast("B")
    kind, arrays = _parse_index(meta, view.nbytes, "numpy member")
    for name, text, start, nbytes in arrays:
        if kind == "array" or name == key:
            shape, fortran, dtype = _parse_header(text, "numpy member")
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran, "shape": shape}
            out = io.BytesIO()
            np.lib.format.write_array_header_1_0(out, header)
            return out.getvalue() + bytes(view[start : start + nbytes])
    raise KeyError(key)


def _is_float_data(obj: object) -> bool:
    import numpy as np

    arrays = obj.values() if isinstance(obj, Mapping) else [obj]
    return all(isinstance(a, np.ndarray) and a.dtype.kind in "fc" for a in arrays)


def _info(obj: object) -> dict[str, object]:
    import numpy as np

    if isinstance(obj, np.ndarray):
        return {"dtype": str(obj.dtype), "shape": list(obj.shape)}
    assert isinstance(obj, Mapping)
    return {"arrays": {k: f"{v.dtype}{list(v.shape)}" for k, v in obj.items()}}


class NumpyCodec(Codec):
    """An ndarray or a dict of arrays. Numpy scalars and mixed dicts go to the tree codec."""

    name = "numpy"
    packages = ("numpy",)

    def handles(self, obj: object) -> bool:
        if type_family(obj) == "numpy":
            return type(obj).__name__ == "ndarray"
        return isinstance(obj, Mapping) and is_array_dict(obj)

    def encode(self, obj: object, ctx: EncodeContext) -> Encoded:
        payload, meta = encode(obj)
        if len(meta["npy"]) > MAX_INDEX_CHARS:
            raise Declined("too many arrays for the member header")  # the tree codec stores them exactly
        return Encoded(self.name, payload, meta, _info(obj), compressible=not _is_float_data(obj))

    def decode(self, payload: Payload, ctx: DecodeContext) -> object:
        return decode(payload, meta=ctx.meta, source=ctx.source)


CODEC = NumpyCodec()
