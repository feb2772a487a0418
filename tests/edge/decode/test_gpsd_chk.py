"""Our NMEA decoder against gpsd's own output (``.chk``) for every log in ../shared/data/gpsd.

How a log is compared (the rules of ../shared/data/gpsd/README.md, made exact):

- Decoding: the log minus its '#' comment lines goes through ``NmeaDecoder`` with gpsd's
  rollover reference (2017-01-01), so rolled-over dates come out as gpsd prints them; each fix is
  rendered with ``Fix.to_tpv`` exactly as ``tpv_lines`` (the CLI) does, which is asserted too.
- Alignment: gpsd may print several TPVs per cycle; the LAST TPV of each UTC second is the one
  compared, with our last fix of that second. A gpsd TPV without ``time`` (no date known yet) is
  keyed by the time of day of the latest echoed sentence that carries one, and compared with our
  fix of that time of day; if no echoed sentence carried a time it is counted "not comparable".
  Untimed TPVs superseded by a timed TPV of the same second are not compared twice.
- Fields: time (<= 1 ms), lat, lon (<= 1e-7 deg), altMSL (<= 1 mm), speed (<= 1 mm/s), track
  (<= 1e-4 deg), mode (exact). A field gpsd prints must be in our fix and agree. Exceptions:
  ``speed`` is not compared when gpsd derived it from successive positions, i.e. when no
  sentence of that cycle (from the first echoed sentence carrying the TPV's time up to the TPV)
  reports a speed (RMC with status A, VTG); and when the modes differ, position fields that only
  one side prints (gpsd prints lat/lon/altMSL/speed/track only with mode >= 2) follow the mode.
- Mode differences are failures in steady stretches, but only reported when gpsd's mode for that
  second differs from its mode in the previous or next compared second (a fix gained or lost
  mid-cycle, where gpsd's own rules changed between releases).
- Fields we print that gpsd does not ("extra") are reported, not failed.
- A second gpsd reported that we did not is a failure ("missing").

"compared" counts gpsd's seconds (plus comparable untimed groups); "agree" those equal in every
field, mode included; the gate is (compared - failed) / compared >= 99 % over all logs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fleetlink_edge.decode.nmea import GPSD_ROLLOVER_REFERENCE, Fix, NmeaDecoder, tpv_lines

TOLERANCE = {"lat": 1e-7, "lon": 1e-7, "altMSL": 1e-3, "speed": 1e-3, "track": 1e-4}
POSITION_FIELDS = ("lat", "lon", "altMSL", "speed", "track")
# Where each sentence type carries its UTC time of day (hhmmss.ss), for keying untimed TPVs.
TIME_FIELD = {"GGA": 1, "GNS": 1, "RMC": 1, "ZDA": 1, "GLL": 5, "GBS": 1, "GST": 1}
GATE = 0.99


def gpsd_logs(data: Path) -> list[Path]:
    return sorted(p for p in (data / "gpsd").glob("*.log") if p.with_suffix(".log.chk").is_file())


def strip_comments(log: bytes) -> bytes:
    return b"".join(line for line in log.splitlines(keepends=True) if not line.startswith(b"#"))


def sentence_tod(sentence: str) -> str | None:
    """``HH:MM:SS.mmm`` of an echoed sentence's time field, or None."""
    fields = sentence.split("*")[0].split(",")
    index = TIME_FIELD.get(fields[0][3:6])
    text = fields[index] if index is not None and index < len(fields) else ""
    if len(text) < 6 or not text[:6].isdigit():
        return None
    frac = text[7:10].ljust(3, "0") if len(text) > 7 else "000"
    return f"{text[0:2]}:{text[2:4]}:{text[4:6]}.{frac}"


def has_speed_source(sentence: str) -> bool:
    fields = sentence.split("*")[0].split(",")
    kind = fields[0][3:6]
    if kind == "RMC":
        return len(fields) > 7 and fields[2] in ("A", "D") and fields[7] != ""
    if kind == "VTG":
        return len(fields) > 7 and (fields[5] != "" or fields[7] != "")
    return False


