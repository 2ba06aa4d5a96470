"""LightGBM boosters and sklearn wrappers as model text: round trips, forged text refused before LightGBM.

LightGBM 4.7 reads a leaf index it does not have (outside its arrays) and aborts the whole
process when tree_sizes disagrees with the trees; each forgery below would reach that code.
"""

from __future__ import annotations

import re
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

lgb = pytest.importorskip("lightgbm")

import persistkit as pk  # noqa: E402
from persistkit.errors import FormatError, NewerFormatError, UnsupportedTypeError, UntrustedTypeError  # noqa: E402
from persistkit.format import tree  # noqa: E402
from persistkit.format.codecs import audit_member, decode_member, encode_member  # noqa: E402

RNG = np.random.default_rng(1)
X = RNG.normal(size=(600, 6))
Y = (X[:, 0] + X[:, 1] > 0).astype(int)


def model_100():
    return lgb.LGBMClassifier(n_estimators=100, num_leaves=15, verbose=-1, n_jobs=1, random_state=0).fit(X, Y)


def categorical():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(X[:, :3], columns=list("abc"))
    frame["kind"] = pd.Categorical(RNG.choice(["spot", "perp", "option", "swap"], len(X)))
    y = frame["kind"].isin(["spot", "swap"]).to_numpy().astype(int) + (X[:, 0] > 0)
    model = lgb.LGBMClassifier(n_estimators=5, verbose=-1, min_data_per_group=5, cat_smooth=1, n_jobs=1)
    return model.fit(frame, y), frame


CASES = {
    "classifier, 100 trees": model_100,
    "string labels, 3 classes": lambda: lgb.LGBMClassifier(n_estimators=4, verbose=-1, n_jobs=1).fit(
        X, np.array(["down", "flat", "up"])[RNG.integers(0, 3, len(X))]
    ),
    "regressor": lambda: lgb.LGBMRegressor(n_estimators=5, verbose=-1, n_jobs=1).fit(X, X[:, 0]),
    "single-leaf trees": lambda: lgb.LGBMRegressor(n_estimators=2, min_child_samples=5000, verbose=-1).fit(X, X[:, 0]),
    "ranker": lambda: lgb.LGBMRanker(n_estimators=3, verbose=-1, n_jobs=1).fit(X, RNG.integers(0, 3, len(X)), group=[60] * 10),
    "booster": lambda: lgb.train({"verbose": -1, "num_threads": 1}, lgb.Dataset(X, Y), 5),
    "categorical": categorical,
}  # fmt: skip


def same(a, b, x=X):
    assert type(a) is type(b)
    assert np.array_equal(a.predict(x), b.predict(x))
    if isinstance(a, lgb.Booster):
        assert a.model_to_string() == b.model_to_string()
        return
    assert a.get_params() == b.get_params()
    assert a.n_features_in_ == b.n_features_in_ and a.best_iteration_ == b.best_iteration_
    if hasattr(a, "predict_proba"):
        assert np.array_equal(a.predict_proba(x), b.predict_proba(x))
        assert np.array_equal(a.classes_, b.classes_)


@pytest.mark.parametrize("make", CASES.values(), ids=CASES.keys())
def test_round_trip_predicts_the_same_with_the_same_class_and_params(make):
    made = make()
    model, x = made if isinstance(made, tuple) else (made, X)
    encoded = encode_member(model)
    assert encoded.codec == "lightgbm"
    same(model, decode_member("lightgbm", encoded.payload), x)
    assert (
        audit_member("lightgbm", encoded.payload)[0] == f"{type(model).__module__}.{type(model).__qualname__}"
    )


def test_an_unfitted_wrapper_keeps_its_params_and_a_loaded_one_refits():
    model = lgb.LGBMRegressor(n_estimators=9, num_leaves=5)
    back = decode_member("lightgbm", encode_member(model).payload)
    assert back.get_params() == model.get_params() and not back.__sklearn_is_fitted__()
    fitted = decode_member("lightgbm", encode_member(model_100()).payload)
    more = lgb.LGBMClassifier(n_estimators=3, verbose=-1).fit(X, Y, init_model=fitted)
    assert more.booster_.num_trees() == 103


def test_in_bundles_state_stores_and_model_stores(tmp_path):
    model = model_100()
    codec_is_registered("lightgbm", "lightgbm")
    bundle_round_trip(tmp_path, "lightgbm", model, same)
    state_store_round_trip(tmp_path, model, same)
    model_store_round_trip(tmp_path, model, same)
    damaged_bundles_are_typed_errors(tmp_path, model)


