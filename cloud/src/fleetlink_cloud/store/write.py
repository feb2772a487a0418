"""The ingest write path: dedupe, typed rows, order-independent live state, stream events.

Everything here runs inside one transaction the caller opened. Rows that take row locks are
written in key order so that concurrent PostgreSQL writers never deadlock on each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetlink_cloud.bus import StreamEvent
from fleetlink_cloud.store.base import EventsFor, IngestBatch, IngestResult
from fleetlink_cloud.store.conn import LANE_CODE, Conn, SeenKey, SeenRow, dumps, text
from fleetlink_cloud.store.presence import mark_online_from_data, touch_many
from fleetlink_cloud.store.stream import insert_stream_events
from fleetlink_protocols.records import Dtc, Entry, Event, Health, Position, SignalValue

POSITION_COLUMNS = (
    "device_id",
    "ts_wall_ns",
    "boot_id",
    "seq",
    "lat_deg",
    "lon_deg",
    "mode",
    "alt_msl_m",
    "speed_mps",
    "heading_deg",
    "hdop",
    "sats_used",
)
SIGNAL_COLUMNS = ("device_id", "path", "ts_wall_ns", "boot_id", "seq", "value")
DTC_COLUMNS = (
    "device_id",
    "ts_wall_ns",
    "boot_id",
    "seq",
    "source",
    "code",
    "ecu",
    "active",
    "spn",
    "fmi",
    "occurrences",
    "lamps",
)
EVENT_COLUMNS = ("device_id", "ts_wall_ns", "boot_id", "seq", "kind", "data")
HEALTH_COLUMNS = ("device_id", "ts_wall_ns", "boot_id", "seq", "counters")
DTC_STATE_COLUMNS = (
    "device_id",
    "source",
    "ecu",
    "code",
    "active",
    "spn",
    "fmi",
    "occurrences",
    "lamps",
    "ts_wall_ns",
    "boot_id",
    "seq",
    "first_seen_wall_ns",
    "last_seen_wall_ns",
)


@dataclass
class _Rows:
    """Typed rows of the new entries, plus the newest (by device time) for live state."""

    positions: list[tuple[Any, ...]] = field(default_factory=list)
    signals: list[tuple[Any, ...]] = field(default_factory=list)
    dtcs: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    health: list[tuple[Any, ...]] = field(default_factory=list)
    last_position: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    last_signal: dict[tuple[str, str], tuple[Any, ...]] = field(default_factory=dict)
    dtc_state: dict[tuple[str, int, int, str], list[Any]] = field(default_factory=dict)

    def add(self, device_id: str, boot_id: int, entry: Entry) -> None:
        r, key = entry.record, (device_id, entry.record.ts_wall_ns, boot_id, entry.seq)
        row: tuple[Any, ...]
        if isinstance(r, Position):
            row = (*key, r.lat_deg, r.lon_deg, int(r.mode), r.alt_msl_m, r.speed_mps)
            row += (r.heading_deg, r.hdop, r.sats_used)
            self.positions.append(row)
            _keep_newest(self.last_position, device_id, row, 1)
        elif isinstance(r, SignalValue):
            row = (device_id, text(r.path), r.ts_wall_ns, boot_id, entry.seq, dumps(r.value))
            self.signals.append(row)
            _keep_newest(self.last_signal, (device_id, row[1]), row, 2)
        elif isinstance(r, Dtc):
            code = text(r.code)
            obs = (int(r.source), code, r.ecu, r.active, r.spn, r.fmi, r.occurrences, r.lamps)
            self.dtcs.append((*key, *obs))
            self._add_dtc_state(key, obs)
        elif isinstance(r, Event):
            self.events.append((*key, text(r.kind), dumps(r.data)))
        elif isinstance(r, Health):
            self.health.append((*key, dumps(r.counters)))

    def _add_dtc_state(self, key: tuple[str, int, int, int], obs: tuple[Any, ...]) -> None:
        device_id, ts, boot_id, seq = key
        state_key = (device_id, obs[0], obs[2], obs[1])
        row = [device_id, obs[0], obs[2], obs[1], *obs[3:], ts, boot_id, seq, ts, ts]
        current = self.dtc_state.get(state_key)
        if current is None:
            self.dtc_state[state_key] = row
            return
        first, last = min(current[12], ts), max(current[13], ts)
        if (ts, boot_id, seq) > (current[9], current[10], current[11]):
            current[:] = row
        current[12], current[13] = first, last


def _keep_newest(
    newest: dict[Any, tuple[Any, ...]], key: Any, row: tuple[Any, ...], at: int
) -> None:
    """Keep the row with the greatest (ts_wall_ns, boot_id, seq), found at ``row[at:at+3]``."""
    current = newest.get(key)
    if current is None or row[at : at + 3] > current[at : at + 3]:
        newest[key] = row


async def ingest(
    conn: Conn, batches: Sequence[IngestBatch], events_for: EventsFor | None
) -> list[IngestResult]:
    """Commit ``batches`` (see Store.ingest_batches); the caller owns the transaction."""
    seen: dict[SeenKey, SeenRow] = {}
    for b in batches:
        for e in b.entries:
            key = (b.device_id, b.boot_id, e.seq)
            if key not in seen:
                seen[key] = (*key, LANE_CODE[b.lane], b.received_wall_ns)
    fresh = await conn.insert_new_seen(sorted(seen.values())) if seen else set()
    rows, results = _Rows(), []
    for b in batches:
        new = []
        for e in b.entries:
            key = (b.device_id, b.boot_id, e.seq)
            if key in fresh:
                fresh.discard(key)  # a later copy in this call is a duplicate
                new.append(e)
                rows.add(b.device_id, b.boot_id, e)
        results.append(IngestResult(b, tuple(new), len(b.entries) - len(new)))
    await _write_rows(conn, rows)
    await _update_presence(conn, batches)
    events = _events(results, events_for)
    if events:
        await insert_stream_events(conn, events)
    return results


async def _write_rows(conn: Conn, rows: _Rows) -> None:
    await conn.insert_rows("positions", POSITION_COLUMNS, rows.positions)
    await conn.insert_rows("signals", SIGNAL_COLUMNS, rows.signals)
    await conn.insert_rows("dtcs", DTC_COLUMNS, rows.dtcs)
    await conn.insert_rows("events", EVENT_COLUMNS, rows.events)
    await conn.insert_rows("health", HEALTH_COLUMNS, rows.health)
    if rows.last_position:
        sql = _latest_upsert(conn, "last_position", POSITION_COLUMNS, ("device_id",))
        await conn.executemany(sql, [rows.last_position[k] for k in sorted(rows.last_position)])
    if rows.last_signal:
        sql = _latest_upsert(conn, "signal_latest", SIGNAL_COLUMNS, ("device_id", "path"))
        await conn.executemany(sql, [rows.last_signal[k] for k in sorted(rows.last_signal)])
    if rows.dtc_state:
        await conn.executemany(
            _dtc_upsert(conn), [rows.dtc_state[k] for k in sorted(rows.dtc_state)]
        )


def _latest_upsert(conn: Conn, table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    """Insert, or replace only when the new row is later by (device time, boot, seq)."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
        f" WHERE (excluded.ts_wall_ns, excluded.boot_id, excluded.seq)"
        f" > ({table}.ts_wall_ns, {table}.boot_id, {table}.seq)"
    )


