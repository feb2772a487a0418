"""The demo's dispatch lines, from stream events made by the service's own producers (JobService's
``stream_events``, the tracker's ``eta_event``, the rules' ``reallocated_event``, the assigner's
``unassigned_event``), in the JSON shape the WebSocket sends."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fleetlink_cloud.api.routers.routes import route_out
from fleetlink_cloud.api.schemas_jobs import job_out
from fleetlink_cloud.assigner import unassigned_event
from fleetlink_cloud.bus import EVENT_TYPES, StreamEvent
from fleetlink_cloud.demo_events import STREAM_TYPES, DispatchFeed, Looked, Lookup
from fleetlink_cloud.dispatch.eta import EtaChange, StopEta
from fleetlink_cloud.dispatch.model import (
    Job,
    JobState,
    Location,
    RouteStop,
    Stop,
    StopKind,
    TimeWindow,
)
from fleetlink_cloud.dispatch.rules import Action, Firing, Rule, audit_record
from fleetlink_cloud.jobs import stream_events
from fleetlink_cloud.reallocation import reallocated_event
from fleetlink_cloud.store.base import JobEventRow, JobRow, PlannedStop, RouteRow
from fleetlink_cloud.tracking import eta_event

T0 = int(datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp())  # 12:00 UTC
NS = 1_000_000_000
STOP = Stop(Location(52.52, 13.405), (TimeWindow(T0 + 3000, T0 + 5400),), 240)


def feed() -> DispatchFeed:
    return DispatchFeed(watched_dtcs=["p0300"], tz=UTC)


def job(state: JobState = JobState.NEW, vehicle: str | None = None, **kw: Any) -> Job:
    return Job("j-7", STOP, state=state, vehicle_id=vehicle, demand=(2,), **kw)


def transition(
    to: JobState,
    reason: str,
    *,
    before: str | None = None,
    after: str | None = None,
    evidence: dict[str, Any] | None = None,
    frm: JobState = JobState.NEW,
) -> list[dict[str, Any]]:
    row = JobRow(job(to, after), 3, T0 * NS, T0 * NS)
    event = JobEventRow(
        1,
        "j-7",
        T0 * NS,
        "transition",
        frm,
        to,
        reason,
        vehicle_before=before,
        vehicle_after=after,
        evidence=evidence or {},
    )
    return [e.to_json() for e in stream_events(row, event)]


def state_changed(events: list[dict[str, Any]]) -> dict[str, Any]:
    (ev,) = [e for e in events if e["type"] == "job.state_changed"]
    return ev


def test_it_asks_only_for_the_dispatch_events_the_stream_has() -> None:
    assert set(STREAM_TYPES) <= set(EVENT_TYPES)
    assert "job.assigned" not in STREAM_TYPES  # a state change to assigned says it already


def test_created_names_the_stops_windows_and_needs_from_the_job() -> None:
    row = JobRow(job(skills=frozenset({"refrigerated"})), 1, T0 * NS, T0 * NS)
    created = JobEventRow(1, "j-7", T0 * NS, "created", None, JobState.NEW, "created")
    (event,) = [e.to_json() for e in stream_events(row, created)]
    f = feed()
    assert f.lookup(event) == Lookup(job_id="j-7")
    looked = Looked(job=job_out(row).model_dump(mode="json"))
    assert f.line(event, looked) == (
        "dispatch job j-7 created: stop 12:50-13:30, 4 min service, demand 2, needs refrigerated"
    )
    assert f.line(event) == "dispatch job j-7 created"
    assert f.states == {"j-7": "new"}


def test_an_offer_counts_candidates_and_exclusions_from_the_explanation() -> None:
    evidence = {"cost": 312.4, "added_travel_s": 312.4, "candidates": 7}
    event = state_changed(
        transition(JobState.OFFERED, "instant_assignment", after="veh-2", evidence=evidence)
    )
    explanation = {
        "excluded": [
            {"vehicle_id": "veh-5", "reason": "skills", "missing": ["x"]},
            {"vehicle_id": "veh-6", "reason": "capacity"},
            {"vehicle_id": "veh-8", "reason": "capacity"},
        ]
    }
    f = feed()
    assert f.lookup(event) == Lookup(job_id="j-7")
    line = f.line(event, Looked(job={"explanation": explanation}))
    assert line == (
        "dispatch job j-7 offered to veh-2 "
        "(+312 s driving, 7 candidates, 3 excluded: capacity 2, skills 1)"
    )
    moved = state_changed(
        transition(
            JobState.OFFERED,
            "reallocated",
            after="veh-3",
            evidence={"added_travel_s": -50, "candidates": 1},
        )
    )
    assert (
        f.line(moved)
        == "dispatch job j-7 offered to veh-3 (reallocated, -50 s driving, 1 candidate)"
    )


def test_an_assignment_shows_the_eta_and_its_range_from_the_stored_route() -> None:
    event = state_changed(
        transition(
            JobState.ASSIGNED,
            "driver_accepted",
            before="veh-2",
            after="veh-2",
            frm=JobState.OFFERED,
        )
    )
    f = feed()
    assert f.lookup(event) == Lookup(job_id="j-7", route_of="veh-2")
    stop = RouteStop("j-7", StopKind.SINGLE, STOP.location, STOP.windows, 240, (2,))
    planned = PlannedStop(stop, eta=T0 + 2460, early=T0 + 2280, late=T0 + 2760, lateness_s=0)
    route = route_out("veh-2", RouteRow("veh-2", (planned,), T0 * NS)).model_dump(mode="json")
    assert f.line(event, Looked(route=route)) == (
        "dispatch job j-7 assigned to veh-2, ETA 12:41 (12:38-12:46)"
    )
    # Without a stored route yet: the ETA the assigner explained with its offer.
    explanation = {
        "eta": {
            "stops": [
                {
                    "job_id": "j-7",
                    "kind": "single",
                    "arrival": T0 + 2520,
                    "early": None,
                    "late": None,
                }
            ]
        }
    }
    looked = Looked(job={"explanation": explanation}, route={"stops": []})
    assert f.line(event, looked) == "dispatch job j-7 assigned to veh-2, ETA 12:42"
    assert f.line(event) == "dispatch job j-7 assigned to veh-2"


def test_eta_changes_show_both_times_and_the_shift() -> None:
    change = EtaChange("j-7", StopKind.DELIVERY, T0 + 2460, T0 + 2820, None, None)
    stop = StopEta("j-7", StopKind.DELIVERY, 600, T0 + 2820, 0, T0 + 3000, T0 + 3240, 0)
    event = eta_event("veh-2", change, stop, T0 * NS).to_json()
    assert feed().line(event) == "dispatch job j-7 delivery ETA 12:41 -> 12:47 (+6 min)"
    arrived = feed()
    arrived.states["j-7"] = "arrived"  # at the pickup: the delivery's ETA is still news
    assert arrived.line(event) == "dispatch job j-7 delivery ETA 12:41 -> 12:47 (+6 min)"
    single = EtaChange("j-7", StopKind.SINGLE, T0 + 2460, T0 + 2820, None, None)
    assert arrived.line(eta_event("veh-2", single, stop, T0 * NS).to_json()) is None
    late = StopEta("j-7", StopKind.DELIVERY, 600, T0 + 2820, 0, T0 + 5700, T0 + 5940, 300)
    assert feed().line(eta_event("veh-2", change, late, T0 * NS).to_json()) == (
        "dispatch job j-7 delivery ETA 12:41 -> 12:47 (+6 min, 5 min late)"
    )


def test_arrivals_by_geofence_and_by_driver_and_completion() -> None:
    geofence = state_changed(
        transition(
            JobState.ARRIVED,
            "geofence_arrival",
            before="veh-2",
            after="veh-2",
            frm=JobState.EN_ROUTE,
            evidence={"stop": "single", "dwell_s": 72.4},
        )
    )
    driver = state_changed(
        transition(
            JobState.ARRIVED,
            "driver_arrived",
            before="veh-2",
            after="veh-2",
            frm=JobState.EN_ROUTE,
            evidence={"stop": "pickup"},
        )
    )
    done = state_changed(
        transition(
            JobState.COMPLETED,
            "driver_completed",
            before="veh-2",
            after="veh-2",
            frm=JobState.ARRIVED,
        )
    )
    f = feed()
    assert f.line(geofence) == "dispatch job j-7 arrived (geofence, dwell 72 s)"
    assert f.line(driver) == "dispatch job j-7 arrived at pickup (driver)"
    assert f.line(done) == "dispatch job j-7 completed by veh-2 (driver)"
    assert f.states["j-7"] == "completed"


def test_a_rejection_and_a_job_nobody_can_take() -> None:
    rejected = transition(
        JobState.NEW,
        "driver_rejected",
        before="veh-2",
        frm=JobState.OFFERED,
        evidence={"rejected_by": "veh-2"},
    )
    f = feed()
    lines = [f.line(e) for e in rejected]  # job.state_changed and job.unassigned
    assert [x for x in lines if x] == ["dispatch job j-7 rejected by veh-2 (driver)"]
    row = JobRow(job(), 4, T0 * NS, T0 * NS)
    reasons = [{"reason": "window_vs_shift", "vehicles": 6}, {"reason": "too_far", "vehicles": 4}]
    stays = unassigned_event(row, "instant_assignment", reasons, T0 * NS).to_json()
    assert f.line(stays) == "dispatch job j-7 unassigned (window_vs_shift 6, too_far 4)"


def test_reallocations_name_the_rule_and_its_evidence() -> None:
    firing = Firing(
        Rule.OFFLINE,
        "j-7",
        "veh-1",
        {"last_seen": T0, "offline_s": 95, "reallocate_at": T0 + 45},
        Action.REALLOCATE,
    )
    f = feed()
    moved = reallocated_event(audit_record(firing, "veh-2", T0 + 95), T0 * NS).to_json()
    assert (
        f.line(moved) == "dispatch job j-7 reallocated veh-1 -> veh-2 (rule offline: silent 95 s)"
    )
    fault = Firing(
        Rule.FAULT,
        "j-7",
        "veh-3",
        {"mil_on": True, "red_stop_lamp_codes": [], "listed_dtcs": ["P0300"]},
        Action.REALLOCATE,
    )
    nobody = reallocated_event(audit_record(fault, None, T0), T0 * NS).to_json()
    assert f.line(nobody) == (
        "dispatch job j-7 reallocated veh-3 -> nobody (unassigned) (rule fault: P0300)"
    )
    # The move's own transition back to new is not a second line.
    back = state_changed(
        transition(JobState.NEW, "reallocated", before="veh-3", frm=JobState.ASSIGNED)
    )
    assert f.line(back) is None
    assert f.reallocations == 2


def test_vehicles_going_offline_coming_back_and_watched_faults() -> None:
    def ev(kind: str, **data: Any) -> dict[str, Any]:
        return StreamEvent(5, kind, "veh-2", T0 * NS, data).to_json()

    f = feed()
    assert f.line(ev("vehicle.online", reason="birth")) is None  # every start: not news
    assert (
        f.line(ev("vehicle.offline", reason="timeout"))
        == "dispatch vehicle veh-2 offline (no data)"
    )
    assert f.line(ev("vehicle.online", reason="data")) == "dispatch vehicle veh-2 back online"
    assert f.line(ev("dtc.raised", code="P0420", active=True)) is None  # not a fault rule code
    assert f.line(ev("dtc.raised", code="P0300", description="Misfire")) == (
        "dispatch vehicle veh-2 fault P0300 (Misfire)"
    )


def test_the_summary_counts_jobs_by_their_latest_state() -> None:
    f = feed()
    assert f.summary() == "dispatch: 0 jobs (none yet), 0 reallocated"
    for job_id, state in [("a", "new"), ("b", "offered"), ("a", "assigned"), ("c", "new")]:
        event = {"type": "job.state_changed", "data": {"job_id": job_id, "to_state": state}}
        f.line(event)
    assert f.summary() == "dispatch: 3 jobs (new 1, offered 1, assigned 1), 0 reallocated"
