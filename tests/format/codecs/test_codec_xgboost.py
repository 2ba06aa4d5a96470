"""XGBoost boosters and sklearn wrappers in UBJSON: round trips, and forged models refused before XGBoost.

XGBoost 3.2 loads a tree whose child index points outside it and then segfaults in predict
(see the module docstring of persistkit/format/codecs/xgboost.py); every forgery here would
reach that code if the codec did not refuse it.
"""

from __future__ import annotations

import struct
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

xgb = pytest.importorskip("xgboost")

import persistkit as pk  # noqa: E402
from persistkit.errors import FormatError, NewerFormatError, UnsupportedTypeError, UntrustedTypeError  # noqa: E402
from persistkit.format import tree  # noqa: E402
from persistkit.format.codecs import EncodeContext, audit_member, decode_member, encode_member, ubj  # noqa: E402
from persistkit.format.codecs import xgboost as xc  # noqa: E402

RNG = np.random.default_rng(0)
X = RNG.normal(size=(400, 6))
Y = (X[:, 0] + X[:, 1] > 0).astype(int)
Y3 = RNG.integers(0, 3, 400)


def hundred_trees():
    return xgb.XGBClassifier(n_estimators=100, max_depth=3, n_jobs=1, random_state=0).fit(X, Y)


CASES = {
    "classifier, 100 trees": hundred_trees,
    "multiclass": lambda: xgb.XGBClassifier(n_estimators=5, max_depth=2, n_jobs=1).fit(X, Y3),
    "regressor, dart": lambda: xgb.XGBRegressor(n_estimators=6, booster="dart", n_jobs=1).fit(X, X[:, 0]),
    "regressor, gblinear": lambda: xgb.XGBRegressor(n_estimators=4, booster="gblinear", n_jobs=1).fit(
        X, X[:, 0]
    ),
    "random forest": lambda: xgb.XGBRFClassifier(n_estimators=8, n_jobs=1).fit(X, Y),
    "ranker": lambda: xgb.XGBRanker(n_estimators=4, n_jobs=1).fit(X, Y3, qid=np.repeat(np.arange(20), 20)),
    "booster with attributes": lambda: booster_with_attributes(),
    "categorical": lambda: categorical_model(),
}


def booster_with_attributes():
    booster = xgb.train({"max_depth": 2, "nthread": 1}, xgb.DMatrix(X, Y, feature_names=list("abcdef")), 5)
    booster.set_attr(run="7")
    return booster


def categorical_model():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(X[:, :3], columns=list("abc"))
    frame["kind"] = pd.Categorical(RNG.choice(["spot", "perp", "option", "swap"], len(X)))
    y = frame["kind"].isin(["spot", "swap"]).to_numpy().astype(int)
    model = xgb.XGBClassifier(n_estimators=6, max_cat_to_onehot=1, enable_categorical=True, n_jobs=1)
    return model.fit(frame, y), frame


def inputs(model):
    return model[1] if isinstance(model, tuple) else X


def unwrap(model):
    return model[0] if isinstance(model, tuple) else model


def same(a, b, x=X):
    assert type(a) is type(b)
    if isinstance(a, xgb.Booster):
        d = xgb.DMatrix(x, feature_names=a.feature_names)
        assert np.array_equal(a.predict(d), b.predict(d))
        assert a.attributes() == b.attributes() and a.feature_names == b.feature_names
        return
    assert a.get_params() == b.get_params() or str(a.get_params()) == str(b.get_params())
    assert np.array_equal(a.predict(x), b.predict(x))
    if hasattr(a, "predict_proba"):
        assert np.array_equal(a.predict_proba(x), b.predict_proba(x))


@pytest.mark.parametrize("make", CASES.values(), ids=CASES.keys())
def test_round_trip_predicts_the_same_with_the_same_class_and_params(make):
    made = make()
    model, x = unwrap(made), inputs(made)
    encoded = encode_member(model, EncodeContext(name="signal"))
    assert encoded.codec == "xgboost"
    same(model, decode_member("xgboost", encoded.payload), x)
    assert audit_member("xgboost", encoded.payload) == [xc.type_name(model)]


