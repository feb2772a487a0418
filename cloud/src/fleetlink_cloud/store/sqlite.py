"""The embedded backend: SQLite through aiosqlite, WAL, one writer and one reader connection.

``sqlite:///relative/path.sqlite3``, ``sqlite:////absolute/path.sqlite3`` or
``sqlite:///:memory:``. Write transactions are ``BEGIN IMMEDIATE`` (the database's write lock
is taken up front, so concurrent processes queue on ``busy_timeout`` instead of failing on
upgrade) and commit with ``synchronous=FULL``: a message acked after commit survives power loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

import aiosqlite

from fleetlink_cloud.errors import StoreError
from fleetlink_cloud.store.base import AlreadyExists
from fleetlink_cloud.store.conn import Row, SeenKey, SeenRow
from fleetlink_cloud.store.schema import SQLITE
from fleetlink_cloud.store.sql import SqlStore

BUSY_TIMEOUT_MS = 30_000
_PRAGMAS = (
    f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",  # first: the others may wait for a lock
    "PRAGMA synchronous = FULL",
    "PRAGMA cache_size = -32768",  # 32 MiB page cache per connection
)
_WAL_RETRY_S = 0.01
_SEQ_CHUNK = 500  # seqs per dedupe lookup (SQLite allows 32766 parameters since 3.32)


# Integrity errors that mean "this key is taken"; NOT NULL or CHECK failures are plain StoreErrors.
_KEY_TAKEN = frozenset({"SQLITE_CONSTRAINT_PRIMARYKEY", "SQLITE_CONSTRAINT_UNIQUE"})


def sqlite_path(url: str) -> str:
    """The file path in a ``sqlite:///`` URL (query string ignored). Raises StoreError."""
    if not url.startswith("sqlite:///"):
        raise StoreError(f"not a sqlite:/// url: {url!r}")
    path = url[len("sqlite:///") :].split("?", 1)[0]
    if not path:
        raise StoreError("sqlite url without a path")
    return path


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Map aiosqlite/sqlite3 errors to the cloud's error tree."""
    try:
        yield
    except aiosqlite.IntegrityError as exc:
        if getattr(exc, "sqlite_errorname", "") in _KEY_TAKEN:
            raise AlreadyExists(f"{what}: {exc}") from exc
        raise StoreError(f"{what}: {exc}") from exc
    except aiosqlite.Error as exc:
        raise StoreError(f"{what}: {exc}") from exc


async def _enable_wal(db: aiosqlite.Connection) -> None:
    """Switch to WAL, waiting up to the busy timeout. Processes opening a new database at the
    same moment race for this switch, and SQLite answers "database is locked" to the losers
    at once, without calling the busy handler: so retry here."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            # Read the answer: an unfinished statement keeps a lock that fails other openers.
            async with db.execute("PRAGMA journal_mode = WAL") as cursor:
                await cursor.fetchall()
            return
        except aiosqlite.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        await asyncio.sleep(_WAL_RETRY_S)


class SqliteConn:
    """``Conn`` over one aiosqlite connection."""

    dialect = SQLITE

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with _translated("sqlite execute"):
            await self._db.execute(sql, params)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            with _translated("sqlite executemany"):
                await self._db.executemany(sql, rows)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with _translated("sqlite query"):
            return [tuple(r) for r in await self._db.execute_fetchall(sql, params)]

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def insert_rows(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        marks = ", ".join("?" * len(columns))
        await self.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)

    async def insert_new_seen(self, rows: Sequence[SeenRow]) -> set[SeenKey]:
        """Race-free because the caller holds the database's write lock (BEGIN IMMEDIATE)."""
        new: list[SeenRow] = []
        for (device_id, boot_id), group in groupby(rows, key=lambda r: (r[0], r[1])):
            candidates = list(group)
            existing: set[int] = set()
            # Look up exactly the candidate seqs (a range scan would read every seq between a
            # replayed old one and a new one), in chunks below SQLite's parameter limit.
            for i in range(0, len(candidates), _SEQ_CHUNK):
                seqs = [r[2] for r in candidates[i : i + _SEQ_CHUNK]]
                found = await self.fetchall(
                    "SELECT seq FROM seen WHERE device_id = ? AND boot_id = ?"
                    f" AND seq IN ({', '.join('?' * len(seqs))})",
                    (device_id, boot_id, *seqs),
                )
                existing.update(r[0] for r in found)
            new += [r for r in candidates if r[2] not in existing]
        await self.insert_rows(
            "seen", ("device_id", "boot_id", "seq", "lane", "received_wall_ns"), new
        )
        return {(r[0], r[1], r[2]) for r in new}

    async def lock(self, key: int) -> None:
        return None


class SqliteStore(SqlStore):
    """The SQLite backend. ``pool_size`` is accepted for symmetry and ignored."""

    dialect = SQLITE

    def __init__(self, url: str, *, pool_size: int = 1) -> None:
        self.url = url
        self._path = sqlite_path(url)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()

    async def _open_one(self) -> aiosqlite.Connection:
        with _translated(f"cannot open {self._path}"):
            db = await aiosqlite.connect(self._path, isolation_level=None)
            try:
                for pragma in _PRAGMAS:
                    await db.execute_fetchall(pragma)  # fetched: an open statement holds a lock
                await _enable_wal(db)
            except BaseException:
                await db.close()
                raise
        return db

    async def _connect(self) -> None:
        if self._path != ":memory:":
            try:
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the folder of {self._path}: {exc}") from exc
        self._writer = await self._open_one()
        try:
            # An in-memory database exists only in its one connection.
            self._reader = self._writer if self._path == ":memory:" else await self._open_one()
        except BaseException:
            await self._disconnect()
            raise

    async def _disconnect(self) -> None:
        for db in {id(c): c for c in (self._reader, self._writer) if c is not None}.values():
            with contextlib.suppress(aiosqlite.Error, ValueError):
                await db.close()
        self._reader = self._writer = None

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[SqliteConn]:
        async with self._write_lock:
            db = self._open_conn(self._writer)
            with _translated("sqlite begin"):
                await db.execute("BEGIN IMMEDIATE")
            try:
                yield SqliteConn(db)
                with _translated("sqlite commit"):
                    await db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(aiosqlite.Error):
                    await db.execute("ROLLBACK")
                raise

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[SqliteConn]:
        yield SqliteConn(self._open_conn(self._reader))

    @staticmethod
    def _open_conn(db: aiosqlite.Connection | None) -> aiosqlite.Connection:
        if db is None:
            raise StoreError("the store is not open (use it as an async context manager)")
        return db
