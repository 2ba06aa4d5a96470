"""Keras 3 models (torch backend) as config JSON + .weights.h5: round trips, hostile configs and weights."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from model_codecs import (
    bundle_round_trip,
    codec_is_registered,
    damaged_bundles_are_typed_errors,
    missing_library_advice,
    model_store_round_trip,
    save_forged,
    state_store_round_trip,
)

import persistkit as pk
from persistkit.errors import FormatError, NewerFormatError, UnsupportedTypeError, UntrustedTypeError
from persistkit.format import tree
from persistkit.format.codecs import audit_member, decode_member, encode_member
from persistkit.format.codecs import keras as kc

h5py = pytest.importorskip("h5py")
try:
    keras = kc.import_keras()  # through the codec, so Keras starts on torch as it would for a user
except ImportError as err:  # pragma: no cover - keras is in the dev extra
    pytest.skip(f"keras is not installed ({err})", allow_module_level=True)

# Keras 3.15's predict/fit turn torch tensors into numpy through an __array__ that numpy 2.4 warns about;
# the warning comes from calls the tests make on the models, not from persistkit.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

RNG = np.random.default_rng(2)
X = RNG.normal(size=(64, 10, 4)).astype("float32")
Y = (X.sum(axis=(1, 2)) > 0).astype("float32")


def lstm(train: bool = True):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((10, 4)), keras.layers.LSTM(8), keras.layers.Dense(1, activation="sigmoid")]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    if train:
        model.fit(X, Y, epochs=2, batch_size=16, verbose=0)
    return model


def functional():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    x = keras.layers.Dense(
        8, kernel_regularizer=keras.regularizers.L2(0.01), kernel_constraint=keras.constraints.MaxNorm(2)
    )(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Concatenate()([x, inputs])
    out = keras.layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, out)
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy")
    x_tab = RNG.normal(size=(64, 6)).astype("float32")
    model.fit(x_tab, RNG.integers(0, 3, 64), epochs=1, verbose=0)
    return model, x_tab


def stacked():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((10, 4)), keras.layers.Bidirectional(keras.layers.GRU(4, return_sequences=True)),
        keras.layers.Dropout(0.1), keras.layers.LSTM(4), keras.layers.Dense(1, activation=keras.activations.gelu),
    ])  # fmt: skip
    model(X[:2])  # built, never compiled
    return model


def same(a, b, x=X):
    assert type(a) is type(b)
    assert np.array_equal(a.predict(x, verbose=0), b.predict(x, verbose=0))
    assert [w.shape for w in a.get_weights()] == [w.shape for w in b.get_weights()]


@pytest.mark.parametrize(
    "make",
    [lstm, lambda: lstm(train=False), functional, stacked],
    ids=["LSTM", "compiled, never trained (warns nothing)", "functional", "uncompiled stack"],
)
def test_round_trip_predicts_the_same(make):
    made = make()
    model, x = made if isinstance(made, tuple) else (made, X)
    encoded = encode_member(model)
    assert encoded.codec == "keras" and encoded.info["backend"] == "torch"
    same(model, decode_member("keras", encoded.payload), x)
    names = audit_member("keras", encoded.payload)
    functions = ("keras.activations", "keras.losses", "keras.metrics")
    assert names and all(n in kc.ALLOWED or n.rpartition(".")[0] in functions for n in names)


def test_optimizer_state_comes_back_so_training_resumes_identically():
    model = lstm()
    back = decode_member("keras", encode_member(model).payload)
    assert int(back.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy()) == 8
    for a, b in zip(model.optimizer.variables, back.optimizer.variables, strict=True):
        assert np.array_equal(a.numpy(), b.numpy())
    keras.utils.set_random_seed(1)
    model.fit(X, Y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    keras.utils.set_random_seed(1)
    back.fit(X, Y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    assert np.allclose(model.predict(X, verbose=0), back.predict(X, verbose=0), atol=1e-6)


def test_in_bundles_state_stores_and_model_stores(tmp_path):
    model = lstm()
    codec_is_registered("keras", "keras")
    bundle_round_trip(tmp_path, "keras", model, same)
    state_store_round_trip(tmp_path, model, same)
    model_store_round_trip(tmp_path, model, same)
    damaged_bundles_are_typed_errors(tmp_path, model)


def test_lambda_layers_and_unbuilt_models_are_refused_at_save():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda t: t * 2)])
    with pytest.raises(UnsupportedTypeError, match="Lambda"):
        encode_member(model)
    with pytest.raises(UnsupportedTypeError, match="not built"):
        encode_member(keras.Sequential([keras.layers.Dense(2)]))


@keras.saving.register_keras_serializable(package="pktest")
class Scale(keras.layers.Layer):
    def __init__(self, factor: float = 2.0, **kw):
        super().__init__(**kw)
        self.factor = factor

    def call(self, inputs):
        return inputs * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


def test_a_registered_custom_layer_needs_trusted_naming_it():
    model = keras.Sequential([keras.Input((3,)), Scale(3.0), keras.layers.Dense(1)])
    payload = encode_member(model).payload
    with pytest.raises(UntrustedTypeError, match="pktest>Scale") as info:
        decode_member("keras", payload)
    assert info.value.types == ["pktest>Scale"]
    from persistkit.format.codecs import DecodeContext

    back = decode_member("keras", payload, DecodeContext(trusted=["pktest>Scale"]))
    x = np.ones((2, 3), "float32")
    assert np.array_equal(back.predict(x, verbose=0), model.predict(x, verbose=0))


# -- forged configs ---------------------------------------------------------------------------


def member() -> dict:
    return tree.decode(encode_member(lstm(train=False)).payload)


def with_config(edit) -> bytes:
    doc = member()
    config = json.loads(doc["config"])
    edit(config)
    doc["config"] = json.dumps(config).encode()
    return tree.encode(doc)


def layer(config, index):
    return config["config"]["layers"][index]


def swap_layer(record):
    def edit(config):
        config["config"]["layers"][2] = record

    return edit


LAMBDA_RECORD = {"module": "keras.layers", "class_name": "Lambda", "registered_name": None,
                 "config": {"name": "l", "function": {"class_name": "__lambda__", "config": {"value": ["4wEA", None, None]}}}}  # fmt: skip
HOSTILE_CONFIGS = {
    "a Lambda layer's bytecode": (swap_layer(LAMBDA_RECORD), "lambda"),
    "a class from another module": (swap_layer({"module": "os", "class_name": "system", "config": {}}), "os.system"),
    "a registered name swapped in": (
        lambda c: layer(c, 2).update(registered_name="evil>Layer"), "evil>Layer"),
    "a builtin function": (
        lambda c: layer(c, 2)["config"].update(activation={"module": "builtins", "class_name": "function",
                                                            "config": "eval", "registered_name": None}), "builtins.eval"),
    "keras.utils.get_file (CVE-2025-8747)": (
        lambda c: layer(c, 2)["config"].update(activation={"module": "keras.utils", "class_name": "function",
                                                            "config": "get_file", "registered_name": None}), "get_file"),
    "enable_unsafe_deserialization (CVE-2025-9906)": (
        lambda c: layer(c, 2)["config"].update(kernel_initializer={
            "module": "keras.config", "class_name": "function", "config": "enable_unsafe_deserialization",
            "registered_name": None}), "enable_unsafe_deserialization"),
    "a record with no module": (swap_layer({"class_name": "Dense", "config": {"units": 1}}), "no module"),
}  # fmt: skip


@pytest.mark.parametrize("edit, named", HOSTILE_CONFIGS.values(), ids=HOSTILE_CONFIGS.keys())
def test_configs_naming_code_are_refused_before_keras_reads_them(edit, named):
    payload = with_config(edit)
    with pytest.raises(UntrustedTypeError) as info:
        decode_member("keras", payload)
    assert any(named in t for t in info.value.types), info.value.types
    # trusted=True means the pinned lists, never "anything"
    from persistkit.format.codecs import DecodeContext

    with pytest.raises(UntrustedTypeError):
        decode_member("keras", payload, DecodeContext(trusted=True))


def test_a_lambda_is_never_loaded_even_when_named_in_trusted_or_unsafe_mode_is_on():
    from keras.src.backend.common import global_state

    from persistkit.format.codecs import DecodeContext

    payload = with_config(swap_layer(LAMBDA_RECORD))
    before = global_state.get_global_attribute("safe_mode_saving")
    keras.config.enable_unsafe_deserialization()
    try:
        with pytest.raises(UntrustedTypeError, match="never loads"):
            decode_member("keras", payload, DecodeContext(trusted=[kc.LAMBDA, "keras.layers.Lambda"]))
        model = decode_member("keras", tree.encode(member()))  # a clean member still loads, in safe mode
        assert isinstance(model, keras.Model)
    finally:
        global_state.set_global_attribute("safe_mode_saving", before)


EDITED = {
    "more units than the weights have": (lambda c: layer(c, 2)["config"].update(units=3), FormatError),
    "a layer removed": (lambda c: c["config"]["layers"].pop(2), FormatError),
    "an unknown layer option": (lambda c: layer(c, 2)["config"].update(evil=1), FormatError),
    "not a model": (lambda c: c.update(class_name="Dense", module="keras.layers"), FormatError),
}  # fmt: skip


@pytest.mark.parametrize("edit, error", EDITED.values(), ids=EDITED.keys())
def test_edited_configs_that_no_longer_fit_are_format_errors(edit, error):
    with pytest.raises(error):
        decode_member("keras", with_config(edit))


def test_malformed_members_are_format_errors():
    doc = member()
    for bad in (b"not json", b"[1, 2]", b'{"a": 1}', b"\xff\xfe"):
        with pytest.raises(FormatError):
            decode_member("keras", tree.encode({**doc, "config": bad}))
    with pytest.raises(NewerFormatError):
        decode_member("keras", tree.encode({**doc, "format": 2}))
    with pytest.raises(FormatError):
        decode_member("keras", tree.encode({**doc, "weights": None}))


# -- forged weights ---------------------------------------------------------------------------


def weights_file(build) -> bytes:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        build(f)
    return buffer.getvalue()


def copy_with(extra):
    def build(f):
        with h5py.File(io.BytesIO(member()["weights"]), "r") as source:
            for name in source:
                source.copy(source[name], f, name=name)
        extra(f)

    return build


HOSTILE_WEIGHTS = {
    "weights of another model": lambda: tree.decode(encode_member(functional()[0]).payload)["weights"],
    "truncated": lambda: member()["weights"][:500],
    "not HDF5": lambda: b"\x89HDF\r\n\x1a\n" + b"\x00" * 64,
    "an external link": lambda: weights_file(copy_with(lambda f: f.__setitem__("x", h5py.ExternalLink("/etc/passwd", "/")))),
    "a soft link": lambda: weights_file(copy_with(lambda f: f.__setitem__("y", h5py.SoftLink("/layers")))),
    "strings as weights": lambda: weights_file(copy_with(lambda f: f.create_dataset("s", data=np.array([b"x"])))),
    "external storage": lambda: weights_file(copy_with(
        lambda f: f.create_dataset("e", shape=(4,), dtype="f4", external=[("/etc/hostname", 0, 16)]))),
    "a compressed bomb": lambda: weights_file(copy_with(
        lambda f: f.create_dataset("b", shape=(4096, 4096), dtype="f8", chunks=(256, 256), compression="gzip"))),
}  # fmt: skip


@pytest.mark.parametrize("make", HOSTILE_WEIGHTS.values(), ids=HOSTILE_WEIGHTS.keys())
def test_hostile_weights_are_format_errors(make):
    doc = member()
    with pytest.raises(FormatError):
        decode_member("keras", tree.encode({**doc, "weights": make()}))


def test_a_forged_member_in_a_plain_bundle_is_refused(tmp_path, monkeypatch):
    path = save_forged(
        tmp_path, "keras", with_config(swap_layer(LAMBDA_RECORD)), monkeypatch, lstm(train=False)
    )
    with pytest.raises(UntrustedTypeError):
        pk.load_bundle(path, trusted=True)
    report = pk.verify(path)  # verify lists what it would construct without constructing it
    assert kc.LAMBDA in next(m for m in report.members if m.name == "model").types


FUZZ = """
import random, sys
import numpy as np
from persistkit.errors import PersistkitError
from persistkit.format import tree
from persistkit.format.codecs import decode_member
with open(sys.argv[1], "rb") as f:
    payload = f.read()
