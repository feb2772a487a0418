"""NMEA 0183, sans-I/O: bytes in, one gpsd-compatible fix per reporting cycle out.

    NmeaSplitter    bytes -> "$..." sentences; bounded, resynchronises at an inner '$'
    parse_sentence  one sentence -> its fields, checksum checked (else SentenceError)
                    (both in nmea_sentences, with what each sentence type means)
    NmeaDecoder     bytes -> Fix per cycle, from RMC, GGA, GNS, VTG, GSA, GSV, GLL and ZDA
    tpv_lines       a whole log -> gpsd TPV objects (``fleetlink-edge decode nmea``)

A reporting cycle is the run of sentences sharing one UTC time. Like gpsd, the decoder learns which
timestamped sentence type closed the previous cycle and reports the fix on it; a cycle whose
closing sentence was lost is reported when the next one starts, or on ``flush()``. Nothing here
reads the clock: the GPS week-rollover fix is relative to a reference date the caller gives.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from fleetlink_edge.decode import nmea_sentences as ns
from fleetlink_edge.decode.nmea_sentences import (
    MAX_SENTENCE_LEN,
    NmeaSplitter,
    SentenceError,
    parse_sentence,
)
from fleetlink_protocols.records import FixMode, Position

# gpsd 3.20-3.22 (Debian 12) treat dates before 2017-01-01, the era of their leap-second table, as
# victims of the 10-bit GPS week rollover (IS-GPS-200 section 20.3.3.3.1.1) and add 1024 weeks.
GPSD_ROLLOVER_REFERENCE = date(2017, 1, 1)
GPS_WEEK_ROLLOVER = timedelta(weeks=1024)
_SAME_CYCLE_NS = 10_000_000  # stamps less than 10 ms apart share a cycle (gpsd GPS_TIME_EQUAL)
_SKY_STALE_CYCLES = 10  # a talker's GSV count older than this many cycles no longer counts
_EPOCH = date(1970, 1, 1)

COUNTERS = (
    "sentences",  # framed sentences with a good (or no) checksum, of any type
    "fixes",  # reporting cycles emitted
    "no_checksum",  # framed sentences without *hh (gpsd accepts them; we decode none of them)
    "garbage_bytes",  # non-blank bytes outside any '$' sentence
    "rejected_bad_checksum",
    "rejected_no_checksum",  # a type we decode, without *hh: a line cut short would pass
    "rejected_malformed",  # bad framing, non-printable bytes, or unparsable fields
    "rejected_unknown_sentence",  # types this decoder does not use (TXT, GST, proprietary...)
    "rejected_too_long",
    "rejected_truncated",  # cut off by the '$' of the next sentence
)


def new_counters() -> dict[str, int]:
    return dict.fromkeys(COUNTERS, 0)


@dataclass(frozen=True, slots=True)
class Fix:
    """One reporting cycle with gpsd's TPV meaning; units in the names, None when not reported.

    ``time_ns`` is UTC ns since the epoch, None until a date is known (RMC or ZDA);
    ``time_of_day_ns`` is the cycle's UTC time of day, known even without a date.
    """

    time_ns: int | None
    time_of_day_ns: int | None
    mode: FixMode
    lat_deg: float | None = None
    lon_deg: float | None = None
    alt_msl_m: float | None = None
    speed_mps: float | None = None
    track_deg: float | None = None
    hdop: float | None = None
    sats_used: int | None = None
    sats_seen: int | None = None

    def to_position(self) -> Position | None:
        """The fleet record, or None when there is no dated 2D/3D fix."""
        if self.time_ns is None or self.mode < FixMode.FIX_2D:
            return None
        if self.lat_deg is None or self.lon_deg is None:
            return None
        return Position(
            ts_wall_ns=self.time_ns,
            lat_deg=self.lat_deg,
            lon_deg=self.lon_deg,
            mode=self.mode,
            alt_msl_m=self.alt_msl_m,
            speed_mps=self.speed_mps,
            heading_deg=self.track_deg,
            hdop=self.hdop,
            sats_used=self.sats_used,
        )

    def to_tpv(self) -> dict[str, Any]:
        """gpsd's TPV object: its names, units and rounding; position only with a 2D/3D fix."""
        tpv: dict[str, Any] = {"class": "TPV", "mode": int(self.mode)}
        if self.time_ns is not None:
            tpv["time"] = iso8601_ms(self.time_ns)
        if self.mode >= FixMode.FIX_2D:
            for key, value, digits in (
                ("lat", self.lat_deg, 9),
                ("lon", self.lon_deg, 9),
                ("altMSL", self.alt_msl_m, 3),
                ("track", self.track_deg, 4),
                ("speed", self.speed_mps, 3),
            ):
                if value is not None:
                    tpv[key] = round(value, digits)
        return tpv


