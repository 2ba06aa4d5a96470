"""XGBoost boosters and their scikit-learn wrappers, in XGBoost's own UBJSON model format.

Why UBJSON and not JSON: both are XGBoost's own pickle-free model formats and
load into the same booster, but UBJSON is the one ``save_model`` writes by
default since XGBoost 2.1; it loads ~3x faster (0.7 ms against 1.9 ms for 100
trees), keeps floats as their bits, and its typed arrays can be checked in
place (``ubj.column``) where JSON would first become ~100,000 Python numbers.

Payload: a tree value (``persistkit.format.tree``)::

    {"format": 1, "class": "xgboost.sklearn.XGBClassifier" | "xgboost.core.Booster" | ...,
     "model": <UBJSON bytes of Booster.save_raw("ubj")> | None (an unfitted wrapper),
     "params": {<the wrapper's get_params()>} | None (a bare Booster)}

Decoding constructs only the classes of ``CLASSES``, looked up in that fixed
table. A wrapper is rebuilt as ``cls(**params)`` and its booster loaded as
XGBoost's ``load_model`` does; the stored params are then set back, so
``get_params()`` is what it was when saved (``load_model`` alone would leave
``base_score`` and ``feature_types`` as the model's). Params hold data only:
a callable objective, metric or callback cannot be stored without pickle and
is refused at save time with ``UnsupportedTypeError``.

Validation: XGBoost trusts model files. A tree whose child index points
outside the tree, a cycle, a split on a feature the model does not have, or
categories beyond their arrays load without complaint and then crash the
process in ``predict`` (segfault, XGBoost 3.2). So the whole document is read
(``ubj.loads``) and every tree checked before XGBoost sees the bytes: shapes
agree with ``num_nodes``; every inner node's children are in range and name
it as their parent (so the root reaches a tree: no cycle, no shared node);
split features are below ``num_feature``; categorical splits stay inside their
category arrays; thresholds and leaf values are finite. Multi-target trees
(``multi_strategy="multi_output_tree"``, experimental in XGBoost) have another
layout and are refused at save time.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from persistkit.errors import (
    FormatError,
    PersistkitError,
    UnsupportedTypeError,
)
from persistkit.format import tree
from persistkit.format.codecs import ubj
from persistkit.format.codecs.base import (
    Codec,
    DecodeContext,
    EncodeContext,
    Encoded,
    Payload,
    decode_member,
    fixed_class,
    type_name,
)

__all__ = ["CLASSES", "CODEC", "XGBoostCodec", "audit", "decode", "encode", "validate_model"]

FORMAT = 1
BOOSTER = "xgboost.core.Booster"
# qualified name -> (module, class): the only classes decoding constructs.
CLASSES: dict[str, tuple[str, str]] = {
    BOOSTER: ("xgboost.core", "Booster"),
    **{
        f"xgboost.sklearn.{name}": ("xgboost.sklearn", name)
        for name in ("XGBModel", "XGBClassifier", "XGBRegressor", "XGBRanker", "XGBRFClassifier",
                     "XGBRFRegressor")
    },
}  # fmt: skip
_LEAF = -1
_ROOT_PARENT = 2147483647  # XGBoost's kInvalidNodeId as the root's parent
_MAX_CATEGORY = 1 << 24  # XGBoost's own bound on category values (they must be exact in a float)
_MAX_THREADS = 1024  # n_jobs of a forged wrapper becomes XGBoost's thread count


def _fail(source: str, what: str) -> FormatError:
    return FormatError(
        f"{source}: {what}. The XGBoost member is damaged or forged (XGBoost itself would load it and "
        "could crash in predict); restore the bundle from a backup.",
        member=source,
    )


# -- encoding ---------------------------------------------------------------------------


def _is_function(value: object) -> bool:
    return callable(value) and not isinstance(value, type)


def _params(obj: Any, member: str) -> dict[str, Any]:
    params = dict(obj.get_params(deep=False))
    for key, value in params.items():
        if _is_function(value) or (isinstance(value, list | tuple) and any(_is_function(v) for v in value)):
            raise UnsupportedTypeError(
                f"XGBoost model {member!r}: parameter {key} holds a Python function "
                f"({getattr(value, '__qualname__', type(value).__name__)}), which cannot be stored without "
                "pickle. Use XGBoost's built-in objective/eval_metric names, or set it to None before "
                "saving and pass it again after loading.",
                member=member,
                field=key,
            )
    if params.get("callbacks"):
        raise UnsupportedTypeError(
            f"XGBoost model {member!r}: callbacks are Python objects and cannot be stored without pickle; "
            "set callbacks=None before saving (model.set_params(callbacks=None)).",
            member=member,
            field="callbacks",
        )
    return params


def encode(obj: object, *, member: str = "model") -> bytes:
    name = type_name(obj)
    if name not in CLASSES:
        raise UnsupportedTypeError(
            f"{member}: {name} is not one of the XGBoost classes persistkit stores ({', '.join(sorted(CLASSES))})",
            field=member,
        )
    model: Any = obj
    params: dict[str, Any] | None = None
    booster: Any = model
    if name != BOOSTER:
        params = _params(model, member)
        booster = model.get_booster() if model.__sklearn_is_fitted__() else None
    raw: bytes | None = None
    if booster is not None:
        config = booster.save_config()
        if '"multi_strategy":"multi_output_tree"' in config.replace(" ", ""):
            raise UnsupportedTypeError(
                f"XGBoost model {member!r} has multi-target trees (multi_strategy='multi_output_tree', "
                "experimental in XGBoost); persistkit cannot validate their layout, so it does not store them. "
                "Train with the default multi_strategy='one_output_per_tree'.",
                member=member,
            )
        raw = bytes(booster.save_raw(raw_format="ubj"))
    try:
        return tree.encode({"format": FORMAT, "class": name, "model": raw, "params": params}, root=member)
    except UnsupportedTypeError as err:
        raise UnsupportedTypeError(
            f"XGBoost model {member!r}: {err.message}", member=member, field=err.field
        ) from err


def info(obj: object) -> dict[str, object]:
    model: Any = obj
    out: dict[str, object] = {"class": type_name(obj)}
    booster = model if type_name(obj) == BOOSTER else (
        model.get_booster() if model.__sklearn_is_fitted__() else None
    )  # fmt: skip
    if booster is not None:
        out["boosted_rounds"] = int(booster.num_boosted_rounds())
        out["num_features"] = int(booster.num_features())
    return out


# -- validation -------------------------------------------------------------------------


def _int_param(params: object, key: str, source: str, *, low: int = 0, high: int = 2**31 - 1) -> int:
    value = params.get(key) if isinstance(params, dict) else None
    try:
        number = int(value) if isinstance(value, str) else None
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        raise _fail(source, f"parameter {key} is {value!r}, not an integer in [{low}, {high}]")
    return number


# the element type XGBoost writes for each typed array of a tree (what the reader's fast path expects)
_NODE_ARRAYS = {
    "left_children": ">i4", "right_children": ">i4", "parents": ">i4", "split_indices": ">i4",
    "split_conditions": ">f4", "base_weights": ">f4", "default_left": "|u1", "split_type": "|u1",
    "loss_changes": ">f4", "sum_hessian": ">f4",
}  # fmt: skip
_CATEGORY_ARRAYS = {"categories": ">i4", "categories_nodes": ">i4", "categories_segments": ">i8",
                    "categories_sizes": ">i8"}  # fmt: skip


def _check_trees(data: bytes, trees: list[Any], num_feature: int, source: str) -> None:
    import numpy as np

    sizes = np.zeros(len(trees), dtype=np.int64)
    with_categories = []
    for i, t in enumerate(trees):  # one pass of plain Python per tree; the nodes are checked below in numpy
        if not isinstance(t, dict) or t.get("id") != i:
            raise _fail(source, f"tree {i} is not an object with id {i}")
        tp = t.get("tree_param")
        _int_param(tp, "size_leaf_vector", source, high=1)  # multi-target trees have another layout
        if _int_param(tp, "num_feature", source) > num_feature:
            raise _fail(source, f"tree {i} uses more features than the model has")
        n = sizes[i] = _int_param(tp, "num_nodes", source, low=1)
        for key, dtype in _NODE_ARRAYS.items():
            value = t.get(key)
            if type(value) is tuple:  # the reader's fast path: a typed array of XGBoost's type, not read yet
                if value[1] != n:
                    raise _fail(source, f"tree {i}: {key} has {value[1]} entries for {n} nodes")
            elif not (isinstance(value, np.ndarray) and value.dtype.str == dtype and len(value) == n):
                raise _fail(source, f"tree {i}: {key} is not an array of {n} {dtype} entries")
        for key, dtype in _CATEGORY_ARRAYS.items():
            value = t.get(key)
            if type(value) is tuple:
                if value[1]:
                    with_categories.append(i)
            elif not (isinstance(value, np.ndarray) and value.dtype.str == dtype):
                raise _fail(source, f"tree {i}: {key} is not an array of {dtype} entries")
            elif len(value):
                with_categories.append(i)
    if not trees:
        return

    def col(key: str, dtype: str) -> Any:
        return ubj.column(data, [t[key] for t in trees], dtype)[0]

    left, right = col("left_children", ">i4").astype(np.int64), col("right_children", ">i4").astype(np.int64)
    parents, split = col("parents", ">i4").astype(np.int64), col("split_indices", ">i4").astype(np.int64)
    starts = np.cumsum(sizes) - sizes  # where each tree starts in the columns
    node = np.arange(len(left)) - np.repeat(starts, sizes)  # index of each node within its tree
    base, count = np.repeat(starts, sizes), np.repeat(sizes, sizes)
    leaf = left == _LEAF
    inner = ~leaf
    if ((right == _LEAF) != leaf).any():
        raise _fail(source, "a node has one child")
    l_in, r_in, n_in = left[inner], right[inner], count[inner]
    if not ((l_in > 0) & (l_in < n_in) & (r_in > 0) & (r_in < n_in)).all():
        raise _fail(source, "a tree node points at a child outside its tree")
    own, at = node[inner], base[inner]
    if not ((parents[at + l_in] == own).all() and (parents[at + r_in] == own).all()):
        raise _fail(
            source, "a tree node's children do not name it as their parent (a cycle or a shared node)"
        )
    if not (parents[starts] == _ROOT_PARENT).all():
        raise _fail(source, "a tree's root has a parent")
    if not ((split[inner] >= 0) & (split[inner] < num_feature)).all():
        raise _fail(source, "a tree splits on a feature the model does not have")
    if not (
        np.isfinite(col("split_conditions", ">f4")).all() and np.isfinite(col("base_weights", ">f4")).all()
    ):
        raise _fail(source, "a tree holds a threshold or leaf value that is not finite")
    split_type = col("split_type", ">u1")
    if not (split_type <= 1).all() or (split_type[leaf] != 0).any():
        raise _fail(source, "a tree has an unknown split type, or a leaf marked as a categorical split")
    categorical = set(np.unique(np.repeat(np.arange(len(trees)), sizes)[split_type == 1]).tolist())
    for i in sorted(categorical | set(with_categories)):
        _check_categories(data, trees[i], int(sizes[i]), source)


def _check_categories(data: bytes, t: dict[str, Any], n: int, source: str) -> None:
    import numpy as np

    def read(key: str) -> Any:
        value = t[key]
        return ubj.column(data, [value], value[2] if type(value) is tuple else value.dtype.str)[0]

    nodes_len = ubj.length(t["categories_nodes"])
    if nodes_len != ubj.length(t["categories_segments"]) or nodes_len != ubj.length(t["categories_sizes"]):
        raise _fail(source, f"tree {t['id']}: its category arrays disagree in length")
    split_type = read("split_type")
    categorical = np.flatnonzero(split_type == 1)
    if nodes_len == 0 and ubj.length(t["categories"]) == 0:
        if len(categorical):
            raise _fail(source, f"tree {t['id']}: a categorical split has no categories")
        return
    nodes = read("categories_nodes").astype(np.int64)
    segments, sizes = read("categories_segments").astype(np.int64), read("categories_sizes").astype(np.int64)
    categories = read("categories").astype(np.int64)
    if not np.array_equal(np.sort(nodes), categorical) or len(np.unique(nodes)) != len(nodes):
        raise _fail(source, f"tree {t['id']}: categorical splits and their category lists disagree")
    if ((segments < 0) | (sizes < 0) | (segments + sizes > len(categories))).any():
        raise _fail(source, f"tree {t['id']}: a category list points outside the category array")
    if ((categories < 0) | (categories >= _MAX_CATEGORY)).any() or ((nodes < 0) | (nodes >= n)).any():
        raise _fail(source, f"tree {t['id']}: a category value or node is out of range")


def _check_gbtree(data: bytes, gb: Mapping[str, Any], num_feature: int, groups: int, source: str) -> int:
    model = gb.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("trees"), list):
        raise _fail(source, "the gbtree booster has no tree list")
    trees = model["trees"]
    num_trees = _int_param(model.get("gbtree_model_param"), "num_trees", source)
    if num_trees != len(trees):
        raise _fail(source, f"num_trees says {num_trees}, the model holds {len(trees)} trees")
    groups_of = _ints(model.get("tree_info"))
    if groups_of is None or len(groups_of) != len(trees) or not all(0 <= g < groups for g in groups_of):
        raise _fail(source, "tree_info does not give each tree an output group of the model")
    ptr = _ints(model.get("iteration_indptr"))
    if not (
        ptr and ptr[0] == 0 and ptr[-1] == len(trees) and all(a <= b for a, b in itertools.pairwise(ptr))
    ):
        raise _fail(source, "iteration_indptr does not split the trees into rounds")
    _check_trees(data, trees, num_feature, source)
    return len(trees)


def validate_model(data: bytes, *, source: str = "XGBoost member") -> dict[str, Any]:
    """Read an XGBoost UBJSON model and check it as the module docstring says; FormatError if it fails."""
    import numpy as np

    try:
        doc = ubj.loads(data)
    except ubj.UBJError as err:
        raise _fail(source, f"the model is not XGBoost's UBJSON ({err})") from err
    learner = doc.get("learner") if isinstance(doc, dict) else None
    version = doc.get("version") if isinstance(doc, dict) else None
    if not isinstance(learner, dict) or not (
        isinstance(version, list) and len(version) == 3 and all(type(v) is int for v in version)
    ):
        raise _fail(source, "the model has no learner or version")
    mp = learner.get("learner_model_param")
    num_feature = _int_param(mp, "num_feature", source)
    num_class = _int_param(mp, "num_class", source, high=1 << 20)
    num_target = _int_param(mp, "num_target", source, low=1, high=1 << 20)
    groups = max(num_class, num_target, 1)
    names, types = learner.get("feature_names"), learner.get("feature_types")
    for what, value in (("feature_names", names), ("feature_types", types)):
        if not (isinstance(value, list) and all(type(v) is str for v in value)) or len(value) not in (
            0,
            num_feature,
        ):
            raise _fail(source, f"{what} is not a list of {num_feature} names")
    attributes = learner.get("attributes")
    if not (isinstance(attributes, dict) and all(type(v) is str for v in attributes.values())):
        raise _fail(source, "the model's attributes are not strings")
    objective = learner.get("objective")
    if not (isinstance(objective, dict) and type(objective.get("name")) is str):
        raise _fail(source, "the model has no objective")
    gb = learner.get("gradient_booster")
    kind = gb.get("name") if isinstance(gb, dict) else None
    if kind == "gbtree":
        assert isinstance(gb, dict)
        _check_gbtree(data, gb, num_feature, groups, source)
    elif kind == "dart":
        assert isinstance(gb, dict)
        inner = gb.get("gbtree")
        if not isinstance(inner, dict):
            raise _fail(source, "the dart booster has no gbtree")
        n = _check_gbtree(data, inner, num_feature, groups, source)
        drops = _numbers(data, gb.get("weight_drop"))
        if drops is None or len(drops) != n or not np.isfinite(drops).all():
            raise _fail(source, "dart weight_drop does not give each tree a finite weight")
    elif kind == "gblinear":
        assert isinstance(gb, dict)
        model = gb.get("model")
        weights = _numbers(data, model.get("weights") if isinstance(model, dict) else None)
        if weights is None or len(weights) != (num_feature + 1) * groups or not np.isfinite(weights).all():
            raise _fail(source, "gblinear weights do not match the model's features and outputs")
    else:
        raise _fail(source, f"unknown booster {kind!r}")
    return dict(doc)


def _numbers(data: bytes, value: object) -> Any:
    """A typed array or a list of plain numbers as a float64 array; None for anything else."""
    import numpy as np

    if type(value) is tuple or isinstance(value, np.ndarray):
        return ubj.column(data, [value], "f8")[0].astype(np.float64)
    if isinstance(value, list) and all(type(v) in (int, float) for v in value):
        return np.array(value, dtype=np.float64)
    return None


def _ints(value: object) -> list[int] | None:
    """A typed integer array or a list of ints as a list; None for anything else."""
    import numpy as np

    if isinstance(value, np.ndarray) and value.dtype.kind in "iu":
        return [int(v) for v in value]
    if isinstance(value, list) and all(type(v) is int for v in value):
        return value
    return None


# -- decoding ---------------------------------------------------------------------------


def _outer(payload: Payload, source: str) -> dict[str, Any]:
    outer = decode_member(payload, source, codec="xgboost", newest=FORMAT)
    if not (
        isinstance(outer, dict)
        and outer.get("format") == FORMAT
        and type(outer.get("class")) is str
        and (outer.get("model") is None or type(outer.get("model")) is bytes)
        and (outer.get("params") is None or isinstance(outer.get("params"), dict))
    ):
        raise _fail(source, "not a persistkit XGBoost member (format 1)")
    if outer["class"] == BOOSTER and (outer["model"] is None or outer["params"] is not None):
        raise _fail(source, "a Booster member needs a model and no params")
    if outer["class"] != BOOSTER and outer["params"] is None:
        raise _fail(source, "a wrapper member needs its params")
    return outer


def audit(payload: Payload, *, source: str = "XGBoost member") -> list[str]:
    """The class decoding would construct, read without constructing it."""
    return [_outer(payload, source)["class"]]


def _check_params(params: dict[str, Any], source: str) -> None:
    for key in params:
        if type(key) is not str or not key.isidentifier() or key.startswith("_"):
            raise _fail(source, f"refusing wrapper parameter name {key!r}")
    jobs = params.get("n_jobs")
    if jobs is not None and not (type(jobs) is int and -_MAX_THREADS <= jobs <= _MAX_THREADS):
        raise _fail(source, f"n_jobs is {jobs!r}")


def decode(payload: Payload, *, trusted: object = (), source: str = "XGBoost member") -> object:
    """Rebuild the booster or wrapper; every class it constructs is in ``CLASSES``, so ``trusted`` is unused."""
    del trusted
    outer = _outer(payload, source)
    name = outer["class"]
    cls = fixed_class(name, CLASSES, source)
    raw: bytes | None = outer["model"]
    if raw is not None:
        validate_model(raw, source=source)
    try:
        if name == BOOSTER:
            booster = cls()
            booster.load_model(bytearray(raw or b""))
            return booster
        params: dict[str, Any] = outer["params"]
        _check_params(params, source)
        model = cls(**params)
        if raw is not None:
            model.load_model(bytearray(raw))
            # load_model sets these from the booster; put back what the caller had set
            for key in ("objective", "booster", "base_score", "feature_types", "enable_categorical"):
                if key in params:
                    setattr(model, key, params[key])
        return model
    except PersistkitError:
        raise
    except Exception as err:  # XGBoostError, ValueError, TypeError...: whatever XGBoost raises on this model
        raise _fail(source, f"XGBoost refused it ({type(err).__name__}: {err})") from err


class XGBoostCodec(Codec):
    """``xgboost.Booster`` and the scikit-learn wrappers of ``CLASSES`` (exact types only)."""

    name = "xgboost"
    packages = ("xgboost", "xgboost-cpu", "numpy")  # either distribution provides the module
    extra = "xgboost"
    constructs_types = True
    embeds_in_values = True

    def handles(self, obj: object) -> bool:
        return type_name(obj) in CLASSES

    def encode(self, obj: object, ctx: EncodeContext) -> Encoded:
        return Encoded(self.name, encode(obj, member=ctx.name), info=info(obj))

    def decode(self, payload: Payload, ctx: DecodeContext) -> object:
        return decode(payload, trusted=ctx.trusted, source=ctx.source)

    def audit(self, payload: Payload, ctx: DecodeContext) -> list[str]:
        return audit(payload, source=ctx.source)


CODEC = XGBoostCodec()
