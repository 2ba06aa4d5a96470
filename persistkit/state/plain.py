"""Plain containers registered directly as components: a dict, a list or a numpy array.

They have no ``state_dict()``, and they are mutable in place, so the store
treats them as their own state: a save encodes their current contents (the
encoded bytes are the snapshot, so later changes are seen as changes), and a
load puts the stored contents back *into the registered object* (the caller
keeps its reference): ``dict.clear()`` + ``update``, ``list[:] =``, and
``array[...] =``. An array's shape and dtype are fixed by the registered one,
so stored contents of another shape or dtype raise ``MigrationError``.
"""

from __future__ import annotations

from typing import Any, Literal

from persistkit.errors import MigrationError

__all__ = ["load_plain", "plain_kind", "plain_state"]

Kind = Literal["dict", "list", "ndarray"]


def plain_kind(component: object) -> Kind | None:
    """The kind of plain container ``component`` is, or None (objects with a state API are not plain)."""
    if callable(getattr(component, "state_dict", None)) and callable(
        getattr(component, "load_state_dict", None)
    ):
        return None
    if callable(getattr(type(component), "__setstate__", None)) and not _is_ndarray(component):
        return None  # a subclass that chose __getstate__/__setstate__ keeps them
    if isinstance(component, dict):
        return "dict"
    if isinstance(component, list):
        return "list"
    return "ndarray" if _is_ndarray(component) else None


def _is_ndarray(component: object) -> bool:
    return type(component).__module__ == "numpy" and type(component).__name__ == "ndarray"


def plain_state(component: Any, kind: Kind) -> Any:
    """What a save stores: the contents, encoded by the caller right away (that is the snapshot)."""
    if kind == "dict":
        return dict(component)
    if kind == "list":
        return list(component)
    return component


def load_plain(component: Any, kind: Kind, state: Any, name: str) -> None:
    """Put ``state`` into ``component`` in place; MigrationError when it cannot fit."""
    if kind == "dict":
        if not isinstance(state, dict):
            raise _mismatch(name, "a dict", state)
        component.clear()
        component.update(state)
        return
    if kind == "list":
        if not isinstance(state, list):
            raise _mismatch(name, "a list", state)
        component[:] = state
        return
    import numpy as np

    if not isinstance(state, np.ndarray):
        raise _mismatch(name, f"an array of shape {component.shape}", state)
    if state.shape != component.shape or state.dtype != component.dtype:
        raise MigrationError(
            f"component {name!r}: the stored array is {state.dtype}{list(state.shape)}, the registered one is "
            f"{component.dtype}{list(component.shape)}; an array loads in place, so its shape and dtype must "
            "match. Register an array of the stored shape and dtype, or bump the version with a migration that "
            "converts the stored one.",
            member=name,
        )
    if not component.flags.writeable:
        raise MigrationError(
            f"component {name!r}: the registered array is read-only, so the stored one cannot be loaded into it. "
            "Register a writeable array.",
            member=name,
        )
    component[...] = state


def _mismatch(name: str, expected: str, state: object) -> MigrationError:
    return MigrationError(
        f"component {name!r}: the stored state is a {type(state).__name__}, the registered component needs "
        f"{expected}. Register the kind of object that was saved, or bump the version with a migration.",
        member=name,
    )