def test_an_unfitted_wrapper_keeps_its_params():
    model = xgb.XGBRegressor(n_estimators=17, max_depth=2, objective="reg:absoluteerror")
    back = decode_member("xgboost", encode_member(model).payload)
    assert type(back) is xgb.XGBRegressor and str(back.get_params()) == str(model.get_params())  # missing=nan
    assert not back.__sklearn_is_fitted__()


def test_the_loaded_model_keeps_training():
    model = xgb.XGBClassifier(n_estimators=5, n_jobs=1).fit(X, Y)
    back = decode_member("xgboost", encode_member(model).payload)
    more = xgb.XGBClassifier(n_estimators=3, n_jobs=1).fit(X, Y, xgb_model=back.get_booster())
    assert more.get_booster().num_boosted_rounds() == 8


def test_in_bundles_state_stores_and_model_stores(tmp_path):
    model = hundred_trees()
    codec_is_registered("xgboost", "xgboost")
    bundle_round_trip(tmp_path, "xgboost", model, same)
    state_store_round_trip(tmp_path, model, same)
    model_store_round_trip(tmp_path, model, same)
    damaged_bundles_are_typed_errors(tmp_path, model)


def test_python_functions_in_params_are_refused_at_save_naming_the_parameter(tmp_path):
    def my_metric(y, p):
        return float(np.mean(y == p))

    model = xgb.XGBClassifier(n_estimators=2, eval_metric=my_metric).fit(X, Y)
    with pytest.raises(UnsupportedTypeError, match="eval_metric") as info:
        pk.save_bundle(tmp_path / "x.models", {"model": model})
    assert info.value.field == "eval_metric"


def test_multi_target_trees_are_refused_at_save():
    model = xgb.XGBRegressor(n_estimators=2, multi_strategy="multi_output_tree", tree_method="hist")
    model.fit(X, np.c_[X[:, 0], X[:, 1]])
    with pytest.raises(UnsupportedTypeError, match="multi-target"):
        encode_member(model)


# -- forgeries --------------------------------------------------------------------------------


def small():
    return xgb.XGBClassifier(n_estimators=3, max_depth=2, n_jobs=1).fit(X, Y)


def raw_model(model=None) -> bytes:
    return bytes((model or small()).get_booster().save_raw("ubj"))


def payload_with(raw: bytes | None = None, **outer) -> bytes:
    model = small()
    doc = {"format": 1, "class": "xgboost.sklearn.XGBClassifier", "model": raw_model(model) if raw is None else raw,
           "params": model.get_params()}  # fmt: skip
    doc.update(outer)
    return tree.encode(doc)


def patched(raw: bytes, tree_index: int, key: str, index: int, value) -> bytes:
    """``raw`` with one entry of one tree's typed array changed in place (lengths unchanged)."""
    doc = ubj.loads(raw)
    span = doc["learner"]["gradient_booster"]["model"]["trees"][tree_index][key]
    offset, _, dtype = span
    fmt = {">i4": ">i", ">f4": ">f", ">u1": ">B", ">i8": ">q"}[dtype]
    out = bytearray(raw)
    struct.pack_into(fmt, out, offset + index * struct.calcsize(fmt), value)
    return bytes(out)


def first_inner_and_leaf(raw: bytes) -> tuple[int, int]:
    doc = ubj.loads(raw)
    t = doc["learner"]["gradient_booster"]["model"]["trees"][0]
    left = ubj.column(raw, [t["left_children"]], ">i4")[0]
    return int(np.flatnonzero(left != -1)[0]), int(np.flatnonzero(left == -1)[0])