def iso8601_ms(time_ns: int) -> str:
    """``2034-08-16T03:07:19.000Z``: gpsd's time format, milliseconds truncated."""
    days, rest_ns = divmod(time_ns, 86_400 * 10**9)
    day = _EPOCH + timedelta(days=days)
    secs, ns = divmod(rest_ns, 10**9)
    return (
        f"{day.isoformat()}T{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"
        f".{ns // 1_000_000:03d}Z"
    )


class _Cycle:
    """What the sentences of one cycle said so far; later sentences overwrite earlier ones."""

    def __init__(self, stamp_ns: int | None, timed: bool) -> None:
        self.stamp_ns = stamp_ns
        self.timed = timed  # a trusted sentence gave this cycle's time
        self.sentences = 0
        self.reported = False
        self.mode: FixMode | None = None
        self.lat_deg: float | None = None
        self.lon_deg: float | None = None
        self.alt_msl_m: float | None = None
        self.speed_mps: float | None = None
        self.track_deg: float | None = None
        self.hdop: float | None = None
        self.sats_used: int | None = None
        self.used: set[tuple[str, str]] = set()

    def merge(self, u: ns.Update, stated: FixMode, had_altitude: bool) -> None:
        """Fold one sentence in; ``stated``: the latest mode any sentence gave, ``had_altitude``:
        whether the last fix had one."""
        self.sentences += 1
        for name in ("lat_deg", "lon_deg", "alt_msl_m", "speed_mps", "track_deg", "hdop"):
            value = getattr(u, name)
            if value is not None:
                setattr(self, name, value)
        if u.used is not None:
            self.used.update(u.used)
        elif u.sats_used is not None:
            self.sats_used = u.sats_used
        known = stated if self.mode is None else self.mode
        altitude = self.alt_msl_m is not None or had_altitude
        mode = u.mode
        if mode is None and u.valid:
            # RMC and GLL do not say 2D or 3D: an altitude (this cycle or the last fix) means
            # 3D, as gpsd has it; else keep the dimension we are at, at least 2D.
            mode = FixMode.FIX_3D if altitude else max(known, FixMode.FIX_2D)
        elif mode == FixMode.FIX_2D and known == FixMode.FIX_3D and altitude:
            # As gpsd: with an altitude in hand a 3D fix only ends with an explicit no-fix, so
            # receivers flipping GSA between 2 and 3 do not blink.
            mode = FixMode.FIX_3D
        if mode is not None:
            self.mode = mode


