"""The signal catalog: COVESA VSS 6.0 paths with stable integer aliases, plus our overlay.

An alias is the small integer that names a signal on the wire. Catalog aliases (1..1023) are
assigned here once and never reused or renumbered, even when a signal is retired: a test pins
them against ``tests/protocols/vectors/catalog_aliases.json``. Devices may declare extra aliases
(>= 1024) in their birth message for DBC signals mapped to paths the catalog lacks.

Units are the ones VSS 6.0 specifies for the path: ``Vehicle.Speed`` is km/h, not m/s;
``Vehicle.TraveledDistance`` is metres (uint32 since VSS 6.0); temperatures are "Celsius".
``Vehicle.OBD.*`` left the VSS standard catalog in 6.0 and lives on in COVESA's OBD overlay; we
keep it for one-to-one SAE J1979 PIDs. Paths under ``Fleetlink.`` are our own overlay for what
VSS lacks. ``Signal.origin`` tells the three apart.
"""

from __future__ import annotations

import enum
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from fleetlink_protocols.errors import InvalidValue, PayloadTooLarge, UnknownSignalAlias
from fleetlink_protocols.limits import MAX_EXTRA_ALIASES, MAX_PATH_LEN

FIRST_EXTRA_ALIAS = 1024
"""Aliases below this belong to the catalog; a device numbers its extras from here."""

MAX_ALIAS = 0xFFFF
"""Largest alias on the wire (fits msgpack uint16)."""

OVERLAY_PREFIX = "Fleetlink."

_PATH_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+$")


class Origin(enum.StrEnum):
    """Where a path is defined."""

    VSS = "vss"  # the COVESA VSS 6.0 standard catalog
    VSS_OBD = "vss-obd"  # VSS's OBD overlay: Vehicle.OBD left the standard catalog in VSS 6.0
    OVERLAY = "fleetlink"  # our own Fleetlink.* paths for what VSS lacks


@dataclass(frozen=True, slots=True)
class Signal:
    """One catalog signal. ``datatype`` and ``unit`` use VSS spellings ("float", "km/h")."""

    alias: int
    path: str
    datatype: str
    unit: str | None
    description: str

    @property
    def origin(self) -> Origin:
        if self.path.startswith(OVERLAY_PREFIX):
            return Origin.OVERLAY
        return Origin.VSS_OBD if self.path.startswith("Vehicle.OBD.") else Origin.VSS

    @property
    def overlay(self) -> bool:
        """True for our own ``Fleetlink.`` paths, which are not part of VSS."""
        return self.origin is Origin.OVERLAY


def _s(alias: int, path: str, datatype: str, unit: str | None, description: str) -> Signal:
    return Signal(alias, path, datatype, unit, description)


_ENGINE = "Vehicle.Powertrain.CombustionEngine"

