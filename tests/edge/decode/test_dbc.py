"""DBC decoding through cantools: a real passenger car, a J1939 DBC by PGN, hostile frames."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from fleetlink_edge.config import DbcSettings
from fleetlink_edge.decode.dbc import DbcDecoder, load_database
from fleetlink_edge.errors import ConfigError
from fleetlink_edge.frames import CanFrame
from fleetlink_edge.sources.replay import read_log

CAR_LOG = "can/passenger_car/eldominio_genesis_mphloggenesis.log"
CAR_DBC = "can/passenger_car/opendbc_hyundai_2015_ccan.dbc"
J1939_DBC = "can/j1939/CSS-Electronics-SAE-J1939-DEMO.dbc"
IDLE = "can/j1939/css_matlab-basics_11111111_00000012_00000001.candump.log"
ENGINE_OFF = "can/j1939/css_data-processing_FCBF0606_00003482_00000001-60B621D9.candump.log"

CAR_MAPPING = {
    "EMS11.N": "Vehicle.Powertrain.CombustionEngine.Speed",
    "EMS11.VS": "Vehicle.Speed",
    "EMS12.TEMP_ENG": "Vehicle.Powertrain.CombustionEngine.EngineCoolant.Temperature",
}

# A small DBC written for the cases real files do not show: a multiplexed message, a value
# table, a speed in mph, and a J1939 PDU1 message (Request, PGN 59904, to address 0x00).
TINY_DBC = """VERSION ""

BS_:

BU_: ECU

BO_ 256 MUX: 8 ECU
 SG_ Mode M : 0|8@1+ (1,0) [0|255] "" Vector__XXX
 SG_ Pressure m1 : 8|16@1+ (0.5,0) [0|1000] "kPa" Vector__XXX
 SG_ Level m2 : 8|8@1+ (0.4,0) [0|100] "%" Vector__XXX

BO_ 512 STATUS: 4 ECU
 SG_ Gear : 0|8@1+ (1,0) [0|15] "" Vector__XXX
 SG_ SpeedMph : 8|16@1+ (0.01,0) [0|200] "mph" Vector__XXX

BO_ 2565472510 RQST: 3 ECU
 SG_ RequestedPgn : 0|24@1+ (1,0) [0|262143] "" Vector__XXX

