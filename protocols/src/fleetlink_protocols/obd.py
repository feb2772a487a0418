"""OBD-II diagnostic services per SAE J1979 (ISO 15031-5) on CAN: PIDs, DTCs, VIN, NRCs.

Pure code. Decoders take the bytes of one reassembled ISO-TP payload and raise ObdDecodeError;
encoders build the same bytes, so the simulated ECU and the tests share one table with the
poller. Values are in the units the signal catalog gives for each path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from fleetlink_protocols.catalog import BY_PATH

# Service identifiers (SAE J1979 section 6; a positive response adds 0x40 to the request SID).
SERVICE_CURRENT_DATA = 0x01
SERVICE_STORED_DTCS = 0x03
SERVICE_CLEAR_DTCS = 0x04
SERVICE_VEHICLE_INFO = 0x09
POSITIVE_RESPONSE_OFFSET = 0x40
NEGATIVE_RESPONSE = 0x7F  # ISO 15031-5 / ISO 14229-1: 7F <request SID> <NRC>
MAX_PIDS_PER_REQUEST = 6  # SAE J1979 6.1: up to six PIDs in one service 01 request on CAN

# Service 01 PIDs 0x00, 0x20, ..., 0xE0 return a 4-byte bitmap of the next 32 PIDs.
SUPPORTED_PID_BASES = tuple(range(0x00, 0x100, 0x20))
PID_MONITOR_STATUS = 0x01  # J1979 PID 01: MIL status, DTC count, readiness
INFOTYPE_SUPPORTED = 0x00  # J1979 service 09 InfoType 00: supported InfoTypes 01-20
INFOTYPE_VIN = 0x02  # J1979 service 09 InfoType 02: VIN, 17 ASCII characters

PATH_VIN = "Vehicle.VehicleIdentification.VIN"


class ObdDecodeError(ValueError):
    """Bytes that do not form a valid J1979 message (wrong length, unknown PID, bad code)."""


@dataclass(frozen=True, slots=True)
class PidSpec:
    """A linear service 01 PID: ``value = raw * scale + offset``, raw big-endian unsigned."""

    pid: int
    name: str
    path: str
    length: int
    scale: float = 1.0
    offset: float = 0.0

    @property
    def unit(self) -> str | None:
        """The catalog's unit for ``path`` (one source of truth for units)."""
        return BY_PATH[self.path].unit

    def decode(self, data: bytes) -> float:
        """Physical value of the PID's data bytes; raises ObdDecodeError on a wrong length."""
        if len(data) != self.length:
            raise ObdDecodeError(f"PID 0x{self.pid:02X}: {len(data)} bytes, want {self.length}")
        return int.from_bytes(data, "big") * self.scale + self.offset

    def encode(self, value: float) -> bytes:
        """Data bytes for ``value``, clamped to the PID's representable range."""
        raw = round((value - self.offset) / self.scale)
        raw = min(max(raw, 0), (1 << (8 * self.length)) - 1)
        return raw.to_bytes(self.length, "big")


_PCT = 100 / 255  # J1979 "A*100/255" percent scaling

# SAE J1979 Appendix B (service 01 PID definitions).
PIDS: dict[int, PidSpec] = {
    spec.pid: spec
    for spec in (
        PidSpec(0x04, "calculated engine load", "Vehicle.OBD.EngineLoad", 1, _PCT),
        PidSpec(0x05, "coolant temperature", "Vehicle.OBD.CoolantTemperature", 1, offset=-40),
        PidSpec(0x0C, "engine speed", "Vehicle.OBD.EngineSpeed", 2, 0.25),
        PidSpec(0x0D, "vehicle speed", "Vehicle.OBD.Speed", 1),
        PidSpec(0x11, "throttle position", "Vehicle.OBD.ThrottlePosition", 1, _PCT),
        PidSpec(0x1F, "time since engine start", "Vehicle.OBD.RunTime", 2),
        PidSpec(0x21, "distance travelled with MIL on", "Vehicle.OBD.DistanceWithMIL", 2),
        PidSpec(0x2F, "fuel tank level input", "Vehicle.OBD.FuelLevel", 1, _PCT),
        PidSpec(0x5E, "engine fuel rate", "Vehicle.OBD.FuelRate", 2, 0.05),
        # No Vehicle.OBD.* odometer exists; PID A6 (0.1 km/bit) is reported in VSS 6.0 metres.
        PidSpec(0xA6, "odometer", "Vehicle.TraveledDistance", 4, 100.0),
    )
}

# Data length of every service 01 PID this module can walk past in a multi-PID response.
PID_LENGTHS: dict[int, int] = {
    **dict.fromkeys(SUPPORTED_PID_BASES, 4),
    PID_MONITOR_STATUS: 4,
    **{pid: spec.length for pid, spec in PIDS.items()},
}


