"""Record bodies of protocol v1: the fields after ``[type, ts]``, with their quantisation.

Positions are delta-coded against a ``Chain``: the previous position's values in the same batch
(all zero for the first one, and for a record encoded alone). Units on the wire: latitude and
longitude 1e-7 degree, altitude decimetres, speed cm/s, heading 0.01 degree, HDOP 0.01.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fleetlink_protocols import packing as p
from fleetlink_protocols.catalog import AliasTable, check_path
from fleetlink_protocols.errors import (
    InvalidValue,
    MalformedPayload,
    PayloadTooLarge,
    UnknownRecordType,
)
from fleetlink_protocols.limits import (
    MAX_EVENT_DATA_ENTRIES,
    MAX_HEALTH_COUNTERS,
    MAX_NAME_LEN,
    MAX_PATH_LEN,
    MAX_TEXT_LEN,
)
from fleetlink_protocols.records import (
    Dtc,
    DtcSource,
    Event,
    FixMode,
    Health,
    Position,
    Record,
    RecordType,
    SignalScalar,
    SignalValue,
)

DEG_E7 = 10_000_000  # latitude/longitude unit: 1e-7 degree (about 1.1 cm)
HEADING_FULL = 36_000  # a full turn in 0.01 degree
UINT32_MAX = 0xFFFF_FFFF
J1939_SPN_MAX = 0x7_FFFF  # SPN is 19 bits (SAE J1939-73 DM1)
J1939_FMI_MAX = 31  # FMI is 5 bits (SAE J1939-73)
CAN_ID_MAX = 0x1FFF_FFFF  # 29-bit extended identifier


@dataclass(slots=True)
class Chain:
    """The last position values seen in a batch, in wire units; deltas are taken against them."""

    lat: int = 0
    lon: int = 0
    alt: int = 0
    speed: int = 0
    heading: int = 0


def quantize_ts_ns(ts_wall_ns: int) -> int:
    """Round to the millisecond the wire carries (half up)."""
    return (ts_wall_ns + 500_000) // 1_000_000 * 1_000_000


def quantize_position(pos: Position) -> Position:
    """The position's fields at wire resolution (timestamp excluded)."""
    return dataclasses.replace(
        pos,
        lat_deg=_q(pos.lat_deg, DEG_E7, "lat_deg") / DEG_E7,
        lon_deg=_q(pos.lon_deg, DEG_E7, "lon_deg") / DEG_E7,
        alt_msl_m=None if pos.alt_msl_m is None else _q(pos.alt_msl_m, 10, "alt_msl_m") / 10,
        speed_mps=None if pos.speed_mps is None else _q(pos.speed_mps, 100, "speed_mps") / 100,
        heading_deg=None if pos.heading_deg is None else _heading(pos.heading_deg) / 100,
        hdop=None if pos.hdop is None else _q(pos.hdop, 100, "hdop") / 100,
    )


def encode_body(record: Record, chain: Chain, table: AliasTable) -> list[Any]:
    """The body fields of ``record``; updates ``chain`` for positions. Raises ProtocolError."""
    if isinstance(record, Position):
        return _encode_position(record, chain)
    if isinstance(record, SignalValue):
        alias = table.alias_of(record.path)
        key: int | str = check_path(record.path) if alias is None else alias
        return [key, _encode_scalar(record.value, "value")]
    if isinstance(record, Dtc):
        return _encode_dtc(record)
    if isinstance(record, Event):
        data = _encode_map(record.data, "Event.data", MAX_EVENT_DATA_ENTRIES, _encode_scalar)
        return [p.check_text(record.kind, "Event.kind", MAX_NAME_LEN), data]
    if isinstance(record, Health):
        counters = _encode_map(record.counters, "Health.counters", MAX_HEALTH_COUNTERS, _counter)
        return [counters]
    raise InvalidValue(f"not a record: {type(record).__name__}")


def decode_body(
    rtype: int, ts_ns: int, arr: list[Any], i: int, chain: Chain, resolve: Callable[[int], str]
) -> Record:
    """Decode the body starting at ``arr[i]``. Raises ProtocolError subclasses only."""
    if rtype == RecordType.POSITION:
        return _decode_position(ts_ns, arr, i, chain)
    if rtype == RecordType.SIGNAL:
        key = p.at(arr, i)
        path = resolve(p.integer(key, "alias", 0)) if type(key) is int else _path(key)
        return SignalValue(ts_ns, path, _decode_scalar(p.at(arr, i + 1), "value"))
    if rtype == RecordType.DTC:
        return _decode_dtc(ts_ns, arr, i)
    if rtype == RecordType.EVENT:
        kind = p.text(p.at(arr, i), "Event.kind", MAX_NAME_LEN)
        raw = {} if p.at(arr, i + 1) is None else arr[i + 1]
        data = _decode_map(raw, "Event.data", MAX_EVENT_DATA_ENTRIES, _decode_scalar)
        return Event(ts_ns, kind, data)
    if rtype == RecordType.HEALTH:
        raw = {} if p.at(arr, i) is None else arr[i]
        counters = _decode_map(raw, "Health.counters", MAX_HEALTH_COUNTERS, _decode_counter)
        return Health(ts_ns, counters)
    raise UnknownRecordType(f"record type {rtype} is not defined in protocol v1")


