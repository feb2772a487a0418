"""Typed records: what a vehicle reports, before and after the wire.

Every record carries ``ts_wall_ns``: the device's UTC wall-clock time of the observation, in
nanoseconds since the Unix epoch (for a GNSS fix, the receiver's time of fix). Records are
immutable values; the outbox gives each one a per-boot sequence number when it commits it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TypeAlias


class RecordType(enum.IntEnum):
    """Record type tags on the wire (protocol v1). Numbers are never reused."""

    POSITION = 1
    SIGNAL = 2
    DTC = 3
    EVENT = 4
    HEALTH = 5


class Priority(enum.IntEnum):
    """Outbox eviction priority: the lowest is evicted first when the disk budget is full."""

    HEALTH = 0
    SIGNAL = 1
    POSITION = 2
    EVENT = 3
    DTC = 4


class FixMode(enum.IntEnum):
    """GNSS fix mode, numbered as gpsd's TPV ``mode``."""

    UNKNOWN = 0
    NO_FIX = 1
    FIX_2D = 2
    FIX_3D = 3


class DtcSource(enum.IntEnum):
    OBD = 1  # SAE J1979 mode 03/07/0A, code such as "P0301"
    J1939 = 2  # SAE J1939-73 DM1, identified by SPN and FMI


@dataclass(frozen=True, slots=True)
class Position:
    """A GNSS fix. Angles in degrees (WGS-84), south and west negative."""

    ts_wall_ns: int
    lat_deg: float
    lon_deg: float
    mode: FixMode = FixMode.FIX_3D
    alt_msl_m: float | None = None
    speed_mps: float | None = None
    heading_deg: float | None = None
    hdop: float | None = None
    sats_used: int | None = None


SignalScalar: TypeAlias = float | int | bool | str


@dataclass(frozen=True, slots=True)
class SignalValue:
    """One sample of a catalog signal, named by its VSS path, in the catalog's SI unit."""

    ts_wall_ns: int
    path: str
    value: SignalScalar


@dataclass(frozen=True, slots=True)
class Dtc:
    """A diagnostic trouble code as observed at ``ts_wall_ns``.

    OBD-II codes use ``code`` ("P0301"); J1939 codes use ``spn``/``fmi`` and set ``code`` to
    "SPN-FMI" for display. ``active`` is False when the ECU reports the code cleared.
    """

    ts_wall_ns: int
    source: DtcSource
    code: str
    ecu: int = 0
    active: bool = True
    spn: int | None = None
    fmi: int | None = None
    occurrences: int | None = None
    lamps: int | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """An edge event (harsh braking, ignition on, geofence...). ``data`` is small and flat."""

    ts_wall_ns: int
    kind: str
    data: dict[str, SignalScalar] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Health:
    """Agent health counters (frames, rejections, drops, evictions), cumulative per boot."""

    ts_wall_ns: int
    counters: dict[str, int] = field(default_factory=dict)


Record: TypeAlias = Position | SignalValue | Dtc | Event | Health

RECORD_TYPE: dict[type[Record], RecordType] = {
    Position: RecordType.POSITION,
    SignalValue: RecordType.SIGNAL,
    Dtc: RecordType.DTC,
    Event: RecordType.EVENT,
    Health: RecordType.HEALTH,
}

PRIORITY: dict[RecordType, Priority] = {
    RecordType.HEALTH: Priority.HEALTH,
    RecordType.SIGNAL: Priority.SIGNAL,
    RecordType.POSITION: Priority.POSITION,
    RecordType.EVENT: Priority.EVENT,
    RecordType.DTC: Priority.DTC,
}


def record_type(record: Record) -> RecordType:
    return RECORD_TYPE[type(record)]


def priority_of(record: Record) -> Priority:
    return PRIORITY[RECORD_TYPE[type(record)]]


@dataclass(frozen=True, slots=True)
class Entry:
    """A record with the sequence number the outbox gave it within boot ``boot_id``."""

    seq: int
    record: Record
