"""Any tree value (dicts, lists, numbers, datetimes, numpy arrays, ...) through the safe tree codec.

Models inside the value (an sklearn scaler in a dict, say) are embedded
through the registry's ``model_hook`` and rebuilt with ``decode_member``, so
they follow the same trust rules as top-level members.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from persistkit.format import tree

__all__ = ["decode", "embedded", "encode"]


def encode(obj: object, *, root: str = "value") -> bytes:
    from persistkit.format.codecs import model_hook

    return tree.encode(obj, root=root, model_hook=model_hook)


def decode(
    payload: bytes | bytearray | memoryview,
    *,
    trusted: Sequence[str] | bool = (),
    env: object = None,
    device: str = "cpu",
    source: str = "value",
    as_state_dict: bool = True,
) -> object:
    """``as_state_dict=False``: an embedded torch module raises instead of loading as its state dict."""
    from persistkit.format.codecs import decode_member

    def resolve(codec: str, inner: bytes) -> object:
        return decode_member(
            codec, inner, trusted=trusted, env=env, device=device, source=source, as_state_dict=as_state_dict
        )

    return tree.decode(payload, model_resolver=resolve, source=source)


def embedded(payload: bytes | bytearray | memoryview, *, source: str = "value") -> list[tuple[str, bytes]]:
    """The (codec, payload) pairs of models embedded in the value, without rebuilding them."""
    found: list[tuple[str, bytes]] = []
    collect: Callable[[str, bytes], object] = lambda codec, inner: found.append((codec, inner))  # noqa: E731
    tree.decode(payload, model_resolver=collect, source=source)
    return found
