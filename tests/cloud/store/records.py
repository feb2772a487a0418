"""Builders of entries and batches for the store suite (times in ns, device clock from T0)."""

from __future__ import annotations

from collections.abc import Sequence

from fleetlink_cloud.store import IngestBatch, Store
from fleetlink_cloud.store.base import Lane
from fleetlink_protocols.records import (
    Dtc,
    DtcSource,
    Entry,
    Event,
    FixMode,
    Health,
    Position,
    SignalScalar,
    SignalValue,
)

S = 1_000_000_000
T0 = 1_750_000_000 * S  # device clock of the first record
RX0 = T0 + 2 * S  # cloud clock of the first receipt
DEV = "veh-1"


def pos(
    seq: int,
    ts: int,
    lat: float = 52.5,
    lon: float = 13.4,
    *,
    alt: float | None = None,
    speed: float | None = None,
    heading: float | None = None,
    hdop: float | None = None,
    sats: int | None = None,
) -> Entry:
    return Entry(seq, Position(ts, lat, lon, FixMode.FIX_3D, alt, speed, heading, hdop, sats))


def sig(seq: int, ts: int, path: str, value: SignalScalar) -> Entry:
    return Entry(seq, SignalValue(ts, path, value))


def dtc(
    seq: int,
    ts: int,
    code: str = "P0301",
    *,
    active: bool = True,
    source: DtcSource = DtcSource.OBD,
    ecu: int = 0x7E8,
    spn: int | None = None,
    fmi: int | None = None,
    occurrences: int | None = None,
    lamps: int | None = None,
) -> Entry:
    return Entry(seq, Dtc(ts, source, code, ecu, active, spn, fmi, occurrences, lamps))


def event(seq: int, ts: int, kind: str, **data: SignalScalar) -> Entry:
    return Entry(seq, Event(ts, kind, dict(data)))


def health(seq: int, ts: int, **counters: int) -> Entry:
    return Entry(seq, Health(ts, dict(counters)))


def batch(
    entries: Sequence[Entry],
    *,
    device: str = DEV,
    boot: int = 1,
    lane: Lane = "live",
    rx: int = RX0,
) -> IngestBatch:
    return IngestBatch(device, boot, lane, tuple(entries), rx, payload_bytes=100)


async def add(store: Store, *device_ids: str) -> None:
    for device_id in device_ids or (DEV,):
        await store.add_device(
            device_id, name=f"{device_id} name", password_hash="h", created_wall_ns=T0
        )
