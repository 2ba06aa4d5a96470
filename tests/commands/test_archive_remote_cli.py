"""`persistkit archive push|pull|list|prune --remote URL`, `archive restore URL --into DIR`, and
`persistkit inspect|verify URL`, against a real S3 server (credentials and endpoint from the AWS
environment, as a user's shell would have them)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import persistkit as pk
from persistkit.cli import cli


def aws_env(endpoint, key="testing", secret="testing"):
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def run(server, *args, env=None):
    runner = CliRunner(env=env or aws_env(server.endpoint))
    return runner.invoke(cli, [str(a) for a in args])


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws"
    (root / "logs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "logs" / "training.log").write_text("step 1\n" * 300)
    (root / "models" / "q.bin").write_bytes(bytes(range(256)) * 40)
    return root


def test_create_push_list_pull_restore_round_trip(s3_bucket, ws, tmp_path):
    server, bucket = s3_bucket
    url = f"s3://{bucket}/archives"
    created = run(server, "archive", "create", "--root", ws, "--remote", url)
    assert created.exit_code == 0, created.output
    assert f"pushed: {url}/training_backup_" in created.output and "checked end-to-end" in created.output
    name = next(ws.joinpath("archives").glob("training_backup_*.zip")).name
    listed = run(server, "archive", "list", "--remote", url)
    assert listed.exit_code == 0, listed.output
    size = (ws / "archives" / name).stat().st_size
    assert f"{name}  {size} bytes  created " in listed.output and "  verified " in listed.output
    other = tmp_path / "machine2"
    other.mkdir()
    pulled = run(server, "archive", "pull", "--root", other, "--remote", url, name)
    assert pulled.exit_code == 0, pulled.output
    assert (other / "archives" / name).read_bytes() == (ws / "archives" / name).read_bytes()
    restored = run(server, "archive", "restore", f"{url}/{name}", "--into", tmp_path / "restored")
    assert restored.exit_code == 0, restored.output
    assert (tmp_path / "restored" / "logs" / "training.log").read_text() == "step 1\n" * 300
    again = run(server, "archive", "push", "--root", ws, "--remote", url)
    assert again.exit_code == 0 and "already there" in again.output


def test_list_remote_reports_a_name_with_an_impossible_date_and_leaves_it_alone(s3_bucket, ws):
    server, bucket = s3_bucket
    url = f"s3://{bucket}/archives"
    assert run(server, "archive", "create", "--root", ws, "--remote", url).exit_code == 0
    server.client().put_object(Bucket=bucket, Key="archives/training_backup_20261399_000000.zip", Body=b"x")
    listed = run(server, "archive", "list", "--remote", url)
    assert listed.exit_code == 0, listed.output
    assert (
        "training_backup_20261399_000000.zip  size unknown  created -  not an archive name" in listed.output
    )
    assert "is not a time" in listed.output and "left alone" in listed.output
    assert "not proven off-site" not in listed.output  # nothing to push again
    assert run(server, "archive", "create", "--root", ws, "--remote", url).exit_code == 0


def test_push_prune_dry_run_and_list_show_reasons_and_states(s3_bucket, ws):
    server, bucket = s3_bucket
    url = f"s3://{bucket}/archives"
    empty = run(server, "archive", "push", "--root", ws, "--remote", url)
    assert empty.exit_code == 1 and "no archives to push" in empty.output
    for _ in range(3):
        assert run(server, "archive", "create", "--root", ws, "--keep", "10").exit_code == 0
    names = sorted(p.name for p in (ws / "archives").glob("*.zip"))
    pushed = run(server, "archive", "push", "--root", ws, "--remote", url, "--keep", "10",
                 *[ws / "archives" / n for n in names])  # fmt: skip
    assert pushed.exit_code == 0, pushed.output
    dry = run(server, "archive", "prune", "--root", ws, "--remote", url, "--keep", "1", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"keep {names[2]}: the newest copy is always kept; one of the 1 most recent" in dry.output
    assert f"would remove {names[0]}: no policy keeps it" in dry.output
    assert f"would remove {names[1]}: no policy keeps it" in dry.output
    assert run(server, "archive", "list", "--remote", url).output.count("verified") == 3
    server.client().delete_object(Bucket=bucket, Key=f"archives/{names[0]}.json")
    listed = run(server, "archive", "list", "--remote", url)
    assert f"{names[0]}  size unknown" in listed.output and "incomplete" in listed.output
    assert "not proven off-site" in listed.output and names[0] in listed.output
    pruned = run(server, "archive", "prune", "--root", ws, "--remote", url, "--keep", "1")
    assert pruned.exit_code == 0 and f"remove {names[1]}" in pruned.output
    left = sorted(
        o["Key"] for o in server.client().list_objects_v2(Bucket=bucket, Prefix="archives/t")["Contents"]
    )
    assert left == [
        f"archives/{names[0]}",  # the incomplete push (its record lost) is left alone
        f"archives/{names[0]}.verified.json",
        f"archives/{names[2]}",
        f"archives/{names[2]}.json",
        f"archives/{names[2]}.verified.json",
    ]


def test_push_with_the_server_down_fails_then_succeeds(own_s3_server, ws):
    server = own_s3_server
    bucket = server.new_bucket()
    url = f"s3://{bucket}/archives"
    assert run(server, "archive", "create", "--root", ws, "--remote", url).exit_code == 0
    assert run(server, "archive", "create", "--root", ws).exit_code == 0
    server.stop()
    failed = run(server, "archive", "push", "--root", ws, "--remote", url)
    assert failed.exit_code == 1
    assert url in failed.output and "could not be reached" in failed.output and "intact" in failed.output
    assert len(list((ws / "archives").glob("*.zip"))) == 2
    server.start()
    ok = run(server, "archive", "push", "--root", ws, "--remote", url)
    assert ok.exit_code == 0, ok.output
    server.stop()
    assert run(server, "archive", "list", "--remote", url).exit_code == 1  # fails again, typed and named
    server.start()
    listed = run(server, "archive", "list", "--remote", url)
    assert listed.output.count(" verified ") == 2


def test_restore_and_pull_refuse_what_they_cannot_check(s3_bucket, ws, tmp_path):
    server, bucket = s3_bucket
    url = f"s3://{bucket}/archives"
    assert run(server, "archive", "create", "--root", ws, "--remote", url).exit_code == 0
    name = next(ws.joinpath("archives").glob("*.zip")).name
    client = server.client()
    data = bytearray(client.get_object(Bucket=bucket, Key=f"archives/{name}")["Body"].read())
    data[200] ^= 0x40
    client.put_object(Bucket=bucket, Key=f"archives/{name}", Body=bytes(data))
    restored = run(server, "archive", "restore", f"{url}/{name}", tmp_path / "out")
    assert (
        restored.exit_code == 1
        and f"{url}/{name}" in restored.output
        and "changed or damaged" in restored.output
    )
    assert not (tmp_path / "out").exists()
    pulled = run(server, "archive", "pull", "--root", tmp_path, "--remote", url, name)
    assert pulled.exit_code == 1 and "changed or damaged" in pulled.output
    hostile = run(server, "archive", "pull", "--root", tmp_path, "--remote", url, "../x.zip")
    assert hostile.exit_code == 1 and "unsafe archive name" in hostile.output
    usage = run(server, "archive", "restore", f"{url}/{name}")
    assert usage.exit_code == 2 and "INTO or --into" in usage.output


# -- persistkit inspect / verify URL ------------------------------------------------------------------


@pytest.fixture
def published(s3_bucket, ws, tmp_path):
    """An archive pushed by persistkit, a ModelStore version, and a bundle uploaded by hand (no record)."""
    server, bucket = s3_bucket
    archive = pk.Archiver(
        ws, remote=f"s3://{bucket}/archives", storage_options=server.storage_options
    ).create()
    store = pk.ModelStore(f"s3://{bucket}/models", cache_dir=tmp_path / "cache", key_file=tmp_path / "store.key",
                          storage_options=server.storage_options)  # fmt: skip
    version = str(store.save({"w": np.arange(6.0)}, symbol="BTC", agent="ppo", timeframe="1h"))
    loose = pk.save_bundle(tmp_path / "loose.models", {"w": [1, 2, 3]}, encrypt=False)
    server.client().put_object(Bucket=bucket, Key="loose/loose.models", Body=loose.read_bytes())
    return server, bucket, archive, version, tmp_path / "store.key"


def test_inspect_and_verify_urls_say_whether_a_record_was_found(published):
    server, bucket, archive, version, key = published
    archive_url = f"s3://{bucket}/archives/{archive.name}"
    shown = run(server, "inspect", archive_url)
    assert shown.exit_code == 0, shown.output
    assert f"{archive_url}  persistkit training archive" in shown.output and "intact" in shown.output
    assert f"checked against its record {archive_url}.json" in shown.output
    checked = run(server, "verify", archive_url)
    assert checked.exit_code == 0 and f"ok     {archive_url}: archive" in checked.output
    assert f"record {archive_url}.json" in checked.output
    model = run(server, "verify", version, "--key-file", key)
    assert model.exit_code == 0, model.output
    assert "authenticated" in model.output and f"record {version}.json" in model.output
    as_json = run(server, "inspect", "--json", version)
    doc = json.loads(as_json.output)
    assert doc["remote"] == {"url": version, "record": f"{version}.json"} and doc["members"]
    loose = f"s3://{bucket}/loose/loose.models"
    unrecorded = run(server, "verify", loose)
    assert unrecorded.exit_code == 0 and "no persistkit record beside it" in unrecorded.output
    assert "digests only" in unrecorded.output


def test_verify_url_detects_a_corrupted_object_and_names_the_url(published):
    server, bucket, archive, version, key = published
    client = server.client()
    for obj in (f"archives/{archive.name}", version.split(f"{bucket}/", 1)[1], "loose/loose.models"):
        data = bytearray(client.get_object(Bucket=bucket, Key=obj)["Body"].read())
        data[len(data) // 3] ^= 0x10
        client.put_object(Bucket=bucket, Key=obj, Body=bytes(data))
    for url in (f"s3://{bucket}/archives/{archive.name}", version):
        result = (
            run(server, "verify", url, "--key-file", key) if url == version else run(server, "verify", url)
        )
        assert (
            result.exit_code == 1
            and f"FAILED {url}" in result.output
            and "changed or damaged" in result.output
        )
        inspected = run(server, "inspect", url)
        assert inspected.exit_code == 1 and url in inspected.output
    loose = f"s3://{bucket}/loose/loose.models"
    result = run(server, "verify", loose)  # no record: the bundle's own digests catch it, naming the URL
    assert result.exit_code == 1 and f"FAILED {loose}" in result.output
    assert "persistkit-fetch-" not in result.output, "the error named the temp copy, not the URL"


def test_inspect_url_errors_are_typed_and_name_the_url(s3_bucket):
    server, bucket = s3_bucket
    missing = f"s3://{bucket}/nothing/here.models"
    result = run(server, "inspect", missing)
    assert result.exit_code == 1 and missing in result.output and "No such object" in result.output
    no_bucket = "s3://pk-no-such-bucket-at-all/x.models"
    result = run(server, "verify", no_bucket)
    assert result.exit_code == 1 and "pk-no-such-bucket-at-all" in result.output
    assert "does not exist" in result.output and "create it, or fix the URL" in result.output
    bad = run(server, "inspect", "s3://")
    assert bad.exit_code == 1 and "does not name an object" in bad.output
    typo = run(server, "inspect", "no/such/local/file.models")
    assert typo.exit_code == 2 and "does not exist" in typo.output
    with pytest.raises(pk.PersistIOError, match="No such object") as info:
        pk.inspect(missing, storage_options=server.storage_options)
    assert info.value.path == missing


def test_wrong_credentials_are_a_typed_error_with_advice(iam_enforcing_endpoint, tmp_path):
    env = aws_env(iam_enforcing_endpoint, key="AKIAEXPIREDORUNKNOWN", secret="wrong")
    url = "s3://some-bucket/archives/training_backup_20260101_000000.zip"
    runner = CliRunner(env=env)
    for args in (["inspect", url], ["verify", url], ["archive", "restore", url, str(tmp_path / "out")],
                 ["archive", "list", "--remote", "s3://some-bucket/archives"]):  # fmt: skip
        result = runner.invoke(cli, args)
        assert result.exit_code == 1, (args, result.output)
        assert (
            "Access denied" in result.output and "credentials are missing, wrong or expired" in result.output
        )
        assert "s3://some-bucket/" in result.output
    assert not (tmp_path / "out").exists()
