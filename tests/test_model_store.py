"""ModelStore: layout, versions, retention that never loses the live or newest good version, aliases."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import numpy as np
import pytest

import persistkit as pk
from persistkit.errors import IntegrityError, UnsafeArchiveError
from persistkit.model_store import ModelStore, Version
from persistkit.testing.compare import assert_same

T0 = dt.datetime(2024, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
WHERE = {"symbol": "BTC/USDT", "agent": "ppo", "timeframe": "1h"}


def save(store, n, when=T0, **kw):
    return store.save({"q": np.full(3, float(n))}, **WHERE, when=when, config={"run": n}, **kw)


def test_layout_and_config_beside_each_version(tmp_path):
    store = ModelStore(tmp_path / "models")
    path = save(store, 1)
    assert path == tmp_path / "models" / "BTC-USDT" / "ppo" / "1h" / "2024-03-01_120000.models"
    assert isinstance(path, Version) and path.group == "BTC-USDT/ppo/1h" and str(path) == str(path.path)
    config = path.path.with_name("2024-03-01_120000.config.json")
    assert json.loads(config.read_text()) == {"run": 1}
    bundle = pk.load_bundle(path)
    assert bundle.metadata["config"] == {"run": 1}
    assert bundle.metadata["store"] == {"symbol": "BTC/USDT", "agent": "ppo", "timeframe": "1h"}


def test_two_saves_in_the_same_second_do_not_collide(tmp_path):
    store = ModelStore(tmp_path)
    paths = [save(store, n) for n in range(12)]
    assert len(set(paths)) == 12
    assert store.versions(**WHERE) == paths  # numeric suffixes sort after the plain name, _10 after _9
    assert store.latest(**WHERE) == paths[-1]
    assert_same(np.full(3, 11.0), store.load_latest(**WHERE)["q"])


@pytest.mark.parametrize("bad", ["..", ".hidden", "a b", "x\x00y", "", "a\\b", "../etc"])
def test_unsafe_names_are_refused(tmp_path, bad):
    store = ModelStore(tmp_path)
    with pytest.raises(UnsafeArchiveError, match="not safe as a directory name"):
        store.save({"q": np.ones(1)}, symbol=bad, agent="a", timeframe="1h")
    assert not any(p.suffix == ".models" for p in tmp_path.rglob("*"))


def test_versions_are_oldest_first_across_days(tmp_path):
    store = ModelStore(tmp_path)
    later = save(store, 2, when=T0 + dt.timedelta(days=1))
    earlier = save(store, 1)
    assert store.versions(**WHERE) == [earlier, later]
    assert store.versions("ETH/USDT", "ppo", "1h") == [] and store.latest("ETH/USDT", "ppo", "1h") is None


def test_prune_keeps_the_newest_n(tmp_path):
    store = ModelStore(tmp_path)
    paths = [save(store, n, when=T0 + dt.timedelta(minutes=n)) for n in range(5)]
    other = store.save({"q": np.ones(1)}, symbol="ETH", agent="dqn", timeframe="5m", when=T0)
    assert store.prune(keep=2, dry_run=True) == paths[:3]
    assert store.versions(**WHERE) == paths  # dry run deletes nothing
    assert store.prune(keep=2) == paths[:3]
    assert store.versions(**WHERE) == paths[3:]
    assert not paths[0].path.with_name(paths[0].name.replace(".models", ".config.json")).exists()
    assert not (paths[0].path.parent / (paths[0].name + ".key")).exists()
    assert other.path.exists()  # groups are pruned separately


def test_prune_never_deletes_the_newest_valid_or_an_aliased_version(tmp_path):
    store = ModelStore(tmp_path)
    paths = [save(store, n, when=T0 + dt.timedelta(minutes=n)) for n in range(5)]
    store.tag(paths[0], "production")
    data = bytearray(paths[4].path.read_bytes())
    paths[4].path.write_bytes(bytes(data[: len(data) // 2]))  # the newest is damaged
    removed = store.prune(keep=1)
    assert removed == paths[1:3]
    assert store.versions(**WHERE) == [paths[0], paths[3], paths[4]]
    assert_same(np.full(3, 0.0), store.load("production")["q"])
    everything = store.prune(keep=0)
    assert paths[3] not in everything and paths[0] not in everything


def test_load_latest_can_fall_back_past_a_damaged_version(tmp_path, caplog):
    store = ModelStore(tmp_path)
    good = save(store, 1, when=T0)
    bad = save(store, 2, when=T0 + dt.timedelta(minutes=1))
    bad.path.write_bytes(bad.path.read_bytes()[:100])
    with pytest.raises(IntegrityError):
        store.load_latest(**WHERE)
    bundle = store.load_latest(**WHERE, fallback=True)
    assert bundle.path == good
    assert any(str(bad) in r.getMessage() for r in caplog.records)


def test_aliases_record_which_version_was_live_when(tmp_path):
    store = ModelStore(tmp_path)
    v1, v2 = save(store, 1), save(store, 2)
    store.tag(v1, "production", when=T0)
    store.tag(v2, "staging", when=T0)
    store.tag(v2, "production", when=T0 + dt.timedelta(hours=2))
    store.tag(v2, "production", when=T0 + dt.timedelta(hours=3))  # no-op: already there
    assert store.aliases() == {"production": v2, "staging": v2}
    assert_same(np.full(3, 2.0), store.load("production")["q"])
    assert store.live_at("production", T0 + dt.timedelta(hours=1)) == v1
    assert store.live_at("production", T0 + dt.timedelta(hours=5)) == v2
    assert store.live_at("production", T0 - dt.timedelta(hours=1)) is None
    history = store.history("production")
    assert [(e.path, e.until is None) for e in history] == [(str(v1), False), (str(v2), True)]
    index = json.loads((tmp_path / "aliases.json").read_text())
    assert index["version"] == 1 and len(index["events"]) == 3
    assert not [n for n in os.listdir(tmp_path) if ".pk-tmp-" in n]  # written atomically


def test_tag_refuses_paths_outside_the_store_and_bad_aliases(tmp_path):
    store = ModelStore(tmp_path / "store")
    v1 = save(store, 1)
    outside = pk.save_bundle(tmp_path / "elsewhere.models", {"q": np.ones(1)})
    with pytest.raises(ValueError, match="not a bundle version inside the store"):
        store.tag(outside, "production")
    with pytest.raises(ValueError, match="alias"):
        store.tag(v1, "../prod")
    with pytest.raises(KeyError, match="no alias 'prod'"):
        store.load("prod")


def test_damaged_alias_index_is_an_integrity_error(tmp_path):
    store = ModelStore(tmp_path)
    store.tag(save(store, 1), "production")
    (tmp_path / "aliases.json").write_text("{not json")
    with pytest.raises(IntegrityError, match="alias index"):
        store.aliases()


def flip_member_byte(path, member_prefix="members/"):
    """Damage one member's bytes, leaving the manifest (and its digest) as written."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.startswith(member_prefix))
    path = Path(path)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.compress_size // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("encrypt", [True, False])
