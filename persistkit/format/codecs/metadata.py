"""Bundle metadata through the safe tree codec (``persistkit.format.tree``), the one the state store uses.

So metadata holds what state can: datetimes, Decimals, UUIDs, tuples, numpy
numbers and arrays, exactly, and comes back with the same types. Models are
not metadata (no model hook: they are refused with a pointer to bundle
members). Bundles written before this stored their metadata as JSON (codec
``json``); ``decode`` reads both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from persistkit.errors import FormatError, UnsupportedTypeError
from persistkit.format import tree
from persistkit.format.codecs.base import Encoded, Payload

__all__ = ["CODECS", "decode", "encode", "encode_member"]

CODECS = ("tree", "json")  # what a metadata member may use: now, and before


def encode(doc: Mapping[str, Any], *, root: str = "metadata") -> bytes:
    """The metadata as tree bytes; UnsupportedTypeError names the path of a value that cannot be stored."""
    try:
        return tree.encode(dict(doc), root=root)
    except UnsupportedTypeError as err:
        where = err.field or root
        raise UnsupportedTypeError(
            f"{where}: {err.message.split(': ', 1)[-1].split(' cannot be stored')[0]} cannot be stored as "
            "metadata. Metadata holds plain values (dict, list, tuple, str, int, float, bool, None, datetime, "
            "Decimal, UUID, numpy numbers and arrays); store models as bundle members instead.",
            field=where,
        ) from err


def encode_member(doc: Mapping[str, Any]) -> Encoded:
    """The bundle's metadata member, ready to seal (codec ``tree``)."""
    return Encoded("tree", encode(doc))


def decode(codec: str, payload: Payload, *, source: str = "metadata") -> dict[str, Any]:
    if codec == "json":
        from persistkit.format.codecs import json as jsonc

        doc = jsonc.decode(payload, source=source)
    elif codec == "tree":
        doc = tree.decode(payload, source=source)
    else:
        raise FormatError(
            f"{source}: metadata in codec {codec!r}, which is not one of {CODECS}.", member=source
        )
    if not isinstance(doc, dict):
        raise FormatError(f"{source}: the metadata is not a mapping.", member=source)
    return doc
