"""NMEA 0183 decoder: splitter, checksums, sentences, cycles, dates, hostile input."""

from __future__ import annotations

import functools
import json
import operator
import random
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetlink_edge import cli
from fleetlink_edge.decode.nmea import (
    COUNTERS,
    GPSD_ROLLOVER_REFERENCE,
    Fix,
    NmeaDecoder,
    new_counters,
    tpv_lines,
)
from fleetlink_edge.decode.nmea_sentences import (
    KNOTS_TO_MPS,
    MAX_SENTENCE_LEN,
    NmeaSplitter,
    SentenceError,
    parse_sentence,
)
from fleetlink_protocols.records import FixMode, Position

NS = 1_000_000_000
DAY_NS = 86_400 * NS


def nmea(body: str) -> bytes:
    """``$body*hh\\r\\n`` with the NMEA checksum (XOR of the bytes between '$' and '*')."""
    checksum = functools.reduce(operator.xor, body.encode("ascii"), 0)
    return f"${body}*{checksum:02X}\r\n".encode("ascii")


def epoch(hhmmss: str, ddmmyy: str = "311214", talker: str = "GP", knots: str = "0.69") -> bytes:
    """One GGA + GSA + RMC cycle, as a SiRF receiver sends it."""
    return (
        nmea(f"{talker}GGA,{hhmmss},3747.0873,S,17518.8938,E,1,08,1.1,59.9,M,23.7,M,,0000")
        + nmea(f"{talker}GSA,A,3,17,28,06,01,30,20,26,13,,,,,1.8,1.1,1.5")
        + nmea(f"{talker}RMC,{hhmmss},A,3747.0873,S,17518.8938,E,{knots},181.39,{ddmmyy},,,A")
    )


def decode_all(
    data: bytes, reference: date = GPSD_ROLLOVER_REFERENCE
) -> tuple[list[Fix], NmeaDecoder]:
    decoder = NmeaDecoder(rollover_reference=reference)
    return decoder.feed(data) + decoder.flush(), decoder


@pytest.fixture(scope="module")
def bu353s4(shared_data: Path) -> bytes:
    return (shared_data / "gpsd" / "bu353s4.log").read_bytes()


# --- splitter -------------------------------------------------------------------------------


def test_lf_and_crlf_give_the_same_sentences() -> None:
    counters = new_counters()
    crlf = NmeaSplitter(counters).feed(b"$GPGSV,1,1,00*79\r\n$GPTXT,hello*00\r\n")
    lf = NmeaSplitter(counters).feed(b"$GPGSV,1,1,00*79\n$GPTXT,hello*00\n")
    assert crlf == lf == [b"$GPGSV,1,1,00*79", b"$GPTXT,hello*00"]


def test_partial_sentence_is_kept_between_feeds() -> None:
    splitter = NmeaSplitter(new_counters())
    assert splitter.feed(b"$GPGSV,1,") == []
    assert splitter.feed(b"1,00*79\r") == []
    assert splitter.feed(b"\n$GP") == [b"$GPGSV,1,1,00*79"]
    assert splitter.flush() == [b"$GP"]  # the end of input ends the last sentence


def test_a_cut_off_sentence_is_dropped_and_decoding_resumes_at_the_inner_dollar() -> None:
    # triton400.log: the receiver cut a GGA short and started a GLL on the same line.
    counters = new_counters()
    line = b"$GPGGA,030130$GPGLL,2638.1728,N,08011.3893,W,030131.000,A,A*41\n$GPGSV,1,1,00*79\n"
    out = NmeaSplitter(counters).feed(line)
    assert out == [b"$GPGLL,2638.1728,N,08011.3893,W,030131.000,A,A*41", b"$GPGSV,1,1,00*79"]
    assert counters["rejected_truncated"] == 1


def test_a_sentence_injected_into_another_is_undone() -> None:
    # isync.log: the oscillator's PTNTA lands in the middle of the receiver's GSV.
    counters = new_counters()
    data = (
        b"$GPGSV,4,1,15,02,11,115,36,0$PTNTA,20160203131539,2,T4,000000066,+107,3,0,3*18\n"
        b"5,34,060,48,07,00,023,,13,56,090,49*71\n"
    )
    out = NmeaSplitter(counters).feed(data)
    assert out == [
        b"$PTNTA,20160203131539,2,T4,000000066,+107,3,0,3*18",
        b"$GPGSV,4,1,15,02,11,115,36,05,34,060,48,07,00,023,,13,56,090,49*71",
    ]
    assert parse_sentence(out[1])[1] is True  # the joined halves pass the checksum
    assert counters["rejected_truncated"] == counters["garbage_bytes"] == 0


