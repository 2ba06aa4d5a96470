"""stable-baselines3 helpers: fine-tuning a model stored in a bundle, and schedules that save as data.

stable-baselines3 is imported only when these functions run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persistkit.io import current_fs
from persistkit.io.fs import PathLike, io_error

if TYPE_CHECKING:
    from persistkit.model_store import ModelStore

__all__ = ["constant_schedule", "fine_tune", "linear_schedule"]

_AUTOMATIC = ("created", "environment", "git_commit")


def linear_schedule(start: float, end: float, end_fraction: float = 1.0) -> Any:
    """SB3's ``LinearSchedule`` (from ``start`` to ``end`` over ``end_fraction`` of training); saves as data."""
    from stable_baselines3.common.utils import LinearSchedule

    return LinearSchedule(start, end, end_fraction)


def constant_schedule(value: float) -> Any:
    """SB3's ``ConstantSchedule``; saves as data."""
    from stable_baselines3.common.utils import ConstantSchedule

    return ConstantSchedule(value)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    try:
        with current_fs().open_read(path) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as err:
        raise io_error("read", path, err) from err
    return digest.hexdigest()


def _default_target(parent: str, timesteps: int) -> str:
    base = parent[: -len(".models")] if parent.endswith(".models") else parent
    return f"{base}.ft{timesteps}.models"


