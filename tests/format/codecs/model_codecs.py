"""What every third-party model codec (xgboost, lightgbm, keras) must do, as reusable checks.

Each check takes a fitted model and a ``same(a, b)`` that asserts two models behave alike
(predictions equal), and exercises the codec the way users reach it: bundles (encrypted and
plain, verify, inspect), a StateStore component, ModelStore, damaged bundles and members
forged by someone who knows the format.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import persistkit as pk
from persistkit.errors import IntegrityError, PersistkitError, UntrustedTypeError, WrongKeyError
from persistkit.format.codecs import REGISTRY, Encoded, get_codec

Same = Callable[[object, object], None]


def bundle_round_trip(tmp_path: Path, codec: str, model: object, same: Same) -> None:
    """Encrypted: loads with no trust argument. Plain: refused until trusted, then loads."""
    path = pk.save_bundle(tmp_path / "m.models", {"model": model, "n": 3}, metadata={"run": 7})
    manifest = pk.inspect(path)
    entry = next(m for m in manifest.members if m.name == "model")
    assert entry.codec == codec
    loaded = pk.load_bundle(path)
    same(model, loaded["model"])
    assert loaded["n"] == 3 and loaded.metadata["run"] == 7
    report = pk.verify(path)
    assert report.authenticated and next(m for m in report.members if m.name == "model").types

    plain = pk.save_bundle(tmp_path / "p.models", {"model": model}, encrypt=False)
    with pytest.raises(UntrustedTypeError) as info:
        pk.load_bundle(plain)
    assert info.value.member == "model" and info.value.types
    same(model, pk.load_bundle(plain, trusted=True)["model"])


def damaged_bundles_are_typed_errors(tmp_path: Path, model: object) -> None:
    """Wrong key, truncation and bit flips of the sealed member never reach the codec."""
    path = pk.save_bundle(tmp_path / "d.models", {"model": model})
    other = tmp_path / "other.key"
    pk.save_bundle(tmp_path / "o.models", {"x": b"1"}, key_file=other)
    with pytest.raises(WrongKeyError):
        pk.load_bundle(path, key_file=other)
    data = path.read_bytes()
    for cut in (len(data) // 3, len(data) // 2, len(data) - 30):
        path.write_bytes(data[:cut])
        with pytest.raises(PersistkitError):
            pk.load_bundle(path)
    start = data.index(b"members/model")  # the member's local header; its data follows
    for offset in (200, 600, 1500):
        flipped = bytearray(data)
        flipped[min(start + offset, len(data) - 100)] ^= 0x10
        path.write_bytes(bytes(flipped))
        with pytest.raises((IntegrityError, PersistkitError)):
            pk.load_bundle(path)


def state_store_round_trip(tmp_path: Path, model: object, same: Same) -> None:
    """A component holding a model (embedded in a tree value) comes back after a restart."""
    holder = {"model": model, "trades": [1.5, 2.5]}
    with pk.StateStore(tmp_path / "state", autosave_every=0) as store:
        store.register("signal", holder)
        store.load()
        store.save()
    fresh: dict[str, object] = {}
    with pk.StateStore(tmp_path / "state", autosave_every=0) as store:
        store.register("signal", fresh)
        store.load()
    assert fresh["trades"] == [1.5, 2.5]
    same(model, fresh["model"])


def model_store_round_trip(tmp_path: Path, model: object, same: Same) -> None:
    store = pk.ModelStore(tmp_path / "models")
    where = {"symbol": "BTCUSDT", "agent": "signal", "timeframe": "1h"}
    store.save({"model": model}, **where)
    same(model, store.load_latest(**where)["model"])


def save_forged(
    tmp_path: Path, codec: str, payload: bytes, monkeypatch: pytest.MonkeyPatch, model: object
) -> Path:
    """A plain bundle whose member is ``payload``, with every digest right: what anyone who can write
    the file can make (nothing authenticates a plain bundle)."""
    target = get_codec(codec)
    monkeypatch.setattr(target, "encode", lambda obj, ctx: Encoded(codec, payload))
    try:
        return pk.save_bundle(
            tmp_path / f"forged-{os.urandom(4).hex()}.models", {"model": model}, encrypt=False
        )
    finally:
        monkeypatch.undo()


def missing_library_advice(codec: str, module: str, extra: str, payload: bytes, tmp_path: Path) -> None:
    """In a process where ``module`` cannot be imported, decoding names the extra to install."""
    blob = tmp_path / "payload.bin"
    blob.write_bytes(payload)
    script = (
        "import sys\n"
        f"sys.modules[{module!r}] = None\n"
        "from persistkit.format.codecs import decode_member\n"
        f"data = open({str(blob)!r}, 'rb').read()\n"
        "try:\n"
        f"    decode_member({codec!r}, data)\n"
        "except ImportError as err:\n"
        "    print('ADVICE', err)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert f"pip install 'persistkit[{extra}]'" in out.stdout, out.stdout + out.stderr


def codec_is_registered(name: str, extra: str) -> None:
    codec = get_codec(name)
    assert (
        codec in list(REGISTRY) and codec.extra == extra and codec.constructs_types and codec.embeds_in_values
    )
