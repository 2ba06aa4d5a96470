"""Keras 3 models as Keras' own config JSON plus weights in its ``.weights.h5`` format.

Size: over 500 lines because the pinned allowlist of Keras' own classes is spelled out here.

Payload: a tree value (``persistkit.format.tree``)::

    {"format": 1, "config": <UTF-8 JSON: the model's serialized config, with compile config>,
     "weights": <bytes of a .weights.h5 file: layer and optimizer variables>,
     "keras": "3.15.1", "backend": "torch"}

These are the two parts of a ``.keras`` file (``model.save``), written and
read in memory: ``model.save`` would write through a temporary directory of
its own, outside ``persistkit.io``, so the codec calls the functions behind
``save_weights``/``load_weights`` (``keras.src.saving.saving_lib``) on an
in-memory HDF5 file instead. The optimizer's variables are in the weights, so
a compiled model resumes training where it stopped.

Backend. Keras picks its backend once, when it is first imported, from
``KERAS_BACKEND`` (else ``~/.keras/keras.json``, whose default is TensorFlow).
persistkit installs Keras for the torch backend (``persistkit[keras]``): when
Keras is not imported yet and ``KERAS_BACKEND`` is unset, the codec sets it to
``torch`` before importing Keras. A program that imported Keras itself keeps
its backend: the config and ``.weights.h5`` formats do not depend on it, so a
model saved under one backend loads under another (only torch is tested
here), and the backend used to save is recorded. A ``KERAS_BACKEND`` naming a
backend that is not installed is an ImportError that says so.

Loading never runs code from the file. Before Keras sees anything, every
object the config would construct is listed (``audit``) and checked against
pinned lists of Keras' own layers, initializers, regularizers, constraints,
optimizers, losses and metrics (``ALLOWED``); a Python lambda (``Lambda``
layers) is never loaded, and anything else (a custom layer, a class from
another module) raises ``UntrustedTypeError`` unless ``trusted=[...]`` names it
(and the program has registered it with Keras). Keras then rebuilds the model
in ``safe_mode`` (forced on for the call, even when the program enabled
unsafe deserialization globally). The weights file is walked first: only
groups and plain numeric datasets, no soft or external links, no external or
virtual storage, no declared size far beyond the bytes stored; Keras then
refuses weights that do not fit the layers (count or shape).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from persistkit.errors import FormatError, UnsupportedTypeError, UntrustedTypeError
from persistkit.format import tree
from persistkit.format.codecs.base import (
    Codec,
    DecodeContext,
    EncodeContext,
    Encoded,
    Payload,
    decode_member,
    derives_from,
    type_family,
    type_name,
)

__all__ = ["ALLOWED", "CODEC", "KerasCodec", "audit", "decode", "encode", "import_keras"]

FORMAT = 1
LAMBDA = "__lambda__ (Python bytecode)"

_LAYERS = (
    "InputLayer", "Dense", "EinsumDense", "Embedding", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
    "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "Activation", "ReLU", "LeakyReLU",
    "PReLU", "ELU", "Softmax", "LSTM", "GRU", "SimpleRNN", "LSTMCell", "GRUCell", "SimpleRNNCell",
    "StackedRNNCells", "RNN", "Bidirectional", "TimeDistributed", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D",
    "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose", "SeparableConv1D",
    "SeparableConv2D", "DepthwiseConv1D", "DepthwiseConv2D", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
    "GlobalMaxPooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "BatchNormalization", "LayerNormalization", "GroupNormalization", "UnitNormalization", "RMSNormalization",
    "Normalization", "Rescaling", "Flatten", "Reshape", "Permute", "RepeatVector", "Cropping1D", "Cropping2D",
    "Cropping3D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "UpSampling1D", "UpSampling2D",
    "UpSampling3D", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "Dot",
    "Attention", "AdditiveAttention", "MultiHeadAttention", "GroupedQueryAttention", "Masking", "Identity",
)  # fmt: skip
_INITIALIZERS = (
    "Constant", "GlorotNormal", "GlorotUniform", "HeNormal", "HeUniform", "Identity", "LecunNormal",
    "LecunUniform", "Ones", "Orthogonal", "RandomNormal", "RandomUniform", "TruncatedNormal", "VarianceScaling",
    "Zeros",
)  # fmt: skip
_REGULARIZERS = ("L1", "L2", "L1L2", "OrthogonalRegularizer")
_CONSTRAINTS = ("MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm")
_OPTIMIZERS = ("Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax", "Ftrl", "Lamb", "Lion", "Nadam",
               "RMSprop", "SGD")  # fmt: skip
# The torch backend's own optimizer classes, as Keras names them in a config.
_TORCH_OPTIMIZERS = {
    "Adadelta": "torch_adadelta", "Adagrad": "torch_adagrad", "Adam": "torch_adam", "AdamW": "torch_adamw",
    "Adamax": "torch_adamax", "Lion": "torch_lion", "Nadam": "torch_nadam", "RMSprop": "torch_rmsprop",
    "SGD": "torch_sgd",
}  # fmt: skip
_LOSSES = (
    "BinaryCrossentropy", "BinaryFocalCrossentropy", "CategoricalCrossentropy", "CategoricalFocalCrossentropy",
    "CategoricalHinge", "CosineSimilarity", "Hinge", "Huber", "KLDivergence", "LogCosh", "MeanAbsoluteError",
    "MeanAbsolutePercentageError", "MeanSquaredError", "MeanSquaredLogarithmicError", "Poisson",
    "SparseCategoricalCrossentropy", "SquaredHinge", "Tversky", "Dice", "Circle",
)  # fmt: skip
_METRICS = (
    "Accuracy", "AUC", "BinaryAccuracy", "BinaryCrossentropy", "BinaryIoU", "CategoricalAccuracy",
    "CategoricalCrossentropy", "CategoricalHinge", "CosineSimilarity", "F1Score", "FBetaScore", "FalseNegatives",
    "FalsePositives", "Hinge", "IoU", "KLDivergence", "LogCoshError", "Mean", "MeanAbsoluteError",
    "MeanAbsolutePercentageError", "MeanIoU", "MeanSquaredError", "MeanSquaredLogarithmicError", "OneHotIoU",
    "OneHotMeanIoU", "Poisson", "Precision", "PrecisionAtRecall", "R2Score", "Recall", "RecallAtPrecision",
    "RootMeanSquaredError", "SensitivityAtSpecificity", "SparseCategoricalAccuracy",
    "SparseCategoricalCrossentropy", "SparseTopKCategoricalAccuracy", "SpecificityAtSensitivity", "SquaredHinge",
    "Sum", "TopKCategoricalAccuracy", "TrueNegatives", "TruePositives",
)  # fmt: skip

# Every class a config may construct without trusted=, as "module.ClassName" the way Keras names it.
ALLOWED: frozenset[str] = frozenset(
    {
        "keras.Sequential", "keras.Model", "keras.src.models.functional.Functional", "keras.DTypePolicy",
        *(f"keras.layers.{n}" for n in _LAYERS),
        *(f"keras.initializers.{n}" for n in _INITIALIZERS),
        *(f"keras.regularizers.{n}" for n in _REGULARIZERS),
        *(f"keras.constraints.{n}" for n in _CONSTRAINTS),
        *(f"keras.optimizers.{n}" for n in _OPTIMIZERS),
        *(f"keras.src.backend.torch.optimizers.{m}.{n}" for n, m in _TORCH_OPTIMIZERS.items()),
        *(f"keras.losses.{n}" for n in _LOSSES),
        *(f"keras.metrics.{n}" for n in _METRICS),
    }
)  # fmt: skip
# Functions (activations, losses, metrics) are named in a config as module + function name; Keras looks
# them up among its exported symbols of that namespace only.
_FUNCTION_MODULES = frozenset({"keras.activations", "keras.losses", "keras.metrics"})
# Records Keras turns into data, constructing nothing named by the file.
_DATA_RECORDS = frozenset(
    {"__keras_tensor__", "__numpy__", "__bytes__", "__ellipsis__", "__slice__", "__tensor__"}
)
_MAX_DEPTH = 200
_H5_MAX_DEPTH = 32
_H5_DTYPES = frozenset("fiub")
_UNBUILT_OPTIMIZER_VARIABLES = 2  # iterations and learning rate: what an optimizer that never stepped saves


def _fail(source: str, what: str) -> FormatError:
    return FormatError(
        f"{source}: {what}. The Keras member is damaged or forged; restore the bundle from a backup.",
        member=source,
    )


def import_keras() -> Any:
    """Keras, on the torch backend unless the program already chose (see the module docstring)."""
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ModuleNotFoundError as err:
        if err.name is None or err.name.split(".")[0] == "keras":
            raise
        backend = os.environ.get("KERAS_BACKEND", "?")
        advice = ModuleNotFoundError(
            f"Keras could not start its {backend!r} backend: the module {err.name!r} is not installed. "
            "persistkit[keras] installs Keras for the torch backend: unset KERAS_BACKEND (persistkit then "
            "sets it to torch) or set KERAS_BACKEND=torch, or install that backend.",
            name=err.name,
        )
        advice.persistkit_advice = True  # type: ignore[attr-defined]
        raise advice from err
    return keras


# -- the config: what it would construct --------------------------------------------------


def _record_name(node: dict[str, Any]) -> str | None:
    """The type a config record constructs, as audit lists it; None for plain data records."""
    class_name, module, registered = node.get("class_name"), node.get("module"), node.get("registered_name")
    if class_name in ("__lambda__", "__typespec__"):
        return LAMBDA if class_name == "__lambda__" else "__typespec__ (TensorFlow type spec)"
    if class_name in _DATA_RECORDS and module is None:
        return None
    if class_name == "function":
        inner = node.get("config")
        if type(module) is str and type(inner) is str and registered in (None, inner):
            return f"{module}.{inner}"
        return f"function {registered if type(registered) is str else inner!r}"
    if type(class_name) is not str:
        return f"<a record with class_name {class_name!r}>"
    if registered is not None and registered != class_name:
        return str(registered)  # a custom object Keras finds by its registered name, not by module
    return f"{module if type(module) is str else '<no module>'}.{class_name}"


def _names(config: Any, source: str) -> list[str]:
    found: list[str] = []
    stack: list[tuple[Any, int]] = [(config, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise _fail(source, f"the config nests deeper than {_MAX_DEPTH}")
        if isinstance(node, dict):
            if "class_name" in node and "config" in node:  # what Keras deserializes as an object
                name = _record_name(node)
                if name is not None and name not in found:
                    found.append(name)
            stack.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, list):
            stack.extend((value, depth + 1) for value in node)
    return found


def _is_allowed(name: str, extra: frozenset[str]) -> bool:
    if name in ALLOWED or name in extra:
        return True
    module, _, function = name.rpartition(".")
    return module in _FUNCTION_MODULES and function.isidentifier() and not function.startswith("_")


def _parse_config(raw: bytes, source: str) -> Any:
    try:
        config = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise _fail(source, f"the model config is not JSON ({type(err).__name__})") from err
    if not isinstance(config, dict) or "class_name" not in config or "config" not in config:
        raise _fail(source, "the model config is not a serialized Keras object")
    return config


# -- encoding ---------------------------------------------------------------------------


def _keras_internals() -> Any:
    """``keras.src.saving.saving_lib``: the functions behind save_weights/load_weights, minus the path.

    Private on purpose: Keras' public savers take a file path and write it
    themselves (``model.save`` even through a temporary directory); persistkit
    writes every byte through ``persistkit.io``.
    """
    from keras.src.saving import saving_lib

    return saving_lib


def encode(obj: object, *, member: str = "model") -> bytes:
    keras = import_keras()
    model: Any = obj
    if not isinstance(model, keras.Model):
        raise UnsupportedTypeError(f"{member}: {type_name(obj)} is not a keras.Model", field=member)
    if not model.built:
        raise UnsupportedTypeError(
            f"Keras model {member!r} is not built, so it has no weights yet; call it on data (or model.build) "
            "before saving.",
            member=member,
        )
    with _numpy_copy_warning_silenced():
        return _encode(keras, model, member)


@contextlib.contextmanager
def _numpy_copy_warning_silenced() -> Iterator[None]:
    """Keras 3.15 turns torch tensors and variables into numpy with ``np.array(x)`` where ``x.__array__``
    predates numpy 2's ``copy`` keyword; numpy 2.4 warns about it for every weight. Nothing a caller
    of persistkit can act on, so it is silenced around the save (the filter is process-wide while it
    lasts: ``warnings.catch_warnings`` is the only way to scope one)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", "__array__ implementation doesn't accept a copy", DeprecationWarning
        )
        yield


