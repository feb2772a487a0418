"""Arrival and departure at a job's stop from a vehicle's fixes: one state machine per stop.

Pure: :func:`step` takes the state, one fix and the settings and returns the new state and the
event it fires, if any; :class:`GeofenceTracker` keeps the state for callers that feed fixes one
by one. Times are the device's (``ts_wall_ns`` of each fix).

Phases::

    OUTSIDE --fix within enter_radius_m--> DWELLING --within enter_radius_m again dwell_s
    later, never beyond exit_radius_m between--> ARRIVED (event "arrived") --fix beyond
    exit_radius_m--> LEAVING --still beyond it depart_after_s later--> DEPARTED ("departed")

The exit radius is larger than the enter radius (hysteresis): jitter between the two neither
starts a dwell nor breaks one, and a vehicle parked at the edge does not flap. A fix beyond the
exit radius while dwelling restarts the dwell; a fix back within it while leaving cancels the
departure. When ``max_dwell_speed_mps`` is set, a faster fix also restarts the dwell: the
vehicle is driving through, not stopped.

A fix is used only when it is valid, newer than the last used one, good enough (``min_mode``,
``max_hdop``; a fix without an HDOP passes) and reachable from the last used one at
``max_jump_speed_mps``. Rejected fixes are counted by reason; they never move the machine. When
the fix after a jump agrees with it rather than with the fix before, the earlier fix was the
glitch and the track continues from the new position. Because older fixes are ignored, a
history backlog is replayed into a fresh tracker in device-time order, never into a live one.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Annotated, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleetlink_cloud.dispatch.model import Evidence, Job, JobState, Location, StopKind
from fleetlink_cloud.live.derived import haversine_m

_NS = 1_000_000_000


class GeofenceSettings(BaseModel):
    """Geofence thresholds; the defaults suit road vehicles reporting about once a second."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enter_radius_m: Annotated[float, Field(gt=0)] = 75.0
    exit_radius_m: Annotated[float, Field(gt=0)] = 150.0
    dwell_s: Annotated[float, Field(ge=0)] = 60.0  # inside this long before "arrived"
    depart_after_s: Annotated[float, Field(ge=0)] = 30.0  # outside this long before "departed"
    min_mode: Annotated[int, Field(ge=2, le=3)] = 2  # gpsd TPV mode: 2 = 2D fix, 3 = 3D fix
    max_hdop: Annotated[float, Field(gt=0)] = 5.0
    max_jump_speed_mps: Annotated[float, Field(gt=0)] = 90.0  # faster hops are GNSS glitches
    max_dwell_speed_mps: Annotated[float, Field(gt=0)] | None = None  # None: speed not used
    complete_on_departure: bool = False  # departing a single stop or delivery completes the job

    @model_validator(mode="after")
    def _hysteresis(self) -> Self:
        if self.exit_radius_m <= self.enter_radius_m:
            raise ValueError("exit_radius_m must be larger than enter_radius_m")
        return self


class Fix(Protocol):
    """What the tracker reads from a fix: a store ``PositionRow`` or a protocol ``Position``."""

    @property
    def ts_wall_ns(self) -> int: ...
    @property
    def lat_deg(self) -> float: ...
    @property
    def lon_deg(self) -> float: ...
    @property
    def mode(self) -> int: ...
    @property
    def speed_mps(self) -> float | None: ...
    @property
    def hdop(self) -> float | None: ...


class Phase(enum.StrEnum):
    OUTSIDE = "outside"
    DWELLING = "dwelling"
    ARRIVED = "arrived"
    LEAVING = "leaving"
    DEPARTED = "departed"  # final: later fixes are ignored


class Rejection(enum.StrEnum):
    """Why a fix was not used."""

    INVALID = "invalid"  # coordinates not finite or off the globe
    OUT_OF_ORDER = "out_of_order"  # older than the last used fix
    REPEATED = "repeated"  # the same time as the last used fix (gpsd reports twice per cycle)
    MODE = "mode"  # below min_mode
    HDOP = "hdop"  # above max_hdop
    JUMP = "jump"  # unreachable from the last used fix


class EventKind(enum.StrEnum):
    ARRIVED = "arrived"
    DEPARTED = "departed"


@dataclass(frozen=True, slots=True)
class Geofence:
    """One stop of one job, watched for one vehicle."""

    vehicle_id: str
    job_id: str
    stop_kind: StopKind
    center: Location


@dataclass(frozen=True, slots=True)
class GeofenceEvent:
    """An arrival or departure; ``job_state`` is what the job becomes (None: unchanged)."""

    kind: EventKind
    vehicle_id: str
    job_id: str
    stop_kind: StopKind
    ts_wall_ns: int
    job_state: JobState | None
    evidence: Evidence


