"""CanDecoder: J1939 and DBC decoders behind one feed(), configured from CanSettings."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetlink_edge.config import CanSettings
from fleetlink_edge.decode.can import CanDecoder
from fleetlink_edge.decode.j1939 import J1939Decoder
from fleetlink_edge.errors import ConfigError
from fleetlink_edge.frames import CanFrame
from fleetlink_edge.sources.replay import read_log
from fleetlink_protocols.records import Dtc, SignalValue

IDLE = "can/j1939/css_matlab-basics_11111111_00000012_00000001.candump.log"
J1939_DBC = "can/j1939/CSS-Electronics-SAE-J1939-DEMO.dbc"
CAR_LOG = "can/passenger_car/eldominio_genesis_mphloggenesis.log"
CAR_DBC = "can/passenger_car/opendbc_hyundai_2015_ccan.dbc"


@pytest.fixture(scope="module")
def idle_frames(shared_data: Path) -> list[CanFrame]:
    return list(read_log(shared_data / IDLE))


def _settings(shared_data: Path, *, j1939: bool) -> CanSettings:
    return CanSettings.model_validate(
        {
            "j1939": {"enabled": j1939},
            "dbc": [
                {
                    "file": shared_data / J1939_DBC,
                    # A J1939 DBC may name the same value under another path.
                    "signals": {"EEC1.EngineSpeed": "Vehicle.OBD.EngineSpeed"},
                },
                {
                    "file": shared_data / CAR_DBC,
                    "signals": {"EMS11.N": "Vehicle.Powertrain.CombustionEngine.Speed"},
                },
            ],
        }
    )


def test_j1939_and_dbc_side_by_side_on_a_real_log(
    shared_data: Path, idle_frames: list[CanFrame]
) -> None:
    decoder = CanDecoder.from_settings(_settings(shared_data, j1939=True))
    records = [r for f in idle_frames for r in decoder.feed(f)]
    by_path: dict[str, list[float]] = {}
    for r in records:
        if isinstance(r, SignalValue):
            by_path.setdefault(r.path, []).append(float(r.value))
    assert (
        by_path["Vehicle.OBD.EngineSpeed"] == by_path["Vehicle.Powertrain.CombustionEngine.Speed"]
    )
    assert len(by_path["Vehicle.OBD.EngineSpeed"]) == 12719
    assert sum(isinstance(r, Dtc) for r in records) == 4
    c = decoder.counters
    assert c["frames"] == 57849
    assert c["records"] == len(records)
    assert c["j1939.tp_completed"] == 152
    assert c["dbc0.matched"] == 12719
    assert c["dbc1.matched"] == 0  # the car's 11-bit ids are not on this bus


def test_j1939_off_leaves_29_bit_frames_to_the_dbcs(
    shared_data: Path, idle_frames: list[CanFrame]
) -> None:
    decoder = CanDecoder.from_settings(_settings(shared_data, j1939=False))
    assert decoder.j1939 is None
    paths = {r.path for f in idle_frames for r in decoder.feed(f)
             if isinstance(r, SignalValue)}  # fmt: skip
    assert paths == {"Vehicle.OBD.EngineSpeed"}
    assert not any(k.startswith("j1939.") for k in decoder.counters)


def test_passenger_car_through_the_combined_decoder(shared_data: Path) -> None:
    decoder = CanDecoder.from_settings(_settings(shared_data, j1939=True))
    rpm = [float(r.value) for f in read_log(shared_data / CAR_LOG) for r in decoder.feed(f)
           if isinstance(r, SignalValue)]  # fmt: skip
    assert (len(rpm), min(rpm), max(rpm)) == (1036, 723.0, 3784.0)
    assert decoder.counters["j1939.frames"] == 0  # no 29-bit frame on that bus


def test_error_and_remote_frames_stop_here() -> None:
    decoder = CanDecoder(j1939=J1939Decoder())
    assert decoder.feed(CanFrame(1, 0x20000004, bytes(8), is_extended=True, is_error=True)) == []
    assert decoder.feed(CanFrame(2, 0x0CF00400, b"", is_extended=True, is_remote=True)) == []
    c = decoder.counters
    assert (c["error_frames"], c["remote_frames"], c["j1939.frames"]) == (1, 1, 0)


def test_a_bad_dbc_in_settings_is_a_config_error(tmp_path: Path) -> None:
    settings = CanSettings.model_validate(
        {"dbc": [{"file": tmp_path / "missing.dbc", "signals": {}}]}
    )
    with pytest.raises(ConfigError, match=r"missing\.dbc"):
        CanDecoder.from_settings(settings)
