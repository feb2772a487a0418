"""The stream-event table: appended in the writer's transaction, tailed by the API process."""

from __future__ import annotations

from collections.abc import Sequence

from fleetlink_cloud.bus import StreamEvent
from fleetlink_cloud.store.conn import LOCK_STREAM, Conn, dumps, loads

STREAM_COLUMNS = ("type", "device_id", "ts_wall_ns", "data")


async def insert_stream_events(conn: Conn, events: Sequence[StreamEvent]) -> list[int]:
    """Append events (their ids ignored) under the stream lock, which is held until commit: ids
    become visible in ascending order and are contiguous within one call."""
    if not events:
        return []
    await conn.lock(LOCK_STREAM)
    rows = [(e.type, e.device_id, e.ts_wall_ns, dumps(dict(e.data))) for e in events]
    await conn.executemany(
        f"INSERT INTO stream_events ({', '.join(STREAM_COLUMNS)}) VALUES (?, ?, ?, ?)", rows
    )
    top = await latest_id(conn)
    return list(range(top - len(rows) + 1, top + 1))


async def events_after(conn: Conn, after_id: int, limit: int) -> list[StreamEvent]:
    rows = await conn.fetchall(
        f"SELECT id, {', '.join(STREAM_COLUMNS)} FROM stream_events WHERE id > ?"
        " ORDER BY id LIMIT ?",
        (after_id, limit),
    )
    return [StreamEvent(r[0], r[1], r[2], r[3], loads(r[4])) for r in rows]


async def latest_id(conn: Conn) -> int:
    row = await conn.fetchone("SELECT max(id) FROM stream_events")
    return int(row[0]) if row and row[0] is not None else 0
