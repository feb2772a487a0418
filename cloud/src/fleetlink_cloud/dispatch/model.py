"""The dispatch domain: jobs, their state machine, vehicles' dispatch profiles, depots. No I/O.

Times are integer Unix seconds (UTC), the resolution of every solver and router used here;
locations are WGS84 degrees. A job is a single stop, or a pickup and its delivery (a
"shipment"); each stop has one or more time windows in which its service must *start*.
Capacities and demands are vectors of non-negative integers of the same length per fleet
(e.g. ``(kg, pallets)``); a vehicle with a shorter vector has zero of the missing dimensions.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from fleetlink_cloud.errors import CloudError


class DispatchError(CloudError):
    """Base of the dispatch errors."""


class InvalidTransition(DispatchError, ValueError):
    """A job was asked to move to a state its current state cannot reach."""

    def __init__(self, job_id: str, current: JobState, wanted: JobState) -> None:
        super().__init__(f"job {job_id!r} is {current.value}; it cannot become {wanted.value}")
        self.job_id = job_id
        self.current = current
        self.wanted = wanted


class JobState(enum.StrEnum):
    NEW = "new"  # created, not yet given to a vehicle (also: unassigned, with reasons)
    OFFERED = "offered"  # offered to a vehicle's driver, no answer yet
    ASSIGNED = "assigned"  # accepted (or assigned without an offer round)
    EN_ROUTE = "en_route"  # the vehicle is driving to it (the next stop of its route)
    ARRIVED = "arrived"  # the vehicle is at the stop (geofence + dwell, or the driver said so)
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def started(self) -> bool:
        """Work has begun at the stop: a re-plan must not move it."""
        return self is JobState.ARRIVED

    @property
    def with_vehicle(self) -> bool:
        """The job is on a vehicle's route (offered, assigned, en route or arrived)."""
        return self in _WITH_VEHICLE


_TERMINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})
_WITH_VEHICLE = frozenset(
    {JobState.OFFERED, JobState.ASSIGNED, JobState.EN_ROUTE, JobState.ARRIVED}
)

# Every allowed move. Back to NEW is how a reallocation or a rejected offer takes a job off
# a vehicle; ASSIGNED -> ASSIGNED (another vehicle) is a direct reassignment.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.NEW: frozenset({JobState.OFFERED, JobState.ASSIGNED, JobState.CANCELLED}),
    JobState.OFFERED: frozenset(
        {JobState.ASSIGNED, JobState.NEW, JobState.OFFERED, JobState.CANCELLED}
    ),
    JobState.ASSIGNED: frozenset(
        {
            JobState.EN_ROUTE,
            JobState.ARRIVED,
            JobState.NEW,
            JobState.OFFERED,
            JobState.ASSIGNED,
            JobState.FAILED,
            JobState.CANCELLED,
        }
    ),
    JobState.EN_ROUTE: frozenset(
        {
            JobState.ARRIVED,
            JobState.ASSIGNED,
            JobState.NEW,
            JobState.OFFERED,
            JobState.FAILED,
            JobState.CANCELLED,
        }
    ),
    JobState.ARRIVED: frozenset({JobState.COMPLETED, JobState.FAILED, JobState.EN_ROUTE}),
    JobState.COMPLETED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


def check_transition(job_id: str, current: JobState, wanted: JobState) -> None:
    """Raise :class:`InvalidTransition` unless ``current -> wanted`` is allowed."""
    if wanted not in TRANSITIONS[current]:
        raise InvalidTransition(job_id, current, wanted)


class Reason(enum.StrEnum):
    """Why a vehicle cannot take a job (instant assignment's exclusions, unassigned jobs)."""

    OFFLINE = "offline"  # no live presence
    NO_POSITION = "no_position"  # online but no usable fix yet
    OFF_SHIFT = "off_shift"  # no shift covers the job
    SKILLS = "skills"  # lacks a required skill
    CAPACITY = "capacity"  # spare capacity short in some dimension along the route
    WINDOW_VS_SHIFT = "window_vs_shift"  # cannot reach a window before it closes, within shift
    TOO_FAR = "too_far"  # beyond the configured maximum detour / distance
    LOCKED = "locked"  # a dispatcher locked the job to another vehicle
    FAULT = "fault"  # the vehicle has a critical fault (MIL, red stop lamp, listed DTC)
    NO_VEHICLES = "no_vehicles"  # the fleet has no dispatchable vehicle at all
    NOT_DISPATCHABLE = "not_dispatchable"  # the profile says never offer it work (workshop)
    DECLINED = "declined"  # its driver rejected this job before
    CURRENT = "current"  # the vehicle a reallocation moves the job away from


@dataclass(frozen=True, slots=True)
class Location:
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Service may start at ``start`` and no later than ``end`` (inclusive, Unix seconds)."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"time window ends ({self.end}) before it starts ({self.start})")


