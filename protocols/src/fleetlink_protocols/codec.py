"""Wire protocol v1: records and batches to compact msgpack and back. Bytes in, values out.

docs/protocol.md is the specification; this module is its reference implementation. In short:
a record is an array ``[type, ts_ms, *body]``; a batch is an array ``[version, device_id,
boot_id, first_seq, last_seq, base_ts_ms, alias_fingerprint, entries]`` whose entries are
``[type, seq_delta, ts_delta_ms, *body]``, with positions delta-coded against the previous one.
Timestamps travel at millisecond resolution; ``quantize`` gives what a round trip returns.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fleetlink_protocols import packing as p
from fleetlink_protocols.catalog import CATALOG, FIRST_EXTRA_ALIAS, AliasTable
from fleetlink_protocols.errors import (
    InvalidValue,
    MalformedPayload,
    PayloadTooLarge,
    UnknownRecordType,
    UnknownSignalAlias,
    UnsupportedVersion,
)
from fleetlink_protocols.limits import (
    MAX_BATCH_ENTRIES,
    MAX_PAYLOAD_BYTES,
    MAX_RECORD_BYTES,
)
from fleetlink_protocols.recordlayout import (
    Chain,
    decode_body,
    encode_body,
    quantize_position,
    quantize_ts_ns,
)
from fleetlink_protocols.records import Entry, FixMode, Position, Record, RecordType, record_type
from fleetlink_protocols.topics import check_device_id

PROTOCOL_VERSION = 1
"""Major version: a decoder rejects any other. Minor additions append fields (see the spec)."""

ENVELOPE_MAX_BYTES = 128
"""Upper bound of the envelope around the entries (device id of 64 characters, 64-bit fields)."""

MAX_TS_MS = p.INT63_MAX // 1_000_000
"""Latest timestamp on the wire, in ms (year 2262): ts_wall_ns must fit a signed 64-bit."""

__all__ = [
    "PROTOCOL_VERSION",
    "Batch",
    "DecodedBatch",
    "Rejection",
    "bytes_per_position_example",
    "decode_batch",
    "decode_record",
    "encode_batch",
    "encode_batch_prefix",
    "encode_record",
    "example_positions",
    "quantize",
]


@dataclass(frozen=True)
class Batch:
    """Records of one device and boot, in strictly ascending ``seq`` order (gaps allowed)."""

    device_id: str
    boot_id: int
    entries: tuple[Entry, ...]

    @property
    def first_seq(self) -> int:
        return self.entries[0].seq

    @property
    def last_seq(self) -> int:
        return self.entries[-1].seq


@dataclass(frozen=True)
class Rejection:
    """One entry of a batch that did not decode; ``kind`` is the ProtocolError class name."""

    seq: int
    kind: str
    reason: str


@dataclass(frozen=True)
class DecodedBatch:
    """The entries that decoded, and a rejection (with its reason) for each one that did not."""

    batch: Batch
    rejected: tuple[Rejection, ...]


def quantize(record: Record) -> Record:
    """The record as the wire carries it: what ``decode(encode(record))`` returns."""
    ts_wall_ns = quantize_ts_ns(record.ts_wall_ns)
    if isinstance(record, Position):
        return quantize_position(dataclasses.replace(record, ts_wall_ns=ts_wall_ns))
    return dataclasses.replace(record, ts_wall_ns=ts_wall_ns)


def encode_record(record: Record) -> bytes:
    """Self-contained encoding of one record (an outbox row). Raises ProtocolError subclasses.

    Signals use catalog aliases or their path inline, never device extras, so a stored record
    stays readable whatever alias table a later configuration declares.
    """
    rtype = _record_type(record)
    body = encode_body(record, Chain(), CATALOG)
    row = [int(rtype), _ts_ms(record.ts_wall_ns), *body]
    return p.pack_row(row, MAX_RECORD_BYTES, "record")


def decode_record(data: bytes) -> Record:
    """Decode what ``encode_record`` produced. Raises only ProtocolError subclasses."""
    arr = p.array(p.unpack(data, MAX_RECORD_BYTES, "record"), "record", 2)
    rtype = p.integer(arr[0], "record type")
    ts_ms = p.integer(arr[1], "ts_ms", 0, MAX_TS_MS)
    return decode_body(rtype, ts_ms * 1_000_000, arr, 2, Chain(), CATALOG.path_of)


def encode_batch(batch: Batch, aliases: AliasTable | None = None) -> bytes:
    """Encode a batch for the live/history/events topics. Raises ProtocolError subclasses.

    Signal paths in ``aliases`` (default: the catalog only) travel as aliases, others inline.
    PayloadTooLarge if the payload would exceed MAX_PAYLOAD_BYTES: see ``encode_batch_prefix``.
    """
    payload, count = encode_batch_prefix(batch, aliases, MAX_PAYLOAD_BYTES + ENVELOPE_MAX_BYTES)
    if count < len(batch.entries) or len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(f"batch: more than {MAX_PAYLOAD_BYTES} bytes")
    return payload


def encode_batch_prefix(
    batch: Batch, aliases: AliasTable | None = None, max_bytes: int = MAX_PAYLOAD_BYTES
) -> tuple[bytes, int]:
    """Encode the longest prefix of ``batch.entries`` that fits ``max_bytes``.

    Returns the payload and how many entries it holds; the uplink publishes it and sends the
    rest in the next batch. Raises PayloadTooLarge if not even the first entry fits.
    """
    table = aliases if aliases is not None else CATALOG
    _check_batch(batch)
    chain = Chain()
    prev_seq = batch.first_seq
    base_ts = prev_ts = _ts_ms(batch.entries[0].record.ts_wall_ns)
    rows: list[bytes] = []
    budget = min(max_bytes, MAX_PAYLOAD_BYTES + ENVELOPE_MAX_BYTES) - ENVELOPE_MAX_BYTES
    for entry in batch.entries:
        ts = _ts_ms(entry.record.ts_wall_ns)
        row = [int(_record_type(entry.record)), entry.seq - prev_seq, ts - prev_ts]
        packed = p.pack_row(
            row + encode_body(entry.record, chain, table), MAX_RECORD_BYTES, "entry"
        )
        budget -= len(packed)
        if budget < 0:
            break
        rows.append(packed)
        prev_seq, prev_ts = entry.seq, ts
    if not rows:
        raise PayloadTooLarge(f"batch: the first entry alone exceeds {max_bytes} bytes")
    envelope: list[Any] = [
        PROTOCOL_VERSION,
        batch.device_id,
        batch.boot_id,
        batch.first_seq,
        prev_seq,  # last_seq: the last entry that fitted
        base_ts,
        table.fingerprint,
    ]
    return p.pack_envelope(envelope, rows, max_bytes, "batch"), len(rows)


def decode_batch(payload: bytes, aliases: AliasTable | None = None) -> DecodedBatch:
    """Decode a batch. Raises ProtocolError subclasses for the whole payload.

    Entries of unknown type, with out-of-range values, over-long strings or undeclared signal
    aliases are left out and listed in ``rejected``; the other entries still decode.
    """
    table = aliases if aliases is not None else CATALOG
    top = p.array(p.unpack(payload, MAX_PAYLOAD_BYTES, "batch"), "batch", 1)
    check_version(top[0])
    p.array(top, "batch envelope", 8)
    device_id = _decode_device_id(top[1])
    boot_id = p.integer(top[2], "boot_id", 0)
    first_seq = p.integer(top[3], "first_seq", 0)
    last_seq = p.integer(top[4], "last_seq", first_seq)
    base_ts = p.integer(top[5], "base_ts_ms", 0, MAX_TS_MS)
    fingerprint = p.integer(top[6], "alias fingerprint", 0, 0xFFFFFFFF)
    rows = p.array(top[7], "entries", 1)
    if len(rows) > MAX_BATCH_ENTRIES:
        raise PayloadTooLarge(f"batch: {len(rows)} entries exceed {MAX_BATCH_ENTRIES}")
    resolve = _resolver(table, fingerprint)
    chain = Chain()
    seq, ts_ms = first_seq, base_ts
    good: list[Entry] = []
    rejected: list[Rejection] = []
    for index, raw in enumerate(rows):
        row = p.array(raw, "entry", 3)
        rtype = p.integer(row[0], "record type", -(2**64), 2**64)  # unknown tags: rejected below
        seq_delta = p.integer(row[1], "seq delta", -(2**64), 2**64)
        seq += seq_delta
        # The first entry carries first_seq itself; later ones strictly ascend up to last_seq.
        if seq_delta < min(index, 1) or (index == 0 and seq_delta) or seq > last_seq:
            raise MalformedPayload(f"batch: entry {index} has seq {seq} (delta {seq_delta})")
        ts_ms += p.integer(row[2], "ts delta", -(2**64), 2**64)
        try:
            ts = p.integer(ts_ms, "ts_ms", 0, MAX_TS_MS)
            good.append(Entry(seq, decode_body(rtype, ts * 1_000_000, row, 3, chain, resolve)))
        except (InvalidValue, PayloadTooLarge, UnknownRecordType, UnknownSignalAlias) as exc:
            rejected.append(Rejection(seq, type(exc).__name__, str(exc)))
    if seq != last_seq:
        raise MalformedPayload(f"batch: entries end at seq {seq}, envelope says {last_seq}")
    return DecodedBatch(Batch(device_id, boot_id, tuple(good)), tuple(rejected))


def check_version(value: object) -> int:
    """Accept major version 1; raise UnsupportedVersion for others, MalformedPayload if no int."""
    if type(value) is not int:
        raise MalformedPayload(f"protocol version: expected an integer, got {type(value).__name__}")
    if value != PROTOCOL_VERSION:
        raise UnsupportedVersion(
            f"protocol version {value}; this decoder speaks {PROTOCOL_VERSION}"
        )
    return value


def _resolver(table: AliasTable, fingerprint: int) -> Callable[[int], str]:
    """Alias -> path; extras only if the batch was encoded with the same extras as ``table``."""

    def resolve(alias: int) -> str:
        if alias >= FIRST_EXTRA_ALIAS and fingerprint != table.fingerprint:
            raise UnknownSignalAlias(
                f"signal alias {alias}: batch encoded with alias table {fingerprint:#010x}, "
                f"decoder has {table.fingerprint:#010x}"
            )
        return table.path_of(alias)

    return resolve


def _decode_device_id(value: object) -> str:
    try:
        return check_device_id(p.text(value, "device_id", 64))
    except PayloadTooLarge as exc:
        raise MalformedPayload(str(exc)) from exc


def _check_batch(batch: Batch) -> None:
    check_device_id(batch.device_id)
    p.check_int(batch.boot_id, "boot_id", 0)
    if not batch.entries:
        raise InvalidValue("batch: no entries")
    if len(batch.entries) > MAX_BATCH_ENTRIES:
        raise PayloadTooLarge(f"batch: {len(batch.entries)} entries exceed {MAX_BATCH_ENTRIES}")
    prev = -1
    for entry in batch.entries:
        p.check_int(entry.seq, "seq", 0)
        if entry.seq <= prev:
            raise InvalidValue(f"batch: seq {entry.seq} after {prev}; must strictly ascend")
        prev = entry.seq


def _record_type(record: Record) -> RecordType:
    try:
        return record_type(record)
    except KeyError:
        raise InvalidValue(f"not a record: {type(record).__name__}") from None


def _ts_ms(ts_wall_ns: int) -> int:
    p.check_int(ts_wall_ns, "ts_wall_ns", 0)
    ts_ms = (ts_wall_ns + 500_000) // 1_000_000
    if ts_ms > MAX_TS_MS:
        raise InvalidValue(f"ts_wall_ns {ts_wall_ns} beyond the last representable millisecond")
    return ts_ms


def example_positions(count: int = 10) -> tuple[Position, ...]:
    """``count`` one-second 3D fixes of a van at about 48 km/h on a gentle curve (docs, bench)."""
    fixes = []
    lat, lon = 52.5200083, 13.4049541
    for i in range(count):
        heading = (72.0 + 2.5 * i) % 360.0
        speed = 13.4 + 0.35 * math.sin(i / 3)
        # Flat-earth step: 1 s at ``speed`` along ``heading`` (111 320 m per degree of latitude).
        lat += speed * math.cos(math.radians(heading)) / 111_320.0
        lon += speed * math.sin(math.radians(heading)) / (111_320.0 * math.cos(math.radians(lat)))
        fixes.append(
            Position(
                ts_wall_ns=1_717_243_200_000_000_000 + i * 1_000_000_000,  # 2024-06-01T12:00:00Z
                lat_deg=lat,
                lon_deg=lon,
                mode=FixMode.FIX_3D,
                alt_msl_m=34.6 + 0.2 * i,
                speed_mps=speed,
                heading_deg=heading,
                hdop=0.8 + 0.1 * (i % 3),
                sats_used=9 + i % 3,
            )
        )
    return tuple(fixes)


def bytes_per_position_example(count: int = 10) -> float:
    """Payload bytes per position in a batch of ``example_positions(count)``, envelope included."""
    fixes = example_positions(count)
    entries = tuple(Entry(1000 + i, fix) for i, fix in enumerate(fixes))
    payload = encode_batch(Batch("veh-0001", 0x1234_5678_9ABC_DEF0 & p.INT63_MAX, entries))
    return len(payload) / count
