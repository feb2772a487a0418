"""J1939 tables and payload decoding, checked on payloads taken from real captures."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetlink_protocols import j1939
from fleetlink_protocols.j1939 import LampState, SpnVersion, Validity

# DM1 reassembled from the BAM at 1635188455.54 in
# ../shared/data/can/j1939/css_matlab-basics_11111111_00000012_00000001.candump.log
# (TP.DT 1CEBFF00#0143FFD403097E90, #020C140261020901, #0361020C03FFFFFF, 18 bytes announced).
REAL_DM1 = bytes.fromhex("43FFD403097E900C14026102090161020C03")
# Vehicle Identification (PGN 65260) reassembled from the BAM at 1622548006.56 in
# ../shared/data/can/j1939/css_data-processing_FCBF0606_00003482_00000001-60B621D9.candump.log
REAL_VI = bytes.fromhex(
    "314C3036313330" "52454C50393639" "3436383E2C0529" "5D07012701012A"
)  # fmt: skip


def _spn(pgn: int, number: int) -> j1939.SpnDef:
    return next(s for s in j1939.SIGNAL_SPNS[pgn] if s.spn == number)


def test_engine_speed_from_a_real_eec1_frame() -> None:
    # 0CF00400#607D84481400F084: cantools with the CSS demo DBC says 649.0 rpm.
    spn = _spn(j1939.PGN_EEC1, 190)
    raw = spn.raw(bytes.fromhex("607D84481400F084"))
    assert raw == 0x1448
    assert spn.scale(raw) == 649.0
    assert spn.path == "Vehicle.Powertrain.CombustionEngine.Speed"


@pytest.mark.parametrize(
    ("pgn", "number", "data", "expected"),
    [
        (j1939.PGN_ET1, 110, "7E57202EFFFFFFFF", 86.0),  # 126 - 40 degC
        (j1939.PGN_HOURS, 247, "20110000FFFFFFFF", 219.2),  # 4384 x 0.05 h
        (j1939.PGN_LFE, 183, "3700FFFFFFFFFFFF", 2.75),  # 55 x 0.05 l/h, no float noise
        (j1939.PGN_VD, 245, "FFFFFFFF47B00100", 13832875.0),  # 110663 x 125 m
        (j1939.PGN_CCVS, 84, "FF8012FFFFFFFFFF", 18.5),  # 0x1280 / 256 km/h
        (j1939.PGN_DD, 96, "FFBBFFFFFFFFFFFF", 74.8),  # 187 x 0.4 %
        (j1939.PGN_VDHR, 917, "40420F00FFFFFFFF", 5000000.0),  # 1,000,000 x 5 m
    ],
)
def test_signal_scaling(pgn: int, number: int, data: str, expected: float) -> None:
    spn = _spn(pgn, number)
    raw = spn.raw(bytes.fromhex(data))
    assert raw is not None
    assert spn.scale(raw) == expected


def test_short_data_has_no_raw_value() -> None:
    assert _spn(j1939.PGN_EEC1, 190).raw(bytes(4)) is None
    assert _spn(j1939.PGN_VD, 245).raw(bytes(7)) is None


@pytest.mark.parametrize(
    ("raw", "bits", "expected"),
    [
        (0xFA, 8, Validity.VALID),
        (0xFB, 8, Validity.SPECIFIC),
        (0xFC, 8, Validity.RESERVED),
        (0xFE, 8, Validity.ERROR),
        (0xFF, 8, Validity.NOT_AVAILABLE),
        (0xFAFF, 16, Validity.VALID),
        (0xFD12, 16, Validity.RESERVED),
        (0xFE00, 16, Validity.ERROR),
        (0xFFFF, 16, Validity.NOT_AVAILABLE),
        (0xFAFFFFFF, 32, Validity.VALID),
        (0xFE000001, 32, Validity.ERROR),
        (0xFF000000, 32, Validity.NOT_AVAILABLE),
        (0b01, 2, Validity.VALID),
        (0b10, 2, Validity.ERROR),
        (0b11, 2, Validity.NOT_AVAILABLE),
    ],
)
def test_signal_ranges(raw: int, bits: int, expected: Validity) -> None:
    assert j1939.validity(raw, bits) is expected


def test_no_range_rule_for_odd_widths() -> None:
    with pytest.raises(ValueError, match="12-bit"):
        j1939.validity(0, 12)


def test_real_dm1_gives_the_four_dtcs_and_lamps() -> None:
    dm1 = j1939.decode_dm1(REAL_DM1)
    assert [(d.spn, d.fmi, d.occurrences) for d in dm1.dtcs] == [
        (980, 9, 126),
        (3216, 20, 2),
        (609, 9, 1),
        (609, 12, 3),
    ]
    assert dm1.lamps.word == 0x43FF
    assert dm1.lamps.mil is LampState.ON
    assert dm1.lamps.red_stop is LampState.OFF
    assert dm1.lamps.amber_warning is LampState.OFF
    assert dm1.lamps.protect is LampState.NOT_AVAILABLE
    assert dm1.lamps.as_dict()["protect"] == "not_available"
    assert not any(d.legacy_cm for d in dm1.dtcs)
    assert dm1.dtcs[1].code == "3216-20"


def test_dm1_no_active_dtc_and_not_available_slots() -> None:
    # J1939-73: no active DTC is sent as SPN 0 / FMI 0 / OC 0, padded with 0xFF.
    quiet = j1939.decode_dm1(bytes.fromhex("000000000000FFFF"))
    assert quiet.dtcs == ()
    assert quiet.trailing_bytes == 2
    na = j1939.decode_dm1(bytes.fromhex("FFFFFFFFFFFFD403097F"))
    assert na.not_available == 1
    assert [(d.spn, d.occurrences) for d in na.dtcs] == [(980, None)]  # OC 127: unknown
    assert na.lamps.mil is LampState.NOT_AVAILABLE


def test_dm1_too_short() -> None:
    with pytest.raises(j1939.Dm1Error, match="5 bytes"):
        j1939.decode_dm1(bytes(5))


def _encode(spn: int, fmi: int, version: SpnVersion) -> bytes:
    """DTC bytes 3-5 per J1939-73's conversion methods (the inverse of dtc_spn)."""
    if version is SpnVersion.V1:
        b3, b4, low3 = (spn >> 11) & 0xFF, (spn >> 3) & 0xFF, spn & 7
    elif version is SpnVersion.V2:
        b3, b4, low3 = (spn >> 3) & 0xFF, (spn >> 11) & 0xFF, spn & 7
    else:
        b3, b4, low3 = spn & 0xFF, (spn >> 8) & 0xFF, spn >> 16
    return bytes([b3, b4, (low3 << 5) | fmi])


