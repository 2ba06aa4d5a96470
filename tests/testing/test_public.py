"""persistkit.testing's public names resolve, lazily."""

from __future__ import annotations

import json
import subprocess
import sys

import persistkit.testing


def test_every_public_name_resolves():
    for name in persistkit.testing.__all__:
        assert getattr(persistkit.testing, name) is not None, name


def test_importing_the_package_is_light():
    code = "import json, sys, persistkit.testing; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert not {
        m for m in loaded for h in ("hypothesis", "cryptography", "torch", "sklearn") if m.split(".")[0] == h
    }
