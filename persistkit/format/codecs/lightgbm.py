"""LightGBM boosters and their scikit-learn wrappers, as LightGBM's own model text.

Size: over 500 lines because the model-text checker (LightGBM's grammar, tree structure, parameters)
is one validation pass that must match what LightGBM parses, byte range for byte range.

Payload: a tree value (``persistkit.format.tree``)::

    {"format": 1, "class": "lightgbm.basic.Booster" | "lightgbm.sklearn.LGBMClassifier" | ...,
     "model": <UTF-8 model text of Booster.model_to_string()> | None (an unfitted wrapper),
     "params": {<the wrapper's get_params()>} | None (a bare Booster),
     "fitted": {<the wrapper's fitted attributes, as data>} | None}

Decoding constructs only the classes of ``CLASSES`` (and, for a classifier,
scikit-learn's ``LabelEncoder`` over the stored labels). A wrapper is rebuilt
as ``cls(**params)`` with its booster loaded from the text and the attributes
``fit`` sets put back (number of features, labels, best iteration, ...), so it
predicts and refits like the saved one.

Validation: LightGBM trusts model text. A tree whose child index names a
leaf that does not exist loads and then reads outside its arrays in
``predict``; a ``tree_sizes`` line that disagrees with the trees makes
LightGBM throw inside an OpenMP region, which aborts the process (both
LightGBM 4.7). So before LightGBM sees the text, it is split into the byte
ranges ``tree_sizes`` gives (the ranges LightGBM itself parses), every line is
checked against the grammar LightGBM writes (plain decimal numbers; unknown or
repeated keys refused), and every tree is checked in numpy: array lengths
agree with ``num_leaves``; each internal node's children are later internal
nodes or existing leaves, and every node but the root has exactly one parent
(so the root reaches a tree, without cycles); split features exist; decision
types are known; categorical splits stay inside their bitsets; leaf values
and thresholds are finite. Parameters naming files or machines must be empty,
and thread counts bounded. Linear trees (``linear_tree=True``) carry per-leaf
models in another layout and are refused at save time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any

from persistkit.errors import (
    FormatError,
    PersistkitError,
    UnsupportedTypeError,
)
from persistkit.format import tree
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

__all__ = ["CLASSES", "CODEC", "LightGBMCodec", "audit", "decode", "encode", "validate_model"]

FORMAT = 1
BOOSTER = "lightgbm.basic.Booster"
CLASSES: dict[str, tuple[str, str]] = {
    BOOSTER: ("lightgbm.basic", "Booster"),
    **{
        f"lightgbm.sklearn.{name}": ("lightgbm.sklearn", name)
        for name in ("LGBMModel", "LGBMClassifier", "LGBMRegressor", "LGBMRanker")
    },
}
LABEL_ENCODER = "sklearn.preprocessing._label.LabelEncoder"

_HEADER_KEYS = frozenset(
    name.encode() for name in {"version", "num_class", "num_tree_per_iteration", "label_index", "max_feature_idx", "objective",
     "feature_names", "feature_infos", "tree_sizes", "monotone_constraints", "average_output",
     "linear_tree", "parser_config"}
)  # fmt: skip
_TREE_KEYS = frozenset(
    name.encode() for name in {"num_leaves", "num_cat", "split_feature", "split_gain", "threshold", "decision_type", "left_child",
     "right_child", "leaf_value", "leaf_weight", "leaf_count", "internal_value", "internal_weight",
     "internal_count", "cat_boundaries", "cat_threshold", "is_linear", "shrinkage"}
)  # fmt: skip
_PER_INNER = ("split_feature", "split_gain", "threshold", "decision_type", "left_child", "right_child",
              "internal_value", "internal_weight", "internal_count")  # fmt: skip
_PER_LEAF = ("leaf_value", "leaf_weight", "leaf_count")
# Numbers inside trees must be exactly what LightGBM writes and reads: it parses trees in an OpenMP
# loop and aborts the process on a token it cannot read ("-.5", "1x", "nan"). The grammar is checked
# per byte in numpy (``_decimal_list``): a regular expression for it took ~70 ms on a 100-tree model.
_SP, _MINUS, _PLUS, _DOT, _LOW_E, _UP_E = (ord(ch) for ch in " -+.eE")
_HUGE_EXPONENT = re.compile(rb"[eE]\+?0*(?:3[1-9][0-9]|[4-9][0-9]{2}|[1-9][0-9]{3,})")
_RANGE = rb"(?:none|\[[-+.0-9eEinf]+:[-+.0-9eEinf]+\]|-?[0-9]+(?::-?[0-9]+)*)"
_FEATURE_INFOS = re.compile(_RANGE + rb"(?: " + _RANGE + rb")*")
_HEADER_GRAMMAR = {
    b"objective": re.compile(rb"[a-z_]+(?: [a-z_]+:[-+.0-9eE]+)*"),
    b"monotone_constraints": re.compile(rb"(?:-?[01](?: -?[01])*)?"),
    b"feature_names": re.compile(rb"[^\s=]+(?: [^\s=]+)*"),
    b"average_output": re.compile(rb""),
}
_PARAM = re.compile(r"\[([a-z_0-9]+): (.*)\]")
# LightGBM parameters that name files, directories or machines: a model file has no business setting them
_PATH_PARAMS = frozenset(
    {"data", "valid", "input_model", "output_model", "output_result", "initscore_filename",
     "valid_data_initscores", "forcedsplits_filename", "forcedbins_filename", "machine_list_filename",
     "machines", "parser_config_file", "convert_model", "gpu_device_id_list"}
)  # fmt: skip
_THREAD_PARAMS = ("num_threads", "num_machines")
_MAX_THREADS = 1024


def _fail(source: str, what: str) -> FormatError:
    return FormatError(
        f"{source}: {what}. The LightGBM member is damaged or forged (LightGBM itself would load it and could "
        "read outside its trees or abort the process); restore the bundle from a backup.",
        member=source,
    )


# -- encoding ---------------------------------------------------------------------------


def _refuse_functions(params: Mapping[str, Any], member: str) -> None:
    for key, value in params.items():
        if callable(value) and not isinstance(value, type):
            raise UnsupportedTypeError(
                f"LightGBM model {member!r}: parameter {key} holds a Python function, which cannot be stored "
                "without pickle. Use LightGBM's built-in objective names, or set it to None before saving.",
                member=member,
                field=key,
            )


def _fitted_state(model: Any, member: str) -> dict[str, Any]:
    import numpy as np

    if callable(model._objective):
        raise UnsupportedTypeError(
            f"LightGBM model {member!r} was fitted with a Python objective function, which cannot be stored "
            "without pickle.",
            member=member,
            field="objective",
        )
    state: dict[str, Any] = {
        "n_features_in": int(model._n_features_in),
        "fitted_with_feature_names": bool(model._fitted_with_feature_names),
        "best_iteration": int(model._best_iteration),
        "best_score": {k: dict(v) for k, v in (model._best_score or {}).items()},
        "evals_result": {
            k: {m: list(s) for m, s in v.items()} for k, v in (model._evals_result or {}).items()
        },
        "objective": model._objective,
        "other_params": dict(model._other_params),
        "class_weight": getattr(model, "_class_weight", None),
    }
    classes = getattr(model, "_classes", None)
    if classes is not None:
        labels = np.asarray(classes)
        if labels.dtype.kind == "O":  # labels of mixed Python objects: kept as a list of plain values
            state["classes"] = ["list", labels.tolist()]
        else:
            state["classes"] = ["array", labels]
    return state


def encode(obj: object, *, member: str = "model") -> bytes:
    name = type_name(obj)
    if name not in CLASSES:
        raise UnsupportedTypeError(
            f"{member}: {name} is not one of the LightGBM classes persistkit stores ({', '.join(sorted(CLASSES))})",
            field=member,
        )
    model: Any = obj
    params: dict[str, Any] | None = None
    fitted: dict[str, Any] | None = None
    booster: Any = model
    if name != BOOSTER:
        params = dict(model.get_params(deep=False))
        _refuse_functions(params, member)
        booster = model.booster_ if model.__sklearn_is_fitted__() else None
        if booster is not None:
            fitted = _fitted_state(model, member)
    text: bytes | None = None
    if booster is not None:
        text = booster.model_to_string(num_iteration=-1).encode("utf-8")
        if b"\nis_linear=1\n" in text:
            raise UnsupportedTypeError(
                f"LightGBM model {member!r} has linear trees (linear_tree=True); persistkit cannot validate "
                "their per-leaf models, so it does not store them.",
                member=member,
            )
    try:
        return tree.encode(
            {"format": FORMAT, "class": name, "model": text, "params": params, "fitted": fitted}, root=member
        )
    except UnsupportedTypeError as err:
        raise UnsupportedTypeError(
            f"LightGBM model {member!r}: {err.message}", member=member, field=err.field
        ) from err


def info(obj: object) -> dict[str, object]:
    model: Any = obj
    out: dict[str, object] = {"class": type_name(obj)}
    booster = (
        model if type_name(obj) == BOOSTER else (model.booster_ if model.__sklearn_is_fitted__() else None)
    )
    if booster is not None:
        out["num_trees"] = int(booster.num_trees())
        out["num_features"] = int(booster.num_feature())
    return out


# -- validation -------------------------------------------------------------------------


def _key_values(
    lines: Sequence[bytes], allowed: frozenset[bytes], what: str, source: str
) -> dict[bytes, bytes]:
    if sum(line.count(b"=") > 1 for line in lines):
        raise _fail(source, f"{what} has a line with two '=' (LightGBM aborts on it)")
    # one pass at C speed; the checks below find unknown and repeated keys
    out = {key: value for key, _, value in map(bytes.partition, lines, repeat(b"="))}
    if len(out) != len(lines) or not out.keys() <= allowed:
        seen: set[bytes] = set()
        for line in lines:
            key = line.split(b"=", 1)[0]
            if key not in allowed:
                raise _fail(source, f"{what} has an unknown line {line[:40]!r}")
            if key in seen:
                raise _fail(source, f"{what} repeats {key.decode('ascii', 'replace')}")
            seen.add(key)
    return out


def _int(
    kv: Mapping[bytes, bytes], key: str, source: str, what: str, *, low: int = 0, high: int = 2**31 - 2
) -> int:
    raw = kv.get(key.encode(), b"")
    digits = raw[1:] if raw.startswith(b"-") else raw
    if not (digits.isdigit() and len(digits) <= 10 and low <= int(raw) <= high):
        raise _fail(source, f"{what}: {key} is {raw[:20]!r}, not an integer in [{low}, {high}]")
    return int(raw)


def _is_digit(c: Any) -> Any:
    return (c >= ord("0")) & (c <= ord("9"))


def _decimal_list(joined: bytes, *, floats: bool) -> bool:
    """True when ``joined`` is tokens ``-?D+`` (floats: ``-?D+(.D+)?([eE][-+]?D+)?``) separated by single
    spaces: every byte is checked against its neighbours, then dots and exponents per token."""
    import numpy as np

    if not joined:
        return True
    c = np.frombuffer(joined, dtype=np.uint8)
    pad = np.array([_SP], dtype=np.uint8)
    prev, nxt = np.concatenate((pad, c[:-1])), np.concatenate((c[1:], pad))
    digit, space, minus = _is_digit(c), c == _SP, c == _MINUS
    next_digit = _is_digit(nxt)
    allowed = digit | space | minus
    dot = plus = e = prev_e = None
    if floats:
        dot, plus = c == _DOT, c == _PLUS
        e, prev_e = (c == _LOW_E) | (c == _UP_E), (prev == _LOW_E) | (prev == _UP_E)
        allowed |= dot | e | plus
    if not allowed.all() or not digit[-1] or not (digit[0] or minus[0]):
        return False
    if (space & ~(next_digit | (nxt == _MINUS))).any():  # a space starts a token
        return False
    minus_ok = (prev == _SP) | prev_e if floats else prev == _SP
    if (minus & ~(minus_ok & next_digit)).any():
        return False
    if not floats:
        return True
    prev_digit = _is_digit(prev)
    if (dot & ~(prev_digit & next_digit)).any() or (plus & ~(prev_e & next_digit)).any():
        return False
    if (e & ~(prev_digit & (next_digit | (nxt == _MINUS) | (nxt == _PLUS)))).any():
        return False
    # per token (numbered by the spaces before it): at most one dot and one exponent, the dot first
    assert dot is not None and e is not None
    spaces = np.flatnonzero(space)
    dots, exps = np.flatnonzero(dot), np.flatnonzero(e)
    dot_token, exp_token = np.searchsorted(spaces, dots), np.searchsorted(spaces, exps)
    if (np.diff(dot_token) == 0).any() or (np.diff(exp_token) == 0).any():
        return False
    dot_at = np.full(len(spaces) + 1, -1)
    dot_at[dot_token] = dots
    exp_at = np.full(len(spaces) + 1, len(c))
    exp_at[exp_token] = exps
    return bool((dot_at < exp_at).all())


def _counts(values: Sequence[bytes]) -> Any:
    import numpy as np

    return np.array([v.count(b" ") + 1 if v else 0 for v in values], dtype=np.int64)


def _ints(values: Sequence[bytes], key: str, source: str) -> Any:
    """All ``values`` (space-separated decimal integers) as one int64 array, parsed at C speed."""
    import numpy as np

    joined = b" ".join(v for v in values if v)
    try:
        if not _decimal_list(joined, floats=False):
            raise ValueError("not decimal integers")
        parsed = np.fromstring(joined, dtype=np.int64, sep=" ")
    except ValueError as err:
        raise _fail(source, f"a tree's {key} holds something other than decimal integers") from err
    if len(parsed) != (joined.count(b" ") + 1 if joined else 0):
        raise _fail(source, f"a tree's {key} holds something other than decimal integers")
    return parsed


def _check_floats(values: Sequence[bytes], key: str, source: str) -> None:
    joined = b" ".join(values)
    if not _decimal_list(joined, floats=True) or _HUGE_EXPONENT.search(joined):
        raise _fail(source, f"a tree's {key} holds something other than finite decimal numbers")


def _check_trees(trees: list[dict[bytes, bytes]], n_features: int, source: str) -> None:
    import numpy as np

    leaves = np.array([_int(t, "num_leaves", source, "a tree", low=1) for t in trees], dtype=np.int64)
    if any(t.get(b"is_linear", b"0") != b"0" for t in trees):
        raise _fail(source, "a tree is linear (linear_tree), which persistkit does not load")
    inner = leaves - 1
    columns = {
        key: [t.get(key.encode(), b"") for t in trees] for key in (*_PER_INNER, *_PER_LEAF, "shrinkage")
    }
    for key in (*_PER_INNER, *_PER_LEAF):
        values = columns[key]
        counts = _counts(values)
        wanted = inner if key in _PER_INNER else leaves
        # a single-leaf tree writes some of its arrays empty
        ok = (counts == wanted) | ((leaves == 1) & (counts == 0) & (key != "leaf_value"))
        if not ok.all():
            bad = int(np.flatnonzero(~ok)[0])
            raise _fail(source, f"tree {bad}: {key} has {counts[bad]} entries for {leaves[bad]} leaves")
    # LightGBM parses trees in an OpenMP loop, where any parse error aborts the process: every
    # value of every tree is checked against the number grammar, not only the ones used below
    for key in ("threshold", "leaf_value", "shrinkage", "split_gain", "leaf_weight", "internal_value",
                "internal_weight"):  # fmt: skip
        _check_floats(columns[key], key, source)
    for key in ("leaf_count", "internal_count"):
        _ints(columns[key], key, source)
    if not all(columns["shrinkage"]) or (_counts(columns["shrinkage"]) != 1).any():
        raise _fail(source, "a tree has no single shrinkage")
    left, right = (
        _ints(columns["left_child"], "left_child", source),
        _ints(columns["right_child"], "right_child", source),
    )
    feature = _ints(columns["split_feature"], "split_feature", source)
    decision = _ints(columns["decision_type"], "decision_type", source)
    tree_of = np.repeat(np.arange(len(trees)), inner)
    node = np.arange(len(left)) - np.repeat(np.cumsum(inner) - inner, inner)
    n_inner, n_leaves = inner[tree_of], leaves[tree_of]
    children = np.concatenate([left, right])
    parent = np.concatenate([node, node])
    limit_inner, limit_leaf = np.concatenate([n_inner, n_inner]), np.concatenate([n_leaves, n_leaves])
    is_inner = children >= 0
    leaf_index = ~children
    if not (
        ((children > parent) & (children < limit_inner))[is_inner].all()
        and ((leaf_index >= 0) & (leaf_index < limit_leaf))[~is_inner].all()
    ):
        raise _fail(source, "a tree node points at a child outside its tree")
    owner = np.concatenate([tree_of, tree_of])
    inner_ids = (np.cumsum(inner) - inner)[owner[is_inner]] + children[is_inner]
    leaf_ids = (np.cumsum(leaves) - leaves)[owner[~is_inner]] + leaf_index[~is_inner]
    if (np.bincount(inner_ids) > 1).any() or (np.bincount(leaf_ids) > 1).any():
        raise _fail(source, "a tree node has two parents")
    if len(leaf_ids) != int(leaves[leaves > 1].sum()) or len(inner_ids) != int((inner[inner > 0] - 1).sum()):
        raise _fail(source, "a tree has nodes or leaves that no node points at")
    if not ((feature >= 0) & (feature < n_features)).all():
        raise _fail(source, "a tree splits on a feature the model does not have")
    if not (((decision >= 0) & (decision < 16)) & (((decision >> 2) & 3) != 3)).all():
        raise _fail(source, "a tree has an unknown decision type")
    categorical = (decision & 1) == 1
    with_categories = set(tree_of[categorical].tolist())
    for i, t in enumerate(trees):
        num_cat = _int(t, "num_cat", source, f"tree {i}", high=1 << 24)
        if num_cat or i in with_categories:
            thresholds = np.array(t[b"threshold"].split(), dtype=np.float64)[categorical[tree_of == i]]
            _check_categories(t, num_cat, thresholds, source, i)


def _check_categories(t: Mapping[bytes, bytes], num_cat: int, thresholds: Any, source: str, i: int) -> None:
    import numpy as np

    bounds = _ints([t.get(b"cat_boundaries", b"")], "cat_boundaries", source)
    bits = _ints([t.get(b"cat_threshold", b"")], "cat_threshold", source)
    if len(bounds) != num_cat + 1 or bounds[0] != 0 or (np.diff(bounds) < 0).any() or bounds[-1] != len(bits):
        raise _fail(source, f"tree {i}: cat_boundaries do not split cat_threshold into {num_cat} bitsets")
    if ((bits < 0) | (bits >= 2**32)).any():
        raise _fail(source, f"tree {i}: a category bitset word is out of range")
    if not ((thresholds == np.floor(thresholds)) & (thresholds >= 0) & (thresholds < num_cat)).all():
        raise _fail(source, f"tree {i}: a categorical split points outside its bitsets")


def validate_model(text: bytes, *, source: str = "LightGBM member") -> None:
    """Check LightGBM model text as the module docstring says; FormatError when it fails."""
    first = text.find(b"\nTree=")
    if not text.startswith(b"tree\n") or first < 0:
        header_end = len(text)
        if not text.startswith(b"tree\n"):
            raise _fail(source, "the model text does not start with 'tree'")
    else:
        header_end = first
    header = _key_values(
        [line for line in text[5:header_end].split(b"\n") if line], _HEADER_KEYS, "the model header", source
    )
    version = header.get(b"version", b"")
    if version not in (b"v2", b"v3", b"v4"):
        raise _fail(source, f"model version {version!r} is not one this persistkit checks (v2-v4)")
    num_class = _int(header, "num_class", source, "the header", low=1, high=1 << 20)
    per_iteration = _int(header, "num_tree_per_iteration", source, "the header", low=1, high=1 << 20)
    if per_iteration not in (1, num_class):
        raise _fail(source, "num_tree_per_iteration is neither 1 nor num_class")
    _int(header, "label_index", source, "the header")
    n_features = _int(header, "max_feature_idx", source, "the header", low=-1) + 1
    for key in ("feature_names", "feature_infos"):
        if len(header.get(key.encode(), b"").split(b" ")) != n_features:
            raise _fail(source, f"{key} does not list {n_features} features")
    if not _FEATURE_INFOS.fullmatch(header.get(b"feature_infos", b"")):
        raise _fail(source, "feature_infos holds something other than ranges and category lists")
    for name, grammar in _HEADER_GRAMMAR.items():
        if name in header and not grammar.fullmatch(header[name]):
            raise _fail(source, f"header line {name.decode()} holds {header[name][:40]!r}")
    if header.get(b"linear_tree", b"0") not in (b"", b"0"):
        raise _fail(source, "the model has linear trees, which persistkit does not load")
    sizes_raw = header.get(b"tree_sizes", b"")
    if first < 0:
        if sizes_raw:
            raise _fail(source, "tree_sizes lists trees the model does not have")
        trees_end = text.find(b"\nend of trees\n")
        blocks: list[bytes] = []
    else:
        sizes = _ints([sizes_raw], "tree_sizes", source).tolist() if sizes_raw else []
        if not sizes:
            raise _fail(source, "tree_sizes is missing")
        start = first + 1
        blocks = []
        for i, size in enumerate(sizes):
            block = text[start : start + size]
            if size <= 0 or len(block) != size or not block.startswith(b"Tree=%d\n" % i):
                raise _fail(source, f"tree_sizes does not match tree {i}")
            blocks.append(block)
            start += size
        trees_end = start - 1
        if text[start : start + 13] != b"end of trees\n":
            raise _fail(source, "the trees are not followed by 'end of trees'")
    if trees_end < 0:
        raise _fail(source, "the model text has no 'end of trees'")
    if len(blocks) % per_iteration:
        raise _fail(source, f"{len(blocks)} trees do not make whole iterations of {per_iteration}")
    trees: list[dict[bytes, bytes]] = []
    for i, block in enumerate(blocks):
        body, _, rest = block.partition(b"\n\n")
        if rest.strip(b"\n"):
            raise _fail(source, f"tree {i} has lines after its blank line")
        trees.append(_key_values(body.split(b"\n")[1:], _TREE_KEYS, f"tree {i}", source))
    if trees:
        _check_trees(trees, n_features, source)
    _check_tail(text[trees_end + 1 :], source)


def _check_tail(tail: bytes, source: str) -> None:
    """The parameters LightGBM keeps with the model, and the pandas categories its Python package reads."""
    try:
        lines = tail.decode("utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise _fail(source, "the model's parameters are not UTF-8") from err
    in_params = False
    for line in lines:
        if line == "parameters:":
            in_params = True
        elif line == "end of parameters":
            in_params = False
        elif in_params and line:
            match = _PARAM.fullmatch(line)
            if match is None:
                raise _fail(source, f"unexpected parameter line {line[:40]!r}")
            key, value = match.groups()
            if key in _PATH_PARAMS and value:
                raise _fail(source, f"parameter {key} names a file or machine ({value[:40]!r})")
            if key in _THREAD_PARAMS and not (
                re.fullmatch(r"-?[0-9]{1,5}", value) and abs(int(value)) <= _MAX_THREADS
            ):
                raise _fail(source, f"parameter {key} is {value[:20]!r}")
        elif line.startswith("pandas_categorical:"):
            try:
                cats = json.loads(line[len("pandas_categorical:") :])
            except ValueError as err:
                raise _fail(source, "pandas_categorical is not JSON") from err
            if cats is not None and not (
                isinstance(cats, list)
                and all(
                    isinstance(c, list) and all(type(v) in (str, int, float, bool) for v in c) for c in cats
                )
            ):
                raise _fail(source, "pandas_categorical is not a list of category lists")


# -- decoding ---------------------------------------------------------------------------


def _outer(payload: Payload, source: str) -> dict[str, Any]:
    outer = decode_member(payload, source, codec="lightgbm", newest=FORMAT)
    if not (
        isinstance(outer, dict)
        and outer.get("format") == FORMAT
        and type(outer.get("class")) is str
        and (outer.get("model") is None or type(outer.get("model")) is bytes)
        and (outer.get("params") is None or isinstance(outer.get("params"), dict))
        and (outer.get("fitted") is None or isinstance(outer.get("fitted"), dict))
    ):
        raise _fail(source, "not a persistkit LightGBM member (format 1)")
    is_booster = outer["class"] == BOOSTER
    if is_booster and (outer["model"] is None or outer["params"] is not None or outer["fitted"] is not None):
        raise _fail(source, "a Booster member needs a model and no params")
    if not is_booster and (outer["params"] is None or (outer["model"] is None) != (outer["fitted"] is None)):
        raise _fail(source, "a wrapper member needs its params, and its fitted state with its model")
    return outer


def audit(payload: Payload, *, source: str = "LightGBM member") -> list[str]:
    """The classes decoding would construct, read without constructing any."""
    outer = _outer(payload, source)
    found = [outer["class"]]
    if outer["fitted"] is not None and outer["fitted"].get("classes") is not None:
        found.append(LABEL_ENCODER)
    return found


def _restore(model: Any, booster: Any, fitted: Mapping[str, Any], source: str) -> None:
    """Set what ``LGBMModel.fit`` sets (lightgbm 4.x ``sklearn.py``): the wrappers have no public way to
    take a fitted booster, so these are their own attribute names, each checked against the booster."""
    import numpy as np

    try:
        n_features_in = int(fitted["n_features_in"])
        if n_features_in != booster.num_feature():
            raise _fail(source, "the wrapper's number of features disagrees with its booster")
        model._Booster = booster
        model._n_features = booster.num_feature()
        model._n_features_in = n_features_in
        model._fitted_with_feature_names = bool(fitted["fitted_with_feature_names"])
        model._best_iteration = int(fitted["best_iteration"])
        model._best_score = fitted["best_score"]
        model._evals_result = fitted["evals_result"]
        objective = fitted["objective"]
        if objective is not None and type(objective) is not str:
            raise _fail(source, "the fitted objective is not a name")
        model._objective = objective
        model._other_params = dict(fitted["other_params"])
        if fitted.get("class_weight") is not None:
            model._class_weight = fitted["class_weight"]
        classes = fitted.get("classes")
        if classes is not None:
            from sklearn.preprocessing import LabelEncoder

            kind, values = classes
            if kind == "list":
                labels = np.empty(len(values), dtype=object)
                labels[:] = values
            elif kind == "array" and isinstance(values, np.ndarray) and values.ndim == 1:
                labels = values
            else:
                raise _fail(source, "the classifier's labels are malformed")
            models = booster.num_model_per_iteration()
            if len(labels) != (2 if models == 1 else models):
                raise _fail(source, "the classifier's labels disagree with its booster's classes")
            encoder = LabelEncoder()
            encoder.classes_ = labels
            model._le = encoder
            model._classes = labels
            model._n_classes = len(labels)
            model._class_map = {label: i for i, label in enumerate(labels.tolist())}
        model.fitted_ = True
    except PersistkitError:
        raise
    except Exception as err:  # KeyError, TypeError, ValueError...: a fitted state that is not what fit() sets
        raise _fail(source, f"the wrapper's fitted state is malformed ({type(err).__name__}: {err})") from err


def decode(payload: Payload, *, trusted: object = (), source: str = "LightGBM member") -> object:
    """Rebuild the booster or wrapper; every class it constructs is fixed here, so ``trusted`` is unused."""
    del trusted
    outer = _outer(payload, source)
    name = outer["class"]
    cls = fixed_class(name, CLASSES, source)
    text: bytes | None = outer["model"]
    if text is not None:
        validate_model(text, source=source)
    import lightgbm

    try:
        booster = lightgbm.Booster(model_str=text.decode("utf-8")) if text is not None else None
        if name == BOOSTER:
            return booster
        params: dict[str, Any] = outer["params"]
        for key in params:
            if type(key) is not str or not key.isidentifier() or key.startswith("_"):
                raise _fail(source, f"refusing wrapper parameter name {key!r}")
        jobs = params.get("n_jobs")
        if jobs is not None and not (type(jobs) is int and abs(jobs) <= _MAX_THREADS):
            raise _fail(source, f"n_jobs is {jobs!r}")
        model = cls(**params)
    except PersistkitError:
        raise
    except Exception as err:  # LightGBMError, ValueError (its loaded-parameter JSON), TypeError...
        raise _fail(source, f"LightGBM refused it ({type(err).__name__}: {err})") from err
    if booster is not None:
        _restore(model, booster, outer["fitted"], source)
    return model


class LightGBMCodec(Codec):
    """``lightgbm.Booster`` and the scikit-learn wrappers of ``CLASSES`` (exact types only)."""

    name = "lightgbm"
    packages = ("lightgbm", "numpy")
    extra = "lightgbm"
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


CODEC = LightGBMCodec()
