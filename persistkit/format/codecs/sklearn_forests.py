"""scikit-learn decision trees and tree forests as data (codec id ``sklearn-trees``): node arrays, no skops.

Why a codec of its own: a fitted forest is a few hundred small estimators,
each holding one ``sklearn.tree._tree.Tree`` (two numpy arrays). skops walks
every one of them through its generic object schema and writes each array as
its own zip entry, which costs more than the arrays themselves (about 75 ms
for 100 trees on 5000x20 data, against 4 ms for ``pickle.dumps``). This codec
stores the same state that pickle would, as tree values, in about a tenth of
skops' time, and validates every tree's node array before scikit-learn sees
it (skops and pickle do not: a node whose child index points outside the
array makes ``predict`` read out of bounds).

Payload: a tree value (``persistkit.format.tree``) ``[1, class name, state]``,
where ``state`` is the estimator's ``__getstate__()`` dict. Objects inside it
are embedded with the tree format's model ext under these names:

================  ============================================================
``estimator``     a nested estimator of ``ESTIMATORS`` (payload: this format)
``tree``          ``sklearn.tree._tree.Tree``: ``[n_features, n_classes,
                  n_outputs, state]``; state holds ``nodes`` and ``values``
``objects``       a numpy object array of str/int/float/bool/None (string
                  class labels, ``feature_names_in_``): ``[shape, items]``
================  ============================================================

Decoding constructs only the classes in ``ESTIMATORS`` plus ``Tree``, named
by the payload but looked up in this fixed table (nothing else is imported).
An estimator whose state holds anything else (a ``RandomState`` as
``random_state``, a callable) is not stored here: ``encode`` raises
``UnsupportedTypeError``, the codec object declines it, and the registry
stores it with skops (codec ``sklearn``) instead.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from persistkit.errors import FormatError, UnsupportedTypeError, UntrustedTypeError
from persistkit.format import tree as treefmt
from persistkit.format.codecs.base import Codec, Declined, DecodeContext, EncodeContext, Encoded, Payload

__all__ = ["CODEC", "ESTIMATORS", "TREE_TYPE", "ForestCodec", "audit", "decode", "encode", "handles"]

FORMAT_VERSION = 1
TREE_TYPE = "sklearn.tree._tree.Tree"
# qualified name -> (module, class). The only classes decoding constructs, besides TREE_TYPE.
ESTIMATORS: dict[str, tuple[str, str]] = {
    f"{module}.{name}": (module, name)
    for module, names in (
        (
            "sklearn.tree._classes",
            ("DecisionTreeClassifier", "DecisionTreeRegressor", "ExtraTreeClassifier", "ExtraTreeRegressor"),
        ),
        (
            "sklearn.ensemble._forest",
            (
                "RandomForestClassifier",
                "RandomForestRegressor",
                "ExtraTreesClassifier",
                "ExtraTreesRegressor",
            ),
        ),
    )
    for name in names
}
_OBJECT_ITEMS = (str, int, float, bool, type(None))
_MAX_NESTING = 4  # forest -> estimators_ -> tree: 3 levels are all scikit-learn ever uses


def _name(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def handles(obj: object) -> bool:
    """True when ``obj`` is exactly one of ``ESTIMATORS`` (subclasses may add state this codec cannot judge)."""
    return _name(obj) in ESTIMATORS


# -- encoding ---------------------------------------------------------------------------


def encode(obj: object, *, root: str = "model") -> bytes:
    """The payload for a tree or forest; UnsupportedTypeError when its state holds anything but data."""
    if not handles(obj):
        raise UnsupportedTypeError(f"{root}: {_name(obj)} is not a decision tree or tree forest", field=root)
    state = obj.__getstate__()
    if not isinstance(state, dict):
        raise UnsupportedTypeError(f"{root}: {_name(obj)}.__getstate__() is not a dict", field=root)
    return treefmt.encode([FORMAT_VERSION, _name(obj), state], root=root, model_hook=_hook)


def _hook(obj: object) -> tuple[str, bytes] | None:
    name = _name(obj)
    if name in ESTIMATORS:
        return "estimator", encode(obj)
    if name == TREE_TYPE:
        reduced: Any = obj.__reduce__()
        _cls, (n_features, n_classes, n_outputs), state = reduced
        wanted = {"max_depth": state["max_depth"], "node_count": state["node_count"],
                  "nodes": state["nodes"], "values": state["values"]}  # fmt: skip
        return "tree", treefmt.encode([int(n_features), n_classes, int(n_outputs), wanted])
    if name == "numpy.ndarray" and obj.dtype.kind == "O":  # type: ignore[attr-defined]
        items = obj.ravel(order="C").tolist()  # type: ignore[attr-defined]
        if all(type(item) in _OBJECT_ITEMS for item in items):
            return "objects", treefmt.encode([list(obj.shape), items])  # type: ignore[attr-defined]
    return None


# -- decoding ---------------------------------------------------------------------------


class _Reader:
    """Rebuilds (or, with ``build=False``, only lists) what a payload constructs."""

    def __init__(self, source: str, build: bool) -> None:
        self.source = source
        self.build = build
        self.found: list[str] = []
        self.depth = 0

    def fail(self, what: str) -> FormatError:
        return FormatError(
            f"{self.source}: {what}. The member is damaged or was not written by persistkit; "
            "restore the bundle from a backup.",
            member=self.source,
        )

    def estimator(self, payload: bytes) -> object:
        self.depth += 1
        try:
            if self.depth > _MAX_NESTING:
                raise self.fail(f"estimators nest more than {_MAX_NESTING} deep")
            doc = treefmt.decode(payload, model_resolver=self.resolve, source=self.source)
            if not (isinstance(doc, list) and len(doc) == 3 and type(doc[1]) is str and type(doc[2]) is dict):
                raise self.fail("not a [version, class, state] record")
            version, name, state = doc
            if version != FORMAT_VERSION:
                if type(version) is int and version > FORMAT_VERSION:
                    raise FormatError(
                        f"{self.source}: written by a newer persistkit (sklearn-trees format {version}); "
                        "upgrade persistkit to read it.",
                        member=self.source,
                    )
                raise self.fail(f"unknown format version {version!r}")
            if name not in ESTIMATORS:
                raise UntrustedTypeError(
                    f"{self.source} names {name!r}, which this codec never constructs (it rebuilds only "
                    f"{', '.join(sorted(ESTIMATORS))}). The member is damaged or forged.",
                    types=[name],
                    member=self.source,
                )
            if not all(type(key) is str for key in state):
                raise self.fail(f"the state of {name} has non-string attribute names")
            if name not in self.found:
                self.found.append(name)
            if not self.build:
                return None
            module, cls_name = ESTIMATORS[name]
            cls = getattr(importlib.import_module(module), cls_name)
            _check_consistent(name, state, self.fail)
            _check_complete(cls, name, state, self.fail)
            obj = cls.__new__(cls)
            obj.__setstate__(state)  # BaseEstimator's: warns (InconsistentVersionWarning) on a version skew
            _check_parameters(obj, name, self.fail)
            return obj
        finally:
            self.depth -= 1

    def resolve(self, kind: str, payload: bytes) -> object:
        if kind == "estimator":
            return self.estimator(payload)
        if kind == "tree":
            if TREE_TYPE not in self.found:
                self.found.append(TREE_TYPE)
            return self.tree(treefmt.decode(payload, source=self.source)) if self.build else None
        if kind == "objects":
            return self.objects(treefmt.decode(payload, source=self.source))
        raise self.fail(f"unknown embedded object kind {kind!r}")

    def objects(self, doc: object) -> object:
        import numpy as np

        if not (
            isinstance(doc, list) and len(doc) == 2 and isinstance(doc[0], list) and isinstance(doc[1], list)
        ):
            raise self.fail("bad object array")
        shape, items = doc
        if not all(type(n) is int and n >= 0 for n in shape) or int(np.prod(shape)) != len(items):
            raise self.fail("object array shape does not match its items")
        if not all(type(item) in _OBJECT_ITEMS for item in items):
            raise self.fail("object array holds something other than str/int/float/bool/None")
        out = np.empty(len(items), dtype=object)
        out[:] = items
        return out.reshape(shape)

    def tree(self, doc: object) -> object:
        import numpy as np
        from sklearn.tree._tree import Tree

        if not (isinstance(doc, list) and len(doc) == 4 and type(doc[3]) is dict):
            raise self.fail("bad decision tree record")
        n_features, n_classes, n_outputs, state = doc
        if not (
            type(n_features) is int and 0 < n_features < 2**31 and type(n_outputs) is int and n_outputs > 0
        ):
            raise self.fail("decision tree with a bad feature or output count")
        if not (
            isinstance(n_classes, np.ndarray)
            and n_classes.shape == (n_outputs,)
            and n_classes.dtype.kind in "iu"
        ):
            raise self.fail("decision tree with a bad class count array")
        if (n_classes < 1).any() or (n_classes >= 2**31).any():
            raise self.fail("decision tree with a class count out of range")
        if set(state) != {"max_depth", "node_count", "nodes", "values"}:
            raise self.fail("decision tree state has the wrong fields")
        nodes, count = state["nodes"], state["node_count"]
        # __setstate__ trusts node_count and sizes the arrays by the node array: they must agree
        if not (
            isinstance(nodes, np.ndarray) and nodes.ndim == 1 and type(count) is int and count == len(nodes)
        ):
            raise self.fail("decision tree node array does not match its node count")
        if not (type(state["max_depth"]) is int and 0 <= state["max_depth"] <= count):
            raise self.fail("decision tree with a bad depth")
        out = Tree(n_features, np.ascontiguousarray(n_classes, dtype=np.intp), n_outputs)
        try:
            out.__setstate__(state)
        except (ValueError, TypeError, KeyError, OverflowError) as err:
            raise self.fail(f"scikit-learn refused a decision tree ({err})") from err
        # Checked on the Tree as scikit-learn will use it, not on the payload's arrays: __setstate__
        # converts the node array by field position, whatever the payload's field names say.
        _check_tree(out, self.fail)
        return out


_FOREST_TREES = {
    "sklearn.ensemble._forest.RandomForestClassifier": "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.ensemble._forest.RandomForestRegressor": "sklearn.tree._classes.DecisionTreeRegressor",
    "sklearn.ensemble._forest.ExtraTreesClassifier": "sklearn.tree._classes.ExtraTreeClassifier",
    "sklearn.ensemble._forest.ExtraTreesRegressor": "sklearn.tree._classes.ExtraTreeRegressor",
}


def _check_consistent(name: str, state: dict[str, Any], fail: Any) -> None:
    """A fitted estimator's own attributes must agree with its trees.

    predict() checks X against ``n_features_in_`` and then the tree indexes X
    by its own feature numbers; a forest averages whatever its estimators_
    return. A forged file could otherwise predict garbage without an error.
    """
    import numpy as np
    from sklearn.tree._tree import Tree

    def agrees(tree: Any, owner: str) -> None:
        if tree.n_features != state.get("n_features_in_"):
            raise fail(f"{owner}'s tree and n_features_in_ disagree on the number of features")
        if tree.n_outputs != state.get("n_outputs_"):
            raise fail(f"{owner}'s tree and n_outputs_ disagree on the number of outputs")
        if "Classifier" in name:
            raw = state.get("n_classes_")
            wanted = list(raw) if isinstance(raw, (list, np.ndarray)) else [raw]
            if len(wanted) != len(tree.n_classes) or not all(
                isinstance(a, (int, np.integer)) and not isinstance(a, bool) and int(a) == int(b)
                for a, b in zip(wanted, tree.n_classes, strict=True)
            ):
                raise fail(f"{owner}'s tree and n_classes_ disagree on the number of classes")

    if "tree_" in state:
        if type(state["tree_"]) is not Tree:
            raise fail(f"{name}.tree_ is not a decision tree")
        agrees(state["tree_"], name)
    if name in _FOREST_TREES and "estimators_" in state:
        trees = state["estimators_"]
        if type(trees) is not list or not trees:
            raise fail(f"{name}.estimators_ is not a non-empty list of trees")
        for i, est in enumerate(trees):
            if _name(est) != _FOREST_TREES[name] or type(getattr(est, "tree_", None)) is not Tree:
                raise fail(f"{name}.estimators_[{i}] is not a fitted {_FOREST_TREES[name]}")
            agrees(est.tree_, f"{name}.estimators_[{i}]")


def _fitted(state: dict[str, Any]) -> bool:
    return any(key.endswith("_") and not key.startswith("_") for key in state)


def _check_complete(cls: Any, name: str, state: dict[str, Any], fail: Any) -> None:
    """Everything predict() reads must be there, so a decoded estimator works or is refused here.

    Constructor parameters always (``get_params`` and predict read them);
    once any fitted attribute is present (an unfitted estimator is legal and
    raises NotFittedError on use), every fitted attribute predict needs.
    """
    needed = list(cls._get_param_names())
    if name in _FOREST_TREES:
        needed.append("estimator")  # the template tree, set by the forest's constructor
    if _fitted(state):
        needed += ["n_features_in_", "n_outputs_"]
        needed.append("estimators_" if name in _FOREST_TREES else "tree_")
        if "Classifier" in name:
            needed += ["classes_", "n_classes_"]
    missing = [attr for attr in needed if attr not in state]
    if missing:
        raise fail(f"{name} lacks {', '.join(missing)}, which scikit-learn needs to use it")
    if name in _FOREST_TREES and _name(state["estimator"]) != _FOREST_TREES[name]:
        raise fail(f"{name}.estimator is not a {_FOREST_TREES[name]}")
    if _fitted(state) and "Classifier" in name:
        _check_classes(name, state, fail)


def _check_classes(name: str, state: dict[str, Any], fail: Any) -> None:
    import numpy as np

    classes, counts, outputs = state["classes_"], state["n_classes_"], state["n_outputs_"]
    per_output = [classes] if outputs == 1 else classes
    wanted = [counts] if outputs == 1 else counts
    if not (isinstance(per_output, list) or outputs == 1) or len(per_output) != outputs:
        raise fail(f"{name}.classes_ does not hold one label array per output")
    for labels, count in zip(per_output, list(wanted), strict=False):
        if not (isinstance(labels, np.ndarray) and labels.ndim == 1 and len(labels) == int(count)):
            raise fail(f"{name}.classes_ is not an array of n_classes_ labels")


def _check_parameters(obj: Any, name: str, fail: Any) -> None:
    """scikit-learn's own parameter constraints (n_jobs an int, criterion a known name, ...)."""
    validate = getattr(obj, "_validate_params", None)
    if validate is None:  # scikit-learn < 1.2 has no declared constraints
        return
    try:
        validate()
    except (ValueError, TypeError) as err:
        raise fail(f"{name} has a parameter scikit-learn refuses ({err})") from err


