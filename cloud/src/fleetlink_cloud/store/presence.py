"""Online/offline state from birth, last-will death and heartbeat expiry (cloud clock).

Every change of ``online`` is logged in ``presence_log`` (the loss ledger sums the offline
time from it) and appended as a ``vehicle.online``/``vehicle.offline`` stream event in the same
transaction. Runs inside the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fleetlink_cloud.bus import StreamEvent
from fleetlink_cloud.store.base import Presence
from fleetlink_cloud.store.conn import Conn, Row, dumps, loads
from fleetlink_cloud.store.stream import insert_stream_events

PRESENCE_COLUMNS = (
    "online, boot_id, agent_version, started_wall_ns, changed_wall_ns, last_seen_wall_ns, reason"
)


def presence_of(row: Row) -> Presence:
    return Presence(bool(row[0]), *row[1:7])


async def get_presence(conn: Conn, device_id: str) -> Presence | None:
    row = await conn.fetchone(
        f"SELECT {PRESENCE_COLUMNS} FROM presence WHERE device_id = ?", (device_id,)
    )
    return None if row is None else presence_of(row)


async def _changed(
    conn: Conn, device_id: str, boot_id: int | None, online: bool, reason: str, ts: int, **data: Any
) -> None:
    """Log a change of ``online`` and append its stream event."""
    await conn.execute(
        "INSERT INTO presence_log (device_id, boot_id, online, reason, ts_wall_ns)"
        " VALUES (?, ?, ?, ?, ?)",
        (device_id, boot_id, online, reason, ts),
    )
    kind = "vehicle.online" if online else "vehicle.offline"
    event = StreamEvent(0, kind, device_id, ts, {"boot_id": boot_id, "reason": reason, **data})
    await insert_stream_events(conn, [event])


async def record_birth(
    conn: Conn,
    device_id: str,
    boot_id: int,
    agent_version: str,
    started_wall_ns: int,
    alias_extras: Mapping[str, int],
    received_wall_ns: int,
) -> Presence:
    """See Store.record_birth. A birth older (device start time) than the current boot's is
    stale (redelivered by a slower worker): its boot is stored, presence is left alone."""
    d = conn.dialect
    await conn.execute(
        "INSERT INTO boots (device_id, boot_id, agent_version, started_wall_ns, alias_extras,"
        " first_birth_wall_ns, last_birth_wall_ns) VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (device_id, boot_id) DO UPDATE SET agent_version = excluded.agent_version,"
        " alias_extras = excluded.alias_extras, last_birth_wall_ns ="
        f" {d.greatest}(boots.last_birth_wall_ns, excluded.last_birth_wall_ns)",
        (
            device_id,
            boot_id,
            agent_version,
            started_wall_ns,
            dumps(dict(alias_extras)),
            received_wall_ns,
            received_wall_ns,
        ),
    )
    await touch_many(conn, [(device_id, received_wall_ns)])
    current = await get_presence(conn, device_id)
    assert current is not None  # touch_many created it
    same_boot = current.boot_id == boot_id
    stale = (
        not same_boot
        and current.started_wall_ns is not None
        and started_wall_ns < current.started_wall_ns
    )
    if stale or (same_boot and current.online):
        return current
    await conn.execute(
        "UPDATE presence SET online = TRUE, boot_id = ?, agent_version = ?, started_wall_ns = ?,"
        " changed_wall_ns = ?, reason = 'birth' WHERE device_id = ?",
        (boot_id, agent_version, started_wall_ns, received_wall_ns, device_id),
    )
    await _changed(
        conn, device_id, boot_id, True, "birth", received_wall_ns, agent_version=agent_version
    )
    updated = await get_presence(conn, device_id)
    assert updated is not None
    return updated


async def record_death(conn: Conn, device_id: str, boot_id: int, received_wall_ns: int) -> bool:
    """See Store.record_death."""
    row = await conn.fetchone(
        "UPDATE presence SET online = FALSE, changed_wall_ns = ?, reason = 'death'"
        " WHERE device_id = ? AND boot_id = ? AND online = TRUE RETURNING device_id",
        (received_wall_ns, device_id, boot_id),
    )
    if row is None:
        return False
    await _changed(conn, device_id, boot_id, False, "death", received_wall_ns)
    return True


async def expire_presence(conn: Conn, cutoff_wall_ns: int, now_wall_ns: int) -> list[str]:
    """See Store.expire_presence. Rows are locked in id order, all of them before the stream
    lock (as ingest does): locking the next row while holding it could deadlock with ingest."""
    candidates = await conn.fetchall(
        "SELECT device_id FROM presence WHERE online = TRUE AND"
        " COALESCE(last_seen_wall_ns, 0) < ? ORDER BY device_id",
        (cutoff_wall_ns,),
    )
    expired: list[tuple[str, int | None]] = []
    for (device_id,) in candidates:
        row = await conn.fetchone(
            "UPDATE presence SET online = FALSE, changed_wall_ns = ?, reason = 'timeout'"
            " WHERE device_id = ? AND online = TRUE AND COALESCE(last_seen_wall_ns, 0) < ?"
            " RETURNING boot_id",
            (now_wall_ns, device_id, cutoff_wall_ns),
        )
        if row is not None:
            expired.append((device_id, row[0]))
    for device_id, boot_id in expired:
        await _changed(conn, device_id, boot_id, False, "timeout", now_wall_ns)
    return [device_id for device_id, _ in expired]


async def touch_many(conn: Conn, seen: Sequence[tuple[str, int]]) -> None:
    """last_seen = max(last_seen, received) for (device_id, received_wall_ns), in given order."""
    if not seen:
        return
    await conn.executemany(
        "INSERT INTO presence (device_id, online, last_seen_wall_ns) VALUES (?, FALSE, ?)"
        " ON CONFLICT (device_id) DO UPDATE SET last_seen_wall_ns = "
        f"{conn.dialect.greatest}(COALESCE(presence.last_seen_wall_ns, 0),"
        " excluded.last_seen_wall_ns)",
        seen,
    )


async def mark_online_from_data(
    conn: Conn, device_id: str, boot_id: int, received_wall_ns: int
) -> None:
    """Data of the current boot from a timed-out device, or from a device never born: online."""
    row = await conn.fetchone(
        "UPDATE presence SET online = TRUE, changed_wall_ns = ?, reason = 'data',"
        " boot_id = COALESCE(boot_id, ?) WHERE device_id = ? AND online = FALSE AND"
        " ((reason = 'timeout' AND boot_id = ?) OR reason IS NULL) RETURNING device_id",
        (received_wall_ns, boot_id, device_id, boot_id),
    )
    if row is not None:
        await _changed(conn, device_id, boot_id, True, "data", received_wall_ns)


async def alias_extras(conn: Conn, device_id: str, boot_id: int) -> dict[str, int] | None:
    row = await conn.fetchone(
        "SELECT alias_extras FROM boots WHERE device_id = ? AND boot_id = ?", (device_id, boot_id)
    )
    if row is None:
        return None
    extras: dict[str, int] = loads(row[0])
    return extras


async def offline_time(conn: Conn, device_id: str, now_wall_ns: int) -> tuple[int, int]:
    """(ns offline, number of offline periods) from the presence log, up to ``now_wall_ns``."""
    rows = await conn.fetchall(
        "SELECT online, ts_wall_ns FROM presence_log WHERE device_id = ? ORDER BY id", (device_id,)
    )
    total, periods, since = 0, 0, None
    for online, ts in rows:
        if not online and since is None:
            since, periods = ts, periods + 1
        elif online and since is not None:
            total += max(0, ts - since)
            since = None
    if since is not None:
        total += max(0, now_wall_ns - since)
    return total, periods