@dataclass(frozen=True, slots=True)
class _Anchor:
    ts_wall_ns: int
    lat_deg: float
    lon_deg: float


@dataclass(frozen=True, slots=True)
class GeofenceState:
    """Where the machine is. ``used``/``rejected``/``best_hdop`` cover the current episode
    (since the dwell or the departure began); ``rejections`` counts every rejection by reason."""

    phase: Phase = Phase.OUTSIDE
    last: _Anchor | None = None  # the last used fix
    suspect: _Anchor | None = None  # the last fix rejected as a jump
    first_inside_ns: int | None = None
    last_inside_ns: int | None = None
    first_outside_ns: int | None = None
    used: int = 0
    rejected: int = 0
    best_hdop: float | None = None
    rejections: tuple[tuple[Rejection, int], ...] = ()

    def rejected_by(self, reason: Rejection) -> int:
        return dict(self.rejections).get(reason, 0)


def fences_for(job: Job, vehicle_id: str) -> tuple[Geofence, ...]:
    """The geofences of a job's stops, in service order (pickup before delivery)."""
    return tuple(Geofence(vehicle_id, job.id, kind, stop.location) for kind, stop in job.stops())


def _plausible(a: _Anchor, b: _Anchor, max_speed_mps: float) -> bool:
    dt_s = (b.ts_wall_ns - a.ts_wall_ns) / _NS
    d_m = haversine_m(a.lat_deg, a.lon_deg, b.lat_deg, b.lon_deg)
    return dt_s > 0 and d_m / dt_s <= max_speed_mps


def _reachable(state: GeofenceState, here: _Anchor, max_speed_mps: float) -> bool:
    """From the last used fix, or from the last jump when this fix agrees with it."""
    if state.last is None or _plausible(state.last, here, max_speed_mps):
        return True
    return state.suspect is not None and _plausible(state.suspect, here, max_speed_mps)


def _check(state: GeofenceState, fix: Fix, s: GeofenceSettings) -> Rejection | None:
    """The reason to reject ``fix`` before looking at jumps, or None."""
    lat, lon = fix.lat_deg, fix.lon_deg
    if not (math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180):
        return Rejection.INVALID
    if state.last is not None and fix.ts_wall_ns < state.last.ts_wall_ns:
        return Rejection.OUT_OF_ORDER
    if state.last is not None and fix.ts_wall_ns == state.last.ts_wall_ns:
        return Rejection.REPEATED
    if fix.mode < s.min_mode:
        return Rejection.MODE
    if fix.hdop is not None and not fix.hdop <= s.max_hdop:  # NaN fails too
        return Rejection.HDOP
    return None


def _reject(state: GeofenceState, reason: Rejection, suspect: _Anchor | None) -> GeofenceState:
    counts = dict(state.rejections)
    counts[reason] = counts.get(reason, 0) + 1
    return replace(
        state,
        rejected=state.rejected + 1,
        suspect=suspect,
        rejections=tuple(sorted(counts.items())),
    )


def _episode(state: GeofenceState, phase: Phase, fix: Fix) -> GeofenceState:
    """Start a new dwell or departure episode at ``fix`` (counted as its first used fix)."""
    return replace(state, phase=phase, used=1, rejected=0, best_hdop=fix.hdop)


def _evidence(state: GeofenceState, fix: Fix, distance_m: float) -> Evidence:
    return {
        "fixes_used": state.used,
        "fixes_rejected": state.rejected,
        "best_hdop": state.best_hdop,
        "mode": int(fix.mode),
        "distance_m": round(distance_m, 1),
    }


def _seconds(later_ns: int, earlier_ns: int) -> float:
    return (later_ns - earlier_ns) / _NS


def _arrive(state: GeofenceState, fence: Geofence, fix: Fix, d: float) -> GeofenceEvent:
    assert state.first_inside_ns is not None
    evidence: Evidence = {
        "first_inside_ts_wall_ns": state.first_inside_ns,
        "dwell_s": round(_seconds(fix.ts_wall_ns, state.first_inside_ns), 3),
        **_evidence(state, fix, d),
    }
    return GeofenceEvent(
        EventKind.ARRIVED,
        fence.vehicle_id,
        fence.job_id,
        fence.stop_kind,
        fix.ts_wall_ns,
        JobState.ARRIVED,
        evidence,
    )


