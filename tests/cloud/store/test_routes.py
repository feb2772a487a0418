"""Vehicle routes (migration 4): stored whole, replaced whole, listed by vehicle; both backends."""

from __future__ import annotations

import pytest

from fleetlink_cloud.dispatch.model import Location, RouteStop, StopKind, TimeWindow
from fleetlink_cloud.store import Store, open_store
from fleetlink_cloud.store import sql as sql_backend
from fleetlink_cloud.store.base import PlannedStop, RouteRow
from fleetlink_cloud.store.schema import MIGRATIONS
from tests.cloud.store.records import T0, add

PICKUP = RouteStop(
    "job-1",
    StopKind.PICKUP,
    Location(52.52, 13.405),
    (TimeWindow(1_750_000_000, 1_750_003_600), TimeWindow(1_750_010_000, 1_750_012_000)),
    300,
    (5, 1),
    arrival=1_750_000_900,
    started=True,
)
DELIVERY = RouteStop("job-1", StopKind.DELIVERY, Location(52.5, 13.3), (), 0, (5, 1))
SINGLE = RouteStop("job-2", StopKind.SINGLE, Location(-33.9, 151.2), arrival=1_750_002_000)


def route(vehicle_id: str, *stops: PlannedStop, at: int = T0) -> RouteRow:
    return RouteRow(vehicle_id, stops, at)


async def test_a_route_round_trips_with_every_field(store: Store) -> None:
    stored = route(
        "veh-1",
        PlannedStop(PICKUP, eta=1_750_000_900, early=1_750_000_800, late=1_750_001_100),
        PlannedStop(DELIVERY, eta=1_750_002_000, lateness_s=45),
        PlannedStop(SINGLE),
    )
    await store.put_vehicle_route(stored)
    assert await store.get_vehicle_route("veh-1") == stored
    assert await store.get_vehicle_route("veh-2") is None


async def test_put_replaces_the_whole_route(store: Store) -> None:
    await store.put_vehicle_route(route("veh-1", PlannedStop(PICKUP), PlannedStop(DELIVERY)))
    await store.put_vehicle_route(route("veh-1", PlannedStop(SINGLE), at=T0 + 5))
    assert await store.get_vehicle_route("veh-1") == route("veh-1", PlannedStop(SINGLE), at=T0 + 5)
    await store.put_vehicle_route(route("veh-1", at=T0 + 9))
    empty = await store.get_vehicle_route("veh-1")
    assert empty is not None
    assert (empty.stops, empty.updated_wall_ns) == ((), T0 + 9)
    assert (await store.stats()).counts["vehicle_routes"] == 1


async def test_routes_are_listed_by_vehicle_id(store: Store) -> None:
    for vid in ("veh-3", "veh-1", "veh-2"):
        await store.put_vehicle_route(route(vid, PlannedStop(SINGLE)))
    assert [r.vehicle_id for r in await store.list_vehicle_routes()] == ["veh-1", "veh-2", "veh-3"]


async def test_a_version_3_database_gains_routes_and_keeps_its_devices(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:
        m.setattr(sql_backend, "MIGRATIONS", MIGRATIONS[:3])
        async with open_store(store_url) as old:
            assert await old.schema_version() == 3
            await add(old, "veh-1")
    async with open_store(store_url) as upgraded:
        assert await upgraded.schema_version() == 4
        assert [d.id for d in await upgraded.list_devices()] == ["veh-1"]
        await upgraded.put_vehicle_route(route("veh-1", PlannedStop(SINGLE)))
        assert [r.vehicle_id for r in await upgraded.list_vehicle_routes()] == ["veh-1"]
