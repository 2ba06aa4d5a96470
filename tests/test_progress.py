"""Transfer progress bars: drawn on a terminal for large transfers, silent otherwise."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import time

import numpy as np
import pytest

import persistkit as pk
from persistkit.progress import THRESHOLD, transfer, wanted

WHERE = {"symbol": "BTC/USDT", "agent": "ppo", "timeframe": "1h"}


def test_not_a_terminal_or_small_means_quiet():
    piped = io.StringIO()
    with transfer("uploading", 10 * THRESHOLD, stream=piped) as advance:
        advance(10 * THRESHOLD)
    assert piped.getvalue() == ""
    assert not wanted(10 * THRESHOLD, stream=piped)
    assert wanted(10 * THRESHOLD, stream=piped, show=True)  # forced on, e.g. progress=True
    assert not wanted(THRESHOLD - 1, stream=piped, show=None)


def test_a_forced_bar_draws_and_counts_bytes():
    out = io.StringIO()
    with transfer("uploading x", 3 * 2**20, stream=out, show=True) as advance:
        for _ in range(3):
            advance(2**20)
    assert "uploading x" in out.getvalue() and "3.1" in out.getvalue()  # 3 MiB = 3.1 MB, rich's units


def test_a_large_remote_save_and_load_stay_quiet_when_stderr_is_not_a_terminal(s3_bucket, tmp_path, capfd):
    server, bucket = s3_bucket
    store = pk.ModelStore(f"s3://{bucket}/models", cache_dir=tmp_path / "c", key_file=tmp_path / "k",
                          storage_options=server.storage_options)  # fmt: skip
    weights = np.random.default_rng(0).random(2 * THRESHOLD // 8)
    store.save({"w": weights}, **WHERE)
    pk.ModelStore(store.root, cache_dir=tmp_path / "c2", key_file=tmp_path / "k",
                  storage_options=server.storage_options).load_latest(**WHERE)  # fmt: skip
    out, err = capfd.readouterr()
    assert out == "" and err == ""


CHILD = """
import sys, numpy as np, persistkit as pk
endpoint, bucket, cache, key, n = sys.argv[1:6]
opts = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
store = pk.ModelStore(f"s3://{bucket}/models", cache_dir=cache, key_file=key, storage_options=opts)
store.save({"w": np.random.default_rng(0).random(int(n))}, symbol="BTC", agent="ppo", timeframe="1h")
pk.ModelStore(f"s3://{bucket}/models", cache_dir=cache + "2", key_file=key, storage_options=opts).load_latest(
    symbol="BTC", agent="ppo", timeframe="1h")
print("DONE", flush=True)
"""


def run_on_a_terminal(server, bucket, tmp_path, floats):
    """Run CHILD with its stderr on a pseudo-terminal; what the terminal received."""
    master, slave = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, server.endpoint, bucket, str(tmp_path / "c"), str(tmp_path / "k"),
         str(floats)],
        stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TERM": "xterm-256color", "COLUMNS": "100"},
    )  # fmt: skip
    os.close(slave)
    received = bytearray()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            received += chunk
        elif child.poll() is not None:
            break
    os.close(master)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0 and out.strip() == "DONE", received.decode(errors="replace")
    return received.decode(errors="replace")


@pytest.mark.parametrize("floats", [4 * THRESHOLD // 8])  # 32 MiB
def test_a_large_transfer_draws_a_bar_on_a_terminal(s3_bucket, tmp_path, floats):
    server, bucket = s3_bucket
    seen = run_on_a_terminal(server, bucket, tmp_path, floats)
    assert "uploading BTC/ppo/1h" in seen and "downloading BTC/ppo/1h/" in seen
    assert "━" in seen and "MB" in seen  # rich's bar and its byte counts


def test_a_small_transfer_stays_quiet_on_a_terminal(s3_bucket, tmp_path):
    server, bucket = s3_bucket
    assert run_on_a_terminal(server, bucket, tmp_path, 1000) == ""
