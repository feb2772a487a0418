"""Reallocation rules: each rule firing, holding in its grace period, suppressed by anti-thrash
limits, blocked by a dispatcher lock, superseded; started jobs; ordering; audit records."""

from __future__ import annotations

import json
import random

import pytest
from pydantic import ValidationError

from fleetlink_cloud.dispatch.model import (
    Job,
    JobState,
    Location,
    Shift,
    Stop,
    StopKind,
    TimeWindow,
)
from fleetlink_cloud.dispatch.rules import (
    Action,
    AntiThrash,
    FaultSettings,
    Firing,
    Hold,
    JobSnapshot,
    Rule,
    RuleSettings,
    Snapshot,
    VehicleSnapshot,
    audit_record,
    evaluate,
    lateness_s,
)
from fleetlink_cloud.store.base import Device, DtcState, Presence, SignalRow, VehicleState
from fleetlink_protocols.j1939 import LampState
from fleetlink_protocols.records import DtcSource

NOW = 1_733_050_800  # 2024-12-01 11:00 UTC
S = 1_000_000_000
DEPOT = Location(52.5200, 13.4050)  # Berlin Mitte
CUSTOMER = Location(52.4862, 13.4270)  # Neukölln
DEFAULTS = RuleSettings()


def job(
    job_id: str = "job-1",
    vehicle_id: str | None = "van-1",
    state: JobState = JobState.ASSIGNED,
    window: tuple[int, int] = (NOW, NOW + 3600),
    **kw: object,
) -> Job:
    stop = Stop(CUSTOMER, (TimeWindow(*window),), service_s=600)
    return Job(job_id, stop, state=state, vehicle_id=vehicle_id, **kw)  # type: ignore[arg-type]


def on_time(j: Job) -> JobSnapshot:
    return JobSnapshot(j, eta={StopKind.SINGLE: NOW + 1200})


def vehicle(vehicle_id: str = "van-1", **kw: object) -> VehicleSnapshot:
    fields: dict[str, object] = {"online": True, "last_seen": NOW - 5, "fuel_pct": 60.0}
    fields.update(kw)
    return VehicleSnapshot(vehicle_id, **fields)  # type: ignore[arg-type]


def dtc(
    code: str,
    *,
    spn: int | None = None,
    fmi: int | None = None,
    lamps: int | None = None,
    active: bool = True,
) -> DtcState:
    source = DtcSource.J1939 if spn is not None else DtcSource.OBD
    ts = (NOW - 60) * S
    return DtcState("van-1", source, 0, code, active, spn, fmi, None, lamps, ts, ts, ts)


def lamp(
    red_stop: LampState = LampState.OFF,
    mil: LampState = LampState.OFF,
    amber: LampState = LampState.OFF,
) -> int:
    """A DM1 lamp word (J1939-73: byte 1 status bits MIL 8-7, red stop 6-5, amber 4-3)."""
    status = (mil << 6) | (red_stop << 4) | (amber << 2)
    return status << 8 | 0xFF  # flash byte: not available


def run(
    jobs: list[JobSnapshot],
    vehicles: list[VehicleSnapshot],
    now: int = NOW,
    settings: RuleSettings = DEFAULTS,
) -> list[Firing]:
    return evaluate(Snapshot(now, tuple(vehicles), tuple(jobs)), settings)


def brief(firings: list[Firing]) -> list[tuple[str, str, str, str | None]]:
    return [(f.job_id, f.rule.value, f.action.value, f.hold and f.hold.value) for f in firings]


def test_a_healthy_fleet_fires_nothing() -> None:
    jobs = [on_time(job(f"job-{i}")) for i in range(3)]
    assert run(jobs, [vehicle()]) == []


# -- late ---------------------------------------------------------------------------------------


def test_lateness() -> None:
    w = (TimeWindow(1000, 2000), TimeWindow(5000, 6000))
    assert lateness_s(w, 500) == 0  # early: waits for the window
    assert lateness_s(w, 2000) == 0  # the end is inclusive
    assert lateness_s(w, 3000) == 0  # misses the first, waits for the second
    assert lateness_s(w, 6500) == 500
    assert lateness_s((), 10**9) == 0