def _check_tree(tree: Any, fail: Any) -> None:
    """Refuse trees that would make scikit-learn read or write outside their arrays.

    Trees are built parent first, so every child index is greater than its
    parent's: that rules out cycles as well as out-of-range indices. One parent
    per node bounds the traversal stacks (sized by node_count), and max_depth
    must cover the real depth (decision_path sizes its buffer by it).
    """
    import numpy as np

    count = int(tree.node_count)
    if count < 1 or count != tree.capacity:  # before any property reads node_count entries
        raise fail("decision tree node array does not match its node count")
    left, right, feature = tree.children_left, tree.children_right, tree.feature
    index = np.arange(count)
    leaf = (left == -1) & (right == -1)
    inner = ~leaf
    if not (
        ((left[inner] > index[inner]) & (left[inner] < count)).all()
        and ((right[inner] > index[inner]) & (right[inner] < count)).all()
        and ((feature[inner] >= 0) & (feature[inner] < tree.n_features)).all()
    ):
        raise fail("decision tree node points outside the tree or at a feature it does not have")
    children = np.concatenate([left[inner], right[inner]])
    if len(np.unique(children)) != len(children):
        raise fail("decision tree node has two parents")
    depth, level = 0, np.array([0])
    while True:
        level = level[inner[level]]
        if not len(level):
            break
        level = np.concatenate([left[level], right[level]])
        depth += 1
    if not depth <= tree.max_depth <= count:
        raise fail(f"decision tree is {depth} deep but claims max_depth {tree.max_depth}")
    if not np.isfinite(tree.value).all():
        raise fail("decision tree holds values that are not finite")


