"""What a codec is: the ``Codec`` base class, the one encode and decode context, ``Encoded``.

A codec turns one kind of object into bytes and back. Everything the rest of
persistkit needs to know about it is on the codec object, so bundle code,
provenance and verify ask the codec instead of keeping lists of codec names:

``name``
    the on-disk codec id, written into the manifest and the envelope header.
    It never changes once files exist.
``packages``
    the distributions decoding depends on (and must import): their versions
    are recorded in every bundle and compared at load (``VersionSkewWarning``).
``extra``
    the ``persistkit[extra]`` that installs them, for the ImportError advice.
``constructs_types``
    decoding may import and construct types named by the payload; ``audit``
    lists them without constructing anything. An unencrypted bundle then
    loads such a member only when the caller trusts it.
``embeds_in_values``
    the objects it handles are models that a tree value (a dict member, a
    state-store component) holds as embedded models (``model_hook``).

``handles(obj)`` recognises objects by the name of their type's module, so
asking it imports no framework. ``encode`` may raise ``Declined`` when it
handles the type but not this instance; the registry then tries the next
codec that handles the object (decision forests holding a ``RandomState``
go to skops, numpy dicts with too many arrays to the tree codec).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Codec",
    "DecodeContext",
    "Declined",
    "EncodeContext",
    "Encoded",
    "MetaValue",
    "Payload",
    "decode_member",
    "derives_from",
    "fixed_class",
    "type_family",
    "type_name",
]

MetaValue = None | bool | int | float | str
Payload = bytes | bytearray | memoryview

# Families whose objects are never models: a user class deriving from a framework base is
# looked for (by walking the MRO) only outside these.
_PLAIN_FAMILIES = frozenset({"builtins", "numpy", "collections", "datetime", "decimal", "uuid"})


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
    payload: Payload
    meta: Mapping[str, MetaValue] = field(default_factory=dict)
    info: Mapping[str, object] = field(default_factory=dict)
    compressible: bool = True


@dataclass(frozen=True)
class EncodeContext:
    """How to encode: ``name`` names the member (or value) in errors; ``save_replay_buffer`` is for SB3."""

    name: str = "value"
    save_replay_buffer: bool = False


@dataclass(frozen=True)
class DecodeContext:
    """Everything a codec may need to rebuild a member, in one place.

    ``trusted`` extends the pinned allowlists of codecs that construct types
    (``True``: the pinned lists alone, never "anything"). ``env`` and
    ``device`` go to SB3 models (``device`` to torch tensors too).
    ``modules`` maps member names to factories for stored torch modules, and
    ``as_state_dict`` returns a module's state dict when there is none.
    ``custom_objects`` replaces attributes of SB3 models before they are
    rebuilt. ``name`` is the member's name (None inside a value, where there is
    no name to key a factory on), ``source`` names it in errors, and ``meta``
    is its envelope meta (the numpy codec keeps its npy headers there).
    """

    trusted: Sequence[str] | bool = ()
    env: object = None
    device: str = "cpu"
    modules: Mapping[str, Callable[[], Any]] = field(default_factory=dict)
    as_state_dict: bool = True
    custom_objects: Mapping[str, Any] | None = None
    name: str | None = None
    source: str = "member"
    meta: Mapping[str, object] = field(default_factory=dict)

    def for_member(
        self, name: str | None, *, source: str, meta: Mapping[str, object] | None = None
    ) -> DecodeContext:
        """This context for one member: its name, the source naming it in errors, its envelope meta."""
        return dataclasses.replace(self, name=name, source=source, meta=meta if meta is not None else {})

    def embedded(self) -> DecodeContext:
        """The context for a model embedded in a value: no member name, no meta, no SB3 overrides."""
        return dataclasses.replace(self, name=None, meta={}, custom_objects=None)

    @property
    def module(self) -> Callable[[], Any] | None:
        """The caller's factory for this member's torch module, if any."""
        return self.modules.get(self.name) if self.name is not None else None


class Declined(Exception):
    """Raised by ``Codec.encode``: this codec handles the type but cannot store this object.

    Only the registry sees it (it tries the next codec that handles the
    object); it never reaches the caller.
    """


class Codec:
    """Base class of every codec (built in or registered by a third party); see the module docstring."""

    name: str = ""
    packages: tuple[str, ...] = ()
    extra: str | None = None
    constructs_types: bool = False
    embeds_in_values: bool = False

    def handles(self, obj: object) -> bool:
        """True when ``encode`` is meant for ``obj`` (by type name; no framework is imported to decide)."""
        return False

    def encode(self, obj: object, ctx: EncodeContext) -> Encoded:
        raise NotImplementedError(f"the {self.name!r} codec does not encode")

    def decode(self, payload: Payload, ctx: DecodeContext) -> object:
        raise NotImplementedError(f"the {self.name!r} codec does not decode")

    def audit(self, payload: Payload, ctx: DecodeContext) -> list[str]:
        """The types decoding would import and construct, found without constructing any."""
        return []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def type_name(obj: object) -> str:
    """``module.QualName`` of the object's type."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def type_family(obj: object) -> str:
    """The top-level package of the object's type (``sklearn``, ``torch``, ``builtins``...)."""
    return type(obj).__module__.split(".", 1)[0]


def derives_from(obj: object, base: str) -> bool:
    """True when a base class of ``type(obj)`` is named ``base`` (``module.QualName``); nothing is imported.

    For user classes deriving from a framework base (``MyNet(nn.Module)``, a
    custom estimator). Plain values (builtins, numpy, ...) are never looked at.
    """
    if type_family(obj) in _PLAIN_FAMILIES:
        return False
    cls: Any = type(obj)  # typeshed does not call types Hashable
    try:
        return base in _base_names(cls)
    except TypeError:  # a metaclass that makes its classes unhashable
        return any(f"{cls.__module__}.{cls.__qualname__}" == base for cls in type(obj).__mro__[1:])


@functools.lru_cache(maxsize=1024)
def _base_names(cls: type) -> frozenset[str]:
    """Qualified names of the base classes (cached: choosing a codec asks for every unknown object)."""
    return frozenset(f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__[1:])


# -- shared by the codecs that rebuild a fixed set of framework classes (keras, lightgbm, xgboost) -----


def decode_member(payload: Payload, source: str, *, codec: str, newest: int) -> Any:
    """The member's outer tree; a ``format`` newer than ``newest`` is a ``NewerFormatError``."""
    from persistkit.errors import NewerFormatError
    from persistkit.format import tree

    outer = tree.decode(payload, source=source)
    if isinstance(outer, dict) and type(outer.get("format")) is int and outer["format"] > newest:
        raise NewerFormatError(
            f"{source} was written by a newer persistkit ({codec} member format {outer['format']}); upgrade "
            "persistkit to read it.",
            member=source,
        )
    return outer


def fixed_class(name: str, classes: Mapping[str, tuple[str, str]], source: str) -> Any:
    """The class ``name`` stands for among the only ones a codec constructs; any other name is refused."""
    import importlib

    from persistkit.errors import UntrustedTypeError

    if name not in classes:
        raise UntrustedTypeError(
            f"{source} names {name!r}, which this codec never constructs (it rebuilds only "
            f"{', '.join(sorted(classes))}). The member is damaged or forged.",
            types=[name],
            member=source,
        )
    module, cls_name = classes[name]
    return getattr(importlib.import_module(module), cls_name)
