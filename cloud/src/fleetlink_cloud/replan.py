"""A batch plan made the vehicles' routes: what ``Dispatcher.apply_plan`` does.

The contract (for the planner): ``routes`` maps a vehicle id to its whole new route, the
stops in service order; each ``RouteStop`` names a job and which of its stops it is
(``kind``), and may carry the planned ``arrival``. Locations, windows, service times and
demands are taken from the stored job, not from the plan. Vehicles not named keep their
routes. For every job in the plan:

- ``new`` -> offered (or assigned with ``offers`` off) to its planned vehicle: ``given``;
- on another vehicle -> moved there (``withdraw_job`` to the old, ``offer_job`` to the new, a
  ``job.reallocated`` event with ``reason``): ``moved``;
- on that vehicle already -> its stops take their planned places: ``kept``.

A job on a named vehicle that the plan leaves out everywhere goes back to ``new`` (withdrawn):
``unassigned``. Refused, in ``skipped`` with why: an unknown or finished job, one on two
routes, one at its stop (``arrived``) on another vehicle, one locked to another vehicle, one
planned onto a vehicle that is not registered. A stop the vehicle is at stays first on its
route whatever the plan says; a stop already done (a pickup) is not visited again. Every job
transition has ``reason`` as its reason code.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from fleetlink_cloud.bus import StreamEvent
from fleetlink_cloud.dispatch.insertion import route_stops
from fleetlink_cloud.dispatch.model import JobState, RouteStop
from fleetlink_cloud.errors import CloudError
from fleetlink_cloud.live.fleet import VehicleLive
from fleetlink_cloud.store.base import JobRow

if TYPE_CHECKING:
    from fleetlink_cloud.dispatcher import Dispatcher

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What applying a plan did, by job id (see the module docstring)."""

    given: tuple[str, ...] = ()
    moved: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    unassigned: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()  # (job id, why)


@dataclass
class _Tally:
    given: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    unassigned: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def result(self) -> ApplyResult:
        return ApplyResult(
            tuple(self.given),
            tuple(self.moved),
            tuple(self.kept),
            tuple(self.unassigned),
            tuple(self.skipped),
        )


def refusal(row: JobRow | None, vehicle_id: str) -> str | None:
    """Why the job cannot go onto ``vehicle_id``'s route (None: it can)."""
    if row is None:
        return "unknown job"
    job = row.job
    if job.state.terminal:
        return f"job is {job.state.value}"
    if job.state.started and job.vehicle_id != vehicle_id:
        return f"job is arrived on {job.vehicle_id}"
    if job.locked_vehicle_id is not None and job.locked_vehicle_id != vehicle_id:
        return f"job is locked to {job.locked_vehicle_id}"
    return None


def planned_stops(
    v: VehicleLive, plan: Sequence[RouteStop], rows: Mapping[str, JobRow]
) -> list[RouteStop]:
    """``v``'s new route: the stop it is at first, then the plan's stops of the jobs that may
    go on it (``rows``), from the stored jobs, skipping pickups already done."""
    out = [s for s in v.stops if s.started]
    for st in plan:
        row = rows.get(st.job_id)
        if row is None or any(s.job_id == st.job_id and s.kind is st.kind for s in out):
            continue
        on_route = [s.kind for s in v.stops if s.job_id == st.job_id]
        if row.job.vehicle_id == v.id and on_route and st.kind not in on_route:
            continue  # done already
        template = next((s for s in route_stops(row.job) if s.kind is st.kind), None)
        if template is not None:
            out.append(replace(template, arrival=st.arrival))
    return out


class Replan:
    """Applies one plan for the dispatcher (hold its ``lock``)."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._d = dispatcher

    async def apply(self, routes: Mapping[str, Sequence[RouteStop]], *, reason: str) -> ApplyResult:
        d, tally = self._d, _Tally()
        wanted: dict[str, str] = {}
        twice: set[str] = set()
        for vid, stops in routes.items():
            for st in stops:
                if wanted.setdefault(st.job_id, vid) != vid:
                    twice.add(st.job_id)
        tally.skipped += [(j, "on two routes") for j in sorted(twice)]
        rows: dict[str, JobRow] = {}
        for job_id, vid in wanted.items():
            if job_id in twice:
                continue
            if vid not in d.vehicles:
                tally.skipped.append((job_id, f"unknown vehicle {vid}"))
                continue
            row = await d.store.get_job(job_id)
            why = refusal(row, vid)
            if why is not None or row is None:
                tally.skipped.append((job_id, why or "unknown job"))
            else:
                rows[job_id] = row
        known = [vid for vid in routes if vid in d.vehicles]
        before = {j for vid in known for j in d.vehicles[vid].job_ids()}
        for vid in known:
            v, stops = d.vehicles[vid], routes[vid]
            mine = {j: r for j, r in rows.items() if wanted[j] == vid}
            v.stops = planned_stops(v, stops, mine)
            v.changed()
        for job_id, row in rows.items():
            await self._place(row, wanted[job_id], reason, tally)
        for job_id in sorted(before - set(rows)):
            await self._left_out(job_id, {j for j, _ in tally.skipped}, reason, tally)
        for vid in known:
            v = d.vehicles[vid]
            d.tracking.follow(v)
            await d.tracking.walk(v, force=True)
        result = tally.result()
        log.info(
            "plan (%s): %d given, %d moved, %d kept, %d unassigned, %d skipped",
            reason, len(result.given), len(result.moved), len(result.kept),
            len(result.unassigned), len(result.skipped),
        )  # fmt: skip
        return result

    async def _place(self, row: JobRow, vid: str, reason: str, tally: _Tally) -> None:
        d, job = self._d, row.job
        try:
            if job.state is JobState.NEW:
                await d.assigner.give(
                    row, vid, reason=reason, actor="system", evidence={"plan": True}
                )
                tally.given.append(job.id)
            elif job.vehicle_id != vid:
                old = job.vehicle_id
                await d.assigner.give(
                    row, vid, reason=reason, actor="system", evidence={"plan": True}
                )
                tally.moved.append(job.id)
                data: dict[str, Any] = {
                    "job_id": job.id,
                    "reason": reason,
                    "rule": None,
                    "old_vehicle_id": old,
                    "new_vehicle_id": vid,
                    "evidence": {},
                }
                await d.store.append_stream_events(
                    [StreamEvent(0, "job.reallocated", vid, d.now_ns(), data)]
                )
            else:
                await d.sync(row)
                tally.kept.append(job.id)
        except CloudError as exc:
            tally.skipped.append((job.id, str(exc)))
            current = await d.store.get_job(job.id)
            if current is not None:
                await d.sync(current)

    async def _left_out(self, job_id: str, skipped: set[str], reason: str, tally: _Tally) -> None:
        """A job that was on a planned vehicle and is in no route of the plan."""
        d = self._d
        row = await d.store.get_job(job_id)
        if row is None:
            return
        job = row.job
        if job_id in skipped or job.state.started or not job.state.with_vehicle:
            await d.sync(row)  # back where the store says it is
            return
        try:
            new = await d.jobs.transition(job_id, JobState.NEW, reason, "system")
        except CloudError as exc:
            tally.skipped.append((job_id, str(exc)))
            await d.sync(row)
            return
        if job.vehicle_id is not None:
            await d.send(
                job.vehicle_id,
                "withdraw_job",
                {"job_id": job_id, "reason": reason},
                key=f"withdraw_job:{job_id}:{new.version}",
            )
        await d.sync(new)
        tally.unassigned.append(job_id)
