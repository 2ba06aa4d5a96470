"""Raw bytes, stored as they are (codec id ``bytes``).

The module is not called ``bytes.py``: as an attribute of the codecs package
it would shadow the builtin there.
"""

from __future__ import annotations

from persistkit.errors import UnsupportedTypeError
from persistkit.format.codecs.base import Codec, DecodeContext, EncodeContext, Encoded, Payload

__all__ = ["CODEC", "BytesCodec"]


class BytesCodec(Codec):
    name = "bytes"

    def handles(self, obj: object) -> bool:
        return type(obj) in (bytes, bytearray)

    def encode(self, obj: object, ctx: EncodeContext) -> Encoded:
        if type(obj) not in (bytes, bytearray):
            raise UnsupportedTypeError(f"member {ctx.name!r}: the bytes codec stores bytes.", member=ctx.name)
        assert isinstance(obj, bytes | bytearray)
        return Encoded(self.name, obj)

    def decode(self, payload: Payload, ctx: DecodeContext) -> object:
        return bytes(payload)


CODEC = BytesCodec()
