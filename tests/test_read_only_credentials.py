"""Readers need no write rights: with credentials that may only GetObject and ListBucket, every read works.

A credential-checking moto server (the ``iam_server`` fixture) holds a bucket, a writer allowed s3:*
and a reader allowed s3:GetObject and s3:ListBucket only. The writer publishes a model version and an
alias, pushes an archive and backs up a state store; the reader then loads, restores, inspects,
verifies and pulls all of it. Before, each of those probed the server's conditional writes at start-up
with PUTs and DELETEs, failed on the read-only credentials, and advised granting write rights.
"""

from __future__ import annotations

import errno

import numpy as np
import pytest
from click.testing import CliRunner

import persistkit as pk
from persistkit.cli import cli
from persistkit.errors import PersistIOError

WHERE = {"symbol": "BTC/USDT", "agent": "ppo", "timeframe": "1h"}


class Book:
    def __init__(self) -> None:
        self.cash = 0.0

    def state_dict(self):
        return {"cash": self.cash}

    def load_state_dict(self, state):
        self.cash = state["cash"]


@pytest.fixture
def published(iam_server, tmp_path):
    """What a writer put in the bucket: a model version and an alias, an archive, a state-store backup."""
    bucket, writer = iam_server.bucket, iam_server.options("writer")
    store = pk.ModelStore(f"s3://{bucket}/models", cache_dir=tmp_path / "trainer", key_file=tmp_path / "store.key",
                          storage_options=writer)  # fmt: skip
    version = store.save({"w": np.arange(4.0)}, **WHERE)
    store.tag(version, "production")
    ws = tmp_path / "ws"
    (ws / "logs").mkdir(parents=True)
    (ws / "logs" / "train.log").write_text("step 1\n" * 100)
    archive = pk.Archiver(ws, remote=f"s3://{bucket}/archives", storage_options=writer).create()
    bot = pk.StateStore(tmp_path / "bot", autosave_every=None, backup_to=f"s3://{bucket}/bots/b",
                        backup_every=None, storage_options=writer)  # fmt: skip
    book = bot.register("book", Book())
    bot.load()
    book.cash = 42.0
    bot.save()
    bot.close()  # the final round takes it off-site
    return iam_server, version, archive


def test_a_reader_with_get_and_list_only_loads_restores_inspects_verifies_and_pulls(published, tmp_path):
    server, version, archive = published
    bucket, reader = server.bucket, server.options("reader")
    models = pk.ModelStore(f"s3://{bucket}/models", cache_dir=tmp_path / "bot-cache", key_file=tmp_path / "store.key",
                           storage_options=reader)  # fmt: skip
    np.testing.assert_array_equal(models.load_latest(**WHERE)["w"], np.arange(4.0))
    np.testing.assert_array_equal(models.load("production")["w"], np.arange(4.0))
    assert models.versions(**WHERE) == [version] and models.aliases() == {"production": version}
    url = f"s3://{bucket}/archives/{archive.name}"
    restored = pk.Archiver(tmp_path / "elsewhere", storage_options=reader).restore(url, tmp_path / "restored")
    assert (restored / "logs" / "train.log").read_text() == "step 1\n" * 100
    assert pk.inspect(url, storage_options=reader).ok
    assert pk.verify(str(version), key_file=tmp_path / "store.key", storage_options=reader).ok
    pulled = pk.Archiver(tmp_path / "ws2", remote=f"s3://{bucket}/archives", storage_options=reader).pull(
        archive.name
    )
    assert pulled.read_bytes() == archive.read_bytes()
    report = pk.StateStore.restore_from(
        f"s3://{bucket}/bots/b", tmp_path / "bot-copy", storage_options=reader
    )
    assert report.generation >= 1
    copy = pk.StateStore(tmp_path / "bot-copy", autosave_every=None)
    book = copy.register("book", Book())
    copy.load()
    assert book.cash == 42.0
    copy.close()
    key, secret = server.keys["reader"]
    env = {"AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
           "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    shown = CliRunner(env=env).invoke(cli, ["inspect", url])
    assert shown.exit_code == 0 and "persistkit training archive" in shown.output, shown.output


def test_a_reader_that_tries_to_write_is_told_what_a_writer_needs(published, tmp_path):
    server, version, _ = published
    reader = server.options("reader")
    models = pk.ModelStore(f"s3://{server.bucket}/models", cache_dir=tmp_path / "c", key_file=tmp_path / "store.key",
                           storage_options=reader)  # fmt: skip
    with pytest.raises(PersistIOError) as info:
        models.save({"w": np.zeros(1)}, **WHERE)
    message = str(info.value)
    assert info.value.errno == errno.EACCES and f"s3://{server.bucket}/models/" in message
    assert "s3:PutObject and s3:DeleteObject (what a writer needs" in message
    assert models.versions(**WHERE) == [version]  # nothing was published
    with pytest.raises(PersistIOError) as info:
        models.tag(version, "staging")
    assert info.value.errno == errno.EACCES and models.aliases() == {"production": version}