@dataclass(frozen=True, slots=True)
class MonitorStatus:
    """PID 01: MIL lamp state, number of confirmed emission DTCs, raw readiness bytes B-D."""

    mil_on: bool
    dtc_count: int
    readiness: bytes = b"\x00\x00\x00"


def decode_monitor_status(data: bytes) -> MonitorStatus:
    if len(data) != 4:
        raise ObdDecodeError(f"PID 0x01: {len(data)} bytes, want 4")
    return MonitorStatus(bool(data[0] & 0x80), data[0] & 0x7F, bytes(data[1:]))


def encode_monitor_status(status: MonitorStatus) -> bytes:
    return bytes([(0x80 if status.mil_on else 0) | min(status.dtc_count, 0x7F)]) + bytes(
        status.readiness[:3].ljust(3, b"\x00")
    )


def is_supported_pid_bitmap(pid: int) -> bool:
    return pid in SUPPORTED_PID_BASES


def decode_supported_pids(base: int, data: bytes) -> frozenset[int]:
    """PIDs base+1..base+0x20 flagged in a 4-byte bitmap (bit 7 of byte A is base+1)."""
    if base not in SUPPORTED_PID_BASES or len(data) != 4:
        raise ObdDecodeError(f"bad supported-PID bitmap: base 0x{base:02X}, {len(data)} bytes")
    bits = int.from_bytes(data, "big")
    return frozenset(base + 1 + i for i in range(32) if bits & (1 << (31 - i)))


def encode_supported_pids(base: int, pids: Iterable[int]) -> bytes:
    """The 4-byte bitmap for ``base``; PIDs outside base+1..base+0x20 are ignored."""
    bits = 0
    for pid in pids:
        if base < pid <= base + 0x20:
            bits |= 1 << (31 - (pid - base - 1))
    return bits.to_bytes(4, "big")


def decode_pid(pid: int, data: bytes) -> tuple[str, float]:
    """Catalog path and value of one signal PID (``PIDS``); raises ObdDecodeError otherwise."""
    spec = PIDS.get(pid)
    if spec is None:
        raise ObdDecodeError(f"PID 0x{pid:02X} has no signal decoder")
    return spec.path, spec.decode(data)


def split_current_data(data: bytes) -> list[tuple[int, bytes]]:
    """Split the bytes after 0x41 into (PID, data) pairs; a response may carry up to six PIDs."""
    items: list[tuple[int, bytes]] = []
    i = 0
    while i < len(data):
        pid = data[i]
        length = PID_LENGTHS.get(pid)
        if length is None:
            raise ObdDecodeError(f"PID 0x{pid:02X} has unknown length; cannot split response")
        if i + 1 + length > len(data):
            raise ObdDecodeError(f"PID 0x{pid:02X} truncated")
        items.append((pid, bytes(data[i + 1 : i + 1 + length])))
        i += 1 + length
    if not items:
        raise ObdDecodeError("service 01 response without a PID")
    return items


# DTCs: SAE J2012 / J1979 two-byte encoding. Bits 15-14 letter, 13-12 first digit, then 3 hex.
DTC_LETTERS = "PCBU"  # powertrain, chassis, body, network
_DTC_RE = re.compile(r"^[PCBU][0-3][0-9A-F]{3}$")


def decode_dtc(raw: bytes) -> str:
    """``b"\\x03\\x01"`` -> ``"P0301"``."""
    if len(raw) != 2:
        raise ObdDecodeError(f"a DTC is 2 bytes, got {len(raw)}")
    value = int.from_bytes(raw, "big")
    return f"{DTC_LETTERS[value >> 14]}{(value >> 12) & 0x3}{value & 0xFFF:03X}"


def encode_dtc(code: str) -> bytes:
    if not _DTC_RE.match(code):
        raise ObdDecodeError(f"not a J2012 DTC: {code!r}")
    value = (DTC_LETTERS.index(code[0]) << 14) | (int(code[1]) << 12) | int(code[2:], 16)
    return value.to_bytes(2, "big")


def decode_stored_dtcs(data: bytes) -> list[str]:
    """Bytes after 0x43 on CAN (ISO 15765-4): a DTC count, then two bytes per DTC."""
    if not data or len(data) != 1 + 2 * data[0]:
        raise ObdDecodeError(f"service 03 response of {len(data)} bytes does not match its count")
    codes = (decode_dtc(data[i : i + 2]) for i in range(1, len(data), 2))
    return [code for code in codes if code != "P0000"]  # 0000 is J1979's "no DTC" filler


def encode_stored_dtcs(codes: Iterable[str]) -> bytes:
    encoded = [encode_dtc(code) for code in codes]
    if len(encoded) > 0xFF:
        raise ObdDecodeError("more than 255 DTCs do not fit one service 03 response")
    return bytes([len(encoded)]) + b"".join(encoded)


