"""The spool's SQLite store: what it keeps, torn tails and flipped bits (real files, no broker).

The torn-write cases copy the database and its write-ahead log the moment after a commit (as a
crash would leave them), truncate or flip the log past the last commit, and open the copy: every
committed record must be there, exactly, and nothing else. The seed of the random positions is
printed; ``SPOOL_TEST_SEED`` replays it.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import zlib
from pathlib import Path

import msgspec
import pytest

from app.spool.store import CHUNK_RECORDS, Batch, Row, Store

SEED = int(os.environ.get("SPOOL_TEST_SEED") or random.SystemRandom().randrange(1 << 32))


def records(prefix: str, count: int) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    return [
        (f"key-{i % 3}".encode(), f"{prefix}-{i}-".encode() + bytes(range(256)), [("event-id", f"{prefix}-{i}".encode())])
        for i in range(count)
    ]


def batch(written: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]) -> list[Batch]:
    """The records as what one request brought."""
    return [(written, sum(len(key) + len(value) for key, value, _ in written))]


def contents(rows: list[Row]) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    return [(row.key, row.value, row.headers) for row in rows]


def opened(directory: Path) -> tuple[Store, list[Row]]:
    store = Store(directory, "application")
    store.open()
    return store, list(store.rows())


def test_rows_come_back_in_order_and_a_deleted_seq_is_never_reused(tmp_path: Path) -> None:
    store = Store(tmp_path, "application")
    assert store.open().events == 0
    first = store.append(batch(records("a", 5)), 1.0).first
    assert [row.seq for row in store.rows()] == list(range(first, first + 5))
    store.delete(list(range(first, first + 5)), handed_through=first + 4)
    again = store.append(batch(records("b", 2)), 2.0).first
    assert again == first + 5
    store.close()
    reopened = Store(tmp_path, "application")
    state = reopened.open()
    assert (state.events, state.handed, state.quarantined) == (2, 0, 0)
    assert contents(list(reopened.rows())) == records("b", 2)
    reopened.close()


def test_rows_handed_out_by_the_last_run_are_counted_at_the_next_open(tmp_path: Path) -> None:
    store = Store(tmp_path, "application")
    store.open()
    firsts = [store.append(batch(records(f"a{n}", 2)), 1.0).first for n in range(5)]
    store.delete([firsts[0]], handed_through=firsts[0] + 5)  # 6 handed, the first chunk's 2 acknowledged
    store.close()
    state = Store(tmp_path, "application").open()
    assert (state.events, state.handed) == (8, 4)


def test_requests_are_put_together_in_chunks_and_a_commit_deletes_acknowledged_ones(tmp_path: Path) -> None:
    store = Store(tmp_path, "application")
    store.open()
    written = [(b"k", f"v{i}".encode(), [("event-id", f"{i}".encode())]) for i in range(CHUNK_RECORDS + 10)]
    one_each = [batch([record])[0] for record in written]
    appended = store.append(one_each, 1.0)
    first = appended.first
    assert [chunk[:2] for chunk in appended.chunks] == [(first, CHUNK_RECORDS), (first + CHUNK_RECORDS, 10)]
    assert appended.chunks[0][2] == sum(size for _, size in one_each[:CHUNK_RECORDS])
    # A request larger than a chunk is a chunk of its own.
    [(large_records, large_size)] = batch(records("large", CHUNK_RECORDS + 1))
    large = store.append([(large_records, large_size)], 1.5)
    assert large.chunks == [(first + CHUNK_RECORDS + 10, CHUNK_RECORDS + 1, large_size)]
    again = store.append(
        batch(records("b", 3)), 2.0, delete=[first, large.first], handed_through=first + CHUNK_RECORDS - 1
    )
    assert again.first == large.first + CHUNK_RECORDS + 1
    # A read from the middle of a chunk gives the whole chunk; the records before are the caller's to skip.
    chunks, damaged, lost = store.read(first + CHUNK_RECORDS + 4, 1)
    assert ([(chunk.seq, chunk.count) for chunk in chunks], damaged, lost) == ([(first + CHUNK_RECORDS, 10)], [], 0)
    assert contents(list(store.rows())) == written[CHUNK_RECORDS:] + records("b", 3)
    store.close()
    state = Store(tmp_path, "application").open()
    assert (state.events, state.handed, state.last) == (13, 0, again.first + 2)


def test_a_spool_written_a_row_per_record_is_read_as_chunks(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / "application.sqlite", isolation_level=None)
    old.executescript(
        "CREATE TABLE spool (seq INTEGER PRIMARY KEY, key BLOB NOT NULL, value BLOB NOT NULL, headers BLOB NOT NULL,"
        " crc INTEGER NOT NULL, created REAL NOT NULL);"
        "CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
    )
    written = records("a", 5)
    for seq, (key, value, headers) in enumerate(written, start=1):
        packed = msgspec.msgpack.encode(headers)
        checksum = zlib.crc32(packed, zlib.crc32(value, zlib.crc32(key))) ^ (seq == 3)  # the third one damaged
        old.execute("INSERT INTO spool VALUES (?, ?, ?, ?, ?, ?)", (seq, key, value, packed, checksum, 1.0))
    old.close()
    store = Store(tmp_path, "application")
    state = store.open()
    assert (state.events, state.quarantined) == (4, 1)
    assert contents(list(store.rows())) == written[:2] + written[3:]
    store.close()


def crash_copies(tmp_path: Path) -> tuple[Path, Path, int, int]:
    """The files right after commit A and right after commit B, and the log's length after each."""
    live = tmp_path / "live"
    store = Store(live, "application")
    store.open()
    store.append(batch(records("a", 20)), 1.0)
    after_a = tmp_path / "after-a"
    shutil.copytree(live, after_a)
    store.append(batch(records("b", 20)), 2.0)
    after_b = tmp_path / "after-b"
    shutil.copytree(live, after_b)
    store.close()
    wal_a = (after_a / "application.sqlite-wal").stat().st_size
    wal_b = (after_b / "application.sqlite-wal").stat().st_size
    assert wal_b > wal_a > 0
    return after_a, after_b, wal_a, wal_b


