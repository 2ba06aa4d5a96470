"""Model codecs: turn model objects into bytes and back without pickle.

Each codec module is imported only when an object of its kind is met, chosen
by the object's module name, so importing this registry is free.

``model_hook`` plugs into ``persistkit.format.tree.encode`` (state stores embed
models this way); ``decode_member`` rebuilds them.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from persistkit.errors import FormatError

__all__ = ["decode_member", "model_hook"]

# codec name -> module implementing encode(obj) -> bytes and decode(payload, trusted=...) -> obj
CODECS: dict[str, str] = {
    "sklearn": "persistkit.format.codecs.sklearn",
}


def _codec_for(obj: object) -> str | None:
    module = type(obj).__module__
    if module.startswith("sklearn.") or module == "sklearn":
        return "sklearn"
    return None


def model_hook(obj: object) -> tuple[str, bytes] | None:
    """(codec name, payload) for a model object this registry knows, else None."""
    codec = _codec_for(obj)
    if codec is None:
        return None
    module = importlib.import_module(CODECS[codec])
    payload: bytes = module.encode(obj)
    return codec, payload


def decode_member(codec: str, payload: bytes, *, trusted: Sequence[str] | bool = ()) -> object:
    """Rebuild a model from ``model_hook`` output; unknown codecs raise FormatError."""
    target = CODECS.get(codec)
    if target is None:
        raise FormatError(
            f"unknown model codec {codec!r}; it may come from a newer persistkit. Known: {sorted(CODECS)}."
        )
    module = importlib.import_module(target)
    return module.decode(payload, trusted=trusted)
