"""The signal catalog and alias tables."""

from __future__ import annotations

import pytest

from fleetlink_protocols.catalog import (
    BY_ALIAS,
    BY_PATH,
    CATALOG,
    FIRST_EXTRA_ALIAS,
    SIGNALS,
    AliasTable,
    Origin,
)
from fleetlink_protocols.errors import InvalidValue, PayloadTooLarge, UnknownSignalAlias


def test_aliases_and_paths_are_unique_and_one_byte_on_the_wire() -> None:
    assert len(BY_ALIAS) == len(SIGNALS) == len(BY_PATH)
    assert all(1 <= s.alias <= 127 for s in SIGNALS), "catalog aliases fit a positive fixint"


@pytest.mark.parametrize(
    ("path", "unit", "datatype"),
    [
        ("Vehicle.Speed", "km/h", "float"),
        ("Vehicle.Powertrain.CombustionEngine.Speed", "rpm", "float"),
        ("Vehicle.TraveledDistance", "m", "uint32"),
        ("Vehicle.Powertrain.CombustionEngine.EngineCoolant.Temperature", "Celsius", "float"),
        ("Vehicle.Powertrain.CombustionEngine.EngineHours", "h", "float"),
        ("Vehicle.OBD.EngineLoad", "percent", "float"),
        ("Vehicle.OBD.RunTime", "s", "float"),
        ("Vehicle.OBD.FuelRate", "l/h", "float"),
        ("Vehicle.AngularVelocity.Yaw", "degrees/s", "float"),
        ("Vehicle.VehicleIdentification.VIN", None, "string"),
    ],
)
def test_vss_units_and_datatypes(path: str, unit: str | None, datatype: str) -> None:
    assert (BY_PATH[path].unit, BY_PATH[path].datatype) == (unit, datatype)


def test_origins_mark_the_obd_overlay_and_ours() -> None:
    assert BY_PATH["Vehicle.Speed"].origin is Origin.VSS
    assert BY_PATH["Vehicle.OBD.Speed"].origin is Origin.VSS_OBD
    assert BY_PATH["Fleetlink.GNSS.HDOP"].origin is Origin.OVERLAY
    assert BY_PATH["Fleetlink.GNSS.HDOP"].overlay
    assert not BY_PATH["Vehicle.OBD.Speed"].overlay
    assert all(s.path.startswith(("Vehicle.", "Fleetlink.")) for s in SIGNALS)


def test_alias_table_maps_both_ways() -> None:
    table = AliasTable({"Acme.Cargo.Temperature": 1024, "Acme.Body.DoorCount": 1030})
    assert table.alias_of("Vehicle.Speed") == BY_PATH["Vehicle.Speed"].alias
    assert table.alias_of("Acme.Cargo.Temperature") == 1024
    assert table.path_of(1030) == "Acme.Body.DoorCount"
    assert table.alias_of("Acme.Nothing") is None
    with pytest.raises(UnknownSignalAlias):
        table.path_of(1025)
    with pytest.raises(UnknownSignalAlias):
        CATALOG.path_of(1024)
    assert CATALOG.fingerprint == 0
    assert table.fingerprint != 0
    assert table == AliasTable(dict(table.extras))
    assert hash(table) == table.fingerprint


def test_for_paths_numbers_only_unknown_paths_deterministically() -> None:
    table = AliasTable.for_paths(["Vehicle.Speed", "Acme.B.X", "Acme.A.Y", "Acme.B.X"])
    assert dict(table.extras) == {"Acme.A.Y": FIRST_EXTRA_ALIAS, "Acme.B.X": FIRST_EXTRA_ALIAS + 1}
    assert table == AliasTable.for_paths(["Acme.A.Y", "Acme.B.X"])


@pytest.mark.parametrize(
    "extras",
    [
        {"Acme.X.Y": 1023},  # below the device range
        {"Acme.X.Y": 70000},  # beyond uint16
        {"Vehicle.Speed": 1024},  # already in the catalog
        {"Acme.X.Y": 1024, "Acme.X.Z": 1024},  # duplicate alias
        {"not a path": 1024},
        {"Acme": 1024},
    ],
)
def test_bad_extras_are_refused(extras: dict[str, int]) -> None:
    with pytest.raises(InvalidValue):
        AliasTable(extras)


def test_too_many_extras_are_refused() -> None:
    with pytest.raises(PayloadTooLarge):
        AliasTable({f"Acme.S.X{i}": 1024 + i for i in range(2000)})
