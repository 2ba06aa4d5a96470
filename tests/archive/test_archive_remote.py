"""Archives off-site against a real S3 server (moto's standalone server, real s3fs/boto3 over HTTP):
push proven end-to-end, remote retention, pull and restore from a URL with the local protections."""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import zipfile

import pytest
from archive_crafting import craft, tree_of

from persistkit.archive import Archiver
from persistkit.archive.remote import restore_url
from persistkit.errors import IntegrityError, PersistIOError, UnsafeArchiveError
from persistkit.policy.retention import KeepLast


def make_workspace(root, marker="v1"):
    (root / "logs").mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(exist_ok=True)
    (root / "logs" / "train.log").write_text(f"{marker}: step\n" * 200)
    (root / "models" / "agent.bin").write_bytes(hashlib.sha256(marker.encode()).digest() * 500)
    return root


def keys(server, bucket, prefix=""):
    out = server.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in out.get("Contents", []) if not o["Key"].startswith(".persistkit-probe"))


def archive_keys(server, bucket):
    return [k for k in keys(server, bucket, "archives/") if not k.startswith("archives/.persistkit-probe")]


def leftovers(directory):
    """Temp files of downloads, checks and pulls (persistkit's own lock and name files are expected)."""
    marks = (".remote-check-", ".pull-", ".download-", ".pk-tmp-", ".restore-")
    return [p.name for p in directory.iterdir() if any(m in p.name for m in marks)]


def read_json(server, bucket, key):
    return json.loads(server.client().get_object(Bucket=bucket, Key=key)["Body"].read())


@pytest.fixture
def remote(s3_bucket, tmp_path):
    """(server, bucket, make) where make(**kw) is an Archiver of one workspace pushing to the bucket."""
    server, bucket = s3_bucket
    ws = make_workspace(tmp_path / "ws")

    def make(root=ws, **kw):
        kw.setdefault("remote", f"s3://{bucket}/archives")
        kw.setdefault("storage_options", server.storage_options)
        return Archiver(root, **kw)

    return server, bucket, make


def stamp(arc, path, when):
    """Rename a local archive to the name it would have had at ``when`` (for retention over days)."""
    target = path.with_name(arc._names.name(arc._names.stamp(when)))
    path.rename(target)
    return target


# -- push: upload, record, end-to-end proof, then retention --------------------------------------------


def test_create_pushes_proves_and_records_the_remote_copy(remote):
    server, bucket, make = remote
    arc = make()
    report = arc.create_report()
    name = report.path.name
    assert report.remote is not None and report.remote.uploaded
    assert report.remote.url == f"s3://{bucket}/archives/{name}"
    assert archive_keys(server, bucket) == [
        f"archives/{name}",
        f"archives/{name}.json",
        f"archives/{name}.verified.json",
    ]
    local = report.path.read_bytes()
    remote_bytes = server.client().get_object(Bucket=bucket, Key=f"archives/{name}")["Body"].read()
    assert remote_bytes == local
    record = read_json(server, bucket, f"archives/{name}.json")
    assert record["sha256"] == hashlib.sha256(local).hexdigest() and record["size"] == len(local)
    with zipfile.ZipFile(report.path) as zf:
        assert record["manifest_sha256"] == hashlib.sha256(zf.read("MANIFEST.json")).hexdigest()
    assert record["files"] == report.remote.checked == arc.verify(report.path).checked > 0
    marker = read_json(server, bucket, f"archives/{name}.verified.json")
    assert marker["sha256"] == record["sha256"] and marker["checked"] == record["files"]
    listed = arc.list_remote()
    assert [(e.name, e.state, e.size) for e in listed] == [(name, "verified", len(local))]
    assert leftovers(report.path.parent) == []


