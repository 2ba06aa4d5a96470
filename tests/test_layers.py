"""The layer map of DESIGN.md, enforced: which packages may import which.

Imports are read with ``ast``, so function-level (lazy) imports count too.
``persistkit.format.crypto`` keeps a lazy compatibility ``__getattr__`` for the
key-file helpers that moved to ``persistkit.keys``; it imports ``persistkit.keys``,
never ``persistkit.io``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "persistkit"

FORBIDDEN = {
    "format": ("persistkit.io",),
    # io holds production code only: the test file systems wrap it from persistkit.testing
    "io": (
        "persistkit.format",
        "persistkit.state",
        "persistkit.bundle",
        "persistkit.archive",
        "persistkit.testing",
    ),
    "policy": (
        "persistkit.io",
        "persistkit.format",
        "persistkit.state",
        "persistkit.bundle",
        "persistkit.archive",
    ),
    # the verifier is one pipeline: observe -> operation log -> crash states -> judge, fixtures on top.
    # The file-system model knows nothing of how operations were observed or judged...
    "testing/fs": (
        "persistkit.testing.observe",
        "persistkit.testing.objects",
        "persistkit.testing.judge",
        "persistkit.testing.readers",
        "persistkit.testing.crash_points",
        "persistkit.testing.disk_faults",
        "persistkit.testing.battery",
        "persistkit.testing.plugin",
    ),
    # ...the observers know the model they feed, not the judge or the fixtures...
    "testing/observe": (
        "persistkit.testing.objects",
        "persistkit.testing.judge",
        "persistkit.testing.readers",
        "persistkit.testing.crash_points",
        "persistkit.testing.disk_faults",
        "persistkit.testing.battery",
        "persistkit.testing.plugin",
    ),
    # ...and buckets share the judge with files, never the file-system model.
    "testing/objects": (
        "persistkit.testing.fs",
        "persistkit.testing.crash_points",
        "persistkit.testing.disk_faults",
        "persistkit.testing.battery",
        "persistkit.testing.plugin",
    ),
}


def imported_modules(path: Path, root: Path = PACKAGE) -> set[str]:
    """Every module ``path`` imports, at any depth, relative imports resolved."""
    module = ".".join(path.relative_to(root.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base]) if base else ".".join(parent)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def offenders(layer: str, root: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted((root / layer).rglob("*.py")):
        for name in sorted(imported_modules(path, root)):
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[layer]):
                found.append(f"{path.relative_to(root.parent).as_posix()} imports {name}")
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_downwards(layer):
    assert offenders(layer) == []


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    fake = tmp_path / "persistkit" / "format"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("def f():\n    from ..io import atomic_write\n    import persistkit.io.fs\n")
    assert offenders("format", tmp_path / "persistkit") == [
        "persistkit/format/bad.py imports persistkit.io",
        "persistkit/format/bad.py imports persistkit.io.atomic_write",
        "persistkit/format/bad.py imports persistkit.io.fs",
    ]
