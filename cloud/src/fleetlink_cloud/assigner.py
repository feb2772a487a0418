"""Instant assignment in the running service: a job to the cheapest vehicle, offered or assigned.

:meth:`Assigner.place` prepares every vehicle's live route (cached until the route or the
vehicle's state changes, or it is older than ``assign.stale_after_s``), leaves out the vehicles
whose driver rejected the job (``declined``) and the one a move takes it from (``current``),
and runs ``dispatch.assignment.assign``. The explanation is stored with the job
(``set_job_explanation``). The chosen vehicle's new route is the insertion's; the job is
offered to it (``offer_job``, ``respond_by`` = now + ``offer_timeout_s``) or, with ``offers``
off, assigned (and still sent, so the driver's board shows it). Nobody: the job goes back to
(or stays) ``new``, with a ``job.unassigned`` stream event naming the reasons (once per set of
reasons). With an HTTP router configured, each decision asks it for one matrix over the
locations that matter (``dispatch.routing.table``); otherwise the learned builtin model serves.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fleetlink_cloud.bus import StreamEvent
from fleetlink_cloud.dispatch.assignment import Assignment, assign
from fleetlink_cloud.dispatch.model import JobState, Location, Reason
from fleetlink_cloud.dispatch.routing import TravelModel
from fleetlink_cloud.dispatch.routing.table import TableModel
from fleetlink_cloud.dispatch.slack import Prepared, prepare
from fleetlink_cloud.store.base import Actor, JobRow

if TYPE_CHECKING:
    from fleetlink_cloud.dispatcher import Dispatcher

Evidence = Mapping[str, Any]


def offer_args(job_row: JobRow, respond_by_s: int) -> dict[str, Any]:
    """``offer_job`` args (docs/protocol.md, "Job offers"); the job's version is the offer's."""
    job = job_row.job
    args: dict[str, Any] = {
        "job_id": job.id,
        "kind": "shipment" if job.is_shipment else "single",
        "version": job_row.version,
        "respond_by": respond_by_s,
        "stops": [
            {
                "kind": kind.value,
                "lat": stop.location.lat,
                "lon": stop.location.lon,
                "windows": [[w.start, w.end] for w in stop.windows],
                "service_s": stop.service_s,
            }
            for kind, stop in job.stops()
        ],
    }
    if job.customer_ref is not None:
        args["customer_ref"] = job.customer_ref
    return args


def explanation(
    decision: Assignment, declined: Sequence[str], current: Mapping[str, Evidence]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The decision's explanation with the vehicles left out before it ran (declined, the one
    being moved away from) among the excluded, and the unassigned reasons counted over all."""
    out = decision.to_dict()
    extra = [{"vehicle_id": v, "reason": Reason.DECLINED.value} for v in declined]
    extra += [{"vehicle_id": v, "reason": Reason.CURRENT.value, **ev} for v, ev in current.items()]
    out["excluded"] = sorted([*out["excluded"], *extra], key=lambda e: str(e["vehicle_id"]))
    if decision.vehicle_id is not None:
        return out, []
    tally = Counter(str(e["reason"]) for e in out["excluded"])
    reasons = [{"reason": r, "vehicles": n} for r, n in sorted(tally.items(), key=_by_count)]
    out["unassigned_reasons"] = reasons or [{"reason": Reason.NO_VEHICLES.value, "vehicles": 0}]
    return out, out["unassigned_reasons"]


def _by_count(item: tuple[str, int]) -> tuple[int, str]:
    return -item[1], item[0]


def unassigned_event(
    row: JobRow, reason: str, reasons: Sequence[Mapping[str, Any]], ts_wall_ns: int
) -> StreamEvent:
    """``job.unassigned`` for a job that stays new: nobody can take it, and why."""
    data = {
        "job_id": row.job.id,
        "kind": "unassigned",
        "from_state": row.job.state.value,
        "to_state": row.job.state.value,
        "reason": reason,
        "vehicle_before": None,
        "vehicle_id": None,
        "customer_ref": row.job.customer_ref,
        "version": row.version,
        "unassigned_reasons": [dict(r) for r in reasons],
    }
    return StreamEvent(0, "job.unassigned", "", ts_wall_ns, data)