def _encode(keras: Any, model: Any, member: str) -> bytes:
    saving_lib = _keras_internals()
    config_json, _ = saving_lib._serialize_model_as_json(model)
    config = json.loads(config_json)
    if LAMBDA in _names(config, member):
        raise UnsupportedTypeError(
            f"Keras model {member!r} holds a Lambda layer (a Python lambda, stored as bytecode); loading it would "
            "run code from the file, so persistkit does not store it. Write the computation as a layer class "
            "registered with keras.saving.register_keras_serializable and load with trusted=[its name].",
            member=member,
        )
    buffer = io.BytesIO()
    store = saving_lib.H5IOStore(buffer, mode="w")
    try:
        saving_lib._save_state(
            model, weights_store=store, assets_store=None, inner_path="", visited_saveables=set()
        )
    finally:
        store.close()
    return tree.encode(
        {
            "format": FORMAT,
            "config": config_json.encode("utf-8"),
            "weights": buffer.getvalue(),
            "keras": keras.__version__,
            "backend": keras.backend.backend(),
        },
        root=member,
    )


def info(obj: object) -> dict[str, object]:
    keras = import_keras()
    model: Any = obj
    return {
        "class": type_name(obj),
        "parameters": int(model.count_params()),
        "layers": len(model.layers),
        "backend": keras.backend.backend(),
    }