@dataclass
class Report:
    """gpsd's TPV as last printed for one second, and the sentences of its cycle."""

    tpv: dict[str, Any]
    tod: str | None  # HH:MM:SS.mmm this TPV belongs to
    cycle: list[str]
    order: int


def gpsd_reports(chk: str) -> tuple[dict[object, Report], int, int]:
    """Last gpsd TPV per key, the number of untimed TPVs without any time, and '$' lines."""
    reports: dict[object, Report] = {}
    since_last: list[str] = []
    latest_tod: str | None = None
    orphans = sentences = 0
    for order, line in enumerate(chk.splitlines()):
        if line.startswith("$"):
            sentences += 1
            since_last.append(line)
            latest_tod = sentence_tod(line) or latest_tod
            continue
        if not line.startswith("{"):
            continue
        tpv = json.loads(line)
        if tpv.get("class") != "TPV":
            continue
        tod = tpv["time"][11:23] if "time" in tpv else latest_tod
        cycle = since_last
        if "time" in tpv:
            starts = [i for i, s in enumerate(since_last) if sentence_tod(s) == tod]
            cycle = since_last[starts[0] :] if starts else []
        since_last = []
        if tod is None:
            orphans += 1
            continue
        key: object = tpv["time"] if "time" in tpv else ("tod", tod[:8])
        reports.pop(key, None)  # re-insert: dict order is the order of the last report
        reports[key] = Report(tpv, tod, cycle, order)
    timed_tods = {r.tod[:8] for k, r in reports.items() if not isinstance(k, tuple) and r.tod}
    for key in [k for k in reports if isinstance(k, tuple) and k[1] in timed_tods]:
        del reports[key]
    return reports, orphans, sentences


def tod_of(fix: Fix) -> str | None:
    if fix.time_of_day_ns is None:
        return None
    secs = fix.time_of_day_ns // 10**9
    return f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"


def our_fixes(log: bytes) -> tuple[list[Fix], NmeaDecoder]:
    decoder = NmeaDecoder(rollover_reference=GPSD_ROLLOVER_REFERENCE)
    fixes = decoder.feed(strip_comments(log)) + decoder.flush()
    return fixes, decoder


def ms_of(time: str) -> int:
    """Milliseconds of day of an ISO time, enough to compare two times of one second."""
    hh, mm, rest = time[11:23].split(":")
    return (int(hh) * 3600 + int(mm) * 60) * 1000 + round(float(rest) * 1000)


@dataclass
class LogResult:
    name: str
    compared: int = 0
    agree: int = 0
    transitions: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    extras: list[str] = field(default_factory=list)
    not_comparable: int = 0


def field_diffs(
    g: dict[str, Any], o: dict[str, Any], cycle: list[str]
) -> tuple[list[str], list[str]]:
    """(disagreements, extras) between gpsd's TPV ``g`` and ours ``o``, modes aside."""
    diffs: list[str] = []
    if "time" in g:
        if "time" not in o:
            diffs.append("time missing")
        elif g["time"][:19] != o["time"][:19] or abs(ms_of(g["time"]) - ms_of(o["time"])) > 1:
            diffs.append(f"time {g['time']} != {o['time']}")
    modes_differ = g["mode"] != o["mode"]
    speed_derived = not any(has_speed_source(s) for s in cycle)
    for name in POSITION_FIELDS:
        if name == "speed" and speed_derived:
            continue
        if name in g and name in o:
            if abs(g[name] - o[name]) > TOLERANCE[name]:
                diffs.append(f"{name} {g[name]} != {o[name]}")
        elif name in g and not modes_differ:
            diffs.append(f"{name} missing")
    extras = [n for n in POSITION_FIELDS if n in o and n not in g and not modes_differ]
    return diffs, extras


