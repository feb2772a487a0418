"""Bodies of the dispatch routes (jobs, job events, depots, drivers, vehicle dispatch profiles)
and their conversions to and from ``fleetlink_cloud.dispatch.model``.

Dispatch times (time windows, shifts, breaks) are integer Unix seconds, UTC (``*_unix_s``), the
resolution of the planner; the times a job was created, changed or logged are the cloud's clock
in ns (``*_wall_ns``) like everywhere else in the API. Demands and capacities are vectors of
non-negative integers in the fleet's own units, the same order for every job and vehicle.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from fleetlink_cloud.api.schemas import Out
from fleetlink_cloud.api.schemas_admin import ID_PATTERN, In
from fleetlink_cloud.dispatch.model import (
    Break,
    Depot,
    Driver,
    Job,
    JobState,
    Location,
    Shift,
    Stop,
    TimeWindow,
    VehicleProfile,
)
from fleetlink_cloud.jobs import Answer
from fleetlink_cloud.store.base import Actor, JobEventKind, JobEventRow, JobRow
from fleetlink_protocols.topics import DEVICE_ID_PATTERN

JOB_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
SKILL_PATTERN: Final = r"^[a-z0-9][a-z0-9_.-]{0,31}$"
REASON_PATTERN: Final = r"^[a-z][a-z0-9_.-]{0,63}$"
MAX_WINDOWS: Final = 8  # per stop or break
MAX_DIMENSIONS: Final = 8  # of a demand or capacity vector
MAX_SKILLS: Final = 32
MAX_SHIFTS: Final = 62  # a month of two shifts a day
MAX_BREAKS: Final = 4  # per shift
MAX_SERVICE_S: Final = 86_400
MAX_AMOUNT: Final = 1_000_000_000  # per dimension; well inside every solver's integer range
MAX_UNIX_S: Final = 253_402_300_799  # 9999-12-31T23:59:59Z
MAX_TEXT: Final = 500

UnixS = Annotated[int, Field(ge=0, le=MAX_UNIX_S, description="Unix seconds, UTC")]
VehicleId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN.pattern, max_length=64)]
ReasonText = Annotated[str, Field(max_length=MAX_TEXT, description="Free text for people")]


def _distinct(values: list[str]) -> list[str]:
    return sorted(set(values))


Skills = Annotated[
    list[Annotated[str, Field(pattern=SKILL_PATTERN, max_length=32)]],
    Field(max_length=MAX_SKILLS, description="Short tokens: a-z 0-9 _ . -, at most 32 chars"),
    AfterValidator(_distinct),
]
Amounts = Annotated[
    list[Annotated[int, Field(ge=0, le=MAX_AMOUNT)]],
    Field(max_length=MAX_DIMENSIONS, description="Non-negative integers, one per dimension"),
]


class Spec(BaseModel):
    """Shared by requests and responses: strict on input, the same shape on output."""

    model_config = ConfigDict(extra="forbid", frozen=True, from_attributes=True)


class GeoPoint(Spec):
    lat_deg: float = Field(ge=-90, le=90, allow_inf_nan=False)
    lon_deg: float = Field(ge=-180, le=180, allow_inf_nan=False)


class WindowSpec(Spec):
    """Service (or a break) may start from ``start_unix_s`` to ``end_unix_s``, inclusive."""

    start_unix_s: UnixS
    end_unix_s: UnixS

    @model_validator(mode="after")
    def _ordered(self) -> WindowSpec:
        if self.end_unix_s < self.start_unix_s:
            raise ValueError("a time window must not end before it starts")
        return self


Windows = Annotated[list[WindowSpec], Field(max_length=MAX_WINDOWS)]


class StopSpec(Spec):
    location: GeoPoint
    windows: Windows = Field(default_factory=list, description="Empty: any time within the shift")
    service_s: int = Field(default=0, ge=0, le=MAX_SERVICE_S, description="Time spent there")


class BreakSpec(Spec):
    windows: Annotated[list[WindowSpec], Field(min_length=1, max_length=MAX_WINDOWS)]
    duration_s: int = Field(ge=1, le=MAX_SERVICE_S)


class ShiftSpec(Spec):
    start_unix_s: UnixS
    end_unix_s: UnixS
    breaks: Annotated[list[BreakSpec], Field(max_length=MAX_BREAKS)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ordered(self) -> ShiftSpec:
        if self.end_unix_s < self.start_unix_s:
            raise ValueError("a shift must not end before it starts")
        return self


# -- jobs --------------------------------------------------------------------------------------


class JobIn(In):
    """A job: one stop, or a pickup and its delivery (``stop`` is then the delivery)."""

    id: str | None = Field(
        default=None, pattern=JOB_ID_PATTERN, description="Client-chosen id; default: generated"
    )
    stop: StopSpec = Field(description="The single stop, or the delivery of a pickup")
    pickup: StopSpec | None = None
    skills: Skills = Field(default_factory=list)
    demand: Amounts = Field(default_factory=list)
    priority: int = Field(default=0, ge=0, le=100, description="Higher is served first")
    customer_ref: str | None = Field(default=None, min_length=1, max_length=128)
    locked_vehicle_id: VehicleId | None = Field(
        default=None, description="Only this vehicle may have the job (a dispatcher lock)"
    )


class JobOut(Out):
    """A job, its state and vehicle. ``version`` is also its ETag (If-Match on changes)."""

    id: str
    state: JobState
    stop: StopSpec
    pickup: StopSpec | None
    skills: list[str]
    demand: list[int]
    priority: int
    customer_ref: str | None
    vehicle_id: str | None = Field(description="The vehicle it is offered or assigned to")
    locked_vehicle_id: str | None
    announced: bool = Field(description="An ETA was given to the customer")
    version: int
    created_wall_ns: int
    updated_wall_ns: int
    explanation: dict[str, Any] | None = Field(description="The assigner's latest explanation")
    unassigned_reasons: list[dict[str, Any]] = Field(description="Why no vehicle could take it")


class JobPage(Out):
    items: list[JobOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: done")


class JobEventOut(Out):
    """One entry of a job's log; ``from_state`` is null for its creation."""

    id: int
    job_id: str
    ts_wall_ns: int
    kind: JobEventKind
    from_state: JobState | None
    to_state: JobState
    reason: str = Field(description="A short code, e.g. driver_rejected")
    reason_text: str
    actor: Actor
    actor_id: str | None = Field(description="The token id of the dispatcher or driver app")
    vehicle_before: str | None
    vehicle_after: str | None
    evidence: dict[str, Any]


