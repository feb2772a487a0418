"""Response and request bodies of the telemetry routes, and their conversions from store rows.

Times are integers in nanoseconds since the Unix epoch, named ``*_wall_ns`` like the store's
fields: ``ts_wall_ns`` is the DEVICE clock of an observation, the other ``*_wall_ns`` fields the
cloud's. Units are in the names (``speed_mps``, ``heading_deg``, ``alt_msl_m``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fleetlink_cloud.store.base import (
    DtcRow,
    DtcState,
    EventRow,
    Ledger,
    PositionRow,
    SignalRow,
    VehicleState,
)
from fleetlink_protocols.j1939 import Lamps, fmi_description, spn_name
from fleetlink_protocols.obd import describe_dtc
from fleetlink_protocols.records import DtcSource

Scalar = bool | int | float | str
"""A signal value or event datum (bool before int: JSON true stays a boolean)."""
SourceName = Literal["obd", "j1939", "unknown"]


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)


# -- positions ---------------------------------------------------------------------------------


class PositionOut(Out):
    """A GNSS fix; ``mode`` is the gpsd TPV fix mode (2: 2D, 3: 3D)."""

    device_id: str
    boot_id: int
    seq: int
    ts_wall_ns: int
    lat_deg: float
    lon_deg: float
    mode: int
    alt_msl_m: float | None
    speed_mps: float | None
    heading_deg: float | None
    hdop: float | None
    sats_used: int | None


class PositionPage(Out):
    items: list[PositionOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: done")


class PointGeometry(Out):
    type: Literal["Point"] = "Point"
    coordinates: list[float] = Field(
        min_length=2, max_length=3, description="[longitude, latitude(, altitude MSL m)]"
    )


class PositionProperties(Out):
    device_id: str
    boot_id: int
    seq: int
    ts_wall_ns: int
    time: str = Field(description="ts_wall_ns as an RFC 3339 UTC date-time (microseconds)")
    mode: int
    speed_mps: float | None
    heading_deg: float | None
    hdop: float | None
    sats_used: int | None


class PositionFeature(Out):
    type: Literal["Feature"] = "Feature"
    id: str = Field(description="device_id:boot_id:seq")
    geometry: PointGeometry
    properties: PositionProperties


class PositionCollection(Out):
    """An RFC 7946 FeatureCollection of Point features; ``next_cursor`` is a foreign member."""

    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[PositionFeature]
    next_cursor: str | None


def rfc3339(ts_wall_ns: int) -> str:
    seconds, ns = divmod(ts_wall_ns, 1_000_000_000)
    when = datetime.fromtimestamp(seconds, UTC).replace(microsecond=ns // 1000)
    return when.isoformat().replace("+00:00", "Z")


def position_feature(row: PositionRow) -> PositionFeature:
    coords = [row.lon_deg, row.lat_deg]
    if row.alt_msl_m is not None:
        coords.append(row.alt_msl_m)
    props = PositionProperties(
        device_id=row.device_id,
        boot_id=row.boot_id,
        seq=row.seq,
        ts_wall_ns=row.ts_wall_ns,
        time=rfc3339(row.ts_wall_ns),
        mode=row.mode,
        speed_mps=row.speed_mps,
        heading_deg=row.heading_deg,
        hdop=row.hdop,
        sats_used=row.sats_used,
    )
    return PositionFeature(
        id=f"{row.device_id}:{row.boot_id}:{row.seq}",
        geometry=PointGeometry(coordinates=coords),
        properties=props,
    )


# -- signals -----------------------------------------------------------------------------------


class SignalOut(Out):
    """One sample of a VSS signal, in the signal catalog's SI unit."""

    device_id: str
    boot_id: int
    seq: int
    ts_wall_ns: int
    path: str
    value: Scalar


class SignalPage(Out):
    items: list[SignalOut]
    next_cursor: str | None


class LatestSignals(Out):
    device_id: str
    signals: dict[str, SignalOut] = Field(description="VSS path -> its newest sample")


# -- trouble codes -----------------------------------------------------------------------------


class LampsOut(Out):
    """J1939 DM1 lamp states: off, on, error or not_available."""

    mil: str
    red_stop: str
    amber_warning: str
    protect: str


class DtcText(Out):
    source: SourceName
    description: str | None = Field(
        description="SAE J2012 text for generic OBD-II codes; 'SPN name: FMI text' for J1939; "
        "null for manufacturer-specific or unknown codes"
    )
    spn_name: str | None
    fmi_description: str | None
    lamp_states: LampsOut | None


class DtcOut(DtcText):
    """One observation of a trouble code as reported by the vehicle."""

    device_id: str
    boot_id: int
    seq: int
    ts_wall_ns: int
    code: str
    ecu: int
    active: bool
    spn: int | None
    fmi: int | None
    occurrences: int | None
    lamps: int | None = Field(description="DM1 lamp word: status byte << 8 | flash byte")


