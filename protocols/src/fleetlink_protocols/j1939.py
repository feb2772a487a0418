"""SAE J1939 tables and payload decoding: PGNs, SPNs, signal ranges, DM1 (pure, no I/O).

References: J1939-21 (data link: identifier, transport protocol), J1939-71 (vehicle application
layer: PGN/SPN definitions, scaling, signal ranges), J1939-73 (diagnostics: DM1, lamps, DTC
layout, SPN conversion methods, FMIs). Byte positions below are 1-based as the standards write
them ("bytes 4-5"); all multi-byte J1939 parameters are little-endian (J1939-71).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

# --- PGNs (J1939-21 for the network layer, J1939-71/-73 for application messages) ----------
PGN_REQUEST: Final = 59904  # 0xEA00, J1939-21 Request
PGN_TP_CM: Final = 60416  # 0xEC00, J1939-21 Transport Protocol - Connection Management
PGN_TP_DT: Final = 60160  # 0xEB00, J1939-21 Transport Protocol - Data Transfer
PGN_EEC1: Final = 61444  # 0xF004, J1939-71 Electronic Engine Controller 1
PGN_VDHR: Final = 65217  # 0xFEC1, J1939-71 High Resolution Vehicle Distance
PGN_DM1: Final = 65226  # 0xFECA, J1939-73 5.7.1 Active Diagnostic Trouble Codes
PGN_VD: Final = 65248  # 0xFEE0, J1939-71 Vehicle Distance
PGN_ENGINE_CONFIG: Final = 65251  # 0xFEE3, J1939-71 Engine Configuration 1
PGN_HOURS: Final = 65253  # 0xFEE5, J1939-71 Engine Hours, Revolutions
PGN_VI: Final = 65260  # 0xFEEC, J1939-71 Vehicle Identification
PGN_ET1: Final = 65262  # 0xFEEE, J1939-71 Engine Temperature 1
PGN_CCVS: Final = 65265  # 0xFEF1, J1939-71 Cruise Control/Vehicle Speed 1
PGN_LFE: Final = 65266  # 0xFEF2, J1939-71 Fuel Economy (Liquid)
PGN_DD: Final = 65276  # 0xFEFC, J1939-71 Dash Display

PDU2_MIN_PF: Final = 240  # J1939-21: PF < 240 is PDU1 (PS = destination), else PDU2
GLOBAL_ADDRESS: Final = 0xFF  # J1939-21: destination "all"

# --- Transport protocol (J1939-21) ----------------------------------------------------------
TP_RTS: Final = 16  # TP.CM_RTS request to send (connection mode)
TP_CTS: Final = 17  # TP.CM_CTS clear to send
TP_EOM_ACK: Final = 19  # TP.CM_EndOfMsgACK
TP_BAM: Final = 32  # TP.CM_BAM broadcast announce message
TP_ABORT: Final = 255  # TP.Conn_Abort
TP_MAX_BYTES: Final = 1785  # 255 packets x 7 bytes
TP_MIN_BYTES: Final = 9  # shorter messages fit one frame and must not use TP
TP_BYTES_PER_PACKET: Final = 7
TP_T1_MS: Final = 750  # receiver: max gap between TP.DT packets
TP_T2_MS: Final = 1250  # receiver: max wait for data after sending a CTS


class Validity(enum.Enum):
    """How a raw parameter value reads under J1939-71's transmitted signal ranges."""

    VALID = "valid"
    SPECIFIC = "specific"  # parameter-specific indicator (0xFB..)
    RESERVED = "reserved"
    ERROR = "error"  # error indicator: the sender knows the value is wrong
    NOT_AVAILABLE = "not_available"  # not available or not requested


def validity(raw: int, length_bits: int) -> Validity:
    """Classify ``raw`` by J1939-71 signal ranges for 1-, 2- and 4-byte (and 2-bit) parameters.

    For n-byte parameters the top byte decides: <= 0xFA valid, 0xFB parameter specific,
    0xFC-0xFD reserved, 0xFE error, 0xFF not available. Two-bit states: 0b10 error, 0b11 N/A.
    """
    if length_bits == 2:
        return (Validity.VALID, Validity.VALID, Validity.ERROR, Validity.NOT_AVAILABLE)[raw & 3]
    if length_bits % 8:
        raise ValueError(f"no J1939 range rule for {length_bits}-bit parameters")
    top = raw >> (length_bits - 8)
    if top <= 0xFA:
        return Validity.VALID
    return {
        0xFB: Validity.SPECIFIC,
        0xFC: Validity.RESERVED,
        0xFD: Validity.RESERVED,
        0xFE: Validity.ERROR,
    }.get(top, Validity.NOT_AVAILABLE)