def test_a_torn_tail_keeps_every_commit_before_it_and_nothing_of_itself(tmp_path: Path) -> None:
    print(f"SPOOL_TEST_SEED={SEED}")
    after_a, after_b, wal_a, wal_b = crash_copies(tmp_path)
    committed = records("a", 20)
    offsets = sorted({wal_a, wal_b - 1, *random.Random(SEED).sample(range(wal_a, wal_b), 40)})
    for offset in offsets:
        case = tmp_path / f"torn-{offset}"
        shutil.copytree(after_b, case)
        with open(case / "application.sqlite-wal", "r+b") as wal:
            wal.truncate(offset)
        store, rows = opened(case)
        store.close()
        assert contents(rows) == committed, f"SPOOL_TEST_SEED={SEED} offset {offset}"


def test_flipped_bits_in_the_tail_never_give_a_wrong_record_nor_lose_a_committed_one(tmp_path: Path) -> None:
    print(f"SPOOL_TEST_SEED={SEED}")
    _, after_b, wal_a, wal_b = crash_copies(tmp_path)
    both = records("a", 20) + records("b", 20)
    chosen = random.Random(SEED + 1)
    for case_number in range(40):
        position, bit = chosen.randrange(wal_a, wal_b), chosen.randrange(8)
        case = tmp_path / f"flip-{case_number}"
        shutil.copytree(after_b, case)
        with open(case / "application.sqlite-wal", "r+b") as wal:
            wal.seek(position)
            byte = wal.read(1)[0]
            wal.seek(position)
            wal.write(bytes([byte ^ (1 << bit)]))
        store, rows = opened(case)
        store.close()
        # The log's checksums drop the damaged frame and every one after it: commit B goes, A stays.
        assert contents(rows) in (both[:20], both), f"SPOOL_TEST_SEED={SEED} byte {position} bit {bit}"


def test_a_damaged_database_is_quarantined_and_every_record_read_back_is_a_written_one(tmp_path: Path) -> None:
    print(f"SPOOL_TEST_SEED={SEED}")
    live = tmp_path / "live"
    store = Store(live, "application")
    store.open()
    written = records("a", 300)
    store.append(batch(written), 1.0)
    store.close()  # the last close moves the log into the database file
    size = (live / "application.sqlite").stat().st_size
    chosen = random.Random(SEED + 2)
    quarantined_somewhere = False
    for case_number in range(30):
        case = tmp_path / f"damaged-{case_number}"
        shutil.copytree(live, case)
        with open(case / "application.sqlite", "r+b") as db:
            for _ in range(8):
                position = chosen.randrange(4096, size)  # past the header page, where the rows are
                db.seek(position)
                byte = db.read(1)[0]
                db.seek(position)
                db.write(bytes([byte ^ 0xFF]))
        damaged = Store(case, "application")
        state = damaged.open()
        rows = list(damaged.rows())
        damaged.close()
        known = {_hashable(w) for w in written}
        assert all(_hashable(item) in known for item in contents(rows)), f"SPOOL_TEST_SEED={SEED} case {case_number}"
        if state.quarantined or damaged.damaged:
            quarantined_somewhere = True
    assert quarantined_somewhere, f"SPOOL_TEST_SEED={SEED}: no damage was noticed in 30 cases"


def _hashable(item: tuple[bytes, bytes, list[tuple[str, bytes]]]) -> tuple[bytes, bytes, tuple[tuple[str, bytes], ...]]:
    return item[0], item[1], tuple(item[2])
