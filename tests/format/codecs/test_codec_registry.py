"""The codec registry: lazy imports, the state store's model_hook/decode_member, codec choice, audits."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from persistkit.errors import FormatError, UnsupportedTypeError
from persistkit.format import tree
from persistkit.format.codecs import (
    DecodeContext,
    EncodeContext,
    audit_member,
    codec_for,
    decode_member,
    encode_member,
    model_hook,
)
from persistkit.testing.compare import assert_same


def test_importing_the_registry_and_encoding_data_imports_no_framework():
    script = (
        "import json, sys\n"
        "import numpy as np\n"
        "from persistkit.format.codecs import DecodeContext, encode_member, decode_member, codec_for, model_hook\n"
        "e = encode_member({'q': np.ones(3)})\n"
        "decode_member(e.codec, bytes(e.payload), DecodeContext(meta=e.meta))\n"
        "encode_member({'a': [1, 2]}); model_hook(3)\n"
        "from persistkit.format.codecs import REGISTRY\n"
        "assert len(REGISTRY.names()) == 11  # every built-in codec module is loaded by now\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    heavy = {
        "torch",
        "sklearn",
        "stable_baselines3",
        "skops",
        "gymnasium",
        "safetensors",
        "xgboost",
        "lightgbm",
    }
    heavy |= {"keras", "h5py"}
    assert not {m for m in loaded if m.split(".")[0] in heavy}


def test_model_hook_embeds_models_in_tree_values_for_the_state_store():
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(np.arange(8.0).reshape(4, 2))
    data = tree.encode({"scaler": scaler, "n": 1}, model_hook=model_hook)
    value = tree.decode(data, model_resolver=lambda codec, payload: decode_member(codec, payload))
    assert value["n"] == 1
    assert_same(scaler, value["scaler"])
    assert model_hook(np.ones(2)) is None and model_hook({"a": 1}) is None


def test_model_hook_handles_torch_modules_and_user_subclasses():
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

    Net.__module__ = "user_code"
    net = Net()
    assert codec_for(net) == "torch"
    codec, payload = model_hook(net)
    state = decode_member(codec, payload)
    assert torch.equal(state["lin.weight"], net.lin.weight)


@pytest.mark.parametrize(
    ("value", "codec"),
    [
        (np.ones(3), "numpy"),
        ({"a": np.ones(2), "b": np.zeros(1)}, "numpy"),
        ({"a": np.ones(2), "b": 3}, "tree"),
        (np.float32(1.5), "tree"),
        ({"x": [1, 2]}, "tree"),
        (b"raw", "bytes"),
    ],
)
def test_codec_choice(value, codec):
    assert codec_for(value) == codec
    encoded = encode_member(value)
    assert encoded.codec == codec
    assert_same(value, decode_member(codec, bytes(encoded.payload), DecodeContext(meta=encoded.meta)))


def test_float_arrays_are_marked_incompressible():
    assert not encode_member(np.ones(10, dtype=np.float32)).compressible
    assert encode_member(np.ones(10, dtype=np.int64)).compressible


def test_unknown_codec_is_a_format_error():
    with pytest.raises(FormatError, match=r"unknown member codec 'pickle'.*Upgrade persistkit"):
        decode_member("pickle", b"\x80\x04K\x01.")
    with pytest.raises(FormatError, match="unknown member codec"):
        audit_member("joblib", b"")


def test_unsupported_values_name_the_member():
    with pytest.raises(UnsupportedTypeError, match="thing"):
        encode_member({"x": object()}, EncodeContext(name="thing"))


def test_audit_lists_embedded_models_only():
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(np.arange(8.0).reshape(4, 2))
    encoded = encode_member({"scaler": scaler, "q": np.ones(2)})
    assert audit_member("tree", encoded.payload) == ["sklearn.preprocessing._data.StandardScaler"]
    assert audit_member("tree", encode_member({"q": np.ones(2), "n": 1}).payload) == []
    assert audit_member("numpy", b"") == []


def test_bundle_code_keeps_no_codec_knowledge():
    """Codec ids and the packages codecs depend on are asked of the codec objects, never spelled out in
    persistkit/bundle/ (adding a codec must not touch it)."""
    import ast
    from pathlib import Path

    from persistkit.format.codecs import REGISTRY

    words = set(REGISTRY.names()) | set(REGISTRY.packages())
    bundle = Path(__file__).resolve().parents[3] / "persistkit" / "bundle"
    found = [
        f"{path.name}:{node.lineno} {node.value!r}"
        for path in sorted(bundle.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and node.value in words
    ]
    assert found == []


def test_codec_objects_describe_themselves():
    from persistkit.bundle import environment
    from persistkit.format.codecs import REGISTRY, get_codec

    models = ["sklearn-trees", "xgboost", "lightgbm", "keras", "sklearn", "torch", "sb3"]
    assert REGISTRY.names() == [*models, "bytes", "numpy", "json", "tree"]
    constructing = {c.name for c in REGISTRY if c.constructs_types}
    assert constructing == {"sklearn-trees", "sklearn", "sb3", "xgboost", "lightgbm", "keras", "tree"}
    assert {c.name for c in REGISTRY if c.embeds_in_values} == set(models)
    assert get_codec("sb3").packages == ("stable-baselines3", "torch", "gymnasium")
    assert set(REGISTRY.packages()) <= set(environment())  # every codec's packages are recorded at save


def test_model_codec_is_the_public_seam_for_telling_models_from_values():
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.preprocessing import StandardScaler

    from persistkit.format.codecs import model_codec

    assert model_codec(StandardScaler()) == "sklearn"
    assert model_codec(RandomForestClassifier(2)) == "sklearn-trees"
    assert model_codec({"a": 1}) is None and model_codec(np.ones(2)) is None and model_codec(b"x") is None
    # A forest whose state holds a RandomState is declined by the forest codec and stored by skops.
    rf = RandomForestClassifier(2, random_state=np.random.RandomState(0)).fit(np.eye(4), [0, 1, 0, 1])
    assert codec_for(rf) == "sklearn-trees" and encode_member(rf).codec == "sklearn"


def test_a_numpy_dict_too_large_for_the_header_goes_to_the_tree_codec():
    many = {f"k{i}": np.ones(1) for i in range(2000)}
    assert codec_for(many) == "numpy"
    encoded = encode_member(many)
    assert encoded.codec == "tree"
    assert_same(many, decode_member("tree", encoded.payload))


def test_embedded_unknown_codecs_are_format_errors_naming_the_value():
    payload = tree.encode({"m": object()}, model_hook=lambda obj: ("pickle", b"\x80\x04K\x01."))
    ctx = DecodeContext(source="x.models:m")
    with pytest.raises(FormatError, match=r"x\.models:m: unknown member codec 'pickle'") as info:
        decode_member("tree", payload, ctx)
    assert info.value.field == "codec"
    with pytest.raises(FormatError, match=r"x\.models:m: unknown member codec 'pickle'"):
        audit_member("tree", payload, ctx)