TREE_FORGERIES = {
    "child outside the tree": ("left_children", "inner", 100000, "outside its tree"),
    "child pointing back at the root": ("left_children", "inner", 0, "outside its tree"),
    "negative child": ("right_children", "inner", -7, "outside its tree"),
    "leaf given one child": ("right_children", "leaf", 1, "one child"),
    "parent that disowns its child": ("parents", 1, 2, "name it as their parent"),
    "feature the model lacks": ("split_indices", "inner", 6, "feature the model does not have"),
    "negative feature": ("split_indices", "inner", -1, "feature the model does not have"),
    "NaN threshold": ("split_conditions", "inner", float("nan"), "not finite"),
    "infinite leaf value": ("base_weights", "leaf", float("inf"), "not finite"),
    "categorical split without categories": ("split_type", "inner", 1, "categor"),
    "unknown split type": ("split_type", "inner", 7, "split type"),
}


@pytest.mark.parametrize("key, where, value, why", TREE_FORGERIES.values(), ids=TREE_FORGERIES.keys())
def test_forged_trees_are_refused_before_xgboost_sees_them(key, where, value, why):
    raw = raw_model()
    inner, leaf = first_inner_and_leaf(raw)
    index = {"inner": inner, "leaf": leaf}.get(where, where)
    forged = patched(raw, 0, key, index, value)
    with pytest.raises(FormatError, match=why) as info:
        decode_member("xgboost", payload_with(forged))
    assert info.value.member == "member"


def test_a_cycle_between_two_inner_nodes_is_refused():
    raw = raw_model(xgb.XGBClassifier(n_estimators=1, max_depth=3, n_jobs=1).fit(X, Y))
    doc = ubj.loads(raw)
    t = doc["learner"]["gradient_booster"]["model"]["trees"][0]
    left = ubj.column(raw, [t["left_children"]], ">i4")[0]
    child = int(left[0])
    assert left[child] != -1
    # child's left child becomes node 0's left child: a loop 0 -> child -> child; parents fixed to agree
    forged = patched(raw, 0, "left_children", child, child)
    forged = patched(forged, 0, "parents", child, child)
    with pytest.raises(FormatError, match=r"outside its tree|parent"):
        decode_member("xgboost", payload_with(forged))


