from __future__ import annotations

from fleetlink_edge.config import SamplingSettings
from fleetlink_edge.sample import Sampler
from fleetlink_protocols.records import Dtc, DtcSource, Event, FixMode, Position, SignalValue

S = 1_000_000_000
T0 = 1_700_000_000 * S


def fix(t_s: float, mode: FixMode = FixMode.FIX_3D) -> Position:
    return Position(ts_wall_ns=T0 + int(t_s * S), lat_deg=52.0, lon_deg=13.0, mode=mode)


def test_positions_thinned_to_interval_but_mode_change_passes() -> None:
    s = Sampler(SamplingSettings(position_interval_s=1.0))
    kept = [s.offer(fix(i / 10)) for i in range(25)]  # 10 Hz for 2.5 s
    assert [k.ts_wall_ns for k in kept if k] == [T0, T0 + S, T0 + 2 * S]
    assert s.offer(fix(2.6, FixMode.FIX_2D)) is not None
    assert s.counters == {"offered": 26, "kept": 4, "sampled_away": 22}


def test_position_going_back_in_time_is_dropped() -> None:
    s = Sampler(SamplingSettings())
    assert s.offer(fix(10)) is not None
    assert s.offer(fix(5)) is None


def test_signal_on_change_rate_limited_and_heartbeat() -> None:
    s = Sampler(SamplingSettings(signal_interval_s=1.0, signal_max_silence_s=10.0))
    path = "Vehicle.Speed"

    def sig(t: float, v: float) -> bool:
        return s.offer(SignalValue(T0 + int(t * S), path, v)) is not None

    assert sig(0, 50.0)
    assert not sig(0.5, 51.0)  # changed, but too soon
    assert sig(1.0, 51.0)
    assert not sig(2.0, 51.0)  # unchanged
    assert not sig(10.9, 51.0)
    assert sig(11.0, 51.0)  # silence heartbeat
    assert s.offer(SignalValue(T0, "Vehicle.OBD.EngineLoad", 3.0)) is not None  # per path


def test_dtc_first_sighting_then_cleared_after_silence() -> None:
    s = Sampler(SamplingSettings(dtc_clear_after_s=5.0))
    d = Dtc(ts_wall_ns=T0, source=DtcSource.J1939, code="980-9", spn=980, fmi=9, occurrences=1)
    assert s.offer(d) == d
    assert s.offer(Dtc(T0 + S, DtcSource.J1939, "980-9", spn=980, fmi=9, occurrences=1)) is None
    bumped = Dtc(T0 + 2 * S, DtcSource.J1939, "980-9", spn=980, fmi=9, occurrences=2)
    assert s.offer(bumped) == bumped  # occurrence count changed
    assert s.tick(T0 + 6 * S) == []
    cleared = s.tick(T0 + 7 * S)
    assert len(cleared) == 1
    assert isinstance(cleared[0], Dtc)
    assert cleared[0].active is False
    assert cleared[0].ts_wall_ns == T0 + 7 * S
    assert s.tick(T0 + 60 * S) == []


def test_obd_dtcs_are_not_cleared_by_silence() -> None:
    """Service 03 is read once a minute; the poller itself reports a code that went away."""
    s = Sampler(SamplingSettings(dtc_clear_after_s=5.0))
    d = Dtc(T0, DtcSource.OBD, "P0420", ecu=0x7E8)
    assert s.offer(d) == d
    assert s.tick(T0 + 600 * S) == []
    assert s.offer(Dtc(T0 + 60 * S, DtcSource.OBD, "P0420", ecu=0x7E8)) is None  # still known
    gone = Dtc(T0 + 120 * S, DtcSource.OBD, "P0420", ecu=0x7E8, active=False)
    assert s.offer(gone) == gone


def test_events_always_pass() -> None:
    s = Sampler(SamplingSettings())
    e = Event(T0, "ignition_on")
    assert s.offer(e) is e
    assert s.offer(e) is e


def test_reconfigure_takes_new_intervals_and_keeps_what_was_seen() -> None:
    s = Sampler(SamplingSettings(position_interval_s=1.0, signal_max_silence_s=60.0))
    assert s.offer(fix(0)) is not None
    assert s.offer(fix(1)) is not None
    assert s.offer(SignalValue(T0, "Vehicle.Speed", 50.0)) is not None
    s.reconfigure(SamplingSettings(position_interval_s=5.0, signal_max_silence_s=10.0))
    kept = [s.offer(fix(t)) for t in range(2, 12)]
    # The last kept fix (t=1) still counts: the next one is due 5 s after it.
    assert [k.ts_wall_ns for k in kept if k] == [T0 + 6 * S, T0 + 11 * S]
    assert s.offer(fix(11)) is None  # the same fix again: time did not move
    assert s.offer(SignalValue(T0 + 9 * S, "Vehicle.Speed", 50.0)) is None
    assert s.offer(SignalValue(T0 + 10 * S, "Vehicle.Speed", 50.0)) is not None  # new silence
    s.reconfigure(SamplingSettings(position_interval_s=0.0))
    assert s.offer(fix(11.5)) is not None
    assert s.counters["offered"] == 17
