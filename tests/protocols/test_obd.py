"""SAE J1979 tables: hand-made vectors from the standard's formulas, round trips, rejections."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetlink_protocols.catalog import BY_PATH
from fleetlink_protocols.obd import (
    GENERIC_DTC_DESCRIPTIONS,
    PIDS,
    MonitorStatus,
    NegativeResponse,
    ObdDecodeError,
    PositiveResponse,
    decode_dtc,
    decode_monitor_status,
    decode_pid,
    decode_stored_dtcs,
    decode_supported_pids,
    decode_vin,
    describe_dtc,
    encode_dtc,
    encode_monitor_status,
    encode_negative_response,
    encode_positive_response,
    encode_stored_dtcs,
    encode_supported_pids,
    encode_vin,
    parse_response,
    split_current_data,
)


@pytest.mark.parametrize(
    ("hex_data", "path", "value"),
    [
        ("0C 1AF8", "Vehicle.OBD.EngineSpeed", 1726.0),  # (256*26 + 248) / 4
        ("0C 0000", "Vehicle.OBD.EngineSpeed", 0.0),
        ("0C FFFF", "Vehicle.OBD.EngineSpeed", 16383.75),
        ("0D 32", "Vehicle.OBD.Speed", 50.0),
        ("0D FF", "Vehicle.OBD.Speed", 255.0),
        ("05 7B", "Vehicle.OBD.CoolantTemperature", 83.0),  # 123 - 40
        ("05 00", "Vehicle.OBD.CoolantTemperature", -40.0),
        ("04 FF", "Vehicle.OBD.EngineLoad", 100.0),
        ("04 33", "Vehicle.OBD.EngineLoad", 20.0),  # 51 * 100 / 255
        ("11 80", "Vehicle.OBD.ThrottlePosition", 128 * 100 / 255),
        ("1F 012C", "Vehicle.OBD.RunTime", 300.0),
        ("21 000A", "Vehicle.OBD.DistanceWithMIL", 10.0),
        ("2F 80", "Vehicle.OBD.FuelLevel", 128 * 100 / 255),
        ("5E 01F4", "Vehicle.OBD.FuelRate", 25.0),  # 500 / 20
        ("A6 0001E240", "Vehicle.TraveledDistance", 12345600.0),  # 123456 x 0.1 km, in m
    ],
)
def test_mode01_vectors(hex_data: str, path: str, value: float) -> None:
    data = bytes.fromhex(hex_data)
    assert decode_pid(data[0], data[1:]) == (path, pytest.approx(value))


def test_pid_table_uses_catalog_paths() -> None:
    assert {spec.path for spec in PIDS.values()} == {
        "Vehicle.OBD.EngineLoad",
        "Vehicle.OBD.CoolantTemperature",
        "Vehicle.OBD.EngineSpeed",
        "Vehicle.OBD.Speed",
        "Vehicle.OBD.ThrottlePosition",
        "Vehicle.OBD.RunTime",
        "Vehicle.OBD.DistanceWithMIL",
        "Vehicle.OBD.FuelLevel",
        "Vehicle.OBD.FuelRate",
        "Vehicle.TraveledDistance",
    }
    assert all(spec.path in BY_PATH for spec in PIDS.values())
    assert PIDS[0x0C].unit == "rpm"
    assert PIDS[0x0D].unit == "km/h"


@pytest.mark.parametrize("pid", sorted(PIDS))
def test_encoder_inverts_decoder_for_every_raw_value(pid: int) -> None:
    spec = PIDS[pid]

    @given(st.binary(min_size=spec.length, max_size=spec.length))
    def round_trip(raw: bytes) -> None:
        assert spec.encode(spec.decode(raw)) == raw

    round_trip()


def test_encoder_clamps_out_of_range_values() -> None:
    assert PIDS[0x0D].encode(300.0) == b"\xff"
    assert PIDS[0x05].encode(-60.0) == b"\x00"
    assert PIDS[0x0C].encode(1726.0) == bytes.fromhex("1AF8")


def test_wrong_length_is_rejected() -> None:
    with pytest.raises(ObdDecodeError):
        decode_pid(0x0C, b"\x1a")
    with pytest.raises(ObdDecodeError):
        decode_pid(0x99, b"\x00")


def test_monitor_status() -> None:
    status = decode_monitor_status(bytes.fromhex("83076504"))
    assert status == MonitorStatus(mil_on=True, dtc_count=3, readiness=bytes.fromhex("076504"))
    assert encode_monitor_status(status) == bytes.fromhex("83076504")
    with pytest.raises(ObdDecodeError):
        decode_pid(0x01, bytes(4))  # a status, not a catalog signal


def test_supported_pid_bitmap() -> None:
    # The widely quoted J1979 example: 41 00 BE 1F A8 13.
    supported = decode_supported_pids(0x00, bytes.fromhex("BE1FA813"))
    assert sorted(supported) == [
        0x01, 0x03, 0x04, 0x05, 0x06, 0x07, 0x0C, 0x0D, 0x0E, 0x0F, 0x10, 0x11, 0x13, 0x15,
        0x1C, 0x1F, 0x20,
    ]  # fmt: skip
    assert encode_supported_pids(0x00, supported) == bytes.fromhex("BE1FA813")
    assert decode_supported_pids(0xA0, bytes.fromhex("04000000")) == {0xA6}
    with pytest.raises(ObdDecodeError):
        decode_supported_pids(0x10, bytes(4))


@given(st.sets(st.integers(1, 0xFF)), st.sampled_from(range(0, 0x100, 0x20)))
def test_bitmap_round_trip(pids: set[int], base: int) -> None:
    window = {p for p in pids if base < p <= base + 0x20}
    assert decode_supported_pids(base, encode_supported_pids(base, pids)) == window


def test_multi_pid_response_is_split() -> None:
    data = bytes.fromhex("0C1AF8 0D32 057B")
    assert split_current_data(data) == [
        (0x0C, bytes.fromhex("1AF8")),
        (0x0D, b"\x32"),
        (0x05, b"\x7b"),
    ]
    with pytest.raises(ObdDecodeError):
        split_current_data(bytes.fromhex("0C1A"))  # truncated
    with pytest.raises(ObdDecodeError):
        split_current_data(bytes.fromhex("0A12"))  # a PID whose length the table does not know


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("0143", "P0143"),
        ("0301", "P0301"),
        ("0420", "P0420"),
        ("1234", "P1234"),
        ("4196", "C0196"),
        ("8148", "B0148"),
        ("C100", "U0100"),
        ("F0FF", "U30FF"),
    ],
)
def test_dtc_vectors(raw: str, code: str) -> None:
    assert decode_dtc(bytes.fromhex(raw)) == code
    assert encode_dtc(code) == bytes.fromhex(raw)


@given(st.binary(min_size=2, max_size=2))
def test_dtc_round_trip(raw: bytes) -> None:
    assert encode_dtc(decode_dtc(raw)) == raw


@pytest.mark.parametrize("bad", ["P4000", "X0301", "P030", "p0301", "P03011"])
def test_bad_dtc_text_is_rejected(bad: str) -> None:
    with pytest.raises(ObdDecodeError):
        encode_dtc(bad)


def test_stored_dtcs() -> None:
    assert decode_stored_dtcs(bytes.fromhex("03 0143 0196 0234")) == ["P0143", "P0196", "P0234"]
    assert decode_stored_dtcs(b"\x00") == []
    assert encode_stored_dtcs(["P0301", "U0100"]) == bytes.fromhex("02 0301 C100")
    for bad in ("", "02 0143", "01 0143 00"):
        with pytest.raises(ObdDecodeError):
            decode_stored_dtcs(bytes.fromhex(bad))


def test_vin() -> None:
    data = bytes.fromhex("0201") + b"1G1JC5444R7252367"
    assert decode_vin(data) == "1G1JC5444R7252367"
    assert encode_vin("1G1JC5444R7252367") == data
    assert decode_vin(bytes.fromhex("0201 000000") + b"1G1JC5444R7252367") == "1G1JC5444R7252367"
    for bad in (b"\x02\x011G1JC5444R725236", b"\x02\x011g1jc5444r7252367", b"\x04\x01" + b"1" * 17):
        with pytest.raises(ObdDecodeError):
            decode_vin(bad)


def test_responses() -> None:
    assert parse_response(bytes.fromhex("410C1AF8")) == PositiveResponse(0x01, b"\x0c\x1a\xf8")
    negative = parse_response(bytes.fromhex("7F0112"))
    assert negative == NegativeResponse(0x01, 0x12)
    assert isinstance(negative, NegativeResponse)
    assert negative.name == "subFunctionNotSupported-invalidFormat"
    assert NegativeResponse(0x22, 0x99).name == "NRC 0x99"
    assert encode_negative_response(0x09, 0x11) == bytes.fromhex("7F0911")
    assert encode_positive_response(0x03, b"\x00") == bytes.fromhex("4300")
    for bad in ("", "7F01", "0100"):
        with pytest.raises(ObdDecodeError):
            parse_response(bytes.fromhex(bad))


def test_dtc_descriptions() -> None:
    assert describe_dtc("P0301") == "Cylinder 1 Misfire Detected"
    assert describe_dtc("p0420") == "Catalyst System Efficiency Below Threshold (Bank 1)"
    assert describe_dtc("P1234") is None  # manufacturer-specific: no generic meaning
    assert all(encode_dtc(code) and code[1] == "0" for code in GENERIC_DTC_DESCRIPTIONS)