def test_late_fires_past_the_threshold_only() -> None:
    j = job(window=(NOW, NOW + 1800))
    exactly = JobSnapshot(j, eta={StopKind.SINGLE: NOW + 1800 + 900})
    assert run([exactly], [vehicle()]) == []  # late by exactly late_by_s: not "more than"
    late = JobSnapshot(j, eta={StopKind.SINGLE: NOW + 1800 + 901})
    [f] = run([late], [vehicle()])
    assert (f.rule, f.action, f.hold, f.vehicle_id) == (Rule.LATE, Action.REALLOCATE, None, "van-1")
    assert f.evidence == {
        "late_s": 901,
        "stop": "single",
        "predicted_start": NOW + 2701,
        "late_by_s": 900,
    }


def test_late_shipment_names_the_late_stop() -> None:
    pickup = Stop(DEPOT, (TimeWindow(NOW, NOW + 600),))
    j = Job(
        "ship-1",
        Stop(CUSTOMER, (TimeWindow(NOW, NOW + 3600),)),
        pickup=pickup,
        state=JobState.EN_ROUTE,
        vehicle_id="van-1",
    )
    js = JobSnapshot(j, eta={StopKind.PICKUP: NOW + 300, StopKind.DELIVERY: NOW + 3600 + 1000})
    [f] = run([js], [vehicle()])
    assert (f.rule, f.evidence["stop"], f.evidence["late_s"]) == (Rule.LATE, "delivery", 1000)


# -- offline ------------------------------------------------------------------------------------


def test_offline_waits_holds_in_grace_then_reallocates() -> None:
    js = on_time(job())
    assert run([js], [vehicle(online=False, last_seen=NOW - 299)]) == []
    [held] = run([js], [vehicle(online=False, last_seen=NOW - 300)])
    assert (held.rule, held.action, held.hold) == (Rule.OFFLINE, Action.HOLD, Hold.GRACE)
    assert held.evidence == {"last_seen": NOW - 300, "offline_s": 300, "reallocate_at": NOW + 600}
    [moved] = run([js], [vehicle(online=False, last_seen=NOW - 900)])
    assert (moved.action, moved.hold, moved.evidence["offline_s"]) == (Action.REALLOCATE, None, 900)
    # Online again: nothing, however old last_seen is (presence decides online).
    assert run([js], [vehicle(online=True, last_seen=NOW - 900)]) == []


def test_offline_never_seen_or_unknown_vehicle_reallocates() -> None:
    js = on_time(job())
    [never] = run([js], [vehicle(online=False, last_seen=None)])
    assert (never.action, never.evidence["last_seen"]) == (Action.REALLOCATE, None)
    [unknown] = run([js], [])
    assert (unknown.rule, unknown.action) == (Rule.OFFLINE, Action.REALLOCATE)


def test_offline_fires_once_per_not_started_job() -> None:
    jobs = [
        on_time(job("job-a")),
        on_time(job("job-b", state=JobState.OFFERED)),
        on_time(job("job-c", state=JobState.EN_ROUTE)),
        on_time(job("job-d", state=JobState.ARRIVED)),  # started: stays
        on_time(job("job-e", state=JobState.COMPLETED)),
        on_time(job("job-f", state=JobState.NEW, vehicle_id=None)),
        on_time(job("job-g", vehicle_id="van-2")),  # another, healthy vehicle
    ]
    vans = [vehicle(online=False, last_seen=NOW - 3600), vehicle("van-2")]
    assert brief(run(jobs, vans)) == [
        ("job-a", "offline", "reallocate", None),
        ("job-b", "offline", "reallocate", None),
        ("job-c", "offline", "reallocate", None),
    ]


# -- fault --------------------------------------------------------------------------------------


def test_red_stop_lamp_fires_amber_does_not() -> None:
    js = on_time(job())
    amber = vehicle(dtcs=(dtc("3364-1", spn=3364, fmi=1, lamps=lamp(amber=LampState.ON)),))
    assert run([js], [amber]) == []
    red = vehicle(dtcs=(dtc("100-1", spn=100, fmi=1, lamps=lamp(red_stop=LampState.ON)),))
    [f] = run([js], [red])
    assert (f.rule, f.action) == (Rule.FAULT, Action.REALLOCATE)
    assert f.evidence == {"mil_on": False, "red_stop_lamp_codes": ["100-1"], "listed_dtcs": []}
    off = RuleSettings(fault=FaultSettings(red_stop_lamp=False))
    assert run([js], [red], settings=off) == []