class Assigner:
    """Places jobs for the dispatcher (every method: hold the dispatcher's ``lock``)."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._d = dispatcher

    async def _declined(self, job_id: str) -> list[str]:
        """The vehicles whose driver rejected the job (its events' ``rejected_by``)."""
        d = self._d
        events = await d.store.job_events(job_id)
        found = (e.evidence.get("rejected_by") for e in events)
        return sorted({v for v in found if isinstance(v, str)})

    async def _decision_model(self, row: JobRow) -> tuple[TravelModel, bool]:
        """The travel model for one decision (a router's matrix over the locations that
        matter, when one is configured) and whether it is the shared builtin one."""
        d = self._d
        if d.router is None:
            return d.model, True
        points = [Location(v.fix.lat_deg, v.fix.lon_deg) for v in d.vehicles.values() if v.fix]
        points += [s.location for v in d.vehicles.values() for s in v.stops]
        points += [stop.location for _, stop in row.job.stops()]
        points += list(d.depots.values())
        bound = d.settings.router.bound_speed_mps
        table = await TableModel.fetch(d.router, points, d.now_s(), d.model, bound)
        return table, False

    def _fleet(
        self, model: TravelModel, now: int, skip: set[str], job_id: str, cache: bool
    ) -> list[Prepared]:
        """Every vehicle not in ``skip`` prepared for a decision about ``job_id`` (left out of
        any route that has it)."""
        d = self._d
        stale = d.settings.assign.stale_after_s
        out: list[Prepared] = []
        for v in d.vehicles.values():
            if v.id in skip:
                continue
            has_job = any(s.job_id == job_id for s in v.stops)
            pp = v.prepared
            if not cache or has_job or pp is None or abs(now - pp.now) > stale:
                end = d.end_of(v)
                skills = d.driver_skills.get(v.profile.driver_id or "", frozenset())
                c = v.candidate(d.settings.rules, driver_skills=skills, end=end, skip_job=job_id)
                pp = prepare(c, model, now)
                if cache and not has_job:
                    v.prepared = pp
            out.append(pp)
        return out

    async def place(
        self,
        row: JobRow,
        *,
        reason: str,
        actor: Actor,
        away: Mapping[str, Evidence] | None = None,
        evidence: Evidence | None = None,
        quiet: bool = False,
    ) -> str | None:
        """Give the job to the best vehicle by instant assignment, excluding the declined ones
        and ``away`` (the vehicle it moves from, with why); nobody: it becomes (or stays) new.
        ``quiet``: a retry that changes nothing writes nothing. Returns the chosen vehicle.
        Hold ``lock``."""
        d = self._d
        job, away = row.job, away or {}
        now = d.now_s()
        declined = [v for v in await self._declined(job.id) if v not in away]
        model, shared = await self._decision_model(row)
        fleet = self._fleet(model, now, {*declined, *away}, job.id, shared)
        decision = assign(job, fleet, model, d.settings.assign, now)
        told, reasons = explanation(decision, declined, away)
        key = tuple(str(r["reason"]) for r in reasons)
        live = d.open.get(job.id)
        if quiet and decision.vehicle_id is None and live is not None and live.unassigned == key:
            return None
        await d.store.set_job_explanation(job.id, explanation=told, unassigned_reasons=reasons)
        if decision.vehicle_id is None or decision.route is None or decision.insertion is None:
            await self._unplace(row, reason, actor, evidence or {}, reasons)
            return None
        v = d.vehicles[decision.vehicle_id]
        v.stops = list(decision.route.stops)
        v.changed()
        v.eta, v.eta_at_s = decision.eta, float(now)
        for e in () if decision.eta is None else decision.eta.stops:
            if e.job_id == job.id:
                v.reported[(e.job_id, e.kind)] = e
        ins = decision.insertion
        given = {
            "cost": round(ins.cost, 3),
            "added_travel_s": round(ins.added_travel_s, 1),
            "candidates": len(decision.considered),
            **(evidence or {}),
        }
        await self.give(row, v.id, reason=reason, actor=actor, evidence=given)
        return v.id

    async def give(
        self, row: JobRow, vehicle_id: str, *, reason: str, actor: Actor, evidence: Evidence
    ) -> JobRow:
        """Offer (or assign) the job to ``vehicle_id`` and tell the vehicles: ``withdraw_job``
        to the one it leaves, ``offer_job`` to the new one. Hold ``lock``."""
        d = self._d
        old = row.job.vehicle_id
        target = JobState.OFFERED if d.settings.offers else JobState.ASSIGNED
        new = await d.jobs.transition(
            row.job.id, target, reason, actor, vehicle_id=vehicle_id, evidence=evidence
        )
        now = d.now_s()
        live = d.track(new)
        live.unassigned = None
        live.offer_sent_s, live.offer_version = now, new.version
        d.counters["offered" if d.settings.offers else "assigned"] += 1
        if old is not None and old != vehicle_id:
            live.moves, live.last_moved_s = live.moves + 1, now
            what = {"job_id": new.job.id, "reason": reason}
            await d.send(old, "withdraw_job", what, key=f"withdraw_job:{new.job.id}:{new.version}")
        await d.sync(new)
        v = d.vehicle(vehicle_id)
        d.tracking.follow(v)
        await d.save_route(v)
        args = offer_args(new, now + d.settings.offer_timeout_s)
        await d.send(vehicle_id, "offer_job", args, key=f"offer_job:{new.job.id}:{new.version}")
        return new

    async def _unplace(
        self,
        row: JobRow,
        reason: str,
        actor: Actor,
        evidence: Evidence,
        reasons: Sequence[Mapping[str, Any]],
    ) -> None:
        """Nobody can take the job: off its vehicle (withdrawn) and new, or new still."""
        d = self._d
        key = tuple(str(r["reason"]) for r in reasons)
        d.counters["unassigned"] += 1
        old = row.job.vehicle_id
        if row.job.state is not JobState.NEW:
            ev = {**evidence, "unassigned_reasons": list(key)}
            new = await d.jobs.transition(row.job.id, JobState.NEW, reason, actor, evidence=ev)
            d.track(new).unassigned = key  # the transition streamed job.unassigned
            if old is not None:
                what = {"job_id": new.job.id, "reason": reason}
                cmd_key = f"withdraw_job:{new.job.id}:{new.version}"
                await d.send(old, "withdraw_job", what, key=cmd_key)
            await d.sync(new)
            return
        live = d.track(row)
        if live.unassigned != key:
            live.unassigned = key
            event = unassigned_event(row, reason, reasons, d.now_ns())
            await d.store.append_stream_events([event])