@pytest.mark.parametrize("version", list(SpnVersion))
@pytest.mark.parametrize("spn", [84, 980, 3216, 524287 - 1])
def test_spn_conversion_methods_round_trip(spn: int, version: SpnVersion) -> None:
    b3, b4, b5 = _encode(spn, 5, version)
    assert j1939.dtc_spn(b3, b4, b5, version) == spn


def test_legacy_conversion_method_flag_uses_the_callers_version() -> None:
    b3, b4, b5 = _encode(3216, 20, SpnVersion.V1)
    payload = bytes([0x40, 0xFF, b3, b4, b5, 0x80 | 2])  # CM bit set
    legacy = j1939.decode_dm1(payload, legacy_version=SpnVersion.V1).dtcs[0]
    assert (legacy.spn, legacy.fmi, legacy.occurrences, legacy.legacy_cm) == (3216, 20, 2, True)
    # Read as version 4 the same bytes name another SPN: the flag is what tells them apart.
    assert j1939.decode_dm1(payload).dtcs[0].spn != 3216


def test_vin_from_a_real_vehicle_identification_message() -> None:
    assert j1939.decode_vin(REAL_VI) == "1L06130RELP969468"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"1HGCM82633A004352*", "1HGCM82633A004352"),
        (b"ABC123*more*", "ABC123"),  # pre-1981 VINs are shorter
        (b"  2T1BURHE0JC043821  ", "2T1BURHE0JC043821"),
        (b"*", None),
        (b"\xff\xff\xff\xff*", None),
        (b"ABC>123*", None),  # a short run followed by junk is no VIN
        (b"1HGCM82633A0043521*", None),  # 18 characters
        (b"1hgcm82633a004352*", None),
        (b"IOQ*", None),  # letters ISO 3779 excludes
    ],
)
def test_vin_rules(payload: bytes, expected: str | None) -> None:
    assert j1939.decode_vin(payload) == expected


def test_names_for_dtc_descriptions() -> None:
    assert j1939.spn_name(980) == "Engine PTO Governor Enable Switch"
    assert j1939.spn_name(190) == "Engine Speed"
    assert j1939.spn_name(609) == "SPN 609"
    assert j1939.fmi_description(9) == "Abnormal update rate"
    assert j1939.fmi_description(25) == "FMI 25 (reserved)"


def test_every_signal_fits_a_classic_frame_and_has_a_range_rule() -> None:
    for spns in j1939.SIGNAL_SPNS.values():
        for s in spns:
            assert s.start_byte - 1 + s.length_bits // 8 <= 8
            j1939.validity(0, s.length_bits)


@given(st.binary(max_size=64))
def test_dm1_and_vin_take_any_bytes(payload: bytes) -> None:
    try:
        dm1 = j1939.decode_dm1(payload)
    except j1939.Dm1Error:
        assert len(payload) < 6
    else:
        assert len(dm1.dtcs) + dm1.not_available <= (len(payload) - 2) // 4
        assert all(0 <= d.spn < 1 << 19 and 0 <= d.fmi < 32 for d in dm1.dtcs)
    vin = j1939.decode_vin(payload)
    assert vin is None or 1 <= len(vin) <= 17