def test_prune_keeps_the_newest_version_that_actually_loads(tmp_path, encrypt):
    store = ModelStore(tmp_path)
    paths = [save(store, n, when=T0 + dt.timedelta(minutes=n), encrypt=encrypt) for n in range(3)]
    flip_member_byte(paths[2])
    pk.inspect(paths[2])  # the manifest alone still checks out
    with pytest.raises(IntegrityError):
        pk.load_bundle(paths[2])
    removed = store.prune(keep=1)
    assert removed == [paths[0]]
    assert_same(np.full(3, 1.0), store.load_latest(**WHERE, fallback=True)["q"])


def test_unknown_alias_and_empty_group_are_typed_errors(tmp_path):
    from persistkit.errors import NotFoundError, NoVersionError

    store = ModelStore(tmp_path)
    with pytest.raises(NotFoundError) as info:
        store.load("production")
    assert isinstance(info.value, KeyError) and "production" in str(info.value)
    assert info.value.path == str(tmp_path / "aliases.json") and "tag" in str(info.value)
    with pytest.raises(NoVersionError) as empty:
        store.load_latest(**WHERE)
    assert isinstance(empty.value, FileNotFoundError)
    assert empty.value.path == str(tmp_path / "BTC-USDT" / "ppo" / "1h") and "save" in str(empty.value)


def test_a_store_root_that_is_a_file_says_a_file_is_in_the_way(tmp_path):
    from persistkit.errors import PersistIOError

    root = tmp_path / "models"
    root.write_text("not a directory")
    with pytest.raises(PersistIOError) as info:
        save(ModelStore(root), 1)
    text = str(info.value)
    assert "file is in the way" in text and "Free space" not in text


def test_a_failed_save_leaves_no_version_config_or_key(tmp_path):
    from persistkit.errors import UnsupportedTypeError

    store = ModelStore(tmp_path)
    with pytest.raises(UnsupportedTypeError):
        store.save({"bad": object()}, **WHERE)
    group = tmp_path / "BTC-USDT" / "ppo" / "1h"
    assert [p.name for p in group.iterdir() if not p.name.startswith(".persistkit")] == []
    assert store.versions(**WHERE) == []