def test_a_join_without_checksum_is_refused() -> None:
    counters = new_counters()
    out = NmeaSplitter(counters).feed(b"$GPGGA,0301$GPTXT,x*00\nnoise\n")
    assert out == [b"$GPTXT,x*00"]
    assert counters["rejected_truncated"] == 1


def test_over_long_lines_are_dropped_and_memory_stays_bounded() -> None:
    counters = new_counters()
    splitter = NmeaSplitter(counters)
    out = splitter.feed(b"$GPGGA," + b"1" * 100_000)
    out += splitter.feed(b"2" * 1000 + b"*00\r\n$GPGSV,1,1,00*79\r\n")
    assert out == [b"$GPGSV,1,1,00*79"]
    assert counters["rejected_too_long"] == 1
    assert counters["garbage_bytes"] == 0  # the tail of the dropped line is not garbage
    assert splitter.buffered <= MAX_SENTENCE_LEN


def test_bytes_outside_sentences_are_counted_as_garbage() -> None:
    counters = new_counters()
    out = NmeaSplitter(counters).feed(b"\x00\xff junk \r\n  $GPGSV,1,1,00*79\r\n\r\n")
    assert out == [b"$GPGSV,1,1,00*79"]
    assert counters["garbage_bytes"] == 6  # blanks and line ends are not garbage


# --- sentence framing -------------------------------------------------------------------------


def test_parse_checks_the_checksum() -> None:
    assert parse_sentence(b"$GPGSV,1,1,00*79") == (["GPGSV", "1", "1", "00"], True)
    assert parse_sentence(b"$GPRMC,,V,,,,,,,,,,N*53")[1] is True
    assert parse_sentence(b"$GPRMC,,V,,,,,,,,,,N*53".replace(b"*53", b"*53 "))[1] is True
    with pytest.raises(SentenceError) as bad:
        parse_sentence(b"$GPGSV,1,1,00*78")
    assert bad.value.reason == "bad_checksum"


@pytest.mark.parametrize(
    "raw",
    [b"$GPGSV,1,1,00*7", b"$GPGSV,1,1,00*ZZ", b"$GPG\x01SV,1*00", b"$,1,2", b"$", b"$gpgga,1"],
)
def test_parse_refuses_malformed_framing(raw: bytes) -> None:
    with pytest.raises(SentenceError) as exc:
        parse_sentence(raw)
    assert exc.value.reason == "malformed"


def test_sentence_without_checksum_is_framed_but_not_decoded() -> None:
    fields, had_checksum = parse_sentence(b"$GPTXT,01,01,02,banner")
    assert fields[0] == "GPTXT"
    assert not had_checksum
    data = b"$GPRMC,030719.000,A,3747.0873,S,17518.8938,E,0.69,181.39,311214,,,A\r\n"
    fixes, decoder = decode_all(data)
    assert fixes == []
    assert decoder.counters["rejected_no_checksum"] == 1


# --- decoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("talker", ["GP", "GN", "GL", "GA", "GB", "BD", "QZ", "IN", "GI"])
def test_every_talker_is_decoded(talker: str) -> None:
    fixes, _ = decode_all(epoch("030719.000", talker=talker))
    assert len(fixes) == 1
    assert fixes[0].mode == FixMode.FIX_3D
    assert fixes[0].lat_deg == pytest.approx(-(37 + 47.0873 / 60))
    assert fixes[0].lon_deg == pytest.approx(175 + 18.8938 / 60)


def test_fix_fields_and_units() -> None:
    fixes, _ = decode_all(epoch("030719.250", knots="10.0"))
    fix = fixes[0]
    assert fix.speed_mps == pytest.approx(10.0 * 0.514444, abs=1e-5)  # RMC reports knots
    assert pytest.approx(1852 / 3600) == KNOTS_TO_MPS
    assert fix.track_deg == 181.39
    assert fix.alt_msl_m == 59.9
    assert fix.hdop == 1.1
    assert fix.sats_used == 8
    assert fix.time_of_day_ns == (3 * 3600 + 7 * 60 + 19) * NS + 250_000_000
    assert fix.to_tpv()["time"] == "2034-08-16T03:07:19.250Z"


def test_the_fix_is_reported_on_the_closing_sentence_once_learned() -> None:
    decoder = NmeaDecoder()
    assert decoder.feed(epoch("030719.000")) == []  # nothing learned yet
    gga, gsa, rmc = epoch("030720.000").splitlines(keepends=True)
    first = decoder.feed(gga)  # the next cycle starts: the first one is reported
    assert [f.time_of_day_ns for f in first] == [(3 * 3600 + 7 * 60 + 19) * NS]
    assert decoder.feed(gsa) == []
    second = decoder.feed(rmc)  # RMC closed the last cycle: it closes this one
    assert [f.time_of_day_ns for f in second] == [(3 * 3600 + 7 * 60 + 20) * NS]
    assert decoder.flush() == []


