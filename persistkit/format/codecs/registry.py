"""The ordered codec registry: which codec stores an object, and the codec named by a file.

Built-in codecs are loaded on first use from ``BUILTIN`` (module paths, each
module defining ``CODEC``), so importing the registry imports no codec module
and no framework. Third-party codecs join with ``register(codec)`` and are
consulted before the built-in ones, in the order they were registered.

Order matters for choosing: the first codec whose ``handles(obj)`` is true
encodes the object, unless it raises ``Declined``; then the next one that
handles it does. The built-in order puts the model codecs (decision forests,
XGBoost, LightGBM and Keras before skops and torch, whose base classes their
models derive from; then SB3) before the value codecs (bytes, numpy, and the tree
codec, which takes anything a tree value can hold).
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Iterator

from persistkit.errors import NewerFormatError, UnsupportedTypeError
from persistkit.format.codecs.base import Codec, Declined, DecodeContext, EncodeContext, Encoded, Payload

__all__ = ["BUILTIN", "CodecRegistry"]

# The built-in codecs in choosing order; each module defines CODEC.
BUILTIN: tuple[str, ...] = (
    "persistkit.format.codecs.sklearn_forests",  # "sklearn-trees": before skops, which it beats ~5x
    # before skops: their sklearn wrappers derive from sklearn's BaseEstimator
    "persistkit.format.codecs.xgboost",  # "xgboost"
    "persistkit.format.codecs.lightgbm",  # "lightgbm"
    "persistkit.format.codecs.keras",  # "keras": before torch, since on the torch backend a model is an nn.Module
    "persistkit.format.codecs.sklearn",  # "sklearn"
    "persistkit.format.codecs.torch",  # "torch"
    "persistkit.format.codecs.sb3",  # "sb3"
    "persistkit.format.codecs.raw",  # "bytes"
    "persistkit.format.codecs.numpy",  # "numpy"
    "persistkit.format.codecs.json",  # "json": only when asked for by name
    "persistkit.format.codecs.values",  # "tree": anything a tree value holds, models embedded
)
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class CodecRegistry:
    def __init__(self, builtin: tuple[str, ...] = BUILTIN) -> None:
        self._builtin_modules = builtin
        self._builtin: tuple[Codec, ...] | None = None
        self._extra: tuple[Codec, ...] = ()
        # Derived views, rebuilt whenever membership changes (dispatch runs per member and per
        # embedded model, so it only reads these).
        self._all: tuple[Codec, ...] = ()
        self._models: tuple[Codec, ...] = ()
        self._by_name: dict[str, Codec] = {}
        self._lock = threading.Lock()

    # -- membership --

    def _codecs(self) -> tuple[Codec, ...]:
        if self._builtin is None:
            with self._lock:
                if self._builtin is None:
                    loaded = [importlib.import_module(m).CODEC for m in self._builtin_modules]
                    self._builtin = tuple(c for c in loaded if isinstance(c, Codec))
                    self._rebuild()
        return self._all

    def _rebuild(self) -> None:  # under self._lock
        codecs = (*self._extra, *(self._builtin or ()))
        self._by_name = {c.name: c for c in codecs}
        self._models = tuple(c for c in codecs if c.embeds_in_values)
        self._all = codecs

    def __iter__(self) -> Iterator[Codec]:
        return iter(self._codecs())

    def names(self) -> list[str]:
        return [c.name for c in self._codecs()]

    def register(self, codec: Codec) -> Codec:
        """Add a third-party codec (consulted before the built-in ones); returns it, so it can decorate."""
        if not isinstance(codec, Codec):
            raise TypeError(f"register() takes a persistkit.format.codecs.Codec, not {type(codec).__name__}")
        if type(codec.name) is not str or not _NAME.fullmatch(codec.name):
            raise ValueError(
                f"codec name {codec.name!r} is not valid: use 1-64 lowercase letters, digits, '.', '_' or '-', "
                "starting with a letter or digit (it is written into every file the codec stores)."
            )
        if not (isinstance(codec.packages, tuple) and all(type(p) is str for p in codec.packages)):
            raise TypeError(
                f"codec {codec.name!r}: packages must be a tuple of distribution names (their versions are "
                f"recorded in every bundle), not {codec.packages!r}"
            )
        self._codecs()  # the built-in codecs are loaded first, so their names are taken
        with self._lock:
            if codec.name in self._by_name:
                raise ValueError(
                    f"a codec named {codec.name!r} is already registered; codec names are written into files, "
                    "so each must name one codec. Pick another name."
                )
            self._extra = (*self._extra, codec)
            self._rebuild()
        return codec

    def unregister(self, name: str) -> None:
        """Remove a third-party codec (built-in codecs stay)."""
        with self._lock:
            kept = tuple(c for c in self._extra if c.name != name)
            if len(kept) == len(self._extra):
                raise KeyError(f"no third-party codec named {name!r} is registered")
            self._extra = kept
            self._rebuild()

    def find(self, name: str) -> Codec | None:
        self._codecs()
        return self._by_name.get(name)

    def get(self, name: str, *, source: str | None = None) -> Codec:
        """The codec called ``name``; FormatError (field "codec") when this persistkit knows none.

        ``source`` names the member (or the value embedding a model) in the error.
        """
        codec = self.find(name)
        if codec is None:
            where = f"{source}: " if source else ""
            raise NewerFormatError(
                f"{where}unknown member codec {name!r}; it may come from a newer persistkit (this one knows "
                f"{', '.join(sorted(self.names()))}), or from a codec this program has not registered. "
                "Upgrade persistkit (or register the codec) to read it.",
                member=source,
                field="codec",
            )
        return codec

    def packages(self) -> list[str]:
        """Every distribution some codec depends on, each once, in codec order."""
        found: list[str] = []
        for codec in self._codecs():
            found.extend(p for p in codec.packages if p not in found)
        return found

    # -- choosing --

    def choose(self, obj: object) -> Codec:
        """The first codec that handles ``obj`` (the one a member of it is meant for)."""
        for codec in self._codecs():
            if codec.handles(obj):
                return codec
        raise UnsupportedTypeError(f"no codec stores a {type(obj).__module__}.{type(obj).__qualname__}.")

    def model_codec(self, obj: object) -> Codec | None:
        """The codec for a model object (one a tree value embeds rather than holds), else None."""
        self._codecs()
        for codec in self._models:
            if codec.handles(obj):
                return codec
        return None

    # -- encoding, decoding, auditing --

    def encode(self, obj: object, ctx: EncodeContext, *, codec: str | None = None) -> Encoded:
        """Encode with ``codec`` (by name) or the first codec that handles ``obj``; on ``Declined``, the next."""
        codecs = self._codecs()
        if codec is not None:
            first = self.get(codec)
            start = codecs.index(first)
            candidates = [first, *(c for c in codecs[start + 1 :] if c.handles(obj))]
        else:
            candidates = [c for c in codecs if c.handles(obj)]
        return self._encode_first(obj, ctx, candidates)

    def encode_model(self, obj: object, ctx: EncodeContext) -> Encoded | None:
        """Encode a model object with the codecs that embed in values; None when none handles it."""
        self._codecs()
        candidates = [c for c in self._models if c.handles(obj)]
        return self._encode_first(obj, ctx, candidates) if candidates else None

    def _encode_first(self, obj: object, ctx: EncodeContext, candidates: list[Codec]) -> Encoded:
        declined: Declined | None = None
        for candidate in candidates:
            try:
                encoded = candidate.encode(obj, ctx)
            except Declined as why:
                declined = why
                continue
            except ModuleNotFoundError as err:
                raise _install_advice(candidate, ctx.name, err) from err
            if encoded.codec != candidate.name:
                raise TypeError(
                    f"codec {candidate.name!r} returned a member labelled {encoded.codec!r}; a codec labels "
                    "what it encodes with its own name"
                )
            return encoded
        what = f"{type(obj).__module__}.{type(obj).__qualname__}"
        reason = f" ({declined})" if declined is not None else ""
        raise UnsupportedTypeError(
            f"{ctx.name}: no codec can store this {what}{reason}. Convert it to a type persistkit stores "
            "(see persistkit.format.codecs), or register a codec for it.",
            field=ctx.name,
        ) from declined

    def decode(self, name: str, payload: Payload, ctx: DecodeContext) -> object:
        codec = self.get(name, source=ctx.source)
        try:
            return codec.decode(payload, ctx)
        except ModuleNotFoundError as err:
            raise _install_advice(codec, ctx.source, err) from err

    def audit(self, name: str, payload: Payload, ctx: DecodeContext) -> list[str]:
        codec = self.get(name, source=ctx.source)
        try:
            return codec.audit(payload, ctx)
        except ModuleNotFoundError as err:
            raise _install_advice(codec, ctx.source, err) from err


def _install_advice(codec: Codec, where: str, err: ModuleNotFoundError) -> ModuleNotFoundError:
    """A library the codec needs but cannot import, as an ImportError that says what to install."""
    if getattr(err, "persistkit_advice", False) or not (codec.extra or codec.packages):
        return err  # a nested codec's advice stays as it is
    how = (
        f"pip install 'persistkit[{codec.extra}]'"
        if codec.extra
        else f"pip install {' '.join(codec.packages)}"
    )
    advice = ModuleNotFoundError(
        f"{where}: the {codec.name!r} codec needs the module {err.name or '?'!r}, which is not installed; {how}.",
        name=err.name,
    )
    advice.persistkit_advice = True  # type: ignore[attr-defined]
    return advice
