"""The live dispatcher's picture of the fleet: each vehicle's state and route, each open job's
dispatch history. Pure: the dispatcher feeds it from the store and the stream and does the I/O.

A vehicle's route is the list of its remaining stops in service order. The job's state decides
what the route holds (:func:`reconcile`): a job on the vehicle has its remaining stops there; a
job ``arrived`` has the stop it is at first and ``started``; a started stop of a job no longer
``arrived`` is done and leaves (a pickup, once the vehicle drove on). Deriving the route from
the state, not from the order of events, makes every update idempotent: a replayed or late
stream event changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from fleetlink_cloud.dispatch.eta import RouteEta, StopEta
from fleetlink_cloud.dispatch.geofence import GeofenceTracker
from fleetlink_cloud.dispatch.insertion import route_stops
from fleetlink_cloud.dispatch.model import (
    Job,
    JobState,
    Location,
    RouteStop,
    StopKind,
    VehicleProfile,
    VehicleRoute,
)
from fleetlink_cloud.dispatch.rules import (
    FaultSettings,
    JobSnapshot,
    RuleSettings,
    Snapshot,
    VehicleSnapshot,
    fault_evidence,
)
from fleetlink_cloud.dispatch.slack import Candidate, Prepared
from fleetlink_cloud.store.base import DtcState, JobEventRow, PlannedStop
from fleetlink_protocols.records import Position

NS: Final = 1_000_000_000
StopKey = tuple[str, StopKind]
MOVED_REASONS: Final = frozenset({"reallocated", "replan", "batch_plan"})  # moves, at start
_ACCEPTED: Final = frozenset({JobState.ASSIGNED, JobState.EN_ROUTE, JobState.ARRIVED})


@dataclass(eq=False)
class VehicleLive:
    """What the dispatcher knows of one vehicle now. ``prepared`` caches the route walked for
    instant assignment; anything that changes the route or the vehicle's state drops it."""

    id: str
    profile: VehicleProfile
    online: bool = False
    disabled: bool = False
    last_seen_s: int | None = None  # cloud clock
    fix: Position | None = None  # the newest usable fix (2D or 3D), device clock
    mil_on: bool | None = None
    dtcs: tuple[DtcState, ...] = ()  # active codes
    fuel_pct: float | None = None
    stops: list[RouteStop] = field(default_factory=list)
    eta: RouteEta | None = None  # the latest walk of the route
    eta_at_s: float = -math.inf  # when it was made (cloud clock)
    reported: dict[StopKey, StopEta] = field(default_factory=dict)  # last announced arrivals
    prepared: Prepared | None = None
    trackers: dict[StopKey, GeofenceTracker] = field(default_factory=dict)

    def changed(self) -> None:
        """The route or the vehicle's state changed: prepare it again when next needed."""
        self.prepared = None

    def snapshot(self) -> VehicleSnapshot:
        return VehicleSnapshot(
            id=self.id,
            online=self.online and not self.disabled,
            last_seen=self.last_seen_s,
            mil_on=self.mil_on,
            dtcs=self.dtcs,
            fuel_pct=self.fuel_pct,
            shifts=self.profile.shifts,
        )

    def route(self, skip_job: str | None = None) -> VehicleRoute | None:
        """The remaining route from the last fix (None without one), ``skip_job`` left out."""
        if self.fix is None:
            return None
        stops = [s for s in self.stops if s.job_id != skip_job]
        return VehicleRoute(
            self.id,
            Location(self.fix.lat_deg, self.fix.lon_deg),
            self.fix.ts_wall_ns // NS,
            tuple(stops),
            on_board(stops),
        )

    def job_ids(self) -> list[str]:
        """The jobs on the route, by their first remaining stop."""
        return list(dict.fromkeys(s.job_id for s in self.stops))

    def planned(self) -> tuple[PlannedStop, ...]:
        """The route with its latest ETAs, as the store keeps it."""
        by_stop = self.eta.by_stop() if self.eta is not None else {}
        out = []
        for s in self.stops:
            e = by_stop.get((s.job_id, s.kind))
            if e is None:
                out.append(PlannedStop(s))
            else:
                out.append(PlannedStop(s, e.arrival, e.early, e.late, e.lateness_s))
        return tuple(out)

    def candidate(
        self,
        rules: RuleSettings,
        *,
        driver_skills: frozenset[str] = frozenset(),
        end: Location | None = None,
        skip_job: str | None = None,
    ) -> Candidate:
        return Candidate(
            profile=self.profile,
            route=self.route(skip_job),
            online=self.online and not self.disabled,
            fault=faulted(self.snapshot(), rules.fault),
            driver_skills=driver_skills,
            end=end,
        )


