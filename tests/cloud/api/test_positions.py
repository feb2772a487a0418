"""Position history: keyset pages over a time window, JSON and GeoJSON."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from fleetlink_cloud.api.params import parse_time
from fleetlink_cloud.api.routers.positions import wants_geojson
from fleetlink_cloud.api.schemas import rfc3339
from fleetlink_cloud.store import IngestBatch
from fleetlink_protocols.records import Entry, Position
from tests.cloud.api.harness import BOOT, FIX_STEP_NS, N_FIXES, PAGE_SIZE_MAX, T0_NS, Api

URL = "/v1/vehicles/veh-1/positions"


async def _all_pages(
    client: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        r = await client.get(URL, params=query, headers=headers)
        assert r.status_code == 200, r.text
        pages.append(r.json()["items"])
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 100


async def test_pages_cover_every_fix_once_in_device_time_order(
    api: Api, client: httpx.AsyncClient
) -> None:
    pages = await _all_pages(client, api.auth("read"), limit=7)
    assert [len(p) for p in pages] == [7, 7, 7, 4]
    fixes = [f for p in pages for f in p]
    assert [f["seq"] for f in fixes] == list(range(N_FIXES))
    assert [f["ts_wall_ns"] for f in fixes] == sorted(f["ts_wall_ns"] for f in fixes)
    first = fixes[0]
    assert first == {
        "device_id": "veh-1",
        "boot_id": BOOT,
        "seq": 0,
        "ts_wall_ns": T0_NS,
        "lat_deg": 52.5,
        "lon_deg": 13.4,
        "mode": 3,
        "alt_msl_m": 40.0,
        "speed_mps": 8.0,
        "heading_deg": None,
        "hdop": None,
        "sats_used": None,
    }


async def test_pages_are_stable_while_rows_arrive(api: Api, client: httpx.AsyncClient) -> None:
    r = await client.get(URL, params={"limit": 10}, headers=api.auth("read"))
    cursor = r.json()["next_cursor"]
    late = [Entry(1000, Position(T0_NS + 5, 1.0, 2.0))]  # older than the page boundary
    await api.store.ingest_batch(IngestBatch("veh-1", BOOT, "history", late, 1))
    r2 = await client.get(URL, params={"limit": 10, "cursor": cursor}, headers=api.auth("read"))
    assert [f["seq"] for f in r2.json()["items"]] == list(range(10, 20))


async def test_time_window_is_half_open_and_takes_rfc3339(
    api: Api, client: httpx.AsyncClient
) -> None:
    start, end = T0_NS + 3 * FIX_STEP_NS, T0_NS + 8 * FIX_STEP_NS
    r = await client.get(URL, params={"from": start, "to": end}, headers=api.auth("read"))
    assert [f["seq"] for f in r.json()["items"]] == [3, 4, 5, 6, 7]
    iso = {"from": rfc3339(start), "to": rfc3339(end).replace("Z", "+00:00")}
    r2 = await client.get(URL, params=iso, headers=api.auth("read"))
    assert r2.json()["items"] == r.json()["items"]


async def test_limit_is_capped_at_the_page_maximum(api: Api, client: httpx.AsyncClient) -> None:
    r = await client.get(URL, params={"limit": 10**30}, headers=api.auth("read"))
    assert r.status_code == 200
    assert len(r.json()["items"]) == min(N_FIXES, PAGE_SIZE_MAX)


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"cursor": "not-a-cursor"}, 400),
        ({"cursor": "WzEwMDIsNywyXQ"[::-1]}, 400),
        ({"from": "yesterday"}, 422),
        ({"from": "99999-01-01T00:00:00"}, 422),
        ({"from": str(2**64)}, 422),
        ({"from": "2024-06-02T00:00:00Z", "to": "2024-06-01T00:00:00Z"}, 422),
        ({"limit": 0}, 422),
        ({"format": "kml"}, 422),
    ],
)
async def test_bad_parameters_get_a_clear_json_error(
    api: Api, client: httpx.AsyncClient, params: dict[str, Any], status: int
) -> None:
    r = await client.get(URL, params=params, headers=api.auth("read"))
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json()["detail"]


async def test_unknown_vehicle_is_404(api: Api, client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/vehicles/veh-9/positions", headers=api.auth("read"))
    assert r.status_code == 404
    assert r.json() == {"detail": "no device 'veh-9'"}


def _check_feature_collection(doc: dict[str, Any]) -> None:
    """The RFC 7946 shape: members, Point geometries [lon, lat, alt], properties."""
    assert doc["type"] == "FeatureCollection"
    for feature in doc["features"]:
        assert set(feature) == {"type", "id", "geometry", "properties"}
        assert feature["type"] == "Feature"
        geometry = feature["geometry"]
        assert geometry["type"] == "Point"
        lon, lat, alt = geometry["coordinates"]
        assert -180 <= lon <= 180
        assert -90 <= lat <= 90
        assert isinstance(alt, float)
        assert feature["properties"]["device_id"] == "veh-1"


@pytest.mark.parametrize(
    ("headers", "params"),
    [({"Accept": "application/geo+json"}, {}), ({}, {"format": "geojson"})],
)
async def test_geojson_by_accept_header_or_format(
    api: Api, client: httpx.AsyncClient, headers: dict[str, str], params: dict[str, str]
) -> None:
    r = await client.get(
        URL, params={"limit": 3, **params}, headers={**api.auth("read"), **headers}
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/geo+json"
    assert r.headers["vary"] == "Accept"
    doc = r.json()
    _check_feature_collection(doc)
    first = doc["features"][0]
    assert first["id"] == f"veh-1:{BOOT}:0"
    assert first["geometry"]["coordinates"] == [13.4, 52.5, 40.0]
    assert first["properties"]["time"] == rfc3339(T0_NS) == "2024-06-01T11:00:00Z"
    assert first["properties"]["ts_wall_ns"] == T0_NS
    assert doc["next_cursor"]
    r2 = await client.get(
        URL,
        params={"format": "geojson", "cursor": doc["next_cursor"], "limit": 3},
        headers=api.auth("read"),
    )
    assert [f["properties"]["seq"] for f in r2.json()["features"]] == [3, 4, 5]


async def test_format_json_overrides_accept(api: Api, client: httpx.AsyncClient) -> None:
    headers = {**api.auth("read"), "Accept": "application/geo+json"}
    r = await client.get(URL, params={"format": "json"}, headers=headers)
    assert r.headers["content-type"] == "application/json"
    assert "items" in r.json()


@pytest.mark.parametrize(
    ("accept", "geo"),
    [
        (None, False),
        ("*/*", False),
        ("application/json", False),
        ("application/geo+json", True),
        ("application/json;q=0.5, application/geo+json", True),
        ("application/geo+json;q=0.2, application/json", False),
        ("application/geo+json;q=0", False),
        ("application/geo+json;q=nonsense", False),
    ],
)
def test_accept_negotiation(accept: str | None, geo: bool) -> None:
    assert wants_geojson(accept, None) is geo


def test_parse_time_reads_ns_and_rfc3339() -> None:
    assert parse_time("from", None) is None
    assert parse_time("from", "0") == 0
    assert parse_time("from", "2024-06-01T11:00:00Z") == T0_NS
    assert parse_time("from", "2024-06-01T11:00:00") == T0_NS  # no offset: UTC
    assert parse_time("from", "2024-06-01T13:00:00.000001+02:00") == T0_NS + 1000