def test_pushing_the_same_archive_again_is_proven_and_changes_nothing(remote):
    server, bucket, make = remote
    arc = make()
    path = arc.create()
    before = {
        k: server.client().get_object(Bucket=bucket, Key=k)["ETag"] for k in archive_keys(server, bucket)
    }
    again = arc.push(path)
    assert not again.uploaded and again.checked > 0
    after = {
        k: server.client().get_object(Bucket=bucket, Key=k)["ETag"] for k in archive_keys(server, bucket)
    }
    assert after == before


def test_a_push_whose_record_was_never_written_is_completed_by_the_next_push(remote):
    """Crash between the upload and the record: the object is there, unlisted as verified; push again."""
    server, bucket, make = remote
    arc = make(remote=None)
    path = arc.create()
    client = server.client()
    client.put_object(Bucket=bucket, Key=f"archives/{path.name}", Body=path.read_bytes())
    pushing = make()
    assert [(e.name, e.state) for e in pushing.list_remote()] == [(path.name, "incomplete")]
    assert pushing.prune_remote(dry_run=True) == []  # an incomplete push is neither counted nor removed
    report = pushing.push(path)
    assert not report.uploaded
    assert [(e.name, e.state) for e in pushing.list_remote()] == [(path.name, "verified")]


def test_another_archive_under_the_same_name_is_never_overwritten(remote, tmp_path):
    server, bucket, make = remote
    arc = make(remote=None)
    path = arc.create()
    client = server.client()
    client.put_object(Bucket=bucket, Key=f"archives/{path.name}", Body=b"someone else's archive")
    with pytest.raises(IntegrityError) as info:
        make().push(path)
    message = str(info.value)
    assert f"s3://{bucket}/archives/{path.name}" in message and "push again" in message
    assert "intact" in message and "nothing was deleted" in message
    body = client.get_object(Bucket=bucket, Key=f"archives/{path.name}")["Body"].read()
    assert body == b"someone else's archive"  # create-only: never overwritten
    assert archive_keys(server, bucket) == [f"archives/{path.name}"]  # no record for bytes not ours
    assert path.exists() and arc.verify(path).ok


def test_remote_retention_keeps_verified_copies_with_reasons_and_dry_runs(remote):
    server, bucket, make = remote
    arc = make(remote_keep=2, keep=10)
    t0 = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
    local = []
    for day in range(4):
        path = Archiver(arc.root, keep=10).create()
        local.append(stamp(arc, path, t0 + dt.timedelta(days=day)))
        arc.push(local[-1])  # each push applies remote_keep=2 after proving its copy
    remote_names = [e.name for e in arc.list_remote()]
    assert remote_names == [p.name for p in local[-2:]]
    assert all(p.exists() for p in local), "remote retention touched local archives"
    # a dry run with a stricter policy explains and removes nothing
    decisions = arc.prune_remote(dry_run=True, policy=KeepLast(1))
    described = [d.describe() for d in decisions]
    assert described == [
        f"keep {local[3].name}: the newest copy is always kept; one of the 1 most recent",
        f"remove {local[2].name}: no policy keeps it",
    ]
    assert [e.name for e in arc.list_remote()] == remote_names
    arc.prune_remote(policy=KeepLast(1))
    assert archive_keys(server, bucket) == [
        f"archives/{local[3].name}",
        f"archives/{local[3].name}.json",
        f"archives/{local[3].name}.verified.json",
    ]


def test_remote_retention_never_counts_or_removes_an_unverified_copy(remote):
    server, bucket, make = remote
    arc = make(remote_keep=1, keep=10)
    t0 = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
    first = stamp(arc, Archiver(arc.root, keep=10).create(), t0)
    arc.push(first)
    server.client().delete_object(Bucket=bucket, Key=f"archives/{first.name}.verified.json")
    second = stamp(arc, Archiver(arc.root, keep=10).create(), t0 + dt.timedelta(days=1))
    arc.push(second)
    states = {e.name: e.state for e in arc.list_remote()}
    assert states == {first.name: "unverified", second.name: "verified"}


