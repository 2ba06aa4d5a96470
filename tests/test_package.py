"""Package hygiene: light import, public surface, CLI basics, layering."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import persistkit

ROOT = Path(__file__).resolve().parents[1]
HEAVY = (
    "torch",
    "sklearn",
    "stable_baselines3",
    "hypothesis",
    "pytest",
    "skops",
    "gymnasium",
    "cryptography",
)


def test_import_is_light():
    out = subprocess.run(
        [sys.executable, "-c", "import json, sys, persistkit; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = set(json.loads(out.stdout))
    assert not {m for m in loaded for h in HEAVY if m == h or m.startswith(h + ".")}


def test_public_names_resolve():
    for name in persistkit.__all__:
        assert getattr(persistkit, name) is not None, name
    assert sorted(persistkit.__all__) == sorted(set(persistkit.__all__))


def test_cli_help_and_version():
    help_out = subprocess.run([sys.executable, "-m", "persistkit", "--help"], capture_output=True, text=True)
    assert help_out.returncode == 0 and "persistence you can prove" in help_out.stdout
    version = subprocess.run(
        [sys.executable, "-m", "persistkit", "--version"], capture_output=True, text=True
    )
    assert version.returncode == 0 and persistkit.__version__ in version.stdout


def test_py_typed_is_shipped():
    assert (ROOT / "persistkit" / "py.typed").exists()


WRITE_PATTERNS = re.compile(
    r"os\.(replace|rename|fsync|unlink|remove|rmdir|mkdir|makedirs|open|write)\(|\.write_bytes\(|\.write_text\(|"
    r"shutil\.(rmtree|move|copy)|open\([^)]*['\"](w|wb|a|ab|r\+b?|x|xb)['\"]"
)


def test_file_writes_only_in_io_layer():
    offenders = []
    for path in (ROOT / "persistkit").rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(("persistkit/io/", "persistkit/testing/", "persistkit/reference/")):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if WRITE_PATTERNS.search(line) and "# io-ok" not in line:
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert offenders == []


def test_no_pickle_on_load_paths():
    # code that would unpickle, not the word in a docstring or an error message
    pattern = re.compile(
        r"pickle\.loads?\(|^\s*(import|from) (cloud)?pickle\b|joblib\.load\(|weights_only=False|allow_pickle=True"
    )
    offenders = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in (ROOT / "persistkit").rglob("*.py")
        if not p.relative_to(ROOT).as_posix().startswith("persistkit/testing/")
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_test_module_names_are_unique():
    """pytest's default import mode needs unique basenames for test modules (no __init__.py here)."""
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")] + [
        p.name for p in (ROOT / "benchmarks").rglob("test_*.py")
    ]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []


def test_lazy_names_are_visible_to_type_checkers():
    """Every lazily resolved public name is also imported under TYPE_CHECKING (typed for users)."""
    source = (ROOT / "persistkit" / "__init__.py").read_text()
    typed = set(re.findall(r"^    from [\w.]+ import (\w+) as \1$", source, flags=re.M))
    assert typed == set(persistkit._LAZY)