def decode(
    payload: bytes | bytearray | memoryview,
    *,
    trusted: Sequence[str] | bool = (),
    source: str = "scikit-learn member",
) -> object:
    """Rebuild the estimator. Every class it constructs is in the default trust, so ``trusted`` is unused."""
    del trusted
    return _Reader(source, build=True).estimator(bytes(payload))


def audit(payload: bytes | bytearray | memoryview, *, source: str = "scikit-learn member") -> list[str]:
    """The classes decoding would construct, read without constructing any."""
    reader = _Reader(source, build=False)
    reader.estimator(bytes(payload))
    return sorted(reader.found)


class ForestCodec(Codec):
    """Exactly the classes of ``ESTIMATORS``; anything their state holds beyond data is left to skops."""

    name = "sklearn-trees"
    packages = ("scikit-learn", "numpy")
    extra = "sklearn"
    constructs_types = True
    embeds_in_values = True

    def handles(self, obj: object) -> bool:
        return handles(obj)

    def encode(self, obj: object, ctx: EncodeContext) -> Encoded:
        try:  # about 5x faster than skops for forests, and the node arrays are validated on load
            payload = encode(obj, root=ctx.name)
        except UnsupportedTypeError as err:  # a RandomState as random_state, say: skops stores it
            raise Declined(err.message) from err
        return Encoded(self.name, payload, info={"class": _name(obj)})

    def decode(self, payload: Payload, ctx: DecodeContext) -> object:
        return decode(payload, trusted=ctx.trusted, source=ctx.source)

    def audit(self, payload: Payload, ctx: DecodeContext) -> list[str]:
        return audit(payload, source=ctx.source)


CODEC = ForestCodec()
