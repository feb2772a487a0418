"""gpsd JSON decoder, fed with gpsd's own output from ../shared/data/gpsd/*.chk."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetlink_edge.decode.gpsd_json import (
    COUNTERS,
    MAX_LINE_BYTES,
    WATCH_COMMAND,
    GpsdJsonDecoder,
    parse_time_ns,
)
from fleetlink_edge.decode.nmea import NmeaDecoder
from fleetlink_protocols.records import FixMode, Position


def json_lines(chk: Path) -> bytes:
    """gpsd's JSON reports from a .chk (the echoed NMEA lines removed)."""
    lines = chk.read_text("latin-1").splitlines(keepends=True)
    return "".join(line for line in lines if line.startswith("{")).encode()


@pytest.fixture(scope="module")
def bu353s4_json(shared_data: Path) -> bytes:
    return json_lines(shared_data / "gpsd" / "bu353s4.log.chk")


def test_watch_command_is_gpsd_json_watch() -> None:
    assert json.loads(WATCH_COMMAND.removeprefix(b"?WATCH=").rstrip(b"\n")) == {
        "enable": True,
        "json": True,
    }


def test_parse_time() -> None:
    assert parse_time_ns("2034-08-16T03:07:19.000Z") == 2039310439 * 10**9
    assert parse_time_ns("2019-04-07T00:02:31.420Z") % 10**9 == 420_000_000
    for bad in ("2034-08-16T03:07:19.000", "yesterday", 12):
        with pytest.raises(ValueError, match=r"."):
            parse_time_ns(bad)


def test_tpv_and_sky_from_a_real_gpsd(bu353s4_json: bytes) -> None:
    decoder = GpsdJsonDecoder()
    positions = decoder.feed(bu353s4_json)
    assert decoder.counters["tpv"] == 27
    assert decoder.counters["no_fix"] == 2  # the two TPVs before RMC gave the date
    assert decoder.counters["fixes"] == len(positions) == 25
    assert decoder.counters["sky"] == 5
    first = positions[0]
    assert first.ts_wall_ns == 2039310439 * 10**9
    assert (first.lat_deg, first.lon_deg) == (-37.784788333, 175.314896667)
    assert (first.mode, first.alt_msl_m, first.speed_mps) == (FixMode.FIX_3D, 59.9, 0.355)
    assert first.heading_deg == 181.39
    assert (first.hdop, first.sats_used) == (None, None)  # no SKY yet
    assert (positions[2].hdop, positions[2].sats_used) == (1.1, 8)  # after the first SKY


def test_gpsd_and_our_nmea_decoder_agree(shared_data: Path) -> None:
    """Every dated gpsd fix has one of ours at the same time and place (same log, same rules)."""
    for name in ("bu353s4", "mt3339", "ublox-zed-f9p-nmea", "haicom-305N"):
        ours = {}
        decoder = NmeaDecoder()
        log = (shared_data / "gpsd" / f"{name}.log").read_bytes()
        for fix in decoder.feed(log) + decoder.flush():
            if (position := fix.to_position()) is not None:
                ours[position.ts_wall_ns] = position
        theirs = GpsdJsonDecoder().feed(json_lines(shared_data / "gpsd" / f"{name}.log.chk"))
        assert theirs, name
        for p in theirs:
            mine = ours[p.ts_wall_ns]
            assert mine.lat_deg == pytest.approx(p.lat_deg, abs=1e-7)
            assert mine.lon_deg == pytest.approx(p.lon_deg, abs=1e-7)


def test_chunking_does_not_change_the_result(bu353s4_json: bytes) -> None:
    whole = GpsdJsonDecoder().feed(bu353s4_json)
    rng = random.Random(3)
    decoder = GpsdJsonDecoder()
    pieces: list[Position] = []
    i = 0
    while i < len(bu353s4_json):
        n = rng.randint(1, 300)
        pieces += decoder.feed(bu353s4_json[i : i + n])
        i += n
    assert pieces == whole


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"[1, 2]",
        b'{"class":"TPV","mode":3,"time":"2034-08-16T03:07:19.000Z","lat":NaN,"lon":1}',
        b'{"class":"TPV","mode":3,"time":"2034-08-16T03:07:19.000Z","lat":91,"lon":1}',
        b'{"class":"TPV","mode":3,"time":"2034-08-16T03:07:19.000Z","lat":"1","lon":1}',
        b'{"class":"TPV","mode":true,"time":"2034-08-16T03:07:19.000Z","lat":1,"lon":1}',
        b'{"class":"TPV","mode":3,"time":"16 Aug 2034","lat":1,"lon":1}',
        b'{"class":"SKY","hdop":-1}',
        b'{"class":"SKY","uSat":"eight"}',
    ],
)
def test_hostile_lines_are_counted(line: bytes) -> None:
    decoder = GpsdJsonDecoder()
    assert decoder.feed(line + b"\n") == []
    assert decoder.counters["rejected_malformed"] == 1


def test_other_classes_and_no_fix_are_counted_not_reported() -> None:
    decoder = GpsdJsonDecoder()
    data = (
        b'{"class":"VERSION","release":"3.22"}\n'
        b'{"class":"TPV","mode":1}\n'
        b'{"class":"TPV","mode":2,"lat":1.0,"lon":2.0}\n'  # no time yet
        b"\n"
    )
    assert decoder.feed(data) == []
    assert decoder.counters["ignored"] == 1
    assert decoder.counters["no_fix"] == 2


def test_over_long_lines_are_dropped_and_memory_stays_bounded() -> None:
    decoder = GpsdJsonDecoder(max_line=1000)
    tpv = b'{"class":"TPV","mode":2,"time":"2034-08-16T03:07:19.000Z","lat":1.0,"lon":2.0}\n'
    assert decoder.feed(b'{"class":"SKY","satellites":[' + b"0," * 10_000) == []
    assert decoder.feed(b"0" * 5000) == []
    assert len(decoder.feed(b"]}\n" + tpv)) == 1
    assert decoder.counters["rejected_too_long"] == 1
    assert decoder.buffered == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_arbitrary_bytes_never_raise(chunks: list[bytes]) -> None:
    decoder = GpsdJsonDecoder(max_line=MAX_LINE_BYTES)
    for chunk in chunks:
        decoder.feed(chunk)
    assert set(decoder.counters) == set(COUNTERS)