# -- decoding ---------------------------------------------------------------------------


def _outer(payload: Payload, source: str) -> dict[str, Any]:
    outer = decode_member(payload, source, codec="keras", newest=FORMAT)
    if not (
        isinstance(outer, dict)
        and outer.get("format") == FORMAT
        and type(outer.get("config")) is bytes
        and type(outer.get("weights")) is bytes
        and type(outer.get("keras")) is str
        and type(outer.get("backend")) is str
    ):
        raise _fail(source, "not a persistkit Keras member (format 1)")
    return outer


def audit(payload: Payload, *, source: str = "Keras member") -> list[str]:
    """Every class and function the config would construct or look up, read without importing Keras."""
    return _names(_parse_config(_outer(payload, source)["config"], source), source)


def _check_trust(names: Sequence[str], trusted: Sequence[str] | bool, source: str) -> None:
    extra = frozenset() if isinstance(trusted, bool) else frozenset(trusted)
    if LAMBDA in names:
        raise UntrustedTypeError(
            f"{source} holds a Python lambda (a Lambda layer's bytecode); persistkit never loads one, whatever "
            "trusted= says, because loading it runs code from the file.",
            types=[LAMBDA],
            member=source,
        )
    untrusted = [n for n in names if not _is_allowed(n, extra)]
    if untrusted:
        raise UntrustedTypeError(
            f"{source} would construct types outside persistkit's Keras allowlist: {', '.join(untrusted)}. "
            "Constructing them could run code. If you trust where the bundle came from, register them with "
            f"Keras and pass trusted={untrusted!r}.",
            types=untrusted,
            member=source,
        )


