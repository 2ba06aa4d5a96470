"""``roundtrip``: save an object through persistkit, load it back, assert it is the same.

Three routes, each the real public path a user's data takes:

* ``via="bundle"``: ``save_bundle`` / ``load_bundle`` (models and arrays);
* ``via="state"``: a ``StateStore`` checkpoint. A Persistent component (with
  ``state_dict``/``load_state_dict``) is loaded into a fresh instance made by
  ``factory`` (default: its class called with no arguments), so a field that
  ``state_dict`` forgets shows up as a difference;
* ``via="envelope"``: the tree codec in a sealed envelope file.

A Persistent object (``state_dict``/``load_state_dict``, and not a model a bundle
codec stores as such: torch modules, sklearn estimators and SB3 models are) takes
the ``state`` route when ``via`` is not given; through ``bundle`` or ``envelope``
its ``state_dict()`` is stored and loaded into a fresh instance, so no route
rejects it as a value that "cannot be stored without pickle".

Dataclasses are stored as their fields and rebuilt as the original's type (the
type comes from the object under test, never from the file). The comparison
is ``persistkit.testing.compare.first_difference``; a failure names the path of
the first difference.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal

from persistkit.testing.compare import first_difference

__all__ = ["Roundtrip", "roundtrip"]

Via = Literal["bundle", "state", "envelope"]
_VIAS = ("bundle", "state", "envelope")
_DATACLASS_TAG = "__persistkit_dataclass__"


def _lower(obj: Any) -> Any:
    """Dataclasses (at any depth in dicts/lists/tuples) to plain dicts of their fields."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            _DATACLASS_TAG: type(obj).__qualname__,
            **{f.name: _lower(getattr(obj, f.name)) for f in dataclasses.fields(obj)},
        }
    if type(obj) is dict:
        return {k: _lower(v) for k, v in obj.items()}
    if type(obj) is list:
        return [_lower(v) for v in obj]
    if type(obj) is tuple:
        return tuple(_lower(v) for v in obj)
    return obj


def _raise(template: Any, data: Any) -> Any:
    """Undo ``_lower`` using the original object as the template for types."""
    if dataclasses.is_dataclass(template) and not isinstance(template, type):
        if not isinstance(data, dict) or data.get(_DATACLASS_TAG) != type(template).__qualname__:
            return data  # the comparison will report the difference
        rebuilt = object.__new__(type(template))
        for f in dataclasses.fields(template):
            if f.name in data:
                object.__setattr__(rebuilt, f.name, _raise(getattr(template, f.name), data[f.name]))
        return rebuilt
    if type(template) is dict and isinstance(data, dict):
        return {k: _raise(template[k], v) if k in template else v for k, v in data.items()}
    if type(template) in (list, tuple) and type(data) is type(template) and len(data) == len(template):
        items = [_raise(t, d) for t, d in zip(template, data, strict=True)]
        return items if type(template) is list else tuple(items)
    return data


def _is_component(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


def _is_torch_module(obj: Any) -> bool:
    if type(obj).__module__.split(".")[0] != "torch" and not any(
        c.__module__.startswith("torch.") for c in type(obj).__mro__[1:]
    ):
        return False
    import torch

    return isinstance(obj, torch.nn.Module)


def _is_plain_persistent(obj: Any) -> bool:
    """A Persistent that no model codec claims: stored as its state_dict, never as an object."""
    if not _is_component(obj):
        return False
    from persistkit.format import codecs

    return codecs.model_codec(obj) is None


def _fresh(obj: Any, factory: Callable[[], Any] | None, via: str) -> Any:
    make = factory if factory is not None else type(obj)
    try:
        return make()
    except TypeError as err:
        raise TypeError(
            f"roundtrip(via={via!r}): cannot make a fresh {type(obj).__name__} to load into "
            f"({err}); pass factory=lambda: {type(obj).__name__}(...)"
        ) from err


def _rebuild_module(original: Any, loaded: Any) -> Any:
    """torch modules load as their state dict (persistkit never imports a class named by a file):
    put the loaded weights into a copy of the original module, so the comparison is tensor by tensor."""
    if type(original).__module__.split(".")[0] != "torch" or not isinstance(loaded, Mapping):
        return loaded
    import torch

    if not isinstance(original, torch.nn.Module):
        return loaded
    clone = copy.deepcopy(original)
    clone.load_state_dict(loaded)
    return clone


class _Holder:
    """Carries a plain value through a StateStore as one component."""

    def __init__(self, value: Any = None) -> None:
        self.value = value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: Any) -> None:
        self.value = state["value"]


