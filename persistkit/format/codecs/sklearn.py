"""scikit-learn estimators through skops, with a trusted-type list pinned in code.

skops audits a file's types before constructing anything. The types persistkit
trusts are fixed here, never read from the file being loaded (MLflow PR #25686
read them from the model's own MLmodel file, so an attacker controlled them):

* every public estimator of the installed scikit-learn
  (``sklearn.utils.all_estimators()``, plus the experimental ones), computed
  deterministically from the library itself;
* ``_HELPER_TYPES`` below: the private and third-party types fitted estimators
  hold (trees, losses, kernels, splitters, scorers, numpy/scipy types, and the
  few plain functions scikit-learn uses as parameter defaults). It was derived
  by fitting every estimator of ``all_estimators()`` on tiny data plus the
  common parameter variants, and collecting ``skops.io.get_untrusted_types``
  (see ``tests/format/codecs/test_sklearn.py``, which re-checks it).

Callers extend the list with ``trusted=[...]``; anything else raises
``UntrustedTypeError`` listing the types. ``trusted=True`` means "the pinned
list", never "anything": skops removed that option for good reason
(CVE-2024-37065).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from persistkit.errors import FormatError, UntrustedTypeError
from persistkit.format.codecs.base import (
    Codec,
    DecodeContext,
    EncodeContext,
    Encoded,
    Payload,
    derives_from,
    type_family,
    type_name,
)
from persistkit.zipdamage import ZIP_DAMAGE

__all__ = ["CODEC", "SklearnCodec", "audit", "decode", "default_trusted_types", "encode"]

_HELPER_TYPES: tuple[str, ...] = (
    # builtins / stdlib / numpy / scipy
    "builtins.slice",
    "collections.OrderedDict",
    "collections.defaultdict",
    "functools.partial",  # skops audits the wrapped function separately
    "numpy.dtype",
    "numpy.ndarray",
    "numpy.float64",
    "numpy.float32",
    "numpy.int64",
    "numpy.int32",
    "numpy.bool_",
    "numpy.mean",
    "numpy.median",
    "numpy.random.mtrand.RandomState",
    "numpy.random._mt19937.MT19937",
    "numpy.random._generator.Generator",
    "numpy.random._pcg64.PCG64",
    "scipy.sparse._csr.csr_matrix",
    "scipy.sparse._csc.csc_matrix",
    "scipy.sparse._coo.coo_matrix",
    "scipy.sparse._csr.csr_array",
    "scipy.sparse._csc.csc_array",
    "scipy.interpolate._bsplines.BSpline",
    "scipy._lib.array_api_compat.numpy._aliases.asarray",
    # trees, neighbours, optimizers, calibration, clustering internals
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.calibration._TemperatureScaling",
    "sklearn.cluster._bisect_k_means._BisectingTree",
    "sklearn.cluster._kmeans._kmeans_single_lloyd",
    "sklearn.cluster._kmeans._kmeans_single_elkan",
    "sklearn.gaussian_process._gpc._BinaryGaussianProcessClassifierLaplace",
    "sklearn.impute._iterative._ImputerTriplet",
    "sklearn.multiclass._ConstantPredictor",
    "sklearn.utils._bunch.Bunch",
    "sklearn.utils.validation.check_array",
    "sklearn.feature_selection._univariate_selection.f_classif",
    "sklearn.feature_selection._univariate_selection.f_regression",
    "sklearn.feature_selection._univariate_selection.chi2",
    # experimental estimators all_estimators() lists only once enabled
    "sklearn.model_selection._search_successive_halving.HalvingGridSearchCV",
    "sklearn.model_selection._search_successive_halving.HalvingRandomSearchCV",
    "sklearn.impute._iterative.IterativeImputer",
    # losses and links
    *(
        f"sklearn._loss.loss.{name}"
        for name in (
            "AbsoluteError", "ExponentialLoss", "HalfBinomialLoss", "HalfGammaLoss", "HalfMultinomialLoss",
            "HalfPoissonLoss", "HalfSquaredError", "HalfTweedieLoss", "HalfTweedieLossIdentity", "HuberLoss",
            "PinballLoss",
        )
    ),
    *(
        f"sklearn._loss.link.{name}"
        for name in ("HalfLogitLink", "IdentityLink", "LogLink", "LogitLink", "MultinomialLogit", "Interval")
    ),
    # distance metrics (not PyFuncDistance: that one wraps an arbitrary Python function)
    *(
        f"sklearn.metrics._dist_metrics.{name}Distance{bits}"
        for name in (
            "BrayCurtis", "Canberra", "Chebyshev", "Dice", "Euclidean", "Hamming", "Haversine", "Jaccard",
            "Mahalanobis", "Manhattan", "Matching", "Minkowski", "RogersTanimoto", "RussellRao", "SEuclidean",
            "SokalMichener", "SokalSneath",
        )
        for bits in (32, 64)
    ),
    # Gaussian-process kernels
    *(
        f"sklearn.gaussian_process.kernels.{name}"
        for name in (
            "CompoundKernel", "ConstantKernel", "DotProduct", "ExpSineSquared", "Exponentiation", "Matern",
            "PairwiseKernel", "Product", "RBF", "RationalQuadratic", "Sum", "WhiteKernel", "Hyperparameter",
        )
    ),
    # cross-validation splitters
    *(
        f"sklearn.model_selection._split.{name}"
        for name in (
            "KFold", "GroupKFold", "StratifiedKFold", "StratifiedGroupKFold", "ShuffleSplit", "GroupShuffleSplit",
            "StratifiedShuffleSplit", "RepeatedKFold", "RepeatedStratifiedKFold", "TimeSeriesSplit", "LeaveOneOut",
            "LeavePOut", "LeaveOneGroupOut", "LeavePGroupsOut", "PredefinedSplit", "_CVIterableWrapper",
        )
    ),
    # scorers and the metric functions behind sklearn.metrics.get_scorer_names()
    "sklearn.metrics._scorer._PassthroughScorer",
    "sklearn.metrics._scorer._CurveScorer",
    "sklearn.utils._metadata_requests.MetadataRequest",
    "sklearn.utils._metadata_requests.MethodMetadataRequest",
    "sklearn.metrics._scorer._Scorer",
    "sklearn.metrics._scorer._MultimetricScorer",
    "sklearn.metrics._scorer.negative_likelihood_ratio",
    "sklearn.metrics._scorer.positive_likelihood_ratio",
    *(
        f"sklearn.metrics._classification.{name}"
        for name in (
            "accuracy_score", "balanced_accuracy_score", "brier_score_loss", "d2_brier_score",
            "d2_log_loss_score", "f1_score", "jaccard_score", "log_loss", "matthews_corrcoef", "precision_score",
            "recall_score",
        )
    ),
    *(
        f"sklearn.metrics._ranking.{name}"
        for name in ("average_precision_score", "roc_auc_score", "top_k_accuracy_score")
    ),
    *(
        f"sklearn.metrics._regression.{name}"
        for name in (
            "d2_absolute_error_score", "explained_variance_score", "max_error", "mean_absolute_error",
            "mean_absolute_percentage_error", "mean_gamma_deviance", "mean_poisson_deviance",
            "mean_squared_error", "mean_squared_log_error", "median_absolute_error", "r2_score",
            "root_mean_squared_error", "root_mean_squared_log_error",
        )
    ),
    *(
        f"sklearn.metrics.cluster._supervised.{name}"
        for name in (
            "adjusted_mutual_info_score", "adjusted_rand_score", "completeness_score", "fowlkes_mallows_score",
            "homogeneity_score", "mutual_info_score", "normalized_mutual_info_score", "rand_score",
            "v_measure_score",
        )
    ),
)  # fmt: skip


@functools.cache
def default_trusted_types() -> frozenset[str]:
    """Every public estimator class of the installed scikit-learn, plus ``_HELPER_TYPES``."""
    from sklearn.utils import all_estimators

    names = {f"{cls.__module__}.{cls.__qualname__}" for _, cls in all_estimators()}
    return frozenset(names | set(_HELPER_TYPES))


def encode(obj: object) -> bytes:
    import skops.io as sio

    try:
        data: bytes = sio.dumps(obj)
    except Exception as err:  # skops raises UnsupportedTypeException, TypeError, ...
        from persistkit.errors import UnsupportedTypeError

        raise UnsupportedTypeError(
            f"skops cannot store this {type(obj).__module__}.{type(obj).__qualname__} "
            f"({type(err).__name__}: {err}); persistkit stores scikit-learn models only through skops, "
            "never pickle.",
        ) from err
    return data


def _untrusted(payload: bytes, source: str) -> list[str]:
    """The types skops would refuse without ``trusted=`` (nothing is imported or constructed)."""
    import skops.io as sio

    try:
        return sorted(sio.get_untrusted_types(data=payload))
    except Exception as err:  # skops raises several types for damaged input
        raise FormatError(
            f"{source} does not parse as a skops file ({type(err).__name__}: {err}). "
            "It is damaged or not a scikit-learn member; restore the bundle from a backup.",
            member=source,
        ) from err


def _named(node: object, out: set[str]) -> None:
    if isinstance(node, dict):
        module, cls = node.get("__module__"), node.get("__class__")
        name = f"{module}.{cls}"
        constructs = type(module) is str and type(cls) is str and node.get("__loader__") not in _DATA_NODES
        if constructs and name not in _PLAIN_TYPES:
            out.add(name)
        for value in node.values():
            _named(value, out)
    elif isinstance(node, list):
        for value in node:
            _named(value, out)


# A damaged skops zip, or a schema.json nested too deep to parse.
_SCHEMA_DAMAGE: tuple[type[Exception], ...] = (*ZIP_DAMAGE, RecursionError)
_PLAIN_TYPES = frozenset(
    f"builtins.{t}"
    for t in ("str", "int", "float", "bool", "bytes", "complex", "list", "dict", "tuple", "NoneType")
)
_DATA_NODES = frozenset(
    {"DictNode", "ListNode", "TupleNode", "SetNode", "JsonNode", "NdArrayNode", "BytesNode"}
)


def audit(payload: bytes | bytearray | memoryview, *, source: str = "scikit-learn member") -> list[str]:
    """Every type loading this file would import and construct, read from its schema without loading it."""
    import io
    import json
    import zipfile

    data = bytes(payload)
    untrusted = _untrusted(data, source)
    names: set[str] = set(untrusted)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            info = archive.getinfo("schema.json")
            if info.file_size > 64 * 1024 * 1024:
                raise ValueError("schema.json is implausibly large")
            _named(json.loads(archive.read(info)), names)
    except _SCHEMA_DAMAGE as err:
        raise FormatError(
            f"{source} does not parse as a skops file ({type(err).__name__}: {err}). "
            "It is damaged or not a scikit-learn member; restore the bundle from a backup.",
            member=source,
        ) from err
    return sorted(names)


def decode(
    payload: bytes | bytearray | memoryview,
    *,
    trusted: Sequence[str] | bool = (),
    source: str = "scikit-learn member",
) -> object:
    """Rebuild an estimator; types outside the pinned list plus ``trusted`` raise UntrustedTypeError."""
    import skops.io as sio

    extra = () if isinstance(trusted, bool) else tuple(trusted)
    allowed = default_trusted_types() | set(extra)
    found = _untrusted(bytes(payload), source)
    untrusted = sorted(t for t in found if t not in allowed)
    if untrusted:
        raise UntrustedTypeError(
            f"{source} would construct types persistkit does not trust: {', '.join(untrusted)}. "
            "Loading them could run code from the file. If you trust where it came from, pass "
            f"trusted={untrusted!r}.",
            types=untrusted,
            member=source,
        )
    try:
        return sio.loads(bytes(payload), trusted=found)
    except Exception as err:
        raise FormatError(
            f"{source} could not be rebuilt by skops ({type(err).__name__}: {err}). It may need a newer "
            "scikit-learn or skops; the recorded versions are in the bundle manifest.",
            member=source,
        ) from err


class SklearnCodec(Codec):
    """Any scikit-learn object (and user estimators deriving from ``BaseEstimator``) through skops."""

    name = "sklearn"
    packages = ("scikit-learn", "skops", "numpy")
    extra = "sklearn"
    constructs_types = True
    embeds_in_values = True

    def handles(self, obj: object) -> bool:
        return type_family(obj) == "sklearn" or derives_from(obj, "sklearn.base.BaseEstimator")

    def encode(self, obj: object, ctx: EncodeContext) -> Encoded:
        return Encoded(self.name, encode(obj), info={"class": type_name(obj)})

    def decode(self, payload: Payload, ctx: DecodeContext) -> object:
        return decode(payload, trusted=ctx.trusted, source=ctx.source)

    def audit(self, payload: Payload, ctx: DecodeContext) -> list[str]:
        return audit(payload, source=ctx.source)


CODEC = SklearnCodec()