@dataclass(frozen=True, slots=True)
class SpnDef:
    """Where one SPN sits in its PGN and how to scale it: ``value = raw * resolution + offset``.

    ``start_byte`` is 1-based as in J1939-71; ``decimals`` rounds away binary float noise of
    resolutions such as 0.05 without losing any step of the parameter.
    """

    spn: int
    name: str
    pgn: int
    start_byte: int
    length_bits: int
    resolution: float
    offset: float
    unit: str
    path: str
    decimals: int

    def raw(self, data: bytes) -> int | None:
        """The little-endian raw value, or None when ``data`` is too short to hold it."""
        first = self.start_byte - 1
        last = first + self.length_bits // 8
        if len(data) < last:
            return None
        return int.from_bytes(data[first:last], "little")

    def scale(self, raw: int) -> float:
        return round(raw * self.resolution + self.offset, self.decimals)


# J1939-71 parameter definitions for the signals the agent reports, keyed by PGN.
_SIGNAL_SPNS: tuple[SpnDef, ...] = (
    # SPN 190 Engine Speed: EEC1 bytes 4-5, 0.125 rpm/bit, 0..8031.875 rpm.
    SpnDef(190, "Engine Speed", PGN_EEC1, 4, 16, 0.125, 0.0, "rpm",
           "Vehicle.Powertrain.CombustionEngine.Speed", 3),
    # SPN 84 Wheel-Based Vehicle Speed: CCVS bytes 2-3, 1/256 km/h per bit.
    SpnDef(84, "Wheel-Based Vehicle Speed", PGN_CCVS, 2, 16, 1 / 256, 0.0, "km/h",
           "Vehicle.Speed", 8),
    # SPN 110 Engine Coolant Temperature: ET1 byte 1, 1 degC/bit, -40 degC offset.
    SpnDef(110, "Engine Coolant Temperature", PGN_ET1, 1, 8, 1.0, -40.0, "Celsius",
           "Vehicle.Powertrain.CombustionEngine.EngineCoolant.Temperature", 0),
    # SPN 183 Engine Fuel Rate: LFE bytes 1-2, 0.05 L/h per bit.
    SpnDef(183, "Engine Fuel Rate", PGN_LFE, 1, 16, 0.05, 0.0, "l/h",
           "Fleetlink.Powertrain.FuelRate", 2),
    # SPN 96 Fuel Level 1: DD byte 2, 0.4 %/bit.
    SpnDef(96, "Fuel Level 1", PGN_DD, 2, 8, 0.4, 0.0, "percent",
           "Vehicle.Powertrain.FuelSystem.RelativeLevel", 1),
    # SPN 247 Engine Total Hours of Operation: HOURS bytes 1-4, 0.05 h/bit.
    SpnDef(247, "Engine Total Hours of Operation", PGN_HOURS, 1, 32, 0.05, 0.0, "h",
           "Vehicle.Powertrain.CombustionEngine.EngineHours", 2),
    # SPN 917 High Resolution Total Vehicle Distance: VDHR bytes 1-4, 5 m/bit (VSS 6.0: metres).
    SpnDef(917, "High Resolution Total Vehicle Distance", PGN_VDHR, 1, 32, 5.0, 0.0, "m",
           "Vehicle.TraveledDistance", 0),
    # SPN 245 Total Vehicle Distance: VD bytes 5-8, 0.125 km/bit = 125 m. Older ECUs send only this;
    # where VDHR is also sent both feed the odometer, which agree to within 0.125 km.
    SpnDef(245, "Total Vehicle Distance", PGN_VD, 5, 32, 125.0, 0.0, "m",
           "Vehicle.TraveledDistance", 0),
)  # fmt: skip

SIGNAL_SPNS: MappingProxyType[int, tuple[SpnDef, ...]] = MappingProxyType(
    {pgn: tuple(s for s in _SIGNAL_SPNS if s.pgn == pgn) for pgn in {s.pgn for s in _SIGNAL_SPNS}}
)
"""PGN -> the SPNs decoded from it."""

# J1939-73 Failure Mode Identifiers (22-30 are reserved).
FMI_DESCRIPTIONS: MappingProxyType[int, str] = MappingProxyType({
    0: "Data valid but above normal operational range - most severe level",
    1: "Data valid but below normal operational range - most severe level",
    2: "Data erratic, intermittent or incorrect",
    3: "Voltage above normal, or shorted to high source",
    4: "Voltage below normal, or shorted to low source",
    5: "Current below normal or open circuit",
    6: "Current above normal or grounded circuit",
    7: "Mechanical system not responding or out of adjustment",
    8: "Abnormal frequency or pulse width or period",
    9: "Abnormal update rate",
    10: "Abnormal rate of change",
    11: "Root cause not known",
    12: "Bad intelligent device or component",
    13: "Out of calibration",
    14: "Special instructions",
    15: "Data valid but above normal operating range - least severe level",
    16: "Data valid but above normal operating range - moderately severe level",
    17: "Data valid but below normal operating range - least severe level",
    18: "Data valid but below normal operating range - moderately severe level",
    19: "Received network data in error",
    20: "Data drifted high",
    21: "Data drifted low",
    31: "Condition exists",
})  # fmt: skip

