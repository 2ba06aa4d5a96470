"""scikit-learn estimators through skops, with a trusted-type list pinned in code.

skops audits a file's types before constructing anything. The list of types
persistkit trusts is computed here from scikit-learn's public estimators
(``sklearn.utils.all_estimators()``) plus the numpy/scipy/builtin types they
hold; it is never read from the file being loaded. Callers can extend it with
``trusted=[...]``; anything else raises ``UntrustedTypeError`` listing the types.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from persistkit.errors import FormatError, UntrustedTypeError

__all__ = ["decode", "default_trusted_types", "encode"]

# Types fitted estimators routinely hold, besides the estimators themselves.
_DATA_TYPES = (
    "builtins.slice",
    "numpy.dtype",
    "numpy.ndarray",
    "numpy.float64",
    "numpy.float32",
    "numpy.int64",
    "numpy.int32",
    "numpy.bool_",
    "numpy.random.mtrand.RandomState",
    "numpy.random._mt19937.MT19937",
    "numpy.random._generator.Generator",
    "numpy.random._pcg64.PCG64",
    "scipy.sparse._csr.csr_matrix",
    "scipy.sparse._csc.csc_matrix",
    "scipy.sparse._csr.csr_array",
    "collections.OrderedDict",
    "collections.defaultdict",
)


@functools.cache
def default_trusted_types() -> frozenset[str]:
    """Every public estimator class of the installed scikit-learn, plus the data types above."""
    from sklearn.utils import all_estimators

    names = {f"{cls.__module__}.{cls.__qualname__}" for _, cls in all_estimators()}
    # Loss, tree and splitter helpers that fitted estimators carry.
    names |= {
        "sklearn._loss.loss.HalfBinomialLoss",
        "sklearn._loss.loss.HalfMultinomialLoss",
        "sklearn._loss.loss.HalfSquaredError",
        "sklearn._loss.link.LogitLink",
        "sklearn._loss.link.IdentityLink",
        "sklearn._loss.link.MultinomialLogit",
        "sklearn.tree._tree.Tree",
        "sklearn.linear_model._stochastic_gradient.SGDClassifier",
        "sklearn.utils._bunch.Bunch",
    }
    return frozenset(names | set(_DATA_TYPES))


def encode(obj: object) -> bytes:
    import skops.io as sio

    data: bytes = sio.dumps(obj)
    return data


def decode(payload: bytes, *, trusted: Sequence[str] | bool = ()) -> object:
    import skops.io as sio

    if trusted is True:
        raise UntrustedTypeError(
            "trusted=True is not accepted for scikit-learn members (skops removed it for safety); "
            "pass the list of type names to trust."
        )
    allowed = default_trusted_types() | set(trusted or ())
    try:
        found = sio.get_untrusted_types(data=payload)
    except Exception as err:  # skops raises several types for damaged input
        raise FormatError(f"scikit-learn member does not parse as a skops file ({err}).") from err
    untrusted = sorted(t for t in found if t not in allowed)
    if untrusted:
        raise UntrustedTypeError(
            f"scikit-learn member needs types persistkit does not trust: {untrusted}. If you trust this file, "
            "pass trusted=[...] with these names.",
            types=untrusted,
        )
    try:
        return sio.loads(payload, trusted=sorted(t for t in found))
    except Exception as err:
        raise FormatError(f"scikit-learn member could not be rebuilt ({type(err).__name__}: {err}).") from err
