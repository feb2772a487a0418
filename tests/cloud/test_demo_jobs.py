"""The demo's job generator and fleet profiles: seeded, realistic, and valid API requests."""

from __future__ import annotations

from typing import Any

import pytest

from fleetlink_cloud.api.schemas_jobs import DispatchProfileIn, JobIn
from fleetlink_cloud.demo_jobs import (
    CAR_CAPACITY,
    SKILL,
    VAN_CAPACITY,
    JobGenerator,
    fleet_profiles,
    spacing_s,
)
from fleetlink_cloud.dispatch.model import Location
from fleetlink_cloud.dispatch.routing.greatcircle import great_circle_m

NOW = 1_780_000_000
CENTRE = (52.52, 13.405)


def jobs(n: int, seed: int = 7, **kw: Any) -> list[dict[str, Any]]:
    gen = JobGenerator(*CENTRE, seed=seed, **kw)
    return [gen.next(NOW + 10 * i).body for i in range(n)]


def stops(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in (body.get("pickup"), body["stop"]) if s is not None]


def test_the_same_seed_gives_the_same_jobs_and_another_seed_others() -> None:
    assert jobs(50) == jobs(50)
    assert jobs(50) != jobs(50, seed=8)


def test_ids_count_up_under_the_prefix_and_keys_name_them() -> None:
    gen = JobGenerator(*CENTRE, seed=1, prefix="jab12-")
    made = [gen.next(NOW) for _ in range(3)]
    assert [j.id for j in made] == ["jab12-0001", "jab12-0002", "jab12-0003"]
    assert [j.key for j in made] == [f"fleetlink-demo:jab12-000{i}" for i in (1, 2, 3)]
    assert gen.made == 3


def test_every_job_is_a_valid_create_request() -> None:
    for body in jobs(300):
        JobIn.model_validate(body)  # the API's own request model, strict (extra="forbid")


def test_stops_lie_within_the_radius_and_spread_over_it() -> None:
    centre = Location(*CENTRE)
    distances = [
        great_circle_m(centre, Location(s["location"]["lat_deg"], s["location"]["lon_deg"]))
        for body in jobs(500)
        for s in stops(body)
    ]
    assert max(distances) <= 3000 * 1.001
    # Uniform over the disc: half the area lies beyond r / sqrt(2).
    beyond = sum(1 for d in distances if d > 3000 / 2**0.5) / len(distances)
    assert 0.4 < beyond < 0.6, beyond


def test_windows_open_10_to_90_minutes_ahead_and_last_20_to_60() -> None:
    gen = JobGenerator(*CENTRE, seed=3)
    for i in range(300):
        now = NOW + 10 * i
        body = gen.next(now).body
        first = stops(body)[0]
        (w,) = first["windows"]
        assert now + 600 <= w["start_unix_s"] <= now + 5400
        for s in stops(body):
            (win,) = s["windows"]
            assert 1200 <= win["end_unix_s"] - win["start_unix_s"] <= 3600
            assert 120 <= s["service_s"] <= 300
        if "pickup" in body:
            pickup, delivery = body["pickup"]["windows"][0], body["stop"]["windows"][0]
            assert pickup["start_unix_s"] + 900 <= delivery["start_unix_s"]
            assert delivery["start_unix_s"] <= pickup["start_unix_s"] + 2400


def test_the_mix_of_shipments_skills_and_bulky_jobs() -> None:
    made = jobs(2000)
    shipments = sum(1 for b in made if "pickup" in b) / len(made)
    skilled = sum(1 for b in made if b.get("skills") == [SKILL]) / len(made)
    bulky = [b for b in made if b["demand"][0] > CAR_CAPACITY[0]]
    assert 0.17 < shipments < 0.23
    assert 0.08 < skilled < 0.12
    assert 0.08 < len(bulky) / len(made) < 0.12
    # A bulky job fits a van only; every other job fits any vehicle.
    assert all(b["demand"][0] <= VAN_CAPACITY[0] for b in made)
    assert all(1 <= b["demand"][0] <= 3 for b in made if b not in bulky)


def test_without_the_skill_in_the_fleet_no_job_asks_for_it() -> None:
    assert not any(b.get("skills") for b in jobs(500, skills=False))


def test_profiles_alternate_vans_and_cars_with_the_skill_on_one_vehicle() -> None:
    ids = [f"veh-sim-{i:03d}" for i in range(1, 6)]
    profiles = fleet_profiles(ids, NOW, 150.0, skilled="veh-sim-001")
    assert list(profiles) == ids
    for body in profiles.values():
        DispatchProfileIn.model_validate(body)
    capacities = [p["capacity"] for p in profiles.values()]
    assert capacities == [list(VAN_CAPACITY), list(CAR_CAPACITY)] * 2 + [list(VAN_CAPACITY)]
    assert [vid for vid, p in profiles.items() if p["skills"]] == ["veh-sim-001"]
    assert fleet_profiles(ids, NOW, None, skilled=None)["veh-sim-001"]["skills"] == []


@pytest.mark.parametrize("duration_s", [150.0, 3600.0, None])
def test_the_shift_covers_now_and_every_window_of_the_jobs_made_meanwhile(
    duration_s: float | None,
) -> None:
    (profile,) = fleet_profiles(["veh-sim-001"], NOW, duration_s, skilled=None).values()
    (shift,) = profile["shifts"]
    last_job_s = NOW + (int(duration_s) if duration_s is not None else 8 * 3600)
    gen = JobGenerator(*CENTRE, seed=5)
    latest = max(
        s["windows"][0]["end_unix_s"] + s["service_s"]
        for body in (gen.next(last_job_s).body for _ in range(300))
        for s in stops(body)
    )
    assert shift["start_unix_s"] < NOW
    assert latest + 900 <= shift["end_unix_s"]  # the shift_end rule's default margin


def test_spacing_of_a_steady_rate() -> None:
    assert spacing_s(6) == 10.0
    assert spacing_s(0.5) == 120.0
    with pytest.raises(ValueError, match="positive"):
        spacing_s(0)
