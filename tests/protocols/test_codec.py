"""Round trips, quantisation, compatibility rules and rejections of the v1 codec."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetlink_protocols import codec
from fleetlink_protocols.catalog import AliasTable
from fleetlink_protocols.codec import Batch, decode_batch, decode_record, encode_batch, quantize
from fleetlink_protocols.errors import (
    InvalidDeviceId,
    InvalidValue,
    MalformedPayload,
    PayloadTooLarge,
    ProtocolError,
    UnsupportedVersion,
)
from fleetlink_protocols.limits import MAX_BATCH_ENTRIES, MAX_PAYLOAD_BYTES
from fleetlink_protocols.records import (
    Dtc,
    DtcSource,
    Entry,
    Event,
    FixMode,
    Health,
    Position,
    Record,
    SignalValue,
)
from tests.protocols import strategies

T0 = 1_717_243_200_123_456_789

RECORDS: tuple[Record, ...] = (
    Position(T0, 52.5200083, 13.4049541, FixMode.FIX_3D, 34.56, 13.417, 72.123, 0.87, 11),
    Position(T0 + 10**9, -33.8688197, 151.2092955),
    Position(T0 + 2 * 10**9, 0.0, -0.0000001, FixMode.FIX_2D, speed_mps=0.0, heading_deg=359.999),
    SignalValue(T0, "Vehicle.Speed", 48.25),
    SignalValue(T0, "Vehicle.Powertrain.CombustionEngine.Speed", 1650),
    SignalValue(T0, "Vehicle.VehicleIdentification.VIN", "WVWZZZ1JZXW000001"),
    SignalValue(T0, "Vehicle.Chassis.ParkingBrake.IsEngaged", True),
    SignalValue(T0, "Acme.Body.DoorCount", 4),
    Dtc(T0, DtcSource.OBD, "P0301", ecu=0x7E8),
    Dtc(T0, DtcSource.J1939, "110-16", 0, False, spn=110, fmi=16, occurrences=3, lamps=4),
    Event(T0, "harsh_braking", {"decel_mps2": -5.5, "speed_kmh": 62, "confirmed": True, "z": "x"}),
    Event(T0, "ignition_on"),
    Health(T0, {"can_frames": 123456, "nmea_rejected": 2, "outbox_evicted": 0}),
    Health(T0),
)


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_record_round_trip_equals_quantized(record: Record) -> None:
    assert decode_record(codec.encode_record(record)) == quantize(record)


def test_quantize_rounds_timestamps_to_ms_and_position_fields_to_wire_units() -> None:
    q = quantize(RECORDS[0])
    assert isinstance(q, Position)
    assert q.ts_wall_ns == 1_717_243_200_123_000_000
    assert (q.lat_deg, q.lon_deg) == (52.5200083, 13.4049541)
    assert (q.alt_msl_m, q.speed_mps, q.heading_deg, q.hdop) == (34.6, 13.42, 72.12, 0.87)
    wrapped = quantize(RECORDS[2])
    assert isinstance(wrapped, Position)
    assert wrapped.heading_deg == 0.0


def test_batch_round_trip_with_gaps_and_mixed_records() -> None:
    entries = tuple(Entry(100 + 3 * i, r) for i, r in enumerate(RECORDS))
    batch = Batch("veh-001", 2**62 + 5, entries)
    decoded = decode_batch(encode_batch(batch))
    assert decoded.rejected == ()
    expected = tuple(Entry(e.seq, quantize(e.record)) for e in entries)
    assert decoded.batch == Batch("veh-001", 2**62 + 5, expected)


def test_position_batch_is_compact() -> None:
    # Teltonika Codec 8 spends at least 45 bytes on one AVL record.
    assert codec.bytes_per_position_example() < 30


def test_extras_travel_as_aliases_and_need_the_same_table() -> None:
    table = AliasTable({"Acme.Body.DoorCount": 1024})
    batch = Batch("veh-001", 1, (Entry(0, SignalValue(T0, "Acme.Body.DoorCount", 4)),))
    payload = encode_batch(batch, table)
    assert b"Acme" not in payload
    assert decode_batch(payload, table).batch.entries[0].record == quantize(batch.entries[0].record)
    other = decode_batch(payload, AliasTable({"Acme.Body.DoorCount": 1025}))
    assert other.batch.entries == ()
    assert [r.kind for r in other.rejected] == ["UnknownSignalAlias"]
    inline = encode_batch(batch)  # catalog only: the path travels inline
    assert b"Acme.Body.DoorCount" in inline
    assert decode_batch(inline).batch.entries[0].record == quantize(batch.entries[0].record)


def _envelope(payload: bytes) -> list[object]:
    top = msgpack.unpackb(payload)
    assert isinstance(top, list)
    return top


def test_unknown_record_type_is_rejected_with_reason_and_rest_decodes() -> None:
    batch = Batch("veh-001", 7, tuple(Entry(10 + i, r) for i, r in enumerate(RECORDS[:3])))
    top = _envelope(encode_batch(batch))
    rows = top[7]
    assert isinstance(rows, list)
    rows.insert(1, [99, 1, 500, "future", {"x": 1}])  # a type from a later version
    rows[2][1] = 1  # the following entries move up one seq: 11 -> 12, 12 -> 13
    rows[2][2] -= 500  # and keep their timestamps
    top[4] = 13
    rows[3][1] = 1
    decoded = decode_batch(msgpack.packb(top))
    assert [e.seq for e in decoded.batch.entries] == [10, 12, 13]
    assert [(r.seq, r.kind) for r in decoded.rejected] == [(11, "UnknownRecordType")]
    assert "99" in decoded.rejected[0].reason
    assert decoded.batch.entries[1].record == quantize(RECORDS[1])


def test_unknown_trailing_fields_are_ignored() -> None:
    batch = Batch("veh-001", 7, (Entry(5, RECORDS[0]), Entry(6, RECORDS[3])))
    top = _envelope(encode_batch(batch))
    rows = top[7]
    assert isinstance(rows, list)
    for row in rows:
        row.append("added in v1.1")
    top.append({"future": True})
    decoded = decode_batch(msgpack.packb(top))
    assert decoded.rejected == ()
    assert [e.record for e in decoded.batch.entries] == [quantize(RECORDS[0]), quantize(RECORDS[3])]


def test_higher_major_version_is_rejected() -> None:
    top = _envelope(encode_batch(Batch("veh-001", 7, (Entry(5, RECORDS[3]),))))
    top[0] = 2
    with pytest.raises(UnsupportedVersion):
        decode_batch(msgpack.packb(top))
    with pytest.raises(UnsupportedVersion):
        decode_batch(msgpack.packb([2, {"a": "whole new layout"}]))


def test_out_of_range_value_rejects_only_that_entry() -> None:
    batch = Batch("veh-001", 7, tuple(Entry(i, r) for i, r in enumerate(RECORDS[:3])))
    top = _envelope(encode_batch(batch))
    rows = top[7]
    assert isinstance(rows, list)
    rows[0][3] += 50 * 10**7  # first latitude beyond 90 degrees
    rows[1][3] -= 50 * 10**7  # keep the second position where it was
    decoded = decode_batch(msgpack.packb(top))
    assert [(r.seq, r.kind) for r in decoded.rejected] == [(0, "InvalidValue")]
    assert [e.record for e in decoded.batch.entries] == [quantize(r) for r in RECORDS[1:3]]


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",
        b"\x92\x01",
        msgpack.packb({"v": 1}),
        msgpack.packb([1, "veh", 1, 0, 0, 0, 0, []]),
    ],
)
def test_malformed_batches_raise_malformed(payload: bytes) -> None:
    with pytest.raises(MalformedPayload):
        decode_batch(payload)


def test_encode_refuses_invalid_batches() -> None:
    with pytest.raises(InvalidDeviceId):
        encode_batch(Batch("veh/001", 1, (Entry(0, RECORDS[3]),)))
    with pytest.raises(InvalidValue):
        encode_batch(Batch("veh-001", 1, ()))
    with pytest.raises(InvalidValue):
        encode_batch(Batch("veh-001", 1, (Entry(5, RECORDS[3]), Entry(5, RECORDS[4]))))
    with pytest.raises(InvalidValue):
        encode_batch(Batch("veh-001", 2**63, (Entry(0, RECORDS[3]),)))
    with pytest.raises(InvalidValue):
        codec.encode_record(SignalValue(T0, "Vehicle.Speed", float("nan")))
    with pytest.raises(InvalidValue):
        codec.encode_record(Position(T0, 91.0, 0.0))


def test_size_limits_are_enforced_both_ways() -> None:
    many = tuple(Entry(i, RECORDS[3]) for i in range(MAX_BATCH_ENTRIES + 1))
    with pytest.raises(PayloadTooLarge):
        encode_batch(Batch("veh-001", 1, many))
    with pytest.raises(PayloadTooLarge):
        codec.encode_record(Event(T0, "x", {f"k{i}": i for i in range(100)}))
    with pytest.raises(PayloadTooLarge):
        decode_batch(b"\x00" * (MAX_PAYLOAD_BYTES + 1))
    long_vin = SignalValue(T0, "Vehicle.VehicleIdentification.VIN", "x" * 10_000)
    with pytest.raises(PayloadTooLarge):
        codec.encode_record(long_vin)


def test_prefix_encoding_splits_a_backlog_by_size() -> None:
    big = {f"k{i:02}": "x" * 200 for i in range(30)}  # about 6.3 kB per event
    entries = tuple(Entry(i, Event(T0 + i, "diag_dump", big)) for i in range(100))
    batch = Batch("veh-001", 3, entries)
    with pytest.raises(PayloadTooLarge):
        encode_batch(batch)
    sent: list[Entry] = []
    rest = entries
    while rest:
        payload, count = codec.encode_batch_prefix(Batch("veh-001", 3, rest))
        assert len(payload) <= MAX_PAYLOAD_BYTES
        decoded = decode_batch(payload).batch
        assert decoded.entries == tuple(Entry(e.seq, quantize(e.record)) for e in rest[:count])
        sent += decoded.entries
        rest = rest[count:]
    assert [e.seq for e in sent] == list(range(100))
    payload, count = codec.encode_batch_prefix(batch, max_bytes=20_000)
    assert (count, len(payload) <= 20_000) == (3, True)  # 3 x 6.3 kB fit, 4 do not
    with pytest.raises(PayloadTooLarge):
        codec.encode_batch_prefix(batch, max_bytes=1000)


# Property tests: round trips equal the quantised input; hostile bytes raise only ProtocolError.


@settings(max_examples=300)
@given(strategies.RECORDS)
def test_any_record_round_trips_to_its_quantized_form(record: Record) -> None:
    assert decode_record(codec.encode_record(record)) == quantize(record)
    assert quantize(quantize(record)) == quantize(record)


@settings(max_examples=150)
@given(strategies.batches(), st.sampled_from([None, AliasTable.for_paths(["Acme.X.Y", "Acme.Q"])]))
def test_any_batch_round_trips(batch: Batch, aliases: AliasTable | None) -> None:
    decoded = decode_batch(encode_batch(batch, aliases), aliases)
    assert decoded.rejected == ()
    assert decoded.batch.device_id == batch.device_id
    assert decoded.batch.boot_id == batch.boot_id
    assert decoded.batch.entries == tuple(Entry(e.seq, quantize(e.record)) for e in batch.entries)


@given(st.binary(max_size=400))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_batch(data)
    with contextlib.suppress(ProtocolError):
        decode_record(data)


_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=6)
)
_OBJ = st.recursive(
    _LEAF,
    lambda kids: (
        st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=4), kids, max_size=4)
    ),
    max_leaves=20,
)
_ROW = st.tuples(st.integers(-2, 9), st.integers(-2, 3), st.integers(-5, 5)).flatmap(
    lambda head: st.lists(_OBJ | st.integers(-(10**10), 10**10), max_size=10).map(
        lambda body: [*head, *body]
    )
)


@settings(max_examples=120)
@given(
    st.lists(_ROW, min_size=1, max_size=6),
    st.integers(-1, 20),
    st.sampled_from([0, 1, 2, "1"]),
    st.sampled_from(["veh-1", "", "a/b", 5]),
)
def test_envelope_shaped_garbage_raises_only_protocol_errors(
    rows: list[list[object]], last_seq: int, version: object, device: object
) -> None:
    try:
        payload = msgpack.packb([version, device, 1, 0, last_seq, 10**12, 0, rows])
    except (OverflowError, ValueError, TypeError):
        return  # not representable in msgpack: nothing a peer could send
    try:
        decoded = decode_batch(payload)
    except ProtocolError:
        return
    for entry in decoded.batch.entries:  # whatever decodes re-encodes
        codec.encode_record(entry.record)


@settings(max_examples=200)
@given(strategies.batches(max_entries=8), st.data())
def test_corrupted_batches_raise_only_protocol_errors(batch: Batch, data: st.DataObject) -> None:
    payload = bytearray(encode_batch(batch))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(payload)))
    with contextlib.suppress(ProtocolError):
        decode_batch(bytes(payload[:cut]) if data.draw(st.booleans()) else bytes(payload))


@pytest.mark.parametrize(
    ("index", "field", "value"),
    [(0, 1, 1), (1, 1, 0), (1, 1, -1), (1, 1, 2**64 - 1), (0, 2, 1.5), (0, 0, "1")],
)
def test_broken_entry_headers_reject_the_whole_batch(index: int, field: int, value: object) -> None:
    batch = Batch("veh-001", 7, (Entry(5, RECORDS[3]), Entry(6, RECORDS[4])))
    top = _envelope(encode_batch(batch))
    rows = top[7]
    assert isinstance(rows, list)
    rows[index][field] = value
    with pytest.raises(MalformedPayload):
        decode_batch(msgpack.packb(top))


def test_a_huge_record_type_is_just_unknown() -> None:
    top = _envelope(encode_batch(Batch("veh-001", 7, (Entry(5, RECORDS[3]),))))
    rows = top[7]
    assert isinstance(rows, list)
    rows[0][0] = 2**64 - 1
    decoded = decode_batch(msgpack.packb(top))
    assert [(r.seq, r.kind) for r in decoded.rejected] == [(5, "UnknownRecordType")]
