"""JSON documents (bundle metadata): plain JSON types, numpy scalars and arrays converted on the way in."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from persistkit.errors import FormatError, UnsupportedTypeError
from persistkit.format.codecs.base import Codec, DecodeContext, EncodeContext, Encoded, Payload

__all__ = ["CODEC", "JsonCodec", "decode", "encode", "to_jsonable"]


def to_jsonable(value: object, path: str = "metadata") -> Any:
    """A copy of ``value`` made of dict/list/str/int/float/bool/None; numpy scalars become Python numbers."""
    if value is None or type(value) in (str, bool, int):
        return value
    if type(value) is float:
        if not math.isfinite(value):
            raise UnsupportedTypeError(
                f"{path} is {value!r}; JSON has no NaN or infinity. Store it as a string or null.", field=path
            )
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if type(k) is not str:
                raise UnsupportedTypeError(
                    f"{path} has the key {k!r} ({type(k).__name__}); JSON object keys must be str.",
                    field=path,
                )
            out[k] = to_jsonable(v, f"{path}[{k!r}]")
        return out
    if isinstance(value, list | tuple):
        return [to_jsonable(v, f"{path}[{i}]") for i, v in enumerate(value)]
    module = type(value).__module__
    if module == "numpy" or module.startswith("numpy."):
        import numpy as np

        if isinstance(value, np.generic | np.ndarray) and value.dtype.kind in "biufU?":
            return to_jsonable(value.tolist(), path)
    raise UnsupportedTypeError(
        f"{path} is a {module}.{type(value).__qualname__}, which is not JSON. Metadata holds dicts, lists, "
        "str, int, float, bool and None (numpy numbers are converted); store models and arrays as bundle "
        "members instead.",
        field=path,
    )


def encode(value: object, *, root: str = "metadata") -> bytes:
    return json.dumps(to_jsonable(value, root), ensure_ascii=False, sort_keys=False, allow_nan=False).encode()


def decode(payload: bytes | bytearray | memoryview, *, source: str = "metadata") -> object:
    try:
        return json.loads(bytes(payload).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise FormatError(
            f"{source} is not valid JSON ({type(err).__name__}). Restore the bundle from a backup.",
            member=source,
        ) from err


class JsonCodec(Codec):
    """Chosen only by name (``encode_member(doc, codec="json")``): a tree value keeps more types exactly."""

    name = "json"

    def encode(self, obj: object, ctx: EncodeContext) -> Encoded:
        return Encoded(self.name, encode(obj, root=ctx.name))

    def decode(self, payload: Payload, ctx: DecodeContext) -> object:
        return decode(payload, source=ctx.source)


CODEC = JsonCodec()
