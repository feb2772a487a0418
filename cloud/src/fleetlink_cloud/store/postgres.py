"""The production backend: PostgreSQL through psycopg 3 (async) and a connection pool.

New records go in with COPY; dedupe is one ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO
NOTHING RETURNING``, so two workers racing on the same (device, boot, seq) store it once: the
second blocks on the key until the first commits, then skips it. Stream-event ids are allocated
under a transaction-scoped advisory lock, so they become visible in ascending order.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from functools import lru_cache
from typing import Any

import psycopg
import psycopg_pool

from fleetlink_cloud.errors import StoreError
from fleetlink_cloud.store.base import AlreadyExists
from fleetlink_cloud.store.conn import Row, SeenKey, SeenRow
from fleetlink_cloud.store.schema import POSTGRES
from fleetlink_cloud.store.sql import SqlStore

CONNECT_TIMEOUT_S = 10.0
_PASSWORD_RE = re.compile(r"(://[^:/@]*):[^@]*@")
_INSERT_SEEN = (
    "INSERT INTO seen (device_id, boot_id, seq, lane, received_wall_ns)"
    " SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::smallint[], %s::bigint[])"
    " ON CONFLICT DO NOTHING RETURNING device_id, boot_id, seq"
)


def redacted(url: str) -> str:
    """The URL without its password, for logs and ``Store.url``."""
    return _PASSWORD_RE.sub(r"\1:***@", url)


@lru_cache(maxsize=512)
def _pg(sql: str) -> str:
    """The shared SQL layer writes ``?`` placeholders; psycopg wants ``%s``."""
    return sql.replace("?", "%s")


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Map psycopg errors to the cloud's error tree."""
    try:
        yield
    except psycopg.errors.UniqueViolation as exc:
        raise AlreadyExists(f"{what}: {exc}") from exc
    except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
        raise StoreError(f"{what}: {exc}") from exc


class PostgresConn:
    """``Conn`` over one pooled psycopg connection."""

    dialect = POSTGRES

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with _translated("postgresql execute"):
            await self._conn.execute(_pg(sql), params)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        with _translated("postgresql executemany"):
            async with self._conn.cursor() as cur:
                await cur.executemany(_pg(sql), rows)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with _translated("postgresql query"):
            cur = await self._conn.execute(_pg(sql), params)
            return await cur.fetchall()

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        with _translated("postgresql query"):
            cur = await self._conn.execute(_pg(sql), params)
            return await cur.fetchone()

    async def insert_rows(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        if not rows:
            return
        with _translated(f"postgresql copy into {table}"):
            async with self._conn.cursor() as cur:
                copy_sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
                async with cur.copy(copy_sql) as copy:
                    for row in rows:
                        await copy.write_row(row)

    async def insert_new_seen(self, rows: Sequence[SeenRow]) -> set[SeenKey]:
        columns = [list(c) for c in zip(*rows, strict=True)]
        with _translated("postgresql dedupe"):
            cur = await self._conn.execute(_INSERT_SEEN, columns)
            return {(r[0], r[1], r[2]) for r in await cur.fetchall()}

    async def lock(self, key: int) -> None:
        with _translated("postgresql advisory lock"):
            await self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))


class PostgresStore(SqlStore):
    """The PostgreSQL backend: a pool of ``pool_size`` connections in autocommit mode; writes
    run in explicit transactions."""

    dialect = POSTGRES

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = redacted(url)
        self._conninfo = url
        self._pool_size = pool_size
        self._pool: psycopg_pool.AsyncConnectionPool | None = None

    async def _connect(self) -> None:
        pool = psycopg_pool.AsyncConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=max(1, self._pool_size),
            kwargs={"autocommit": True},
            open=False,
            timeout=CONNECT_TIMEOUT_S,
            name="fleetlink-store",
        )
        try:
            with _translated(f"cannot connect to {self.url}"):
                await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def _disconnect(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _open_pool(self) -> psycopg_pool.AsyncConnectionPool:
        if self._pool is None:
            raise StoreError("the store is not open (use it as an async context manager)")
        return self._pool

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[PostgresConn]:
        with _translated("postgresql transaction"):
            async with self._open_pool().connection() as conn, conn.transaction():
                yield PostgresConn(conn)

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[PostgresConn]:
        with _translated("postgresql connection"):
            async with self._open_pool().connection() as conn:
                yield PostgresConn(conn)
