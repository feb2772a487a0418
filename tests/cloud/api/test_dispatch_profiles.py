"""Vehicles' dispatch profiles and drivers over the API."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from fleetlink_cloud.dispatch.model import Break, Shift, TimeWindow, VehicleProfile
from tests.cloud.api.harness import NOW_NS, Api

DAY0 = NOW_NS // 1_000_000_000
H = 3600
URL = "/v1/vehicles/veh-1/dispatch"


def shift(start: int, end: int, *breaks: dict[str, Any]) -> dict[str, Any]:
    return {"start_unix_s": start, "end_unix_s": end, "breaks": list(breaks)}


LUNCH = {
    "windows": [{"start_unix_s": DAY0 + 3 * H, "end_unix_s": DAY0 + 5 * H}],
    "duration_s": 1800,
}


async def setup_refs(api: Api, client: httpx.AsyncClient) -> None:
    depot = {"name": "Hamburg", "location": {"lat_deg": 53.55, "lon_deg": 9.99}}
    assert (
        await client.put("/v1/depots/north", json=depot, headers=api.auth("dispatch"))
    ).is_success
    driver = {"name": "Ana", "skills": ["adr"]}
    assert (
        await client.put("/v1/drivers/d-ana", json=driver, headers=api.auth("dispatch"))
    ).is_success


async def test_a_vehicle_without_a_profile_has_the_defaults(
    api: Api, client: httpx.AsyncClient
) -> None:
    r = await client.get(URL, headers=api.auth("read"))
    assert r.status_code == 200
    assert r.json() == {
        "vehicle_id": "veh-1",
        "skills": [],
        "capacity": [],
        "depot_id": None,
        "shifts": [],
        "driver_id": None,
        "dispatchable": True,
        "stored": False,
    }
    assert (
        await client.get("/v1/vehicles/veh-9/dispatch", headers=api.auth("read"))
    ).status_code == 404


async def test_put_stores_the_whole_profile(api: Api, client: httpx.AsyncClient) -> None:
    await setup_refs(api, client)
    body = {
        "skills": ["tail_lift", "fridge", "fridge"],
        "capacity": [1000, 12],
        "depot_id": "north",
        "shifts": [shift(DAY0, DAY0 + 8 * H, LUNCH), shift(DAY0 + 24 * H, DAY0 + 32 * H)],
        "driver_id": "d-ana",
        "dispatchable": False,
    }
    r = await client.put(URL, json=body, headers=api.auth("dispatch"))
    assert r.status_code == 200, r.text
    expected = {**body, "skills": ["fridge", "tail_lift"], "vehicle_id": "veh-1", "stored": True}
    assert r.json() == expected
    assert (await client.get(URL, headers=api.auth("maintenance"))).json() == expected
    lunch = Break((TimeWindow(DAY0 + 3 * H, DAY0 + 5 * H),), 1800)
    assert await api.store.get_vehicle_profile("veh-1") == VehicleProfile(
        "veh-1",
        skills=frozenset({"fridge", "tail_lift"}),
        capacity=(1000, 12),
        depot_id="north",
        shifts=(Shift(DAY0, DAY0 + 8 * H, (lunch,)), Shift(DAY0 + 24 * H, DAY0 + 32 * H)),
        driver_id="d-ana",
        dispatchable=False,
    )
    [row] = [a for a in await api.store.list_audit() if a.path == URL]
    assert row.detail == "dispatch profile of veh-1"


async def test_unknown_depot_driver_or_vehicle_is_404(api: Api, client: httpx.AsyncClient) -> None:
    for body in ({"depot_id": "nowhere"}, {"driver_id": "nobody"}):
        r = await client.put(URL, json=body, headers=api.auth("dispatch"))
        assert r.status_code == 404, body
    r = await client.put("/v1/vehicles/veh-9/dispatch", json={}, headers=api.auth("dispatch"))
    assert r.status_code == 404
    assert await api.store.list_vehicle_profiles() == []


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"shifts": [shift(DAY0 + H, DAY0)]}, "end before it starts"),
        ({"shifts": [shift(DAY0, DAY0 + H, {"windows": [], "duration_s": 60})]}, "windows"),
        ({"shifts": [shift(DAY0, DAY0 + H, {**LUNCH, "duration_s": 0})]}, "duration_s"),
        ({"capacity": [1] * 9}, "capacity"),
        ({"capacity": [-1]}, "capacity"),
        ({"skills": ["a b"]}, "skills"),
        ({"depot_id": "bad id"}, "depot_id"),
        ({"shifts": [shift(-1, DAY0)]}, "start_unix_s"),
    ],
)
async def test_invalid_profiles_are_422(
    api: Api, client: httpx.AsyncClient, body: dict[str, Any], names: str
) -> None:
    r = await client.put(URL, json=body, headers=api.auth("dispatch"))
    assert r.status_code == 422, r.text
    assert names in r.text


async def test_profile_writes_need_dispatch(api: Api, client: httpx.AsyncClient) -> None:
    for scope in ("read", "maintenance"):
        assert (await client.put(URL, json={}, headers=api.auth(scope))).status_code == 403
    assert (await client.put(URL, json={}, headers=api.auth("admin"))).status_code == 200


async def test_drivers_crud_and_in_use(api: Api, client: httpx.AsyncClient) -> None:
    await setup_refs(api, client)
    replaced = await client.put(
        "/v1/drivers/d-ana", json={"name": "Ana B.", "skills": ["forklift", "adr"]},
        headers=api.auth("dispatch"),
    )  # fmt: skip
    assert (replaced.status_code, replaced.json()) == (
        200,
        {"id": "d-ana", "name": "Ana B.", "skills": ["adr", "forklift"]},
    )
    listed = await client.get("/v1/drivers", headers=api.auth("read"))
    assert [d["id"] for d in listed.json()["items"]] == ["d-ana"]
    await client.put(URL, json={"driver_id": "d-ana"}, headers=api.auth("dispatch"))
    refused = await client.delete("/v1/drivers/d-ana", headers=api.auth("dispatch"))
    assert refused.status_code == 409
    await client.put(URL, json={}, headers=api.auth("dispatch"))
    assert (
        await client.delete("/v1/drivers/d-ana", headers=api.auth("dispatch"))
    ).status_code == 204
    assert (await client.get("/v1/drivers/d-ana", headers=api.auth("read"))).status_code == 404
    empty = await client.put("/v1/drivers/d-bo", json={"name": ""}, headers=api.auth("dispatch"))
    assert empty.status_code == 422
