"""torch tensors, state dicts and ``nn.Module`` weights through safetensors.

The payload is a tree value (``persistkit.format.tree``)::

    {"format": 1, "kind": "module" | "value", "class": "pkg.Net" | None,
     "tree": <the structure, tensors replaced by references>, "tensors": <safetensors bytes>}

The structure keeps what safetensors cannot (nesting, optimizer state dicts
with int keys and tuples, plain numbers), and every tensor is in the
safetensors blob. Tensors sharing storage (tied weights) are stored once and
come back as one tensor.

An ``nn.Module`` is stored as its ``state_dict()`` with its class path
(``"class"``), and loads as a module again, never silently as something else.
persistkit never imports a class named by the file, so the caller says how to
build it: ``load_bundle(path, modules={"net": MyNet})`` (the class, called
with no arguments, or any zero-argument factory such as
``lambda: MyNet(hidden=64)``); the weights then go in through
``load_state_dict(strict=True)``. Without a factory, loading raises
``UntrustedTypeError`` naming the member and the class and what to pass;
``as_state_dict=True`` returns the state dict (an ``OrderedDict`` of tensors)
instead. A module inside a tree value (a dict member) has no name to key a
factory on: in a bundle it raises the same error unless ``as_state_dict=True``;
in a state store component it loads as its state dict.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from persistkit.errors import FormatError, UnsupportedTypeError, UntrustedTypeError
from persistkit.format import tree
from persistkit.format.codecs.base import (
    Codec,
    DecodeContext,
    EncodeContext,
    Encoded,
    Payload,
    derives_from,
    type_family,
)

__all__ = ["CODEC", "TorchCodec", "decode", "encode", "is_torch", "join_tensors", "split_tensors"]

_TENSOR_REF = "torch.tensor"


def is_torch(obj: object) -> bool:
    module = type(obj).__module__
    return module == "torch" or module.startswith("torch.")


def _is_module(obj: object) -> bool:
    import torch

    return isinstance(obj, torch.nn.Module)


def split_tensors(value: object, *, root: str = "value") -> tuple[bytes, bytes]:
    """(tree bytes with tensor references, safetensors bytes holding every tensor)."""
    import torch
    from safetensors.torch import save

    tensors: dict[str, Any] = {}
    seen: dict[tuple[Any, ...], str] = {}

    def hook(obj: object) -> tuple[str, bytes] | None:
        if not isinstance(obj, torch.Tensor):
            return None
        t = obj.detach()
        if t.layout != torch.strided or t.is_quantized or t.is_nested:
            raise UnsupportedTypeError(
                f"{root}: a {t.layout} tensor cannot be stored by safetensors; convert it to a dense tensor.",
                field=root,
            )
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        name = seen.get(key)
        if name is None:
            name = seen[key] = f"t{len(tensors)}"
            tensors[name] = t.to("cpu").contiguous()
        return _TENSOR_REF, name.encode()

    structure = tree.encode(value, root=root, model_hook=hook)
    # safetensors refuses tensors that share memory; only views that differ in shape/offset get here
    # (exact duplicates were merged above), so give each its own copy.
    ptrs: dict[int, int] = {}
    for t in tensors.values():
        ptrs[t.untyped_storage().data_ptr()] = ptrs.get(t.untyped_storage().data_ptr(), 0) + 1
    for name, t in list(tensors.items()):
        if t.numel() and ptrs[t.untyped_storage().data_ptr()] > 1:
            tensors[name] = t.clone()
    blob: bytes = save(tensors) if tensors else b""
    return structure, blob


def join_tensors(
    structure: bytes, blob: bytes, *, device: str = "cpu", source: str = "torch member"
) -> object:
    """Inverse of ``split_tensors``: tensors land on ``device``."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(blob) if blob else {}
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise FormatError(
            f"{source}: the safetensors part does not parse ({err}). Restore the bundle from a backup.",
            member=source,
        ) from err
    if device != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}

    def resolve(codec: str, payload: bytes) -> object:
        if codec != _TENSOR_REF:
            raise FormatError(
                f"{source}: unexpected embedded object {codec!r} in a torch member.", member=source
            )
        name = payload.decode("ascii", "replace")
        if name not in tensors:
            raise FormatError(f"{source}: refers to tensor {name!r}, which is missing.", member=source)
        return tensors[name]

    return tree.decode(structure, model_resolver=resolve, source=source)


