"""Issue 12, findings 3 and 4: a full disk during appends and saves.

A failed append leaves its journal exactly as before, no (key, nonce) pair is
ever used twice, and once space returns the store recovers without a restart.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter as Tally

import pytest
from conftest import open_store

from persistkit.errors import PersistIOError
from persistkit.format import crypto
from persistkit.format.crypto import RecordCipher
from persistkit.io import current_fs, use_fs
from persistkit.keys import write_key_file
from persistkit.state import generations as gens
from persistkit.state.journal import JournalReader
from persistkit.testing.fs.faultfs import Fault, FaultFS

ENOSPC_WRITES = Fault(at=0, errno=errno.ENOSPC, persistent=True, short_write=True, kinds=frozenset({"write"}))


class NonceLog:
    """Observes every journal-record encryption: (journal key salt, sequence number as nonce)."""

    def __init__(self) -> None:
        self.used: list[tuple[bytes, int]] = []

    def cipher_class(self) -> type[RecordCipher]:
        used = self.used

        class Observed(RecordCipher):
            __slots__ = ("salt",)

            def __init__(self, key, salt):  # type: ignore[no-untyped-def]
                super().__init__(key, salt)
                self.salt = salt

            def encrypt(self, seq, payload):  # type: ignore[no-untyped-def]
                used.append((self.salt, seq))
                return super().encrypt(seq, payload)

        return Observed

    def repeats(self) -> list[tuple[bytes, int]]:
        return [pair for pair, count in Tally(self.used).items() if count > 1]


@pytest.fixture
def nonces(monkeypatch):
    log = NonceLog()
    monkeypatch.setattr(crypto, "RecordCipher", log.cipher_class())  # journal_cipher() builds them
    return log


@pytest.fixture
def key(tmp_path):
    path = tmp_path / "store.key"
    write_key_file(path)
    return path


def journal_sequences(store_dir):
    """Sequence numbers of every record in every journal under ``store_dir`` (framing only)."""
    found = {}
    for name in sorted(os.listdir(store_dir)):
        path = store_dir / name / gens.journal_file("log")
        if path.exists():
            first = JournalReader.read(str(path)).records
            found[name] = [r.seq for r in first]
    return found


def test_full_disk_episode_keeps_every_acknowledged_append_and_never_reuses_a_nonce(store_dir, key, nonces):
    """fail (append), fail (save), space returns, append, process dies, reopen."""
    store, parts, _ = open_store(store_dir, key_file=key)
    acknowledged = []
    for item in ("t0", "t1", "t2"):
        parts["log"].append(item)
        acknowledged.append(item)
    parts["counter"].value = 1
    journal = store_dir / gens.gen_name(store.generation) / gens.journal_file("log")
    before = journal.read_bytes()
    disk = FaultFS(current_fs(), ENOSPC_WRITES)
    with use_fs(disk):
        with pytest.raises(PersistIOError, match=r"log\.journal") as caught:
            parts["log"].append("lost")  # half of the record reaches the disk, then ENOSPC
        assert caught.value.errno == errno.ENOSPC
        assert journal.read_bytes() == before  # exactly as before the failed append
        with pytest.raises(PersistIOError):
            store.save()
    assert disk.fired >= 2
    assert list(parts["log"]) == acknowledged  # the failed append is not visible either
    parts["log"].append("t3")  # space is back: acknowledged
    acknowledged.append("t3")
    store.abandon()  # the process dies: no final save

    reopened, loaded, report = open_store(store_dir, key_file=key)
    assert list(loaded["log"]) == acknowledged and loaded["counter"].value == 1
    assert not report.recovered and not report.quarantined
    reopened.close()
    assert nonces.used and nonces.repeats() == []
    for name, seqs in journal_sequences(store_dir).items():
        assert seqs == sorted(set(seqs)), f"{name}: sequence numbers repeat: {seqs}"


def test_store_recovers_without_restart_through_repeated_full_disk_episodes(store_dir, key, nonces):
    """fail, recover, fail again, then crash: every acknowledged append and state survives."""
    store, parts, _ = open_store(store_dir, key_file=key)
    acknowledged = []

    def append(item):
        parts["log"].append(item)
        acknowledged.append(item)

    append("a0")
    for episode in range(2):
        with use_fs(FaultFS(current_fs(), ENOSPC_WRITES)):
            with pytest.raises(PersistIOError, match=r"(?i)free space"):
                parts["log"].append(f"lost{episode}")
            with pytest.raises(PersistIOError):
                parts["log"].append(f"lost{episode}-retry")  # still full: refused, not acknowledged
        # space is back: the next save is not "skipped", it starts fresh journals
        parts["counter"].value = 10 + episode
        checkpoint = store.save()
        assert not checkpoint.skipped
        append(f"ok{episode}")
        append(f"ok{episode}b")
    with use_fs(FaultFS(current_fs(), ENOSPC_WRITES)), pytest.raises(PersistIOError):
        parts["log"].append("lost-last")
    append("after-retry")  # no save in between: the append itself recovers once space is back
    store.abandon()

    _, loaded, report = open_store(store_dir, key_file=key, readonly=True)
    assert list(loaded["log"]) == acknowledged[-5:]  # BoundedLog(5)
    assert loaded["counter"].value == 11 and not report.recovered
    assert nonces.repeats() == []


def test_append_refused_inside_atomic_block_while_its_journal_is_unusable(store_dir):
    store, parts, _ = open_store(store_dir)
    with use_fs(FaultFS(current_fs(), ENOSPC_WRITES)), pytest.raises(PersistIOError):
        parts["log"].append("lost")
    with store.atomic():
        parts["counter"].value = 3  # half of a multi-component update: must not be checkpointed alone
        with pytest.raises(PersistIOError, match=r"save\(\)"):
            parts["log"].append("x")
    assert gens.read_current(str(store_dir), key=None)["generation"] == store.generation
    store.save()
    parts["log"].append("x")
    store.close()
    _, loaded, _ = open_store(store_dir, readonly=True)
    assert list(loaded["log"]) == ["x"] and loaded["counter"].value == 3


CHILD = textwrap.dedent(
    """
    import errno, json, os, signal, sys
    sys.path.insert(0, sys.argv[3])
    from conftest import open_store
    from persistkit.format.crypto import RecordCipher
    from persistkit.io import current_fs, use_fs
    from persistkit.testing.fs.faultfs import Fault, FaultFS
    from persistkit.format import crypto

    used = []

    class Observed(RecordCipher):
        __slots__ = ("salt",)
        def __init__(self, key, salt):
            super().__init__(key, salt)
            self.salt = salt
        def encrypt(self, seq, payload):
            used.append([self.salt.hex(), seq])
            return super().encrypt(seq, payload)

    crypto.RecordCipher = Observed
    store, parts, _ = open_store(sys.argv[1], key_file=sys.argv[2])
    def ack(item):
        parts["log"].append(item)
        print("ACK " + json.dumps(item), flush=True)
    for i in range(3):
        ack(f"t{i}")
    full = Fault(at=0, errno=errno.ENOSPC, persistent=True, short_write=True, kinds=frozenset({"write"}))
    with use_fs(FaultFS(current_fs(), full)):
        for attempt in (lambda: parts["log"].append("lost"), store.save):
            try:
                attempt()
            except OSError as err:
                print("FAILED " + type(err).__name__, flush=True)
    ack("t3")
    print("NONCES " + json.dumps(used), flush=True)
    print("READY", flush=True)
    signal.pause()
    """
)


def test_full_disk_episode_then_sigkill_of_a_real_process(store_dir, key):
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(store_dir), str(key), os.path.dirname(__file__)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        lines = []
        assert child.stdout is not None
        for line in child.stdout:
            lines.append(line.strip())
            if line.strip() == "READY":
                break
        child.send_signal(signal.SIGKILL)  # kill -9 after the last acknowledged append
        _, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert lines and lines[-1] == "READY", err
    assert lines.count("FAILED PersistIOError") == 2
    acknowledged = [json.loads(line[4:]) for line in lines if line.startswith("ACK ")]
    used = next(json.loads(line[7:]) for line in lines if line.startswith("NONCES "))
    assert len(used) == len({tuple(u) for u in used}), f"a (key, nonce) pair repeats: {used}"

    store, loaded, report = open_store(store_dir, key_file=key)
    assert list(loaded["log"]) == acknowledged == ["t0", "t1", "t2", "t3"]
    assert not report.recovered and not report.quarantined
    store.close()


@pytest.fixture
def tiny_disk(tmp_path, tmpfs):
    """A real 256 KiB filesystem (tmpfs); needs root and mount(8)."""
    with tmpfs(tmp_path / "disk", size="256k") as mountpoint:
        yield mountpoint


def fill(path):
    """Take every free byte of the filesystem holding ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (65536, 4096, 512, 64, 8, 1):
            try:
                while True:
                    os.write(fd, b"\xff" * size)
            except OSError as err:
                assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_a_really_full_disk_episode_on_tmpfs(tiny_disk, key, nonces):
    store_dir = tiny_disk / "store"
    store, parts, _ = open_store(store_dir, key_file=key)
    acknowledged = [f"t{i}" for i in range(3)]
    for item in acknowledged:
        parts["log"].append(item)
    filler = tiny_disk / "filler"
    fill(filler)
    big = "x" * 8192  # more than any slack left in the journal's last page
    with pytest.raises(PersistIOError, match="ENOSPC"):
        parts["log"].append(big)
    parts["counter"].value = 4
    with pytest.raises(PersistIOError, match="ENOSPC"):
        store.save()
    filler.unlink()  # space returns
    parts["log"].append("t3")
    acknowledged.append("t3")
    store.abandon()

    store, loaded, report = open_store(store_dir, key_file=key)
    assert list(loaded["log"]) == acknowledged[-5:] and loaded["counter"].value == 4
    assert not report.recovered and not report.quarantined
    store.close()
    assert nonces.repeats() == []


def test_a_failed_batch_flush_is_reported_and_the_next_append_recovers(store_dir, key, nonces):
    store, parts, _ = open_store(store_dir, key_file=key, sync="batch", batch_ms=20)
    for item in ("a", "b"):
        parts["log"].append(item)
    store.flush()
    journal = store_dir / gens.gen_name(store.generation) / gens.journal_file("log")
    durable = journal.read_bytes()
    with use_fs(FaultFS(current_fs(), ENOSPC_WRITES)):
        parts["log"].append("c")  # buffered: batch mode acknowledges before the write
        with pytest.raises(PersistIOError, match=r"log\.journal"):
            store.flush()  # this flush, or the flusher thread before it, hit the full disk
        assert journal.read_bytes() == durable
    parts["log"].append("d")  # space is back: checkpoints "c" (still in memory), then journals "d"
    store.flush()
    store.abandon()
    _, loaded, report = open_store(store_dir, key_file=key, readonly=True)
    assert list(loaded["log"]) == ["a", "b", "c", "d"] and not report.recovered
    assert nonces.repeats() == []