# Aliases 1..127 take one byte on the wire (msgpack positive fixint), so the catalog numbers
# densely from 1. Append new signals with the next free number; never renumber or reuse one.
# Prefer the standard path where one exists: Vehicle.Speed over Vehicle.OBD.Speed.
SIGNALS: tuple[Signal, ...] = (
    _s(1, "Vehicle.Speed", "float", "km/h", "Vehicle speed"),
    _s(2, "Vehicle.TraveledDistance", "uint32", "m", "Odometer: distance over the vehicle's life"),
    _s(3, "Vehicle.VehicleIdentification.VIN", "string", None, "17-character VIN, ISO 3779"),
    _s(4, "Vehicle.Exterior.AirTemperature", "float", "Celsius", "Air temperature outside"),
    _s(5, "Vehicle.Acceleration.Lateral", "float", "m/s^2", "Acceleration in Y, ISO 8855"),
    _s(6, "Vehicle.Acceleration.Longitudinal", "float", "m/s^2", "Acceleration in X, ISO 8855"),
    _s(7, "Vehicle.Acceleration.Vertical", "float", "m/s^2", "Acceleration in Z, ISO 8855"),
    _s(8, "Vehicle.AngularVelocity.Yaw", "float", "degrees/s", "Rotation rate about Z"),
    _s(9, "Vehicle.LowVoltageBattery.CurrentVoltage", "float", "V", "12/24 V battery voltage"),
    _s(10, "Vehicle.IsMoving", "boolean", None, "Whether the vehicle is moving"),
    _s(11, "Vehicle.TraveledDistanceSinceStart", "uint32", "m", "Distance in the current trip"),
    _s(12, f"{_ENGINE}.Speed", "float", "rpm", "Engine speed"),
    _s(13, f"{_ENGINE}.EngineCoolant.Temperature", "float", "Celsius", "Coolant temperature"),
    _s(14, f"{_ENGINE}.EngineOil.Temperature", "float", "Celsius", "Engine oil temperature"),
    _s(15, f"{_ENGINE}.EOP", "uint16", "kPa", "Engine oil pressure"),
    _s(16, f"{_ENGINE}.EngineHours", "float", "h", "Engine running time over its life"),
    _s(17, f"{_ENGINE}.IdleHours", "float", "h", "Engine idling time over its life"),
    _s(18, f"{_ENGINE}.Torque", "int16", "Nm", "Current engine torque"),
    _s(19, f"{_ENGINE}.IsRunning", "boolean", None, "Engine rotating (speed > 0)"),
    _s(20, "Vehicle.Powertrain.FuelSystem.RelativeLevel", "uint8", "percent", "Fuel level"),
    _s(
        21,
        "Vehicle.Powertrain.FuelSystem.InstantConsumption",
        "float",
        "l/100km",
        "Current fuel consumption per distance",
    ),
    _s(22, "Vehicle.Powertrain.FuelSystem.Range", "uint32", "m", "Remaining range on fuel"),
    _s(23, "Vehicle.Powertrain.Transmission.CurrentGear", "int8", None, "Engaged gear"),
    _s(
        24,
        "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current",
        "float",
        "percent",
        "Physical state of charge of the high-voltage battery",
    ),
    _s(25, "Vehicle.OBD.EngineLoad", "float", "percent", "PID 04: calculated engine load"),
    _s(26, "Vehicle.OBD.CoolantTemperature", "float", "Celsius", "PID 05: coolant temp"),
    _s(27, "Vehicle.OBD.MAP", "float", "kPa", "PID 0B: intake manifold pressure"),
    _s(28, "Vehicle.OBD.EngineSpeed", "float", "rpm", "PID 0C: engine speed"),
    _s(29, "Vehicle.OBD.Speed", "float", "km/h", "PID 0D: vehicle speed"),
    _s(30, "Vehicle.OBD.IntakeTemp", "float", "Celsius", "PID 0F: intake air temp"),
    _s(31, "Vehicle.OBD.MAF", "float", "g/s", "PID 10: mass air flow rate"),
    _s(32, "Vehicle.OBD.ThrottlePosition", "float", "percent", "PID 11: throttle position"),
    _s(33, "Vehicle.OBD.RunTime", "float", "s", "PID 1F: run time since engine start"),
    _s(34, "Vehicle.OBD.DistanceWithMIL", "float", "km", "PID 21: distance with MIL on"),
    _s(35, "Vehicle.OBD.FuelLevel", "float", "percent", "PID 2F: fuel tank level"),
    _s(36, "Vehicle.OBD.DistanceSinceDTCClear", "float", "km", "PID 31: since codes cleared"),
    _s(37, "Vehicle.OBD.BarometricPressure", "float", "kPa", "PID 33: barometric pressure"),
    _s(38, "Vehicle.OBD.ControlModuleVoltage", "float", "V", "PID 42: module voltage"),
    _s(39, "Vehicle.OBD.AmbientAirTemperature", "float", "Celsius", "PID 46: ambient air"),
    _s(40, "Vehicle.OBD.OilTemperature", "float", "Celsius", "PID 5C: engine oil temp"),
    _s(41, "Vehicle.OBD.FuelRate", "float", "l/h", "PID 5E: engine fuel rate"),
    _s(42, "Vehicle.OBD.Status.IsMILOn", "boolean", None, "PID 01: malfunction lamp on"),
    _s(43, "Vehicle.OBD.Status.DTCCount", "uint8", None, "PID 01: number of stored DTCs"),
    _s(44, "Vehicle.Chassis.SteeringWheel.Angle", "int16", "degrees", "+ left, - right"),
    _s(45, "Vehicle.Chassis.Accelerator.PedalPosition", "uint8", "percent", "Accel pedal"),
    _s(46, "Vehicle.Chassis.Brake.PedalPosition", "uint8", "percent", "Brake pedal"),
    _s(47, "Vehicle.Chassis.ParkingBrake.IsEngaged", "boolean", None, "Parking brake set"),
    _s(48, "Fleetlink.GNSS.HDOP", "float", None, "Horizontal dilution of precision"),
    _s(49, "Fleetlink.GNSS.SatellitesUsed", "uint8", None, "Satellites used in the fix"),
    _s(50, "Fleetlink.J1939.SPN", "uint32", None, "SPN of the latest J1939-73 DM1 fault"),
    _s(51, "Fleetlink.J1939.FMI", "uint8", None, "FMI of the latest J1939-73 DM1 fault"),
    _s(
        52,
        "Fleetlink.Powertrain.FuelRate",
        "float",
        "l/h",
        "Engine fuel rate (J1939-71 SPN 183, PGN 65266 LFE); VSS has it only as OBD PID 5E",
    ),
    _s(
        53,
        "Fleetlink.Powertrain.TotalFuelUsed",
        "float",
        "l",
        "Engine total fuel used over its life (J1939-71 SPN 250, PGN 65257 LFC)",
    ),
    _s(
        54,
        "Fleetlink.Powertrain.CombustionEngine.PercentLoad",
        "uint8",
        "percent",
        "Engine percent load at current speed (J1939-71 SPN 92, PGN 61443 EEC2)",
    ),
)

