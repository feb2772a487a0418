"""Road speeds learned from the fleet's own GNSS fixes, per area and hour of the week. Pure.

A :class:`SpeedLearner` sorts fixes into buckets: a grid of cells about ``cell_m`` on a side
(rows of equal latitude step; each row's longitude step widened by 1/cos(latitude) so cells stay
square) times the 168 hours of the week, counted in **UTC** (Monday 00:00 is hour 0; a fleet's
rush hours are learned where they fall in UTC, so a daylight-saving change moves them by an hour
until the data catches up). Each bucket holds a histogram of *moving* speeds (``bin_mps`` wide
bins): fixes without a 2D/3D fix, with a poor HDOP, without speed, slower than ``min_moving_mps``
(parked, queueing at lights) or faster than ``max_speed_mps`` (glitches) are rejected and counted.

:meth:`SpeedLearner.table` turns the histograms into a :class:`SpeedTable` of robust statistics
(median, 15th and 85th percentile) for every bucket with at least ``min_samples`` fixes, and the
same per cell over all hours and over the whole fleet. A lookup falls back cell-hour -> cell ->
global -> the configured default speed; the percentiles give the ETA range, the median the
expected time. Both classes round-trip through plain dicts (:meth:`to_dict` / :meth:`from_dict`)
so the caller can persist them as JSON.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field

from fleetlink_cloud.dispatch.model import DispatchError
from fleetlink_protocols.records import FixMode, Position

M_PER_DEG_LAT: Final = 111_195.0  # mean-Earth-radius arc of one degree (6_371_008.8 m × π/180)
HOURS_PER_WEEK: Final = 168
_EPOCH_HOUR_OF_WEEK: Final = 72  # 1970-01-01T00:00Z was a Thursday: hour 72 of a Monday week
_NS: Final = 1_000_000_000
FORMAT_VERSION: Final = 1

Cell = tuple[int, int]  # (row, column)
Bucket = tuple[int, int, int]  # (row, column, hour of week)


class SpeedTableError(DispatchError, ValueError):
    """A serialised speed table or learner is not in the expected format."""


class SpeedSettings(BaseModel):
    """How fixes are bucketed and filtered, and how many make a bucket trustworthy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cell_m: Annotated[float, Field(gt=0)] = 2000.0
    bin_mps: Annotated[float, Field(gt=0)] = 0.5  # histogram resolution
    min_samples: Annotated[int, Field(ge=1)] = 30  # fewer moving fixes: use the next fallback
    min_moving_mps: Annotated[float, Field(ge=0)] = 1.5  # slower: parked or queueing
    max_speed_mps: Annotated[float, Field(gt=0)] = 70.0  # 252 km/h: faster is a glitch
    max_hdop: Annotated[float, Field(gt=0)] = 5.0


class Level(enum.StrEnum):
    """Which statistics answered a lookup."""

    CELL_HOUR = "cell_hour"
    CELL = "cell"
    GLOBAL = "global"
    DEFAULT = "default"


class Rejected(enum.StrEnum):
    NO_FIX = "no_fix"
    NO_SPEED = "no_speed"
    HDOP = "hdop"
    STOPPED = "stopped"
    IMPLAUSIBLE = "implausible"


@dataclass(frozen=True, slots=True)
class SpeedStats:
    """Moving speeds of one bucket (m/s) and the number of fixes behind them."""

    median_mps: float
    p15_mps: float
    p85_mps: float
    samples: int
    level: Level = Level.CELL_HOUR

    @property
    def measured(self) -> bool:
        """False for the configured default speed (no data, so no spread)."""
        return self.level is not Level.DEFAULT


