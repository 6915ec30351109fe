"""The spool's on-disk store: one SQLite database per stream, in WAL mode with ``synchronous=FULL``.

The only code that touches ``sqlite3``. Every function blocks: the trio side calls them in a
worker thread, one at a time per store (a limiter of one).

Why SQLite: its write-ahead log already is the crash-safe segment log a spool needs. A commit
returns once its frames are fsynced; a frame torn by a crash fails its checksum and is ignored
at the next open, with everything committed before it intact. The main database has no page
checksums, so every row carries a CRC-32 of its key, value and headers: a row whose CRC does not
match is never handed out; it is quarantined and counted.

A row's ``seq`` is its place in the spool (INTEGER PRIMARY KEY: rowid order is append order).
Deleting a row is the checkpoint that says Kafka has it: a row is deleted only in a committed
transaction after Kafka acknowledged it, so what is on disk is exactly what is not yet known
to be delivered. ``meta.handed`` keeps the highest seq handed to Kafka by the last run, so a
restart can count the rows it may send twice.
"""

from __future__ import annotations

import os
import sqlite3
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from app.core import Headers

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    headers BLOB NOT NULL,
    crc INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_encode_headers = msgspec.msgpack.Encoder().encode
_decode_headers = msgspec.msgpack.Decoder(list[tuple[str, bytes]]).decode


class SpoolError(Exception):
    """The spool could not write or read (disk full, I/O error): the events of that step are not spooled."""


class SpoolCorrupt(SpoolError):
    """The database file cannot be read as a spool."""


@dataclass(frozen=True, slots=True)
class Row:
    seq: int
    key: bytes
    value: bytes
    headers: Headers
    created: float

    @property
    def size(self) -> int:
        return len(self.key) + len(self.value)


def crc(key: bytes, value: bytes, headers: bytes) -> int:
    return zlib.crc32(headers, zlib.crc32(value, zlib.crc32(key)))


@dataclass(frozen=True, slots=True)
class Opened:
    """What opening a store found: rows and bytes spooled, the oldest row's time, rows a previous
    run may have handed to Kafka already, and rows quarantined because they could not be read."""

    events: int
    bytes: int
    oldest: float | None
    handed: int
    quarantined: int


