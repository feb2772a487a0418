"""Stream events for newly stored records. Pure: records in, ``StreamEvent`` values out.

The store calls ``stream_events`` inside the ingest transaction with each batch's NEW entries,
so a redelivered message fires nothing twice. Only the live and events lanes fire: the history
lane is the past, replayed after an outage, and a dispatch backend must never take a fix from an
hour ago for where the vehicle is now. Health records fire nothing (they are for operators).
Birth, death and command acks are turned into events by the store itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fleetlink_cloud.bus import StreamEvent
from fleetlink_cloud.store.base import IngestBatch
from fleetlink_protocols.j1939 import fmi_description, spn_name
from fleetlink_protocols.obd import describe_dtc
from fleetlink_protocols.records import Dtc, DtcSource, Entry, Event, Position, SignalValue

REALTIME_LANES = frozenset({"live", "events"})


def stream_events(batch: IngestBatch, new_entries: Sequence[Entry]) -> list[StreamEvent]:
    """The stream events of ``new_entries`` of ``batch`` (ids are assigned by the store)."""
    if batch.lane not in REALTIME_LANES:
        return []
    out: list[StreamEvent] = []
    for entry in new_entries:
        ev = _event_of(batch, entry)
        if ev is not None:
            out.append(ev)
    return out


def _event_of(batch: IngestBatch, entry: Entry) -> StreamEvent | None:
    r = entry.record
    data: dict[str, Any] = {"boot_id": batch.boot_id, "seq": entry.seq}
    if isinstance(r, Position):
        data.update(position_data(r))
        kind = "position"
    elif isinstance(r, SignalValue):
        data.update(path=r.path, value=r.value)
        kind = "signal"
    elif isinstance(r, Dtc):
        data.update(dtc_data(r))
        kind = "dtc.raised" if r.active else "dtc.cleared"
    elif isinstance(r, Event):
        data.update(kind=r.kind, data=dict(r.data))
        kind = "event"
    else:  # Health: counters for operators, not a dispatch event
        return None
    return StreamEvent(0, kind, batch.device_id, r.ts_wall_ns, data)


def position_data(p: Position) -> dict[str, Any]:
    """A fix as JSON-ready fields (degrees, metres, m/s; absent values left out)."""
    out: dict[str, Any] = {"lat": p.lat_deg, "lon": p.lon_deg, "mode": int(p.mode)}
    for name, value in (
        ("alt_msl_m", p.alt_msl_m),
        ("speed_mps", p.speed_mps),
        ("heading_deg", p.heading_deg),
        ("hdop", p.hdop),
        ("sats_used", p.sats_used),
    ):
        if value is not None:
            out[name] = value
    return out


def dtc_data(d: Dtc) -> dict[str, Any]:
    """A trouble code with its description: SAE J2012 text for OBD-II, SPN/FMI names for J1939."""
    out: dict[str, Any] = {
        "source": "obd" if d.source == DtcSource.OBD else "j1939",
        "code": d.code,
        "ecu": d.ecu,
        "active": d.active,
    }
    if d.source == DtcSource.J1939 and d.spn is not None:
        out["spn"] = d.spn
        out["spn_name"] = spn_name(d.spn)
        if d.fmi is not None:
            out["fmi"] = d.fmi
            out["description"] = f"{spn_name(d.spn)}: {fmi_description(d.fmi)}"
        else:
            out["description"] = spn_name(d.spn)
    else:
        out["description"] = describe_dtc(d.code)
    for name, value in (("occurrences", d.occurrences), ("lamps", d.lamps)):
        if value is not None:
            out[name] = value
    return out