def encode(obj: object) -> bytes:
    if _is_module(obj):
        kind, cls = "module", f"{type(obj).__module__}.{type(obj).__qualname__}"
        value: object = obj.state_dict()  # type: ignore[attr-defined]
    else:
        kind, cls, value = "value", None, obj
    structure, blob = split_tensors(value, root="torch value")
    return tree.encode({"format": 1, "kind": kind, "class": cls, "tree": structure, "tensors": blob})


def info(obj: object) -> dict[str, object]:
    if _is_module(obj):
        n = sum(p.numel() for p in obj.parameters())  # type: ignore[attr-defined]
        return {"class": f"{type(obj).__module__}.{type(obj).__qualname__}", "parameters": int(n)}
    return {"class": f"{type(obj).__module__}.{type(obj).__qualname__}"}


def decode(
    payload: bytes | bytearray | memoryview,
    *,
    device: str = "cpu",
    source: str = "torch member",
    module: Callable[[], Any] | None = None,
    as_state_dict: bool = True,
    name: str | None = None,
) -> object:
    """The stored value; a stored ``nn.Module`` is rebuilt by ``module`` (see the module docstring).

    With no ``module``, a stored module comes back as its state dict when
    ``as_state_dict`` is true and raises ``UntrustedTypeError`` otherwise.
    """
    outer = tree.decode(payload, source=source)
    if (
        not isinstance(outer, Mapping)
        or outer.get("format") != 1
        or type(outer.get("tree")) is not bytes
        or type(outer.get("tensors")) is not bytes
    ):
        raise FormatError(
            f"{source} is not a persistkit torch member (format 1). It was written by a newer persistkit or "
            "is damaged; upgrade persistkit or restore the bundle from a backup.",
            member=source,
        )
    value = join_tensors(outer["tree"], outer["tensors"], device=device, source=source)
    if outer.get("kind") != "module":
        return value
    cls = str(outer.get("class"))
    if module is None:
        if as_state_dict:
            return value
        short = cls.rsplit(".", 1)[-1]
        if name is not None:
            how = (
                f"Pass modules={{{name!r}: {short}}} to load_bundle (the class, or a zero-argument factory such "
                f"as lambda: {short}(...)) to rebuild it, or as_state_dict=True to get its state dict."
            )
        else:  # inside a value: no member name to key a factory on
            how = (
                "It sits inside a value, where it can only come back as its state dict: pass "
                "as_state_dict=True to load_bundle for that, or save the module as a member of its own and "
                f"load it with modules={{'<member>': {short}}}."
            )
        raise UntrustedTypeError(
            f"{source} holds a torch module of class {cls}, stored as its weights; persistkit does not import "
            f"classes named by a file. {how}",
            types=[cls],
            member=source,
        )
    return _rebuild_module(module, value, cls, device, source)


def _rebuild_module(factory: Callable[[], Any], state: object, cls: str, device: str, source: str) -> object:
    import torch

    try:
        built = factory()
    except TypeError as err:
        raise TypeError(
            f"{source}: could not build the module from {factory!r} ({err}); pass a zero-argument factory, "
            f"e.g. modules={{<member>: lambda: {cls.rsplit('.', 1)[-1]}(...)}}."
        ) from err
    if not isinstance(built, torch.nn.Module):
        raise TypeError(
            f"{source}: the factory for the module returned a {type(built).__name__}, not an nn.Module"
        )
    try:
        built.load_state_dict(state, strict=True)  # type: ignore[arg-type]
    except RuntimeError as err:
        raise FormatError(
            f"{source}: the stored weights of {cls} do not fit the module the factory built "
            f"({type(built).__module__}.{type(built).__qualname__}): {err}. Build it with the same architecture "
            "(layer sizes, options) as the saved one.",
            member=source,
        ) from err
    return built.to(device) if device != "cpu" else built


class TorchCodec(Codec):
    """Tensors, state dicts and ``nn.Module`` weights; a module is rebuilt only by the caller's factory."""

    name = "torch"
    packages = ("torch", "safetensors")
    extra = "torch"
    embeds_in_values = True

    def handles(self, obj: object) -> bool:
        return type_family(obj) == "torch" or derives_from(obj, "torch.nn.modules.module.Module")

    def encode(self, obj: object, ctx: EncodeContext) -> Encoded:
        return Encoded(self.name, encode(obj), info=info(obj), compressible=False)

    def decode(self, payload: Payload, ctx: DecodeContext) -> object:
        return decode(
            payload,
            device=ctx.device,
            source=ctx.source,
            module=ctx.module,
            as_state_dict=ctx.as_state_dict,
            name=ctx.name,
        )


CODEC = TorchCodec()