def test_a_cycle_whose_closing_sentence_is_lost_is_reported_with_the_next() -> None:
    decoder = NmeaDecoder()
    decoder.feed(epoch("030719.000") + epoch("030720.000"))
    lossy = epoch("030721.000").replace(b"$GPRMC", b"$GPRMX")  # the RMC is lost to noise
    assert decoder.feed(lossy) == []
    late = decoder.feed(epoch("030722.000"))
    assert [f.to_tpv()["time"][11:19] for f in late] == ["03:07:21", "03:07:22"]
    assert late[0].speed_mps is None  # only the GGA and GSA of that cycle arrived


def test_chunking_does_not_change_the_result(bu353s4: bytes) -> None:
    whole, whole_decoder = decode_all(bu353s4)
    rng = random.Random(7)
    decoder = NmeaDecoder()
    pieces: list[Fix] = []
    i = 0
    while i < len(bu353s4):
        n = rng.randint(1, 97)
        pieces += decoder.feed(bu353s4[i : i + n])
        i += n
    pieces += decoder.flush()
    assert pieces == whole
    assert decoder.counters == whole_decoder.counters


@pytest.mark.parametrize(
    ("ddmmyy", "reference", "expected"),
    [
        ("311214", date(2017, 1, 1), "2034-08-16"),  # gpsd's rollover correction
        ("311214", date(2010, 1, 1), "2014-12-31"),  # the same date after the reference
        ("220899", date(2017, 1, 1), "2019-04-07"),  # '99' after the April 2019 rollover
        ("010180", date(1970, 1, 1), "1980-01-01"),  # 80-99 are the 1900s
        ("010179", date(2017, 1, 1), "2079-01-01"),  # 00-79 are the 2000s
    ],
)
def test_rmc_dates_and_the_week_rollover(ddmmyy: str, reference: date, expected: str) -> None:
    fixes, _ = decode_all(epoch("120000.00", ddmmyy=ddmmyy), reference)
    assert fixes[0].to_tpv()["time"] == f"{expected}T12:00:00.000Z"


def test_zda_dates_a_receiver_that_sends_no_rmc() -> None:
    data = (
        nmea("GPZDA,235959.00,07,09,2018,00,00")
        + nmea("GPGGA,235959.00,4221.8236,N,07101.9417,W,1,08,1.4,7.6,M,-33.0,M,,")
        + nmea("GPGGA,000000.00,4221.8236,N,07101.9417,W,1,08,1.4,7.6,M,-33.0,M,,")
        + nmea("GPGGA,000001.00,4221.8236,N,07101.9417,W,1,08,1.4,7.6,M,-33.0,M,,")
    )
    fixes, _ = decode_all(data)
    times = [f.to_tpv()["time"] for f in fixes]
    # 2018 is after the reference: no shift; GGA alone carries the time over midnight.
    assert times == [
        "2018-09-07T23:59:59.000Z",
        "2018-09-08T00:00:00.000Z",
        "2018-09-08T00:00:01.000Z",
    ]


def test_no_time_until_a_date_is_known() -> None:
    gga = nmea("GPGGA,030719.000,3747.0873,S,17518.8938,E,1,08,1.1,59.9,M,23.7,M,,0000")
    fixes, _ = decode_all(gga)
    assert fixes[0].time_ns is None
    assert fixes[0].time_of_day_ns is not None
    assert fixes[0].to_position() is None  # a record needs its time
    assert "time" not in fixes[0].to_tpv()


def test_invalid_data_gives_no_fix_and_no_position() -> None:
    data = nmea("GPRMC,030719.000,V,3747.0873,S,17518.8938,E,0.0,0.0,311214,,,N")
    data += nmea("GPGGA,030720.000,,,,,0,00,99.9,,M,,M,,")
    fixes, _ = decode_all(data)
    assert [f.mode for f in fixes] == [FixMode.NO_FIX, FixMode.NO_FIX]
    assert all(f.to_position() is None and f.time_ns is None for f in fixes)
    assert fixes[0].to_tpv() == {"class": "TPV", "mode": 1}


