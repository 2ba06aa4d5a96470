"""Decision trees and forests as node arrays: exact round trips, validation of hostile trees, skops fallback."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.exceptions import InconsistentVersionWarning
from sklearn.tree import (
    DecisionTreeClassifier,
    DecisionTreeRegressor,
    ExtraTreeClassifier,
    ExtraTreeRegressor,
)

import persistkit as pk
from persistkit.errors import FormatError, PersistkitError, UnsupportedTypeError, UntrustedTypeError
from persistkit.format import tree as treefmt
from persistkit.format.codecs import EncodeContext, decode_member, encode_member
from persistkit.format.codecs import sklearn_forests as skf
from persistkit.testing.compare import first_difference

XC, YC = make_classification(300, 6, n_informative=4, n_classes=3, random_state=0)
XR, YR = make_regression(300, 6, n_targets=2, random_state=0)

CASES = [
    ("DecisionTreeClassifier", lambda: DecisionTreeClassifier(random_state=0).fit(XC, YC), XC),
    ("DecisionTreeRegressor", lambda: DecisionTreeRegressor(max_depth=5, random_state=0).fit(XR, YR), XR),
    ("ExtraTreeClassifier", lambda: ExtraTreeClassifier(random_state=0).fit(XC, YC), XC),
    ("ExtraTreeRegressor", lambda: ExtraTreeRegressor(random_state=0).fit(XR, YR[:, 0]), XR),
    ("RandomForestClassifier", lambda: RandomForestClassifier(8, random_state=0).fit(XC, YC), XC),
    ("RandomForestRegressor", lambda: RandomForestRegressor(25, oob_score=True, random_state=0).fit(XR, YR), XR),
    ("ExtraTreesClassifier", lambda: ExtraTreesClassifier(8, class_weight="balanced", random_state=0).fit(XC, YC), XC),
    ("ExtraTreesRegressor", lambda: ExtraTreesRegressor(8, max_leaf_nodes=12, random_state=0).fit(XR, YR), XR),
    ("string labels", lambda: RandomForestClassifier(4, random_state=0).fit(XC, np.array(["up", "flat", "down"])[YC]), XC),
    ("multi-output labels", lambda: RandomForestClassifier(4, random_state=0).fit(XC, np.c_[YC, YC % 2]), XC),
    ("pruned", lambda: DecisionTreeClassifier(ccp_alpha=0.01, random_state=0).fit(XC, YC), XC),
    ("unfitted", lambda: RandomForestClassifier(3), None),
]  # fmt: skip


def outputs(est, x):
    out = {"predict": est.predict(x), "apply": est.apply(x)}
    if hasattr(est, "predict_proba") and est.n_outputs_ == 1:
        out["predict_proba"] = est.predict_proba(x)
    path = est.decision_path(x)
    out["decision_path"] = (path[0] if isinstance(path, tuple) else path).toarray()
    return out


@pytest.mark.parametrize("label, make, x", CASES, ids=[c[0] for c in CASES])
def test_round_trip_is_exact(label, make, x):
    est = make()
    encoded = encode_member(est, EncodeContext(name="model"))
    assert encoded.codec == "sklearn-trees"
    back = decode_member(encoded.codec, encoded.payload)
    assert type(back) is type(est)
    # every attribute (trees included), then parameters and predictions
    assert first_difference(est.__getstate__(), back.__getstate__()) is None
    assert first_difference(est, back) is None
    if x is not None:
        expected, actual = outputs(est, x), outputs(back, x)
        for method, value in expected.items():
            np.testing.assert_array_equal(actual[method], value, err_msg=f"{label}.{method}")


def test_bundle_uses_the_tree_codec_and_needs_trust_only_when_unencrypted(tmp_path):
    rf = RandomForestClassifier(5, random_state=0).fit(XC, YC)
    plain = pk.save_bundle(tmp_path / "plain.models", {"rf": rf}, encrypt=False)
    assert pk.inspect(plain).members[0].codec == "sklearn-trees"
    with pytest.raises(UntrustedTypeError) as info:
        pk.load_bundle(plain)
    assert set(info.value.types) == {skf.TREE_TYPE, "sklearn.ensemble._forest.RandomForestClassifier",
                                     "sklearn.tree._classes.DecisionTreeClassifier"}  # fmt: skip
    np.testing.assert_array_equal(
        pk.load_bundle(plain, trusted=True)["rf"].predict_proba(XC), rf.predict_proba(XC)
    )
    sealed = pk.save_bundle(tmp_path / "sealed.models", {"rf": rf})
    np.testing.assert_array_equal(pk.load_bundle(sealed)["rf"].predict(XC), rf.predict(XC))


def test_state_beyond_plain_data_falls_back_to_skops():
    rf = RandomForestClassifier(3, random_state=np.random.RandomState(0)).fit(XC, YC)
    with pytest.raises(UnsupportedTypeError):
        skf.encode(rf)
    encoded = encode_member(rf, EncodeContext(name="model"))
    assert encoded.codec == "sklearn"
    np.testing.assert_array_equal(decode_member("sklearn", encoded.payload).predict(XC), rf.predict(XC))


def test_subclasses_are_not_taken():
    class MyForest(RandomForestClassifier):
        pass

    assert not skf.handles(MyForest())
    with pytest.raises(UnsupportedTypeError, match="not a decision tree"):
        skf.encode(MyForest())


def test_audit_lists_classes_and_the_tree_type():
    payload = skf.encode(RandomForestRegressor(2, random_state=0).fit(XR, YR))
    assert skf.audit(payload) == ["sklearn.ensemble._forest.RandomForestRegressor",
                                  "sklearn.tree._classes.DecisionTreeRegressor", skf.TREE_TYPE]  # fmt: skip


# -- hostile payloads -------------------------------------------------------------------------


def forged(name="sklearn.tree._classes.DecisionTreeClassifier", version=1, edit_tree=None, edit_state=None):
    """A payload written the codec's way with one thing changed (a forger recomputes everything)."""
    est = DecisionTreeClassifier(max_depth=4, random_state=0).fit(XC, YC)
    state = dict(est.__getstate__())
    _cls, (n_features, n_classes, n_outputs), tree_state = est.tree_.__reduce__()
    tree_doc = [
        n_features,
        n_classes,
        n_outputs,
        {k: tree_state[k] for k in ("max_depth", "node_count", "nodes", "values")},
    ]
    tree_doc[3]["nodes"] = tree_doc[3]["nodes"].copy()
    if edit_tree:
        edit_tree(tree_doc)
    state["tree_"] = _Marker("tree", treefmt.encode(tree_doc))
    if edit_state:
        edit_state(state)
    hook = lambda obj: (obj.kind, obj.payload) if isinstance(obj, _Marker) else None  # noqa: E731
    return treefmt.encode([version, name, state], model_hook=hook)