VAL_ 512 Gear 0 "Park" 1 "Reverse" 2 "Neutral" 3 "Drive" ;
BA_DEF_ "ProtocolType" STRING ;
BA_DEF_ BO_ "VFrameFormat" ENUM "StandardCAN","ExtendedCAN","reserved","J1939PG";
BA_DEF_DEF_ "ProtocolType" "";
BA_DEF_DEF_ "VFrameFormat" "StandardCAN";
BA_ "ProtocolType" "J1939";
BA_ "VFrameFormat" BO_ 2565472510 3;
"""


@pytest.fixture
def tiny_dbc(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.dbc"
    path.write_text(TINY_DBC)
    return path


def _frame(can_id: int, data: str, *, extended: bool = False, ts: int = 1) -> CanFrame:
    return CanFrame(ts, can_id, bytes.fromhex(data), is_extended=extended, channel="can0")


def test_passenger_car_matches_the_reference_ranges(shared_data: Path) -> None:
    decoder = DbcDecoder.from_settings(DbcSettings(file=shared_data / CAR_DBC, signals=CAR_MAPPING))
    values: dict[str, list[float]] = defaultdict(list)
    for frame in read_log(shared_data / CAR_LOG):
        for record in decoder.feed(frame):
            values[record.path].append(float(record.value))
    rpm = values["Vehicle.Powertrain.CombustionEngine.Speed"]
    assert len(rpm) == 1036  # one per EMS11 frame
    assert (min(rpm), max(rpm)) == (723.0, 3784.0)
    assert (min(values["Vehicle.Speed"]), max(values["Vehicle.Speed"])) == (0.0, 64.0)
    ect = values["Vehicle.Powertrain.CombustionEngine.EngineCoolant.Temperature"]
    assert (min(ect), max(ect)) == (84.0, 87.75)
    c = decoder.counters
    assert (c["frames"], c["matched"], c["short_frames"], c["decode_errors"]) == (7583, 1223, 0, 0)


def test_decode_all_covers_what_the_dbc_describes(shared_data: Path) -> None:
    decoder = DbcDecoder(load_database(shared_data / CAR_DBC), None)
    rows = [v for f in read_log(shared_data / CAR_LOG) for v in decoder.decode(f)]
    assert decoder.counters["matched"] == 5122  # 11 of 22 ids, 68 % of frames
    angle = [float(v.value) for v in rows if (v.message, v.signal) == ("SAS11", "SAS_Angle")]
    assert [min(angle), max(angle)] == pytest.approx([-66.1, 282.2])
    assert all(v.path is None for v in rows)
    assert decoder.feed(next(iter(read_log(shared_data / CAR_LOG)))) == []


def test_j1939_dbc_matches_by_pgn_whatever_the_source_address(shared_data: Path) -> None:
    mapping = {
        "EEC1.EngineSpeed": "Vehicle.Powertrain.CombustionEngine.Speed",
        "CCVS1.WheelBasedVehicleSpeed": "Vehicle.Speed",
    }
    decoder = DbcDecoder(load_database(shared_data / J1939_DBC), mapping)
    rpm = [r.value for f in read_log(shared_data / IDLE) for r in decoder.feed(f)
           if r.path == "Vehicle.Powertrain.CombustionEngine.Speed"]  # fmt: skip
    assert len(rpm) == 12719
    assert (min(rpm), max(rpm)) == (646.5, 653.75)
    # The engine-off log sends CCVS from SA 0x47; the DBC names SA 0xFE.
    speeds = [r for f in read_log(shared_data / ENGINE_OFF) for r in decoder.feed(f)
              if r.path == "Vehicle.Speed"]  # fmt: skip
    assert len(speeds) == 184


def test_exact_match_ignores_j1939_traffic(shared_data: Path) -> None:
    decoder = DbcDecoder(load_database(shared_data / J1939_DBC), None, match="exact")
    assert [v for f in read_log(shared_data / ENGINE_OFF) for v in decoder.decode(f)] == []
    assert decoder.counters["matched"] == 0


def test_pdu1_messages_match_any_destination(tiny_dbc: Path) -> None:
    decoder = DbcDecoder(load_database(tiny_dbc), None)
    # A request for PGN 65260 from a tool (F9) to all (FF); the DBC has it to 0x00 from 0xFE.
    [value] = decoder.decode(_frame(0x18EAFFF9, "ECFE00", extended=True))
    assert (value.message, value.signal, value.value) == ("RQST", "RequestedPgn", 65260)


def test_multiplexed_value_tables_and_unit_conversion(tiny_dbc: Path) -> None:
    mapping = {"MUX.Level": "Vehicle.Powertrain.FuelSystem.RelativeLevel", "STATUS.SpeedMph":
               "Vehicle.Speed"}  # fmt: skip
    decoder = DbcDecoder(load_database(tiny_dbc), mapping)
    assert decoder.feed(_frame(0x100, "01C800FFFFFFFFFF")) == []  # mode 1: no Level in it
    [level] = decoder.feed(_frame(0x100, "02FAFFFFFFFFFFFF"))
    assert level.value == 100.0
    [speed] = decoder.feed(_frame(0x200, "03A00F00"))  # 40.00 mph
    assert speed.path == "Vehicle.Speed"
    assert speed.value == pytest.approx(64.37376)
    everything = DbcDecoder(load_database(tiny_dbc), None)
    named = {v.signal: v.value for v in everything.decode(_frame(0x200, "03A00F00"))}
    assert named == {"Gear": "Drive", "SpeedMph": 40.0}


def test_hostile_frames_are_counted(tiny_dbc: Path) -> None:
    decoder = DbcDecoder(load_database(tiny_dbc), None)
    frames = [
        _frame(0x100, "0102"),  # 2 bytes where the DBC says 8
        _frame(0x100, "07FFFFFFFFFFFFFF"),  # multiplexer value the DBC does not define
        _frame(0x300, "00"),  # not in the DBC
        CanFrame(1, 0x100, bytes(8), is_error=True),
        CanFrame(1, 0x100, b"", is_remote=True),
        _frame(0x100, "01C800FFFFFFFFFF", extended=True),  # 29-bit 0x100 is another frame
    ]
    assert [v for f in frames for v in decoder.decode(f)] == []
    c = decoder.counters
    assert (c["short_frames"], c["decode_errors"], c["unmatched"]) == (1, 1, 4)


def test_mapping_to_unknown_names_is_a_config_error(shared_data: Path) -> None:
    db = load_database(shared_data / CAR_DBC)
    with pytest.raises(ConfigError, match=r"EMS11\.NOPE, NOPE\.N"):
        DbcDecoder(db, {"EMS11.NOPE": "Vehicle.Speed", "NOPE.N": "Vehicle.Speed"})


def test_unloadable_databases_are_config_errors(tmp_path: Path) -> None:
    (tmp_path / "broken.dbc").write_text("BO_ this is not a DBC\n")
    with pytest.raises(ConfigError, match="cannot load CAN database"):
        load_database(tmp_path / "broken.dbc")
    with pytest.raises(ConfigError, match="cannot load CAN database"):
        load_database(tmp_path / "missing.dbc")