# VIN: ISO 3779, 17 characters. Some ECUs pad with leading NULs (J1979 on non-CAN protocols).
_VIN_RE = re.compile(r"^[A-Z0-9]{17}$")


def decode_vin(data: bytes) -> str:
    """Bytes after 0x49: ``02 <item count> <17 ASCII characters>``."""
    if len(data) < 2 or data[0] != INFOTYPE_VIN:
        raise ObdDecodeError("not a service 09 InfoType 02 (VIN) response")
    text = bytes(data[2:]).lstrip(b"\x00").decode("ascii", errors="replace")
    if not _VIN_RE.match(text):
        raise ObdDecodeError(f"invalid VIN {text!r}")
    return text


def encode_vin(vin: str) -> bytes:
    if not _VIN_RE.match(vin):
        raise ObdDecodeError(f"invalid VIN {vin!r}")
    return bytes([INFOTYPE_VIN, 0x01]) + vin.encode("ascii")


# Negative response codes (ISO 14229-1 table A.1, used by ISO 15031-5 / SAE J1979).
NRC_NAMES: dict[int, str] = {
    0x10: "generalReject",
    0x11: "serviceNotSupported",
    0x12: "subFunctionNotSupported-invalidFormat",
    0x13: "incorrectMessageLengthOrInvalidFormat",
    0x14: "responseTooLong",
    0x21: "busyRepeatRequest",
    0x22: "conditionsNotCorrectOrRequestSequenceError",
    0x31: "requestOutOfRange",
    0x33: "securityAccessDenied",
    0x78: "requestCorrectlyReceived-ResponsePending",
    0x7E: "subFunctionNotSupportedInActiveSession",
    0x7F: "serviceNotSupportedInActiveSession",
}
NRC_SUB_FUNCTION_NOT_SUPPORTED = 0x12
NRC_SERVICE_NOT_SUPPORTED = 0x11
NRC_RESPONSE_PENDING = 0x78  # the ECU will answer later, within P2*CAN (5 s, ISO 15765-4)


@dataclass(frozen=True, slots=True)
class PositiveResponse:
    service: int  # the request SID this answers
    data: bytes  # the bytes after the response SID


@dataclass(frozen=True, slots=True)
class NegativeResponse:
    service: int
    nrc: int

    @property
    def name(self) -> str:
        return NRC_NAMES.get(self.nrc, f"NRC 0x{self.nrc:02X}")


def parse_response(payload: bytes) -> PositiveResponse | NegativeResponse:
    """Split one reassembled response into service and data, or its negative response."""
    if not payload:
        raise ObdDecodeError("empty response")
    sid = payload[0]
    if sid == NEGATIVE_RESPONSE:
        if len(payload) != 3:
            raise ObdDecodeError(f"negative response of {len(payload)} bytes, want 3")
        return NegativeResponse(payload[1], payload[2])
    if sid < POSITIVE_RESPONSE_OFFSET:
        raise ObdDecodeError(f"0x{sid:02X} is a request SID, not a response")
    return PositiveResponse(sid - POSITIVE_RESPONSE_OFFSET, bytes(payload[1:]))


def encode_negative_response(service: int, nrc: int) -> bytes:
    return bytes([NEGATIVE_RESPONSE, service, nrc])


def encode_positive_response(service: int, data: bytes) -> bytes:
    return bytes([service + POSITIVE_RESPONSE_OFFSET]) + data