def test_mil_fires_only_when_configured() -> None:
    js = on_time(job())
    obd_mil = vehicle(mil_on=True)
    j1939_mil = vehicle(dtcs=(dtc("3216-2", spn=3216, fmi=2, lamps=lamp(mil=LampState.ON)),))
    assert run([js], [obd_mil]) == []
    assert run([js], [j1939_mil]) == []
    strict = RuleSettings(fault=FaultSettings(mil=True))
    for v in (obd_mil, j1939_mil):
        [f] = run([js], [v], settings=strict)
        assert (f.rule, f.evidence["mil_on"]) == (Rule.FAULT, True)


def test_listed_dtcs_fire() -> None:
    js = on_time(job())
    listed = RuleSettings(fault=FaultSettings(dtcs=("p0300", "100:1")))
    assert listed.fault.dtcs == ("P0300", "100:1")
    misfire = vehicle(dtcs=(dtc("P0300"), dtc("P0420")))
    [f] = run([js], [misfire], settings=listed)
    assert f.evidence["listed_dtcs"] == ["P0300"]
    oil = vehicle(dtcs=(dtc("100-1", spn=100, fmi=1),))
    assert run([js], [oil], settings=listed)[0].evidence["listed_dtcs"] == ["100:1"]
    other = vehicle(dtcs=(dtc("P0301"), dtc("100-4", spn=100, fmi=4)))
    assert run([js], [other], settings=listed) == []


@pytest.mark.parametrize("code", ["X0300", "P4300", "P030", "524288:1", "100:32", "100-1"])
def test_bad_dtc_codes_are_refused(code: str) -> None:
    with pytest.raises(ValidationError):
        FaultSettings(dtcs=(code,))


def test_a_fault_at_the_stop_holds_as_started() -> None:
    red = vehicle(
        dtcs=(dtc("100-1", spn=100, fmi=1, lamps=lamp(red_stop=LampState.ON)),),
        online=False,
        last_seen=NOW - 3600,
        fuel_pct=2.0,
    )
    arrived = on_time(job("job-a", state=JobState.ARRIVED))
    loaded = JobSnapshot(job("job-b", state=JobState.EN_ROUTE), on_board=True)
    # Only the fault is reported for started jobs; offline and low fuel leave them be.
    assert brief(run([arrived, loaded], [red])) == [
        ("job-a", "fault", "hold", "started"),
        ("job-b", "fault", "hold", "started"),
    ]


# -- low fuel, shift end ------------------------------------------------------------------------


def test_low_fuel() -> None:
    js = on_time(job())
    assert run([js], [vehicle(fuel_pct=10.0)]) == []
    assert run([js], [vehicle(fuel_pct=None)]) == []
    [f] = run([js], [vehicle(fuel_pct=7.5)])
    assert (f.rule, f.evidence) == (Rule.LOW_FUEL, {"fuel_pct": 7.5, "low_fuel_pct": 10.0})


def test_shift_end() -> None:
    shift = (Shift(NOW - 4 * 3600, NOW + 3600),)
    fits = JobSnapshot(job(), eta={StopKind.SINGLE: NOW + 2000})  # done at +2600, margin 900
    assert run([fits], [vehicle(shifts=shift)]) == []
    assert run([JobSnapshot(job())], [vehicle(shifts=shift)]) == []  # no ETA: cannot tell
    too_long = JobSnapshot(job(), eta={StopKind.SINGLE: NOW + 2101})
    [f] = run([too_long], [vehicle(shifts=shift)])
    assert (f.rule, f.action) == (Rule.SHIFT_END, Action.REALLOCATE)
    assert f.evidence == {"finish": NOW + 2701, "shift_end": NOW + 3600, "shift_end_margin_s": 900}
    assert run([too_long], [vehicle()]) == []  # no shifts: always on shift
    [off] = run([too_long], [vehicle(shifts=(Shift(NOW + 7200, NOW + 9 * 3600),))])
    assert off.evidence["shift_end"] is None  # no shift covers the job at all


# -- offers -------------------------------------------------------------------------------------


def test_offer_rejected_and_unanswered() -> None:
    offered = job(state=JobState.OFFERED)
    waiting = JobSnapshot(offered, offer_sent=NOW - 119)
    assert run([waiting], [vehicle()]) == []
    [timeout] = run([JobSnapshot(offered, offer_sent=NOW - 120)], [vehicle()])
    assert (timeout.rule, timeout.action) == (Rule.OFFER_TIMEOUT, Action.REALLOCATE)
    assert timeout.evidence == {"offer_sent": NOW - 120, "waited_s": 120}
    rejected = JobSnapshot(offered, offer_sent=NOW - 10, offer_rejected_at=NOW - 3)
    [f] = run([rejected], [vehicle()])
    assert (f.rule, f.evidence["rejected_at"]) == (Rule.OFFER_REJECTED, NOW - 3)
    # Accepted since: the offer rules no longer apply.
    assert run([JobSnapshot(job(), offer_sent=NOW - 999)], [vehicle()]) == []


