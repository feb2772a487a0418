"""The narrow connection interface the shared SQL layer talks to, and small helpers.

SQL is written once with ``?`` placeholders (the PostgreSQL adapter rewrites them); it must hold
no literal ``?`` or ``%``. Each backend module implements ``Conn`` over its own driver and
translates the driver's errors into StoreError there.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any, Protocol

from fleetlink_cloud.store.base import BadCursor
from fleetlink_cloud.store.schema import Dialect

Row = tuple[Any, ...]
SeenRow = tuple[str, int, int, int, int]  # device_id, boot_id, seq, lane code, received_wall_ns
SeenKey = tuple[str, int, int]

LANE_CODE = {"live": 0, "history": 1, "events": 2}

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # every integer column is 64-bit in both dialects

LOCK_STREAM = 0x666C_0001  # stream-event ids are allocated in commit order
LOCK_MIGRATIONS = 0x666C_0002


class Conn(Protocol):
    """One connection, inside a transaction for writes."""

    dialect: Dialect

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    async def insert_rows(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Bulk-insert rows known to be new (executemany, COPY...)."""
        ...

    async def insert_new_seen(self, rows: Sequence[SeenRow]) -> set[SeenKey]:
        """Insert into ``seen`` the rows whose key is absent; return the keys inserted. Must be
        race-free against other writers (they block on the key until this transaction ends)."""
        ...

    async def lock(self, key: int) -> None:
        """Hold lock ``key`` (LOCK_*) until the transaction ends. SQLite needs none: a write
        transaction already excludes every other writer."""
        ...


def text(value: str) -> str:
    """Free text from a device, storable everywhere: PostgreSQL text cannot hold NUL, so both
    backends store it as U+FFFD (JSON columns escape it and keep it)."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def dumps(value: Any) -> str:
    """Compact JSON text (NaN and infinities allowed: stored as text, read back by Python)."""
    return json.dumps(value, separators=(",", ":"))


def loads(text: str) -> Any:
    return json.loads(text)


def encode_cursor(*key: int | str) -> str:
    """An opaque, URL-safe keyset cursor from the sort key of the last row of a page."""
    raw = dumps(list(key)).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, kinds: Sequence[type]) -> list[Any]:
    """The sort key in a cursor, checked against ``kinds``. Raises BadCursor."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise BadCursor(f"invalid cursor: {exc}") from None
    if not isinstance(key, list) or len(key) != len(kinds):
        raise BadCursor("invalid cursor: wrong shape")
    for value, kind in zip(key, kinds, strict=True):
        if type(value) is not kind:
            raise BadCursor("invalid cursor: wrong field type")
        if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
            raise BadCursor("invalid cursor: integer out of range")  # the driver would refuse it
    return key


def time_range(
    from_wall_ns: int | None, to_wall_ns: int | None, column: str = "ts_wall_ns"
) -> tuple[str, list[Any]]:
    """SQL conditions (each starting with AND) and parameters for from <= ts < to."""
    sql, params = "", []
    if from_wall_ns is not None:
        sql += f" AND {column} >= ?"
        params.append(from_wall_ns)
    if to_wall_ns is not None:
        sql += f" AND {column} < ?"
        params.append(to_wall_ns)
    return sql, params