STRUCTURE_FORGERIES = {
    "truncated": lambda raw: raw[: len(raw) // 2],
    "trailing bytes": lambda raw: raw + b"Z",
    "not UBJSON": lambda raw: b"\x00" * 64,
    "JSON instead": lambda raw: b'{"learner": {}}',
    "huge count": lambda raw: raw.replace(b"trees[#L", b"trees[#L\x7f", 1)[: len(raw)],
    "duplicate key": lambda raw: raw[:-1] + b"L" + struct.pack(">q", 7) + b"version[#L" + struct.pack(">q", 0) + b"}",
    "deep nesting": lambda raw: b"[#L" + struct.pack(">q", 1) + b"[#L" * 200,
    "num_trees disagrees": lambda raw: raw.replace(b"num_treesSL" + struct.pack(">q", 1) + b"3",
                                                   b"num_treesSL" + struct.pack(">q", 1) + b"4", 1),
}  # fmt: skip


@pytest.mark.parametrize("forge", STRUCTURE_FORGERIES.values(), ids=STRUCTURE_FORGERIES.keys())
def test_malformed_documents_are_format_errors(forge):
    with pytest.raises(FormatError):
        decode_member("xgboost", payload_with(forge(raw_model())))


def test_forged_envelopes_and_params():
    with pytest.raises(UntrustedTypeError, match="never constructs"):
        decode_member("xgboost", payload_with(**{"class": "os.system"}))
    with pytest.raises(FormatError, match="n_jobs"):
        decode_member("xgboost", payload_with(params={**small().get_params(), "n_jobs": 10**9}))
    with pytest.raises(FormatError, match="parameter name"):
        decode_member("xgboost", payload_with(params={"__class__": 1}))
    with pytest.raises(FormatError, match="needs a model"):
        decode_member("xgboost", payload_with(**{"class": "xgboost.core.Booster"}))
    with pytest.raises(NewerFormatError):
        decode_member("xgboost", payload_with(format=2))
    with pytest.raises(FormatError):
        decode_member("xgboost", tree.encode(["not", "a", "dict"]))


def test_a_forged_member_in_a_plain_bundle_is_refused_naming_the_member(tmp_path, monkeypatch):
    raw = raw_model()
    inner, _ = first_inner_and_leaf(raw)
    path = save_forged(
        tmp_path, "xgboost", payload_with(patched(raw, 0, "left_children", inner, 99)), monkeypatch, small()
    )
    with pytest.raises(FormatError, match="outside its tree") as info:
        pk.load_bundle(path, trusted=True)
    assert info.value.member == "model" or "model" in str(info.value)


FUZZ = """
import random, sys
import numpy as np, xgboost as xgb
from persistkit.errors import PersistkitError
from persistkit.format import tree
from persistkit.format.codecs import decode_member
with open(sys.argv[1], "rb") as f:
    raw = f.read()
X = np.random.default_rng(0).normal(size=(50, 6))
rng = random.Random(int(sys.argv[2]))
loaded = refused = 0
for _ in range(int(sys.argv[3])):
    data = bytearray(raw)
    for _ in range(rng.choice([1, 1, 2, 8])):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    payload = tree.encode({"format": 1, "class": "xgboost.core.Booster", "model": bytes(data), "params": None})
    try:
        booster = decode_member("xgboost", payload)
    except PersistkitError:
        refused += 1
        continue
    booster.predict(xgb.DMatrix(X))  # whatever passed validation must predict without crashing
    loaded += 1
print("DONE", loaded, refused)
"""


def test_bit_flipped_models_are_refused_or_predict_without_crashing(tmp_path):
    """Flipped bits inside the model (past the envelope's checksums, as a forger would) never crash XGBoost.

    Runs in a child process: a miss would be a segfault, which must fail this test, not kill the run.
    """
    blob = tmp_path / "model.ubj"
    blob.write_bytes(raw_model())
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", FUZZ, str(blob), "1", "300"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0 and "DONE" in out.stdout, out.stderr[-2000:]
    loaded, refused = map(int, out.stdout.split()[1:3])
    assert loaded > 0 and refused > 0  # both outcomes happen: flips in floats load, flips in indices do not


def test_without_xgboost_installed_the_error_names_the_extra(tmp_path):
    missing_library_advice("xgboost", "xgboost", "xgboost", encode_member(small()).payload, tmp_path)


def test_the_bundle_records_the_xgboost_version_and_warns_on_skew(tmp_path, monkeypatch):
    import persistkit.bundle.provenance as provenance
    from persistkit.bundle import VersionSkewWarning

    path = pk.save_bundle(tmp_path / "x.models", {"model": small()})
    recorded = pk.inspect(path).environment
    assert recorded["xgboost-cpu"] == xgb.__version__ or recorded["xgboost"] == xgb.__version__
    real = provenance.environment()
    monkeypatch.setattr(
        provenance, "environment", lambda: {**real, "xgboost-cpu": "9.9.9", "xgboost": "9.9.9"}
    )
    with pytest.warns(VersionSkewWarning, match="xgboost"):
        pk.load_bundle(path)


@pytest.mark.parametrize(
    "key, value, why",
    [
        ("categories", 1 << 30, "out of range"),  # XGBoost would size a bitset by it
        ("categories", -3, "out of range"),
        ("categories_sizes", 50, "outside the category array"),
        ("categories_segments", 7, "outside the category array"),
        ("categories_nodes", 1000, "disagree"),
    ],
)
def test_forged_categorical_splits_are_refused(key, value, why):
    model, _ = categorical_model()
    raw = raw_model(model)
    forged = patched(raw, 0, key, 0, value)
    payload = tree.encode(
        {"format": 1, "class": xc.type_name(model), "model": forged, "params": model.get_params()}
    )
    with pytest.raises(FormatError, match=why):
        decode_member("xgboost", payload)