def _check_weights_file(raw: bytes, source: str) -> tuple[set[str], int | None]:
    """Walk the HDF5 file: groups and plain numeric datasets only, linked and stored in the file itself.

    Returns the paths of the objects that have variables (``layers/lstm/cell`` for
    ``layers/lstm/cell/vars/0``; "" for the model's own) and how many variables the saved optimizer
    has (None without one).
    """
    import h5py

    declared = 0
    owners: set[str] = set()

    # h5py's visitors stop at the first non-None return (an exception raised inside one escapes as a
    # SystemError), so each returns what is wrong.
    def link(name: str, found: Any) -> str | None:
        if not isinstance(found, h5py.HardLink):
            return f"the weights file links {name!r} elsewhere ({type(found).__name__})"
        if name.count("/") > _H5_MAX_DEPTH:
            return "the weights file nests too deep"
        return None

    def item(name: str, found: Any) -> str | None:
        nonlocal declared
        if isinstance(found, h5py.Dataset):
            if found.external or found.is_virtual:
                return f"weights {name!r} are stored outside the file"
            if found.dtype.kind not in _H5_DTYPES or found.dtype.fields is not None:
                return f"weights {name!r} are not plain numbers ({found.dtype})"
            declared += int(found.size) * found.dtype.itemsize
            group, _, _ = name.rpartition("/")
            owners.add(group.removesuffix("vars").removesuffix("/"))
        elif not isinstance(found, h5py.Group):
            return f"the weights file holds a {type(found).__name__} at {name!r}"
        return None

    try:
        with h5py.File(io.BytesIO(raw), "r") as weights:
            # every link first: visititems follows hard links only
            problem = weights.visititems_links(link) or weights.visititems(item)
            optimizer = weights.get("optimizer/vars") if problem is None else None
            optimizer_variables = len(optimizer) if isinstance(optimizer, h5py.Group) else None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SystemError) as err:
        raise _fail(
            source, f"the weights are not an HDF5 file h5py can read ({type(err).__name__}: {err})"
        ) from err
    if problem is not None:
        raise _fail(source, problem)
    if declared > 8 * len(raw) + (1 << 20):  # Keras stores weights uncompressed: this is a decompression bomb
        raise _fail(source, f"the weights declare {declared} bytes in a {len(raw)}-byte file")
    return owners, optimizer_variables


