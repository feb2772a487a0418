"""Batch planning from a real SQLite store: a small Berlin fleet with profiles, depots, live
positions and jobs in every open state, planned with VROOM on the builtin travel model."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from fleetlink_cloud.dispatch.model import (
    Job,
    JobState,
    Reason,
    RouteStop,
    Shift,
    Stop,
    StopKind,
    TimeWindow,
    VehicleProfile,
)
from fleetlink_cloud.errors import NotFound
from fleetlink_cloud.ingest.events import stream_events
from fleetlink_cloud.jobs import JobService
from fleetlink_cloud.planning import (
    APPLY_REASON,
    Planner,
    PlanRequest,
    PlanResult,
    PlansCannotBeApplied,
    PlanSettings,
)
from fleetlink_cloud.store import IngestBatch, Store, open_store
from fleetlink_cloud.store.base import JobEventRow
from fleetlink_protocols.records import Entry, FixMode, Position
from tests.cloud.dispatch.berlin import EAST, PLACES, WEST

S = 1_000_000_000
NOW = 1_772_442_000  # 2026-03-02 09:00 UTC
NOW_NS = NOW * S
H = 3600
SHIFT = Shift(NOW - H, NOW + 10 * H)
# va: fridge, 10 units, at Westend; vb: 4 units, at Friedrichshain; vc: no profile (defaults),
# at Kreuzberg; vd: 10 units, offline for two hours.
FLEET = {"va": "westend", "vb": "friedrichshain", "vc": "kreuzberg", "vd": "tempelhof"}


async def _online(store: Store, vid: str, place: str, seen: int) -> None:
    await store.add_device(vid, name=vid, password_hash="", created_wall_ns=NOW_NS - 9 * H * S)
    await store.record_birth(
        vid, 1, agent_version="1", started_wall_ns=seen - S, alias_extras={}, received_wall_ns=seen
    )
    at = PLACES[place]
    fix = Position(seen, at.lat, at.lon, FixMode.FIX_3D, speed_mps=0.0)
    await store.ingest_batch(IngestBatch(vid, 1, "live", (Entry(0, fix),), seen), stream_events)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(f"sqlite:///{tmp_path / 'plan.sqlite3'}") as s:
        for depot in (WEST, EAST):
            await s.put_depot(depot)
        for vid, place in FLEET.items():
            await _online(s, vid, place, NOW_NS - (2 * H * S if vid == "vd" else 30 * S))
        await s.record_death("vd", 1, received_wall_ns=NOW_NS - 2 * H * S)
        await s.put_vehicle_profile(
            VehicleProfile("va", frozenset({"fridge"}), (10,), WEST.id, (SHIFT,))
        )
        await s.put_vehicle_profile(
            VehicleProfile("vb", capacity=(4,), depot_id=EAST.id, shifts=(SHIFT,))
        )
        await s.put_vehicle_profile(VehicleProfile("vd", capacity=(10,), depot_id=EAST.id))
        yield s


def job(job_id: str, place: str, *, window: tuple[int, int] | None = None, **kw: Any) -> Job:
    windows = (TimeWindow(*window),) if window else ()
    kw.setdefault("demand", (1,))
    return Job(job_id, Stop(PLACES[place], windows, service_s=300), **kw)


async def add(
    store: Store,
    j: Job,
    vehicle: str | None = None,
    *,
    arrived: bool = False,
    announced: bool = False,
) -> None:
    """Store ``j``, then put it on ``vehicle`` (assigned, arrived or announced)."""
    jobs = JobService(store, clock=lambda: NOW_NS)
    await jobs.create(j)
    if vehicle is None:
        return
    await jobs.transition(j.id, JobState.ASSIGNED, "test", "dispatcher", vehicle_id=vehicle)
    if arrived:
        await jobs.answer(j.id, "arrived")
    if announced:
        row = await store.get_job(j.id)
        assert row is not None
        # No route announces yet (the live dispatcher will): written as the store takes it.
        event = JobEventRow(0, j.id, NOW_NS, "transition", row.job.state, row.job.state, "eta")
        await store.update_job(
            dataclasses.replace(row.job, announced=True),
            expected_version=row.version,
            updated_wall_ns=NOW_NS,
            event=event,
        )


def planner(store: Store, **kw: Any) -> Planner:
    return Planner(store, clock=lambda: NOW_NS + 17, **kw)


def on(result: PlanResult, vehicle: str) -> list[str]:
    route = next(r for r in result.plan.routes if r.vehicle_id == vehicle)
    return [s.job_id for s in route.stops]


async def test_the_plan_respects_skills_capacity_windows_and_presence(store: Store) -> None:
    await add(store, job("cold", "moabit", skills=frozenset({"fridge"})))
    await add(store, job("heavy", "wilmersdorf", demand=(8,)))
    await add(store, job("bulky", "alexanderplatz", demand=(50,)))  # only the default profile
    await add(store, job("later", "friedrichshain", window=(NOW + 2 * H, NOW + 3 * H)))
    for k, place in enumerate(("karlshorst", "lichtenberg", "tempelhof", "spandau")):
        await add(store, job(f"j{k}", place, demand=(2,)))
    result = await planner(store).plan(PlanRequest(churn_limit=None))
    assert result.plan.unassigned == ()
    assert "cold" in on(result, "va")
    assert "heavy" not in on(result, "vb")
    assert "bulky" in on(result, "vc")
    assert on(result, "vd") == []  # silent for two hours: no new work
    jobs = {j.id: j for j in result.fleet.jobs}
    capacity = {"va": 10, "vb": 4, "vc": 2**50}
    for route in result.plan.routes:
        load = sum(jobs[s.job_id].demand[0] for s in route.stops)
        assert load <= capacity.get(route.vehicle_id, 0), route.vehicle_id
        arrivals = [s.arrival for s in route.stops]
        assert arrivals == sorted(arrivals)
        assert all(t >= NOW for t in arrivals)
        for s in route.stops:
            for w in jobs[s.job_id].stop.windows:
                assert w.start <= s.service_start <= w.end
            assert s.lateness_s == 0
    va = next(r for r in result.plan.routes if r.vehicle_id == "va")
    assert [(s.job_id, s.arrival) for s in result.routes["va"]] == [
        (s.job_id, s.arrival) for s in va.stops
    ]
    assert not result.applied


async def test_started_and_announced_stops_stay_and_the_live_order_is_kept(
    store: Store,
) -> None:
    await add(store, job("here", "friedrichshain"), "vb", arrived=True)
    await add(store, job("b1", "alexanderplatz"), "vb", announced=True)
    await add(store, job("b2", "kreuzberg"), "vb", announced=True)
    await add(store, job("promised", "marzahn"), "va", announced=True)  # far from va
    await add(store, job("near", "marzahn"))

    async def live_routes() -> Mapping[str, Sequence[RouteStop]]:
        b2 = RouteStop("b2", StopKind.SINGLE, PLACES["kreuzberg"])
        return {"vb": [b2, RouteStop("b1", StopKind.SINGLE, PLACES["alexanderplatz"])]}

    result = await planner(store, routes=live_routes).plan(PlanRequest(churn_limit=None))
    vb = next(r for r in result.plan.routes if r.vehicle_id == "vb")
    assert [(s.job_id, s.fixed) for s in vb.stops[:3]] == [
        ("here", True),
        ("b2", True),
        ("b1", True),
    ]
    assert result.routes["vb"][0].started
    assert not result.routes["vb"][1].started
    va = next(r for r in result.plan.routes if r.vehicle_id == "va")
    assert va.stops[0].job_id == "promised"
    assert va.stops[0].fixed
    without = await planner(store).plan(PlanRequest(churn_limit=None))
    assert on(without, "vb")[:3] == ["here", "b1", "b2"]  # by creation without live routes


async def test_the_churn_limit_is_honoured(store: Store) -> None:
    for k, place in enumerate(("marzahn", "karlshorst", "lichtenberg", "friedrichshain")):
        await add(store, job(f"east{k}", place), "va")  # all on the vehicle in the west
    free = await planner(store).plan(PlanRequest(churn_limit=None))
    assert len(free.plan.churn.moved) >= 2  # without a limit they leave va
    limited = await planner(store).plan(PlanRequest(churn_limit=1))
    assert len(limited.plan.churn.moved) <= 1
    assert limited.churn_limit == 1
    assert len(on(limited, "va")) >= 3
    assert limited.plan.unassigned == ()
    default = await planner(store, settings=PlanSettings(churn_limit=0)).plan(PlanRequest())
    assert default.plan.churn.moved == ()
    assert sorted(on(default, "va")) == [
        "east0",
        "east1",
        "east2",
        "east3",
    ]


async def test_an_offline_vehicles_jobs_move_whatever_the_limit(store: Store) -> None:
    await add(store, job("stranded", "tempelhof"), "vd")
    result = await planner(store).plan(PlanRequest(churn_limit=0))
    assert result.plan.churn.forced == ("stranded",)
    assert "stranded" not in on(result, "vd")
    assert "stranded" in result.plan.assignment()


async def test_a_faulted_vehicle_gets_no_work_and_its_jobs_move(store: Store) -> None:
    # As the fault rule does live: a critical fault takes the vehicle out of the plan.
    await add(store, job("bulky", "alexanderplatz", demand=(50,)))  # only vc can carry it
    await add(store, job("mine", "moabit"), "vc")
    result = await planner(store, faulted=lambda: {"vc"}).plan(PlanRequest(churn_limit=None))
    assert "bulky" in [u.job_id for u in result.unassigned]
    assert "bulky" not in on(result, "vc")
    assert result.plan.churn.forced == ("mine",)
    healthy = await planner(store).plan(PlanRequest(churn_limit=None))
    assert "bulky" in on(healthy, "vc")


async def test_unassigned_jobs_are_reported_with_a_reason(store: Store) -> None:
    await add(store, job("crane", "moabit", skills=frozenset({"crane"})))
    await add(store, job("missed", "moabit", window=(NOW - 2 * H, NOW - H)))
    await add(store, job("cold11", "moabit", skills=frozenset({"fridge"}), demand=(11,)))
    await add(store, job("for-vd", "moabit", locked_vehicle_id="vd"))
    await add(store, job("fine", "moabit"))
    result = await planner(store).plan(PlanRequest())
    reasons = {u.job_id: u.reason for u in result.unassigned}
    assert reasons == {
        "crane": Reason.SKILLS,
        "missed": Reason.WINDOW_VS_SHIFT,
        "cold11": Reason.CAPACITY,
        "for-vd": Reason.LOCKED,
    }
    assert "fine" in result.plan.assignment()


async def test_applying_hands_every_route_to_the_dispatcher(store: Store) -> None:
    await add(store, job("a", "moabit"), "vb")
    await add(store, job("b", "karlshorst"))
    calls: list[tuple[dict[str, tuple[RouteStop, ...]], str]] = []

    async def apply(routes: Mapping[str, Sequence[RouteStop]], reason: str) -> None:
        calls.append(({v: tuple(s) for v, s in routes.items()}, reason))

    p = planner(store, apply=apply)
    dry = await p.plan(PlanRequest())
    assert calls == []
    assert not dry.applied
    done = await p.plan(PlanRequest(apply=True))
    assert done.applied
    [(routes, reason)] = calls
    assert reason == APPLY_REASON
    assert set(routes) == set(FLEET)
    sent = {s.job_id: v for v, stops in routes.items() for s in stops}
    assert sent == done.plan.assignment() == {"a": sent["a"], "b": sent["b"]}
    assert all(s.arrival is not None and s.arrival >= NOW for r in routes.values() for s in r)
    with pytest.raises(PlansCannotBeApplied, match="no live dispatcher"):
        await planner(store).plan(PlanRequest(apply=True))


async def test_a_partial_plan_leaves_the_other_vehicles_alone(store: Store) -> None:
    await add(store, job("mine", "karlshorst"), "va")
    await add(store, job("open", "lichtenberg"))
    result = await planner(store).plan(PlanRequest(vehicles=("vb",)))
    assert [r.vehicle_id for r in result.plan.routes] == ["vb"]
    assert {j.id for j in result.fleet.jobs} == {"open"}
    assert on(result, "vb") == ["open"]
    with pytest.raises(NotFound, match="nope"):
        await planner(store).plan(PlanRequest(vehicles=("vb", "nope")))


async def test_only_the_last_plans_are_kept(store: Store) -> None:
    p = planner(store, settings=PlanSettings(keep=1))
    first = await p.plan(PlanRequest())
    assert p.get(first.id) is first
    second = await p.plan(PlanRequest())
    assert p.get(first.id) is None
    assert p.get(second.id) is second
    assert second.time_limit_s == PlanSettings().time_limit_s
    capped = await p.plan(PlanRequest(time_limit_s=900.0))
    assert capped.time_limit_s == PlanSettings().max_time_limit_s