def _depart(
    state: GeofenceState, fence: Geofence, fix: Fix, d: float, s: GeofenceSettings
) -> GeofenceEvent:
    assert state.first_outside_ns is not None
    assert state.first_inside_ns is not None
    assert state.last_inside_ns is not None
    if fence.stop_kind is StopKind.PICKUP:
        job_state: JobState | None = JobState.EN_ROUTE  # loaded: on to the delivery
    else:
        job_state = JobState.COMPLETED if s.complete_on_departure else None
    evidence: Evidence = {
        "first_outside_ts_wall_ns": state.first_outside_ns,
        "outside_s": round(_seconds(fix.ts_wall_ns, state.first_outside_ns), 3),
        "dwell_s": round(_seconds(state.last_inside_ns, state.first_inside_ns), 3),
        **_evidence(state, fix, d),
    }
    return GeofenceEvent(
        EventKind.DEPARTED,
        fence.vehicle_id,
        fence.job_id,
        fence.stop_kind,
        fix.ts_wall_ns,
        job_state,
        evidence,
    )


def step(
    state: GeofenceState, fence: Geofence, fix: Fix, settings: GeofenceSettings
) -> tuple[GeofenceState, GeofenceEvent | None]:
    """Feed one fix; return the new state and the arrival or departure it fires, if any."""
    s = settings
    if state.phase is Phase.DEPARTED:
        return state, None
    reason = _check(state, fix, s)
    if reason is not None:
        return _reject(state, reason, state.suspect), None
    here = _Anchor(fix.ts_wall_ns, fix.lat_deg, fix.lon_deg)
    if not _reachable(state, here, s.max_jump_speed_mps):
        return _reject(state, Rejection.JUMP, here), None
    best = state.best_hdop
    if fix.hdop is not None and (best is None or fix.hdop < best):
        best = fix.hdop
    state = replace(state, last=here, suspect=None, used=state.used + 1, best_hdop=best)
    d = haversine_m(fence.center.lat, fence.center.lon, fix.lat_deg, fix.lon_deg)
    if state.phase is Phase.OUTSIDE or state.phase is Phase.DWELLING:
        return _approach(state, fence, fix, d, s)
    return _leave(state, fence, fix, d, s)


def _approach(
    state: GeofenceState, fence: Geofence, fix: Fix, d: float, s: GeofenceSettings
) -> tuple[GeofenceState, GeofenceEvent | None]:
    """OUTSIDE or DWELLING: start, continue, restart or complete the dwell."""
    t = fix.ts_wall_ns
    moving = (
        s.max_dwell_speed_mps is not None
        and fix.speed_mps is not None
        and fix.speed_mps > s.max_dwell_speed_mps
    )
    if moving or d > s.exit_radius_m:
        return replace(state, phase=Phase.OUTSIDE, first_inside_ns=None), None
    since = state.first_inside_ns
    if state.phase is Phase.OUTSIDE or since is None:
        if d > s.enter_radius_m:
            return state, None
        state, since = _episode(state, Phase.DWELLING, fix), t
    state = replace(state, first_inside_ns=since, last_inside_ns=t)
    if _seconds(t, since) < s.dwell_s or d > s.enter_radius_m:
        return state, None
    return replace(state, phase=Phase.ARRIVED), _arrive(state, fence, fix, d)


def _leave(
    state: GeofenceState, fence: Geofence, fix: Fix, d: float, s: GeofenceSettings
) -> tuple[GeofenceState, GeofenceEvent | None]:
    """ARRIVED or LEAVING: stay, start or cancel the departure, or complete it."""
    t = fix.ts_wall_ns
    if d <= s.exit_radius_m:  # still there, or back: the departure was jitter
        return replace(state, phase=Phase.ARRIVED, last_inside_ns=t, first_outside_ns=None), None
    since = state.first_outside_ns
    if state.phase is Phase.ARRIVED or since is None:
        state, since = _episode(state, Phase.LEAVING, fix), t
        state = replace(state, first_outside_ns=since)
    if _seconds(t, since) < s.depart_after_s:
        return state, None
    return replace(state, phase=Phase.DEPARTED), _depart(state, fence, fix, d, s)


class GeofenceTracker:
    """Keeps one geofence's state between the fixes of its vehicle, fed as they arrive."""

    def __init__(self, fence: Geofence, settings: GeofenceSettings | None = None) -> None:
        self.fence = fence
        self.settings = settings or GeofenceSettings()
        self.state = GeofenceState()

    def feed(self, fix: Fix) -> GeofenceEvent | None:
        self.state, event = step(self.state, self.fence, fix, self.settings)
        return event

    def feed_all(self, fixes: Iterable[Fix]) -> list[GeofenceEvent]:
        """Feed fixes in the given order; return the events they fired."""
        return [e for e in map(self.feed, fixes) if e is not None]
