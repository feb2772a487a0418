"""``fleetlink-edge decode can`` through cli.main on the real captures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fleetlink_edge import cli

IDLE = "can/j1939/css_matlab-basics_11111111_00000012_00000001.candump.log"
ENGINE_OFF = "can/j1939/css_data-processing_FCBF0606_00003482_00000001-60B621D9.candump.log"
J1939_DBC = "can/j1939/CSS-Electronics-SAE-J1939-DEMO.dbc"
CAR_LOG = "can/passenger_car/eldominio_genesis_mphloggenesis.log"
CAR_DBC = "can/passenger_car/opendbc_hyundai_2015_ccan.dbc"
HEAD = ["ts", "channel", "source", "id", "sa", "pgn", "name", "value", "unit"]


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    assert cli.main(["decode", "can", *args]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_j1939_log_prints_signals_and_every_dm1(
    shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _run(capsys, str(shared_data / IDLE))
    assert all(list(r)[: len(HEAD)] == HEAD for r in rows)
    assert all(r["source"] == "j1939" for r in rows)
    rpm = [r["value"] for r in rows if r["name"] == "Vehicle.Powertrain.CombustionEngine.Speed"]
    assert (len(rpm), min(rpm), max(rpm)) == (12719, 646.5, 653.75)
    first = rows[0]
    assert first["ts"] == 1635188455.0299  # 0CF00400#607D84481400F084, 649 rpm
    assert {k: first[k] for k in ("id", "sa", "pgn", "value", "unit", "spn")} == {
        "id": "0CF00400", "sa": 0, "pgn": 61444, "value": 649.0, "unit": "rpm", "spn": 190,
    }  # fmt: skip
    dm1 = [r for r in rows if r["name"] == "DM1"]
    assert len(dm1) == 127 * 4
    assert {(r["spn"], r["fmi"], r["occurrences"]) for r in dm1} == {
        (980, 9, 126), (3216, 20, 2), (609, 9, 1), (609, 12, 3),
    }  # fmt: skip
    sample = dm1[0]
    assert (sample["id"], sample["pgn"], sample["value"]) == ("1CEBFF00", 65226, "980-9")
    assert sample["lamps"] == {
        "mil": "on", "red_stop": "off", "amber_warning": "off", "protect": "not_available",
    }  # fmt: skip
    assert sample["spn_name"] == "Engine PTO Governor Enable Switch"
    assert sample["fmi_text"] == "Abnormal update rate"
    coolant = {r["value"] for r in rows if r["name"].endswith(".EngineCoolant.Temperature")}
    assert coolant == {71.0, 72.0}
    assert {r["value"] for r in rows if r["name"] == "Vehicle.Speed"} == {0.0}


def test_engine_off_log_with_vin_and_j1939_dbc(
    shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _run(capsys, str(shared_data / ENGINE_OFF), "--dbc", str(shared_data / J1939_DBC))
    vins = [r for r in rows if r["name"] == "Vehicle.VehicleIdentification.VIN"]
    assert [(r["value"], r["pgn"], r["sa"]) for r in vins] == [("1L06130RELP969468", 65260, 0)] * 3
    dbc_speed = [r for r in rows if r["name"] == "CCVS1.WheelBasedVehicleSpeed"]
    assert len(dbc_speed) == 184
    assert {(r["source"], r["sa"], r["id"]) for r in dbc_speed} == {("dbc", 0x47, "18FEF147")}
    hours = [r["value"] for r in rows if r["name"].endswith("EngineHours")]
    assert hours == [219.2] * 3


def test_passenger_car_with_its_dbc(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _run(capsys, str(shared_data / CAR_LOG), "--dbc", str(shared_data / CAR_DBC))
    assert all(r["source"] == "dbc" and r["sa"] is None and r["pgn"] is None for r in rows)

    def values(name: str) -> list[float]:
        return [r["value"] for r in rows if r["name"] == name]

    assert (min(values("EMS11.N")), max(values("EMS11.N"))) == (723.0, 3784.0)
    assert (min(values("EMS11.VS")), max(values("EMS11.VS"))) == (0, 64)
    assert (min(values("EMS12.TEMP_ENG")), max(values("EMS12.TEMP_ENG"))) == (84.0, 87.75)
    n = next(r for r in rows if r["name"] == "EMS11.N")
    assert (n["id"], n["unit"], n["channel"]) == ("316", "rpm", "can0")


def test_without_dbc_an_11_bit_log_prints_nothing(
    shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(capsys, str(shared_data / CAR_LOG)) == []


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["decode", "can", str(tmp_path / "none.log")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_unreadable_format_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.txt").write_text("hello")
    assert cli.main(["decode", "can", str(tmp_path / "x.txt")]) == 1  # content, not usage
    assert "unknown format '.txt'" in capsys.readouterr().err
