"""Modules use each other through public seams, not private names.

These private names were once reached across modules; each now has a public
seam (``StateStore.lock``/``journal_append``/``journal_clear``/``components``/
``abandon``/``request_stop``/``final_save``/``store_meta``/``resolve_key``,
``journal.journal_cipher``/``parse_record``, ``observe_checkpoints``,
``BoundedLog.replay_append``, ``commands.state.print_store_table``). A module may
still use its own private names, as ``self._lock`` inside the class that owns it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "persistkit"

WATCHED = {
    "_lock",
    "_journal_append",
    "_journal_clear",
    "_parse",
    "_resolve_key",
    "_store_id",
    "_store_meta",
    "_journal_cipher",
    "_components",
    "_abandon",
    "_save_locked",
    "_replay_append",
    "_replay_clear",
    "_print_table",
    "_describe_journal",
}


def reach_ins(path: Path) -> list[str]:
    """``x._name`` where ``x`` is not ``self``/``cls``, and ``from m import _name`` for the watched names."""
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in WATCHED:
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            found.append(f"{path.relative_to(PACKAGE.parent).as_posix()}:{node.lineno} .{node.attr}")
        elif isinstance(node, ast.ImportFrom):
            found.extend(
                f"{path.relative_to(PACKAGE.parent).as_posix()}:{node.lineno} imports {alias.name}"
                for alias in node.names
                if alias.name in WATCHED
            )
    return found


def test_no_private_reach_ins_across_modules():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        hits = reach_ins(path)
        if path.name == "budget.py":  # MeasuringFS and its observer share one module: fs._lock is its own
            hits = [h for h in hits if not h.endswith("._lock")]
        found.extend(hits)
    assert found == []


def test_the_checker_sees_a_reach_in(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(store):\n    with store._lock:\n        store._abandon()\n    self._lock\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path
    try:
        assert reach_ins(bad) == [f"{tmp_path.name}/bad.py:2 ._lock", f"{tmp_path.name}/bad.py:3 ._abandon"]
    finally:
        PACKAGE = saved
