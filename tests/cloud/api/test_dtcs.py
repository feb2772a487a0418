"""Trouble codes come with descriptions: SAE J2012 for OBD-II, SPN/FMI names for J1939."""

from __future__ import annotations

from typing import Any

import httpx

from fleetlink_cloud.api.schemas import dtc_text
from fleetlink_protocols.j1939 import fmi_description, spn_name
from fleetlink_protocols.records import DtcSource
from tests.cloud.api.harness import Api


def _by_code(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["code"]: d for d in items}


async def test_active_codes_with_descriptions(api: Api, client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/vehicles/veh-1/dtcs", headers=api.auth("maintenance"))
    assert r.status_code == 200
    codes = _by_code(r.json()["items"])
    assert set(codes) == {"P0301", "P1234", "100-1"}  # P0420 was reported cleared
    obd = codes["P0301"]
    assert obd["source"] == "obd"
    assert obd["description"] == "Cylinder 1 Misfire Detected"
    assert obd["spn_name"] is None
    assert obd["lamp_states"] is None
    assert codes["P1234"]["description"] is None  # manufacturer-specific
    j1939 = codes["100-1"]
    assert j1939["source"] == "j1939"
    assert j1939["spn"] == 100
    assert j1939["fmi"] == 1
    assert j1939["occurrences"] == 3
    assert j1939["spn_name"] == "Engine Oil Pressure"
    assert j1939["fmi_description"] == fmi_description(1)
    assert j1939["description"] == f"Engine Oil Pressure: {fmi_description(1)}"
    assert j1939["lamp_states"] == {
        "mil": "off",
        "red_stop": "off",
        "amber_warning": "on",
        "protect": "off",
    }
    assert j1939["first_seen_wall_ns"] <= j1939["last_seen_wall_ns"]


async def test_all_states_include_cleared_codes(api: Api, client: httpx.AsyncClient) -> None:
    r = await client.get(
        "/v1/vehicles/veh-1/dtcs", params={"state": "all"}, headers=api.auth("read")
    )
    codes = _by_code(r.json()["items"])
    assert codes["P0420"]["active"] is False
    assert codes["P0420"]["description"] == "Catalyst System Efficiency Below Threshold (Bank 1)"
    assert [d["active"] for d in r.json()["items"]][-1] is False  # active first


async def test_history_lists_every_observation(api: Api, client: httpx.AsyncClient) -> None:
    r = await client.get(
        "/v1/vehicles/veh-1/dtcs/history", params={"limit": 2}, headers=api.auth("read")
    )
    first = r.json()
    assert [d["code"] for d in first["items"]] == ["P0301", "P1234"]
    r2 = await client.get(
        "/v1/vehicles/veh-1/dtcs/history",
        params={"limit": 2, "cursor": first["next_cursor"]},
        headers=api.auth("read"),
    )
    rest = r2.json()["items"]
    assert [d["code"] for d in rest] == ["100-1", "P0420"]
    assert rest[0]["description"].startswith("Engine Oil Pressure")
    assert rest[0]["lamps"] == 0x0400


async def test_a_quiet_vehicle_has_no_codes(api: Api, client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/vehicles/veh-2/dtcs", headers=api.auth("read"))
    assert r.json() == {"items": []}


def test_unknown_spn_and_missing_fmi_are_described_by_number() -> None:
    text = dtc_text(DtcSource.J1939, "524000-31", 524000, None, None)
    assert text.description == spn_name(524000) == "SPN 524000"
    assert text.fmi_description is None
    other = dtc_text(9, "X", None, None, None)
    assert other.source == "unknown"
    assert other.description is None
