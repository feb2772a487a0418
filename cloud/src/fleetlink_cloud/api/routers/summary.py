"""Derived values of a time range: distance driven, engine hours and trips.

Computed on request from the stored fixes and signals, in device-time order (``live.derived``),
so a history backlog that arrived hours late counts exactly as if it had streamed live.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Final, TypeVar

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel

from fleetlink_cloud.api.auth import Reader
from fleetlink_cloud.api.deps import Ctx
from fleetlink_cloud.api.errors import error_responses
from fleetlink_cloud.api.params import TIME_HELP, KnownDevice, parse_time
from fleetlink_cloud.live import derived
from fleetlink_cloud.store.base import Page, PositionRow, SignalRow, Store
from fleetlink_protocols.records import FixMode, Position, SignalValue

MAX_RANGE_NS: Final = 31 * 24 * 3600 * 1_000_000_000  # a month of fixes at most per request
MAX_ROWS: Final = 200_000  # per series; a longer range must be asked for in parts
_PAGE: Final = 5_000
SIGNAL_PATHS: Final = (
    derived.ENGINE_HOURS_PATH,
    derived.ENGINE_RUNNING_PATH,
    *derived.ENGINE_SPEED_PATHS,
)

T = TypeVar("T")

router = APIRouter(tags=["vehicles"], responses=error_responses(401, 403, 404, 422))


class TripOut(BaseModel):
    start_wall_ns: int
    end_wall_ns: int
    start_lat_deg: float
    start_lon_deg: float
    end_lat_deg: float
    end_lon_deg: float
    distance_m: float
    max_speed_mps: float
    positions: int


class Summary(BaseModel):
    device_id: str
    from_wall_ns: int
    to_wall_ns: int
    positions: int
    distance_m: float
    engine_hours_h: float
    trips: list[TripOut]


async def _drain(fetch: Callable[[str | None], Awaitable[Page[T]]], what: str) -> list[T]:
    """Every row of a range, page by page; 422 past MAX_ROWS (the caller asks for less)."""
    rows: list[T] = []
    cursor: str | None = None
    while True:
        page = await fetch(cursor)
        rows.extend(page.items)
        if len(rows) > MAX_ROWS:
            raise HTTPException(422, f"more than {MAX_ROWS} {what} in range: ask for less")
        if page.next_cursor is None:
            return rows
        cursor = page.next_cursor


async def _all_positions(store: Store, device_id: str, start: int, end: int) -> list[PositionRow]:
    return await _drain(
        lambda c: store.positions(
            device_id, from_wall_ns=start, to_wall_ns=end, limit=_PAGE, cursor=c
        ),
        "fixes",
    )


async def _all_signals(
    store: Store, device_id: str, path: str, start: int, end: int
) -> list[SignalRow]:
    return await _drain(
        lambda c: store.signal_history(
            device_id, path, from_wall_ns=start, to_wall_ns=end, limit=_PAGE, cursor=c
        ),
        f"samples of {path}",
    )


def _position(r: PositionRow) -> Position:
    return Position(
        r.ts_wall_ns, r.lat_deg, r.lon_deg, mode=FixMode(r.mode), alt_msl_m=r.alt_msl_m,
        speed_mps=r.speed_mps, heading_deg=r.heading_deg, hdop=r.hdop, sats_used=r.sats_used,
    )  # fmt: skip


def _trip(t: derived.Trip) -> TripOut:
    return TripOut(
        start_wall_ns=t.start_ns,
        end_wall_ns=t.end_ns,
        start_lat_deg=t.start_lat_deg,
        start_lon_deg=t.start_lon_deg,
        end_lat_deg=t.end_lat_deg,
        end_lon_deg=t.end_lon_deg,
        distance_m=round(t.distance_m, 1),
        max_speed_mps=t.max_speed_mps,
        positions=t.positions,
    )


@router.get("/vehicles/{device_id}/summary")
async def summary(
    principal: Reader,
    device_id: KnownDevice,
    ctx: Ctx,
    from_: Annotated[str, Query(alias="from", description=TIME_HELP, max_length=64)],
    to: Annotated[str, Query(description=TIME_HELP + " Exclusive.", max_length=64)],
) -> Summary:
    """Distance, engine hours and trips with `from <= ts < to` (device time, at most 31 days)."""
    start, end = parse_time("from", from_), parse_time("to", to)
    if start is None or end is None or not 0 < end - start <= MAX_RANGE_NS:
        raise HTTPException(422, "to: must be after from, and at most 31 days later")
    rows = await _all_positions(ctx.store, device_id, start, end)
    fixes = [_position(r) for r in rows]
    signals = [
        SignalValue(s.ts_wall_ns, s.path, s.value)
        for path in SIGNAL_PATHS
        for s in await _all_signals(ctx.store, device_id, path, start, end)
    ]
    trips = derived.trips(fixes, signals)
    return Summary(
        device_id=device_id,
        from_wall_ns=start,
        to_wall_ns=end,
        positions=len(fixes),
        distance_m=round(derived.distance_m(fixes), 1),
        engine_hours_h=round(derived.engine_hours_h(signals), 4),
        trips=[_trip(t) for t in trips],
    )
