"""Passive J1939 decoding: the real captures, then transport faults and hostile frames."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetlink_edge.config import J1939Settings
from fleetlink_edge.decode.j1939 import J1939Decoder, parse_id
from fleetlink_edge.frames import CanFrame
from fleetlink_edge.sources.replay import read_log
from fleetlink_protocols.records import Dtc, DtcSource, SignalScalar, SignalValue

IDLE = "can/j1939/css_matlab-basics_11111111_00000012_00000001.candump.log"
ENGINE_OFF = "can/j1939/css_data-processing_FCBF0606_00003482_00000001-60B621D9.candump.log"
FOUR_DTCS = {(980, 9, 126), (3216, 20, 2), (609, 9, 1), (609, 12, 3)}

# The first DM1 BAM of the idle log, frame for frame.
DM1_BAM = [
    (1635188455.539950, "1CECFF00", "20120003FFCAFE00"),
    (1635188455.598900, "1CEBFF00", "0143FFD403097E90"),
    (1635188455.658900, "1CEBFF00", "020C140261020901"),
    (1635188455.718900, "1CEBFF00", "0361020C03FFFFFF"),
]
DM1_PAYLOAD = bytes.fromhex("43FFD403097E900C14026102090161020C03")


def _f(ts_s: float, can_id: str, data: str, *, channel: str = "can0") -> CanFrame:
    return CanFrame(
        ts_wall_ns=round(ts_s * 1e6) * 1000,
        arbitration_id=int(can_id, 16),
        data=bytes.fromhex(data),
        is_extended=True,
        channel=channel,
    )


def _bam(rows: list[tuple[float, str, str]]) -> list[CanFrame]:
    return [_f(*row) for row in rows]


def _dtcs(decoder: J1939Decoder, frames: list[CanFrame]) -> list[Dtc]:
    return [r for f in frames for r in decoder.feed(f) if isinstance(r, Dtc)]


@pytest.fixture(scope="module")
def idle_frames(shared_data: Path) -> list[CanFrame]:
    return list(read_log(shared_data / IDLE))


def _values(
    frames: Iterable[CanFrame], *, changes_only: bool = True
) -> tuple[dict[str, list[SignalScalar]], list[Dtc], J1939Decoder]:
    decoder = J1939Decoder(changes_only=changes_only)
    values: dict[str, list[SignalScalar]] = defaultdict(list)
    dtcs: list[Dtc] = []
    for frame in frames:
        for r in decoder.feed(frame):
            if isinstance(r, Dtc):
                dtcs.append(r)
            else:
                values[r.path].append(r.value)
    return values, dtcs, decoder


@pytest.mark.parametrize(
    ("can_id", "priority", "pgn", "sa", "da"),
    [
        (0x0CF00400, 3, 61444, 0x00, 0xFF),  # EEC1, PDU2
        (0x18FEF147, 6, 65265, 0x47, 0xFF),  # CCVS from SA 0x47
        (0x1CECFF00, 7, 60416, 0x00, 0xFF),  # TP.CM, PDU1 to global
        (0x18EA00F9, 6, 59904, 0xF9, 0x00),  # Request from a tool to the engine
        (0x1CEB2A17, 7, 60160, 0x17, 0x2A),  # TP.DT, PDU1 to 0x2A
        (0x19F00400, 6, 0x1F004, 0x00, 0xFF),  # data page 1
    ],
)
def test_parse_id(can_id: int, priority: int, pgn: int, sa: int, da: int) -> None:
    ident = parse_id(can_id)
    assert (ident.priority, ident.pgn, ident.sa, ident.da) == (priority, pgn, sa, da)


def test_idle_engine_log_matches_the_reference_values(idle_frames: list[CanFrame]) -> None:
    values, dtcs, decoder = _values(idle_frames)
    rpm = values["Vehicle.Powertrain.CombustionEngine.Speed"]
    assert len(rpm) == 12719  # every EEC1 frame
    assert (min(rpm), max(rpm)) == (646.5, 653.75)
    assert set(values["Vehicle.Speed"]) == {0.0}
    assert set(values["Vehicle.Powertrain.CombustionEngine.EngineCoolant.Temperature"]) == {
        71.0,
        72.0,
    }
    assert set(values["Vehicle.TraveledDistance"]) == {13832875.0}  # VD, SPN 245
    assert set(values["Vehicle.Powertrain.FuelSystem.RelativeLevel"]) == {74.8}
    assert all(2.45 <= float(v) <= 2.85 for v in values["Fleetlink.Powertrain.FuelRate"])
    # 127 DM1 BAMs, all alike: reported once, since the agent reports changes.
    assert {(d.spn, d.fmi, d.occurrences) for d in dtcs} == FOUR_DTCS
    assert len(dtcs) == 4
    assert all(d.ecu == 0 and d.lamps == 0x43FF and d.active for d in dtcs)
    assert all(d.source is DtcSource.J1939 for d in dtcs)
    assert {d.code for d in dtcs} == {"980-9", "3216-20", "609-9", "609-12"}
    c = decoder.counters
    assert c["tp_sessions"] == c["tp_completed"] == 152  # 127 DM1 + 25 engine configuration
    assert c["tp_sequence_errors"] == c["tp_timeouts"] == c["tp_bad_announce"] == 0
    assert c["rejected_not_extended"] == 12278  # the logger's own 11-bit frames on can1
    assert decoder.open_sessions == 0


def test_every_dm1_is_reported_without_changes_only(idle_frames: list[CanFrame]) -> None:
    _, dtcs, _ = _values(idle_frames, changes_only=False)
    assert len(dtcs) == 127 * 4


def test_engine_off_log_with_many_senders_and_a_vin(shared_data: Path) -> None:
    values, dtcs, decoder = _values(read_log(shared_data / ENGINE_OFF))
    assert set(values["Vehicle.Powertrain.CombustionEngine.Speed"]) == {0.0}
    assert set(values["Vehicle.Powertrain.CombustionEngine.EngineCoolant.Temperature"]) == {
        85.0,
        86.0,
    }
    assert len(values["Vehicle.Speed"]) == 184  # CCVS comes from SA 0x47, not the engine
    assert set(values["Vehicle.Speed"]) == {0.0}
    assert set(values["Vehicle.Powertrain.CombustionEngine.EngineHours"]) == {219.2}
    assert values["Vehicle.VehicleIdentification.VIN"] == ["1L06130RELP969468"]  # once
    assert dtcs == []
    c = decoder.counters
    assert c["tp_completed"] == 16  # 13 engine configuration + 3 vehicle identification
    assert c["tp_sequence_errors"] == c["vin_invalid"] == 0


def test_dm1_changes_report_new_and_cleared_dtcs() -> None:
    decoder = J1939Decoder()
    first = _dtcs(decoder, _bam(DM1_BAM))
    assert {(d.spn, d.fmi) for d in first} == {(980, 9), (3216, 20), (609, 9), (609, 12)}
    assert _dtcs(decoder, [_f(*r) for r in ((t + 1, i, d) for t, i, d in DM1_BAM)]) == []
    # A single-frame DM1 from the same engine with only 980/9 left: three codes cleared.
    one = _dtcs(decoder, [_f(1635188458.0, "18FECA00", "43FFD403097EFFFF")])
    assert [(d.spn, d.active) for d in one if d.active] == [(980, True)]
    assert sorted((d.spn, d.fmi) for d in one if not d.active) == [(609, 9), (609, 12), (3216, 20)]
    # "No active DTC" (SPN 0, FMI 0) clears the last one; lamps go off.
    last = _dtcs(decoder, [_f(1635188459.0, "18FECA00", "0000000000000000")])
    assert [(d.spn, d.active, d.lamps) for d in last] == [(980, False, 0)]


def test_connection_mode_transfer_is_followed_passively() -> None:
    # RTS/CTS from the engine (SA 00) to a tool (F9), the tool asking packet 2 again.
    p = DM1_PAYLOAD + b"\xff\xff\xff"
    packets = [f"{i + 1:02X}" + p[i * 7 : i * 7 + 7].hex() for i in range(3)]
    rows = [
        ("1CECF900", "10120003FFCAFE00"),  # RTS: 18 bytes, 3 packets, PGN 65226
        ("1CEC00F9", "1102010000CAFE00"),  # CTS: 2 packets from 1
        ("1CEBF900", packets[0]),
        ("1CEBF900", packets[1]),
        ("1CEC00F9", "1102020000CAFE00"),  # CTS: resend from 2
        ("1CEBF900", packets[1]),
        ("1CEBF900", packets[2]),
        ("1CEC00F9", "13120003FFCAFE00"),  # EndOfMsgACK
    ]
    decoder = J1939Decoder()
    frames = [_f(100 + i * 0.05, can_id, data) for i, (can_id, data) in enumerate(rows)]
    dtcs = _dtcs(decoder, frames)
    assert {(d.spn, d.fmi, d.occurrences) for d in dtcs} == FOUR_DTCS
    assert decoder.counters["tp_completed"] == 1
    assert decoder.counters["tp_sequence_errors"] == 0


def test_connection_abort_ends_the_session() -> None:
    decoder = J1939Decoder()
    decoder.feed(_f(1.0, "1CECF900", "10120003FFCAFE00"))
    decoder.feed(_f(1.1, "1CEC00F9", "FF01FFFFFFCAFE00"))  # the tool aborts
    assert decoder.open_sessions == 0
    assert decoder.counters["tp_aborted"] == 1
    decoder.feed(_f(1.2, "1CEBF900", "0143FFD403097E90"))
    assert decoder.counters["tp_orphan_dt"] == 1


@pytest.mark.parametrize(
    ("order", "reason"),
    [
        ([0, 2, 1, 3], "tp_sequence_errors"),  # out of order
        ([0, 1, 3], "tp_sequence_errors"),  # packet 2 missing
        ([0, 1, 1, 2, 3], "tp_sequence_errors"),  # packet 1 twice
        ([1, 2, 3], "tp_orphan_dt"),  # announce missed
    ],
)
def test_broken_bam_gives_no_dtc(order: list[int], reason: str) -> None:
    decoder = J1939Decoder()
    frames = [
        _f(DM1_BAM[0][0] + n * 0.05, DM1_BAM[i][1], DM1_BAM[i][2]) for n, i in enumerate(order)
    ]
    assert _dtcs(decoder, frames) == []
    assert decoder.counters[reason] >= 1
    assert decoder.counters["tp_completed"] == 0


def test_bam_times_out_by_frame_time() -> None:
    decoder = J1939Decoder(session_timeout_s=0.75)
    frames = _bam(DM1_BAM)
    late = CanFrame(frames[2].ts_wall_ns + 800_000_000, frames[2].arbitration_id, frames[2].data,
                    is_extended=True, channel="can0")  # fmt: skip
    assert _dtcs(decoder, [frames[0], frames[1], late, frames[3]]) == []
    assert decoder.counters["tp_timeouts"] == 1
    assert decoder.counters["tp_orphan_dt"] == 2


@pytest.mark.parametrize(
    "announce",
    [
        "20FFFFFFFFCAFE00",  # 65535 bytes
        "20FA06FFFFCAFE00",  # 1786 bytes: one more than 255 packets hold
        "2009000AFFCAFE00",  # 9 bytes in 10 packets
        "20050001FFCAFE00",  # 5 bytes: fits a frame, TP not allowed
        "20000000FFCAFE00",  # nothing
    ],
)
def test_absurd_bam_announcements_are_rejected(announce: str) -> None:
    decoder = J1939Decoder()
    decoder.feed(_f(1.0, "1CECFF00", announce))
    assert decoder.counters["tp_bad_announce"] == 1
    assert decoder.open_sessions == 0


def test_bam_addressed_to_one_node_is_rejected() -> None:
    decoder = J1939Decoder()
    decoder.feed(_f(1.0, "1CEC1700", "20120003FFCAFE00"))
    assert decoder.counters["tp_bad_announce"] == 1


def test_sessions_are_bounded_and_keyed_by_channel_and_sender() -> None:
    decoder = J1939Decoder.from_settings(J1939Settings(max_sessions=4))
    for sa, channel in itertools.product(range(3), ("can0", "can1")):
        decoder.feed(_f(1.0, f"1CECFF{sa:02X}", "20120003FFCAFE00", channel=channel))
    assert decoder.open_sessions == 4
    assert decoder.counters["tp_sessions_full"] == 2
    decoder.feed(_f(1.1, "1CECFF00", "20120003FFCAFE00"))  # same sender again: replaces
    assert decoder.counters["tp_replaced"] == 1
    assert decoder.open_sessions == 4


def test_hostile_frames_are_counted_rejections() -> None:
    decoder = J1939Decoder()
    frames = [
        CanFrame(1, 0x20000080, bytes(8), is_extended=True, is_error=True),
        CanFrame(2, 0x0CF00400, b"", is_extended=True, is_remote=True),
        CanFrame(3, 0x7E8, bytes(8)),
        CanFrame(4, 0x0CF00400, bytes(64), is_extended=True),  # CAN FD size
        _f(5, "0CF00400", "607D8448"),  # EEC1 cut before engine speed
        _f(6, "0CF00400", "607D84FFFF00F084"),  # engine speed not available
        _f(7, "0CF00400", "607D8400FE00F084"),  # engine speed error indicator
        _f(8, "18FEEE00", "FCFFFFFFFFFFFFFF"),  # coolant reserved
        _f(9, "1CECFF00", "20120003FF"),  # TP.CM cut short
        _f(10, "18FECA00", "43FFD4"),  # DM1 cut short
        _f(11, "18FECA00", "FFFFFFFFFFFFFFFF"),  # DM1 all "not available"
        _f(12, "18FEEC00", "3F3F3F2A"),  # VIN of junk
        _f(13, "1CEBFF00", ""),  # empty TP.DT
    ]
    records = [r for f in frames for r in decoder.feed(f)]
    assert records == []
    c = decoder.counters
    expected = {
        "rejected_error_frame": 1,
        "rejected_remote": 1,
        "rejected_not_extended": 1,
        "rejected_too_long": 1,
        "short_frames": 1,
        "values_not_available": 1,
        "values_error": 1,
        "values_reserved": 1,
        "tp_short": 1,
        "dm1_short": 1,
        "dm1_not_available": 1,
        "vin_invalid": 1,
        "tp_orphan_dt": 1,
    }
    assert {k: c[k] for k in expected} == expected
    assert c["frames"] == len(frames)


def test_signal_records_carry_frame_time_and_catalog_paths() -> None:
    decoder = J1939Decoder()
    [rec] = decoder.feed(_f(1635188455.0299, "0CF00400", "607D84481400F084"))
    assert rec == SignalValue(
        1635188455029900000, "Vehicle.Powertrain.CombustionEngine.Speed", 649.0
    )
    [detail] = decoder.decode(_f(1635188455.1, "0CF00400", "607D84481400F084"))
    assert (detail.spn, detail.unit, detail.message.sa, detail.message.pgn) == (
        190,
        "rpm",
        0,
        61444,
    )


_frames = st.builds(
    CanFrame,
    ts_wall_ns=st.integers(0, 10**12),
    arbitration_id=st.sampled_from([0x1CECFF00, 0x1CEBFF00, 0x18FECA00, 0x1CEC00F9, 0x1CECF900,
                                    0x1CEBF900, 0x18FEEC00]) | st.integers(0, 0x1FFFFFFF),
    data=st.binary(max_size=8),
    is_extended=st.just(True),
    channel=st.sampled_from(["can0", "can1"]),
)  # fmt: skip


@settings(max_examples=300)
@given(st.lists(_frames, max_size=60))
def test_arbitrary_frames_never_crash(frames: list[CanFrame]) -> None:
    decoder = J1939Decoder(max_sessions=3)
    for frame in sorted(frames, key=lambda f: f.ts_wall_ns):
        for record in decoder.feed(frame):
            assert isinstance(record, SignalValue | Dtc)
        assert decoder.open_sessions <= 3
    assert decoder.counters["frames"] == len(frames)