def test_prune_decides_through_the_retention_policy_and_explains_itself(tmp_path, caplog):
    from persistkit.policy.retention import KeepDaily

    store = ModelStore(tmp_path)
    paths = [save(store, n, when=T0 + dt.timedelta(days=n)) for n in range(4)]
    store.tag(paths[0], "production")
    plan = store.prune_plan(keep=1)
    reasons = {d.item.id: (d.keep, "; ".join(d.reasons)) for d in plan}
    assert reasons[str(paths[3])] == (
        True,
        "pinned: the newest version that is intact; the newest copy is always kept; one of the 1 most recent",
    )
    assert reasons[str(paths[0])] == (True, "pinned: alias 'production' points at it")
    assert reasons[str(paths[1])] == reasons[str(paths[2])] == (False, "")
    caplog.set_level("INFO", logger="persistkit")
    assert store.prune(keep=1, dry_run=True) == paths[1:3]
    assert f"remove {paths[1]}: no policy keeps it" in caplog.text
    assert f"keep {paths[0]}: pinned: alias 'production' points at it" in caplog.text
    assert store.versions(**WHERE) == paths  # the dry run deleted nothing
    # any retention policy: the newest version of each of the 2 most recent days, plus the pins
    kept = [d.item.id for d in store.prune_plan(policy=KeepDaily(2)) if d.keep]
    assert kept == [str(paths[3]), str(paths[2]), str(paths[0])]
    assert store.prune(keep=1) == paths[1:3]
    assert store.versions(**WHERE) == [paths[0], paths[3]]
    store.tag(paths[3], "production")  # the alias moves on: the old version is no longer pinned
    assert store.prune(keep=1) == [paths[0]]
    assert store.prune(keep=1) == []  # nothing left to do, twice


def test_prune_refuses_a_keep_and_a_policy_together_or_a_bad_keep(tmp_path):
    from persistkit.policy.retention import KeepLast

    store = ModelStore(tmp_path)
    save(store, 1)
    with pytest.raises(ValueError, match="keep= or policy="):
        store.prune(keep=1, policy=KeepLast(2))
    with pytest.raises(ValueError, match="non-negative int"):
        store.prune(keep=-1)
    with pytest.raises(ValueError, match="non-negative int"):
        store.prune()


def test_one_model_store_class_over_a_directory_and_a_bucket_with_version_values(tmp_path, s3_bucket):
    from persistkit.model_store.bucket import BucketSpace
    from persistkit.model_store.local import LocalSpace

    server, bucket = s3_bucket
    local = ModelStore(tmp_path / "models")
    remote = ModelStore(f"s3://{bucket}/models", cache_dir=tmp_path / "cache", key_file=tmp_path / "k",
                        storage_options=server.storage_options)  # fmt: skip
    assert type(local) is ModelStore and type(remote) is ModelStore  # no subclass swapped in by __new__
    assert isinstance(local.space, LocalSpace) and isinstance(remote.space, BucketSpace)
    here, there = save(local, 1), save(remote, 1)
    for version in (here, there):
        assert isinstance(version, Version) and version.group == "BTC-USDT/ppo/1h"
        assert version.name == "2024-03-01_120000.models" and version.when == T0
        assert version.key == "BTC-USDT/ppo/1h/2024-03-01_120000.models"
    assert not here.remote and os.fspath(here) == str(here.path) and here == here.path
    assert there.remote and str(there) == f"s3://{bucket}/models/{there.key}" and there == str(there)
    with pytest.raises(TypeError, match=r"ModelStore\.fetch"):
        os.fspath(there)  # a bucket version is no local file; fetch gives one
    assert Path(remote.fetch(there)).is_file() and remote.fetch(str(there)) == remote.fetch(there)
    assert local.fetch(here) == str(here.path)
    assert local.latest(**WHERE) == here and remote.latest(**WHERE) == there
    assert sorted([save(local, 2, when=T0 - dt.timedelta(days=1)), here]) == local.versions(**WHERE)
    with pytest.raises(ValueError, match="not a bundle version inside the store"):
        local.tag(tmp_path / "elsewhere" / "2024-03-01_120000.models", "production")
    with pytest.raises(ValueError, match="is not a version of the store"):
        remote.tag(f"s3://{bucket}/models/BTC-USDT/ppo/../../x/2024-03-01_120000.models", "production")
