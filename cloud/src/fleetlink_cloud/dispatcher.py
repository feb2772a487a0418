"""The live dispatcher: instant assignment, offers and answers, live ETAs, geofence status and
reallocation, in the running service. The decisions are ``dispatch.*``; this module does I/O.

``Dispatcher`` keeps the fleet's live picture (``live.fleet``): profiles, presence, last good
fix, active faults, fuel, every vehicle's route. It loads it from the store at start (routes
from ``vehicle_routes``, so a restart resumes them) and keeps it current from the stream:

- ``assign`` is ``JobService``'s hook (``self.jobs``): a new or rejected job goes to the
  cheapest vehicle (offered, or assigned when ``offers`` is off, with an ``offer_job`` command
  either way so the driver's board shows it); nobody: it stays ``new`` with a
  ``job.unassigned`` event naming the reasons. Vehicles whose driver rejected the job are
  excluded (``declined``).
- A ``job.answer`` event from a vehicle goes through ``JobService.answer``
  (:mod:`fleetlink_cloud.answers`); a repeated answer counts once.
- Positions feed the learned speeds and :class:`~fleetlink_cloud.tracking.Tracking`: the
  geofence of each accepted job's next stop, the en-route check, the ETA walk.
- Every ``rules_interval_s``: profiles refresh, ETAs age, the reallocation rules run
  (:mod:`fleetlink_cloud.reallocation`), unassigned jobs are tried again.

One lock serialises every change of routes and jobs; it is never held across a ``JobService``
call that runs the hook (create, a reject, a lock change). A failure while handling one event
or job is logged and counted; the loop goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

from fleetlink_cloud.answers import Answers
from fleetlink_cloud.assigner import Assigner
from fleetlink_cloud.bus import EventBus, StreamEvent, make_filter
from fleetlink_cloud.commands import CommandService
from fleetlink_cloud.dispatch.model import (
    JobState,
    Location,
    RouteStop,
    default_profile,
)
from fleetlink_cloud.dispatch.routing import Router, TravelModel, builtin_model, open_router
from fleetlink_cloud.dispatch.rules import FUEL_PATHS, MIL_PATH, Firing
from fleetlink_cloud.dispatch.settings import DispatchSettings
from fleetlink_cloud.dispatch.speeds import SpeedLearner
from fleetlink_cloud.errors import CloudError
from fleetlink_cloud.jobs import JobService
from fleetlink_cloud.live.fleet import (
    NS,
    JobLive,
    VehicleLive,
    faulted,
    reconcile,
    snapshot,
    without_job,
)
from fleetlink_cloud.reallocation import Moved, Reallocation
from fleetlink_cloud.replan import ApplyResult, Replan
from fleetlink_cloud.store.base import JobRow, RouteRow, Store
from fleetlink_cloud.tracking import Tracking, position_of

log = logging.getLogger(__name__)

STREAM_TYPES: Final = frozenset(
    {
        "position",
        "vehicle.online",
        "vehicle.offline",
        "dtc.raised",
        "dtc.cleared",
        "signal",
        "event",
        "job.state_changed",
        "job.updated",
    }
)
QUEUE_SIZE: Final = 20_000  # stream events waiting for the dispatcher (oldest dropped, counted)
OPEN_STATES: Final = (
    JobState.NEW,
    JobState.OFFERED,
    JobState.ASSIGNED,
    JobState.EN_ROUTE,
    JobState.ARRIVED,
)
RETRY_BATCH: Final = 100  # unassigned jobs tried again per rules round
FINISHED_KEPT: Final = 10_000  # finished jobs remembered, so late news cannot revive them
Evidence = Mapping[str, Any]


class Dispatcher:
    """The fleet's live dispatch; ``run(bus)`` until cancelled. ``jobs`` is the JobService to
    give the API (its assigner is :meth:`assign`)."""

    def __init__(
        self,
        store: Store,
        commands: CommandService,
        settings: DispatchSettings,
        *,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._store = store
        self._commands = commands
        self.settings = settings
        self._clock = clock
        self.jobs = JobService(store, clock=clock, assign=self.assign)
        self.vehicles: dict[str, VehicleLive] = {}
        self.open: dict[str, JobLive] = {}  # every job not finished, by id
        self._finished: OrderedDict[str, int] = OrderedDict()  # recently finished: version
        self.depots: dict[str, Location] = {}
        self.driver_skills: dict[str, frozenset[str]] = {}
        self.learner = SpeedLearner(settings.speeds)
        self.model: TravelModel = builtin_model(settings.router)
        self.router: Router | None = None
        self._speeds_at_s: float = clock() / NS
        self.lock = asyncio.Lock()
        self._load_lock = asyncio.Lock()
        self._loaded = False
        self.counters: Counter[str] = Counter()
        self.tracking = Tracking(self)
        self.assigner = Assigner(self)
        self.answers = Answers(self)
        self.reallocation = Reallocation(store, settings.rules, self._reallocate, clock)

    # -- clock, lookups ------------------------------------------------------------------------

    def now_s(self) -> int:
        return self._clock() // NS

    def now_ns(self) -> int:
        return self._clock()

    @property
    def store(self) -> Store:
        return self._store

    def vehicle(self, vehicle_id: str) -> VehicleLive:
        """The vehicle's live state (a vehicle first heard of gets the default profile)."""
        v = self.vehicles.get(vehicle_id)
        if v is None:
            v = self.vehicles[vehicle_id] = VehicleLive(vehicle_id, default_profile(vehicle_id))
        return v

    def end_of(self, v: VehicleLive) -> Location | None:
        """Where the vehicle's route must end: its home depot, if it has one."""
        depot = v.profile.depot_id
        return None if depot is None else self.depots.get(depot)

    # -- start, refresh ------------------------------------------------------------------------

    async def ready(self) -> None:
        """Load the fleet and the open jobs once (``run`` does; the hook may come first)."""
        async with self._load_lock:
            if not self._loaded:
                await self._load()
                self._loaded = True

    async def _load(self) -> None:
        await self.refresh_fleet()
        for state in await self._store.vehicles():
            v = self.vehicle(state.device.id)
            seen = state.presence.last_seen_wall_ns
            v.online, v.last_seen_s = state.presence.online, None if seen is None else seen // NS
            if state.position is not None and state.position.mode >= 2:
                v.fix = position_of(state.position)
            v.dtcs = tuple(d for d in state.active_dtcs if d.active)
            for sig in state.signals.values():
                self._signal(v, sig.path, sig.value)
        for route in await self._store.list_vehicle_routes():
            v = self.vehicle(route.vehicle_id)
            v.stops = [p.stop for p in route.stops]
            v.reported = self.tracking.reported_of(route.stops)
        rows: list[JobRow] = []
        cursor = None
        while True:
            page = await self._store.list_jobs(states=OPEN_STATES, limit=1000, cursor=cursor)
            rows += page.items
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        for row in rows:
            events = await self._store.job_events(row.job.id)
            self.open[row.job.id] = JobLive.from_events(row.job, row.version, events)
        async with self.lock:
            for v in self.vehicles.values():  # finished or moved while this service was down
                kept = [s for s in v.stops if self._belongs(s.job_id, v.id)]
                if kept != v.stops:
                    v.stops = kept
                    await self.save_route(v)
            for row in rows:
                await self.sync(row)
            for v in self.vehicles.values():
                self.tracking.follow(v)
        log.info("dispatch: %d vehicles, %d open jobs", len(self.vehicles), len(self.open))

    def _belongs(self, job_id: str, vehicle_id: str) -> bool:
        live = self.open.get(job_id)
        return live is not None and live.job.vehicle_id == vehicle_id

    async def refresh_fleet(self) -> None:
        """Devices, dispatch profiles, depots and drivers again (they change through the API)."""
        profiles = {p.id: p for p in await self._store.list_vehicle_profiles()}
        self.depots = {d.id: d.location for d in await self._store.list_depots()}
        self.driver_skills = {d.id: d.skills for d in await self._store.list_drivers()}
        for device in await self._store.list_devices():
            v = self.vehicle(device.id)
            profile = profiles.get(device.id) or default_profile(device.id)
            if profile != v.profile or device.disabled != v.disabled:
                v.profile, v.disabled = profile, device.disabled
                v.changed()

    # -- the loop ------------------------------------------------------------------------------

    async def run(self, bus: EventBus) -> None:
        """Follow the stream and run the rules until cancelled (or the bus closes)."""
        key, sub = bus.subscribe(make_filter(None, set(STREAM_TYPES)), maxsize=QUEUE_SIZE)
        if self.settings.router.kind != "builtin":
            self.router = open_router(self.settings.router)
        ticker: asyncio.Task[None] | None = None
        try:
            await self.ready()
            ticker = asyncio.create_task(self._tick_forever(), name="dispatch-rules")
            async for event in sub:
                await self._guarded(self.on_event(event), event.type)
                self.counters["stream_dropped"] = sub.dropped
        finally:
            bus.unsubscribe(key)
            if ticker is not None:
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)
            if self.router is not None:
                await self.router.aclose()

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.rules_interval_s)
            await self._guarded(self.tick(), "rules round")

    async def _guarded(self, work: Awaitable[object], what: str) -> None:
        """One unit of work; any failure is logged and counted, never ends the loop."""
        try:
            await work
        except Exception:
            self.counters["errors"] += 1
            log.exception("dispatch: %s failed", what)

    async def on_event(self, event: StreamEvent) -> None:
        """Apply one stream event (see ``STREAM_TYPES``)."""
        kind, device = event.type, event.device_id
        if kind == "position":
            await self.tracking.on_position(self.vehicle(device), event)
        elif kind == "signal":
            self._signal(self.vehicle(device), str(event.data.get("path")), event.data.get("value"))
        elif kind in ("dtc.raised", "dtc.cleared"):
            v = self.vehicle(device)
            v.dtcs = tuple(d for d in await self._store.dtc_states(device) if d.active)
            v.changed()
        elif kind in ("vehicle.online", "vehicle.offline"):
            v = self.vehicle(device)
            v.online = kind == "vehicle.online"
            presence = await self._store.presence(device)
            seen = None if presence is None else presence.last_seen_wall_ns
            v.last_seen_s = event.ts_wall_ns // NS if seen is None else seen // NS
            v.changed()
        elif kind == "event" and event.data.get("kind") == "job.answer":
            await self.answers.on_answer(device, event.data.get("data") or {})
        elif kind in ("job.state_changed", "job.updated"):
            await self._on_job_event(event)

    def _signal(self, v: VehicleLive, path: str, value: object) -> None:
        if path == MIL_PATH and isinstance(value, bool) and value != v.mil_on:
            v.mil_on = value
            v.changed()
        elif path in FUEL_PATHS and isinstance(value, int | float) and not isinstance(value, bool):
            v.fuel_pct = float(value)

    async def _on_job_event(self, event: StreamEvent) -> None:
        """A job changed (by anyone): its routes follow; a cancelled job leaves its vehicle's
        board (the dispatcher never cancels, so this is always someone else's change)."""
        job_id, version = str(event.data.get("job_id")), event.data.get("version")
        before = event.data.get("vehicle_before")
        if event.data.get("to_state") == JobState.CANCELLED.value and isinstance(before, str):
            what = {"job_id": job_id, "reason": "cancelled"}
            await self.send(before, "withdraw_job", what, key=f"withdraw_job:{job_id}:{version}")
        live = self.open.get(job_id)
        if live is not None and isinstance(version, int) and version <= live.version:
            return  # applied already (this service wrote it)
        row = await self._store.get_job(job_id)
        if row is not None:
            async with self.lock:
                await self.sync(row)

    # -- assignment ----------------------------------------------------------------------------

    async def assign(self, row: JobRow) -> None:
        """``JobService``'s hook, after a job was created, rejected or its lock changed: a new
        job gets a vehicle; one whose new lock names another vehicle moves to it."""
        if not self.settings.enabled:
            return
        await self.ready()
        async with self.lock:
            current = await self._store.get_job(row.job.id) or row
            job = current.job
            if job.state is JobState.NEW:
                await self.assigner.place(current, reason="instant_assignment", actor="system")
            elif (
                job.state.with_vehicle
                and not job.state.started
                and job.vehicle_id is not None
                and job.locked_vehicle_id not in (None, job.vehicle_id)
            ):
                away = {job.vehicle_id: {"locked_vehicle_id": job.locked_vehicle_id}}
                await self.assigner.place(current, reason="lock_changed", actor="system", away=away)
            else:
                await self.sync(current)

    # -- keeping routes in step with jobs --------------------------------------------------------

    def track(self, row: JobRow) -> JobLive:
        """The job's live record, updated to ``row`` unless it is older."""
        live = self.open.get(row.job.id)
        if live is None:
            live = JobLive(row.job, row.version)
            if not row.job.state.terminal:
                self.open[row.job.id] = live
        elif row.version >= live.version:
            live.job, live.version = row.job, row.version
        return live

    async def sync(self, row: JobRow, arrival_s: int | None = None) -> None:
        """Make the routes agree with the job as ``row`` has it (``live.fleet.reconcile``): off
        every other vehicle, on its own in the way its state says. Hold ``lock``."""
        job = row.job
        live = self.open.get(job.id)
        if live is not None and row.version < live.version:
            return
        if row.version <= self._finished.get(job.id, 0):
            return  # older news of a job already finished
        self.track(row)
        if job.state.terminal:
            self.open.pop(job.id, None)
            self._finished[job.id] = row.version
            if len(self._finished) > FINISHED_KEPT:
                self._finished.popitem(last=False)
        owner = job.vehicle_id if job.state.with_vehicle else None
        touched: list[VehicleLive] = []
        for v in self.vehicles.values():
            if v.id != owner and any(s.job_id == job.id for s in v.stops):
                v.stops = without_job(v.stops, job.id)
                touched.append(v)
        if owner is not None:
            v = self.vehicle(owner)
            stops = reconcile(v.stops, job, self.now_s() if arrival_s is None else arrival_s)
            if stops != v.stops:
                v.stops = stops
                touched.append(v)
            self.tracking.follow(v)  # the job's state decides whether its stop is watched
        for v in touched:
            v.changed()
            self.tracking.follow(v)
            await self.tracking.walk(v, force=True)

    async def save_route(self, v: VehicleLive) -> None:
        """Persist the vehicle's route with its latest ETAs (what a restart resumes)."""
        await self._store.put_vehicle_route(RouteRow(v.id, v.planned(), self._clock()))

    async def send(self, vehicle_id: str, name: str, args: Mapping[str, Any], *, key: str) -> None:
        """Queue a downlink command (sent at once when the vehicle is online); ``key`` makes a
        repeat of the same decision the same command. A failure is logged and counted."""
        try:
            await self._commands.create(
                vehicle_id, name, args, idempotency_key=key, actor="dispatch"
            )
        except CloudError as exc:
            self.counters[f"{name}_failed"] += 1
            log.warning("dispatch: %s for %s not queued: %s", name, vehicle_id, exc)
            return
        self.counters[f"{name}_sent"] += 1

    # -- the rules round -----------------------------------------------------------------------

    async def tick(self) -> None:
        """Profiles, speeds, ETAs as time passes, the reallocation rules, unassigned retries."""
        await self.refresh_fleet()
        now = self.now_s()
        if now - self._speeds_at_s >= self.settings.speeds_refresh_s:
            self.refresh_speeds()
        async with self.lock:
            for v in list(self.vehicles.values()):
                if v.stops:
                    await self.tracking.walk(v)
            snap = snapshot(now, self.vehicles, list(self.open.values()))
        await self.reallocation.round(snap)
        if self.settings.retry_unassigned:
            await self._retry_unassigned()

    def refresh_speeds(self) -> None:
        """The speeds learned so far become the travel model's."""
        self._speeds_at_s = self.now_s()
        if self.learner.accepted == 0:
            return
        table = self.learner.table(self.settings.router.default_speed_mps)
        self.model = builtin_model(self.settings.router, table)
        for v in self.vehicles.values():
            v.changed()
        self.counters["speeds_refreshed"] += 1

    async def _retry_unassigned(self) -> None:
        page = await self._store.list_jobs(states=[JobState.NEW], limit=RETRY_BATCH)
        for row in page.items:
            async with self.lock:
                await self._guarded(
                    self.assigner.place(
                        row, reason="instant_assignment", actor="system", quiet=True
                    ),
                    f"retrying job {row.job.id}",
                )

    async def _reallocate(self, firing: Firing) -> Moved | None:
        """The mover of the rules round: the job to another vehicle, the old one excluded."""
        async with self.lock:
            row = await self._store.get_job(firing.job_id)
            job = None if row is None else row.job
            if row is None or job is None or job.vehicle_id != firing.vehicle_id:
                return None
            if not job.state.with_vehicle or job.state.started:
                return None
            ev = {"rule": firing.rule.value, "old_vehicle_id": firing.vehicle_id}
            new = await self.assigner.place(
                row,
                reason="reallocated",
                actor="rule",
                away={firing.vehicle_id: {"rule": firing.rule.value}},
                evidence={**firing.evidence, **ev},
            )
            self.counters["reallocated"] += 1
            return Moved(new)

    # -- batch plans ---------------------------------------------------------------------------

    def faulted_vehicles(self) -> frozenset[str]:
        """The vehicles the fault rule holds for now: batch plans give them no new work."""
        fault = self.settings.rules.fault
        return frozenset(v.id for v in self.vehicles.values() if faulted(v.snapshot(), fault))

    async def current_routes(self) -> dict[str, tuple[RouteStop, ...]]:
        """Every vehicle's remaining stops in order (those with any), for re-plans."""
        await self.ready()
        return {v.id: tuple(v.stops) for v in self.vehicles.values() if v.stops}

    async def apply_plan(
        self, routes: Mapping[str, Sequence[RouteStop]], *, reason: str
    ) -> ApplyResult:
        """Make ``routes`` (vehicle id -> its whole new route, stops in service order; a stop
        names a job and its ``kind``, and may carry the planned ``arrival``) the routes of the
        vehicles it names; other vehicles keep theirs. Stop data comes from the stored jobs.
        New jobs are offered (or assigned) to their planned vehicle, jobs on another vehicle
        are withdrawn there and offered here (``job.reallocated``), jobs on a named vehicle
        the plan leaves out go back to new; every transition has ``reason`` as its reason code.
        A stop being served stays first; done stops are not visited again. Unknown, finished,
        doubly planned, started-elsewhere or locked-elsewhere jobs and unregistered vehicles
        are refused in ``ApplyResult.skipped``. Details: :mod:`fleetlink_cloud.replan`."""
        await self.ready()
        async with self.lock:
            return await Replan(self).apply(routes, reason=reason)