# Generic (SAE-defined, second character 0) codes from SAE J2012, wording shortened. Codes with
# a second character of 1 are manufacturer-specific and have no generic meaning.
GENERIC_DTC_DESCRIPTIONS: dict[str, str] = {
    "P0100": "Mass or Volume Air Flow Circuit Malfunction",
    "P0101": "Mass or Volume Air Flow Circuit Range/Performance",
    "P0102": "Mass or Volume Air Flow Circuit Low Input",
    "P0103": "Mass or Volume Air Flow Circuit High Input",
    "P0105": "Manifold Absolute Pressure/Barometric Pressure Circuit Malfunction",
    "P0106": "Manifold Absolute Pressure/Barometric Pressure Circuit Range/Performance",
    "P0107": "Manifold Absolute Pressure/Barometric Pressure Circuit Low Input",
    "P0108": "Manifold Absolute Pressure/Barometric Pressure Circuit High Input",
    "P0110": "Intake Air Temperature Circuit Malfunction",
    "P0112": "Intake Air Temperature Circuit Low Input",
    "P0113": "Intake Air Temperature Circuit High Input",
    "P0115": "Engine Coolant Temperature Circuit Malfunction",
    "P0116": "Engine Coolant Temperature Circuit Range/Performance",
    "P0117": "Engine Coolant Temperature Circuit Low Input",
    "P0118": "Engine Coolant Temperature Circuit High Input",
    "P0120": "Throttle/Pedal Position Sensor/Switch A Circuit Malfunction",
    "P0121": "Throttle/Pedal Position Sensor/Switch A Circuit Range/Performance",
    "P0122": "Throttle/Pedal Position Sensor/Switch A Circuit Low Input",
    "P0123": "Throttle/Pedal Position Sensor/Switch A Circuit High Input",
    "P0125": "Insufficient Coolant Temperature for Closed Loop Fuel Control",
    "P0128": "Coolant Thermostat (Coolant Temperature Below Regulating Temperature)",
    "P0130": "O2 Sensor Circuit Malfunction (Bank 1 Sensor 1)",
    "P0131": "O2 Sensor Circuit Low Voltage (Bank 1 Sensor 1)",
    "P0132": "O2 Sensor Circuit High Voltage (Bank 1 Sensor 1)",
    "P0133": "O2 Sensor Circuit Slow Response (Bank 1 Sensor 1)",
    "P0134": "O2 Sensor Circuit No Activity Detected (Bank 1 Sensor 1)",
    "P0135": "O2 Sensor Heater Circuit Malfunction (Bank 1 Sensor 1)",
    "P0141": "O2 Sensor Heater Circuit Malfunction (Bank 1 Sensor 2)",
    "P0171": "System Too Lean (Bank 1)",
    "P0172": "System Too Rich (Bank 1)",
    "P0174": "System Too Lean (Bank 2)",
    "P0175": "System Too Rich (Bank 2)",
    "P0200": "Injector Circuit Malfunction",
    **{f"P020{n}": f"Injector Circuit Malfunction - Cylinder {n}" for n in range(1, 9)},
    "P0217": "Engine Overtemperature Condition",
    "P0230": "Fuel Pump Primary Circuit Malfunction",
    "P0300": "Random/Multiple Cylinder Misfire Detected",
    **{f"P03{n:02d}": f"Cylinder {n} Misfire Detected" for n in range(1, 13)},
    "P0325": "Knock Sensor 1 Circuit Malfunction (Bank 1 or Single Sensor)",
    "P0335": "Crankshaft Position Sensor A Circuit Malfunction",
    "P0340": "Camshaft Position Sensor Circuit Malfunction",
    "P0380": "Glow Plug/Heater Circuit A Malfunction",
    "P0400": "Exhaust Gas Recirculation Flow Malfunction",
    "P0401": "Exhaust Gas Recirculation Flow Insufficient Detected",
    "P0402": "Exhaust Gas Recirculation Flow Excessive Detected",
    "P0410": "Secondary Air Injection System Malfunction",
    "P0420": "Catalyst System Efficiency Below Threshold (Bank 1)",
    "P0430": "Catalyst System Efficiency Below Threshold (Bank 2)",
    "P0440": "Evaporative Emission Control System Malfunction",
    "P0441": "Evaporative Emission Control System Incorrect Purge Flow",
    "P0442": "Evaporative Emission Control System Leak Detected (small leak)",
    "P0446": "Evaporative Emission Control System Vent Control Circuit Malfunction",
    "P0455": "Evaporative Emission Control System Leak Detected (gross leak)",
    "P0456": "Evaporative Emission Control System Leak Detected (very small leak)",
    "P0500": "Vehicle Speed Sensor Malfunction",
    "P0505": "Idle Control System Malfunction",
    "P0506": "Idle Control System RPM Lower Than Expected",
    "P0507": "Idle Control System RPM Higher Than Expected",
    "P0560": "System Voltage Malfunction",
    "P0562": "System Voltage Low",
    "P0563": "System Voltage High",
    "P0600": "Serial Communication Link Malfunction",
    "P0601": "Internal Control Module Memory Check Sum Error",
    "P0603": "Internal Control Module Keep Alive Memory (KAM) Error",
    "P0700": "Transmission Control System Malfunction",
    "P0705": "Transmission Range Sensor Circuit Malfunction (PRNDL Input)",
    "P0715": "Input/Turbine Speed Sensor Circuit Malfunction",
    "P0720": "Output Speed Sensor Circuit Malfunction",
    "P0730": "Incorrect Gear Ratio",
    "P0740": "Torque Converter Clutch Circuit Malfunction",
    "U0100": "Lost Communication With ECM/PCM A",
    "U0101": "Lost Communication With TCM",
    "U0121": "Lost Communication With Anti-Lock Brake System (ABS) Control Module",
    "U0140": "Lost Communication With Body Control Module",
    "U0155": "Lost Communication With Instrument Panel Cluster (IPC) Control Module",
}


def describe_dtc(code: str) -> str | None:
    """Generic SAE J2012 description of ``code``, or None (unknown or manufacturer-specific)."""
    return GENERIC_DTC_DESCRIPTIONS.get(code.upper())
