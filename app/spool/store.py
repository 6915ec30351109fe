"""The spool's on-disk store: one SQLite database per stream, in WAL mode with ``synchronous=FULL``.

The only code that touches ``sqlite3``. Every function blocks: the trio side calls them in a
worker thread, one at a time per store (a limiter of one).

Why SQLite: its write-ahead log already is the crash-safe segment log a spool needs. A commit
returns once its frames are fsynced; a frame torn by a crash fails its checksum and is ignored
at the next open, with everything committed before it intact. The main database has no page
checksums, so every row carries a CRC-32 of what it holds: a row whose CRC does not match is
never handed out; it is set aside in ``quarantine/`` and counted.

A row is a **chunk**: the records of one group commit (split at ``CHUNK_RECORDS`` records or
``CHUNK_BYTES`` bytes), msgpack-encoded in one blob with one CRC. Writing, checking and deleting
a chunk costs what one record did when a row held a record: per-row work, not per-record work,
is what a SQLite spool spends its time on (measured: 11 µs per record appended one row each).
Records are numbered: a chunk's ``seq`` (INTEGER PRIMARY KEY, so rowid order is append order) is
its first record's, its records follow without gaps, and a seq is never used twice.

Deleting a chunk is the checkpoint that says Kafka has all of its records: a chunk is deleted
only in a committed transaction after Kafka acknowledged each of them, so what is on disk is
exactly what is not yet known to be delivered (a chunk partly acknowledged at a crash is sent
again whole). ``meta.handed`` keeps the highest seq handed to Kafka by the last run, so a
restart can count the records it may send twice.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from app.core import Headers

# A group commit's requests are put together in chunks of up to this many records or (keys +
# values) bytes, a request larger than that in a chunk of its own: a damaged chunk loses no more
# than that, and the feeder reads no more than that past its need.
CHUNK_RECORDS: Final = 1000
CHUNK_BYTES: Final = 256 * 1024
# The most rows one INSERT into ``steps`` takes (7 parameters each; SQLite allows 32,766).
STEPS_PER_STATEMENT: Final = 4096
# Pages of 16 KiB: a chunk fills a few pages, not dozens, and each page is a frame of the log to
# write, checksum and later copy back (measured for batches of 500: 1.7 times less CPU per record
# than 4 KiB pages). Not larger: every commit writes whole pages, and a single event's commit with
# 64 KiB pages wrote 128 KiB and its checkpoints 64 MiB at a time (p99 twice as long).
PAGE_SIZE: Final = 16384

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    seq INTEGER PRIMARY KEY,
    count INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    records BLOB NOT NULL,
    crc INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- A commit is one INSERT into this view, whose rows say what to do and whose triggers do it: an
-- append, a delete and the meta values in one statement, so in one call into SQLite. The writer
-- thread gives the GIL up and takes it back once per call, and under load taking it back waits
-- for the busy trio thread (measured: 5 to 14 ms per call with one statement each).
CREATE VIEW IF NOT EXISTS steps AS
    SELECT '' AS op, 0 AS seq, 0 AS count, 0 AS bytes, x'' AS records, 0 AS crc, 0.0 AS created;
CREATE TRIGGER IF NOT EXISTS step_append INSTEAD OF INSERT ON steps WHEN NEW.op = 'append' BEGIN
    INSERT INTO chunks (seq, count, bytes, records, crc, created)
        VALUES (NEW.seq, NEW.count, NEW.bytes, NEW.records, NEW.crc, NEW.created);
END;
CREATE TRIGGER IF NOT EXISTS step_delete INSTEAD OF INSERT ON steps WHEN NEW.op = 'delete' BEGIN
    DELETE FROM chunks WHERE seq = NEW.seq;
END;
CREATE TRIGGER IF NOT EXISTS step_meta INSTEAD OF INSERT ON steps WHEN NEW.op IN ('next', 'handed') BEGIN
    INSERT OR REPLACE INTO meta (name, value) VALUES (NEW.op, NEW.seq);
END;
"""
_COLUMNS = "seq, count, bytes, records, crc, created"
_NO_STEP: Final = ("", 0, 0, 0, None, 0, 0.0)  # fills a statement up to its size: no trigger fires

