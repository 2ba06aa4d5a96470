"""Issue 12, findings 5 and 6: damage to acknowledged journal records is never taken for a torn write."""

from __future__ import annotations

import os

import pytest
from conftest import open_store

from persistkit.errors import IntegrityError
from persistkit.state import generations as gens
from persistkit.state.audit import inspect_store
from persistkit.state.journal import APPEND, JournalReader, frame
from persistkit.state.store import StateRecoveredWarning


def store_with_journal(store_dir, items=("a", "b", "c", "d", "e")):
    """gen-000001, then an acknowledged gen-000002 with ``items`` journaled after it; the writer dies."""
    store, parts, _ = open_store(store_dir)
    parts["counter"].value = 1
    store.save()
    parts["counter"].value = 2
    newest = store.save().generation
    for item in items:
        parts["log"].append(item)
    store.abandon()
    return store_dir / gens.gen_name(newest) / gens.journal_file("log")


def record_offsets(journal):
    reader = JournalReader.read(str(journal))
    data = journal.read_bytes()
    offsets, pos = [], 0
    for record in reader.records:
        offsets.append(pos)
        pos += 13 + len(record.payload) + 8
    assert pos == len(data)
    return offsets


def flip_bit(path, offset, bit=0x04):
    data = bytearray(path.read_bytes())
    data[offset] ^= bit
    path.write_bytes(bytes(data))


def snapshot(store_dir):
    return sorted(os.listdir(store_dir)), (store_dir / gens.CURRENT).read_bytes()


def test_a_bit_flip_in_the_middle_of_the_newest_journal_is_an_error_and_nothing_is_committed(store_dir):
    journal = store_with_journal(store_dir)
    offsets = record_offsets(journal)
    flip_bit(journal, offsets[2] + 15)  # inside record 2's payload; records 3 and 4 are intact
    before = snapshot(store_dir)
    for readonly in (True, False):
        with pytest.raises(IntegrityError) as caught:
            open_store(store_dir, readonly=readonly)
        message = str(caught.value)
        assert str(journal) in message and "record 2" in message
        assert caught.value.path == str(journal)
        assert snapshot(store_dir) == before  # no quarantine, no new generation on top of old state


def test_a_bit_flip_in_the_last_acknowledged_record_is_reported_as_damage(store_dir):
    journal = store_with_journal(store_dir)
    offsets = record_offsets(journal)
    flip_bit(journal, offsets[-1] + 15)  # the full record is on disk; its checksum fails

    info = inspect_store(store_dir, verify=True)
    assert info.problems, "inspect --verify must not call the store intact"
    assert any("log.journal" in p and "record 4" in p for p in info.problems)

    with pytest.warns(StateRecoveredWarning, match=r"log\.journal.*record 4") as caught:
        _, parts, report = open_store(store_dir, readonly=True)
    assert len(caught) == 1
    assert list(parts["log"]) == ["a", "b", "c", "d"]
    log = report["log"]
    assert log.damaged_records == 1 and log.torn_records == 0 and "damaged" in log.detail
    assert report.recovered and any("record 4" in f for f in report.failures)


def test_a_duplicated_sequence_number_at_the_tail_is_damage_not_a_torn_write(store_dir):
    journal = store_with_journal(store_dir)
    data = journal.read_bytes()
    journal.write_bytes(data + data[record_offsets(journal)[-1] :])  # record 4 twice: 0,1,2,3,4,4
    with pytest.warns(StateRecoveredWarning, match="record 5"):
        _, parts, report = open_store(store_dir, readonly=True)
    assert report["log"].damaged_records == 1 and list(parts["log"]) == list("abcde")


@pytest.mark.parametrize("tail", ["short", "zero-filled"])
def test_a_torn_tail_is_dropped_quietly_and_counted_in_records(store_dir, tail, recwarn):
    journal = store_with_journal(store_dir)
    data = journal.read_bytes()
    last = frame(5, APPEND, b"the sixth append, never finished")
    # short: the last append never finished; zero-filled: the size grew, the data never landed
    torn = last[:-3] if tail == "short" else last[:13] + b"\0" * (len(last) - 13)
    journal.write_bytes(data + torn)
    _, parts, report = open_store(store_dir, readonly=True)
    assert not recwarn.list
    log = report["log"]
    assert (log.torn_records, log.torn_bytes, log.damaged_records) == (1, len(torn), 0)
    assert list(parts["log"]) == list("abcde") and not report.recovered
    assert inspect_store(store_dir, verify=True).problems == []


def test_a_writer_keeps_a_copy_of_a_journal_with_a_damaged_last_record(store_dir):
    journal = store_with_journal(store_dir)
    flip_bit(journal, record_offsets(journal)[-1] + 15)
    damaged = journal.read_bytes()
    with pytest.warns(StateRecoveredWarning, match="record 4"):
        store, parts, report = open_store(store_dir, keep_generations=1)
    store.close()  # the recovery checkpoint pruned the generation that held the journal
    assert not journal.exists() and list(parts["log"]) == ["a", "b", "c", "d"]
    copies = [p for p in report.quarantined if "log.journal.corrupt-" in p]
    assert len(copies) == 1 and open_bytes(copies[0]) == damaged
    assert os.path.dirname(copies[0]) == str(store_dir)
    assert os.path.basename(copies[0]) in inspect_store(store_dir).quarantined_files
    _, again, report = open_store(store_dir, readonly=True)  # the copy is never read
    assert list(again["log"]) == ["a", "b", "c", "d"] and not report.recovered


def open_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def test_a_missing_journal_that_the_manifest_lists_is_an_error_and_nothing_is_committed(store_dir):
    """Fuzz finding T1: `delete gen-N/log.journal` silently lost every append after gen-N."""
    journal = store_with_journal(store_dir)
    journal.unlink()
    before = snapshot(store_dir)
    for readonly in (True, False):
        with pytest.raises(IntegrityError) as caught:
            open_store(store_dir, readonly=readonly)
        assert caught.value.path == str(journal) and caught.value.member == "log"
        assert str(journal) in str(caught.value) and "missing" in str(caught.value)
        assert "create an empty file" in str(caught.value)
        assert snapshot(store_dir) == before  # no quarantine, no checkpoint over the lost appends

    problems = inspect_store(store_dir, verify=True).problems
    assert any("log.journal" in p and "missing" in p for p in problems), problems

    # The advice works: an empty journal accepts the loss, and the checkpoint loads.
    journal.write_bytes(b"")
    _, parts, report = open_store(store_dir, readonly=True)
    assert list(parts["log"]) == [] and parts["counter"].value == 2
    assert gens.gen_name(report.generation) == journal.parent.name and not report.recovered