class DtcStateOut(DtcText):
    """The current state of one code: its latest observation, and when it was first/last seen."""

    device_id: str
    code: str
    ecu: int
    active: bool
    spn: int | None
    fmi: int | None
    occurrences: int | None
    lamps: int | None
    ts_wall_ns: int
    first_seen_wall_ns: int
    last_seen_wall_ns: int


class DtcPage(Out):
    items: list[DtcOut]
    next_cursor: str | None


class DtcStates(Out):
    items: list[DtcStateOut]


def dtc_text(
    source: int, code: str, spn: int | None, fmi: int | None, lamps: int | None
) -> DtcText:
    """Descriptions of a code from the protocol tables (OBD-II J2012, J1939 SPN/FMI names)."""
    if source == DtcSource.J1939:
        name = spn_name(spn) if spn is not None else None
        fmi_text = fmi_description(fmi) if fmi is not None else None
        text = f"{name}: {fmi_text}" if name and fmi_text else name
        states = LampsOut(**Lamps(lamps).as_dict()) if lamps is not None else None
        return DtcText(
            source="j1939",
            description=text,
            spn_name=name,
            fmi_description=fmi_text,
            lamp_states=states,
        )
    kind: SourceName = "obd" if source == DtcSource.OBD else "unknown"
    return DtcText(
        source=kind,
        description=describe_dtc(code),
        spn_name=None,
        fmi_description=None,
        lamp_states=None,
    )


def dtc_out(row: DtcRow) -> DtcOut:
    text = dtc_text(row.source, row.code, row.spn, row.fmi, row.lamps)
    fields = {k: getattr(row, k) for k in DtcOut.model_fields if k not in DtcText.model_fields}
    return DtcOut(**fields, **text.model_dump())


def dtc_state_out(state: DtcState) -> DtcStateOut:
    text = dtc_text(state.source, state.code, state.spn, state.fmi, state.lamps)
    fields = {
        k: getattr(state, k) for k in DtcStateOut.model_fields if k not in DtcText.model_fields
    }
    return DtcStateOut(**fields, **text.model_dump())


# -- events, ledger, health --------------------------------------------------------------------


class EventOut(Out):
    """An edge event (harsh braking, ignition...) with its small, flat data."""

    device_id: str
    boot_id: int
    seq: int
    ts_wall_ns: int
    kind: str
    data: dict[str, Scalar]


class EventPage(Out):
    items: list[EventOut]
    next_cursor: str | None


def event_out(row: EventRow) -> EventOut:
    return EventOut.model_validate(row)


class GapOut(Out):
    first: int
    last: int
    count: int


class BootLedgerOut(Out):
    """One boot: sequence numbers received and missing, and what the device says it evicted."""

    boot_id: int
    first_seq: int
    last_seq: int
    received: int
    missing: int
    gaps: list[GapOut]
    evicted: dict[str, int] = Field(description="outbox.evicted_* counters of the last Health")
    first_received_wall_ns: int
    last_received_wall_ns: int


class LedgerOut(Out):
    """The loss ledger: per boot, and the time the device spent offline (cloud clock)."""

    device_id: str
    boots: list[BootLedgerOut]
    offline_ns: int
    offline_periods: int
    missing: int
    evicted: int


def ledger_out(ledger: Ledger) -> LedgerOut:
    return LedgerOut.model_validate(ledger)


class HealthCountersOut(Out):
    """The newest Health record of a device: agent counters, cumulative per boot."""

    device_id: str
    boot_id: int
    seq: int
    ts_wall_ns: int
    counters: dict[str, int]


# -- vehicles ----------------------------------------------------------------------------------


class PresenceOut(Out):
    """Connection state from birth/death messages and heartbeat expiry (cloud clock)."""

    online: bool
    boot_id: int | None
    agent_version: str | None
    started_wall_ns: int | None = Field(description="device clock: when the boot started")
    changed_wall_ns: int | None
    last_seen_wall_ns: int | None
    reason: str | None = Field(description="birth, death, timeout or data")


class VehicleOut(Out):
    """The live picture of one vehicle."""

    id: str
    name: str
    disabled: bool
    created_wall_ns: int
    presence: PresenceOut
    position: PositionOut | None
    signals: dict[str, SignalOut]
    active_dtcs: list[DtcStateOut]


class VehicleList(Out):
    items: list[VehicleOut]


def vehicle_out(state: VehicleState) -> VehicleOut:
    return VehicleOut(
        id=state.device.id,
        name=state.device.name,
        disabled=state.device.disabled,
        created_wall_ns=state.device.created_wall_ns,
        presence=PresenceOut.model_validate(state.presence),
        position=None if state.position is None else PositionOut.model_validate(state.position),
        signals={p: SignalOut.model_validate(s) for p, s in state.signals.items()},
        active_dtcs=[dtc_state_out(d) for d in state.active_dtcs],
    )


def signal_out(row: SignalRow) -> SignalOut:
    return SignalOut.model_validate(row)