def test_to_position() -> None:
    fixes, _ = decode_all(epoch("030719.000"))
    position = fixes[0].to_position()
    assert isinstance(position, Position)
    assert position.ts_wall_ns == 2039310439 * NS  # 2034-08-16T03:07:19Z
    assert (position.lat_deg, position.lon_deg) == (fixes[0].lat_deg, fixes[0].lon_deg)
    assert position.mode == FixMode.FIX_3D
    assert position.alt_msl_m == 59.9
    assert position.speed_mps == pytest.approx(0.69 * KNOTS_TO_MPS)
    assert position.heading_deg == 181.39
    assert (position.hdop, position.sats_used) == (1.1, 8)


def test_gsv_satellites_in_view_add_up_across_constellations() -> None:
    data = (
        nmea("GPGSV,1,1,02,01,40,083,46,02,17,308,41")
        + nmea("GLGSV,1,1,01,65,40,083,46")
        + epoch("030719.000")
    )
    fixes, _ = decode_all(data)
    assert fixes[0].sats_seen == 3


def test_gsa_constellations_add_up_to_satellites_used() -> None:
    # u-blox NMEA 4.10: one GNGSA per constellation, the last field names it (1 GPS, 2 GLONASS).
    data = (
        nmea("GNGGA,030719.00,3747.0873,S,17518.8938,E,1,11,1.1,59.9,M,23.7,M,,")
        + nmea("GNGSA,A,3,17,28,06,01,30,20,26,13,,,,,1.8,1.1,1.5,1")
        + nmea("GNGSA,A,3,75,86,17,,,,,,,,,,1.8,1.1,1.5,2")
    )
    fixes, _ = decode_all(data)
    assert fixes[0].sats_used == 11  # GPS 17 and GLONASS 17 are two satellites


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("GPRMC,030719.000,A,nan,S,17518.8938,E,0.69,181.39,311214,,,A", "malformed"),
        ("GPRMC,030719.000,A,3747.0873,S,17518.8938,E,1e5,181.39,311214,,,A", "malformed"),
        ("GPRMC,030719.000,A,9147.0873,N,17518.8938,E,0.69,181.39,311214,,,A", "malformed"),
        ("GPRMC,030719.000,A,3767.0000,N,17518.8938,E,0.69,181.39,311214,,,A", "malformed"),
        ("GPRMC,030719.000,A,3747.0873,X,17518.8938,E,0.69,181.39,311214,,,A", "malformed"),
        ("GPGGA,030719", "malformed"),
        ("GPGSA,A,1,,,,", "malformed"),
        ("GPZDA,030719.00,31,02,2019,00,00", "malformed"),
        ("GPTXT,01,01,02,hello", "unknown_sentence"),
        ("PGRME,15.0,M,45.0,M,25.0,M", "unknown_sentence"),
    ],
)
def test_hostile_fields_are_counted_rejections(body: str, reason: str) -> None:
    fixes, decoder = decode_all(nmea(body))
    assert fixes == []
    assert decoder.counters[f"rejected_{reason}"] == 1
    assert decoder.counters["sentences"] == 1


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(st.binary(max_size=300), st.sampled_from(epoch("030719.000").split(b","))),
        max_size=30,
    )
)
def test_arbitrary_bytes_never_raise(chunks: list[bytes]) -> None:
    decoder = NmeaDecoder()
    for chunk in chunks:
        for fix in decoder.feed(chunk):
            fix.to_tpv()
            fix.to_position()
    decoder.flush()
    assert set(decoder.counters) == set(COUNTERS)
    assert decoder.buffered <= MAX_SENTENCE_LEN


def test_reset_forgets_the_partial_sentence_and_the_open_cycle() -> None:
    decoder = NmeaDecoder()
    decoder.feed(epoch("030719.000") + b"$GPGGA,0307")
    decoder.reset()
    fixes = decoder.feed(b"20.000,garbage\r\n" + epoch("030721.000")) + decoder.flush()
    assert [f.to_tpv()["time"][11:19] for f in fixes] == ["03:07:21"]
    assert decoder.counters["garbage_bytes"] > 0


# --- tpv_lines and the CLI ----------------------------------------------------------------


def test_tpv_lines_skips_comments_and_renders_gpsd_fields(bu353s4: bytes) -> None:
    tpvs = list(tpv_lines(bu353s4))
    assert len(tpvs) == 25
    assert tpvs[0] == {
        "class": "TPV",
        "mode": 3,
        "time": "2034-08-16T03:07:19.000Z",
        "lat": -37.784788333,
        "lon": 175.314896667,
        "altMSL": 59.9,
        "track": 181.39,
        "speed": 0.355,
    }


def test_cli_decode_nmea_prints_one_json_object_per_fix(
    shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = shared_data / "gpsd" / "bu353s4.log"
    assert cli.main(["decode", "nmea", str(log)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == list(tpv_lines(log.read_bytes()))