def decode(payload: Payload, *, trusted: Sequence[str] | bool = (), source: str = "Keras member") -> object:
    """Rebuild the model, compiled when it was saved compiled, with its weights and optimizer state."""
    outer = _outer(payload, source)
    config = _parse_config(outer["config"], source)
    _check_trust(_names(config, source), trusted, source)
    owners, saved_optimizer_variables = _check_weights_file(outer["weights"], source)
    keras = import_keras()
    saving_lib = _keras_internals()
    from keras.src.saving.serialization_lib import ObjectSharingScope, SafeModeScope

    try:
        with SafeModeScope(True), ObjectSharingScope():
            model = keras.saving.deserialize_keras_object(config, safe_mode=True)
        if not isinstance(model, keras.Model):
            raise _fail(source, f"the config builds a {type(model).__name__}, not a keras.Model")
        skip: set[int] = set()
        optimizer = getattr(model, "optimizer", None)
        if (
            optimizer is not None
            and saved_optimizer_variables is not None
            and saved_optimizer_variables <= _UNBUILT_OPTIMIZER_VARIABLES < len(optimizer.variables)
        ):
            # saved compiled but never trained: its optimizer had only iterations and learning rate,
            # both from the config; Keras would warn "Skipping variable loading" and load the rest
            skip.add(id(optimizer))
            owners.discard("optimizer")
        store = saving_lib.H5IOStore(io.BytesIO(outer["weights"]), mode="r")
        read: set[str] = set()
        get = store.get

        def recording_get(path: str) -> Any:  # which objects Keras asked the file for
            read.add(path)
            return get(path)

        store.get = recording_get
        failed: set[int] = set()
        errors: dict[int, Any] = {}
        try:
            saving_lib._load_state(
                model,
                weights_store=store,
                assets_store=None,
                inner_path="",
                visited_saveables=skip,
                failed_saveables=failed,
                error_msgs=errors,
            )
        finally:
            store.close()
        if failed:
            saving_lib._raise_loading_failure(errors)
        unread = sorted(owners - read)
        if unread:  # Keras ignores them; they mean the weights belong to another architecture
            raise _fail(
                source,
                f"the weights hold variables of {', '.join(unread[:5])}, which the config does not have",
            )
    except (FormatError, UntrustedTypeError):
        raise
    except (
        Exception
    ) as err:  # Keras raises ValueError, TypeError, KeyError... when config and weights disagree
        raise _fail(
            source, f"Keras could not rebuild the model ({type(err).__name__}: {str(err)[:500]})"
        ) from err
    return model


class KerasCodec(Codec):
    """Keras 3 models (``keras.Model``: Sequential, functional, and registered subclasses)."""

    name = "keras"
    packages = ("keras", "h5py", "numpy")
    extra = "keras"
    constructs_types = True
    embeds_in_values = True

    def handles(self, obj: object) -> bool:
        if type_family(obj) == "keras":  # keras is imported already: asking imports nothing new
            return isinstance(obj, sys.modules["keras"].Model) if "keras" in sys.modules else False
        return derives_from(obj, "keras.src.models.model.Model")

    def encode(self, obj: object, ctx: EncodeContext) -> Encoded:
        return Encoded(self.name, encode(obj, member=ctx.name), info=info(obj))

    def decode(self, payload: Payload, ctx: DecodeContext) -> object:
        return decode(payload, trusted=ctx.trusted, source=ctx.source)

    def audit(self, payload: Payload, ctx: DecodeContext) -> list[str]:
        return audit(payload, source=ctx.source)


CODEC = KerasCodec()
