"""Vehicles with live state, signals, events, the loss ledger and agent health."""

from __future__ import annotations

import httpx

from tests.cloud.api.harness import BOOT, LOST_SEQS, N_FIXES, T0_NS, Api


async def test_list_and_one_vehicle(api: Api, client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/vehicles", headers=api.auth("read"))
    assert r.status_code == 200
    items = r.json()["items"]
    assert [v["id"] for v in items] == ["veh-1", "veh-2"]
    one = (await client.get("/v1/vehicles/veh-1", headers=api.auth("read"))).json()
    assert one == items[0]
    assert one["name"] == "Truck 1"
    assert one["presence"]["online"] is True
    assert one["presence"]["boot_id"] == BOOT
    assert one["position"]["seq"] == N_FIXES - 1
    assert one["signals"]["Vehicle.Speed"]["value"] == 30.0
    assert {d["code"] for d in one["active_dtcs"]} == {"P0301", "P1234", "100-1"}
    assert all("description" in d for d in one["active_dtcs"])
    quiet = items[1]
    assert quiet["position"] is None
    assert quiet["signals"] == {}
    assert quiet["presence"]["online"] is False
    assert "password_hash" not in r.text


async def test_unknown_vehicle_is_404(api: Api, client: httpx.AsyncClient) -> None:
    for path in ("", "/ledger", "/health", "/signals", "/dtcs", "/events", "/commands"):
        r = await client.get(f"/v1/vehicles/veh-9{path}", headers=api.auth("read"))
        assert r.status_code == 404, path
        assert r.json() == {"detail": "no device 'veh-9'"}


async def test_bad_vehicle_id_is_422(api: Api, client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/vehicles/no%20spaces", headers=api.auth("read"))
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["path", "device_id"]


async def test_latest_and_historic_signals(api: Api, client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/vehicles/veh-1/signals", headers=api.auth("read"))
    latest = r.json()["signals"]
    assert latest["Vehicle.Speed"]["value"] == 30.0
    assert latest["Vehicle.Powertrain.CombustionEngine.Speed"]["value"] == 1500
    assert isinstance(latest["Vehicle.Powertrain.CombustionEngine.Speed"]["value"], int)
    h = await client.get(
        "/v1/vehicles/veh-1/signals/Vehicle.Speed", params={"limit": 1}, headers=api.auth("read")
    )
    assert [s["value"] for s in h.json()["items"]] == [28.8]
    h2 = await client.get(
        "/v1/vehicles/veh-1/signals/Vehicle.Speed",
        params={"cursor": h.json()["next_cursor"]},
        headers=api.auth("read"),
    )
    assert [s["value"] for s in h2.json()["items"]] == [30.0]
    assert h2.json()["next_cursor"] is None


async def test_events_of_the_fleet_and_of_one_vehicle(api: Api, client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/events", headers=api.auth("read"))
    events = r.json()["items"]
    assert [e["kind"] for e in events] == ["harsh_brake", "ignition_off"]
    assert events[0]["data"] == {"decel_mps2": 5.5}
    one = await client.get(
        "/v1/vehicles/veh-1/events", params={"kind": "ignition_off"}, headers=api.auth("read")
    )
    assert [e["kind"] for e in one.json()["items"]] == ["ignition_off"]
    other = await client.get("/v1/events", params={"device_id": "veh-2"}, headers=api.auth("read"))
    assert other.json() == {"items": [], "next_cursor": None}


async def test_loss_ledger_shows_gaps_and_evictions(api: Api, client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/vehicles/veh-1/ledger", headers=api.auth("read"))
    assert r.status_code == 200
    ledger = r.json()
    assert ledger["device_id"] == "veh-1"
    (boot,) = ledger["boots"]
    assert boot["boot_id"] == BOOT
    first, last = LOST_SEQS
    assert boot["gaps"] == [{"first": first, "last": last, "count": 2}]
    assert boot["missing"] == ledger["missing"] == 2
    assert boot["evicted"]["outbox.evicted_total"] == 2
    assert ledger["evicted"] == 2
    assert ledger["offline_ns"] == 0
    quiet = (await client.get("/v1/vehicles/veh-2/ledger", headers=api.auth("read"))).json()
    assert quiet["boots"] == []
    assert quiet["missing"] == 0


async def test_agent_health(api: Api, client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/vehicles/veh-1/health", headers=api.auth("read"))
    assert r.json()["counters"] == {"outbox.evicted_total": 2, "can.frames": 1000}
    assert r.json()["ts_wall_ns"] > T0_NS
    r2 = await client.get("/v1/vehicles/veh-2/health", headers=api.auth("read"))
    assert r2.status_code == 404
    assert "no health record" in r2.json()["detail"]


async def test_healthz_needs_no_token(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"