class Store:
    """One stream's spool database (``<directory>/<name>.sqlite``)."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.path = directory / f"{name}.sqlite"
        self._name = name
        self._db: sqlite3.Connection | None = None
        self.damaged = 0  # rows read() found damaged (their CRC did not match) and deleted

    # -- opening, with salvage ------------------------------------------------------------

    def open(self) -> Opened:
        """Open (or create) the database; a damaged one is moved to ``quarantine/`` and what can
        be read of it is copied into a new one. Blocking."""
        self.directory.mkdir(parents=True, exist_ok=True)
        quarantined = 0
        try:
            self._db = self._connect(self.path)
            self._check(self._db)
        except (sqlite3.DatabaseError, SpoolCorrupt):
            self.close()
            quarantined = self._salvage()
        return self._opened(quarantined)

    def _connect(self, path: Path) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
        except sqlite3.OperationalError as error:
            raise SpoolError(f"{path}: {error}") from None
        return db

    def _check(self, db: sqlite3.Connection) -> None:
        result = db.execute("PRAGMA quick_check").fetchone()
        if result is None or result[0] != "ok":
            raise SpoolCorrupt(f"{self.path}: {result[0] if result else 'no answer'}")

    def salvage(self) -> int:
        """After a read found the database damaged: quarantine it and keep what reads back whole;
        how many rows could not be kept. Blocking."""
        self.close()
        return self._salvage()

    def _salvage(self) -> int:
        """Move the damaged files aside and copy every row that reads back whole (its CRC intact)."""
        quarantine = self.directory / "quarantine"
        quarantine.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        moved = quarantine / f"{self._name}-{stamp}.sqlite"
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                os.replace(source, f"{moved}{suffix}")
        self._db = self._connect(self.path)
        kept, lost = self._copy_readable(moved)
        if kept:
            self._insert_rows(kept)
        return lost

    def _copy_readable(self, damaged: Path) -> tuple[list[Row], int]:
        """The rows of a damaged database that read back whole, and a count of those that did not."""
        kept: list[Row] = []
        lost = 0
        try:
            source = sqlite3.connect(f"file:{damaged}?mode=ro", uri=True, isolation_level=None)
        except sqlite3.DatabaseError:
            return kept, 0
        try:
            try:
                low, high = source.execute("SELECT min(seq), max(seq) FROM spool").fetchone()
            except sqlite3.DatabaseError:
                return kept, 0
            if low is None:
                return kept, 0
            # Ranges of seqs, narrowed down around pages that cannot be read.
            stack = [(int(low), int(high))]
            while stack:
                first, last = stack.pop()
                try:
                    rows = source.execute(
                        "SELECT seq, key, value, headers, crc, created FROM spool WHERE seq BETWEEN ? AND ? ORDER BY seq",
                        (first, last),
                    ).fetchall()
                except sqlite3.DatabaseError:
                    if first == last:
                        lost += 1
                    else:
                        middle = (first + last) // 2
                        stack += [(middle + 1, last), (first, middle)]
                    continue
                for seq, key, value, headers, checksum, created in rows:
                    row = _row(seq, key, value, headers, checksum, created)
                    if row is None:
                        lost += 1
                    else:
                        kept.append(row)
        finally:
            source.close()
        kept.sort(key=lambda row: row.seq)
        return kept, lost

    def reopened(self) -> Opened:
        """The state of the open store (after a salvage). Blocking."""
        return self._opened(0)

    def _opened(self, quarantined: int) -> Opened:
        db = self._connection()
        events, size = db.execute("SELECT count(*), coalesce(sum(length(key) + length(value)), 0) FROM spool").fetchone()
        oldest = self._oldest_created(db)
        found = db.execute("SELECT value FROM meta WHERE name = 'handed'").fetchone()
        handed_through = int(found[0]) if found else 0
        handed = db.execute("SELECT count(*) FROM spool WHERE seq <= ?", (handed_through,)).fetchone()[0]
        return Opened(int(events), int(size), oldest, int(handed), quarantined)

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise SpoolError(f"{self.path} is not open")
        return self._db

    def close(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None

    # -- writing ------------------------------------------------------------------------

    def append(self, records: Sequence[tuple[bytes, bytes, Headers]], created: float) -> int:
        """Append records in one transaction, fsynced before it returns; the seq of the first. Blocking."""
        db = self._connection()
        rows = []
        for key, value, headers in records:
            packed = _encode_headers(headers)
            rows.append((key, value, packed, crc(key, value, packed), created))
        try:
            db.execute("BEGIN IMMEDIATE")
            last = db.execute("SELECT coalesce(max(seq), 0) FROM spool").fetchone()[0]
            found = db.execute("SELECT value FROM meta WHERE name = 'next'").fetchone()
            first = max(int(last), int(found[0]) if found else 0) + 1
            db.executemany(
                "INSERT INTO spool (seq, key, value, headers, crc, created) VALUES (?, ?, ?, ?, ?, ?)",
                [(first + index, *row) for index, row in enumerate(rows)],
            )
            db.execute(
                "INSERT INTO meta (name, value) VALUES ('next', ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (first + len(rows) - 1,),
            )
            db.execute("COMMIT")
        except sqlite3.Error as error:
            _rollback(db)
            raise SpoolError(str(error)) from None
        return int(first)

    def _insert_rows(self, rows: Sequence[Row]) -> None:
        db = self._connection()
        try:
            db.execute("BEGIN IMMEDIATE")
            for row in rows:
                packed = _encode_headers(row.headers)
                db.execute(
                    "INSERT INTO spool (seq, key, value, headers, crc, created) VALUES (?, ?, ?, ?, ?, ?)",
                    (row.seq, row.key, row.value, packed, crc(row.key, row.value, packed), row.created),
                )
            db.execute("COMMIT")
        except sqlite3.Error as error:
            _rollback(db)
            raise SpoolError(str(error)) from None

    def delete(self, seqs: Sequence[int], handed_through: int) -> float | None:
        """Delete rows Kafka acknowledged, and note how far this run has handed rows out; when the
        oldest row left was appended. Blocking."""
        db = self._connection()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("DELETE FROM spool WHERE seq = ?", [(seq,) for seq in seqs])
            db.execute(
                "INSERT INTO meta (name, value) VALUES ('handed', ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (handed_through,),
            )
            db.execute("COMMIT")
            return self._oldest_created(db)
        except sqlite3.Error as error:
            _rollback(db)
            raise SpoolError(str(error)) from None

    def drop_oldest(self, size: int) -> tuple[int, int, int, float | None]:
        """Delete the oldest rows holding at least ``size`` bytes: how many rows and bytes went, the
        highest seq dropped, and when the oldest row left was appended. Blocking."""
        db = self._connection()
        dropped_bytes = 0
        try:
            db.execute("BEGIN IMMEDIATE")
            cursor = db.execute("SELECT seq, length(key) + length(value) FROM spool ORDER BY seq")
            doomed: list[int] = []
            for seq, row_bytes in cursor:
                if dropped_bytes >= size:
                    break
                doomed.append(int(seq))
                dropped_bytes += int(row_bytes)
            cursor.close()
            db.executemany("DELETE FROM spool WHERE seq = ?", [(seq,) for seq in doomed])
            db.execute("COMMIT")
            dropped, through = len(doomed), (doomed[-1] if doomed else 0)
            return dropped, dropped_bytes, through, self._oldest_created(db)
        except sqlite3.Error as error:
            _rollback(db)
            raise SpoolError(str(error)) from None

    @staticmethod
    def _oldest_created(db: sqlite3.Connection) -> float | None:
        found = db.execute("SELECT created FROM spool ORDER BY seq LIMIT 1").fetchone()
        return float(found[0]) if found else None

    # -- reading ------------------------------------------------------------------------

    def read(self, after: int, limit: int) -> tuple[list[Row], int]:
        """Up to ``limit`` rows after seq ``after``, in order, and how many were skipped as damaged
        (their CRC does not match: deleted, never handed out). Blocking."""
        db = self._connection()
        try:
            fetched = db.execute(
                "SELECT seq, key, value, headers, crc, created FROM spool WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        except sqlite3.OperationalError as error:
            raise SpoolError(str(error)) from None
        except sqlite3.DatabaseError as error:
            raise SpoolCorrupt(f"{self.path}: {error}") from None
        rows: list[Row] = []
        damaged: list[int] = []
        for seq, key, value, headers, checksum, created in fetched:
            row = _row(seq, key, value, headers, checksum, created)
            if row is None:
                damaged.append(seq)
            else:
                rows.append(row)
        if damaged:
            self.damaged += len(damaged)
            try:
                db.executemany("DELETE FROM spool WHERE seq = ?", [(seq,) for seq in damaged])
            except sqlite3.Error as error:
                raise SpoolError(str(error)) from None
        return rows, len(damaged)

    def rows(self) -> Iterator[Row]:
        """Every row in order (tests and the CLI). Blocking."""
        after = 0
        while True:
            batch, _ = self.read(after, 1000)
            if not batch:
                return
            yield from batch
            after = batch[-1].seq


def _row(seq: int, key: bytes, value: bytes, headers: bytes, checksum: int, created: float) -> Row | None:
    if not (isinstance(key, bytes) and isinstance(value, bytes) and isinstance(headers, bytes)):
        return None
    if crc(key, value, headers) != checksum:
        return None
    try:
        decoded = _decode_headers(headers)
    except msgspec.DecodeError:
        return None
    return Row(int(seq), key, value, [(name, data) for name, data in decoded], float(created))


def _rollback(db: sqlite3.Connection) -> None:
    try:
        db.execute("ROLLBACK")
    except sqlite3.Error:
        pass