# -- faults on push: nothing deleted anywhere, the local archive stays, a later push succeeds ---------


def test_server_down_during_create_fail_recover_fail_again(own_s3_server, tmp_path):
    server = own_s3_server
    bucket = server.new_bucket()
    ws = make_workspace(tmp_path / "ws")

    def archiver():
        return Archiver(
            ws,
            remote=f"s3://{bucket}/archives",
            storage_options=server.storage_options,
            keep=2,
            remote_keep=2,
        )

    arc = archiver()
    first = arc.create()  # the server is probed and the first archive pushed
    remote_before = archive_keys(server, bucket)
    server.stop()
    with pytest.raises(PersistIOError) as info:  # fail
        archiver().create()
    message = str(info.value)
    assert f"s3://{bucket}/archives" in message and "push it again" in message.lower()
    assert "intact" in message
    pending = arc.list()
    assert first in pending and len(pending) == 2 and all(arc.verify(p).ok for p in pending)
    server.start()  # recover: the same port, the same objects
    assert archive_keys(server, bucket) == remote_before
    report = archiver().push(pending[-1])
    assert report.uploaded
    server.stop()  # fail again: and nothing is pruned locally while the push fails
    with pytest.raises(PersistIOError):
        arc.create()
    with pytest.raises(PersistIOError):
        archiver().create()
    assert len(arc.list()) == 4, "a failed push let local retention delete archives"
    server.start()
    for path in arc.list()[2:]:
        archiver().push(path)
    states = [(e.name, e.state) for e in archiver().list_remote()]
    assert [s for _, s in states] == ["verified", "verified"]  # remote_keep=2 after proving each copy
    assert [n for n, _ in states] == [p.name for p in arc.list()[-2:]]


@pytest.mark.parametrize(
    ("step", "state"), [("_create_record", "incomplete"), ("_check_remote", "unverified")]
)
def test_server_stopped_mid_push_then_pushed_again_completes_it(
    own_s3_server, tmp_path, monkeypatch, step, state
):
    """The server goes away after the upload (before the record), or after the record (before the check)."""
    from persistkit.archive.remote import RemoteArchives

    server = own_s3_server
    bucket = server.new_bucket()
    ws = make_workspace(tmp_path / "ws")
    arc = Archiver(ws, remote=f"s3://{bucket}/archives", storage_options=server.storage_options,
                   keep=1, remote_keep=1)  # fmt: skip
    first = arc.create()
    real = getattr(RemoteArchives, step)

    def stop_then(self, *args):
        server.stop()
        return real(self, *args)

    monkeypatch.setattr(RemoteArchives, step, stop_then)
    with pytest.raises(PersistIOError) as info:  # fail
        arc.create()
    assert f"s3://{bucket}/archives" in str(info.value) and "intact" in str(info.value)
    second = arc.list()[-1]
    assert arc.list() == [first, second], "a failed push let local retention run"
    monkeypatch.undo()
    server.start()  # recover
    states = {e.name: e.state for e in arc.list_remote()}
    assert states == {first.name: "verified", second.name: state}  # the first copy was not pruned
    report = arc.push(second)
    assert not report.uploaded and report.pruned == [first.name]
    assert {e.name: e.state for e in arc.list_remote()} == {second.name: "verified"}
    monkeypatch.setattr(RemoteArchives, step, stop_then)
    with pytest.raises(PersistIOError):  # fail again
        arc.create()
    server.start()
    assert {e.name: e.state for e in arc.list_remote()}[second.name] == "verified"
    assert len(arc.list()) == 3 and all(arc.verify(p).ok for p in arc.list())  # keep=1 never ran


