"""NMEA 0183 sentences, pure: how they are framed, and what each type says (used by nmea.py).

``NmeaSplitter`` cuts a byte stream into sentences and ``parse_sentence`` checks one and splits
it into fields (field 0 is the address, "GPRMC"). Then one function per sentence type returns an
``Update``; a field that cannot be parsed raises ValueError, which the decoder counts as a
malformed sentence. Field numbers follow NMEA 0183 4.11 and gpsd's NMEA notes.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

from fleetlink_edge.errors import DecodeError
from fleetlink_protocols.records import FixMode

MAX_SENTENCE_LEN = 128  # NMEA 0183 allows 82 chars, gpsd 102; proprietary sentences run longer

KNOTS_TO_MPS = 1852.0 / 3600.0  # RMC and VTG speeds are in knots: 1 kn = 0.514444 m/s
KMH_TO_MPS = 1.0 / 3.6

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")  # no exponents, no nan/inf, no '_'
_ANGLE = re.compile(r"\d+(?:\.\d*)?")  # NMEA ddmm.mmmm / dddmm.mmmm
_HHMMSS = re.compile(r"(\d\d)(\d\d)(\d\d)(?:\.(\d{0,9}))?")


class SentenceError(DecodeError):
    """One sentence was refused; ``reason`` names its counter (``rejected_<reason>``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_HUNT, _IN, _SKIP, _RESUME = 0, 1, 2, 3
_DELIM = re.compile(rb"[\n$]")


class NmeaSplitter:
    """Cut a byte stream into ``$...`` sentences, keeping the partial one between calls.

    Shaped like httpx's LineDecoder; lines end in LF or CRLF. A '$' inside a sentence starts a
    new one, as in gpsd. If the line right after that inner sentence does not start with '$',
    it is the rest of the interrupted sentence (some receivers inject one sentence into another)
    and the two halves are joined; the checksum then decides. Otherwise the stub is dropped as
    truncated. Memory stays below ``max_len`` whatever the input.
    """

    def __init__(self, counters: dict[str, int], max_len: int = MAX_SENTENCE_LEN) -> None:
        self._counters = counters
        self._max_len = max_len
        self._state = _HUNT
        self._buf = bytearray()
        self._stub = b""  # a sentence interrupted by another, awaiting its continuation
        self._resumed = False

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        i, n = 0, len(data)
        while i < n:
            if self._state == _RESUME:
                self._state = _HUNT
                if data[i] != ord("$"):
                    self._buf[:], self._state, self._resumed = self._stub, _IN, True
                else:
                    self._counters["rejected_truncated"] += 1
                self._stub = b""
            if self._state == _HUNT:
                j = data.find(b"$", i)
                self._garbage(data[i : n if j < 0 else j])
                if j < 0:
                    break
                self._start()
                i = j + 1
                continue
            m = _DELIM.search(data, i)
            j = n if m is None else m.start()
            if self._state == _IN:
                if len(self._buf) + j - i > self._max_len:
                    self._counters["rejected_too_long"] += 1
                    self._state = _SKIP  # the rest of this line belongs to the dropped sentence
                else:
                    self._buf += data[i:j]
            if m is None:
                break
            if data[j] == ord("$"):
                if self._state == _IN:
                    self._interrupted()
                self._start()
            else:
                self._end_of_line(out)
            i = j + 1
        return out

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete sentence (never more than ``max_len``)."""
        return len(self._buf) + len(self._stub)

    def flush(self) -> list[bytes]:
        """End of input: a final sentence without its line ending still counts."""
        out: list[bytes] = []
        if self._state == _IN:
            self._end_of_line(out)
        elif self._state == _RESUME:
            self._counters["rejected_truncated"] += 1
        self.reset()
        return out

    def reset(self) -> None:
        """Forget the partial sentence (the device was closed and reopened)."""
        self._state = _HUNT
        self._buf.clear()
        self._stub = b""
        self._resumed = False

    def _start(self) -> None:
        self._state = _IN
        self._buf[:] = b"$"
        self._resumed = False

    def _interrupted(self) -> None:
        if self._stub or self._resumed:
            self._counters["rejected_truncated"] += 1  # only one level of nesting is undone
        self._stub = b"" if self._resumed else bytes(self._buf)

    def _end_of_line(self, out: list[bytes]) -> None:
        complete = self._state == _IN
        if complete:
            sentence = bytes(self._buf).rstrip(b"\r")
            if self._resumed and b"*" not in sentence:
                self._counters["rejected_truncated"] += 1  # a join must prove itself by checksum
            else:
                out.append(sentence)
        elif self._stub:
            self._counters["rejected_truncated"] += 1
            self._stub = b""
        self._state = _RESUME if self._stub else _HUNT
        self._resumed = False

    def _garbage(self, chunk: bytes) -> None:
        if chunk:
            self._counters["garbage_bytes"] += len(chunk) - sum(map(chunk.count, b" \t\r\n"))


_PRINTABLE = re.compile(rb"[\x20-\x7e]*")
_HEX2 = re.compile(rb"[0-9A-Fa-f]{2}")
_ADDRESS = re.compile(r"[A-Z].*")  # like gpsd, any text up to the first comma
_STANDARD = re.compile(r"[A-OQ-Z][A-Z]([A-Z]{3})")  # talker + type; 'P' starts proprietary ones


def parse_sentence(sentence: bytes) -> tuple[list[str], bool]:
    """Fields of ``$<address>,...[*hh]`` (field 0 is the address, e.g. "GPRMC") and whether a
    checksum was present. Raises SentenceError ("bad_checksum" or "malformed")."""
    body, star, checksum = sentence[1:].partition(b"*")
    if not _PRINTABLE.fullmatch(body):
        raise SentenceError("malformed")
    if star:
        checksum = checksum.rstrip(b" ")
        if not _HEX2.fullmatch(checksum):
            raise SentenceError("malformed")
        if int(checksum, 16) != functools.reduce(operator.xor, body, 0):
            raise SentenceError("bad_checksum")
    fields = body.decode("ascii").split(",")
    if not _ADDRESS.fullmatch(fields[0]):
        raise SentenceError("malformed")
    return fields, bool(star)


def sentence_type(address: str) -> str | None:
    """The type of a standard address, "RMC" for "GPRMC" or "GNRMC"; None if proprietary."""
    standard = _STANDARD.fullmatch(address)
    return None if standard is None else standard[1]


@dataclass(slots=True)
class Update:
    """What one sentence states; None for what it does not say."""

    stamp_ns: int | None = None  # UTC time of day that marks the cycle, ns since midnight
    timed: bool = True  # the stamp may date the fix (not RMC's with the warning flag)
    closes: bool = True  # may be learned as the sentence that closes a cycle (not ZDA)
    utc_date: date | None = None  # from RMC or ZDA, before any rollover correction
    mode: FixMode | None = None  # stated outright (GSA, GGA, GNS, or an invalid-data flag)
    valid: bool = False  # a valid fix of unstated dimension (RMC, GLL, GGA without altitude)
    lat_deg: float | None = None
    lon_deg: float | None = None
    alt_msl_m: float | None = None
    speed_mps: float | None = None
    track_deg: float | None = None
    hdop: float | None = None
    sats_used: int | None = None  # GGA/GNS count
    used: frozenset[tuple[str, str]] | None = None  # GSA: (constellation, PRN) used in the fix
    in_view: tuple[str, int] | None = None  # GSV: (talker, satellites in view)


def _get(fields: list[str], i: int) -> str:
    return fields[i] if i < len(fields) else ""


def number(text: str) -> float | None:
    """A decimal field; None when empty; ValueError for anything else."""
    if not text:
        return None
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"not a number: {text!r}")
    return float(text)


def integer(text: str) -> int | None:
    value = number(text)
    return None if value is None else int(value)


def angle(value: str, hemisphere: str, positive: str, negative: str, limit: int) -> float | None:
    """NMEA ``(d)ddmm.mmmm`` plus hemisphere letter -> signed degrees; None when empty."""
    if not value:
        return None
    if not _ANGLE.fullmatch(value) or hemisphere not in (positive, negative):
        raise ValueError(f"bad angle: {value!r} {hemisphere!r}")
    raw = float(value)
    degrees = int(raw // 100)
    minutes = raw - degrees * 100
    if minutes >= 60.0 or degrees + minutes / 60.0 > limit:
        raise ValueError(f"angle out of range: {value!r}")
    result = degrees + minutes / 60.0
    return -result if hemisphere == negative else result


def time_of_day_ns(text: str) -> int | None:
    """``hhmmss[.sss]`` -> ns since midnight; None when empty or not a time (receivers without
    a fix send garbage times; gpsd drops the time and keeps the rest)."""
    m = _HHMMSS.fullmatch(text)
    if m is None:
        return None
    hh, mm, ss = int(m[1]), int(m[2]), int(m[3])
    if hh > 23 or mm > 59 or ss > 60:  # 60: a leap second
        return None
    fraction = int((m[4] or "").ljust(9, "0"))
    return ((hh * 60 + mm) * 60 + ss) * 1_000_000_000 + fraction


def ddmmyy(text: str) -> date | None:
    """RMC's two-digit-year date; years 80-99 are 19xx (GPS began in 1980), 00-79 are 20xx."""
    if len(text) != 6 or not text.isdigit():
        return None
    day, month, yy = int(text[:2]), int(text[2:4]), int(text[4:])
    try:
        return date(1900 + yy if yy >= 80 else 2000 + yy, month, day)
    except ValueError:
        return None


def _position(u: Update, fields: list[str], first: int) -> bool:
    """Lat/lon from ``fields[first:first + 4]``; False when either is missing."""
    u.lat_deg = angle(_get(fields, first), _get(fields, first + 1), "N", "S", 90)
    u.lon_deg = angle(_get(fields, first + 2), _get(fields, first + 3), "E", "W", 180)
    return u.lat_deg is not None and u.lon_deg is not None


def _no_fix(u: Update) -> Update:
    u.mode = FixMode.NO_FIX
    u.lat_deg = u.lon_deg = u.alt_msl_m = None
    return u


def rmc(fields: list[str]) -> Update:
    """RMC: time, status A/V, lat, N/S, lon, E/W, speed (knots), track, ddmmyy, ..., FAA mode."""
    u = Update(stamp_ns=time_of_day_ns(_get(fields, 1)))
    faa = _get(fields, 12)
    if _get(fields, 2) not in ("A", "D") or faa == "N" or not _position(u, fields, 3):
        # With the warning flag the time still marks the cycle, but many receivers send a
        # bogus one (gpsd: MTK3301, RGM-3800): it dates nothing.
        u.timed = False
        return _no_fix(u)
    u.valid = True
    knots = number(_get(fields, 7))
    u.speed_mps = None if knots is None else knots * KNOTS_TO_MPS
    u.track_deg = number(_get(fields, 8))
    u.utc_date = ddmmyy(_get(fields, 9))
    u.timed = u.utc_date is not None  # a time without its date (e.g. "2208-1") is not trusted
    return u


def gga(fields: list[str]) -> Update:
    """GGA: time, lat, N/S, lon, E/W, quality, satellites used, HDOP, altitude MSL, M, ..."""
    if len(fields) < 10:
        raise ValueError("short GGA")
    u = Update(stamp_ns=time_of_day_ns(fields[1]))
    quality, sats = integer(fields[6]), integer(fields[7])
    u.hdop = number(fields[8])
    u.sats_used = sats
    if not quality or not _position(u, fields, 2) or (sats is not None and sats < 3):
        return _no_fix(u)
    u.alt_msl_m = number(fields[9])
    if u.alt_msl_m is None:
        u.valid = True  # SiRF up to 2.2 leaves the altitude empty: 2D at least
    else:
        u.mode = FixMode.FIX_3D if sats is None or sats >= 4 else FixMode.FIX_2D
    return u


def gns(fields: list[str]) -> Update:
    """GNS: time, lat, N/S, lon, E/W, mode letters (one per constellation), sats, HDOP, alt..."""
    if len(fields) < 10:
        raise ValueError("short GNS")
    u = Update(stamp_ns=time_of_day_ns(fields[1]))
    sats = integer(fields[7])
    u.hdop = number(fields[8])
    u.sats_used = sats
    if not set(fields[6]) - {"N"} or not _position(u, fields, 2):
        return _no_fix(u)
    u.alt_msl_m = number(fields[9])
    has_3d = u.alt_msl_m is not None and (sats is None or sats >= 4)
    u.mode = FixMode.FIX_3D if has_3d else FixMode.FIX_2D
    return u


def gll(fields: list[str]) -> Update:
    """GLL: lat, N/S, lon, E/W, time, status A/V, FAA mode."""
    if len(fields) < 7:
        raise ValueError("short GLL")
    u = Update(stamp_ns=time_of_day_ns(fields[5]))
    if fields[6] != "A" or _get(fields, 7) == "N" or not _position(u, fields, 1):
        return _no_fix(u)
    u.valid = True
    return u


def vtg(fields: list[str]) -> Update:
    """VTG: track true, T, track magnetic, M, speed knots, N, speed km/h, K, FAA mode."""
    if len(fields) < 8:
        raise ValueError("short VTG")
    u = Update()
    if _get(fields, 9)[:1] in ("N", "E"):
        return u  # not valid, or dead reckoning only: nothing to use
    u.track_deg = number(fields[1])
    knots, kmh = number(fields[5]), number(fields[7])
    if knots is not None:
        u.speed_mps = knots * KNOTS_TO_MPS
    elif kmh is not None:
        u.speed_mps = kmh * KMH_TO_MPS
    return u


def gsa(fields: list[str]) -> Update:
    """GSA: A/M, fix type 1/2/3, up to 12 PRNs used, PDOP, HDOP, VDOP[, NMEA 4.10 system id]."""
    if len(fields) < 18:
        raise ValueError("short GSA")  # e.g. the i.Trek M3's "$GPGSA,A,1,,,,*32"
    u = Update()
    fix_type = fields[2]
    if fix_type in ("1", "2", "3"):
        u.mode = FixMode(int(fix_type))
    system = fields[18] if len(fields) == 19 else fields[0][:2]
    prns = fields[3:15] if len(fields) == 19 else fields[3:-3]
    u.used = frozenset((system, prn.lstrip("0")) for prn in prns if prn.strip("0"))
    u.hdop = number(fields[16] if len(fields) == 19 else fields[-2])
    return u


def gsv(fields: list[str]) -> Update:
    """GSV: sentences in group, sentence number, satellites in view, then 4 x (PRN, el, az, SNR)."""
    if len(fields) < 4:
        raise ValueError("short GSV")
    in_view = integer(fields[3])
    return Update(in_view=None if in_view is None else (fields[0][:2], in_view))


def zda(fields: list[str]) -> Update:
    """ZDA: time, day, month, 4-digit year, local zone hours, minutes."""
    if len(fields) < 5:
        raise ValueError("short ZDA")
    tod = time_of_day_ns(fields[1])
    if tod is None or not all(fields[2:5]):
        return Update()  # receivers send empty ZDAs before they know the time
    day, month, year = integer(fields[2]), integer(fields[3]), integer(fields[4])
    if day is None or month is None or year is None or not 1980 <= year <= 2200:
        raise ValueError("bad ZDA date")
    return Update(stamp_ns=tod, closes=False, utc_date=date(year, month, day))


HANDLERS: dict[str, Callable[[list[str]], Update]] = {
    "RMC": rmc,
    "GGA": gga,
    "GNS": gns,
    "GLL": gll,
    "VTG": vtg,
    "GSA": gsa,
    "GSV": gsv,
    "ZDA": zda,
}