class NmeaDecoder:
    """Incremental decoder: ``feed(bytes)`` returns the fixes completed by those bytes.

    ``rollover_reference``: a receiver date before it is taken as a 1024-week rollover victim.
    ``counters`` (see COUNTERS) may be shared with a source that outlives one decoder session.
    """

    def __init__(
        self,
        *,
        rollover_reference: date = GPSD_ROLLOVER_REFERENCE,
        max_sentence_len: int = MAX_SENTENCE_LEN,
        counters: dict[str, int] | None = None,
    ) -> None:
        self.counters = new_counters() if counters is None else counters
        self._splitter = NmeaSplitter(self.counters, max_sentence_len)
        self._reference = rollover_reference
        self.reset()

    def reset(self) -> None:
        """Forget everything but the counters: the device was reopened, maybe another one."""
        self._splitter.reset()
        self._date: date | None = None  # the receiver's date, as sent, for the time below
        self._date_tod_ns = 0
        self._cycle = _Cycle(None, False)
        self._ender: str | None = None  # the sentence type that closes a cycle, once learned
        self._candidate: str | None = None  # the one that closed the last cycle
        self._last_stamped: str | None = None
        self._stated = FixMode.UNKNOWN  # the latest mode any sentence gave
        self._had_altitude = False  # the last fix had one
        self._cycles = 0
        self._in_view: dict[str, tuple[int, int]] = {}  # talker -> (satellites, cycle seen)

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete sentence (bounded by ``max_sentence_len``)."""
        return self._splitter.buffered

    def feed(self, data: bytes) -> list[Fix]:
        out: list[Fix] = []
        for sentence in self._splitter.feed(data):
            self._sentence(sentence, out)
        return out

    def flush(self) -> list[Fix]:
        """End of input: decode a last unterminated sentence and report the open cycle."""
        out: list[Fix] = []
        for sentence in self._splitter.flush():
            self._sentence(sentence, out)
        if not self._cycle.reported and self._cycle.sentences:
            self._report(out)
        return out

    def _sentence(self, raw: bytes, out: list[Fix]) -> None:
        try:
            fields, had_checksum = parse_sentence(raw)
        except SentenceError as exc:
            self.counters[f"rejected_{exc.reason}"] += 1
            return
        self.counters["sentences"] += 1
        if not had_checksum:
            self.counters["no_checksum"] += 1
        kind = ns.sentence_type(fields[0])
        handler = None if kind is None else ns.HANDLERS.get(kind)
        if kind is None or handler is None:
            self.counters["rejected_unknown_sentence"] += 1
            return
        if not had_checksum:
            self.counters["rejected_no_checksum"] += 1
            return
        try:
            update = handler(fields)
        except ValueError:
            self.counters["rejected_malformed"] += 1
            return
        self._apply(kind, update, out)

    def _apply(self, kind: str, u: ns.Update, out: list[Fix]) -> None:
        stamp = u.stamp_ns
        marks = False  # this sentence carries the cycle's time
        if stamp is not None:
            current = self._cycle.stamp_ns
            marks = current is not None and abs(stamp - current) < _SAME_CYCLE_NS
            # An untrusted time (RMC with the warning flag) only delimits cycles that have no
            # trusted one: a receiver without a fix still gets one fix per cycle.
            if not marks and (u.timed or not self._cycle.timed):
                self._next_cycle(stamp, u.timed, out)
                marks = True
            if marks and u.timed:
                if not self._cycle.timed:
                    self._cycle.stamp_ns, self._cycle.timed = stamp, True
                self._track_date(stamp, u.utc_date)
        if u.in_view is not None:
            self._in_view[u.in_view[0]] = (u.in_view[1], self._cycles)
        self._cycle.merge(u, self._stated, self._had_altitude)
        # Sentences after the report (a GSA after the closing RMC) still tell the next cycle
        # which dimension it starts from.
        self._stated = self._stated if self._cycle.mode is None else self._cycle.mode
        if marks and u.closes:
            if kind == self._ender and not self._cycle.reported:
                self._report(out)
            self._last_stamped = kind

    def _next_cycle(self, stamp_ns: int, timed: bool, out: list[Fix]) -> None:
        if not self._cycle.reported and self._cycle.sentences:
            self._report(out)  # its closing sentence never came
        closer = self._last_stamped
        # One odd cycle (a sentence lost to noise) must not move the report point: a new
        # closing type is adopted when two cycles in a row agree on it.
        if closer is not None and (self._ender is None or closer == self._candidate):
            self._ender = closer
        self._candidate = closer
        self._last_stamped = None
        self._cycle = _Cycle(stamp_ns, timed)
        self._cycles += 1

    def _track_date(self, tod_ns: int, sentence_date: date | None) -> None:
        if sentence_date is not None:
            self._date = sentence_date
        elif self._date is not None and tod_ns < self._date_tod_ns - 43_200 * 10**9:
            self._date += timedelta(days=1)  # the time of day wrapped past midnight
        self._date_tod_ns = tod_ns

    def _report(self, out: list[Fix]) -> None:
        c = self._cycle
        c.reported = True
        mode = FixMode.UNKNOWN if c.mode is None else c.mode
        self._had_altitude = c.alt_msl_m is not None
        seen = [
            n for n, cycle in self._in_view.values() if self._cycles - cycle < _SKY_STALE_CYCLES
        ]
        out.append(
            Fix(
                time_ns=self._time_ns(c.stamp_ns) if c.timed else None,
                time_of_day_ns=c.stamp_ns,
                mode=mode,
                lat_deg=c.lat_deg,
                lon_deg=c.lon_deg,
                alt_msl_m=c.alt_msl_m,
                speed_mps=c.speed_mps,
                track_deg=c.track_deg,
                hdop=c.hdop,
                sats_used=len(c.used) if c.used else c.sats_used,
                sats_seen=sum(seen) if seen else None,
            )
        )
        self.counters["fixes"] += 1

    def _time_ns(self, tod_ns: int | None) -> int | None:
        if tod_ns is None or self._date is None:
            return None
        day = self._date
        if day < self._reference:
            day += GPS_WEEK_ROLLOVER
        return (day - _EPOCH).days * 86_400 * 10**9 + tod_ns


def tpv_lines(
    data: bytes, rollover_reference: date = GPSD_ROLLOVER_REFERENCE
) -> Iterator[dict[str, Any]]:
    """gpsd TPV objects for every cycle of an NMEA log; '#' lines are comments (gpsd test logs)."""
    decoder = NmeaDecoder(rollover_reference=rollover_reference)
    for line in data.splitlines(keepends=True):
        if not line.startswith(b"#"):
            for fix in decoder.feed(line):
                yield fix.to_tpv()
    for fix in decoder.flush():
        yield fix.to_tpv()
