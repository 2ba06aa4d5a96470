"""Registered components: how a StateStore reads a component's state and puts it back (with the checks)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from persistkit.errors import MigrationError
from persistkit.state.plain import load_plain, plain_kind

__all__ = ["Registration", "has_state_api", "load_state", "run_validator"]


@dataclass
class Registration:
    name: str
    component: Any
    version: int
    migrations: dict[int, Callable[[Any], Any]]
    max_bytes: int | None
    validate: Callable[[Any], Any] | None
    is_log: bool


def has_state_api(component: Any) -> bool:
    """state_dict()/load_state_dict(), __getstate__/__setstate__, or a plain dict, list or array."""
    if plain_kind(component) is not None:
        return True
    if callable(getattr(component, "state_dict", None)) and callable(
        getattr(component, "load_state_dict", None)
    ):
        return True
    return callable(getattr(type(component), "__setstate__", None))


def load_state(reg: Registration, state: Any) -> None:
    comp = reg.component
    if reg.is_log:
        comp.load_state_dict(state)
        return
    kind = plain_kind(comp)
    if kind is not None:
        load_plain(comp, kind, state, reg.name)
        return
    if hasattr(comp, "load_state_dict"):
        comp.load_state_dict(state)
        after = comp.state_dict()
        if isinstance(state, Mapping) and isinstance(after, Mapping):
            dropped = sorted(set(map(str, state)) - set(map(str, after)))
            if dropped:
                raise MigrationError(
                    f"component {reg.name!r}: stored fields {dropped} are not kept by load_state_dict(); "
                    "bump the version and add a migration that handles them (fields are never dropped silently).",
                    member=reg.name,
                )
    else:
        comp.__setstate__(state)


def run_validator(validate: Callable[[Any], Any], state: Any) -> str:
    try:
        result = validate(state)
    except (ValueError, TypeError, AssertionError, KeyError) as err:
        return str(err) or type(err).__name__
    if result is False:
        return "validator returned False"
    if isinstance(result, str):
        return result
    return ""
