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
from pathlib import Path

import pytest

from app.spool.store import Row, Store

SEED = int(os.environ.get("SPOOL_TEST_SEED") or random.SystemRandom().randrange(1 << 32))


def records(prefix: str, count: int) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    return [
        (f"key-{i % 3}".encode(), f"{prefix}-{i}-".encode() + bytes(range(256)), [("event-id", f"{prefix}-{i}".encode())])
        for i in range(count)
    ]


def contents(rows: list[Row]) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    return [(row.key, row.value, row.headers) for row in rows]


def opened(directory: Path) -> tuple[Store, list[Row]]:
    store = Store(directory, "application")
    store.open()
    return store, list(store.rows())


def test_rows_come_back_in_order_and_a_deleted_seq_is_never_reused(tmp_path: Path) -> None:
    store = Store(tmp_path, "application")
    assert store.open().events == 0
    first = store.append(records("a", 5), 1.0)
    assert [row.seq for row in store.rows()] == list(range(first, first + 5))
    store.delete(list(range(first, first + 5)), handed_through=first + 4)
    again = store.append(records("b", 2), 2.0)
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
    first = store.append(records("a", 10), 1.0)
    store.delete([first, first + 1], handed_through=first + 5)  # 6 handed, 2 acknowledged
    store.close()
    state = Store(tmp_path, "application").open()
    assert (state.events, state.handed) == (8, 4)


def crash_copies(tmp_path: Path) -> tuple[Path, Path, int, int]:
    """The files right after commit A and right after commit B, and the log's length after each."""
    live = tmp_path / "live"
    store = Store(live, "application")
    store.open()
    store.append(records("a", 20), 1.0)
    after_a = tmp_path / "after-a"
    shutil.copytree(live, after_a)
    store.append(records("b", 20), 2.0)
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
    store.append(written, 1.0)
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