class _Marker:
    def __init__(self, kind, payload):
        self.kind, self.payload = kind, payload


def _set(field, index, value):
    def edit(doc):
        doc[3]["nodes"][field][index] = value

    return edit


@pytest.mark.parametrize(
    "edit, why",
    [
        (_set("left_child", 0, 10_000), "points outside the tree"),
        (_set("right_child", 0, -5), "points outside the tree"),
        (_set("left_child", 2, 1), "points outside the tree"),  # a child before its parent: a cycle
        (_set("feature", 0, 6), "feature it does not have"),
        (_set("feature", 0, -3), "feature it does not have"),
        (lambda d: d[3].update(max_depth=1), "claims max_depth 1"),
        (lambda d: d[3].update(node_count=d[3]["node_count"] + 1), "does not match its node count"),
        (lambda d: d[3].update(values=d[3]["values"][:, :, :2].copy()), "Wrong shape for value array"),
        (lambda d: d[3].update(node_count=d[3]["node_count"] - 1), "does not match its node count"),
        (lambda d: d[3].update(max_depth=10**6), "bad depth"),
        (lambda d: d[3]["values"].__setitem__((0, 0, 0), np.nan), "not finite"),
        (lambda d: d.__setitem__(1, np.array([3, 3])), "bad class count"),
        (lambda d: d.__setitem__(0, 0), "bad feature or output count"),
        (lambda d: d[3].pop("values"), "wrong fields"),
    ],
)
def test_hostile_trees_are_refused_before_scikit_learn_sees_them(edit, why):
    with pytest.raises(FormatError, match=why):
        skf.decode(forged(edit_tree=edit), source="bundle.models:model")