def test_a_copy_damaged_after_upload_fails_the_end_to_end_check_and_deletes_nothing(remote, monkeypatch):
    """The store damages the object between the upload and the check (bit rot, a stray writer): the
    download-back finds it, the push fails, and retention never runs."""
    from persistkit.archive.remote import RemoteArchives

    server, bucket, make = remote
    arc = make(remote_keep=1, keep=10)
    old = arc.create()
    newer = Archiver(arc.root, keep=10).create()
    client = server.client()
    real = RemoteArchives._create_record

    def record_then_damage(self, name, record):
        real(self, name, record)
        data = bytearray(client.get_object(Bucket=bucket, Key=f"archives/{name}")["Body"].read())
        data[len(data) // 2] ^= 0xFF
        client.put_object(Bucket=bucket, Key=f"archives/{name}", Body=bytes(data))

    monkeypatch.setattr(RemoteArchives, "_create_record", record_then_damage)
    with pytest.raises(IntegrityError, match=r"does not match the local archive") as info:
        arc.push(newer)
    message = str(info.value)
    assert f"s3://{bucket}/archives/{newer.name}" in message and "push again" in message
    assert f"archives/{old.name}.verified.json" in archive_keys(server, bucket)  # retention never ran
    assert f"archives/{newer.name}.verified.json" not in archive_keys(server, bucket)
    assert {e.name: e.state for e in arc.list_remote()} == {old.name: "verified", newer.name: "unverified"}
    assert old.exists() and newer.exists() and arc.verify(newer).ok
    assert leftovers(arc.archive_dir) == []


# -- pull and restore from a URL ------------------------------------------------------------------------


def test_pull_and_restore_from_a_url_round_trip(remote, tmp_path):
    server, bucket, make = remote
    arc = make()
    path = arc.create()
    other = Archiver(tmp_path / "machine2", remote=arc.remote, storage_options=server.storage_options)
    pulled = other.pull(path.name)
    assert pulled == other.archive_dir / path.name and pulled.read_bytes() == path.read_bytes()
    assert other.pull(path.name) == pulled  # already here and equal: nothing to do
    into = other.restore(f"s3://{bucket}/archives/{path.name}", tmp_path / "restored")
    assert (into / "logs" / "train.log").read_text() == (arc.root / "logs" / "train.log").read_text()
    assert leftovers(tmp_path) == [] and leftovers(other.archive_dir) == []


@pytest.mark.parametrize("how", ["pull", "restore"])
def test_a_corrupted_remote_object_is_detected_before_use(remote, tmp_path, how):
    server, bucket, make = remote
    arc = make()
    path = arc.create()
    key = f"archives/{path.name}"
    client = server.client()
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[100] ^= 0x01
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    url = f"s3://{bucket}/{key}"
    before = tree_of(tmp_path)
    (tmp_path / "m2").mkdir()
    with pytest.raises(IntegrityError) as info:
        if how == "pull":
            Archiver(tmp_path / "m2", remote=arc.remote, storage_options=server.storage_options).pull(
                path.name
            )
        else:
            restore_url(url, tmp_path / "out", storage_options=server.storage_options)
    assert url in str(info.value) and info.value.path == url
    assert "changed or damaged" in str(info.value)
    new = sorted(set(tree_of(tmp_path)) - set(before))
    # nothing but pull's archive directory and its writer lock: no archive, no temp download
    assert [
        n for n in new if not n.startswith("m2") or n.endswith(".zip") or leftovers(tmp_path / "m2")
    ] == []
    assert not (tmp_path / "out").exists()


def test_restore_from_a_url_without_a_record_is_refused(remote, tmp_path):
    server, bucket, make = remote
    path = make(remote=None).create()
    server.client().put_object(Bucket=bucket, Key=f"loose/{path.name}", Body=path.read_bytes())
    url = f"s3://{bucket}/loose/{path.name}"
    with pytest.raises(IntegrityError, match="no persistkit record") as info:
        restore_url(url, tmp_path / "out", storage_options=server.storage_options)
    assert info.value.path == url and not (tmp_path / "out").exists()


def test_restore_from_a_url_whose_record_disagrees_is_refused(remote, tmp_path):
    server, bucket, make = remote
    arc = make()
    path = arc.create()
    other = Archiver(arc.root, keep=10).create()
    client = server.client()
    record = read_json(server, bucket, f"archives/{path.name}.json")
    record["sha256"] = hashlib.sha256(other.read_bytes()).hexdigest()
    client.put_object(Bucket=bucket, Key=f"archives/{path.name}.json", Body=json.dumps(record).encode())
    url = f"s3://{bucket}/archives/{path.name}"
    with pytest.raises(IntegrityError) as info:
        restore_url(url, tmp_path / "out", storage_options=server.storage_options)
    assert info.value.path == url and not (tmp_path / "out").exists()
    client.put_object(Bucket=bucket, Key=f"archives/{path.name}.json", Body=b"{not json")
    with pytest.raises(IntegrityError, match=r"record .*unreadable") as info:
        restore_url(url, tmp_path / "out", storage_options=server.storage_options)
    assert f"{url}.json" in str(info.value)


def test_missing_object_and_missing_bucket_are_typed_errors_naming_the_url(remote, tmp_path):
    server, bucket, _make = remote
    url = f"s3://{bucket}/archives/training_backup_20260101_000000.zip"
    with pytest.raises(IntegrityError, match="no persistkit record") as info:
        restore_url(url, tmp_path / "out", storage_options=server.storage_options)
    assert info.value.path == url
    gone = f"s3://pk-no-such-bucket-{bucket[-8:]}/archives/x.zip"
    with pytest.raises(PersistIOError) as info:
        restore_url(gone, tmp_path / "out", storage_options=server.storage_options)
    assert info.value.errno == errno.ENOENT and "does not exist" in str(info.value)
    assert f"pk-no-such-bucket-{bucket[-8:]}" in str(info.value)
    with pytest.raises(PersistIOError, match=r"does not name an object"):
        restore_url("s3://", tmp_path / "out", storage_options=server.storage_options)
    with pytest.raises(PersistIOError) as info:
        Archiver(
            tmp_path, remote=gone.rsplit("/", 1)[0], storage_options=server.storage_options
        ).list_remote()
    assert info.value.errno == errno.ENOENT
    with pytest.raises(UnsafeArchiveError, match="not an archive name"):
        Archiver(tmp_path, remote=f"s3://{bucket}/archives", storage_options=server.storage_options).pull(
            "../../etc/passwd"
        )


@pytest.mark.parametrize("url", ["archives-bucket/archives", "s3://", "nosuchscheme://bucket/archives"])
def test_a_bad_remote_url_is_a_typed_error_naming_it(tmp_path, url):
    pytest.importorskip("s3fs")
    arc = Archiver(tmp_path, remote=url)
    with pytest.raises(PersistIOError) as info:
        arc.list_remote()
    assert info.value.errno == errno.EINVAL and info.value.path == url
    assert "s3://BUCKET/PREFIX" in str(info.value) or "Check the scheme" in str(info.value)


def test_pk_inspect_and_verify_accept_urls(remote):
    import persistkit as pk

    server, bucket, make = remote
    path = make().create()
    url = f"s3://{bucket}/archives/{path.name}"
    info = pk.inspect(url, storage_options=server.storage_options)
    assert info.ok and info.checked == make().verify(path).checked
    report = pk.verify(url, storage_options=server.storage_options)
    assert report.kind == "archive" and report.checked.endswith("against MANIFEST.json")
    client = server.client()
    data = bytearray(path.read_bytes())
    data[-30] ^= 0x01  # in the central directory: the record catches it before any zip reader runs
    client.put_object(Bucket=bucket, Key=f"archives/{path.name}", Body=bytes(data))
    with pytest.raises(IntegrityError) as err:
        pk.verify(url, storage_options=server.storage_options)
    assert err.value.path == url and "Nothing was parsed" in str(err.value)


HOSTILE = {
    "zip-slip": [("../evil.txt", "file", "above the target")],
    "absolute": [("/tmp/pk-evil.txt", "file", "anywhere")],
    "link chain": [
        ("a/", "dir", ""),
        ("a/b", "symlink", ".."),
        ("a/b/c", "symlink", ".."),
        ("a/b/c/d", "symlink", ".."),
        ("a/b/c/d/evil.txt", "file", "written above the restore directory"),
    ],
    "through a link": [("real/", "dir", ""), ("alias", "symlink", "real"), ("alias/f.txt", "file", "x")],
}


def upload_with_record(server, bucket, key, path):
    """An attacker with write access: the object and a record that matches it."""
    data = path.read_bytes()
    client = server.client()
    client.put_object(Bucket=bucket, Key=key, Body=data)
    record = {"format": "persistkit.remote-archive", "version": 1, "name": key.rsplit("/", 1)[-1],
              "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}  # fmt: skip
    client.put_object(Bucket=bucket, Key=key + ".json", Body=json.dumps(record).encode())


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_archive_uploaded_by_an_attacker_is_refused_like_locally(s3_bucket, tmp_path, kind):
    server, bucket = s3_bucket
    (tmp_path / "crafted").mkdir()
    crafted = craft(tmp_path / "crafted" / "hostile.zip", HOSTILE[kind])
    box = tmp_path / "box"
    box.mkdir()
    (box / "sibling.txt").write_text("untouched")
    with pytest.raises(UnsafeArchiveError) as local:
        Archiver(box).restore(crafted, box / "local")
    upload_with_record(server, bucket, "archives/hostile.zip", crafted)
    url = f"s3://{bucket}/archives/hostile.zip"
    before = tree_of(tmp_path)
    with pytest.raises(UnsafeArchiveError) as remote_err:
        Archiver(box, storage_options=server.storage_options).restore(url, box / "restored")
    assert tree_of(tmp_path) == before, "restore from a URL changed files outside its target"
    assert url in str(remote_err.value) and str(crafted) not in str(remote_err.value)
    assert remote_err.value.member == local.value.member
    assert str(remote_err.value).replace(url, "X") == str(local.value).replace(str(crafted), "X")


def test_a_zip_bomb_uploaded_by_an_attacker_is_refused_before_extraction(s3_bucket, tmp_path):
    server, bucket = s3_bucket
    zeros = b"\0" * (1 << 20)
    plain = craft(tmp_path / "many.zip", [(f"logs/{i}.bin", "file", zeros) for i in range(300)])
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info), compress_type=zipfile.ZIP_DEFLATED)
    upload_with_record(server, bucket, "archives/bomb.zip", bomb)
    with pytest.raises(UnsafeArchiveError, match="refusing to fill the disk"):
        restore_url(
            f"s3://{bucket}/archives/bomb.zip", tmp_path / "out", storage_options=server.storage_options
        )
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