def _store_group(metadata: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(symbol, agent, timeframe) that ``ModelStore.save`` recorded in a version's metadata, or None."""
    group = metadata.get("store")
    if not isinstance(group, Mapping):
        return None
    values = tuple(group.get(k) for k in ("symbol", "agent", "timeframe"))
    if not all(type(v) is str for v in values):
        return None
    return values  # type: ignore[return-value]


def _home_store(parent: str, group: tuple[str, str, str] | None) -> ModelStore | None:
    """The ModelStore ``parent`` is a version of (models/SYMBOL/AGENT/TIMEFRAME/<version>.models), or None."""
    from persistkit.errors import PersistkitError
    from persistkit.model_store import ModelStore

    if group is None:
        return None
    root = parent
    for _ in range(4):
        root = os.path.dirname(root)
    try:
        store = ModelStore(root)
        return store if os.path.abspath(parent) in map(str, store.versions(*group)) else None
    except (PersistkitError, TypeError):  # names that are not a store's (unsafe components)
        return None


def fine_tune(
    bundle_path: PathLike,
    member: str,
    env: Any,
    total_timesteps: int,
    *,
    save_to: PathLike | None = None,
    store: ModelStore | PathLike | None = None,
    callback: Any = None,
    **load_kw: Any,
) -> Path | str:
    """Continue training one SB3 member of a bundle and save the result as a new bundle.

    The model is loaded (``load_kw`` goes to ``load_bundle``: ``password``,
    ``key_file``, ``trusted``, ``device``), trained for ``total_timesteps`` more
    steps without being re-created (``num_timesteps`` keeps counting), and
    saved with every other member and the metadata of the parent. The new
    metadata records its lineage: the parent's SHA-256, path, version name and
    bundle id, the member, and the timesteps before and after.

    Where it goes: a parent that is a ``ModelStore`` version (saved by
    ``ModelStore.save``, still in its ``SYMBOL/AGENT/TIMEFRAME`` directory) is
    fine-tuned *into its store*: a new version of the same group, published
    with ``ModelStore.save`` (so ``versions()``/``latest()`` see it), with its
    own key beside it unless a password or key file was given. ``store=``
    names the store to publish into explicitly (the group is the parent's).
    Otherwise the new bundle is sealed the same way as the parent (same
    password, key file, or a copy of the key written beside the new bundle)
    at ``save_to``, which defaults to ``<parent>.ft<timesteps>.models``.

    A parent on object storage is given by its URL together with ``store=`` (the
    ``ModelStore("s3://...")`` holding it): it is fetched (sha256-checked) into
    the store's cache, and the child is published into that store as its next
    version; the lineage names the parent's URL. Returns the child's path, or
    its URL for a remote store.
    """
    from persistkit.bundle import load_bundle, save_bundle
    from persistkit.errors import NotFoundError
    from persistkit.keys import default_key_path, read_key_file, write_key_file
    from persistkit.model_store import ModelStore

    if save_to is not None and store is not None:
        raise ValueError("pass save_to= (a bundle path) or store= (publish into a ModelStore), not both")
    from persistkit.io.remote import is_url
    from persistkit.model_store import Version

    source = bundle_path.location if isinstance(bundle_path, Version) else os.fspath(bundle_path)
    if is_url(source):
        if not (isinstance(store, ModelStore) and store.space.remote):
            raise ValueError(
                f"{source} is on object storage: pass store=ModelStore({source.rsplit('/', 4)[0]!r}, ...) (the "
                "remote store holding it, with its storage options and key) so fine_tune can fetch the parent "
                "and publish the child there."
            )
        parent = store.fetch(source)  # downloaded into the store's cache and checked against its record
        load_kw = store.load_options(**load_kw)  # the store's key and its encryption rule
    else:
        parent = os.path.abspath(source)
    parent_hash = _sha256(parent)
    bundle = load_bundle(parent, env=env, **load_kw)
    group = _store_group(bundle.metadata)
    target_store: ModelStore | None = None
    if store is not None:
        target_store = store if isinstance(store, ModelStore) else ModelStore(store)
        if group is None:
            raise ValueError(
                f"{parent} was not saved by ModelStore.save (its metadata has no 'store' group), so fine_tune "
                "cannot tell which SYMBOL/AGENT/TIMEFRAME to publish into; call "
                "ModelStore.save(load_bundle(...).models, symbol=..., agent=..., timeframe=...) yourself, or "
                "pass save_to=."
            )
    elif save_to is None:
        target_store = _home_store(parent, group)
    if member not in bundle.models:
        raise NotFoundError(
            f"{parent} has no member {member!r}; it has {', '.join(map(repr, sorted(bundle.models)))}. Pass "
            "member= with one of those names.",
            path=parent,
            member=member,
        )
    model = bundle.models[member]
    if not hasattr(model, "learn") or not hasattr(model, "num_timesteps"):
        raise TypeError(f"member {member!r} of {parent} is a {type(model).__name__}, not an SB3 model")
    before = int(model.num_timesteps)
    model.learn(total_timesteps, reset_num_timesteps=False, callback=callback)
    after = int(model.num_timesteps)

    metadata = {k: v for k, v in bundle.metadata.items() if k not in _AUTOMATIC}
    metadata["lineage"] = {
        "parent_sha256": parent_hash,
        "parent_path": source if is_url(source) else parent,
        "parent_version": os.path.basename(parent),
        "parent_bundle_id": bundle.manifest.bundle_id,
        "member": member,
        "timesteps_before": before,
        "timesteps_after": after,
        "fine_tuned": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    entry = bundle.manifest.member(member)
    replay = bool(entry.info.get("replay_buffer", False))
    info = bundle.manifest.encryption
    if target_store is not None:
        assert group is not None
        publish_kw: dict[str, Any] = {"save_replay_buffer": replay}
        if info is None:
            publish_kw["encrypt"] = False
        elif load_kw.get("password") is not None:
            publish_kw["password"] = load_kw["password"]
        elif load_kw.get("key_file") is not None:
            publish_kw["key_file"] = load_kw["key_file"]
        # else: a new key beside the new version, as for any ModelStore.save
        metadata.pop("store", None)  # ModelStore.save records the group itself
        symbol, agent, timeframe = group
        child = target_store.save(
            bundle.models, symbol=symbol, agent=agent, timeframe=timeframe, metadata=metadata, **publish_kw
        )
        return str(child) if child.remote else child.path

    target = os.path.abspath(os.fspath(save_to)) if save_to is not None else _default_target(parent, after)
    save_kw: dict[str, Any] = {}
    copied_key: str | None = None
    if info is None:
        save_kw["encrypt"] = False
    elif load_kw.get("password") is not None:
        save_kw["password"] = load_kw["password"]
    elif load_kw.get("key_file") is not None:
        save_kw["key_file"] = load_kw["key_file"]
    else:  # the key lived beside the parent: put a copy beside the child, so each bundle has its key next to it
        key = read_key_file(default_key_path(parent))
        child_key = default_key_path(target)
        if not current_fs().exists(child_key):
            write_key_file(child_key, key)
            copied_key = child_key
        save_kw["key_file"] = child_key
    try:
        return save_bundle(target, bundle.models, metadata, save_replay_buffer=replay, **save_kw)
    except BaseException:
        if copied_key is not None:  # a failed fine-tune leaves no new files behind
            current_fs().unlink(copied_key)
        raise