def test_two_parents_for_one_node_are_refused():
    def share(doc):
        nodes = doc[3]["nodes"]
        inner = np.flatnonzero(nodes["left_child"] != -1)
        nodes["right_child"][inner[1]] = nodes["left_child"][inner[1]]

    with pytest.raises(FormatError, match="two parents"):
        skf.decode(forged(edit_tree=share))


def test_feature_count_mismatch_is_refused():
    with pytest.raises(FormatError, match="disagree on the number of features"):
        skf.decode(forged(edit_state=lambda s: s.update(n_features_in_=2)))


def test_forged_class_names_and_versions():
    with pytest.raises(UntrustedTypeError, match=r"os\.system") as info:
        skf.decode(forged(name="os.system"))
    assert info.value.types == ["os.system"]
    with pytest.raises(FormatError, match="newer persistkit"):
        skf.decode(forged(version=2))
    with pytest.raises(FormatError, match="unknown format version"):
        skf.decode(forged(version="1"))
    with pytest.raises(FormatError, match="unknown embedded object kind 'torch'"):
        skf.decode(forged(edit_state=lambda s: s.update(tree_=_Marker("torch", b"x"))))


def test_bit_flips_and_truncations_give_typed_errors_or_a_safe_tree():
    """Every damaged payload raises a persistkit error, or decodes to a tree that predicts without crashing."""
    est = DecisionTreeClassifier(max_depth=3, random_state=0).fit(XC, YC)
    payload = bytearray(skf.encode(est))
    rng = random.Random(7)
    outcomes = {"typed error": 0, "decoded": 0}
    for cut in range(0, len(payload), max(1, len(payload) // 150)):
        with pytest.raises(PersistkitError):
            skf.decode(bytes(payload[:cut]))
    for _ in range(600):
        damaged = bytearray(payload)
        bit = rng.randrange(len(damaged) * 8)
        damaged[bit // 8] ^= 1 << (bit % 8)
        try:
            with warnings.catch_warnings():  # a flip in "_sklearn_version" makes scikit-learn warn of a skew
                warnings.simplefilter("ignore", InconsistentVersionWarning)
                back = skf.decode(bytes(damaged))
        except PersistkitError:
            outcomes["typed error"] += 1
            continue
        outcomes["decoded"] += 1
        try:  # validated trees index inside their arrays; Python-level errors are fine, crashes are not
            back.predict(XC[:20])
            back.decision_path(XC[:20])
        except (ValueError, TypeError, IndexError, AttributeError, KeyError):
            pass
    assert outcomes["typed error"] > 0 and outcomes["decoded"] > 0, outcomes


def test_forests_embedded_in_tree_values_use_the_tree_codec():
    from persistkit.format.codecs import audit_member, values

    rf = RandomForestClassifier(3, random_state=0).fit(XC, YC)
    payload = values.encode({"model": rf, "step": 7})
    assert [codec for codec, _ in values.embedded(payload)] == ["sklearn-trees"]
    assert skf.TREE_TYPE in audit_member("tree", payload)
    back = values.decode(payload)
    assert back["step"] == 7 and first_difference(rf, back["model"]) is None


def _renamed(field_a, field_b, value):
    """Swap two field names of the node dtype (scikit-learn converts by position, not by name)."""

    def edit(doc):
        nodes = doc[3]["nodes"]
        names = list(nodes.dtype.names)
        ia, ib = names.index(field_a), names.index(field_b)
        names[ia], names[ib] = names[ib], names[ia]
        fields = nodes.dtype.fields
        dtype = np.dtype({"names": names, "formats": [fields[n][0] for n in nodes.dtype.names],
                          "offsets": [fields[n][1] for n in nodes.dtype.names], "itemsize": nodes.dtype.itemsize})  # fmt: skip
        forged_nodes = np.zeros(len(nodes), dtype=dtype)
        for name in nodes.dtype.names:
            forged_nodes[name] = nodes[name]  # every field a by-name check reads keeps its real value
        inner = nodes["left_child"] != -1
        forged_nodes[field_b] = np.where(inner, value, -1) if field_a == "left_child" else value
        doc[3]["nodes"] = forged_nodes

    return edit


@pytest.mark.parametrize(
    "edit",
    [_renamed("feature", "n_node_samples", 1 << 40), _renamed("left_child", "n_node_samples", 1 << 28)],
    ids=["feature slot", "child slot"],
)
def test_node_fields_are_checked_as_scikit_learn_reads_them(edit):
    """A reordered dtype passes a by-name check, then sklearn casts by position (a write out of bounds
    in feature_importances_ before this was caught). The check runs on the built Tree instead."""
    with pytest.raises(FormatError, match="points outside the tree or at a feature"):
        skf.decode(forged(edit_tree=edit))


def test_byte_swapped_nodes_decode_to_the_same_tree():
    est = DecisionTreeClassifier(max_depth=4, random_state=0).fit(XC, YC)

    def swap(doc):
        doc[3]["nodes"] = doc[3]["nodes"].astype(doc[3]["nodes"].dtype.newbyteorder(">"))

    back = skf.decode(forged(edit_tree=swap))
    np.testing.assert_array_equal(back.predict(XC), est.predict(XC))


@pytest.mark.parametrize(
    "edit, why",
    [
        (lambda s: s.update(n_outputs_=2), "disagree on the number of outputs"),
        (lambda s: s.update(n_classes_=np.int64(2)), "disagree on the number of classes"),
        (lambda s: s.update(n_classes_=None), "disagree on the number of classes"),
        (lambda s: s.update(tree_=[1, 2]), "is not a decision tree"),
    ],
)
def test_estimator_attributes_must_agree_with_the_tree(edit, why):
    with pytest.raises(FormatError, match=why):
        skf.decode(forged(edit_state=edit))


def test_forests_must_hold_fitted_trees_of_their_kind():
    forest = RandomForestClassifier(3, random_state=0).fit(XC, YC)
    regressor = DecisionTreeRegressor(random_state=0).fit(XC, YC)
    for estimators, why in (
        ([], "non-empty list"),
        ([forest.estimators_[0], regressor], r"estimators_\[1\]"),
    ):
        bad = RandomForestClassifier(3, random_state=0).fit(XC, YC)
        bad.estimators_ = estimators
        with pytest.raises(FormatError, match=why):
            skf.decode(skf.encode(bad))


@pytest.mark.parametrize(
    "forge",
    [
        lambda f: delattr(f, "n_jobs"),
        lambda f: delattr(f, "criterion"),
        lambda f: delattr(f, "estimator"),
        lambda f: delattr(f, "classes_"),
        lambda f: delattr(f, "n_outputs_"),
        lambda f: delattr(f, "estimators_"),
        lambda f: delattr(f.estimators_[1], "n_outputs_"),
        lambda f: setattr(f, "n_jobs", "many"),
        lambda f: setattr(f, "classes_", "abc"),
    ],
    ids=[
        "n_jobs",
        "criterion",
        "estimator",
        "classes_",
        "n_outputs_",
        "estimators_",
        "tree n_outputs_",
        "n_jobs type",
        "classes_ type",
    ],
)
def test_forged_forest_in_a_plain_bundle_is_refused_not_broken_at_predict(tmp_path, forge):
    forest = RandomForestClassifier(3, random_state=0).fit(XC, YC)
    forge(forest)
    path = pk.save_bundle(tmp_path / "forged.models", {"forest": forest}, encrypt=False)
    try:
        loaded = pk.load_bundle(path, trusted=True)["forest"]
    except FormatError as err:
        assert err.member == "forest" and err.path == str(path)
        return
    loaded.predict(XC[:3])  # whatever decodes must be usable
    loaded.predict_proba(XC[:3])
