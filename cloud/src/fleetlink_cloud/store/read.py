"""Queries: live state, record history with keyset pagination, and the loss ledger."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fleetlink_cloud.errors import NotFound
from fleetlink_cloud.store.base import (
    BootLedger,
    Device,
    DtcRow,
    DtcState,
    EventRow,
    HealthRow,
    Ledger,
    Page,
    PositionRow,
    Presence,
    SeqGap,
    SignalRow,
    VehicleState,
)
from fleetlink_cloud.store.conn import Conn, Row, decode_cursor, encode_cursor, loads, time_range
from fleetlink_cloud.store.presence import PRESENCE_COLUMNS, offline_time, presence_of

T = TypeVar("T")

DEVICE_SELECT = "SELECT id, name, created_wall_ns, disabled, password_hash FROM devices"
POSITION_SELECT = (
    "SELECT device_id, boot_id, seq, ts_wall_ns, lat_deg, lon_deg, mode, alt_msl_m, speed_mps,"
    " heading_deg, hdop, sats_used FROM"
)
SIGNAL_SELECT = "SELECT device_id, boot_id, seq, ts_wall_ns, path, value FROM"
DTC_SELECT = (
    "SELECT device_id, boot_id, seq, ts_wall_ns, source, code, ecu, active, spn, fmi,"
    " occurrences, lamps FROM dtcs"
)
DTC_STATE_SELECT = (
    "SELECT device_id, source, ecu, code, active, spn, fmi, occurrences, lamps, ts_wall_ns,"
    " first_seen_wall_ns, last_seen_wall_ns FROM dtc_state"
)
EVENT_SELECT = "SELECT device_id, boot_id, seq, ts_wall_ns, kind, data FROM events"
HEALTH_SELECT = "SELECT device_id, boot_id, seq, ts_wall_ns, counters FROM health"
_RECORD_KEY = "ts_wall_ns, boot_id, seq"
_NO_PRESENCE = Presence(False, None, None, None, None, None, None)


def device_of(r: Row) -> Device:
    return Device(r[0], r[1], r[2], bool(r[3]), r[4])


def position_of(r: Row) -> PositionRow:
    return PositionRow(*r)


def signal_of(r: Row) -> SignalRow:
    return SignalRow(r[0], r[1], r[2], r[3], r[4], loads(r[5]))


def dtc_of(r: Row) -> DtcRow:
    return DtcRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), r[8], r[9], r[10], r[11])


def dtc_state_of(r: Row) -> DtcState:
    return DtcState(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6], r[7], r[8], r[9], r[10], r[11])


def event_of(r: Row) -> EventRow:
    return EventRow(r[0], r[1], r[2], r[3], r[4], loads(r[5]))


def health_of(r: Row) -> HealthRow:
    return HealthRow(r[0], r[1], r[2], r[3], loads(r[4]))


async def page(
    conn: Conn,
    sql: str,
    params: list[Any],
    key: tuple[str, Sequence[type], Callable[[T], tuple[Any, ...]]],
    make: Callable[[Row], T],
    limit: int,
    cursor: str | None,
) -> Page[T]:
    """Keyset pagination: ``sql`` ends in a WHERE clause; ``key`` is (ORDER BY columns, their
    types, the key of an item). Stable under concurrent inserts. Raises BadCursor."""
    columns, kinds, key_of = key
    limit = max(1, limit)
    if cursor is not None:
        after = decode_cursor(cursor, kinds)
        sql += f" AND ({columns}) > ({', '.join('?' * len(kinds))})"
        params = [*params, *after]
    rows = await conn.fetchall(f"{sql} ORDER BY {columns} LIMIT ?", [*params, limit + 1])
    items = [make(r) for r in rows[:limit]]
    more = len(rows) > limit
    return Page(items, encode_cursor(*key_of(items[-1])) if more else None)


def record_key(item: PositionRow | SignalRow | DtcRow | EventRow) -> tuple[int, int, int]:
    return (item.ts_wall_ns, item.boot_id, item.seq)


def event_key(item: EventRow) -> tuple[int, str, int, int]:
    return (item.ts_wall_ns, item.device_id, item.boot_id, item.seq)


RECORD_PAGE_KEY = (_RECORD_KEY, (int, int, int), record_key)
EVENT_PAGE_KEY = ("ts_wall_ns, device_id, boot_id, seq", (int, str, int, int), event_key)


async def positions(
    conn: Conn,
    device_id: str,
    from_ns: int | None,
    to_ns: int | None,
    limit: int,
    cursor: str | None,
) -> Page[PositionRow]:
    cond, params = time_range(from_ns, to_ns)
    sql = f"{POSITION_SELECT} positions WHERE device_id = ?{cond}"
    return await page(conn, sql, [device_id, *params], RECORD_PAGE_KEY, position_of, limit, cursor)


async def signal_history(
    conn: Conn,
    device_id: str,
    path: str,
    from_ns: int | None,
    to_ns: int | None,
    limit: int,
    cursor: str | None,
) -> Page[SignalRow]:
    cond, params = time_range(from_ns, to_ns)
    sql = f"{SIGNAL_SELECT} signals WHERE device_id = ? AND path = ?{cond}"
    args = [device_id, path, *params]
    return await page(conn, sql, args, RECORD_PAGE_KEY, signal_of, limit, cursor)


async def dtc_history(
    conn: Conn,
    device_id: str,
    from_ns: int | None,
    to_ns: int | None,
    limit: int,
    cursor: str | None,
) -> Page[DtcRow]:
    cond, params = time_range(from_ns, to_ns)
    sql = f"{DTC_SELECT} WHERE device_id = ?{cond}"
    return await page(conn, sql, [device_id, *params], RECORD_PAGE_KEY, dtc_of, limit, cursor)


async def events(
    conn: Conn,
    device_id: str | None,
    kind: str | None,
    from_ns: int | None,
    to_ns: int | None,
    limit: int,
    cursor: str | None,
) -> Page[EventRow]:
    cond, params = time_range(from_ns, to_ns)
    if device_id is not None:
        cond, params = cond + " AND device_id = ?", [*params, device_id]
    if kind is not None:
        cond, params = cond + " AND kind = ?", [*params, kind]
    sql = f"{EVENT_SELECT} WHERE 1 = 1{cond}"
    return await page(conn, sql, params, EVENT_PAGE_KEY, event_of, limit, cursor)


async def signals_latest(conn: Conn, device_id: str) -> dict[str, SignalRow]:
    rows = await conn.fetchall(
        f"{SIGNAL_SELECT} signal_latest WHERE device_id = ? ORDER BY path", (device_id,)
    )
    return {r[4]: signal_of(r) for r in rows}


async def dtc_states(conn: Conn, device_id: str, active_only: bool) -> list[DtcState]:
    cond = " AND active = TRUE" if active_only else ""
    rows = await conn.fetchall(
        f"{DTC_STATE_SELECT} WHERE device_id = ?{cond}"
        " ORDER BY active DESC, last_seen_wall_ns DESC, source, ecu, code",
        (device_id,),
    )
    return [dtc_state_of(r) for r in rows]


async def health_latest(conn: Conn, device_id: str) -> HealthRow | None:
    row = await conn.fetchone(
        f"{HEALTH_SELECT} WHERE device_id = ? ORDER BY ts_wall_ns DESC, boot_id DESC, seq DESC"
        " LIMIT 1",
        (device_id,),
    )
    return None if row is None else health_of(row)


async def vehicles(conn: Conn, device_id: str | None) -> list[VehicleState]:
    """Live state of one device or all, in a handful of queries whatever the fleet size."""
    where, args = (" WHERE device_id = ?", [device_id]) if device_id else ("", [])
    devices = await conn.fetchall(
        DEVICE_SELECT + (" WHERE id = ?" if device_id else "") + " ORDER BY id", args
    )
    presence = await conn.fetchall(
        f"SELECT device_id, {PRESENCE_COLUMNS} FROM presence{where}", args
    )
    by_presence = {r[0]: presence_of(r[1:]) for r in presence}
    pos = await conn.fetchall(f"{POSITION_SELECT} last_position{where}", args)
    by_position = {r[0]: position_of(r) for r in pos}
    signals: dict[str, dict[str, SignalRow]] = {}
    for r in await conn.fetchall(f"{SIGNAL_SELECT} signal_latest{where} ORDER BY path", args):
        signals.setdefault(r[0], {})[r[4]] = signal_of(r)
    dtcs: dict[str, list[DtcState]] = {}
    active = " AND" if where else " WHERE"
    for r in await conn.fetchall(
        f"{DTC_STATE_SELECT}{where}{active} active = TRUE"
        " ORDER BY last_seen_wall_ns DESC, source, ecu, code",
        args,
    ):
        dtcs.setdefault(r[0], []).append(dtc_state_of(r))
    return [
        VehicleState(
            device_of(d),
            by_presence.get(d[0], _NO_PRESENCE),
            by_position.get(d[0]),
            signals.get(d[0], {}),
            tuple(dtcs.get(d[0], ())),
        )
        for d in devices
    ]


async def ledger(conn: Conn, device_id: str, now_wall_ns: int) -> Ledger:
    """See Store.ledger. Gaps come from a window over ``seen``; seqs start at 0 in every boot."""
    aggregates = await conn.fetchall(
        "SELECT boot_id, MIN(seq), MAX(seq), COUNT(*), MIN(received_wall_ns),"
        " MAX(received_wall_ns) FROM seen WHERE device_id = ? GROUP BY boot_id",
        (device_id,),
    )
    if (
        not aggregates
        and await conn.fetchone("SELECT 1 FROM devices WHERE id = ?", (device_id,)) is None
    ):
        raise NotFound(f"no device {device_id!r}")
    gaps: dict[int, list[SeqGap]] = {}
    for boot_id, seq, nxt in await conn.fetchall(
        "SELECT boot_id, seq, nxt FROM (SELECT boot_id, seq, LEAD(seq) OVER"
        " (PARTITION BY boot_id ORDER BY seq) AS nxt FROM seen WHERE device_id = ?) g"
        " WHERE nxt > seq + 1 ORDER BY boot_id, seq",
        (device_id,),
    ):
        gaps.setdefault(boot_id, []).append(SeqGap(seq + 1, nxt - 1))
    evicted = await _evicted(conn, device_id)
    boots = []
    for boot_id, first, last, count, first_rx, last_rx in aggregates:
        boot_gaps = ([SeqGap(0, first - 1)] if first > 0 else []) + gaps.get(boot_id, [])
        boots.append(
            BootLedger(
                boot_id,
                first,
                last,
                count,
                tuple(boot_gaps),
                evicted.get(boot_id, {}),
                first_rx,
                last_rx,
            )
        )
    boots.sort(key=lambda b: (b.first_received_wall_ns, b.boot_id))
    offline_ns, periods = await offline_time(conn, device_id, now_wall_ns)
    return Ledger(device_id, tuple(boots), offline_ns, periods)


async def _evicted(conn: Conn, device_id: str) -> dict[int, dict[str, int]]:
    """The "outbox.evicted_*" counters of the latest Health record of each boot. Latest by seq,
    not device time: the counters are cumulative per boot and the clock may step back."""
    rows = await conn.fetchall(
        "SELECT boot_id, counters FROM (SELECT boot_id, counters, ROW_NUMBER() OVER"
        " (PARTITION BY boot_id ORDER BY seq DESC) AS rn FROM health"
        " WHERE device_id = ?) h WHERE rn = 1",
        (device_id,),
    )
    out: dict[int, dict[str, int]] = {}
    for boot_id, text in rows:
        counters = loads(text)
        out[boot_id] = {k: int(v) for k, v in counters.items() if k.startswith("outbox.evicted_")}
    return out