@dataclass(eq=False)
class JobLive:
    """An open job and its dispatch history (what the rules need beside the job)."""

    job: Job
    version: int
    offer_sent_s: int | None = None  # cloud clock of the latest offer
    offer_version: int | None = None  # the version the latest offer carried
    last_moved_s: int | None = None
    moves: int = 0
    eta_update_at_s: float = -math.inf  # the last update_job sent to the vehicle
    unassigned: tuple[str, ...] | None = None  # the reasons last announced as job.unassigned

    @classmethod
    def from_events(cls, job: Job, version: int, events: Iterable[JobEventRow]) -> JobLive:
        """Rebuild the history from the job's event log (at start)."""
        live = cls(job, version)
        for e in events:
            if e.kind != "transition":
                continue
            if e.to_state is JobState.OFFERED:
                live.offer_sent_s = e.ts_wall_ns // NS
            if e.reason_code in MOVED_REASONS:
                live.moves += 1
                live.last_moved_s = e.ts_wall_ns // NS
        if job.state is JobState.OFFERED:
            live.offer_version = version
        return live


def on_board(stops: Sequence[RouteStop]) -> tuple[int, ...]:
    """What the vehicle carries now: the demand of deliveries whose pickup is done."""
    pickups = {s.job_id for s in stops if s.kind is StopKind.PICKUP}
    load: list[int] = []
    for s in stops:
        if s.kind is StopKind.DELIVERY and s.job_id not in pickups:
            load += [0] * (len(s.demand) - len(load))
            for i, d in enumerate(s.demand):
                load[i] += abs(d)
    return tuple(load)


def without_job(stops: Sequence[RouteStop], job_id: str) -> list[RouteStop]:
    return [s for s in stops if s.job_id != job_id]


def reconcile(stops: Sequence[RouteStop], job: Job, arrival_s: int) -> list[RouteStop]:
    """The route of the job's vehicle made to agree with the job's state (see the module
    docstring); ``arrival_s``: when the vehicle reached a stop this call marks started."""
    if not job.state.with_vehicle:
        return without_job(stops, job.id)
    own = [s for s in stops if s.job_id == job.id]
    if not own:  # on the vehicle, not yet on its route: at the end
        return [*stops, *route_stops(job)]
    if job.state is not JobState.ARRIVED:
        if all(s.started for s in own):  # moved back from arrived: the stop is still to do
            return [replace(s, started=False) if s.job_id == job.id else s for s in stops]
        return [s for s in stops if not (s.job_id == job.id and s.started)]
    first = own[0]
    if first.started and stops[0] == first:
        return list(stops)
    here = first if first.started else replace(first, started=True, arrival=arrival_s)
    # The stop the vehicle is at comes first: nothing is served before it.
    return [here, *(s for s in stops if s != first)]


def faulted(vehicle: VehicleSnapshot, settings: FaultSettings) -> bool:
    """Whether the fault rule holds for the vehicle (a critical fault: keep new work off it)."""
    return settings.enabled and fault_evidence(vehicle, settings) is not None


def job_snapshot(live: JobLive, vehicle: VehicleLive | None) -> JobSnapshot:
    """What the rules see of a job on ``vehicle``: its predicted service starts, whether its
    goods are on board, its offer and move history."""
    eta: dict[StopKind, int] = {}
    on_vehicle = vehicle is not None and any(s.job_id == live.job.id for s in vehicle.stops)
    if vehicle is not None and vehicle.eta is not None:
        for e in vehicle.eta.stops:
            if e.job_id == live.job.id:
                eta[e.kind] = e.service_start
    loaded = False
    if live.job.is_shipment and vehicle is not None and on_vehicle:
        kinds = {s.kind for s in vehicle.stops if s.job_id == live.job.id}
        loaded = StopKind.PICKUP not in kinds
    return JobSnapshot(
        job=live.job,
        eta=eta,
        on_board=loaded,
        offer_sent=live.offer_sent_s if live.job.state is JobState.OFFERED else None,
        last_moved=live.last_moved_s,
        moves=live.moves,
    )


def snapshot(now_s: int, vehicles: Mapping[str, VehicleLive], jobs: Iterable[JobLive]) -> Snapshot:
    """The rules' view of the fleet now."""
    open_jobs = tuple(
        job_snapshot(j, vehicles.get(j.job.vehicle_id or ""))
        for j in jobs
        if j.job.state.with_vehicle
    )
    return Snapshot(now_s, tuple(v.snapshot() for v in vehicles.values()), open_jobs)


def accepted(job: Job) -> bool:
    """The driver took the job on (or it was assigned without an offer)."""
    return job.state in _ACCEPTED
