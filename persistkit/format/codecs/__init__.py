"""Model codecs: turn model objects into bytes and back without pickle.

=============  ==========================  ===========================================  =====================
codec (id)     module                      stores                                       constructs types?
=============  ==========================  ===========================================  =====================
numpy          ``numpy``                   an ndarray, or a dict of str -> ndarray      no
tree           ``values``                  any tree value (``persistkit.format.tree``)  only embedded models
json           ``json``                    JSON documents (old bundle metadata)         no
bytes          ``raw``                     raw bytes                                    no
torch          ``torch``                   tensors, state dicts, ``nn.Module`` s        only by caller factory
sklearn        ``sklearn``                 estimators and pipelines (skops)             yes: pinned list
sklearn-trees  ``sklearn_forests``         decision trees and tree forests, as node     yes: 8 classes + Tree
                                           arrays (chosen over skops when it can)
sb3            ``sb3``                     stable-baselines3 models, as data            yes: pinned list
xgboost        ``xgboost``                 boosters and sklearn wrappers, as UBJSON     yes: 7 classes
                                           checked tree by tree (``ubj`` reads it)
lightgbm       ``lightgbm``                boosters and sklearn wrappers, as model      yes: 5 classes +
                                           text checked tree by tree                    LabelEncoder
keras          ``keras``                   Keras 3 models: config JSON + .weights.h5    yes: pinned list
=============  ==========================  ===========================================  =====================

Each codec is an object (``Codec``, see ``base``) defined in its own module
and kept in an ordered registry (``registry``). Everything bundle code needs
to know about a codec (its packages, whether it constructs types, the types a
member would construct) is asked of the codec object, so adding a codec
touches one file: a third party calls ``register(MyCodec())``; a built-in
codec is its module plus its line in ``registry.BUILTIN``. The on-disk codec
ids above never change.

Codec modules are imported on first use, and objects are recognised by the
name of their type's module, so importing this package imports none of torch,
scikit-learn, stable-baselines3, XGBoost, LightGBM or Keras.

``model_hook`` plugs into ``persistkit.format.tree.encode`` (state stores embed
models this way); ``decode_member`` rebuilds them. Bundles use
``encode_member`` / ``decode_member`` / ``audit_member``; one ``DecodeContext``
carries what decoding may need (trust, env, device, module factories...).

``trusted`` extends the pinned allowlists of the codecs that construct types
with more qualified names; ``True`` means the pinned lists alone (never
"anything"). Whether a member may construct types at all is the bundle's
decision (``persistkit.bundle``), not the codec's.
"""

from __future__ import annotations

from persistkit.format.codecs.base import (
    Codec,
    Declined,
    DecodeContext,
    EncodeContext,
    Encoded,
    MetaValue,
    Payload,
)
from persistkit.format.codecs.registry import CodecRegistry

__all__ = [
    "REGISTRY",
    "Codec",
    "CodecRegistry",
    "DecodeContext",
    "Declined",
    "EncodeContext",
    "Encoded",
    "MetaValue",
    "audit_member",
    "codec_for",
    "decode_member",
    "encode_member",
    "get_codec",
    "model_codec",
    "model_hook",
    "register",
    "unregister",
]

REGISTRY = CodecRegistry()

_DEFAULT_DECODE = DecodeContext()
_DEFAULT_ENCODE = EncodeContext()


def register(codec: Codec) -> Codec:
    """Add a third-party codec; it is consulted before the built-in ones. Returns ``codec``."""
    return REGISTRY.register(codec)


def unregister(name: str) -> None:
    """Remove a third-party codec registered with ``register``."""
    REGISTRY.unregister(name)


def get_codec(name: str) -> Codec:
    """The codec with on-disk id ``name``; FormatError for ids this persistkit does not know."""
    return REGISTRY.get(name)


def codec_for(obj: object) -> str:
    """The codec a bundle member of this value is meant for (encoding may fall through to a later one)."""
    return REGISTRY.choose(obj).name


def model_codec(obj: object) -> str | None:
    """The codec of a model object (one a tree value embeds rather than holds), or None for plain values."""
    codec = REGISTRY.model_codec(obj)
    return codec.name if codec is not None else None


def model_hook(obj: object) -> tuple[str, bytes] | None:
    """(codec name, payload) for a model object this registry knows, else None (for ``tree.encode``)."""
    encoded = REGISTRY.encode_model(obj, _DEFAULT_ENCODE)
    if encoded is None:
        return None
    return encoded.codec, bytes(encoded.payload)


def encode_member(obj: object, ctx: EncodeContext | None = None, *, codec: str | None = None) -> Encoded:
    """Encode one bundle member, with ``codec`` (an id) or the codec chosen for ``obj``."""
    return REGISTRY.encode(obj, ctx or _DEFAULT_ENCODE, codec=codec)


def decode_member(codec: str, payload: Payload, ctx: DecodeContext | None = None) -> object:
    """Rebuild a member or an embedded model; unknown codecs raise FormatError."""
    return REGISTRY.decode(codec, payload, ctx or _DEFAULT_DECODE)


def audit_member(codec: str, payload: Payload, ctx: DecodeContext | None = None) -> list[str]:
    """The types decoding would import and construct (including embedded models); [] for plain data."""
    return REGISTRY.audit(codec, payload, ctx or _DEFAULT_DECODE)