@dataclass(frozen=True, slots=True)
class Stop:
    """Where and when a job's vehicle must be, and for how long."""

    location: Location
    windows: tuple[TimeWindow, ...] = ()  # empty: any time within the vehicle's shift
    service_s: int = 0


class StopKind(enum.StrEnum):
    SINGLE = "single"
    PICKUP = "pickup"
    DELIVERY = "delivery"


@dataclass(frozen=True, slots=True)
class Job:
    """A job as dispatch sees it. ``pickup`` is None for a single stop (then ``stop`` is it)."""

    id: str
    stop: Stop  # the single stop, or the delivery of a shipment
    pickup: Stop | None = None
    skills: frozenset[str] = frozenset()
    demand: tuple[int, ...] = ()
    priority: int = 0  # 0..100; higher is served first when not everything fits
    customer_ref: str | None = None
    state: JobState = JobState.NEW
    vehicle_id: str | None = None  # the vehicle it is offered/assigned to, if any
    locked_vehicle_id: str | None = None  # a dispatcher lock: only this vehicle may have it
    announced: bool = False  # an ETA was given to the customer: re-plans keep it where it is

    @property
    def is_shipment(self) -> bool:
        return self.pickup is not None

    def stops(self) -> tuple[tuple[StopKind, Stop], ...]:
        if self.pickup is None:
            return ((StopKind.SINGLE, self.stop),)
        return ((StopKind.PICKUP, self.pickup), (StopKind.DELIVERY, self.stop))


@dataclass(frozen=True, slots=True)
class Break:
    """A driver break: ``duration_s`` long, starting within one of ``windows``."""

    windows: tuple[TimeWindow, ...]
    duration_s: int


@dataclass(frozen=True, slots=True)
class Shift:
    start: int
    end: int
    breaks: tuple[Break, ...] = ()

    def covers(self, t: int) -> bool:
        return self.start <= t <= self.end


@dataclass(frozen=True, slots=True)
class Depot:
    id: str
    location: Location
    name: str = ""


@dataclass(frozen=True, slots=True)
class VehicleProfile:
    """A vehicle's dispatch settings (the device id is the vehicle id)."""

    id: str
    skills: frozenset[str] = frozenset()
    capacity: tuple[int, ...] = ()
    depot_id: str | None = None  # where its shift starts and ends (None: open route)
    shifts: tuple[Shift, ...] = ()  # empty: always on shift
    driver_id: str | None = None
    dispatchable: bool = True  # False: never offered work (workshop, reserve)

    def shift_at(self, t: int) -> Shift | None:
        """The shift that covers ``t``, or a synthetic always-on one when none are defined."""
        if not self.shifts:
            return Shift(start=0, end=2**62)
        return next((s for s in self.shifts if s.covers(t)), None)


UNLIMITED = 2**50  # a default profile's capacity per dimension (VROOM amounts are int64)
MAX_DIMENSIONS = 8  # capacity and demand vectors have at most this many dimensions (API limit)


def default_profile(vehicle_id: str, dims: int = MAX_DIMENSIONS) -> VehicleProfile:
    """A vehicle without a stored profile: always on shift, no skills, no capacity limit."""
    return VehicleProfile(vehicle_id, capacity=(UNLIMITED,) * dims)


@dataclass(frozen=True, slots=True)
class Driver:
    id: str
    name: str
    skills: frozenset[str] = frozenset()  # added to the vehicle's while this driver drives it


@dataclass(frozen=True, slots=True)
class RouteStop:
    """One planned stop on a vehicle's route: which job, which of its stops, when."""

    job_id: str
    kind: StopKind
    location: Location
    windows: tuple[TimeWindow, ...] = ()
    service_s: int = 0
    demand: tuple[int, ...] = ()  # picked up (+) at a pickup, dropped (-) at a delivery
    arrival: int | None = None  # planned arrival (Unix seconds)
    started: bool = False  # the vehicle is there / work begun: fixed in any re-plan


@dataclass(frozen=True, slots=True)
class VehicleRoute:
    """A vehicle's remaining route from its live position (``origin`` at ``origin_time``)."""

    vehicle_id: str
    origin: Location
    origin_time: int
    stops: tuple[RouteStop, ...] = ()
    load: tuple[int, ...] = field(default=())  # on board now (picked-up shipments)


def fits(demand: Sequence[int], spare: Sequence[int]) -> bool:
    """True if ``demand`` fits ``spare`` in every dimension (missing dimensions are zero)."""
    n = max(len(demand), len(spare))
    d = (*demand, *(0,) * (n - len(demand)))
    s = (*spare, *(0,) * (n - len(spare)))
    return all(a <= b for a, b in zip(d, s, strict=True))


# What a dispatch decision shows as its reason (geofence events, rule firings, audit records):
# flat and JSON-ready, so it goes into an event, a webhook or an audit row as it is.
EvidenceValue = int | float | str | bool | list[str] | None
Evidence = dict[str, EvidenceValue]