CHILD = """
import pathlib, sys, time
import persistkit.archive.remote as remote
from persistkit.archive import Archiver

ws, url, endpoint, flag = sys.argv[1:]
def stall(path, limits):  # the copy is downloaded back; the checker is about to read it
    pathlib.Path(flag).write_text("downloaded")
    time.sleep(120)
remote.verify_archive = stall
options = {"key": "testing", "secret": "testing",
           "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
Archiver(ws, remote=url, storage_options=options).create()
"""


def test_sigkill_during_the_end_to_end_check_then_push_completes(remote, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    server, _bucket, make = remote
    arc = make()
    flag = tmp_path / "flag"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(arc.root), arc.remote, server.endpoint, str(flag)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert child.poll() is None and time.monotonic() < deadline, "the child never reached the check"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    [path] = arc.list()
    assert arc.verify(path).ok  # written and verified before the push began
    assert [(e.name, e.state) for e in arc.list_remote()] == [(path.name, "unverified")]
    assert len([n for n in leftovers(arc.archive_dir) if ".remote-check-" in n]) == 1  # the dead check's copy
    report = make().push(path)  # a later push finishes the job and clears the dead process's temp file
    assert not report.uploaded and report.checked == arc.verify(path).checked
    assert [(e.name, e.state) for e in arc.list_remote()] == [(path.name, "verified")]
    assert leftovers(arc.archive_dir) == []


def test_remote_retention_failing_after_a_proven_push_says_so_and_can_be_run_later(
    own_s3_server, tmp_path, monkeypatch
):
    from persistkit.archive.remote import RemoteArchives

    server = own_s3_server
    bucket = server.new_bucket()
    ws = make_workspace(tmp_path / "ws")
    arc = Archiver(ws, remote=f"s3://{bucket}/archives", storage_options=server.storage_options,
                   keep=5, remote_keep=1)  # fmt: skip
    first = arc.create()
    real = RemoteArchives.prune

    def stop_then_prune(self, **kw):
        server.stop()
        return real(self, **kw)

    monkeypatch.setattr(RemoteArchives, "prune", stop_then_prune)
    with pytest.raises(PersistIOError) as info:
        arc.create()
    assert "was pushed and its copy proven, but remote retention failed" in str(info.value)
    assert f"persistkit archive prune --remote s3://{bucket}/archives" in str(info.value)
    monkeypatch.undo()
    server.start()
    second = arc.list()[-1]
    assert {e.name: e.state for e in arc.list_remote()} == {first.name: "verified", second.name: "verified"}
    decisions = arc.prune_remote()
    assert [d.item.id for d in decisions if not d.keep] == [first.name]
    assert [e.name for e in arc.list_remote()] == [second.name]
    assert arc.list() == [first, second]  # local retention (keep=5) is separate


def test_each_refusal_of_push_and_pull_is_typed_and_names_what_to_do(remote, tmp_path):
    server, bucket, make = remote
    client = server.client()
    arc = make()
    with pytest.raises(IntegrityError, match="no archive to push"):
        arc.push()
    # a local archive that does not verify is never pushed
    path = make(remote=None).create()
    damaged = tmp_path / path.name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert not arc.verify(damaged).ok
    with pytest.raises(IntegrityError, match="so it was not pushed") as info:
        arc.push(damaged)
    assert str(damaged) in str(info.value) and archive_keys(server, bucket) == []
    # a record for another archive already sits under this name: no record of ours is written over it
    foreign = {"format": "persistkit.remote-archive", "version": 1, "sha256": "0" * 64, "size": 1}
    client.put_object(Bucket=bucket, Key=f"archives/{path.name}.json", Body=json.dumps(foreign).encode())
    with pytest.raises(IntegrityError, match="a record for another archive of that name") as info:
        arc.push(path)
    assert read_json(server, bucket, f"archives/{path.name}.json") == foreign
    assert {e.name: e.state for e in arc.list_remote()} == {path.name: "unverified"}
    assert arc.prune_remote() == []  # never counted, never removed
    # pulling over a different local archive of the same name is refused
    client.delete_object(Bucket=bucket, Key=f"archives/{path.name}.json")
    client.delete_object(Bucket=bucket, Key=f"archives/{path.name}")
    arc.push(path)
    other = tmp_path / "m2"
    (other / "archives").mkdir(parents=True)
    (other / "archives" / path.name).write_bytes(b"not the same")
    with pytest.raises(PersistIOError, match="move it aside") as info:
        Archiver(other, remote=arc.remote, storage_options=server.storage_options).pull(path.name)
    assert info.value.errno == errno.EEXIST
    assert (other / "archives" / path.name).read_bytes() == b"not the same"
    # restoring a URL into a directory that exists is refused before anything is downloaded
    (tmp_path / "taken").mkdir()
    with pytest.raises(PersistIOError, match="already exists") as info:
        restore_url(f"{arc.remote}/{path.name}", tmp_path / "taken", storage_options=server.storage_options)
    assert info.value.errno == errno.EEXIST and list((tmp_path / "taken").iterdir()) == []


def test_pull_refuses_a_hostile_upload_that_matches_its_record(s3_bucket, tmp_path):
    server, bucket = s3_bucket
    (tmp_path / "crafted").mkdir()
    crafted = craft(tmp_path / "crafted" / "training_backup_20260101_000000.zip", HOSTILE["zip-slip"])
    upload_with_record(server, bucket, f"archives/{crafted.name}", crafted)
    arc = Archiver(tmp_path / "ws", remote=f"s3://{bucket}/archives", storage_options=server.storage_options)
    with pytest.raises(IntegrityError, match="does not verify against its manifest") as info:
        arc.pull(crafted.name)
    assert info.value.path == f"s3://{bucket}/archives/{crafted.name}"
    assert arc.list() == [] and leftovers(arc.archive_dir) == []


def test_push_draws_progress_bars_only_when_asked_or_on_a_terminal(remote, capfd):
    """The push's upload and its end-to-end check report through persistkit.progress (the archiver's bar
    too): drawn with progress=True, silent by default when stderr is not a terminal."""
    *_, make = remote
    make(progress=True).create()
    drawn = capfd.readouterr().err
    assert (
        "archiving" in drawn and "pushing training_backup_" in drawn and "checking training_backup_" in drawn
    )
    make().create()
    assert capfd.readouterr().err == ""


# -- round two: names and trees an archive cannot hold ---------------------------------------------------


def test_a_file_that_is_also_a_directory_fails_verify_and_pull_never_half_a_restore(s3_bucket, tmp_path):
    """``logs/a`` and ``logs/a/b``: no file system holds both. It used to verify and pull, then its restore
    failed half-way; it is refused by the checker, so by verify, pull and restore alike."""
    server, bucket = s3_bucket
    (tmp_path / "crafted").mkdir()
    crafted = craft(tmp_path / "crafted" / "training_backup_20260101_000000.zip",
                    [("logs/a", "file", "a file"), ("logs/a/b", "file", "below it")])  # fmt: skip
    box = tmp_path / "box"
    box.mkdir()
    report = Archiver(box).verify(crafted)
    assert not report.ok and any("needs it to be a directory" in p for p in report.problems)
    with pytest.raises(UnsafeArchiveError, match="cannot be restored"):
        Archiver(box).restore(crafted, box / "restored")
    assert not (box / "restored").exists()
    upload_with_record(server, bucket, f"archives/{crafted.name}", crafted)
    arc = Archiver(tmp_path / "ws", remote=f"s3://{bucket}/archives", storage_options=server.storage_options)
    with pytest.raises(IntegrityError, match="does not verify against its manifest"):
        arc.pull(crafted.name)
    with pytest.raises(UnsafeArchiveError, match="cannot be restored"):
        arc.restore(f"s3://{bucket}/archives/{crafted.name}", box / "from-url")
    assert sorted(p.name for p in box.iterdir()) == []


def test_a_stamp_shaped_name_with_an_impossible_date_is_listed_as_such_and_never_breaks_create(remote):
    server, bucket, make = remote
    arc = make(remote_keep=1)
    first = arc.create()
    bogus = "training_backup_20261399_000000.zip"
    server.client().put_object(Bucket=bucket, Key=f"archives/{bogus}", Body=b"not an archive")
    listed = {a.name: a for a in arc.list_remote()}
    assert listed[bogus].state == "not an archive name" and "not a time" in listed[bogus].problem
    assert listed[first.name].state == "verified"
    second = arc.create()  # pushes, then retention: the bogus name is neither counted nor removed
    assert [a.name for a in arc.list_remote() if a.state == "verified"] == [second.name]
    assert f"archives/{bogus}" in keys(server, bucket, "archives/")
    assert [d.item.id for d in arc.prune_remote(dry_run=True)] == [second.name]