def hour_of_week(ts_s: float) -> int:
    """UTC hour of the week of a Unix time, Monday 00:00 being 0."""
    return (int(ts_s // 3600) + _EPOCH_HOUR_OF_WEEK) % HOURS_PER_WEEK


class Grid:
    """Square-ish cells about ``cell_m`` wide; row and column of a WGS84 point."""

    __slots__ = ("_inv_lat", "_inv_lon", "cell_m")

    def __init__(self, cell_m: float) -> None:
        self.cell_m = cell_m
        self._inv_lat = M_PER_DEG_LAT / cell_m  # rows per degree of latitude
        self._inv_lon: dict[int, float] = {}  # columns per degree of longitude, per row

    def cell(self, lat: float, lon: float) -> Cell:
        row = math.floor(lat * self._inv_lat)
        inv_lon = self._inv_lon.get(row)
        if inv_lon is None:
            centre = math.radians((row + 0.5) / self._inv_lat)
            inv_lon = self._inv_lat * max(math.cos(centre), 0.01)
            self._inv_lon[row] = inv_lon
        return row, math.floor(lon * inv_lon)


def _quantile(hist: Mapping[int, int], total: int, q: float, bin_mps: float) -> float:
    """The ``q`` quantile of a speed histogram, interpolated linearly inside its bin."""
    target = q * total
    seen = 0
    for b in sorted(hist):
        n = hist[b]
        if seen + n >= target:
            return (b + (target - seen) / n) * bin_mps
        seen += n
    return (max(hist) + 1) * bin_mps


def _stats(hist: Mapping[int, int], bin_mps: float, level: Level) -> SpeedStats:
    total = sum(hist.values())
    return SpeedStats(
        median_mps=_quantile(hist, total, 0.5, bin_mps),
        p15_mps=_quantile(hist, total, 0.15, bin_mps),
        p85_mps=_quantile(hist, total, 0.85, bin_mps),
        samples=total,
        level=level,
    )


def _merge(into: dict[int, int], hist: Mapping[int, int]) -> None:
    for b, n in hist.items():
        into[b] = into.get(b, 0) + n


class SpeedLearner:
    """Accumulates speed histograms from fixes; :meth:`table` summarises them."""

    def __init__(self, settings: SpeedSettings | None = None) -> None:
        self.settings = settings or SpeedSettings()
        self._grid = Grid(self.settings.cell_m)
        self._hist: dict[Bucket, dict[int, int]] = {}
        self.accepted = 0
        self.rejected: dict[Rejected, int] = dict.fromkeys(Rejected, 0)

    def add(self, pos: Position) -> Rejected | None:
        """Count one fix; returns why it was rejected, or None when it was used."""
        reason = self._check(pos)
        if reason is not None:
            self.rejected[reason] += 1
            return reason
        assert pos.speed_mps is not None
        row, col = self._grid.cell(pos.lat_deg, pos.lon_deg)
        key = (row, col, hour_of_week(pos.ts_wall_ns / _NS))
        hist = self._hist.setdefault(key, {})
        b = int(pos.speed_mps / self.settings.bin_mps)
        hist[b] = hist.get(b, 0) + 1
        self.accepted += 1
        return None

    def add_all(self, positions: Iterable[Position]) -> int:
        """Count many fixes; returns how many were used."""
        before = self.accepted
        for pos in positions:
            self.add(pos)
        return self.accepted - before

    def _check(self, pos: Position) -> Rejected | None:
        s = self.settings
        if pos.mode < FixMode.FIX_2D:
            return Rejected.NO_FIX
        if pos.speed_mps is None or not math.isfinite(pos.speed_mps):
            return Rejected.NO_SPEED
        if pos.hdop is not None and pos.hdop > s.max_hdop:
            return Rejected.HDOP
        if pos.speed_mps < s.min_moving_mps:
            return Rejected.STOPPED
        if pos.speed_mps > s.max_speed_mps:
            return Rejected.IMPLAUSIBLE
        return None

    def table(self, default_speed_mps: float) -> SpeedTable:
        """Statistics of every bucket, cell and the fleet that has at least ``min_samples``."""
        s = self.settings
        cells: dict[Cell, dict[int, int]] = {}
        fleet: dict[int, int] = {}
        cell_hour: dict[Bucket, SpeedStats] = {}
        for (row, col, how), hist in self._hist.items():
            _merge(cells.setdefault((row, col), {}), hist)
            _merge(fleet, hist)
            if sum(hist.values()) >= s.min_samples:
                cell_hour[(row, col, how)] = _stats(hist, s.bin_mps, Level.CELL_HOUR)
        cell = {
            c: _stats(h, s.bin_mps, Level.CELL)
            for c, h in cells.items()
            if sum(h.values()) >= s.min_samples
        }
        fleet_stats = None
        if sum(fleet.values()) >= s.min_samples:
            fleet_stats = _stats(fleet, s.bin_mps, Level.GLOBAL)
        return SpeedTable(s.cell_m, default_speed_mps, cell_hour, cell, fleet_stats)

    def to_dict(self) -> dict[str, Any]:
        """The histograms as JSON-ready data: ``{"buckets": [[row, col, hour, {bin: n}], ...]}``."""
        buckets = [
            [row, col, how, {str(b): n for b, n in sorted(h.items())}]
            for (row, col, how), h in sorted(self._hist.items())
        ]
        return {
            "version": FORMAT_VERSION,
            "settings": self.settings.model_dump(),
            "buckets": buckets,
            "accepted": self.accepted,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpeedLearner:
        """Inverse of :meth:`to_dict`; raises :class:`SpeedTableError` on anything else."""
        try:
            _check_version(data)
            learner = cls(SpeedSettings.model_validate(data["settings"]))
            for row, col, how, hist in data["buckets"]:
                learner._hist[(int(row), int(col), int(how))] = {
                    int(b): int(n) for b, n in hist.items()
                }
            learner.accepted = int(data["accepted"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SpeedTableError(f"not a speed learner: {exc}") from exc
        return learner


class SpeedTable:
    """Speed statistics per cell and hour of the week, with the fallback chain in :meth:`stats`."""

    def __init__(
        self,
        cell_m: float,
        default_speed_mps: float,
        cell_hour: Mapping[Bucket, SpeedStats] | None = None,
        cell: Mapping[Cell, SpeedStats] | None = None,
        fleet: SpeedStats | None = None,
    ) -> None:
        if default_speed_mps <= 0:
            raise ValueError("the default speed must be positive")
        self.cell_m = cell_m
        self.default = SpeedStats(
            default_speed_mps, default_speed_mps, default_speed_mps, 0, Level.DEFAULT
        )
        self._grid = Grid(cell_m)
        self._cell_hour = dict(cell_hour or {})
        self._cell = dict(cell or {})
        self.fleet = fleet
        everything = [*self._cell_hour.values(), *self._cell.values(), self.default]
        if fleet is not None:
            everything.append(fleet)
        # The fastest median any lookup can return: legs timed at the median are never faster.
        self.max_median_mps = max(st.median_mps for st in everything)
        self._median_ch = {k: v.median_mps for k, v in self._cell_hour.items()}
        self._median_c = {k: v.median_mps for k, v in self._cell.items()}
        self._median_any = fleet.median_mps if fleet is not None else default_speed_mps

    @classmethod
    def constant(cls, speed_mps: float, cell_m: float = 2000.0) -> SpeedTable:
        """A table without data: every lookup is ``speed_mps`` (no spread)."""
        return cls(cell_m, speed_mps)

    def __len__(self) -> int:
        return len(self._cell_hour)

    def stats(self, lat: float, lon: float, ts_s: float) -> SpeedStats:
        """Statistics for a point and time: cell-hour, else cell, else fleet, else the default."""
        row, col = self._grid.cell(lat, lon)
        found = self._cell_hour.get((row, col, hour_of_week(ts_s)))
        if found is None:
            found = self._cell.get((row, col)) or self.fleet or self.default
        return found

    def median_mps(self, lat: float, lon: float, ts_s: float) -> float:
        """The median of :meth:`stats` without building it (the insertion hot path)."""
        if not self._median_ch and not self._median_c:
            return self._median_any
        row, col = self._grid.cell(lat, lon)
        how = (int(ts_s // 3600) + _EPOCH_HOUR_OF_WEEK) % HOURS_PER_WEEK
        v = self._median_ch.get((row, col, how))
        if v is None:
            v = self._median_c.get((row, col), self._median_any)
        return v

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``[row, col, hour, median, p15, p85, samples]`` rows and so on."""

        def row(st: SpeedStats) -> list[float | int]:
            return [st.median_mps, st.p15_mps, st.p85_mps, st.samples]

        return {
            "version": FORMAT_VERSION,
            "cell_m": self.cell_m,
            "default_speed_mps": self.default.median_mps,
            "cell_hour": [[*k, *row(v)] for k, v in sorted(self._cell_hour.items())],
            "cell": [[*k, *row(v)] for k, v in sorted(self._cell.items())],
            "global": None if self.fleet is None else row(self.fleet),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpeedTable:
        """Inverse of :meth:`to_dict`; raises :class:`SpeedTableError` on anything else."""
        try:
            _check_version(data)

            def st(v: list[Any], level: Level) -> SpeedStats:
                return SpeedStats(float(v[0]), float(v[1]), float(v[2]), int(v[3]), level)

            cell_hour = {
                (int(r[0]), int(r[1]), int(r[2])): st(r[3:], Level.CELL_HOUR)
                for r in data["cell_hour"]
            }
            cell = {(int(r[0]), int(r[1])): st(r[2:], Level.CELL) for r in data["cell"]}
            g = data["global"]
            fleet = None if g is None else st(g, Level.GLOBAL)
            return cls(
                float(data["cell_m"]), float(data["default_speed_mps"]), cell_hour, cell, fleet
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise SpeedTableError(f"not a speed table: {exc}") from exc


def _check_version(data: Mapping[str, Any]) -> None:
    if data.get("version") != FORMAT_VERSION:
        raise SpeedTableError(f"unknown format version {data.get('version')!r}")
