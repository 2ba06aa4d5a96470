"""What zipfile raises on damaged bytes is listed once (``persistkit.zipdamage``), for io/ and format/ alike."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from persistkit import zipdamage
from persistkit.errors import FormatError
from persistkit.io import zipio

PACKAGE = Path(__file__).resolve().parents[1] / "persistkit"


def test_io_re_exports_the_one_list():
    assert zipio.ZIP_DAMAGE is zipdamage.ZIP_DAMAGE
    assert zipio.ZIP_DAMAGE_OR_IO is zipdamage.ZIP_DAMAGE_OR_IO
    assert set(zipdamage.ZIP_DAMAGE_OR_IO) == {*zipdamage.ZIP_DAMAGE, OSError}


def test_no_other_module_lists_zip_exceptions():
    """A tuple naming zipfile.BadZipFile anywhere else would be a second copy that drifts."""
    copies = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "zipdamage.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "BadZipFile":
                copies.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert copies == []


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: data.replace(b"schema.json", b"schema.jsoN"), id="member renamed"),
        pytest.param(lambda data: b"PK\x03\x04" + bytes(60), id="zeroed"),
    ],
)
def test_the_skops_codec_turns_zip_damage_into_a_format_error(damage):
    pytest.importorskip("skops")
    from sklearn.preprocessing import StandardScaler

    from persistkit.format.codecs import sklearn as skc

    payload = skc.encode(StandardScaler())
    with pytest.raises(FormatError, match=r"model\.skops does not parse as a skops file") as info:
        skc.audit(damage(payload), source="model.skops")
    assert info.value.member == "model.skops"
