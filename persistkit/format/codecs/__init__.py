"""Model codecs: turn model objects into bytes and back without pickle.

=========  ===========================================  =====================
codec      stores                                       constructs types?
=========  ===========================================  =====================
numpy      an ndarray, or a dict of str -> ndarray      no
tree       any tree value (``persistkit.format.tree``)  only embedded models
json       JSON documents (bundle metadata)             no
bytes      raw bytes                                    no
torch      tensors, state dicts, ``nn.Module`` s        only by caller factory
sklearn    estimators and pipelines (skops)             yes: pinned list
sklearn-   decision trees and tree forests, as node     yes: 8 classes + Tree
 trees     arrays (chosen over skops when it can)
sb3        stable-baselines3 models, as data            yes: pinned list
=========  ===========================================  =====================

Each codec module is imported only when an object of its kind is met, and
objects are recognised by the name of their type's module, so importing this
registry imports neither torch nor scikit-learn nor stable-baselines3.

``model_hook`` plugs into ``persistkit.format.tree.encode`` (state stores embed
models this way); ``decode_member`` rebuilds them. Bundles use
``encode_member`` / ``decode_member`` / ``audit_member``.

``trusted`` extends the pinned allowlists of the codecs that construct types
with more qualified names; ``True`` means the pinned lists alone (never
"anything"). Whether a member may construct types at all is the bundle's
decision (``persistkit.bundle``), not the codec's.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from persistkit.errors import FormatError, UnsupportedTypeError

__all__ = [
    "CODECS",
    "CONSTRUCTING",
    "Encoded",
    "audit_member",
    "codec_for",
    "decode_member",
    "encode_member",
    "model_hook",
]

# codec name -> module implementing it
CODECS: dict[str, str] = {
    "numpy": "persistkit.format.codecs.numpy",
    "tree": "persistkit.format.codecs.tree",
    "json": "persistkit.format.codecs.json",
    "bytes": "",
    "torch": "persistkit.format.codecs.torch",
    "sklearn": "persistkit.format.codecs.sklearn",
    "sklearn-trees": "persistkit.format.codecs.sklearn_trees",
    "sb3": "persistkit.format.codecs.sb3",
}
# Codecs whose decoding imports and calls types named by the payload.
CONSTRUCTING = frozenset({"sklearn", "sklearn-trees", "sb3"})

MetaValue = None | bool | int | float | str


@dataclass(frozen=True, eq=False)
class Encoded:
    """A member ready to seal.

    ``payload`` may be a view of the caller's object (numpy arrays are not
    copied): seal and write it before the object changes. ``meta`` goes into
    the authenticated envelope header and is needed to decode; ``info`` is
    shown by ``inspect`` (no key needed) and never used to decode.
    ``compressible`` is False when zstd would only burn time (raw float arrays).
    """

    codec: str
    payload: bytes | bytearray | memoryview
    meta: Mapping[str, MetaValue] = field(default_factory=dict)
    info: Mapping[str, object] = field(default_factory=dict)
    compressible: bool = True


def _module(codec: str) -> ModuleType:
    target = CODECS.get(codec)
    if target is None:
        raise FormatError(
            f"unknown member codec {codec!r}; it may come from a newer persistkit (this one knows "
            f"{', '.join(sorted(CODECS))}). Upgrade persistkit to read it.",
            field="codec",
        )
    return importlib.import_module(target)


def _family(obj: object) -> str:
    module = type(obj).__module__
    return module.split(".", 1)[0]


def _model_codec(obj: object) -> str | None:
    """The codec for model objects (the ones a tree value cannot hold by itself)."""
    family = _family(obj)
    if family == "sklearn":
        return "sklearn"
    if family == "torch":
        return "torch"
    if family == "stable_baselines3":
        from persistkit.format.codecs.sb3 import is_sb3_model

        return "sb3" if is_sb3_model(obj) else None
    if family not in ("builtins", "numpy", "collections", "datetime", "decimal", "uuid"):
        # A user class deriving from a framework base (MyNet(nn.Module), a custom estimator).
        for base in type(obj).__mro__[1:]:
            root = base.__module__.split(".", 1)[0]
            if (
                root == "torch"
                and f"{base.__module__}.{base.__qualname__}" == "torch.nn.modules.module.Module"
            ):
                return "torch"
            if root == "stable_baselines3" and base.__qualname__ == "BaseAlgorithm":
                return "sb3"
            if root == "sklearn" and base.__qualname__ == "BaseEstimator":
                return "sklearn"
    return None


def codec_for(obj: object) -> str:
    """The codec a bundle member of this value uses; UnsupportedTypeError names the type otherwise."""
    codec = _model_codec(obj)
    if codec is not None:
        return codec
    if type(obj) in (bytes, bytearray):
        return "bytes"
    if _family(obj) == "numpy":
        return "numpy" if type(obj).__name__ == "ndarray" else "tree"  # numpy scalars go in a tree
    if isinstance(obj, Mapping):
        from persistkit.format.codecs.numpy import is_array_dict

        if is_array_dict(obj):
            return "numpy"
    return "tree"


def model_hook(obj: object) -> tuple[str, bytes] | None:
    """(codec name, payload) for a model object this registry knows, else None (for ``tree.encode``)."""
    codec = _model_codec(obj)
    if codec is None:
        return None
    encoded = encode_member(obj, codec=codec)  # its codec may be more specific (sklearn-trees)
    return encoded.codec, bytes(encoded.payload)


def _is_float_data(obj: object) -> bool:
    import numpy as np

    arrays = obj.values() if isinstance(obj, Mapping) else [obj]
    return all(isinstance(a, np.ndarray) and a.dtype.kind in "fc" for a in arrays)


def encode_member(
    obj: object,
    *,
    codec: str | None = None,
    name: str = "value",
    save_replay_buffer: bool = False,
) -> Encoded:
    """Encode one bundle member. ``name`` is used in error messages."""
    codec = codec or codec_for(obj)
    if codec == "bytes":
        if type(obj) not in (bytes, bytearray):
            raise UnsupportedTypeError(f"member {name!r}: the bytes codec stores bytes.", member=name)
        return Encoded("bytes", obj)  # type: ignore[arg-type]
    if codec == "numpy":
        from persistkit.format.codecs import numpy as npc

        payload, meta = npc.encode(obj)
        if len(meta["npy"]) > npc.MAX_INDEX_CHARS:  # too many arrays for the header: exact via tree instead
            return encode_member(obj, codec="tree", name=name)
        return Encoded("numpy", payload, meta, _numpy_info(obj), compressible=not _is_float_data(obj))
    if codec == "tree":
        from persistkit.format.codecs import tree as treec

        return Encoded("tree", treec.encode(obj, root=name), info={"type": _type_name(obj)})
    if codec == "json":
        from persistkit.format.codecs import json as jsonc

        return Encoded("json", jsonc.encode(obj, root=name))
    if codec == "torch":
        from persistkit.format.codecs import torch as torchc

        return Encoded("torch", torchc.encode(obj), info=torchc.info(obj), compressible=False)
    if codec == "sklearn-trees":
        from persistkit.format.codecs import sklearn_trees

        return Encoded("sklearn-trees", sklearn_trees.encode(obj, root=name), info={"class": _type_name(obj)})
    if codec == "sklearn":
        from persistkit.format.codecs import sklearn as skc
        from persistkit.format.codecs import sklearn_trees

        if sklearn_trees.handles(obj):
            try:  # about 5x faster than skops for forests, and the node arrays are validated on load
                return encode_member(obj, codec="sklearn-trees", name=name)
            except UnsupportedTypeError:
                pass  # state beyond plain data (a RandomState as random_state, say): skops stores it
        return Encoded("sklearn", skc.encode(obj), info={"class": _type_name(obj)})
    if codec == "sb3":
        from persistkit.format.codecs import sb3 as sb3c

        return Encoded(
            "sb3",
            sb3c.encode(obj, save_replay_buffer=save_replay_buffer, member=name),
            info={**sb3c.info(obj), "replay_buffer": save_replay_buffer},
            compressible=False,
        )
    _module(codec)  # raises FormatError for unknown names
    raise AssertionError(codec)  # pragma: no cover


def _type_name(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _numpy_info(obj: object) -> dict[str, object]:
    import numpy as np

    if isinstance(obj, np.ndarray):
        return {"dtype": str(obj.dtype), "shape": list(obj.shape)}
    assert isinstance(obj, Mapping)
    return {"arrays": {k: f"{v.dtype}{list(v.shape)}" for k, v in obj.items()}}


def decode_member(
    codec: str,
    payload: bytes | bytearray | memoryview,
    *,
    trusted: Sequence[str] | bool = (),
    env: object = None,
    device: str = "cpu",
    meta: Mapping[str, object] | None = None,
    source: str = "member",
    module: Callable[[], Any] | None = None,
    as_state_dict: bool = True,
    name: str | None = None,
    custom_objects: Mapping[str, Any] | None = None,
) -> object:
    """Rebuild a member or an embedded model; unknown codecs raise FormatError.

    ``meta`` is the member's envelope meta (the numpy codec keeps its npy
    headers there). ``source`` names the member in errors. ``module`` and
    ``as_state_dict`` decide how a stored torch ``nn.Module`` comes back (see
    ``persistkit.format.codecs.torch``; ``name`` is the member's name for its
    advice; modules inside a tree value follow ``as_state_dict`` too). ``custom_objects``
    replaces attributes of an SB3 model before it is rebuilt.
    """
    if codec == "bytes":
        return bytes(payload)
    impl: Any = _module(codec)
    if codec == "numpy":
        return impl.decode(payload, meta=meta, source=source)
    if codec == "tree":
        return impl.decode(
            payload, trusted=trusted, env=env, device=device, source=source, as_state_dict=as_state_dict
        )
    if codec == "json":
        return impl.decode(payload, source=source)
    if codec == "torch":
        return impl.decode(
            payload, device=device, source=source, module=module, as_state_dict=as_state_dict, name=name
        )
    if codec in ("sklearn", "sklearn-trees"):
        return impl.decode(payload, trusted=trusted, source=source)
    if codec == "sb3":
        return impl.decode(
            payload, trusted=trusted, env=env, device=device, source=source, custom_objects=custom_objects
        )
    return impl.decode(payload, trusted=trusted, env=env, device=device, source=source)


def audit_member(codec: str, payload: bytes | bytearray | memoryview, *, source: str = "member") -> list[str]:
    """The types decoding would import and construct (including embedded models); [] for plain data."""
    if codec == "bytes":
        return []
    module: Any = _module(codec)
    if codec in ("numpy", "json", "torch"):
        return []
    if codec == "tree":
        names: list[str] = []
        for inner_codec, inner in module.embedded(payload, source=source):
            for name in audit_member(inner_codec, inner, source=source):
                if name not in names:
                    names.append(name)
        return names
    result: list[str] = module.audit(payload, source=source)
    return result
