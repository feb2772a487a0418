"""``/v1/vehicles/{id}/summary``: distance, engine hours and trips of a range, in device time."""

from __future__ import annotations

import httpx
import pytest

from fleetlink_cloud.ingest.events import stream_events
from fleetlink_cloud.live.derived import haversine_m
from fleetlink_cloud.store import IngestBatch
from fleetlink_protocols.records import Entry, Position, SignalValue
from tests.cloud.api.harness import BOOT, FIX_STEP_NS, N_FIXES, T0_NS, Api

HOP_M = haversine_m(52.5, 13.4, 52.501, 13.4)  # the seeded drive moves 1e-3 deg north per fix
HOUR_NS = 3_600_000_000_000


async def test_the_seeded_drive_is_one_trip(api: Api, client: httpx.AsyncClient) -> None:
    r = await client.get(
        "/v1/vehicles/veh-1/summary",
        params={"from": T0_NS, "to": T0_NS + HOUR_NS},
        headers=api.auth("read"),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["positions"] == N_FIXES
    assert body["distance_m"] == pytest.approx((N_FIXES - 1) * HOP_M, abs=0.1)
    (trip,) = body["trips"]
    assert (trip["start_wall_ns"], trip["positions"]) == (T0_NS, N_FIXES)
    assert trip["end_wall_ns"] == T0_NS + (N_FIXES - 1) * FIX_STEP_NS
    assert body["engine_hours_h"] == 0.0  # one engine-speed sample: no interval to count


async def test_late_history_counts_in_device_time_order(
    api: Api, client: httpx.AsyncClient
) -> None:
    """Ten earlier fixes of the same road arrive after the live ones, on the history lane."""
    early = [
        Position(T0_NS - (10 - i) * FIX_STEP_NS, 52.5 - (10 - i) * 1e-3, 13.4, speed_mps=8.0)
        for i in range(10)
    ]
    rpm = [
        SignalValue(T0_NS - (10 - i) * FIX_STEP_NS, "Vehicle.OBD.EngineSpeed", 1500.0)
        for i in range(10)
    ]
    entries = [Entry(1000 + i, r) for i, r in enumerate(early + rpm)]
    await api.store.ingest_batch(
        IngestBatch("veh-1", BOOT, "history", entries, received_wall_ns=T0_NS + 2 * HOUR_NS),
        stream_events,
    )
    r = await client.get(
        "/v1/vehicles/veh-1/summary",
        params={"from": T0_NS - HOUR_NS, "to": T0_NS + HOUR_NS},
        headers=api.auth("read"),
    )
    body = r.json()
    assert body["positions"] == N_FIXES + 10
    # One straight road: the history joins the live fixes as if it had streamed first.
    assert body["distance_m"] == pytest.approx((N_FIXES + 9) * HOP_M, abs=0.2)
    assert len(body["trips"]) == 1
    assert body["trips"][0]["start_wall_ns"] == early[0].ts_wall_ns
    # The engine turned from the first history sample to the live one 350 s later (nine 10 s
    # steps, then 260 s to the seeded sample, under the 300 s gap limit).
    assert body["engine_hours_h"] == pytest.approx(350 / 3600, abs=1e-4)


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"from": T0_NS, "to": T0_NS}, "must be after from"),
        ({"from": T0_NS, "to": T0_NS + 32 * 24 * HOUR_NS}, "at most 31 days"),
        ({"from": "yesterday", "to": T0_NS}, "from: not an integer"),
    ],
)
async def test_bad_ranges_are_refused(
    api: Api, client: httpx.AsyncClient, params: dict[str, object], detail: str
) -> None:
    r = await client.get("/v1/vehicles/veh-1/summary", params=params, headers=api.auth("read"))
    assert r.status_code == 422
    assert detail in r.text


async def test_unknown_vehicle_is_404(api: Api, client: httpx.AsyncClient) -> None:
    r = await client.get(
        "/v1/vehicles/nope/summary", params={"from": 0, "to": 1}, headers=api.auth("read")
    )
    assert r.status_code == 404