class JobEventList(Out):
    items: list[JobEventOut]


class CancelIn(In):
    reason: str = Field(default="cancelled", pattern=REASON_PATTERN, description="A short code")
    reason_text: ReasonText = ""


class LockIn(In):
    vehicle_id: VehicleId
    reason_text: ReasonText = ""


class AnnounceIn(In):
    """The ETA the customer was told (Unix s), for the record."""

    eta_unix_s: UnixS | None = None
    reason_text: ReasonText = ""


class AnswerIn(In):
    """A driver's answer. ``delayed`` changes no state and needs ``delay_s`` and a reason."""

    answer: Answer
    reason: ReasonText = ""
    delay_s: int | None = Field(default=None, ge=1, le=MAX_SERVICE_S)
    vehicle_id: VehicleId | None = Field(
        default=None, description="The answering vehicle; when given it must be the job's"
    )

    @model_validator(mode="after")
    def _delay(self) -> AnswerIn:
        if self.answer == "delayed" and (self.delay_s is None or not self.reason.strip()):
            raise ValueError("a delayed answer needs delay_s and a reason")
        if self.answer != "delayed" and self.delay_s is not None:
            raise ValueError("delay_s belongs to a delayed answer only")
        return self


def _window(w: WindowSpec) -> TimeWindow:
    return TimeWindow(w.start_unix_s, w.end_unix_s)


def _window_spec(w: TimeWindow) -> WindowSpec:
    return WindowSpec(start_unix_s=w.start, end_unix_s=w.end)


def _stop(s: StopSpec) -> Stop:
    where = Location(s.location.lat_deg, s.location.lon_deg)
    return Stop(where, tuple(_window(w) for w in s.windows), s.service_s)


def _stop_spec(s: Stop) -> StopSpec:
    return StopSpec(
        location=GeoPoint(lat_deg=s.location.lat, lon_deg=s.location.lon),
        windows=[_window_spec(w) for w in s.windows],
        service_s=s.service_s,
    )


def job_of(body: JobIn, job_id: str) -> Job:
    """The new job a request describes (state new, on no vehicle)."""
    return Job(
        id=job_id,
        stop=_stop(body.stop),
        pickup=None if body.pickup is None else _stop(body.pickup),
        skills=frozenset(body.skills),
        demand=tuple(body.demand),
        priority=body.priority,
        customer_ref=body.customer_ref,
        locked_vehicle_id=body.locked_vehicle_id,
    )