StoredRecord = tuple[bytes, bytes, Headers]
# Records and their bytes (keys and values): what one request brought.
Batch = tuple[Sequence[StoredRecord], int]
Step = tuple[str, int, int, int, bytes | None, int, float]
_encode_records = msgspec.msgpack.Encoder().encode
_decode_records = msgspec.msgpack.Decoder(list[tuple[bytes, bytes, list[tuple[str, bytes]]]]).decode
_HEAD = struct.Struct("<qqq")
_CRC_PIECE: Final = 4096


# What a damaged file raises: SQLite's errors, or a UnicodeDecodeError when SQLite's message
# quotes damaged bytes (a damaged schema, say).
_DAMAGED: Final = (sqlite3.DatabaseError, UnicodeDecodeError)
_FAILED: Final = (sqlite3.Error, UnicodeDecodeError)


class SpoolError(Exception):
    """The spool could not write or read (disk full, I/O error): the events of that step are not spooled."""


class SpoolCorrupt(SpoolError):
    """The database file cannot be read as a spool."""


@dataclass(frozen=True, slots=True)
class Row:
    """One spooled record, as :meth:`Store.rows` gives it."""

    seq: int
    key: bytes
    value: bytes
    headers: Headers
    created: float

    @property
    def size(self) -> int:
        return len(self.key) + len(self.value)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One row: records ``seq`` to ``seq + count - 1``, holding ``size`` bytes of keys and values."""

    seq: int
    count: int
    size: int
    created: float
    records: list[StoredRecord]

    @property
    def end(self) -> int:
        """The seq after its last record."""
        return self.seq + self.count


@dataclass(frozen=True, slots=True)
class Appended:
    """Where a commit put its records: chunks as first seq, record count and bytes, in order."""

    chunks: list[tuple[int, int, int]]

    @property
    def first(self) -> int:
        return self.chunks[0][0] if self.chunks else 0


def crc(seq: int, count: int, size: int, records: bytes) -> int:
    value = zlib.crc32(_HEAD.pack(seq, count, size))
    # In pieces under 5 KiB, for which zlib keeps the GIL: for a larger buffer it gives the GIL up,
    # and the writer thread then waits for the busy trio thread to get it back, once per chunk.
    view = memoryview(records)
    for start in range(0, len(view), _CRC_PIECE):
        value = zlib.crc32(view[start:start + _CRC_PIECE], value)
    return value


@dataclass(frozen=True, slots=True)
class Opened:
    """What opening a store found: records and bytes spooled, the oldest one's time, the last
    seq used, records a previous run may have handed to Kafka already, and records quarantined
    because they could not be read."""

    events: int
    bytes: int
    oldest: float | None
    last: int
    handed: int
    quarantined: int


class Store:
    """One stream's spool database (``<directory>/<name>.sqlite``)."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.path = directory / f"{name}.sqlite"
        self.quarantine = directory / "quarantine"
        self._name = name
        self._db: sqlite3.Connection | None = None
        self._next: int | None = None  # the seq the next record gets, once known
        self.damaged = 0  # records read() found damaged (their chunk's CRC did not match) and set aside
        # The writer thread, the feeder's reads and the opening share one connection, one call at a time.
        self._lock = threading.RLock()

    # -- opening, with salvage ------------------------------------------------------------

    def open(self) -> Opened:
        """Open (or create) the database; a damaged one is moved to ``quarantine/`` and what can
        be read of it is copied into a new one. Blocking."""
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            quarantined = 0
            try:
                self._db = self._connect(self.path)
                self._check(self._db)
                quarantined = self._migrate(self._db)
            except (*_DAMAGED, SpoolCorrupt):
                self.close()
                quarantined = self._salvage()
            return self._opened(quarantined)

    def quarantined_files(self) -> int:
        """How many damaged files this stream's ``quarantine/`` holds (of this run or earlier ones). Blocking."""
        try:
            files = self.quarantine.glob(f"{self._name}-*")
            return sum(1 for path in files if not path.name.endswith(("-wal", "-shm")))
        except OSError:
            return 0

    def _connect(self, path: Path) -> sqlite3.Connection:
        self._next = None
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")  # for a new database; an existing one keeps its own
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
        # The schema is text in the file, unchecked by quick_check: a damaged trigger that still
        # parses could make a commit that writes nothing.
        if _schema(db) != _expected_schema():
            raise SpoolCorrupt(f"{self.path}: its schema is damaged")

    def _migrate(self, db: sqlite3.Connection) -> int:
        """A spool written a row per record (table ``spool``) becomes chunks: the rows whose CRC
        holds are appended in their order, the others counted; then the old table goes."""
        if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'spool'").fetchone() is None:
            return 0
        kept: list[StoredRecord] = []
        lost = 0
        created = time.time()
        for key, value, headers, checksum, row_created in db.execute(
            "SELECT key, value, headers, crc, created FROM spool ORDER BY seq"
        ):
            record = _old_row(key, value, headers, checksum)
            if record is None:
                lost += 1
            else:
                kept.append(record)
                created = min(created, float(row_created))
        if kept:
            self.append([([record], len(record[0]) + len(record[1])) for record in kept], created)
        db.execute("DROP TABLE spool")
        return lost

    def salvage(self) -> int:
        """After a read found the database damaged: quarantine it and keep what reads back whole;
        how many records could not be kept. Blocking."""
        with self._lock:
            self.close()
            return self._salvage()

    def _salvage(self) -> int:
        """Move the damaged files aside and copy every chunk that reads back whole (its CRC intact)."""
        self.quarantine.mkdir(exist_ok=True)
        moved = self.quarantine / f"{self._name}-{time.strftime('%Y%m%dT%H%M%S')}.sqlite"
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                os.replace(source, f"{moved}{suffix}")
        # No seq the damaged file used is used again: records of it still in flight are acknowledged
        # (and their chunks deleted) by seq.
        used = (self._next or 1) - 1
        self._db = self._connect(self.path)
        kept, lost, last = self._copy_readable(moved)
        self._insert_chunks(kept, max(used, last))
        return lost

    def _copy_readable(self, damaged: Path) -> tuple[list[Chunk], int, int]:
        """The chunks of a damaged database that read back whole, a count of the records of those
        that did not, and the last seq it says it used."""
        kept: list[Chunk] = []
        lost = last = 0
        try:
            source = sqlite3.connect(f"file:{damaged}?mode=ro", uri=True, isolation_level=None)
        except _DAMAGED:
            return kept, 0, 0
        try:
            try:
                last = self._meta(source, "next")
            except _DAMAGED:
                pass
            try:
                low, high = source.execute("SELECT min(rowid), max(rowid) FROM chunks").fetchone()
            except _DAMAGED:
                return kept, 0, last
            if low is None:
                return kept, 0, last
            # Ranges of seqs (the rowid: by position, the schema's names may be damaged too),
            # narrowed down around pages that cannot be read.
            stack = [(int(low), int(high))]
            while stack:
                start, stop = stack.pop()
                try:
                    rows = source.execute(
                        "SELECT * FROM chunks WHERE rowid BETWEEN ? AND ? ORDER BY rowid", (start, stop)
                    ).fetchall()
                except _DAMAGED:
                    if start == stop:
                        lost += 1
                    else:
                        middle = (start + stop) // 2
                        stack += [(middle + 1, stop), (start, middle)]
                    continue
                for row in rows:
                    chunk = _chunk(*row) if len(row) == 6 else None
                    if chunk is None:
                        lost += _claimed_count(row[1] if len(row) > 1 else None)
                    else:
                        kept.append(chunk)
        finally:
            source.close()
        kept.sort(key=lambda chunk: chunk.seq)
        return kept, lost, max([last, int(high)] + [chunk.end - 1 for chunk in kept[-1:]])

    def reopened(self) -> Opened:
        """The state of the open store (after a salvage). Blocking."""
        with self._lock:
            return self._opened(0)

    def _opened(self, quarantined: int) -> Opened:
        db = self._connection()
        events, size = db.execute("SELECT coalesce(sum(count), 0), coalesce(sum(bytes), 0) FROM chunks").fetchone()
        oldest = self._oldest_created(db)
        handed_through = self._meta(db, "handed")
        handed = db.execute(
            "SELECT coalesce(sum(min(count, ? - seq + 1)), 0) FROM chunks WHERE seq <= ?",
            (handed_through, handed_through),
        ).fetchone()[0]
        return Opened(int(events), int(size), oldest, self._next_seq(db) - 1, int(handed), quarantined)

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise SpoolError(f"{self.path} is not open")
        return self._db

    @staticmethod
    def _meta(db: sqlite3.Connection, name: str) -> int:
        found = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return int(found[0]) if found else 0

    def _next_seq(self, db: sqlite3.Connection) -> int:
        if self._next is None:
            last = db.execute("SELECT seq + count - 1 FROM chunks ORDER BY seq DESC LIMIT 1").fetchone()
            self._next = max(int(last[0]) if last else 0, self._meta(db, "next")) + 1
        return self._next

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                try:
                    self._db.close()
                except _FAILED:
                    pass
                self._db = None

    # -- writing ------------------------------------------------------------------------

    def append(
        self, batches: Sequence[Batch], created: float, *, delete: Sequence[int] = (), handed_through: int = -1
    ) -> Appended:
        """Append the records of ``batches`` in one transaction, fsynced before it returns, and in
        the same one delete the chunks ``delete`` names (their first seqs) and note
        ``handed_through`` (as :meth:`delete` does); where the records went. Blocking."""
        with self._lock:
            return self._append(batches, created, delete, handed_through)

    def _append(self, batches: Sequence[Batch], created: float, delete: Sequence[int], handed_through: int) -> Appended:
        db = self._connection()
        try:
            first = self._next_seq(db)
            rows = _chunked(batches, first, created)
            after = rows[-1][1] + rows[-1][2] if rows else first
            steps = [*rows, ("next", after - 1, 0, 0, None, 0, 0.0), *_deletes(delete)]
            if handed_through >= 0:
                steps.append(("handed", handed_through, 0, 0, None, 0, 0.0))
            self._run(db, steps)
        except _FAILED as error:
            raise SpoolError(str(error)) from None
        self._next = after
        return Appended([(row[1], row[2], row[3]) for row in rows])

    @staticmethod
    def _run(db: sqlite3.Connection, steps: list[Step]) -> None:
        """Do ``steps`` in one transaction: one statement when they fit in one."""
        statements = [steps[start:start + STEPS_PER_STATEMENT] for start in range(0, len(steps), STEPS_PER_STATEMENT)]
        if len(statements) == 1:
            _insert_steps(db, statements[0])  # a statement of its own is a transaction of its own
            return
        try:
            db.execute("BEGIN IMMEDIATE")
            for statement in statements:
                _insert_steps(db, statement)
            db.execute("COMMIT")
        except _FAILED:
            _rollback(db)
            raise

    def _insert_chunks(self, chunks: Sequence[Chunk], last: int) -> None:
        steps: list[Step] = []
        for chunk in chunks:
            encoded = _encode_records(chunk.records)
            checksum = crc(chunk.seq, chunk.count, chunk.size, encoded)
            steps.append(("append", chunk.seq, chunk.count, chunk.size, encoded, checksum, chunk.created))
        steps.append(("next", last, 0, 0, None, 0, 0.0))
        try:
            self._run(self._connection(), steps)
        except _FAILED as error:
            raise SpoolError(str(error)) from None
        self._next = None

    def delete(self, seqs: Sequence[int], handed_through: int) -> None:
        """Delete the chunks (named by their first seqs) whose records Kafka all acknowledged, and
        note how far this run has handed records out. Blocking."""
        with self._lock:
            try:
                self._run(self._connection(), [*_deletes(seqs), ("handed", handed_through, 0, 0, None, 0, 0.0)])
            except _FAILED as error:
                raise SpoolError(str(error)) from None

    def oldest(self) -> float | None:
        """When the oldest chunk still spooled was appended. Blocking."""
        with self._lock:
            try:
                return self._oldest_created(self._connection())
            except _FAILED as error:
                raise SpoolError(str(error)) from None

    def drop_oldest(self, size: int) -> tuple[int, int, int, float | None]:
        """Delete the oldest chunks holding at least ``size`` bytes: how many records and bytes
        went, the highest seq dropped, and when the oldest chunk left was appended. Blocking."""
        with self._lock:
            return self._drop_oldest(size)

    def _drop_oldest(self, size: int) -> tuple[int, int, int, float | None]:
        db = self._connection()
        dropped = dropped_bytes = through = 0
        doomed: list[int] = []
        try:
            cursor = db.execute("SELECT seq, count, bytes FROM chunks ORDER BY seq")
            for seq, count, chunk_bytes in cursor:
                if dropped_bytes >= size:
                    break
                doomed.append(int(seq))
                dropped += int(count)
                dropped_bytes += int(chunk_bytes)
                through = int(seq) + int(count) - 1
            cursor.close()
            self._run(db, [*_deletes(doomed), ("next", self._next_seq(db) - 1, 0, 0, None, 0, 0.0)])
            return dropped, dropped_bytes, through, self._oldest_created(db)
        except _FAILED as error:
            raise SpoolError(str(error)) from None

    @staticmethod
    def _oldest_created(db: sqlite3.Connection) -> float | None:
        found = db.execute("SELECT created FROM chunks ORDER BY seq LIMIT 1").fetchone()
        return float(found[0]) if found else None

    # -- reading ------------------------------------------------------------------------

    def read(self, after: int, limit: int) -> tuple[list[Chunk], list[int], int]:
        """The chunks holding the records after seq ``after``, in order, until they hold at least
        ``limit`` of them (the first chunk may begin before ``after``: its earlier records are the
        caller's to skip); the damaged chunks met on the way (their CRC does not match: their
        bytes are copied to ``quarantine/``, their records never handed out; :meth:`set_aside`
        deletes them) and how many records those held. Blocking."""
        with self._lock:
            db = self._connection()
            chunks: list[Chunk] = []
            damaged: list[tuple[int, int, bytes]] = []
            taken = 0
            try:
                # From the chunk holding the record after ``after``: the last one that begins at or before it.
                cursor = db.execute(
                    f"SELECT {_COLUMNS} FROM chunks WHERE seq >= coalesce("
                    "(SELECT seq FROM chunks WHERE seq <= ? ORDER BY seq DESC LIMIT 1), 0) ORDER BY seq",
                    (after + 1,),
                )
                for row in cursor:
                    chunk = _chunk(*row)
                    if chunk is None:
                        damaged.append((row[0], _claimed_count(row[1]), row[3] if isinstance(row[3], bytes) else b""))
                        continue
                    chunks.append(chunk)
                    taken += max(0, chunk.end - max(chunk.seq, after + 1))
                    if taken >= limit:
                        break
                cursor.close()
            except sqlite3.OperationalError as error:
                raise SpoolError(str(error)) from None
            except _DAMAGED as error:
                raise SpoolCorrupt(f"{self.path}: {error}") from None
            if damaged:
                self._keep_for_post_mortem(damaged)
            return chunks, [seq for seq, _, _ in damaged], sum(count for _, count, _ in damaged)

    def _keep_for_post_mortem(self, damaged: Sequence[tuple[int, int, bytes]]) -> None:
        try:
            self.quarantine.mkdir(exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%S")
            for seq, _, blob in damaged:
                with open(self.quarantine / f"{self._name}-{stamp}-chunk-{seq}.msgpack", "wb") as file:
                    file.write(blob)
        except OSError as error:
            raise SpoolError(str(error)) from None

    def set_aside(self, seqs: Sequence[int], lost: int) -> None:
        """Delete the damaged chunks ``read`` met (``lost`` records). Blocking."""
        with self._lock:
            try:
                self._run(self._connection(), _deletes(seqs))
            except _FAILED as error:
                raise SpoolError(str(error)) from None
            self.damaged += lost

    def totals(self) -> tuple[int, int]:
        """Records and bytes spooled, counted afresh. Blocking."""
        with self._lock:
            try:
                events, size = self._connection().execute(
                    "SELECT coalesce(sum(count), 0), coalesce(sum(bytes), 0) FROM chunks"
                ).fetchone()
            except _FAILED as error:
                raise SpoolError(str(error)) from None
            return int(events), int(size)

    def rows(self) -> Iterator[Row]:
        """Every record in order, damaged chunks set aside (tests and the CLI). Blocking."""
        after = 0
        while True:
            chunks, damaged, lost = self.read(after, 1000)
            if damaged:
                self.set_aside(damaged, lost)
                continue
            if not chunks or chunks[-1].end - 1 <= after:
                return
            for chunk in chunks:
                for index, (key, value, headers) in enumerate(chunk.records):
                    if chunk.seq + index > after:
                        yield Row(chunk.seq + index, key, value, list(headers), chunk.created)
            after = chunks[-1].end - 1


def _schema(db: sqlite3.Connection) -> dict[str, str]:
    return dict(db.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name != 'spool'").fetchall())


@functools.cache
def _expected_schema() -> dict[str, str]:
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(_SCHEMA)
        return _schema(db)
    finally:
        db.close()


def _chunked(batches: Sequence[Batch], first: int, created: float) -> list[Step]:
    """The append steps whose chunks hold the records of ``batches``, numbered from ``first``:
    batches put together up to CHUNK_RECORDS or CHUNK_BYTES, a larger one alone."""
    steps: list[Step] = []
    records: list[StoredRecord] = []
    size = 0
    seq = first
    for batch, batch_size in batches:
        if records and (len(records) + len(batch) > CHUNK_RECORDS or size + batch_size > CHUNK_BYTES):
            steps.append(_encoded(records, seq, size, created))
            seq += len(records)
            records, size = [], 0
        records += batch
        size += batch_size
    if records:
        steps.append(_encoded(records, seq, size, created))
    return steps


def _encoded(records: Sequence[StoredRecord], seq: int, size: int, created: float) -> Step:
    encoded = _encode_records(records)
    return "append", seq, len(records), size, encoded, crc(seq, len(records), size, encoded), created


def _deletes(seqs: Sequence[int]) -> list[Step]:
    return [("delete", seq, 0, 0, None, 0, 0.0) for seq in seqs]


def _insert_steps(db: sqlite3.Connection, steps: list[Step]) -> None:
    # Padded to a power of two, so that a few statement texts serve (and stay in the statement cache).
    rows = 1 << max(0, len(steps) - 1).bit_length()
    padded = steps + [_NO_STEP] * (rows - len(steps))
    db.execute(
        f"INSERT INTO steps (op, {_COLUMNS}) VALUES {', '.join(['(?, ?, ?, ?, ?, ?, ?)'] * rows)}",
        [value for step in padded for value in step],
    )


def _chunk(
    seq: object, count: object, size: object, records: object, checksum: object, created: object
) -> Chunk | None:
    """The chunk a row holds, or None when it is not whole (its CRC does not match, or it does not decode)."""
    if not (isinstance(seq, int) and isinstance(count, int) and isinstance(size, int) and isinstance(records, bytes)):
        return None
    if not isinstance(checksum, int) or not isinstance(created, (int, float)):
        return None
    if crc(seq, count, size, records) != checksum:
        return None
    try:
        decoded = _decode_records(records)
    except msgspec.DecodeError:
        return None
    if len(decoded) != count:
        return None
    return Chunk(seq, count, size, float(created), decoded)


def _claimed_count(count: object) -> int:
    """How many records a damaged row says it held (at least one, at most a chunk's worth)."""
    return min(max(count, 1), CHUNK_RECORDS) if isinstance(count, int) else 1


def _old_row(key: object, value: object, headers: object, checksum: object) -> StoredRecord | None:
    """A record of a spool written a row per record, if its CRC (of key, value and headers) holds."""
    if not (isinstance(key, bytes) and isinstance(value, bytes) and isinstance(headers, bytes)):
        return None
    if zlib.crc32(headers, zlib.crc32(value, zlib.crc32(key))) != checksum:
        return None
    try:
        decoded = msgspec.msgpack.decode(headers, type=list[tuple[str, bytes]])
    except msgspec.DecodeError:
        return None
    return key, value, decoded


def _rollback(db: sqlite3.Connection) -> None:
    try:
        db.execute("ROLLBACK")
    except _FAILED:
        pass