# -- locks, anti-thrash, one move per job -------------------------------------------------------


def late(j: Job, **kw: object) -> JobSnapshot:
    return JobSnapshot(j, eta={StopKind.SINGLE: NOW + 3600 + 3600}, **kw)  # type: ignore[arg-type]


def test_a_locked_job_never_moves() -> None:
    locked = job(locked_vehicle_id="van-1")
    [f] = run([late(locked)], [vehicle()])
    assert (f.rule, f.action, f.hold) == (Rule.LATE, Action.HOLD, Hold.LOCKED)
    assert f.evidence["locked_vehicle_id"] == "van-1"
    assert f.evidence["late_s"] == 3600
    offline = vehicle(online=False, last_seen=NOW - 400)  # in grace, and locked: the lock says it
    assert brief(run([late(locked)], [offline]))[0] == ("job-1", "offline", "hold", "locked")
    refused = JobSnapshot(
        job(state=JobState.OFFERED, locked_vehicle_id="van-1"),
        offer_sent=NOW - 30,
        offer_rejected_at=NOW,
    )
    assert brief(run([refused], [vehicle()])) == [("job-1", "offer_rejected", "hold", "locked")]


def test_anti_thrash_suppresses_and_says_why() -> None:
    [soon] = run([late(job(), last_moved=NOW - 100, moves=1)], [vehicle()])
    assert (soon.action, soon.hold) == (Action.HOLD, Hold.TOO_SOON)
    assert (soon.evidence["last_moved"], soon.evidence["next_move_at"]) == (NOW - 100, NOW + 500)
    [ok] = run([late(job(), last_moved=NOW - 600, moves=1)], [vehicle()])
    assert ok.action is Action.REALLOCATE
    [capped] = run([late(job(), last_moved=NOW - 9999, moves=3)], [vehicle()])
    assert (capped.action, capped.hold, capped.evidence["moves"]) == (
        Action.HOLD,
        Hold.MAX_MOVES,
        3,
    )


def test_offer_rules_are_exempt_from_anti_thrash_by_default() -> None:
    refused = JobSnapshot(
        job(state=JobState.OFFERED),
        offer_sent=NOW - 30,
        offer_rejected_at=NOW,
        last_moved=NOW - 30,
        moves=5,
    )
    assert brief(run([refused], [vehicle()])) == [("job-1", "offer_rejected", "reallocate", None)]
    strict = RuleSettings(anti_thrash=AntiThrash(exempt=frozenset()))
    [f] = run([refused], [vehicle()], settings=strict)
    assert f.hold is Hold.MAX_MOVES
    red = vehicle(dtcs=(dtc("100-1", spn=100, fmi=1, lamps=lamp(red_stop=LampState.ON)),))
    fault_exempt = RuleSettings(anti_thrash=AntiThrash(exempt=frozenset({Rule.FAULT})))
    moved_just_now = JobSnapshot(job(), last_moved=NOW - 10, moves=1)
    assert run([moved_just_now], [red])[0].hold is Hold.TOO_SOON
    assert run([moved_just_now], [red], settings=fault_exempt)[0].action is Action.REALLOCATE


def test_one_move_per_job_the_rest_superseded() -> None:
    sick = vehicle(online=False, last_seen=NOW - 3600, fuel_pct=3.0)
    [offline, fuel] = run([on_time(job())], [sick])
    assert (offline.rule, offline.action) == (Rule.OFFLINE, Action.REALLOCATE)
    assert (fuel.rule, fuel.action, fuel.hold) == (Rule.LOW_FUEL, Action.HOLD, Hold.SUPERSEDED)
    assert fuel.evidence["moved_by"] == "offline"
    # When the first rule is held by anti-thrash, an exempt rule still moves the job.
    refused = JobSnapshot(
        job(state=JobState.OFFERED),
        offer_sent=NOW - 30,
        offer_rejected_at=NOW,
        last_moved=NOW - 30,
        moves=1,
    )
    assert brief(run([refused], [vehicle(fuel_pct=3.0)])) == [
        ("job-1", "low_fuel", "hold", "too_soon"),
        ("job-1", "offer_rejected", "reallocate", None),
    ]