def compare_log(log_path: Path) -> LogResult:
    chk = log_path.with_suffix(".log.chk").read_text(encoding="latin-1")
    reports, orphans, _ = gpsd_reports(chk)
    fixes, _ = our_fixes(log_path.read_bytes())
    by_time: dict[str, dict[str, Any]] = {}
    by_tod: dict[str, dict[str, Any]] = {}
    for fix in fixes:
        tpv = fix.to_tpv()
        if "time" in tpv:
            by_time[tpv["time"]] = tpv
        if (tod := tod_of(fix)) is not None:
            by_tod[tod] = tpv
    result = LogResult(log_path.name, not_comparable=orphans)
    keys = list(reports)
    for i, key in enumerate(keys):
        report = reports[key]
        g = report.tpv
        label = g.get("time", f"(no time) {report.tod}")
        ours = by_tod.get(key[1]) if isinstance(key, tuple) else by_time.get(str(key))
        result.compared += 1
        if ours is None:
            result.failures.append(f"{label}: missing (gpsd mode {g['mode']})")
            continue
        diffs, extras = field_diffs(g, ours, report.cycle)
        result.extras += [f"{label}: {e}" for e in extras]
        if diffs:
            result.failures.append(f"{label}: {'; '.join(diffs)}")
        elif g["mode"] == ours["mode"]:
            result.agree += 1
        else:
            neighbours = [
                reports[keys[j]].tpv["mode"] for j in (i - 1, i + 1) if 0 <= j < len(keys)
            ]
            note = f"{label}: mode gpsd {g['mode']} ours {ours['mode']}"
            if any(m != g["mode"] for m in neighbours):
                result.transitions.append(note)
            else:
                result.failures.append(note + " (steady)")
    return result


def test_tpv_lines_is_the_decoder_rendered(shared_data: Path) -> None:
    log = (shared_data / "gpsd" / "bu353s4.log").read_bytes()
    fixes, _ = our_fixes(log)
    assert list(tpv_lines(log)) == [f.to_tpv() for f in fixes]
    assert len(fixes) == 25  # gpsd: 27 TPVs, two of them intermediate


def test_accepts_exactly_the_sentences_gpsd_echoed(shared_data: Path) -> None:
    """gpsd echoes every sentence it framed (bad checksums dropped, inner '$' resynced)."""
    mismatches = []
    for log_path in gpsd_logs(shared_data):
        _, _, echoed = gpsd_reports(log_path.with_suffix(".log.chk").read_text("latin-1"))
        decoder = NmeaDecoder()
        decoder.feed(log_path.read_bytes())  # comments too: gpsd resyncs on a '$' inside them
        decoder.flush()
        if decoder.counters["sentences"] != echoed:
            mismatches.append((log_path.name, decoder.counters["sentences"], echoed))
    assert mismatches == []


def iter_results(shared_data: Path) -> Iterator[LogResult]:
    for log_path in gpsd_logs(shared_data):
        yield compare_log(log_path)


def test_fixes_agree_with_gpsd(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = list(iter_results(shared_data))
    assert len(results) == 32
    lines = [
        f"{'log':36} {'compared':>8} {'agree':>6} {'%':>6} {'trans':>5} {'fail':>4} "
        f"{'extra':>5} {'n/c':>4}"
    ]
    for r in results:
        pct = 100.0 * r.agree / r.compared if r.compared else 100.0
        lines.append(
            f"{r.name:36} {r.compared:8} {r.agree:6} {pct:6.1f} {len(r.transitions):5} "
            f"{len(r.failures):4} {len(r.extras):5} {r.not_comparable:4}"
        )
        lines += [f"    FAIL  {f}" for f in r.failures]
        lines += [f"    trans {t}" for t in r.transitions]
        lines += [f"    extra {e}" for e in r.extras[:3]]
    compared = sum(r.compared for r in results)
    agree = sum(r.agree for r in results)
    failed = sum(len(r.failures) for r in results)
    lines.append(
        f"{'TOTAL':36} {compared:8} {agree:6} {100.0 * agree / compared:6.1f} "
        f"{sum(len(r.transitions) for r in results):5} {failed:4} "
        f"{sum(len(r.extras) for r in results):5} {sum(r.not_comparable for r in results):4}"
    )
    lines.append(f"not failed: {100.0 * (compared - failed) / compared:.2f} % (gate {GATE:.0%})")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert (compared - failed) / compared >= GATE
