"""Dispatch tables: depots, drivers, vehicle profiles, jobs and the job event log.

This module is the one place where dispatch rows and ``fleetlink_cloud.dispatch.model`` objects
are converted into each other. A job change is one ``UPDATE ... WHERE id = ? AND version = ?``
(so two writers holding the same version cannot both win, on either backend), then its event,
then the stream events, in the caller's transaction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Final

from fleetlink_cloud.dispatch.model import (
    Break,
    Depot,
    Driver,
    Job,
    JobState,
    Location,
    Shift,
    Stop,
    TimeWindow,
    VehicleProfile,
)
from fleetlink_cloud.errors import NotFound
from fleetlink_cloud.store.base import InUse, JobEventRow, JobRow, JobStreamFor, Page, StaleJob
from fleetlink_cloud.store.conn import Conn, Row, dumps, loads, text
from fleetlink_cloud.store.read import page
from fleetlink_cloud.store.stream import insert_stream_events

# Profiles name depots and drivers without foreign keys (SQLite would need them switched on per
# connection): writers of either side take this lock, so a delete never races a reference.
LOCK_DISPATCH_REFS: Final = 0x666C_0D01

JOB_COLUMNS: Final = (
    "id, idempotency_key, request_hash, stop, pickup, skills, demand, priority, customer_ref,"
    " state, vehicle_id, locked_vehicle_id, announced, version, created_wall_ns,"
    " updated_wall_ns, explanation, unassigned_reasons"
)
EVENT_COLUMNS: Final = (
    "job_id, ts_wall_ns, kind, from_state, to_state, reason_code, reason_text, actor, actor_id,"
    " vehicle_before, vehicle_after, evidence"
)
PROFILE_COLUMNS: Final = "device_id, skills, capacity, depot_id, shifts, driver_id, dispatchable"
_JOB_PAGE_KEY: Final = (
    "created_wall_ns, id",
    (int, str),
    lambda r: (r.created_wall_ns, r.job.id),
)


# -- conversions -------------------------------------------------------------------------------


def _windows_json(windows: Sequence[TimeWindow]) -> list[list[int]]:
    return [[w.start, w.end] for w in windows]


def _windows_of(value: Sequence[Sequence[int]]) -> tuple[TimeWindow, ...]:
    return tuple(TimeWindow(int(s), int(e)) for s, e in value)


def stop_json(stop: Stop) -> dict[str, Any]:
    return {
        "lat": stop.location.lat,
        "lon": stop.location.lon,
        "windows": _windows_json(stop.windows),
        "service_s": stop.service_s,
    }


def stop_of(value: Mapping[str, Any]) -> Stop:
    return Stop(
        Location(float(value["lat"]), float(value["lon"])),
        _windows_of(value["windows"]),
        int(value["service_s"]),
    )


def shift_json(shift: Shift) -> dict[str, Any]:
    breaks = [
        {"windows": _windows_json(b.windows), "duration_s": b.duration_s} for b in shift.breaks
    ]
    return {"start": shift.start, "end": shift.end, "breaks": breaks}


def shift_of(value: Mapping[str, Any]) -> Shift:
    breaks = tuple(Break(_windows_of(b["windows"]), int(b["duration_s"])) for b in value["breaks"])
    return Shift(int(value["start"]), int(value["end"]), breaks)


def _job_of(r: Row) -> JobRow:
    job = Job(
        id=r[0],
        stop=stop_of(loads(r[3])),
        pickup=None if r[4] is None else stop_of(loads(r[4])),
        skills=frozenset(loads(r[5])),
        demand=tuple(loads(r[6])),
        priority=r[7],
        customer_ref=r[8],
        state=JobState(r[9]),
        vehicle_id=r[10],
        locked_vehicle_id=r[11],
        announced=bool(r[12]),
    )
    explanation = None if r[16] is None else loads(r[16])
    return JobRow(job, r[13], r[14], r[15], r[1], r[2], explanation, tuple(loads(r[17])))


def _event_of(r: Row) -> JobEventRow:
    return JobEventRow(
        id=r[0],
        job_id=r[1],
        ts_wall_ns=r[2],
        kind=r[3],
        from_state=None if r[4] is None else JobState(r[4]),
        to_state=JobState(r[5]),
        reason_code=r[6],
        reason_text=r[7],
        actor=r[8],
        actor_id=r[9],
        vehicle_before=r[10],
        vehicle_after=r[11],
        evidence=loads(r[12]),
    )


def _profile_of(r: Row) -> VehicleProfile:
    return VehicleProfile(
        id=r[0],
        skills=frozenset(loads(r[1])),
        capacity=tuple(loads(r[2])),
        depot_id=r[3],
        shifts=tuple(shift_of(s) for s in loads(r[4])),
        driver_id=r[5],
        dispatchable=bool(r[6]),
    )


# -- depots, drivers, profiles -----------------------------------------------------------------


async def put_depot(conn: Conn, depot: Depot) -> bool:
    created = await get_depot(conn, depot.id) is None
    await conn.execute(
        "INSERT INTO depots (id, name, lat_deg, lon_deg) VALUES (?, ?, ?, ?) ON CONFLICT (id)"
        " DO UPDATE SET name = excluded.name, lat_deg = excluded.lat_deg,"
        " lon_deg = excluded.lon_deg",
        (depot.id, text(depot.name), depot.location.lat, depot.location.lon),
    )
    return created


async def get_depot(conn: Conn, depot_id: str) -> Depot | None:
    row = await conn.fetchone(
        "SELECT id, name, lat_deg, lon_deg FROM depots WHERE id = ?", (depot_id,)
    )
    return None if row is None else Depot(row[0], Location(row[2], row[3]), row[1])


async def list_depots(conn: Conn) -> list[Depot]:
    rows = await conn.fetchall("SELECT id, name, lat_deg, lon_deg FROM depots ORDER BY id")
    return [Depot(r[0], Location(r[2], r[3]), r[1]) for r in rows]


async def put_driver(conn: Conn, driver: Driver) -> bool:
    created = await get_driver(conn, driver.id) is None
    await conn.execute(
        "INSERT INTO drivers (id, name, skills) VALUES (?, ?, ?) ON CONFLICT (id)"
        " DO UPDATE SET name = excluded.name, skills = excluded.skills",
        (driver.id, text(driver.name), dumps(sorted(driver.skills))),
    )
    return created


async def get_driver(conn: Conn, driver_id: str) -> Driver | None:
    row = await conn.fetchone("SELECT id, name, skills FROM drivers WHERE id = ?", (driver_id,))
    return None if row is None else Driver(row[0], row[1], frozenset(loads(row[2])))


async def list_drivers(conn: Conn) -> list[Driver]:
    rows = await conn.fetchall("SELECT id, name, skills FROM drivers ORDER BY id")
    return [Driver(r[0], r[1], frozenset(loads(r[2]))) for r in rows]


async def delete_referenced(conn: Conn, table: str, column: str, key: str) -> None:
    """Delete row ``key`` of ``depots`` or ``drivers`` unless a profile names it in ``column``."""
    await conn.lock(LOCK_DISPATCH_REFS)
    if await conn.fetchone(f"SELECT 1 FROM {table} WHERE id = ?", (key,)) is None:
        raise NotFound(f"no {table[:-1]} {key!r}")
    users = await conn.fetchall(
        f"SELECT device_id FROM vehicle_profiles WHERE {column} = ? ORDER BY device_id LIMIT 5",
        (key,),
    )
    if users:
        names = ", ".join(r[0] for r in users)
        raise InUse(f"{table[:-1]} {key!r} is named by the dispatch profile of {names}")
    await conn.execute(f"DELETE FROM {table} WHERE id = ?", (key,))


async def put_profile(conn: Conn, profile: VehicleProfile) -> VehicleProfile:
    await conn.lock(LOCK_DISPATCH_REFS)
    checks = (
        ("devices", "device", profile.id),
        ("depots", "depot", profile.depot_id),
        ("drivers", "driver", profile.driver_id),
    )
    for table, what, key in checks:
        if (
            key is not None
            and await conn.fetchone(f"SELECT 1 FROM {table} WHERE id = ?", (key,)) is None
        ):
            raise NotFound(f"no {what} {key!r}")
    await conn.execute(
        f"INSERT INTO vehicle_profiles ({PROFILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (device_id) DO UPDATE SET skills = excluded.skills,"
        " capacity = excluded.capacity, depot_id = excluded.depot_id, shifts = excluded.shifts,"
        " driver_id = excluded.driver_id, dispatchable = excluded.dispatchable",
        (
            profile.id,
            dumps(sorted(profile.skills)),
            dumps(list(profile.capacity)),
            profile.depot_id,
            dumps([shift_json(s) for s in profile.shifts]),
            profile.driver_id,
            profile.dispatchable,
        ),
    )
    stored = await get_profile(conn, profile.id)
    assert stored is not None
    return stored


async def get_profile(conn: Conn, device_id: str) -> VehicleProfile | None:
    row = await conn.fetchone(
        f"SELECT {PROFILE_COLUMNS} FROM vehicle_profiles WHERE device_id = ?", (device_id,)
    )
    return None if row is None else _profile_of(row)


async def list_profiles(conn: Conn) -> list[VehicleProfile]:
    rows = await conn.fetchall(f"SELECT {PROFILE_COLUMNS} FROM vehicle_profiles ORDER BY device_id")
    return [_profile_of(r) for r in rows]


# -- jobs --------------------------------------------------------------------------------------


async def _append(
    conn: Conn, row: JobRow, event: JobEventRow, stream_for: JobStreamFor | None
) -> None:
    """Append the job's event and, with its id, the stream events describing it."""
    found = await conn.fetchone(
        f"INSERT INTO job_events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " RETURNING id",
        (
            row.job.id,
            event.ts_wall_ns,
            event.kind,
            None if event.from_state is None else event.from_state.value,
            event.to_state.value,
            text(event.reason_code),
            text(event.reason_text),
            event.actor,
            event.actor_id,
            event.vehicle_before,
            event.vehicle_after,
            dumps(dict(event.evidence)),
        ),
    )
    assert found is not None
    if stream_for is not None:
        stored = dataclasses.replace(event, id=int(found[0]), job_id=row.job.id)
        await insert_stream_events(conn, stream_for(row, stored))


