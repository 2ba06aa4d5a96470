"""Any tree value (dicts, lists, numbers, datetimes, numpy arrays, ...) through the safe tree codec.

This is the codec with on-disk id ``tree``: the codec wrapper of the value
format ``persistkit.format.tree``. (The module is called ``values`` so that
"tree" names that one format only; scikit-learn's decision trees have their
own codec, ``sklearn_forests``.)

Models inside the value (an sklearn scaler in a dict, say) are embedded
through the registry's ``model_hook`` and rebuilt with ``decode_member``, so
they follow the same trust rules as top-level members.
"""

from __future__ import annotations

from collections.abc import Callable

from persistkit.format import tree
from persistkit.format.codecs.base import Codec, DecodeContext, EncodeContext, Encoded, Payload, type_name

__all__ = ["CODEC", "ValueCodec", "decode", "embedded", "encode"]


def encode(obj: object, *, root: str = "value") -> bytes:
    from persistkit.format.codecs import model_hook

    return tree.encode(obj, root=root, model_hook=model_hook)


def decode(payload: Payload, ctx: DecodeContext | None = None) -> object:
    """The value; embedded models are rebuilt with ``ctx.embedded()`` (no member name: torch modules
    inside a value load as state dicts only with ``as_state_dict``)."""
    outer = ctx or DecodeContext(source="value")

    def resolve(codec: str, inner: bytes) -> object:  # only values that embed models call it
        from persistkit.format.codecs import decode_member

        return decode_member(codec, inner, outer.embedded())

    return tree.decode(payload, model_resolver=resolve, source=outer.source)


def embedded(payload: Payload, *, source: str = "value") -> list[tuple[str, bytes]]:
    """The (codec, payload) pairs of models embedded in the value, without rebuilding them."""
    found: list[tuple[str, bytes]] = []
    collect: Callable[[str, bytes], object] = lambda codec, inner: found.append((codec, inner))  # noqa: E731
    tree.decode(payload, model_resolver=collect, source=source)
    return found


class ValueCodec(Codec):
    name = "tree"
    packages = ("numpy",)
    constructs_types = True  # only the models embedded in the value; audit lists them

    def handles(self, obj: object) -> bool:
        # The last resort for values (tree.encode names what it cannot store). A model object is a
        # member of its own: when its codecs decline it, a tree around it would only decline again.
        from persistkit.format.codecs import REGISTRY

        return REGISTRY.model_codec(obj) is None

    def encode(self, obj: object, ctx: EncodeContext) -> Encoded:
        return Encoded(self.name, encode(obj, root=ctx.name), info={"type": type_name(obj)})

    def decode(self, payload: Payload, ctx: DecodeContext) -> object:
        return decode(payload, ctx)

    def audit(self, payload: Payload, ctx: DecodeContext) -> list[str]:
        from persistkit.format.codecs import audit_member

        names: list[str] = []
        inner_ctx = ctx.embedded()
        for inner_codec, inner in embedded(payload, source=ctx.source):
            for name in audit_member(inner_codec, inner, inner_ctx):
                if name not in names:
                    names.append(name)
        return names


CODEC = ValueCodec()
