"""torch tensors, state dicts and ``nn.Module`` weights through safetensors.

The payload is a tree value (``persistkit.format.tree``)::

    {"format": 1, "kind": "module" | "value", "class": "pkg.Net" | None,
     "tree": <the structure, tensors replaced by references>, "tensors": <safetensors bytes>}

The structure keeps what safetensors cannot (nesting, optimizer state dicts
with int keys and tuples, plain numbers), and every tensor is in the
safetensors blob. Tensors sharing storage (tied weights) are stored once and
come back as one tensor. An ``nn.Module`` is stored as its ``state_dict()``
and loads as that state dict (an ``OrderedDict`` of tensors), because
rebuilding the module would mean importing and calling a class named by the
file; call ``module.load_state_dict(...)`` on your own instance.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from persistkit.errors import FormatError, UnsupportedTypeError
from persistkit.format import tree

__all__ = ["decode", "encode", "is_torch", "join_tensors", "split_tensors"]

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
    payload: bytes | bytearray | memoryview, *, device: str = "cpu", source: str = "torch member"
) -> object:
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
    return join_tensors(outer["tree"], outer["tensors"], device=device, source=source)