def job_out(row: JobRow) -> JobOut:
    job = row.job
    return JobOut(
        id=job.id,
        state=job.state,
        stop=_stop_spec(job.stop),
        pickup=None if job.pickup is None else _stop_spec(job.pickup),
        skills=sorted(job.skills),
        demand=list(job.demand),
        priority=job.priority,
        customer_ref=job.customer_ref,
        vehicle_id=job.vehicle_id,
        locked_vehicle_id=job.locked_vehicle_id,
        announced=job.announced,
        version=row.version,
        created_wall_ns=row.created_wall_ns,
        updated_wall_ns=row.updated_wall_ns,
        explanation=None if row.explanation is None else dict(row.explanation),
        unassigned_reasons=[dict(r) for r in row.unassigned_reasons],
    )


def job_event_out(e: JobEventRow) -> JobEventOut:
    return JobEventOut(
        id=e.id,
        job_id=e.job_id,
        ts_wall_ns=e.ts_wall_ns,
        kind=e.kind,
        from_state=e.from_state,
        to_state=e.to_state,
        reason=e.reason_code,
        reason_text=e.reason_text,
        actor=e.actor,
        actor_id=e.actor_id,
        vehicle_before=e.vehicle_before,
        vehicle_after=e.vehicle_after,
        evidence=dict(e.evidence),
    )


# -- depots, drivers, vehicle dispatch profiles ------------------------------------------------


class DepotIn(In):
    name: str = Field(default="", max_length=100)
    location: GeoPoint


class DepotOut(Out):
    id: str
    name: str
    location: GeoPoint


class DepotList(Out):
    items: list[DepotOut]


def depot_of(depot_id: str, body: DepotIn) -> Depot:
    return Depot(depot_id, Location(body.location.lat_deg, body.location.lon_deg), body.name)


def depot_out(d: Depot) -> DepotOut:
    where = GeoPoint(lat_deg=d.location.lat, lon_deg=d.location.lon)
    return DepotOut(id=d.id, name=d.name, location=where)


class DriverIn(In):
    name: str = Field(min_length=1, max_length=100)
    skills: Skills = Field(
        default_factory=list, description="Added to the vehicle's while driving it"
    )


class DriverOut(Out):
    id: str
    name: str
    skills: list[str]


class DriverList(Out):
    items: list[DriverOut]


def driver_of(driver_id: str, body: DriverIn) -> Driver:
    return Driver(driver_id, body.name, frozenset(body.skills))


def driver_out(d: Driver) -> DriverOut:
    return DriverOut(id=d.id, name=d.name, skills=sorted(d.skills))


class DispatchProfileIn(In):
    """How dispatch may use a vehicle. No shifts: always on shift; no depot: an open route."""

    skills: Skills = Field(default_factory=list)
    capacity: Amounts = Field(default_factory=list)
    depot_id: str | None = Field(default=None, pattern=ID_PATTERN)
    shifts: Annotated[list[ShiftSpec], Field(max_length=MAX_SHIFTS)] = Field(default_factory=list)
    driver_id: str | None = Field(default=None, pattern=ID_PATTERN)
    dispatchable: bool = Field(default=True, description="False: never offered work")


class DispatchProfileOut(Out):
    vehicle_id: str
    skills: list[str]
    capacity: list[int]
    depot_id: str | None
    shifts: list[ShiftSpec]
    driver_id: str | None
    dispatchable: bool
    stored: bool = Field(description="False: none was set, these are the defaults")


def profile_of(vehicle_id: str, body: DispatchProfileIn) -> VehicleProfile:
    shifts = tuple(
        Shift(
            s.start_unix_s,
            s.end_unix_s,
            tuple(Break(tuple(_window(w) for w in b.windows), b.duration_s) for b in s.breaks),
        )
        for s in body.shifts
    )
    return VehicleProfile(
        id=vehicle_id,
        skills=frozenset(body.skills),
        capacity=tuple(body.capacity),
        depot_id=body.depot_id,
        shifts=shifts,
        driver_id=body.driver_id,
        dispatchable=body.dispatchable,
    )


def profile_out(p: VehicleProfile, *, stored: bool) -> DispatchProfileOut:
    shifts = [
        ShiftSpec(
            start_unix_s=s.start,
            end_unix_s=s.end,
            breaks=[
                BreakSpec(windows=[_window_spec(w) for w in b.windows], duration_s=b.duration_s)
                for b in s.breaks
            ],
        )
        for s in p.shifts
    ]
    return DispatchProfileOut(
        vehicle_id=p.id,
        skills=sorted(p.skills),
        capacity=list(p.capacity),
        depot_id=p.depot_id,
        shifts=shifts,
        driver_id=p.driver_id,
        dispatchable=p.dispatchable,
        stored=stored,
    )