async def create_job(
    conn: Conn, row: JobRow, event: JobEventRow, stream_for: JobStreamFor | None
) -> JobRow:
    job = row.job
    await conn.execute(
        f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES"
        " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            job.id,
            row.idempotency_key,
            row.request_hash,
            dumps(stop_json(job.stop)),
            None if job.pickup is None else dumps(stop_json(job.pickup)),
            dumps(sorted(job.skills)),
            dumps(list(job.demand)),
            job.priority,
            None if job.customer_ref is None else text(job.customer_ref),
            job.state.value,
            job.vehicle_id,
            job.locked_vehicle_id,
            job.announced,
            row.version,
            row.created_wall_ns,
            row.updated_wall_ns,
            None if row.explanation is None else dumps(dict(row.explanation)),
            dumps([dict(r) for r in row.unassigned_reasons]),
        ),
    )
    stored = await get_job(conn, job.id)
    assert stored is not None
    await _append(conn, stored, event, stream_for)
    return stored


async def get_job(conn: Conn, job_id: str) -> JobRow | None:
    row = await conn.fetchone(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
    return None if row is None else _job_of(row)


async def job_by_key(conn: Conn, key: str) -> JobRow | None:
    row = await conn.fetchone(f"SELECT {JOB_COLUMNS} FROM jobs WHERE idempotency_key = ?", (key,))
    return None if row is None else _job_of(row)


async def list_jobs(
    conn: Conn,
    states: Sequence[JobState] | None,
    vehicle_id: str | None,
    customer_ref: str | None,
    limit: int,
    cursor: str | None,
) -> Page[JobRow]:
    cond, params = "", []
    if states is not None:
        wanted = sorted({s.value for s in states})
        if not wanted:
            return Page([], None)
        cond += f" AND state IN ({', '.join('?' * len(wanted))})"
        params += wanted
    if vehicle_id is not None:
        cond, params = cond + " AND vehicle_id = ?", [*params, vehicle_id]
    if customer_ref is not None:
        cond, params = cond + " AND customer_ref = ?", [*params, text(customer_ref)]
    sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE 1 = 1{cond}"
    return await page(conn, sql, params, _JOB_PAGE_KEY, _job_of, limit, cursor)


async def update_job(
    conn: Conn,
    job: Job,
    expected: int,
    updated_wall_ns: int,
    event: JobEventRow,
    stream_for: JobStreamFor | None,
) -> JobRow:
    """See Store.update_job."""
    row = await conn.fetchone(
        "UPDATE jobs SET state = ?, vehicle_id = ?, locked_vehicle_id = ?, announced = ?,"
        f" version = version + 1, updated_wall_ns = ? WHERE id = ? AND version = ?"
        f" RETURNING {JOB_COLUMNS}",
        (
            job.state.value,
            job.vehicle_id,
            job.locked_vehicle_id,
            job.announced,
            updated_wall_ns,
            job.id,
            expected,
        ),
    )
    if row is None:
        current = await get_job(conn, job.id)
        if current is None:
            raise NotFound(f"no job {job.id!r}")
        raise StaleJob(job.id, expected, current.version)
    stored = _job_of(row)
    await _append(conn, stored, event, stream_for)
    return stored


async def set_explanation(
    conn: Conn,
    job_id: str,
    explanation: Mapping[str, Any] | None,
    unassigned: Sequence[Mapping[str, Any]],
) -> JobRow:
    row = await conn.fetchone(
        f"UPDATE jobs SET explanation = ?, unassigned_reasons = ? WHERE id = ?"
        f" RETURNING {JOB_COLUMNS}",
        (
            None if explanation is None else dumps(dict(explanation)),
            dumps([dict(r) for r in unassigned]),
            job_id,
        ),
    )
    if row is None:
        raise NotFound(f"no job {job_id!r}")
    return _job_of(row)


async def job_events(conn: Conn, job_id: str, after_id: int, limit: int) -> list[JobEventRow]:
    rows = await conn.fetchall(
        f"SELECT id, {EVENT_COLUMNS} FROM job_events WHERE job_id = ? AND id > ?"
        " ORDER BY id LIMIT ?",
        (job_id, after_id, max(1, limit)),
    )
    return [_event_of(r) for r in rows]