def test_python_objectives_and_linear_trees_are_refused_at_save():
    def objective(y, p):
        return p - y, np.ones_like(p)

    custom = lgb.LGBMRegressor(n_estimators=2, objective=objective, verbose=-1).fit(X, X[:, 0])
    with pytest.raises(UnsupportedTypeError, match="objective"):
        encode_member(custom)
    linear = lgb.LGBMRegressor(n_estimators=2, linear_tree=True, verbose=-1).fit(X, X[:, 0])
    with pytest.raises(UnsupportedTypeError, match="linear trees"):
        encode_member(linear)


# -- forgeries --------------------------------------------------------------------------------


def small():
    return lgb.LGBMClassifier(n_estimators=3, num_leaves=4, verbose=-1, n_jobs=1).fit(X, Y)


def text_of(model=None) -> str:
    return (model or small()).booster_.model_to_string()


def payload_with(text: str | None = None, **outer) -> bytes:
    model = small()
    encoded = tree.decode(encode_member(model).payload)
    if text is not None:
        encoded["model"] = text.encode()
    encoded.update(outer)
    return tree.encode(encoded)


def edit_line(text: str, key: str, edit, *, tree_index: int = 0, keep_sizes: bool = True) -> str:
    """Change one line of one tree; with ``keep_sizes`` the tree_sizes header is fixed to match, as a
    forger who knows the format would."""
    start = text.index(f"Tree={tree_index}\n")
    match = re.compile(rf"^{key}=(.*)$", re.M).search(text, start)
    new_line = f"{key}={edit(match.group(1))}"
    forged = text[: match.start()] + new_line + text[match.end() :]
    if keep_sizes:
        delta = len(new_line) - (match.end() - match.start())
        sizes = re.search(r"^tree_sizes=(.*)$", forged, re.M)
        values = [int(v) for v in sizes.group(1).split()]
        values[tree_index] += delta
        forged = forged[: sizes.start()] + "tree_sizes=" + " ".join(map(str, values)) + forged[sizes.end() :]
    return forged


def tokens(change):
    def edit(value: str) -> str:
        items = value.split()
        change(items)
        return " ".join(items)

    return edit


TEXT_FORGERIES = {
    "leaf that does not exist": ("left_child", tokens(lambda t: t.__setitem__(0, "-9")), "outside its tree"),
    "inner child pointing back": ("right_child", tokens(lambda t: t.__setitem__(-1, "0")), "outside its tree|parents"),
    "leaf used twice": ("left_child", tokens(lambda t: t.__setitem__(0, t[-1] if t[-1].startswith("-") else "-1")),
                        "two parents|points at|outside"),
    "feature the model lacks": ("split_feature", tokens(lambda t: t.__setitem__(0, "60")), "feature"),
    "too few leaf values": ("leaf_value", tokens(lambda t: t.pop()), "entries"),
    "NaN leaf": ("leaf_value", tokens(lambda t: t.__setitem__(0, "nan")), "finite"),
    "overflowing threshold": ("threshold", tokens(lambda t: t.__setitem__(0, "1e999")), "finite"),
    "categorical split with no bitsets": ("decision_type", tokens(lambda t: t.__setitem__(0, "3")), "cat"),
    "unknown decision type": ("decision_type", tokens(lambda t: t.__setitem__(0, "14")), "decision type"),
    "junk number": ("left_child", tokens(lambda t: t.__setitem__(0, "1x")), "decimal integers"),
    "linear tree": ("is_linear", lambda v: "1", "linear"),
}  # fmt: skip


@pytest.mark.parametrize("key, edit, why", TEXT_FORGERIES.values(), ids=TEXT_FORGERIES.keys())
def test_forged_trees_are_refused_before_lightgbm_sees_them(key, edit, why):
    with pytest.raises(FormatError, match=why):
        decode_member("lightgbm", payload_with(edit_line(text_of(), key, edit)))


