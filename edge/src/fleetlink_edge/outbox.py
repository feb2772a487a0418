"""The durable outbox: SQLite (WAL, synchronous=FULL) between the capture and the uplink loops.

The capture loop appends records in group commits; the uplink takes them per lane, publishes
them and acks (deletes) them after the broker's PUBACK. The files never outgrow
``OutboxSettings.max_bytes``: the lowest priority, oldest records are evicted first and counted
per boot and type. docs/outbox.md has the schema, durability settings and counters. This is the
only edge module that imports sqlite3/aiosqlite.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

import aiosqlite

from fleetlink_edge.config import OutboxSettings
from fleetlink_edge.errors import OutboxError
from fleetlink_protocols.codec import decode_record, encode_record
from fleetlink_protocols.errors import ProtocolError
from fleetlink_protocols.records import PRIORITY, Priority, Record, RecordType, SignalValue
from fleetlink_protocols.records import record_type as record_type_of

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 1
_SCHEMA = f"""
BEGIN;
CREATE TABLE records (
    id INTEGER PRIMARY KEY,     -- assigned by the outbox, ascending in append order
    boot_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,       -- per boot, gap-free at append time
    rtype INTEGER NOT NULL,     -- RecordType
    priority INTEGER NOT NULL,  -- Priority: eviction order, and EVENTS lane when >= EVENT
    skey INTEGER NOT NULL,      -- newest-state key: paths.id for signals, else 0
    body BLOB NOT NULL          -- fleetlink_protocols.codec.encode_record
);
CREATE INDEX records_by_priority ON records (priority, id);
CREATE TABLE boots (boot_id INTEGER PRIMARY KEY, next_seq INTEGER NOT NULL);
CREATE TABLE evictions (
    boot_id INTEGER NOT NULL, rtype INTEGER NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (boot_id, rtype)
) WITHOUT ROWID;
CREATE TABLE paths (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""
_ROW_OVERHEAD = 40  # bytes per row beside the body: cell header, keys, the priority index entry
_PAGE_FILL = 0.85  # rowid-ordered appends leave pages nearly full
_IN_CHUNK = 500  # ids per "IN (...)" statement, far below SQLITE_MAX_VARIABLE_NUMBER
_EVENTS = int(Priority.EVENT)  # priorities from here up travel on the EVENTS lane
_KEYED = (int(RecordType.POSITION), int(RecordType.SIGNAL))  # newest one per key goes LIVE
_TYPE_NAMES = {int(t): t.name.lower() for t in RecordType}
_FULL = {sqlite3.SQLITE_FULL}
_CORRUPT = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


class Lane(enum.StrEnum):
    LIVE = "live"
    HISTORY = "history"
    EVENTS = "events"


@dataclass(frozen=True, slots=True)
class Stored:
    """A record read back for publishing: its row ``id`` (for ack/release) and (boot_id, seq)."""

    id: int
    boot_id: int
    seq: int
    record: Record


@dataclass(frozen=True, slots=True)
class Budget:
    """How ``max_bytes`` is split between the database pages and the WAL (all in pages/bytes)."""

    page_size: int
    max_pages: int  # PRAGMA max_page_count: the database file can never grow past this
    wal_bytes: int  # PRAGMA journal_size_limit
    checkpoint_pages: int  # PRAGMA wal_autocheckpoint; leaves WAL room for one large transaction
    chunk_bytes: int  # least evicted at a time, so a full outbox does not evict on every append

    @classmethod
    def of(cls, max_bytes: int, page_size: int) -> Budget:
        wal = min(max(max_bytes // 8, 16 * page_size), 16 << 20)
        return cls(
            page_size=page_size,
            max_pages=(max_bytes - wal) // page_size,
            wal_bytes=wal,
            checkpoint_pages=max(4, min(1000, wal // page_size // 4)),
            chunk_bytes=max(4 * page_size, max_bytes // 256),
        )

    def pages_for(self, nbytes: int) -> int:
        return math.ceil(nbytes / (self.page_size * _PAGE_FILL)) + 2


@dataclass(slots=True)
class _Batch:
    """Rows of one append, with ids and seqs provisionally assigned; applied only on commit."""

    rows: list[tuple[int, int, int, int, int, int, bytes]] = field(default_factory=list)
    new_paths: dict[str, int] = field(default_factory=dict)
    nbytes: int = 0


class _CorruptFileError(OutboxError):
    pass


class Outbox:
    """Durable, bounded store of records awaiting the broker's PUBACK; one per file and process.

    Every method takes one asyncio lock, so each transaction runs alone on the sqlite thread.
    """

    def __init__(self, settings: OutboxSettings, *, boot_id: int) -> None:
        if boot_id < 0:
            raise ValueError("boot_id must be >= 0")
        self._settings = settings
        self._boot_id = boot_id
        self._db: aiosqlite.Connection | None = None
        self._budget = Budget.of(settings.max_bytes, 4096)
        self._lock = asyncio.Lock()
        self._next_id = 1
        self._next_seq = 0
        self._boundary = 0  # ids <= boundary are backlog (HISTORY) unless promoted
        self._promoted: set[int] = set()
        self._latest: dict[tuple[int, int], int] = {}  # (rtype, skey) -> id of newest pending
        self._latest_key: dict[int, tuple[int, int]] = {}
        self._paths: dict[str, int] = {}
        self._inflight: dict[int, bool] = {}  # id -> travels on EVENTS
        self._rows = dict.fromkeys(Lane, 0)  # pending rows per lane, in flight included
        self.counters: dict[str, int] = dict.fromkeys(
            ["appended", "acked", "released", "rejected", "dropped_undecodable", "full_retries"]
            + [f"evicted_{name}" for name in _TYPE_NAMES.values()]
            + ["evicted_total", "corrupt_recovered", "in_flight", "bytes_on_disk"],
            0,
        )

    @property
    def boot_id(self) -> int:
        return self._boot_id

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Outbox:
        """Open or create the file, check it, migrate it. Raises OutboxError."""
        try:
            await self._open()
        except _CorruptFileError as exc:
            if self._settings.on_corrupt != "move_aside":
                raise
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            moved = await asyncio.to_thread(_move_aside, self._settings.path, stamp)
            log.critical("OUTBOX CORRUPT: %s; moved to %s, starting empty", exc, moved)
            await self._open()
            await self._bump_meta("corrupt_recovered")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        async with self._lock:
            await self._close()

    async def _close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                await db.close()

    async def _open(self) -> None:
        path = self._settings.path
        try:
            with _translated(f"cannot open outbox {path}"):
                await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
                self._db = await aiosqlite.connect(path, isolation_level=None)
                await self._configure()
                await self._migrate()
                await self._load_state()
        except OSError as exc:
            await self._close()
            raise OutboxError(f"cannot open outbox {path}: {exc}") from exc
        except BaseException:
            await self._close()
            raise

    async def _configure(self) -> None:
        db = self._conn()
        # One writer per file: a second agent on the same outbox would reuse sequence numbers.
        # Exclusive locking also keeps the WAL index in heap memory (no -shm file).
        await db.execute("PRAGMA locking_mode = EXCLUSIVE")
        await db.execute("PRAGMA busy_timeout = 2000")
        mode = await self._scalar("PRAGMA journal_mode = WAL")
        if mode != "wal":
            raise OutboxError(f"outbox {self._settings.path}: journal_mode is {mode}, not wal")
        # FULL fsyncs the WAL on every commit: NORMAL would survive kill -9 but not power loss.
        await db.execute("PRAGMA synchronous = FULL")
        check = [row[0] for row in await self._fetch("PRAGMA quick_check")]
        if check != ["ok"]:
            raise _CorruptFileError(f"quick_check of {self._settings.path} failed: {check[:3]}")
        self._budget = b = Budget.of(
            self._settings.max_bytes, await self._scalar("PRAGMA page_size")
        )
        await db.execute(f"PRAGMA wal_autocheckpoint = {b.checkpoint_pages}")
        await db.execute(f"PRAGMA journal_size_limit = {b.wal_bytes}")
        if await self._scalar(f"PRAGMA max_page_count = {b.max_pages}") > b.max_pages:
            log.warning(
                "outbox %s is larger than max_bytes; VACUUM shrinks it", self._settings.path
            )

    async def _migrate(self) -> None:
        version = await self._scalar("PRAGMA user_version")
        if version == 0:
            await self._conn().executescript(_SCHEMA)
        elif version != SCHEMA_VERSION:
            raise OutboxError(f"outbox {self._settings.path} has schema {version}, not ours")

    async def _load_state(self) -> None:
        boot = self._boot_id
        async with self._write() as db:
            # Sequences survive acks: keep each boot's next seq above every seq it ever stored.
            await db.execute(
                "INSERT INTO boots (boot_id, next_seq) SELECT boot_id, max(seq) + 1 FROM records"
                " WHERE true GROUP BY boot_id ON CONFLICT (boot_id)"
                " DO UPDATE SET next_seq = max(next_seq, excluded.next_seq)"
            )
            await db.execute("INSERT OR IGNORE INTO boots VALUES (?, 0)", (boot,))
        self._next_seq = await self._scalar("SELECT next_seq FROM boots WHERE boot_id = ?", boot)
        self._next_id = await self._scalar("SELECT coalesce(max(id), 0) + 1 FROM records")
        self._paths = {p: i for i, p in await self._fetch("SELECT id, path FROM paths")}
        for is_event, n in await self._fetch(
            f"SELECT priority >= {_EVENTS}, count(*) FROM records GROUP BY 1"
        ):
            self._rows[Lane.EVENTS if is_event else Lane.HISTORY] = n
        for rtype, skey, id_ in await self._fetch(
            "SELECT rtype, skey, max(id) FROM records WHERE rtype IN (?, ?) GROUP BY rtype, skey",
            _KEYED,
        ):
            self._latest[(rtype, skey)] = id_
            self._latest_key[id_] = (rtype, skey)
        for rtype, n in await self._fetch("SELECT rtype, sum(n) FROM evictions GROUP BY rtype"):
            self._count_evicted(rtype, n)
        for key, value in await self._fetch("SELECT key, value FROM meta"):
            if key in self.counters:
                self.counters[key] = value
        self._mark_boundary()
        await self._refresh_disk_usage()

    # -- the capture side ----------------------------------------------------------------------

    async def append(self, records: Sequence[Record]) -> list[int]:
        """Store ``records`` in ONE transaction; once this returns they survive power loss.

        Assigns the next per-boot sequence numbers and returns the new row ids. A record the
        codec refuses is logged, counted under ``rejected`` and left out. Raises OutboxError
        when the disk is full and nothing is left to evict.
        """
        return await _shielded(self._append(records))

    async def _append(self, records: Sequence[Record]) -> list[int]:
        async with self._lock:
            batch = self._encode(records)
            if not batch.rows:
                return []
            with _translated("outbox append failed"):
                evicted = await self._commit_with_room(batch)
                self._forget(evicted)
                self._apply(batch)
                await self._refresh_disk_usage()
            return [row[0] for row in batch.rows]

    def _encode(self, records: Sequence[Record]) -> _Batch:
        batch = _Batch()
        next_id, seq, next_path = self._next_id, self._next_seq, len(self._paths) + 1
        for record in records:
            try:
                body = encode_record(record)
            except ProtocolError as exc:
                self.counters["rejected"] += 1
                log.warning("outbox rejected a %s: %r", type(record).__name__, exc)
                continue
            rtype, skey = int(record_type_of(record)), 0
            if isinstance(record, SignalValue):
                skey = self._paths.get(record.path) or batch.new_paths.get(record.path, 0)
                if not skey:
                    skey = batch.new_paths[record.path] = next_path
                    next_path += 1
            row = (next_id, self._boot_id, seq, rtype, int(PRIORITY[RecordType(rtype)]), skey, body)
            batch.rows.append(row)
            batch.nbytes += len(body) + _ROW_OVERHEAD
            next_id, seq = next_id + 1, seq + 1
        return batch

    async def _commit_with_room(self, batch: _Batch) -> list[tuple[int, int, int]]:
        """Insert the batch, evicting first when it would not fit; returns what was evicted."""
        evicted: list[tuple[int, int, int]] = []
        while True:
            try:
                async with self._write() as db:
                    used = await self._used_pages()
                    if used + self._budget.pages_for(batch.nbytes) > self._budget.max_pages:
                        evicted += await self._evict(batch.nbytes)
                    if batch.new_paths:
                        await db.executemany(
                            "INSERT INTO paths VALUES (?, ?)",
                            [(i, p) for p, i in batch.new_paths.items()],
                        )
                    await db.executemany(
                        "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)", batch.rows
                    )
                return evicted
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF not in _FULL:
                    raise
                evicted = []  # rolled back with the rest of the transaction
            # The file reached max_page_count (freed space was too fragmented) or the disk is
            # full: free room in a transaction of its own, then try again.
            self.counters["full_retries"] += 1
            async with self._write():
                freed = await self._evict(batch.nbytes)
            self._forget(freed)
            if not freed:
                raise OutboxError("outbox full: disk full and nothing left to evict")

    def _apply(self, batch: _Batch) -> None:
        self._paths.update(batch.new_paths)
        for id_, _, _, rtype, priority, skey, _ in batch.rows:
            if priority >= _EVENTS:
                self._rows[Lane.EVENTS] += 1
                continue
            self._rows[Lane.LIVE] += 1
            if rtype in _KEYED:
                old = self._latest.get((rtype, skey))
                if old is not None:
                    del self._latest_key[old]
                self._latest[(rtype, skey)] = id_
                self._latest_key[id_] = (rtype, skey)
        self._next_id = batch.rows[-1][0] + 1
        self._next_seq = batch.rows[-1][2] + 1
        self.counters["appended"] += len(batch.rows)

    # -- eviction ------------------------------------------------------------------------------

    async def _evict(self, need_bytes: int) -> list[tuple[int, int, int]]:
        """Delete the lowest-priority, oldest rows (not in flight) worth at least a chunk.

        Runs inside the caller's transaction; counts go to the evictions table in it too.
        Returns (id, boot_id, rtype) of the deleted rows.
        """
        db, target, freed = self._conn(), max(need_bytes, self._budget.chunk_bytes), 0
        chosen: list[int] = []
        for priority in sorted(Priority):
            after = 0
            while freed < target:
                rows = await self._fetch(
                    "SELECT id, length(body) FROM records INDEXED BY records_by_priority"
                    " WHERE priority = ? AND id > ? ORDER BY id LIMIT 256",
                    (int(priority), after),
                )
                if not rows:
                    break
                for id_, size in rows:
                    after = id_
                    if id_ not in self._inflight and freed < target:
                        chosen.append(id_)
                        freed += size + _ROW_OVERHEAD
        deleted = await self._delete(chosen)
        counts = Counter((boot, rtype) for _, boot, rtype in deleted)
        await db.executemany(
            "INSERT INTO evictions VALUES (?, ?, ?) ON CONFLICT (boot_id, rtype)"
            " DO UPDATE SET n = n + excluded.n",
            [(boot, rtype, n) for (boot, rtype), n in counts.items()],
        )
        return deleted

    async def _delete(self, ids: Sequence[int]) -> list[tuple[int, int, int]]:
        """Delete rows inside the caller's transaction; returns (id, boot_id, rtype) deleted."""
        db, deleted = self._conn(), []
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            deleted += await self._fetch(
                f"DELETE FROM records WHERE id IN ({marks}) RETURNING id, boot_id, rtype", chunk
            )
        if deleted:
            # Deleting the newest rows of this boot must not let a restart reuse their seqs.
            await db.execute(
                "UPDATE boots SET next_seq = max(next_seq, ?) WHERE boot_id = ?",
                (self._next_seq, self._boot_id),
            )
        return [(id_, boot, rtype) for id_, boot, rtype in deleted]

    def _forget(self, deleted: Iterable[tuple[int, int, int]], *, evicted: bool = True) -> None:
        """Drop committed deletions from the in-memory state (and count evictions)."""
        for id_, _, rtype in deleted:
            self._rows[self._lane_of(id_, PRIORITY[RecordType(rtype)] >= _EVENTS)] -= 1
            self._inflight.pop(id_, None)
            self._promoted.discard(id_)
            key = self._latest_key.pop(id_, None)
            if key is not None:
                del self._latest[key]
            if evicted:
                self._count_evicted(rtype, 1)
        self.counters["in_flight"] = len(self._inflight)

    def _count_evicted(self, rtype: int, n: int) -> None:
        self.counters[f"evicted_{_TYPE_NAMES.get(rtype, 'unknown')}"] = (
            self.counters.get(f"evicted_{_TYPE_NAMES.get(rtype, 'unknown')}", 0) + n
        )
        self.counters["evicted_total"] += n

    # -- the uplink side -----------------------------------------------------------------------

    async def mark_live_boundary(self) -> None:
        """Called by the uplink on every (re)connect: what is pending now becomes backlog.

        The newest Position and the newest SignalValue per path stay on LIVE (they go first);
        records appended later go LIVE.
        """
        async with self._lock:
            self._mark_boundary()

    def _mark_boundary(self) -> None:
        state = self._rows[Lane.LIVE] + self._rows[Lane.HISTORY]
        self._boundary = self._next_id - 1
        self._promoted = set(self._latest.values())
        self._rows[Lane.LIVE] = len(self._promoted)
        self._rows[Lane.HISTORY] = state - len(self._promoted)

    async def take(self, lane: Lane, limit: int) -> list[Stored]:
        """Up to ``limit`` pending records of ``lane``, ONE boot_id, ascending seq.

        LIVE: records appended since the boundary, after the promoted newest state; HISTORY:
        the backlog, oldest boot first; EVENTS: Event and Dtc records of all ages. The entries
        are in flight until ack() or release(); they stay on disk meanwhile.
        """
        if limit <= 0:
            return []
        return await _shielded(self._take(lane, limit))

    async def _take(self, lane: Lane, limit: int) -> list[Stored]:
        async with self._lock:
            with _translated(f"outbox take ({lane}) failed"):
                picked = _one_boot(await self._candidates(lane, limit), self._inflight, limit)
                stored, bad = [], []
                for id_, boot, seq, body in picked:
                    try:
                        stored.append(Stored(id_, boot, seq, decode_record(body)))
                    except ProtocolError as exc:
                        log.error(
                            "outbox dropped undecodable row %d (%d/%d): %r", id_, boot, seq, exc
                        )
                        bad.append(id_)
                if bad:
                    async with self._write():
                        deleted = await self._delete(bad)
                    self._forget(deleted, evicted=False)
                    self.counters["dropped_undecodable"] += len(deleted)
            for entry in stored:
                self._inflight[entry.id] = lane is Lane.EVENTS
            self.counters["in_flight"] = len(self._inflight)
            return stored

    async def _candidates(self, lane: Lane, limit: int) -> list[tuple[int, int, int, bytes]]:
        """Rows of ``lane`` in id order, enough of them to fill ``limit`` after skipping."""
        n = limit + len(self._inflight)
        cols = "SELECT id, boot_id, seq, body FROM records"
        if lane is Lane.EVENTS:
            sql = f"{cols} INDEXED BY records_by_priority WHERE priority >= ? ORDER BY id LIMIT ?"
            return list(await self._fetch(sql, (_EVENTS, n)))
        # "+priority" keeps SQLite on the rowid range instead of the priority index.
        if lane is Lane.HISTORY:
            rows = await self._fetch(
                f"{cols} WHERE id <= ? AND +priority < ? ORDER BY id LIMIT ?",
                (self._boundary, _EVENTS, n + len(self._promoted)),
            )
            return [row for row in rows if row[0] not in self._promoted]
        head: list[tuple[int, int, int, bytes]] = []
        promoted = sorted(i for i in self._promoted if i not in self._inflight)
        for start in range(0, len(promoted), _IN_CHUNK):
            chunk = promoted[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            head += await self._fetch(f"{cols} WHERE id IN ({marks}) ORDER BY id", chunk)
        tail = await self._fetch(
            f"{cols} WHERE id > ? AND +priority < ? ORDER BY id LIMIT ?",
            (self._boundary, _EVENTS, n),
        )
        return head + list(tail)

    async def ack(self, ids: Sequence[int]) -> None:
        """Delete records the broker PUBACKed. Unknown or already deleted ids are ignored."""
        if ids:
            await _shielded(self._ack(ids))

    async def _ack(self, ids: Sequence[int]) -> None:
        async with self._lock:
            with _translated("outbox ack failed"):
                async with self._write():
                    deleted = await self._delete(sorted(set(ids)))
                self._forget(deleted, evicted=False)
                for id_ in ids:  # evicted while in flight: nothing left to delete
                    self._inflight.pop(id_, None)
                self.counters["acked"] += len(deleted)
                self.counters["in_flight"] = len(self._inflight)
                await self._refresh_disk_usage()

    async def release(self, ids: Sequence[int]) -> None:
        """Return taken records to pending (the publish failed); take() offers them again."""
        for id_ in ids:
            if self._inflight.pop(id_, None) is not None:
                self.counters["released"] += 1
        self.counters["in_flight"] = len(self._inflight)

    async def pending_count(self, lane: Lane | None = None) -> int:
        """Records stored and not in flight, in ``lane`` or in all lanes."""
        async with self._lock:
            if lane is None:
                return sum(self._rows.values()) - len(self._inflight)
            busy = sum(1 for i, ev in self._inflight.items() if self._lane_of(i, ev) is lane)
            return self._rows[lane] - busy

    def _lane_of(self, id_: int, is_event: bool) -> Lane:
        if is_event:
            return Lane.EVENTS
        return Lane.LIVE if id_ > self._boundary or id_ in self._promoted else Lane.HISTORY

    async def eviction_counts(self) -> dict[int, dict[str, int]]:
        """Records evicted so far, per boot_id of the evicted records, per record type name."""
        async with self._lock:
            with _translated("outbox eviction_counts failed"):
                rows = await self._fetch("SELECT boot_id, rtype, n FROM evictions")
        counts: dict[int, dict[str, int]] = {}
        for boot, rtype, n in rows:
            counts.setdefault(boot, {})[_TYPE_NAMES.get(rtype, str(rtype))] = n
        return counts

    # -- plumbing ------------------------------------------------------------------------------

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise OutboxError("outbox is not open")
        return self._db

    @contextlib.asynccontextmanager
    async def _write(self) -> Any:
        """One transaction: BEGIN IMMEDIATE ... COMMIT, rolled back on any failure."""
        db = self._conn()
        await db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            await db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # SQLITE_FULL may have rolled back already
                await db.execute("ROLLBACK")
            raise

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return cast(list[tuple[Any, ...]], await self._conn().execute_fetchall(sql, params))

    async def _scalar(self, sql: str, *params: object) -> Any:
        rows = await self._fetch(sql, params)
        return rows[0][0] if rows else None

    async def _used_pages(self) -> int:
        used: int = await self._scalar(
            "SELECT page_count - freelist_count FROM pragma_page_count(), pragma_freelist_count()"
        )
        return used

    async def _bump_meta(self, key: str) -> None:
        async with self._write() as db:
            await db.execute(
                "INSERT INTO meta VALUES (?, 1) ON CONFLICT (key) DO UPDATE SET value = value + 1",
                (key,),
            )
        self.counters[key] += 1

    async def _refresh_disk_usage(self) -> None:
        self.counters["bytes_on_disk"] = await asyncio.to_thread(_disk_usage, self._settings.path)


def _one_boot(
    rows: Iterable[tuple[int, int, int, bytes]], inflight: dict[int, bool], limit: int
) -> list[tuple[int, int, int, bytes]]:
    """The first ``limit`` rows not in flight, cut where the boot_id changes."""
    picked: list[tuple[int, int, int, bytes]] = []
    for row in rows:
        if row[0] in inflight:
            continue
        if picked and row[1] != picked[0][1]:
            break
        picked.append(row)
        if len(picked) == limit:
            break
    return picked


async def _shielded(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion even if the caller is cancelled, so that a transaction that
    committed is never mistaken for one that did not (which would reuse sequence numbers)."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved: the caller is gone, the error was logged by the caller
        raise


@contextlib.contextmanager
def _translated(doing: str) -> Iterator[None]:
    """Map sqlite3 errors to OutboxError, saying whether the disk is full or the file corrupt."""
    try:
        yield
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in _FULL:
            raise OutboxError(f"{doing}: disk full ({exc})") from exc
        if code in _CORRUPT:
            raise _CorruptFileError(f"{doing}: the database file is corrupt ({exc})") from exc
        if code == sqlite3.SQLITE_BUSY:
            raise OutboxError(f"{doing}: the file is in use by another process ({exc})") from exc
        raise OutboxError(f"{doing}: {exc}") from exc


def _disk_usage(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            total += os.stat(f"{path}{suffix}").st_size
    return total


def _move_aside(path: Path, stamp: str) -> Path:
    """Rename the database and its WAL to ``<name>.corrupt-<stamp>[-wal]``; returns the new name."""
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("-wal", "-shm", "-journal", ""):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{suffix}", f"{target}{suffix}")
    return target