# SPN names (J1939-71 / J1939-73 Digital Annex wording) the cloud shows next to DTCs. Unknown
# SPNs are shown by number: see spn_name().
SPN_NAMES: MappingProxyType[int, str] = MappingProxyType({
    **{s.spn: s.name for s in _SIGNAL_SPNS},
    27: "Engine Exhaust Gas Recirculation 1 Valve Position",
    51: "Engine Throttle Valve 1 Position",
    91: "Accelerator Pedal Position 1",
    92: "Engine Percent Load At Current Speed",
    94: "Engine Fuel Delivery Pressure",
    97: "Water In Fuel Indicator",
    98: "Engine Oil Level",
    100: "Engine Oil Pressure",
    102: "Engine Intake Manifold #1 Pressure",
    105: "Engine Intake Manifold 1 Temperature",
    108: "Barometric Pressure",
    111: "Engine Coolant Level",
    157: "Engine Injector Metering Rail 1 Pressure",
    158: "Key Switch Battery Potential",
    168: "Battery Potential / Power Input 1",
    171: "Ambient Air Temperature",
    175: "Engine Oil Temperature 1",
    237: "Vehicle Identification Number",
    250: "Engine Total Fuel Used",
    513: "Actual Engine - Percent Torque",
    623: "Red Stop Lamp Status",
    624: "Amber Warning Lamp Status",
    629: "Controller #1",
    639: "J1939 Network #1, Primary Vehicle Network",
    651: "Engine Injector Cylinder #01",
    652: "Engine Injector Cylinder #02",
    653: "Engine Injector Cylinder #03",
    654: "Engine Injector Cylinder #04",
    655: "Engine Injector Cylinder #05",
    656: "Engine Injector Cylinder #06",
    975: "Engine Fan 1 Estimated Percent Speed",
    980: "Engine PTO Governor Enable Switch",
    987: "Protect Lamp Status",
    1213: "Malfunction Indicator Lamp Status",
    1569: "Engine Protection Torque Derate",
    1761: "Aftertreatment 1 Diesel Exhaust Fluid Tank Volume",
    3216: "Aftertreatment 1 Intake NOx",
    3226: "Aftertreatment 1 Outlet NOx",
    3251: "Aftertreatment 1 Diesel Particulate Filter Differential Pressure",
    3364: "Aftertreatment 1 Diesel Exhaust Fluid Tank Quality",
})  # fmt: skip


def spn_name(spn: int) -> str:
    """A display name for ``spn``: the table's, else "SPN <n>"."""
    return SPN_NAMES.get(spn, f"SPN {spn}")


def fmi_description(fmi: int) -> str:
    return FMI_DESCRIPTIONS.get(fmi, f"FMI {fmi} (reserved)")


# --- DM1 (J1939-73 5.7.1) --------------------------------------------------------------------


class LampState(enum.IntEnum):
    """A lamp's two status bits (J1939-73 DM1; SPNs 1213, 623, 624, 987)."""

    OFF = 0
    ON = 1
    ERROR = 2
    NOT_AVAILABLE = 3


@dataclass(frozen=True, slots=True)
class Lamps:
    """DM1 bytes 1-2 as one word, ``status_byte << 8 | flash_byte``: what ``Dtc.lamps`` holds."""

    word: int

    def _state(self, shift: int) -> LampState:
        return LampState((self.word >> (8 + shift)) & 3)

    @property
    def mil(self) -> LampState:  # byte 1 bits 8-7, SPN 1213
        return self._state(6)

    @property
    def red_stop(self) -> LampState:  # byte 1 bits 6-5, SPN 623
        return self._state(4)

    @property
    def amber_warning(self) -> LampState:  # byte 1 bits 4-3, SPN 624
        return self._state(2)

    @property
    def protect(self) -> LampState:  # byte 1 bits 2-1, SPN 987
        return self._state(0)

    def as_dict(self) -> dict[str, str]:
        return {
            "mil": self.mil.name.lower(),
            "red_stop": self.red_stop.name.lower(),
            "amber_warning": self.amber_warning.name.lower(),
            "protect": self.protect.name.lower(),
        }


SPN_NOT_AVAILABLE: Final = 0x7FFFF  # 19 bits all ones
OC_NOT_AVAILABLE: Final = 0x7F  # occurrence count 127: not available (J1939-73, SPN 1216)


