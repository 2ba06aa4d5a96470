"""PEP 562 lazy attributes, shared by ``persistkit`` and ``persistkit.testing``.

Both packages list public names in a table (name -> defining module) and import
the module only when the name is first used, so importing the package stays light.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any


def resolve(package: str, table: Mapping[str, str], namespace: MutableMapping[str, Any], name: str) -> Any:
    """Import ``name`` from the module ``table`` names for it, and cache it in ``namespace``."""
    module = table.get(name)
    if module is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    namespace[name] = value
    return value


def listing(namespace: Mapping[str, Any], public: Iterable[str]) -> list[str]:
    return sorted(set(namespace) | set(public))