doc = tree.decode(payload)
rng = random.Random(int(sys.argv[2]))
x = np.zeros((2, 10, 4), "float32")
loaded = refused = 0
for _ in range(int(sys.argv[3])):
    data = bytearray(doc["weights"])
    for _ in range(rng.choice([1, 1, 2, 4])):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    try:
        model = decode_member("keras", tree.encode({**doc, "weights": bytes(data)}))
    except PersistkitError:
        refused += 1
        continue
    model(x)
    loaded += 1
print("DONE", loaded, refused)
"""


def test_bit_flipped_weights_are_refused_or_load_without_crashing(tmp_path):
    """Past the envelope's checksums, as a forger would: h5py and Keras get damaged HDF5. A child
    process, since a miss in libhdf5 would be a crash."""
    blob = tmp_path / "member.bin"
    blob.write_bytes(encode_member(lstm()).payload)
    out = subprocess.run(
        [sys.executable, "-c", FUZZ, str(blob), "5", "80"], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0 and "DONE" in out.stdout, out.stderr[-2000:]
    loaded, refused = map(int, out.stdout.split()[1:3])
    assert loaded > 0 and refused > 0


# -- backend ----------------------------------------------------------------------------------


LOAD = """
import sys
from persistkit.format.codecs import decode_member
with open(sys.argv[1], "rb") as f:
    model = decode_member("keras", f.read())
