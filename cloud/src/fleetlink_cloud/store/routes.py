"""The dispatcher's stored routes: one row per vehicle, its stops as one JSON array.

A stop is ``{job_id, kind, lat, lon, windows, service_s, demand, arrival, started, eta, early,
late, lateness_s}``; ``arrival`` is the planned arrival, the last four the latest ETA. Read and
written whole: the dispatcher replaces a vehicle's route every time it changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from fleetlink_cloud.dispatch.model import Location, RouteStop, StopKind, TimeWindow
from fleetlink_cloud.store.base import PlannedStop, RouteRow
from fleetlink_cloud.store.conn import Conn, Row, dumps, loads

_COLUMNS: Final = "vehicle_id, stops, updated_wall_ns"


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def stop_json(planned: PlannedStop) -> dict[str, Any]:
    st = planned.stop
    return {
        "job_id": st.job_id,
        "kind": st.kind.value,
        "lat": st.location.lat,
        "lon": st.location.lon,
        "windows": [[w.start, w.end] for w in st.windows],
        "service_s": st.service_s,
        "demand": list(st.demand),
        "arrival": st.arrival,
        "started": st.started,
        "eta": planned.eta,
        "early": planned.early,
        "late": planned.late,
        "lateness_s": planned.lateness_s,
    }


def stop_of(value: Mapping[str, Any]) -> PlannedStop:
    stop = RouteStop(
        job_id=str(value["job_id"]),
        kind=StopKind(value["kind"]),
        location=Location(float(value["lat"]), float(value["lon"])),
        windows=tuple(TimeWindow(int(a), int(b)) for a, b in value["windows"]),
        service_s=int(value["service_s"]),
        demand=tuple(int(d) for d in value["demand"]),
        arrival=_optional_int(value["arrival"]),
        started=bool(value["started"]),
    )
    return PlannedStop(
        stop,
        eta=_optional_int(value["eta"]),
        early=_optional_int(value["early"]),
        late=_optional_int(value["late"]),
        lateness_s=int(value["lateness_s"]),
    )


def _route_of(r: Row) -> RouteRow:
    return RouteRow(r[0], tuple(stop_of(s) for s in loads(r[1])), int(r[2]))


async def put_route(conn: Conn, route: RouteRow) -> None:
    await conn.execute(
        f"INSERT INTO vehicle_routes ({_COLUMNS}) VALUES (?, ?, ?) ON CONFLICT (vehicle_id)"
        " DO UPDATE SET stops = excluded.stops, updated_wall_ns = excluded.updated_wall_ns",
        (route.vehicle_id, dumps([stop_json(s) for s in route.stops]), route.updated_wall_ns),
    )


async def get_route(conn: Conn, vehicle_id: str) -> RouteRow | None:
    row = await conn.fetchone(
        f"SELECT {_COLUMNS} FROM vehicle_routes WHERE vehicle_id = ?", (vehicle_id,)
    )
    return None if row is None else _route_of(row)


async def list_routes(conn: Conn) -> list[RouteRow]:
    rows = await conn.fetchall(f"SELECT {_COLUMNS} FROM vehicle_routes ORDER BY vehicle_id")
    return [_route_of(r) for r in rows]