class Roundtrip:
    """The ``roundtrip`` fixture: ``roundtrip(obj, via=...)`` returns the reloaded object.

    Example::

        def test_scaler_roundtrip(roundtrip):
            scaler = StandardScaler().fit(np.random.default_rng(0).normal(size=(20, 3)))
            loaded = roundtrip(scaler, via="state")
            assert loaded is not scaler
    """

    def __init__(self, workdir: str | os.PathLike[str]) -> None:
        self.workdir = os.path.abspath(os.fspath(workdir))
        self._n = itertools.count()

    def __call__(
        self,
        obj: Any,
        *,
        via: Via | None = None,
        factory: Callable[[], Any] | None = None,
        password: str | None = None,
    ) -> Any:
        """Save ``obj`` through ``via``, load it back, assert equality, return the loaded object.

        ``via`` defaults to ``"state"`` for a Persistent object and ``"bundle"`` otherwise.
        """
        __tracebackhide__ = True
        if via is None:
            via = "state" if _is_plain_persistent(obj) else "bundle"
        if via not in _VIAS:
            raise ValueError(f"via must be one of {_VIAS}, not {via!r}")
        where = os.path.join(self.workdir, f"{via}-{next(self._n)}")
        if via == "state":
            loaded = self._state(obj, where, factory, password)
        elif _is_plain_persistent(obj):
            fresh = _fresh(obj, factory, via)
            store = self._envelope if via == "envelope" else self._bundle
            fresh.load_state_dict(store(dict(obj.state_dict()), where, password))
            loaded = fresh
        elif via == "envelope":
            loaded = self._envelope(obj, where, password)
        else:
            loaded = self._bundle(obj, where, password)
        loaded = _rebuild_module(obj, loaded)
        problem = first_difference(obj, loaded, "value")
        if problem is not None:
            raise AssertionError(
                f"roundtrip(via={via!r}): the loaded object differs from the saved one at {problem}"
            )
        return loaded

    # -- routes ------------------------------------------------------------------------------
    @staticmethod
    def _envelope(obj: Any, where: str, password: str | None) -> Any:
        from persistkit.format import codecs, envelope, tree
        from persistkit.io import atomic_write, current_fs

        current_fs().makedirs(os.path.dirname(where))
        payload = tree.encode(_lower(obj), root="value", model_hook=codecs.model_hook)
        kdf = None
        if password is not None:
            from persistkit.format.crypto import KdfParams

            kdf = KdfParams.floor()  # a test's round trip, not a key to protect for years
        atomic_write(
            where, envelope.seal(payload, kind="roundtrip", codec="tree", password=password, kdf=kdf)
        )
        data = current_fs().read_bytes(where)
        opened = envelope.open_envelope(data, password=password, source=where)
        value = tree.decode(
            opened.payload, source=where, model_resolver=lambda c, p: codecs.decode_member(c, p)
        )
        return _raise(obj, value)

    @staticmethod
    def _state(obj: Any, where: str, factory: Callable[[], Any] | None, password: str | None) -> Any:
        from persistkit.state import StateStore

        if _is_component(obj):
            component, target = obj, _fresh(obj, factory, "state")
        else:
            component, target = _Holder(_lower(obj)), _Holder()
        with StateStore(where, autosave_every=0, password=password) as store:
            store.register("value", component)
            store.load()
            store.save()
        reader = StateStore(where, readonly=True, password=password)
        try:
            reader.register("value", target)
            reader.load()
        finally:
            reader.close()
        if isinstance(target, _Holder):
            return _raise(obj, target.value)
        return target

    @staticmethod
    def _bundle(obj: Any, where: str, password: str | None) -> Any:
        from persistkit import bundle

        path = where + ".pkb"
        # Encrypted (with a key file beside it unless a password is given), as users save models:
        # authenticated bundles load their models without extra trust arguments.
        key_file = None if password is not None else where + ".key"
        bundle.save_bundle(path, {"value": obj}, password=password, key_file=key_file)
        # A torch module comes back as a module when load_bundle is told how to build one: here, a copy
        # of the saved module (the weights are then replaced by the loaded ones).
        modules = {"value": lambda: copy.deepcopy(obj)} if _is_torch_module(obj) else None
        loaded = bundle.load_bundle(path, password=password, key_file=key_file, modules=modules)
        return loaded["value"]


def roundtrip(obj: Any, tmp_dir: str | os.PathLike[str], *, via: Via | None = None, **kw: Any) -> Any:
    """The fixture as a function, for use outside pytest (e.g. in a notebook or script)."""
    return Roundtrip(tmp_dir)(obj, via=via, **kw)
