"""What the dispatcher does with each fix: learned speeds, geofences, en route, live ETAs.

- Every fix counts for the learned road speeds (``dispatch.speeds``).
- A usable fix (2D/3D) is the vehicle's position. It feeds one geofence tracker per accepted
  job on the route, watching that job's next stop: an arrival makes the job ``arrived``
  (reason ``geofence_arrival``), a departure makes it what the geofence settings say
  (``en_route`` after a pickup; ``completed`` after a single stop or a delivery only with
  ``complete_on_departure``), reason ``geofence_departure``; the evidence is the tracker's.
- The route's first stop, accepted and not yet driven to, becomes ``en_route`` (reason
  ``driving_to_stop``) once a fix is faster than ``en_route_speed_mps``.
- The route is walked again (``dispatch.eta.route_eta``) at most every ``eta_min_interval_s``
  per vehicle, and whenever it changes. A stop whose arrival moved by more than
  ``eta_change_threshold_s`` since it was last announced fires ``job.eta_changed``; the route
  is then stored with its ETAs, and an accepted job's vehicle gets ``update_job`` with the new
  ETA of its next stop (at most every ``eta_update_min_interval_s`` per job).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from fleetlink_cloud.bus import StreamEvent
from fleetlink_cloud.dispatch.eta import EtaChange, StopEta, eta_changes, route_eta
from fleetlink_cloud.dispatch.geofence import (
    EventKind,
    Geofence,
    GeofenceEvent,
    GeofenceTracker,
)
from fleetlink_cloud.dispatch.model import JobState
from fleetlink_cloud.live.fleet import NS, StopKey, VehicleLive, accepted
from fleetlink_cloud.store.base import PlannedStop, PositionRow
from fleetlink_protocols.records import FixMode, Position

if TYPE_CHECKING:
    from fleetlink_cloud.dispatcher import Dispatcher

log = logging.getLogger(__name__)


def position_of(fix: PositionRow | StreamEvent) -> Position:
    """A stored fix, or a ``position`` stream event, as a protocol Position."""
    if isinstance(fix, PositionRow):
        return Position(
            fix.ts_wall_ns,
            fix.lat_deg,
            fix.lon_deg,
            FixMode(fix.mode),
            fix.alt_msl_m,
            fix.speed_mps,
            fix.heading_deg,
            fix.hdop,
            fix.sats_used,
        )
    d = fix.data
    return Position(
        fix.ts_wall_ns,
        float(d["lat"]),
        float(d["lon"]),
        FixMode(int(d["mode"])),
        d.get("alt_msl_m"),
        d.get("speed_mps"),
        d.get("heading_deg"),
        d.get("hdop"),
        d.get("sats_used"),
    )


def eta_event(vehicle_id: str, change: EtaChange, stop: StopEta, ts_wall_ns: int) -> StreamEvent:
    """``job.eta_changed``: the new arrival (Unix s), its range, the previous one announced."""
    data: dict[str, Any] = {
        "job_id": change.job_id,
        "vehicle_id": vehicle_id,
        "stop": change.kind.value,
        "eta": change.arrival,
        "early": change.early,
        "late": change.late,
        "previous": change.previous,
        "delta_s": change.delta_s,
        "lateness_s": stop.lateness_s,
    }
    return StreamEvent(0, "job.eta_changed", vehicle_id, ts_wall_ns, data)


class Tracking:
    """The fix-driven part of the dispatcher; holds no state of its own."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._d = dispatcher

    @staticmethod
    def reported_of(stops: Iterable[PlannedStop]) -> dict[StopKey, StopEta]:
        """The arrivals a stored route announced, as the baseline of the next ETA changes."""
        out: dict[StopKey, StopEta] = {}
        for p in stops:
            if p.eta is not None:
                s = p.stop
                out[(s.job_id, s.kind)] = StopEta(
                    s.job_id, s.kind, 0, p.eta, 0, p.eta, p.eta, p.lateness_s, p.early, p.late
                )
        return out

    async def on_position(self, v: VehicleLive, event: StreamEvent) -> None:
        d = self._d
        fix = position_of(event)
        d.learner.add(fix)
        d.counters["positions"] += 1
        if fix.mode < FixMode.FIX_2D or (v.fix is not None and fix.ts_wall_ns <= v.fix.ts_wall_ns):
            return
        if v.fix is None:
            v.changed()  # it can be planned now
        v.fix = fix
        if not v.stops:
            return
        async with d.lock:
            for tracker in list(v.trackers.values()):
                found = tracker.feed(fix)
                if found is not None:
                    await self._fenced(v, found)
            await self._en_route(v, fix)
            await self.walk(v)

    def follow(self, v: VehicleLive) -> None:
        """One geofence per accepted job on the route, on the job's next stop (kept while the
        stop stays the same, so a dwell is not restarted)."""
        wanted: dict[StopKey, Geofence] = {}
        for stop in v.stops:
            key = (stop.job_id, stop.kind)
            live = self._d.open.get(stop.job_id)
            if live is None or not accepted(live.job) or any(k[0] == stop.job_id for k in wanted):
                continue
            wanted[key] = Geofence(v.id, stop.job_id, stop.kind, stop.location)
        settings = self._d.settings.geofence
        v.trackers = {
            k: v.trackers.get(k) or GeofenceTracker(fence, settings) for k, fence in wanted.items()
        }

    async def _fenced(self, v: VehicleLive, event: GeofenceEvent) -> None:
        d = self._d
        live = d.open.get(event.job_id)
        if live is None or live.job.vehicle_id != v.id:
            return
        state = live.job.state
        evidence = {"stop": event.stop_kind.value, **event.evidence}
        if event.kind is EventKind.ARRIVED:
            if state not in (JobState.ASSIGNED, JobState.EN_ROUTE):
                return  # the driver said so already
            row = await d.jobs.transition(
                live.job.id,
                JobState.ARRIVED,
                "geofence_arrival",
                "system",
                vehicle_id=v.id,
                evidence=evidence,
            )
            d.counters["geofence_arrivals"] += 1
            await d.sync(row, arrival_s=event.ts_wall_ns // NS)
        elif event.job_state is not None and state is JobState.ARRIVED:
            row = await d.jobs.transition(
                live.job.id,
                event.job_state,
                "geofence_departure",
                "system",
                vehicle_id=v.id,
                evidence=evidence,
            )
            d.counters["geofence_departures"] += 1
            await d.sync(row)

    async def _en_route(self, v: VehicleLive, fix: Position) -> None:
        d = self._d
        limit = d.settings.en_route_speed_mps
        if limit is None or fix.speed_mps is None or fix.speed_mps <= limit or not v.stops:
            return
        first = v.stops[0]
        live = d.open.get(first.job_id)
        if first.started or live is None or live.job.state is not JobState.ASSIGNED:
            return
        row = await d.jobs.transition(
            first.job_id,
            JobState.EN_ROUTE,
            "driving_to_stop",
            "system",
            vehicle_id=v.id,
            evidence={"stop": first.kind.value, "speed_mps": round(fix.speed_mps, 1)},
        )
        d.counters["en_route"] += 1
        await d.sync(row)

    async def walk(self, v: VehicleLive, *, force: bool = False) -> None:
        """Walk the route for its ETAs (throttled unless ``force``), announce what moved, store
        the route when anything did (always when forced: the route itself changed)."""
        d = self._d
        now = d.now_s()
        if not force and now - v.eta_at_s < d.settings.eta_min_interval_s:
            return
        route = v.route()
        if route is None or not route.stops:  # no fix yet, or nothing to do
            if not v.stops:
                v.eta, v.reported = None, {}
            if force:
                await d.save_route(v)
            return
        eta = route_eta(route, d.model, now, d.end_of(v))
        v.eta, v.eta_at_s = eta, float(now)
        by_stop = eta.by_stop()
        v.reported = {k: e for k, e in v.reported.items() if k in by_stop}
        moved: list[EtaChange] = []
        for change in eta_changes(v.reported, eta, d.settings.eta_change_threshold_s):
            v.reported[(change.job_id, change.kind)] = by_stop[(change.job_id, change.kind)]
            if change.previous is not None:
                moved.append(change)
        if moved:
            ts = d.now_ns()
            await d.store.append_stream_events(
                [eta_event(v.id, c, by_stop[(c.job_id, c.kind)], ts) for c in moved]
            )
            d.counters["eta_changed"] += len(moved)
            await self._tell_vehicle(v, moved, now)
        if moved or force:
            await d.save_route(v)

    async def _tell_vehicle(self, v: VehicleLive, moved: Iterable[EtaChange], now: int) -> None:
        """``update_job`` with the new ETA of an accepted job's next stop (rate-limited)."""
        d = self._d
        if not d.settings.eta_updates:
            return
        nexts: dict[str, StopKey] = {}
        for s in v.stops:
            nexts.setdefault(s.job_id, (s.job_id, s.kind))
        for c in moved:
            live = d.open.get(c.job_id)
            if live is None or not accepted(live.job) or nexts.get(c.job_id) != (c.job_id, c.kind):
                continue
            if now - live.eta_update_at_s < d.settings.eta_update_min_interval_s:
                continue
            live.eta_update_at_s = float(now)
            args = {"job_id": c.job_id, "eta": c.arrival}
            await d.send(v.id, "update_job", args, key=f"update_job:{c.job_id}:{c.arrival}")