HEADER_FORGERIES = {
    "tree_sizes left as they were (LightGBM aborts the process)": lambda t: edit_line(
        t, "leaf_value", tokens(lambda v: v.__setitem__(0, v[0] + "1")), keep_sizes=False),
    "unknown header key": lambda t: t.replace("label_index=", "evil=1\nlabel_index=", 1),
    "repeated tree key": lambda t: t.replace("shrinkage=1\n", "shrinkage=1\nshrinkage=1\n", 1),
    "fewer feature names": lambda t: re.sub(r"feature_names=\S+ ", "feature_names=", t, count=1),
    "no end of trees": lambda t: t.replace("end of trees", "end of tress"),
    "not model text": lambda t: "hello",
    "truncated": lambda t: t[: len(t) // 2],
    "a file-name parameter": lambda t: t.replace("[forcedsplits_filename: ]", "[forcedsplits_filename: /etc/passwd]"),
    "a million threads": lambda t: re.sub(r"\[num_threads: \d+\]", "[num_threads: 1000000]", t),
    "pandas categories that are not lists": lambda t: t.replace("pandas_categorical:null", 'pandas_categorical:{"a": 1}'),
    "version from the future": lambda t: t.replace("version=v4", "version=v9", 1),
    "trees that do not fill an iteration": lambda t: t.replace("num_tree_per_iteration=1", "num_tree_per_iteration=2", 1)
                                                     .replace("num_class=1", "num_class=2", 1),
}  # fmt: skip


@pytest.mark.parametrize("forge", HEADER_FORGERIES.values(), ids=HEADER_FORGERIES.keys())
def test_malformed_model_text_is_a_format_error(forge):
    with pytest.raises(FormatError):
        decode_member("lightgbm", payload_with(forge(text_of())))


def test_forged_envelopes_params_and_fitted_state():
    with pytest.raises(UntrustedTypeError, match="never constructs"):
        decode_member("lightgbm", payload_with(**{"class": "subprocess.Popen"}))
    base = tree.decode(encode_member(small()).payload)
    with pytest.raises(FormatError, match="n_jobs"):
        decode_member("lightgbm", payload_with(params={**base["params"], "n_jobs": 10**9}))
    with pytest.raises(FormatError, match="number of features"):
        decode_member("lightgbm", payload_with(fitted={**base["fitted"], "n_features_in": 99}))
    with pytest.raises(FormatError, match="labels disagree"):
        decode_member("lightgbm", payload_with(fitted={**base["fitted"], "classes": ["array", np.arange(5)]}))
    with pytest.raises(FormatError, match="fitted state"):
        decode_member("lightgbm", payload_with(model=None))
    with pytest.raises(NewerFormatError):
        decode_member("lightgbm", payload_with(format=2))


def test_a_forged_member_in_a_plain_bundle_is_refused(tmp_path, monkeypatch):
    forged = payload_with(edit_line(text_of(), "left_child", tokens(lambda t: t.__setitem__(0, "-9"))))
    path = save_forged(tmp_path, "lightgbm", forged, monkeypatch, small())
    with pytest.raises(FormatError, match="outside its tree"):
        pk.load_bundle(path, trusted=True)


FUZZ = """
import random, sys
import numpy as np, lightgbm as lgb
from persistkit.errors import PersistkitError
from persistkit.format import tree
from persistkit.format.codecs import decode_member
with open(sys.argv[1], "rb") as f:
    text = f.read()
X = np.random.default_rng(0).normal(size=(50, 6))
rng = random.Random(int(sys.argv[2]))
loaded = refused = 0
for _ in range(int(sys.argv[3])):
    data = bytearray(text)
    for _ in range(rng.choice([1, 1, 2, 5])):
        data[rng.randrange(len(data))] = rng.choice(b"0123456789- .e\\n=x")
    payload = tree.encode({"format": 1, "class": "lightgbm.basic.Booster", "model": bytes(data), "params": None,
                           "fitted": None})
    try:
        booster = decode_member("lightgbm", payload)
    except PersistkitError:
        refused += 1
        continue
    booster.predict(X)
    loaded += 1
print("DONE", loaded, refused)
"""


def test_edited_characters_are_refused_or_predict_without_crashing(tmp_path):
    """Random edits with the characters model text is made of: refused, or a model LightGBM reads
    within its arrays. A child process, since a miss is an abort or a segfault."""
    blob = tmp_path / "model.txt"
    blob.write_bytes(text_of().encode())
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", FUZZ, str(blob), "3", "300"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0 and "DONE" in out.stdout, out.stderr[-2000:]
    done = next(line for line in out.stdout.splitlines() if line.startswith("DONE"))  # LightGBM prints too
    loaded, refused = map(int, done.split()[1:3])
    assert refused > 0 and loaded > 0


def test_without_lightgbm_installed_the_error_names_the_extra(tmp_path):
    missing_library_advice("lightgbm", "lightgbm", "lightgbm", encode_member(small()).payload, tmp_path)
