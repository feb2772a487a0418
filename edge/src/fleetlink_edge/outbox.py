"""The durable outbox: SQLite (WAL, synchronous=FULL) between the capture and the uplink loops.

The capture loop appends records in group commits; the uplink takes them per lane, publishes
them and acks (deletes) them after the broker's PUBACK. The files stay within
``OutboxSettings.max_bytes``: the lowest priority, oldest records are evicted first and counted
per boot and type. docs/outbox.md has the schema, durability settings and counters. This is the
only edge module that imports sqlite3/aiosqlite.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import math
import os
import sqlite3
import time
from collections import Counter, deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Coroutine,
    Iterable,
    Iterator,
    Sequence,
    Sized,
)
from dataclasses import dataclass, field
from pathlib import Path
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
Row = tuple[int, int, int, int, int, int, bytes]  # priority, id, boot_id, seq, rtype, skey, body
Deleted = tuple[int, int, int]  # id, boot_id, rtype

SCHEMA_VERSION = 1
_SCHEMA = f"""
BEGIN;
CREATE TABLE records (
    priority INTEGER NOT NULL,  -- Priority: eviction order; EVENTS lane when >= EVENT
    id INTEGER NOT NULL,        -- assigned by the outbox, ascending in append order
    boot_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,       -- per boot, gap-free at append time
    rtype INTEGER NOT NULL,     -- RecordType
    skey INTEGER NOT NULL,      -- newest-state key: paths.id for signals, else 0
    body BLOB NOT NULL,         -- fleetlink_protocols.codec.encode_record
    -- Clustered by priority: eviction and acks delete whole pages at the head of a range
    -- instead of punching holes in every page (which frees no space and bloats the WAL).
    PRIMARY KEY (priority, id)
) WITHOUT ROWID;
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
_ROW_OVERHEAD = 32  # bytes per row beside the body: cell pointer and header, key, columns
_PAGE_FILL = 0.85  # appends at the end of each priority range leave pages nearly full
_IN_CHUNK = 500  # ids per "IN (...)", far below SQLITE_MAX_VARIABLE_NUMBER
_DISK_EVERY = 50  # appends between two bytes_on_disk refreshes
_EVENTS = int(Priority.EVENT)  # priorities from here up travel on the EVENTS lane
_KEYED = (int(RecordType.POSITION), int(RecordType.SIGNAL))  # newest one per key goes LIVE
_ALL = ",".join(str(int(p)) for p in Priority)
_MAX_ID = (1 << 63) - 1
_TYPE_NAMES = {int(t): t.name.lower() for t in RecordType}
_INSERT = "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)"


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
class _Budget:
    """``max_bytes`` split between database pages and WAL."""

    page_size: int
    max_pages: int  # PRAGMA max_page_count: the database file can never grow past it
    wal_bytes: int  # PRAGMA journal_size_limit
    wal_frames: int  # frames that fit in wal_bytes (a WAL frame is a page plus a 24-byte header)
    checkpoint_pages: int  # PRAGMA wal_autocheckpoint; leaves WAL room for a large transaction
    chunk_bytes: int  # least evicted at once, so a full outbox does not evict on every append

    @classmethod
    def of(cls, max_bytes: int, page_size: int) -> _Budget:
        wal = min(max(max_bytes // 8, 16 * page_size), 16 << 20)
        frames = (wal - 32) // (page_size + 24)  # 32: the WAL header
        return cls(
            page_size,
            (max_bytes - wal) // page_size,
            wal,
            frames,
            max(4, min(1000, frames // 4)),
            max(4 * page_size, max_bytes // 256),
        )

    def pages_for(self, nbytes: int) -> int:
        return math.ceil(nbytes / (self.page_size * _PAGE_FILL)) + 2


@dataclass(slots=True)
class _Batch:
    """Rows of one append with provisional ids and seqs; the outbox adopts them on commit."""

    rows: list[Row] = field(default_factory=list)
    new_paths: dict[str, int] = field(default_factory=dict)
    nbytes: int = 0


class _CorruptFileError(OutboxError):
    pass


class Outbox:
    """Durable, bounded store of records awaiting the broker's PUBACK; one per file and process.

    Every method holds one asyncio lock, so each transaction runs alone on the sqlite thread.
    """

    def __init__(self, settings: OutboxSettings, *, boot_id: int) -> None:
        if boot_id < 0:
            raise ValueError("boot_id must be >= 0")
        self._settings, self._boot_id = settings, boot_id
        self._db: aiosqlite.Connection | None = None
        self._budget = _Budget.of(settings.max_bytes, 4096)
        self._room_pages = 0  # pages surely free below max_pages; 0 means "ask SQLite"
        self._lock = asyncio.Lock()
        self._next_id, self._next_seq, self._next_path, self._appends = 1, 0, 1, 0
        self._boundary = 0  # state rows with id <= boundary are HISTORY unless promoted
        self._promoted: set[int] = set()
        self._latest: dict[tuple[int, int], int] = {}  # (rtype, skey) -> newest pending id
        self._latest_key: dict[int, tuple[int, int]] = {}
        self._paths: dict[str, int] = {}
        self._inflight: dict[int, bool] = {}  # id -> travels on EVENTS
        self._rows = dict.fromkeys(Lane, 0)  # pending rows per lane, in flight included
        names = ["appended", "acked", "released", "rejected", "dropped_undecodable"]
        names += [f"evicted_{name}" for name in _TYPE_NAMES.values()]
        names += ["evicted_total", "full_retries", "corrupt_recovered", "in_flight"]
        self.counters: dict[str, int] = dict.fromkeys([*names, "bytes_on_disk"], 0)

    @property
    def boot_id(self) -> int:
        return self._boot_id

    @property
    def next_seq(self) -> int:
        """The sequence number the next stored record of this boot will get."""
        return self._next_seq

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Outbox:
        """Open or create the file, check and migrate it. Raises OutboxError."""
        try:
            await self._open()
        except _CorruptFileError as exc:
            if self._settings.on_corrupt != "move_aside":
                raise
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            moved = await asyncio.to_thread(_move_aside, self._settings.path, stamp)
            log.critical("OUTBOX CORRUPT: %s; moved it to %s and started empty", exc, moved)
            await self._open()
            async with self._write() as db:
                await db.execute("INSERT INTO meta VALUES ('corrupt_recovered', ?)", (1,))
            self.counters["corrupt_recovered"] = 1
        return self

    async def __aexit__(self, *exc_info: object) -> None:
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
                if (version := await self._scalar("PRAGMA user_version")) == 0:
                    await self._conn().executescript(_SCHEMA)
                elif version != SCHEMA_VERSION:
                    raise OutboxError(f"outbox {path} has schema {version}, not {SCHEMA_VERSION}")
                await self._load_state()
        except OSError as exc:
            await self._close()
            raise OutboxError(f"cannot open outbox {path}: {exc}") from exc
        except BaseException:
            await self._close()
            raise

    async def _configure(self) -> None:
        db, path = self._conn(), self._settings.path
        # One writer per file: a second agent on the same outbox would reuse sequence numbers.
        # Exclusive locking also keeps the WAL index in heap memory (no -shm file).
        await db.execute("PRAGMA locking_mode = EXCLUSIVE")
        await db.execute("PRAGMA busy_timeout = 2000")
        if (mode := await self._scalar("PRAGMA journal_mode = WAL")) != "wal":
            raise OutboxError(f"outbox {path}: journal_mode is {mode}, not wal")
        # FULL fsyncs the WAL at every commit: NORMAL survives kill -9 but not a power cut.
        await db.execute("PRAGMA synchronous = FULL")
        if (check := [row[0] for row in await self._fetch("PRAGMA quick_check")]) != ["ok"]:
            raise _CorruptFileError(f"quick_check of {path} failed: {check[:3]}")
        await self._apply_budget(self._settings.max_bytes, await self._scalar("PRAGMA page_size"))

    async def _apply_budget(self, max_bytes: int, page_size: int) -> _Budget:
        db, path = self._conn(), self._settings.path
        self._budget = b = _Budget.of(max_bytes, page_size)
        self._room_pages = 0
        await db.execute(f"PRAGMA wal_autocheckpoint = {b.checkpoint_pages}")
        await db.execute(f"PRAGMA journal_size_limit = {b.wal_bytes}")
        # SQLite keeps max_page_count at the file's size when asked for less.
        if await self._scalar(f"PRAGMA max_page_count = {b.max_pages}") > b.max_pages:
            log.warning("outbox %s is larger than max_bytes; only VACUUM shrinks it", path)
        return b

    async def set_budget(self, max_bytes: int) -> None:
        """Change ``max_bytes`` while running (remote configuration); at least 1 MiB.

        A smaller budget evicts at once what no longer fits (lowest priority, oldest first,
        counted like any eviction); the file keeps its size (only VACUUM shrinks it) and its
        free pages are reused. Raises ValueError or OutboxError.
        """
        if max_bytes < 1 << 20:
            raise ValueError(f"max_bytes must be at least 1 MiB, not {max_bytes}")
        await _shielded(self._set_budget(max_bytes))

    async def _set_budget(self, max_bytes: int) -> None:
        async with self._lock:
            with _translated("outbox set_budget failed"):
                b = await self._apply_budget(max_bytes, self._budget.page_size)
                self._settings = self._settings.model_copy(update={"max_bytes": max_bytes})
                excess = await self._used_pages() - b.max_pages
                if excess > 0:
                    await self._evict(excess * b.page_size)
                log.info("outbox budget is now %d bytes", max_bytes)

    async def _load_state(self) -> None:
        async with self._write() as db:
            # Acks delete rows: keep every boot's next seq above each seq it ever stored.
            await db.execute(
                "INSERT INTO boots (boot_id, next_seq) SELECT boot_id, max(seq) + 1 FROM records"
                " WHERE true GROUP BY boot_id ON CONFLICT (boot_id)"
                " DO UPDATE SET next_seq = max(next_seq, excluded.next_seq)"
            )
            await db.execute("INSERT OR IGNORE INTO boots VALUES (?, 0)", (self._boot_id,))
        q = self._fetch
        self._next_seq = await self._scalar(
            "SELECT next_seq FROM boots WHERE boot_id = ?", self._boot_id
        )
        self._next_id = await self._scalar("SELECT coalesce(max(id), 0) + 1 FROM records")
        self._paths = {path: i for i, path in await q("SELECT id, path FROM paths")}
        self._next_path = max(self._paths.values(), default=0) + 1
        for is_event, n in await q(
            f"SELECT priority >= {_EVENTS}, count(*) FROM records GROUP BY 1"
        ):
            self._rows[Lane.EVENTS if is_event else Lane.HISTORY] = n
        for rtype, skey, id_ in await q(
            "SELECT rtype, skey, max(id) FROM records WHERE rtype IN (?, ?) GROUP BY 1, 2", _KEYED
        ):
            self._latest[(rtype, skey)], self._latest_key[id_] = id_, (rtype, skey)
        for rtype, n in await q("SELECT rtype, sum(n) FROM evictions GROUP BY rtype"):
            self._count_evicted(rtype, n)
        for key, value in await q("SELECT key, value FROM meta"):
            self.counters[key] = value
        self._mark_boundary()
        await self._refresh_disk_usage()

    # -- the capture side ----------------------------------------------------------------------

    async def append(self, records: Sequence[Record]) -> list[int]:
        """Store ``records`` in ONE transaction; once this returns they survive a power cut.

        Gives them the next per-boot sequence numbers; returns their row ids. A record the
        codec refuses is logged, counted as ``rejected`` and left out. Raises OutboxError
        when the disk is full and nothing is left to evict.
        """
        return await _shielded(self._append(records))

    async def _append(self, records: Sequence[Record]) -> list[int]:
        async with self._lock:
            batch = self._encode(records)
            if not batch.rows:
                return []
            with _translated("outbox append failed"):
                await self._commit_with_room(batch)
                self._adopt(batch)
                self._appends += 1
                if self._appends % _DISK_EVERY == 0:
                    await self._refresh_disk_usage()
            return [row[1] for row in batch.rows]

    def _encode(self, records: Sequence[Record]) -> _Batch:
        batch, next_id, seq, next_path = _Batch(), self._next_id, self._next_seq, self._next_path
        for record in records:
            try:
                body = encode_record(record)
            except ProtocolError as exc:
                self.counters["rejected"] += 1
                log.warning("outbox rejected a %s: %r", type(record).__name__, exc)
                continue
            rtype, skey = record_type_of(record), 0
            if isinstance(record, SignalValue):
                skey = self._paths.get(record.path) or batch.new_paths.get(record.path, 0)
                if not skey:
                    skey = batch.new_paths[record.path] = next_path
                    next_path += 1
            batch.rows.append((PRIORITY[rtype], next_id, self._boot_id, seq, rtype, skey, body))
            batch.nbytes += len(body) + _ROW_OVERHEAD
            next_id, seq = next_id + 1, seq + 1
        return batch

    async def _commit_with_room(self, batch: _Batch) -> None:
        """Insert the batch, evicting first (in transactions of their own) to make room."""
        need, budget = self._budget.pages_for(batch.nbytes), self._budget
        if need > budget.max_pages:
            raise OutboxError(
                f"outbox full: {len(batch.rows)} records ({batch.nbytes} bytes) exceed max_bytes"
            )
        for attempt in itertools.count():
            if self._room_pages < need:
                self._room_pages = budget.max_pages - await self._used_pages()
            if self._room_pages < need or attempt:
                freed = await self._evict(batch.nbytes)
                if attempt and not freed:
                    raise OutboxError("outbox full: the disk is full and nothing can be evicted")
                self._room_pages = budget.max_pages - await self._used_pages()
            await self._wal_room(batch.nbytes)
            try:
                async with self._write() as db:
                    if batch.new_paths:
                        rows = [(i, path) for path, i in batch.new_paths.items()]
                        await db.executemany("INSERT INTO paths VALUES (?, ?)", rows)
                    await db.executemany(_INSERT, batch.rows)
                self._room_pages -= need
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                    raise
            # The file reached max_page_count (the estimate was short) or the disk is full:
            # evict more, then try again.
            self._room_pages = 0
            self.counters["full_retries"] += 1

    async def _wal_room(self, nbytes: int) -> None:
        """Empty the WAL first when a transaction writing ``nbytes`` could overrun its budget."""
        budget = self._budget
        # Besides the rows' own pages: the tail page of each priority range, interior pages,
        # the header page and the freelist.
        if budget.pages_for(nbytes) + 12 > budget.wal_frames - budget.checkpoint_pages:
            await self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _adopt(self, batch: _Batch) -> None:
        self._paths.update(batch.new_paths)
        self._next_path += len(batch.new_paths)
        for priority, id_, _, _, rtype, skey, _ in batch.rows:
            if priority >= _EVENTS:
                self._rows[Lane.EVENTS] += 1
                continue
            self._rows[Lane.LIVE] += 1
            if rtype in _KEYED:
                old = self._latest.get((rtype, skey))
                if old is not None:
                    del self._latest_key[old]
                self._latest[(rtype, skey)], self._latest_key[id_] = id_, (rtype, skey)
        self._next_id, self._next_seq = batch.rows[-1][1] + 1, batch.rows[-1][3] + 1
        self.counters["appended"] += len(batch.rows)

    # -- eviction and deletion -----------------------------------------------------------------

    async def _evict(self, need_bytes: int) -> list[Deleted]:
        """Delete the lowest-priority, oldest rows not in flight, at least a chunk's worth.

        One transaction, which also adds the counts per boot and type to ``evictions``.
        """
        target, freed, chosen = max(need_bytes, self._budget.chunk_bytes), 0, []
        for priority in sorted(Priority):
            after = 0
            while freed < target:
                rows = await self._fetch(
                    "SELECT id, length(body) FROM records"
                    " WHERE priority = ? AND id > ? ORDER BY id LIMIT 256",
                    (priority, after),
                )
                for id_, size in rows:
                    if id_ not in self._inflight and freed < target:
                        chosen.append(id_)
                        freed += size + _ROW_OVERHEAD
                if len(rows) < 256:
                    break
                after = rows[-1][0]
        if not chosen:
            return []
        await self._wal_room(freed)
        async with self._write() as db:
            deleted = await self._delete(chosen)
            counts = Counter((boot, rtype) for _, boot, rtype in deleted)
            await db.executemany(
                "INSERT INTO evictions VALUES (?, ?, ?)"
                " ON CONFLICT (boot_id, rtype) DO UPDATE SET n = n + excluded.n",
                [(boot, rtype, n) for (boot, rtype), n in counts.items()],
            )
        self._forget(deleted, evicted=True)
        await self._refresh_disk_usage()
        return deleted

    async def _delete(self, ids: Sequence[int]) -> list[Deleted]:
        """Delete rows inside the caller's transaction; returns those that existed."""
        deleted: list[Deleted] = []
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            sql = f"DELETE FROM records WHERE priority IN ({_ALL}) AND id IN ({_marks(chunk)})"
            deleted += cast(
                list[Deleted], await self._fetch(f"{sql} RETURNING id, boot_id, rtype", chunk)
            )
        if deleted:
            # Deleting this boot's newest rows must not let a restart reuse their seqs.
            await self._conn().execute(
                "UPDATE boots SET next_seq = max(next_seq, ?) WHERE boot_id = ?",
                (self._next_seq, self._boot_id),
            )
        return deleted

    def _forget(self, deleted: Iterable[Deleted], *, evicted: bool) -> None:
        """Drop committed deletions from the in-memory state."""
        for id_, _, rtype in deleted:
            self._rows[self._lane_of(id_, PRIORITY[RecordType(rtype)] >= _EVENTS)] -= 1
            self._inflight.pop(id_, None)
            self._promoted.discard(id_)
            if (key := self._latest_key.pop(id_, None)) is not None:
                del self._latest[key]
            if evicted:
                self._count_evicted(rtype, 1)
        self.counters["in_flight"] = len(self._inflight)

    def _count_evicted(self, rtype: int, n: int) -> None:
        name = f"evicted_{_TYPE_NAMES.get(rtype, 'unknown')}"
        self.counters[name] = self.counters.get(name, 0) + n
        self.counters["evicted_total"] += n

    # -- the uplink side -----------------------------------------------------------------------

    async def mark_live_boundary(self) -> None:
        """Called by the uplink at every (re)connect: what is pending now becomes backlog,
        except the newest Position and newest SignalValue per path (LIVE, first)."""
        async with self._lock:
            self._mark_boundary()

    def _mark_boundary(self) -> None:
        state = self._rows[Lane.LIVE] + self._rows[Lane.HISTORY]
        self._boundary = self._next_id - 1
        self._promoted = set(self._latest.values())
        self._rows[Lane.LIVE] = len(self._promoted)
        self._rows[Lane.HISTORY] = state - len(self._promoted)

    async def take(self, lane: Lane, limit: int) -> list[Stored]:
        """Up to ``limit`` pending records of ``lane``: ONE boot_id, ascending seq.

        They are in flight until ack() or release(), and stay on disk meanwhile. A take whose
        caller is cancelled still completes: its entries are in flight, release them.
        """
        return await _shielded(self._take(lane, limit)) if limit > 0 else []

    async def _take(self, lane: Lane, limit: int) -> list[Stored]:
        async with self._lock:
            with _translated(f"outbox take ({lane}) failed"):
                stored, bad = [], []
                for id_, boot, seq, body in await self._pick(lane, limit):
                    try:
                        stored.append(Stored(id_, boot, seq, decode_record(body)))
                    except ProtocolError as exc:
                        log.error("outbox dropped undecodable record %d/%d: %r", boot, seq, exc)
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

    async def _pick(self, lane: Lane, limit: int) -> list[tuple[Any, ...]]:
        """The first ``limit`` rows of ``lane`` not in flight, in id order, cut at a new boot."""
        head: list[tuple[Any, ...]] = []
        if lane is Lane.LIVE:  # the promoted newest state goes first
            promoted = sorted(i for i in self._promoted if i not in self._inflight)
            for start in range(0, len(promoted), _IN_CHUNK):
                chunk = promoted[start : start + _IN_CHUNK]
                head += await self._fetch(
                    f"SELECT id, boot_id, seq, body FROM records"
                    f" WHERE priority IN ({_ALL}) AND id IN ({_marks(chunk)})",
                    chunk,
                )
        lo, hi = (self._boundary, _MAX_ID) if lane is Lane.LIVE else (0, self._boundary)
        if lane is Lane.EVENTS:
            lo, hi = 0, _MAX_ID
        priorities = [p for p in Priority if (p >= _EVENTS) == (lane is Lane.EVENTS)]
        picked: list[tuple[Any, ...]] = []
        skip = self._inflight.keys() | (self._promoted if lane is Lane.HISTORY else set())
        async with contextlib.aclosing(self._scan(priorities, lo, hi, limit)) as tail:
            async for row in _chain(sorted(head), tail):
                if row[0] in skip:
                    continue
                if len(picked) == limit or (picked and row[1] != picked[0][1]):
                    break
                picked.append(row)
        return picked

    async def _scan(
        self, priorities: Sequence[int], lo: int, hi: int, page: int
    ) -> AsyncGenerator[tuple[Any, ...], None]:
        """Rows with lo < id <= hi of ``priorities`` in id order, merging their key ranges."""
        page = max(32, min(page, 512))
        bufs: dict[int, deque[tuple[Any, ...]]] = {p: deque() for p in priorities}
        after, done = dict.fromkeys(priorities, lo), set()
        while True:
            for p in priorities:
                if not bufs[p] and p not in done:
                    rows = await self._fetch(
                        "SELECT id, boot_id, seq, body FROM records"
                        " WHERE priority = ? AND id > ? AND id <= ? ORDER BY id LIMIT ?",
                        (p, after[p], hi, page),
                    )
                    bufs[p].extend(rows)
                    if len(rows) < page:
                        done.add(p)
                    if rows:
                        after[p] = rows[-1][0]
            ready = [p for p in priorities if bufs[p]]
            if not ready:
                return
            yield bufs[min(ready, key=lambda p: bufs[p][0][0])].popleft()

    async def ack(self, ids: Sequence[int]) -> None:
        """Delete records the broker PUBACKed; ids already gone (evicted) are ignored."""
        if ids:
            await _shielded(self._ack(ids))

    async def _ack(self, ids: Sequence[int]) -> None:
        async with self._lock:
            with _translated("outbox ack failed"):
                await self._wal_room(len(ids) * 2 * _ROW_OVERHEAD)
                async with self._write():
                    deleted = await self._delete(sorted(set(ids)))
                self._forget(deleted, evicted=False)
                for id_ in ids:
                    self._inflight.pop(id_, None)
                self.counters["acked"] += len(deleted)
                self.counters["in_flight"] = len(self._inflight)
                await self._refresh_disk_usage()

    async def release(self, ids: Sequence[int]) -> None:
        """Return taken records to pending (their publish failed); take() offers them again."""
        for id_ in ids:
            if self._inflight.pop(id_, None) is not None:
                self.counters["released"] += 1
        self.counters["in_flight"] = len(self._inflight)

    async def pending_count(self, lane: Lane | None = None) -> int:
        """Records stored and not in flight, in ``lane`` or in all lanes (kept in memory)."""
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
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One transaction, BEGIN IMMEDIATE ... COMMIT, rolled back on any failure."""
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
        sql = "SELECT page_count - freelist_count FROM pragma_page_count(), pragma_freelist_count()"
        return int(await self._scalar(sql))

    async def _refresh_disk_usage(self) -> None:
        self.counters["bytes_on_disk"] = await asyncio.to_thread(_disk_usage, self._settings.path)


async def _chain(
    first: Iterable[tuple[Any, ...]], then: AsyncIterator[tuple[Any, ...]]
) -> AsyncIterator[tuple[Any, ...]]:
    for row in first:
        yield row
    async for row in then:
        yield row


def _marks(values: Sized) -> str:
    return ",".join("?" * len(values))


async def _shielded(coro: Coroutine[Any, Any, T]) -> T:
    """Finish ``coro`` even if the caller is cancelled: a transaction that committed must never
    be taken for one that did not (the next append would reuse its sequence numbers)."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("outbox operation failed after its caller was cancelled: %r", exc)
        raise


@contextlib.contextmanager
def _translated(doing: str) -> Iterator[None]:
    """Map sqlite3 errors to OutboxError, saying when the disk is full or the file corrupt."""
    try:
        yield
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code == sqlite3.SQLITE_FULL:
            raise OutboxError(f"{doing}: disk full ({exc})") from exc
        if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            raise _CorruptFileError(f"{doing}: the file is corrupt ({exc})") from exc
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
    """Rename the database and its WAL to ``<name>.corrupt-<stamp>``; returns the new name."""
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("-wal", "-shm", "-journal", ""):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{suffix}", f"{target}{suffix}")
    return target