def _q(value: float | int, scale: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, float | int):
        raise InvalidValue(f"{what}: expected a number, got {type(value).__name__}")
    return round(p.finite(float(value), what) * scale)


def _heading(heading_deg: float) -> int:
    # Headings wrap: 359.999 degrees rounds to 0, -90 means 270.
    return _q(heading_deg, 100, "heading_deg") % HEADING_FULL


def _trim(fields: list[Any]) -> list[Any]:
    """Drop trailing absent fields: a decoder reads missing trailing fields as absent."""
    while fields and fields[-1] is None:
        fields.pop()
    return fields


def _encode_position(pos: Position, chain: Chain) -> list[Any]:
    lat = p.check_int(_q(pos.lat_deg, DEG_E7, "lat_deg"), "lat_deg", -90 * DEG_E7, 90 * DEG_E7)
    lon = p.check_int(_q(pos.lon_deg, DEG_E7, "lon_deg"), "lon_deg", -180 * DEG_E7, 180 * DEG_E7)
    fields: list[Any] = [lat - chain.lat, lon - chain.lon, p.check_int(pos.mode, "mode", 0, 3)]
    chain.lat, chain.lon = lat, lon
    if pos.alt_msl_m is None:
        fields.append(None)
    else:
        alt = p.check_int(_q(pos.alt_msl_m, 10, "alt_msl_m"), "alt_msl_m", -(2**31), 2**31 - 1)
        fields.append(alt - chain.alt)
        chain.alt = alt
    if pos.speed_mps is None:
        fields.append(None)
    else:
        speed = p.check_int(_q(pos.speed_mps, 100, "speed_mps"), "speed_mps", 0, 2**31 - 1)
        fields.append(speed - chain.speed)
        chain.speed = speed
    if pos.heading_deg is None:
        fields.append(None)
    else:
        heading = _heading(pos.heading_deg)
        # The shorter way round: 359 -> 1 degree is +200, not -35800.
        fields.append(
            (heading - chain.heading + HEADING_FULL // 2) % HEADING_FULL - HEADING_FULL // 2
        )
        chain.heading = heading
    fields.append(
        None if pos.hdop is None else p.check_int(_q(pos.hdop, 100, "hdop"), "hdop", 0, UINT32_MAX)
    )
    fields.append(
        None if pos.sats_used is None else p.check_int(pos.sats_used, "sats_used", 0, 255)
    )
    return _trim(fields)


def _decode_position(ts_ns: int, arr: list[Any], i: int, chain: Chain) -> Position:
    # Update the chain from the raw deltas before any range check, so that a rejected position
    # does not shift the positions after it.
    lat = chain.lat = chain.lat + p.integer(p.at(arr, i), "lat delta")
    lon = chain.lon = chain.lon + p.integer(p.at(arr, i + 1), "lon delta")
    mode = p.integer(p.at(arr, i + 2), "mode")
    d_alt, d_speed, d_heading = (p.opt_integer(p.at(arr, i + k), "delta") for k in (3, 4, 5))
    hdop = p.opt_integer(p.at(arr, i + 6), "hdop")
    sats = p.opt_integer(p.at(arr, i + 7), "sats_used")
    if d_alt is not None:
        chain.alt += d_alt
    if d_speed is not None:
        chain.speed += d_speed
    if d_heading is not None:
        chain.heading = (chain.heading + d_heading) % HEADING_FULL
    p.integer(lat, "lat", -90 * DEG_E7, 90 * DEG_E7)
    p.integer(lon, "lon", -180 * DEG_E7, 180 * DEG_E7)
    p.integer(mode, "mode", 0, 3)
    if d_alt is not None:
        p.integer(chain.alt, "alt_dm", -(2**31), 2**31 - 1)
    if d_speed is not None:
        p.integer(chain.speed, "speed_cms", 0, 2**31 - 1)
    p.opt_integer(hdop, "hdop", 0, UINT32_MAX)
    p.opt_integer(sats, "sats_used", 0, 255)
    return Position(
        ts_wall_ns=ts_ns,
        lat_deg=lat / DEG_E7,
        lon_deg=lon / DEG_E7,
        mode=FixMode(mode),
        alt_msl_m=None if d_alt is None else chain.alt / 10,
        speed_mps=None if d_speed is None else chain.speed / 100,
        heading_deg=None if d_heading is None else chain.heading / 100,
        hdop=None if hdop is None else hdop / 100,
        sats_used=sats,
    )


def _encode_dtc(dtc: Dtc) -> list[Any]:
    return _trim(
        [
            p.check_int(dtc.source, "Dtc.source", 1, 255),
            p.check_text(dtc.code, "Dtc.code", MAX_NAME_LEN),
            p.check_int(dtc.ecu, "Dtc.ecu", 0, CAN_ID_MAX),
            _check_bool(dtc.active, "Dtc.active"),
            None if dtc.spn is None else p.check_int(dtc.spn, "Dtc.spn", 0, J1939_SPN_MAX),
            None if dtc.fmi is None else p.check_int(dtc.fmi, "Dtc.fmi", 0, J1939_FMI_MAX),
            None if dtc.occurrences is None else p.check_int(dtc.occurrences, "occ", 0, UINT32_MAX),
            None if dtc.lamps is None else p.check_int(dtc.lamps, "Dtc.lamps", 0, UINT32_MAX),
        ]
    )


def _decode_dtc(ts_ns: int, arr: list[Any], i: int) -> Dtc:
    source = p.integer(p.at(arr, i), "Dtc.source", 1, 255)
    code = p.text(p.at(arr, i + 1), "Dtc.code", MAX_NAME_LEN)
    ecu = p.integer(p.at(arr, i + 2), "Dtc.ecu", 0, CAN_ID_MAX)
    active = p.boolean(p.at(arr, i + 3), "Dtc.active")
    spn = p.opt_integer(p.at(arr, i + 4), "Dtc.spn", 0, J1939_SPN_MAX)
    fmi = p.opt_integer(p.at(arr, i + 5), "Dtc.fmi", 0, J1939_FMI_MAX)
    occurrences = p.opt_integer(p.at(arr, i + 6), "Dtc.occurrences", 0, UINT32_MAX)
    lamps = p.opt_integer(p.at(arr, i + 7), "Dtc.lamps", 0, UINT32_MAX)
    try:
        dtc_source = DtcSource(source)
    except ValueError:
        raise InvalidValue(f"Dtc.source {source} is not defined") from None
    return Dtc(ts_ns, dtc_source, code, ecu, active, spn, fmi, occurrences, lamps)


def _check_bool(value: bool, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidValue(f"{what}: expected a boolean, got {type(value).__name__}")
    return value


def _encode_scalar(value: SignalScalar, what: str) -> SignalScalar:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return p.check_int(value, what)
    if isinstance(value, float):
        return p.finite(value, what)
    if isinstance(value, str):
        return p.check_text(value, what, MAX_TEXT_LEN)
    raise InvalidValue(f"{what}: {type(value).__name__} is not a bool, int, float or str")


def _decode_scalar(value: object, what: str) -> SignalScalar:
    if type(value) is bool:
        return value
    if type(value) is int:
        return p.integer(value, what)
    if type(value) is float:
        return p.finite(value, what)
    if type(value) is str:
        return p.text(value, what, MAX_TEXT_LEN)
    raise MalformedPayload(f"{what}: {type(value).__name__} is not a bool, int, float or str")


def _counter(value: int, what: str) -> int:
    return p.check_int(value, what, 0)


def _decode_counter(value: object, what: str) -> int:
    return p.integer(value, what, 0)


def _encode_map(
    data: dict[str, Any], what: str, max_len: int, check: Callable[[Any, str], Any]
) -> dict[str, Any]:
    if len(data) > max_len:
        raise PayloadTooLarge(f"{what}: {len(data)} entries exceed the limit of {max_len}")
    return {
        p.check_text(k, f"{what} key", MAX_NAME_LEN): check(v, f"{what}[{k}]")
        for k, v in data.items()
    }


def _decode_map(
    raw: object, what: str, max_len: int, check: Callable[[object, str], Any]
) -> dict[str, Any]:
    data = p.mapping(raw, what, max_len)
    return {
        p.text(k, f"{what} key", MAX_NAME_LEN): check(v, f"{what}[{k}]") for k, v in data.items()
    }


def _path(value: object) -> str:
    return check_path(p.text(value, "signal path", MAX_PATH_LEN))