def _dtc_upsert(conn: Conn) -> str:
    """DTC state: observed fields from the latest observation; first/last seen widen."""
    d, cols = conn.dialect, DTC_STATE_COLUMNS
    later = (
        "(excluded.ts_wall_ns, excluded.boot_id, excluded.seq)"
        " > (dtc_state.ts_wall_ns, dtc_state.boot_id, dtc_state.seq)"
    )
    observed = ("active", "spn", "fmi", "occurrences", "lamps", "ts_wall_ns", "boot_id", "seq")
    sets = [f"{c} = CASE WHEN {later} THEN excluded.{c} ELSE dtc_state.{c} END" for c in observed]
    sets.append(
        f"first_seen_wall_ns = {d.least}(dtc_state.first_seen_wall_ns, excluded.first_seen_wall_ns)"
    )
    sets.append(
        f"last_seen_wall_ns = {d.greatest}(dtc_state.last_seen_wall_ns, excluded.last_seen_wall_ns)"
    )
    return (
        f"INSERT INTO dtc_state ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        f" ON CONFLICT (device_id, source, ecu, code) DO UPDATE SET {', '.join(sets)}"
    )


async def _update_presence(conn: Conn, batches: Sequence[IngestBatch]) -> None:
    """last_seen per device; a timed-out device sending data of its current boot is back."""
    latest: dict[str, tuple[int, int]] = {}
    for b in batches:
        prev = latest.get(b.device_id)
        if prev is None or b.received_wall_ns > prev[0]:
            latest[b.device_id] = (b.received_wall_ns, b.boot_id)
    await touch_many(conn, sorted((d, t) for d, (t, _) in latest.items()))
    alive: dict[str, tuple[int, int]] = {}  # history is the past: it never fires vehicle.online
    for b in batches:
        prev = alive.get(b.device_id)
        if b.lane != "history" and (prev is None or b.received_wall_ns > prev[0]):
            alive[b.device_id] = (b.received_wall_ns, b.boot_id)
    for device_id in sorted(alive):
        received, boot_id = alive[device_id]
        await mark_online_from_data(conn, device_id, boot_id, received)


def _events(results: Sequence[IngestResult], events_for: EventsFor | None) -> list[StreamEvent]:
    if events_for is None:
        return []
    events: list[StreamEvent] = []
    for r in results:
        if r.new_entries:
            events.extend(events_for(r.batch, r.new_entries))
    return events
