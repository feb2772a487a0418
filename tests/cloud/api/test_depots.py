"""Depots over the API: create or replace with PUT, read, list, delete unless a profile names it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.cloud.api.harness import Api

HAMBURG = {"name": "Hamburg", "location": {"lat_deg": 53.55, "lon_deg": 9.99}}


async def put(api: Api, client: httpx.AsyncClient, depot_id: str, body: Any) -> httpx.Response:
    return await client.put(f"/v1/depots/{depot_id}", json=body, headers=api.auth("dispatch"))


async def test_create_replace_read_list_delete(api: Api, client: httpx.AsyncClient) -> None:
    created = await put(api, client, "north", HAMBURG)
    assert created.status_code == 201, created.text
    assert created.json() == {"id": "north", **HAMBURG}
    moved = {"name": "Hamburg Nord", "location": {"lat_deg": 53.6, "lon_deg": 10.0}}
    replaced = await put(api, client, "north", moved)
    assert (replaced.status_code, replaced.json()) == (200, {"id": "north", **moved})
    await put(api, client, "east", {"location": {"lat_deg": 52.52, "lon_deg": 13.40}})
    listed = await client.get("/v1/depots", headers=api.auth("maintenance"))
    assert [(d["id"], d["name"]) for d in listed.json()["items"]] == [
        ("east", ""),
        ("north", "Hamburg Nord"),
    ]
    one = await client.get("/v1/depots/north", headers=api.auth("read"))
    assert one.json()["location"] == {"lat_deg": 53.6, "lon_deg": 10.0}
    gone = await client.delete("/v1/depots/east", headers=api.auth("dispatch"))
    assert gone.status_code == 204
    assert (await client.get("/v1/depots/east", headers=api.auth("read"))).status_code == 404
    assert (await client.delete("/v1/depots/east", headers=api.auth("dispatch"))).status_code == 404
    audited = [(a.method, a.status, a.detail) for a in await api.store.list_audit()]
    assert ("PUT", 201, "depot north created") in audited
    assert ("DELETE", 204, "depot east deleted") in audited


async def test_a_depot_a_vehicle_starts_from_cannot_be_deleted(
    api: Api, client: httpx.AsyncClient
) -> None:
    await put(api, client, "north", HAMBURG)
    profile = await client.put(
        "/v1/vehicles/veh-1/dispatch", json={"depot_id": "north"}, headers=api.auth("dispatch")
    )
    assert profile.status_code == 200, profile.text
    refused = await client.delete("/v1/depots/north", headers=api.auth("dispatch"))
    assert refused.status_code == 409
    assert "veh-1" in refused.json()["detail"]
    assert (await client.get("/v1/depots/north", headers=api.auth("read"))).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"location": {"lat_deg": -90.5, "lon_deg": 0}},
        {"location": {"lat_deg": 0, "lon_deg": 181}},
        {"name": "x" * 101, "location": {"lat_deg": 0, "lon_deg": 0}},
        {"name": "no location"},
        {"location": {"lat_deg": 0, "lon_deg": 0}, "extra": True},
    ],
)
async def test_invalid_depots_are_422(
    api: Api, client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    assert (await put(api, client, "north", body)).status_code == 422
    assert await api.store.list_depots() == []


async def test_depot_writes_need_dispatch(api: Api, client: httpx.AsyncClient) -> None:
    for scope in ("read", "maintenance"):
        r = await client.put("/v1/depots/north", json=HAMBURG, headers=api.auth(scope))
        assert r.status_code == 403
    assert (await put(api, client, "bad id", HAMBURG)).status_code == 422
