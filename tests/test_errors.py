from __future__ import annotations

import pickle

import pytest

import persistkit.errors as errors
from persistkit.errors import (
    IntegrityError,
    LockedError,
    PersistIOError,
    PersistkitError,
    UntrustedTypeError,
)

ALL = [getattr(errors, name) for name in errors.__all__]


def test_every_error_derives_from_the_root():
    assert all(issubclass(cls, PersistkitError) for cls in ALL)
    assert len(ALL) == 14


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (errors.IntegrityError, ValueError),
        (errors.FormatError, ValueError),
        (errors.NewerFormatError, errors.FormatError),
        (errors.WrongKeyError, ValueError),
        (errors.UntrustedTypeError, TypeError),
        (errors.UnsupportedTypeError, TypeError),
        (errors.UnsafeArchiveError, ValueError),
        (errors.LockedError, RuntimeError),
        (errors.NotFoundError, KeyError),
        (errors.NoVersionError, FileNotFoundError),
        (errors.PersistIOError, OSError),
    ],
)
def test_builtin_mixins(cls, builtin):
    assert issubclass(cls, builtin)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_round_trips_through_pickle_with_attributes(cls):
    err = cls(
        "it broke: do X", path="/a/b", **({} if cls in (LockedError, PersistIOError) else {"member": "m"})
    )
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert str(back) == "it broke: do X"
    assert back.path == "/a/b"


def test_specific_attributes_survive_pickle():
    e = pickle.loads(pickle.dumps(PersistIOError("x", errno=28, path="/p", operation="write")))
    assert (e.errno, e.operation, e.path) == (28, "write", "/p")
    e2 = pickle.loads(pickle.dumps(LockedError("x", pid=42, path="/d")))
    assert e2.pid == 42
    e3 = pickle.loads(pickle.dumps(UntrustedTypeError("x", types=["os.system"], member="m")))
    assert e3.types == ["os.system"] and e3.member == "m"
    e4 = pickle.loads(pickle.dumps(IntegrityError("x", member="policy", field="weights")))
    assert (e4.member, e4.field) == ("policy", "weights")


def test_docstring_draws_the_tree():
    doc = errors.__doc__ or ""
    for cls in ALL:
        assert cls.__name__ in doc