import keras
print("BACKEND", keras.backend.backend(), type(model).__name__)
"""


def run_child(tmp_path, env_changes):
    blob = tmp_path / "member.bin"
    blob.write_bytes(encode_member(lstm(train=False)).payload)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env.update(env_changes)
    return subprocess.run(
        [sys.executable, "-c", LOAD, str(blob)], capture_output=True, text=True, env=env, timeout=600
    )


def test_keras_is_started_on_torch_even_when_its_config_file_says_tensorflow(tmp_path):
    home = tmp_path / "home"
    (home / ".keras").mkdir(parents=True)
    (home / ".keras" / "keras.json").write_text(json.dumps({"backend": "tensorflow", "floatx": "float32"}))
    out = run_child(tmp_path, {"HOME": str(home), "KERAS_HOME": str(home / ".keras")})
    assert "BACKEND torch Sequential" in out.stdout, out.stderr[-2000:]


def test_a_backend_that_is_not_installed_is_an_import_error_that_says_so(tmp_path):
    out = run_child(tmp_path, {"KERAS_BACKEND": "tensorflow"})
    assert out.returncode != 0
    assert "KERAS_BACKEND" in out.stderr and "ModuleNotFoundError" in out.stderr, out.stderr[-2000:]


def test_without_keras_installed_the_error_names_the_extra(tmp_path):
    missing_library_advice("keras", "keras", "keras", encode_member(lstm(train=False)).payload, tmp_path)