class SpnVersion(enum.IntEnum):
    """J1939-73 SPN conversion methods (Appendix: "SPN Conversion Method").

    Version 4 is current and flagged by CM = 0: SPN bits 0-7 in byte 3, 8-15 in byte 4,
    16-18 in byte 5 bits 8-6. CM = 1 flags one of the older versions, which the message alone
    cannot tell apart: 1 (byte 3 = SPN bits 18-11, byte 4 = bits 10-3, byte 5 bits 8-6 =
    bits 2-0), 2 (bytes 3-4 little-endian = bits 18-3, byte 5 bits 8-6 = bits 2-0) and 3
    (the version 4 layout).
    """

    V1 = 1
    V2 = 2
    V3 = 3
    V4 = 4


def dtc_spn(b3: int, b4: int, b5: int, version: SpnVersion) -> int:
    """The 19-bit SPN from DTC bytes 3-5 under conversion ``version``."""
    high3 = b5 >> 5
    if version is SpnVersion.V1:
        return (b3 << 11) | (b4 << 3) | high3
    if version is SpnVersion.V2:
        return ((b3 | (b4 << 8)) << 3) | high3
    return b3 | (b4 << 8) | (high3 << 16)


@dataclass(frozen=True, slots=True)
class Dm1Dtc:
    """One active DTC. ``occurrences`` is None when the sender reports it not available."""

    spn: int
    fmi: int
    occurrences: int | None
    legacy_cm: bool  # CM bit set: SPN decoded with the caller's legacy version

    @property
    def code(self) -> str:
        return f"{self.spn}-{self.fmi}"


@dataclass(frozen=True, slots=True)
class Dm1:
    """A decoded DM1: the lamps and the active DTCs, plus what was skipped and why."""

    lamps: Lamps
    dtcs: tuple[Dm1Dtc, ...]
    not_available: int  # DTC slots filled with 0xFF (padding or "not available")
    trailing_bytes: int  # bytes after the last whole 4-byte DTC (normally 0xFF padding)


class Dm1Error(ValueError):
    """A DM1 payload too short to hold the lamp bytes and one DTC."""


def decode_dm1(payload: bytes, *, legacy_version: SpnVersion = SpnVersion.V4) -> Dm1:
    """Decode DM1 bytes (single frame or reassembled); raises Dm1Error when too short.

    "No active DTC" (J1939-73: SPN 0, FMI 0, OC 0) yields an empty ``dtcs``. A DTC with its
    CM bit set is decoded with ``legacy_version`` (see SpnVersion).
    """
    if len(payload) < 6:
        raise Dm1Error(f"DM1 of {len(payload)} bytes: needs 2 lamp bytes and a 4-byte DTC")
    lamps = Lamps((payload[0] << 8) | payload[1])
    dtcs: list[Dm1Dtc] = []
    not_available = 0
    body = payload[2:]
    whole = len(body) - len(body) % 4
    for i in range(0, whole, 4):
        b3, b4, b5, b6 = body[i : i + 4]
        legacy = bool(b6 & 0x80)
        spn = dtc_spn(b3, b4, b5, legacy_version if legacy else SpnVersion.V4)
        fmi = b5 & 0x1F
        oc = b6 & 0x7F
        if b3 == b4 == b5 == b6 == 0xFF:
            not_available += 1
            continue
        if spn == 0 and fmi == 0:  # the "no active DTC" placeholder
            continue
        dtcs.append(Dm1Dtc(spn, fmi, None if oc == OC_NOT_AVAILABLE else oc, legacy))
    return Dm1(lamps, tuple(dtcs), not_available, len(body) - whole)


# --- Vehicle identification (J1939-71 PGN 65260, SPN 237) -----------------------------------

_VIN_CHARS = frozenset("0123456789ABCDEFGHJKLMNPRSTUVWXYZ")  # ISO 3779: no I, O, Q
VIN_LENGTH: Final = 17


def decode_vin(payload: bytes) -> str | None:
    """The VIN from a Vehicle Identification payload, or None when it holds none.

    SPN 237 is ASCII up to a ``*`` delimiter. Accepted: a field made only of VIN characters
    (up to 17; older vehicles have shorter ones), or 17 VIN characters followed by bytes that
    are not (some ECUs pad the field with binary data before the delimiter).
    """
    field = payload.split(b"*", 1)[0].strip(b" \x00")
    run = 0
    for byte in field:
        if chr(byte) not in _VIN_CHARS:
            break
        run += 1
    if run == 0 or run > VIN_LENGTH:
        return None
    if run == len(field) or run == VIN_LENGTH:
        return field[:run].decode("ascii")
    return None
