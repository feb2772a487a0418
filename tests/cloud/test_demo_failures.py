"""The demo's injected failures and the dispatch settings that must react to them in time."""

from __future__ import annotations

import pytest

from fleetlink_cloud.config import load_settings
from fleetlink_cloud.demo_failures import Failures, choose, dispatch_overrides
from fleetlink_cloud.dispatch.model import Job, JobState, Location, Stop, StopKind, TimeWindow
from fleetlink_cloud.dispatch.rules import (
    Action,
    Hold,
    JobSnapshot,
    Rule,
    Snapshot,
    VehicleSnapshot,
    evaluate,
)
from fleetlink_cloud.errors import ConfigError
from fleetlink_cloud.store.base import DtcState
from fleetlink_protocols.records import DtcSource

FLEET = [f"veh-sim-{i:03d}" for i in range(1, 5)]
NOW = 1_780_000_000


def test_by_default_one_vehicle_falls_silent_and_another_faults() -> None:
    f = choose(None, None, "P0300", FLEET)
    assert f == Failures(("veh-sim-002@60",), ("veh-sim-003@40",), "P0300")
    assert f.simulate_args() == [
        "--silence", "veh-sim-002@60", "--fault", "veh-sim-003@40", "--fault-code", "P0300",
    ]  # fmt: skip
    assert f.describe() == "veh-sim-002 silent at 60 s, veh-sim-003 P0300 at 40 s"


def test_defaults_only_name_vehicles_the_fleet_has() -> None:
    assert choose(None, None, "P0300", FLEET[:2]) == Failures(("veh-sim-002@60",), ())
    assert choose(None, None, "P0300", FLEET[:1]).describe() == "none"


def test_given_failures_replace_the_defaults_and_no_failures_means_none() -> None:
    f = choose(["veh-sim-004@90.5"], None, "p0171", FLEET)
    assert f == Failures(("veh-sim-004@90.5",), (), "P0171")
    assert f.simulate_args() == ["--silence", "veh-sim-004@90.5"]
    assert choose(None, None, "P0300", FLEET, enabled=False).simulate_args() == []


@pytest.mark.parametrize("bad", ["veh-sim-009@10", "veh-sim-002", "veh-sim-002@soon", "@5",
                                 "veh-sim-002@-1"])  # fmt: skip
def test_a_failure_outside_the_fleet_or_without_seconds_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="VEHICLE@SECONDS"):
        choose(None, [bad], "P0300", FLEET)


def test_a_fault_code_that_is_not_sae_j2012_is_refused() -> None:
    with pytest.raises(ConfigError, match="SAE J2012"):
        choose(None, None, "100:1", FLEET)


def test_the_overrides_are_valid_cloud_settings() -> None:
    settings = load_settings(None, dispatch=dispatch_overrides(choose(None, None, "P0300", FLEET)))
    assert settings.dispatch.rules.fault.dtcs == ("P0300",)
    assert settings.dispatch.assign.idle_cost < 0
    quiet = load_settings(None, dispatch=dispatch_overrides(Failures()))
    assert quiet.dispatch.rules.fault.dtcs == ()


def _snapshot(now: int, vehicle: VehicleSnapshot) -> Snapshot:
    stop = Stop(Location(52.52, 13.405), (TimeWindow(NOW + 1800, NOW + 3600),), 180)
    job = Job("j1", stop, state=JobState.EN_ROUTE, vehicle_id=vehicle.id)
    return Snapshot(now, (vehicle,), (JobSnapshot(job, eta={StopKind.SINGLE: NOW + 1900}),))


def test_a_silent_vehicles_jobs_move_within_a_minute_of_its_last_record() -> None:
    rules = load_settings(None, dispatch=dispatch_overrides(Failures())).dispatch.rules
    silent = VehicleSnapshot("veh-sim-002", online=False, last_seen=NOW)
    (held,) = evaluate(_snapshot(NOW + 40, silent), rules)
    assert (held.rule, held.action, held.hold) == (Rule.OFFLINE, Action.HOLD, Hold.GRACE)
    (moved,) = evaluate(_snapshot(NOW + 45, silent), rules)
    assert (moved.rule, moved.action) == (Rule.OFFLINE, Action.REALLOCATE)


def test_the_injected_code_is_a_fault_and_the_catalyst_code_every_vehicle_stores_is_not() -> None:
    rules = load_settings(
        None, dispatch=dispatch_overrides(choose(None, None, "P0300", FLEET))
    ).dispatch.rules
    ts = NOW * 1_000_000_000

    def with_code(code: str) -> VehicleSnapshot:
        dtc = DtcState("veh-sim-003", DtcSource.OBD, 0x7E8, code, True, None, None, None, None,
                       ts, ts, ts)  # fmt: skip
        return VehicleSnapshot("veh-sim-003", online=True, last_seen=NOW, dtcs=(dtc,), mil_on=True)

    assert evaluate(_snapshot(NOW, with_code("P0420")), rules) == []
    (fired,) = evaluate(_snapshot(NOW, with_code("P0300")), rules)
    assert (fired.rule, fired.action) == (Rule.FAULT, Action.REALLOCATE)
    assert fired.evidence["listed_dtcs"] == ["P0300"]