BY_PATH: Mapping[str, Signal] = MappingProxyType({s.path: s for s in SIGNALS})
BY_ALIAS: Mapping[int, Signal] = MappingProxyType({s.alias: s for s in SIGNALS})


def check_path(path: str) -> str:
    """Return ``path`` if it is a dotted signal path within limits, else raise InvalidValue."""
    if len(path) > MAX_PATH_LEN:
        raise PayloadTooLarge(f"signal path longer than {MAX_PATH_LEN} characters")
    if not _PATH_RE.fullmatch(path):
        raise InvalidValue(f"not a dotted signal path: {path[:MAX_PATH_LEN]!r}")
    return path


class AliasTable:
    """Path <-> alias for one device: the catalog plus the device's declared extras (>= 1024)."""

    __slots__ = ("_alias_by_path", "_extras", "_path_by_alias", "fingerprint")

    def __init__(self, extras: Mapping[str, int] | None = None) -> None:
        """Raise InvalidValue on an extra below 1024, a duplicate, or a path in the catalog."""
        extras = dict(extras or {})
        if len(extras) > MAX_EXTRA_ALIASES:
            raise PayloadTooLarge(f"more than {MAX_EXTRA_ALIASES} extra aliases")
        seen: set[int] = set()
        for path, alias in extras.items():
            check_path(path)
            if type(alias) is not int or not FIRST_EXTRA_ALIAS <= alias <= MAX_ALIAS:
                raise InvalidValue(
                    f"extra alias for {path} not in {FIRST_EXTRA_ALIAS}..{MAX_ALIAS}"
                )
            if path in BY_PATH:
                raise InvalidValue(f"{path} already has catalog alias {BY_PATH[path].alias}")
            if alias in seen:
                raise InvalidValue(f"extra alias {alias} used twice")
            seen.add(alias)
        self._extras = MappingProxyType(dict(sorted(extras.items(), key=lambda kv: kv[1])))
        self._alias_by_path = {**{s.path: s.alias for s in SIGNALS}, **extras}
        self._path_by_alias = {a: p for p, a in self._alias_by_path.items()}
        self.fingerprint = _fingerprint(self._extras)

    @classmethod
    def for_paths(cls, paths: Iterable[str]) -> AliasTable:
        """Number the paths the catalog lacks from 1024 upward, in sorted order (deterministic)."""
        missing = sorted({p for p in paths if p not in BY_PATH})
        return cls({p: FIRST_EXTRA_ALIAS + i for i, p in enumerate(missing)})

    @property
    def extras(self) -> Mapping[str, int]:
        """The device-defined aliases, as declared in the birth message."""
        return self._extras

    def alias_of(self, path: str) -> int | None:
        """The alias for ``path``, or None if neither the catalog nor the extras know it."""
        return self._alias_by_path.get(path)

    def path_of(self, alias: int) -> str:
        """The path for ``alias``; raises UnknownSignalAlias."""
        try:
            return self._path_by_alias[alias]
        except KeyError:
            raise UnknownSignalAlias(f"signal alias {alias} is not declared") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AliasTable) and dict(self._extras) == dict(other._extras)

    def __hash__(self) -> int:
        return self.fingerprint

    def __repr__(self) -> str:
        return f"AliasTable(extras={dict(self._extras)!r})"


def _fingerprint(extras: Mapping[str, int]) -> int:
    """CRC-32 of the extras, so a batch names the table it was encoded with (0: catalog only)."""
    if not extras:
        return 0
    text = "\n".join(f"{alias}={path}" for path, alias in extras.items())
    return zlib.crc32(text.encode()) or 1


CATALOG = AliasTable()
"""The table with the catalog's aliases only."""