def test_disabled_rules_stay_silent() -> None:
    sick = vehicle(online=False, last_seen=NOW - 3600, fuel_pct=3.0)
    settings = RuleSettings.model_validate(
        {"offline": {"enabled": False}, "low_fuel": {"enabled": False}}
    )
    assert run([on_time(job())], [sick], settings=settings) == []


def test_order_is_deterministic() -> None:
    jobs = [late(job(f"job-{i:02}", vehicle_id=f"van-{i % 3}")) for i in range(12)]
    vans = [
        vehicle("van-0", fuel_pct=5.0),
        vehicle("van-1", online=False, last_seen=None),
        vehicle("van-2"),
    ]
    expected = run(jobs, vans)
    rng = random.Random(7)
    for _ in range(5):
        rng.shuffle(jobs)
        rng.shuffle(vans)
        assert run(jobs, vans) == expected
    keys = [(f.job_id, list(Rule).index(f.rule)) for f in expected]
    assert keys == sorted(keys)
    assert len(expected) == 12 + 4 + 4


# -- settings, audit, live state ----------------------------------------------------------------


def test_settings_from_a_config_document() -> None:
    s = RuleSettings.model_validate(
        {
            "late": {"late_by_s": 600},
            "offline": {"offline_for_s": 120, "grace_s": 0},
            "fault": {"mil": True, "dtcs": ["P0300"]},
            "anti_thrash": {"min_seconds_between_moves": 300, "exempt": ["offer_timeout"]},
        }
    )
    assert (s.late.late_by_s, s.offline.grace_s, s.fault.dtcs) == (600, 0, ("P0300",))
    assert s.anti_thrash.exempt == frozenset({Rule.OFFER_TIMEOUT})
    with pytest.raises(ValidationError):
        RuleSettings.model_validate({"late": {"late_by": 600}})
    with pytest.raises(ValidationError):
        RuleSettings.model_validate({"anti_thrash": {"max_moves_per_job": 0}})


def test_audit_record() -> None:
    [f] = run([late(job())], [vehicle()])
    record = audit_record(f, "van-2", at=NOW)
    assert record == {
        "at": NOW,
        "rule": "late",
        "job_id": "job-1",
        "action": "reallocate",
        "hold": None,
        "old_vehicle_id": "van-1",
        "new_vehicle_id": "van-2",
        "evidence": f.evidence,
    }
    assert record["evidence"] is not f.evidence  # a copy: the firing stays as it was
    assert json.loads(json.dumps(record)) == record
    assert audit_record(f, None, at=NOW)["new_vehicle_id"] is None


def test_vehicle_snapshot_from_live_state() -> None:
    def sig(path: str, value: float | bool, age_s: int) -> SignalRow:
        return SignalRow("van-1", 1, 1, (NOW - age_s) * S, path, value)

    signals = {
        "Vehicle.OBD.Status.IsMILOn": sig("Vehicle.OBD.Status.IsMILOn", True, 10),
        "Vehicle.OBD.FuelLevel": sig("Vehicle.OBD.FuelLevel", 8.5, 5),  # newer than the VSS one
        "Vehicle.Powertrain.FuelSystem.RelativeLevel": sig(
            "Vehicle.Powertrain.FuelSystem.RelativeLevel", 12, 60
        ),
    }
    state = VehicleState(
        Device("van-1", "Van 1", NOW * S, False, "x"),
        Presence(False, 1, "0.1.0", NOW * S, (NOW - 100) * S, (NOW - 400) * S + 7, "timeout"),
        None,
        signals,
        (dtc("P0300"), dtc("P0171", active=False)),
    )
    shifts = (Shift(NOW - 3600, NOW + 3600),)
    v = VehicleSnapshot.from_live(state, shifts)
    assert (v.id, v.online, v.last_seen, v.mil_on, v.fuel_pct) == (
        "van-1",
        False,
        NOW - 400,
        True,
        8.5,
    )
    assert [d.code for d in v.dtcs] == ["P0300"]
    assert v.shifts == shifts
    bare = VehicleState(state.device, state.presence, None, {}, ())
    assert VehicleSnapshot.from_live(bare).fuel_pct is None
    assert VehicleSnapshot.from_live(bare).mil_on is None
