"""Drivers' answers from the vehicles: ``job.answer`` Events (docs/protocol.md, "Job offers").

Each answer goes through ``JobService.answer`` as the driver (the vehicle must be the job's),
then the job's route follows its new state. The device may send an answer twice (power lost
between its outbox commit and its board write): a repeated (job, answer, offer version, stop)
from the same vehicle counts once. An answer to an older offer than the latest one sent for the
job is stale and ignored. Where the board allows what the job's states do not say directly:

- ``reject`` of a job already accepted: the job goes back to ``new`` (reason
  ``driver_rejected``, ``rejected_by`` the vehicle) and is assigned again;
- ``arrived`` at a shipment's delivery (``stop`` 1) while the job is arrived at its pickup: the
  pickup is done first (``en_route``, reason ``pickup_done``); at the delivery without a word
  about the pickup, the pickup leaves the route;
- ``accept`` of a job assigned without an offer round changes nothing.

An answer the job's state does not take is counted (``answers_refused``) and logged.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, cast, get_args

from fleetlink_cloud.dispatch.model import DispatchError, JobState, StopKind
from fleetlink_cloud.errors import NotFound
from fleetlink_cloud.jobs import Answer, EventReason
from fleetlink_cloud.store.base import JobRow

if TYPE_CHECKING:
    from fleetlink_cloud.dispatcher import Dispatcher

log = logging.getLogger(__name__)

ANSWERS: Final = frozenset(get_args(Answer))
REMEMBERED: Final = 10_000  # answers kept to recognise a repeat (oldest forgotten first)
AnswerKey = tuple[str, str, str, object, object]  # vehicle, job, answer, version, stop


class Answers:
    """Applies the vehicles' answers for the dispatcher."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._d = dispatcher
        self._seen: OrderedDict[AnswerKey, None] = OrderedDict()

    def _repeat(self, key: AnswerKey) -> bool:
        if key in self._seen:
            return True
        self._seen[key] = None
        if len(self._seen) > REMEMBERED:
            self._seen.popitem(last=False)
        return False

    async def on_answer(self, vehicle_id: str, data: Mapping[str, Any]) -> None:
        d = self._d
        job_id, answer = data.get("job_id"), data.get("answer")
        if not isinstance(job_id, str) or answer not in ANSWERS:
            d.counters["answers_malformed"] += 1
            return
        version, stop = data.get("offer_version"), data.get("stop")
        if self._repeat((vehicle_id, job_id, str(answer), version, stop)):
            d.counters["answers_repeated"] += 1
            return
        live = d.open.get(job_id)
        if (
            live is not None
            and isinstance(version, int)
            and live.offer_version is not None
            and version < live.offer_version
        ):
            d.counters["answers_stale"] += 1
            return
        d.counters["answers"] += 1
        try:
            row = await self._apply(vehicle_id, job_id, cast(Answer, answer), data)
        except (DispatchError, NotFound) as exc:
            d.counters["answers_refused"] += 1
            log.info("answer %s to job %s from %s not taken: %s", answer, job_id, vehicle_id, exc)
            return
        if row is not None:
            async with d.lock:
                await d.sync(row)

    async def _apply(
        self, vehicle_id: str, job_id: str, answer: Answer, data: Mapping[str, Any]
    ) -> JobRow | None:
        """Apply one answer; the job as it then is (None: nothing changed)."""
        d = self._d
        current = await d.store.get_job(job_id)
        if current is None:
            raise NotFound(f"no job {job_id!r}")
        job = current.job
        reason = str(data.get("reason") or "")
        mine = job.vehicle_id == vehicle_id
        if answer == "accept" and mine and job.state is JobState.ASSIGNED:
            d.counters["answers_redundant"] += 1
            return None
        if answer == "reject" and mine and job.state in (JobState.ASSIGNED, JobState.EN_ROUTE):
            row = await d.jobs.transition(
                job_id,
                JobState.NEW,
                EventReason.DRIVER_REJECTED.value,
                "driver",
                evidence={"rejected_by": vehicle_id},
                reason_text=reason,
            )
            async with d.lock:
                await d.sync(row)
            await d.assign(row)
            return await d.store.get_job(job_id)
        if answer == "arrived" and mine and job.is_shipment and data.get("stop") == 1:
            await self._pickup_done(current, vehicle_id)
        delay = data.get("delay_s")
        return await d.jobs.answer(
            job_id,
            answer,
            reason_text=reason,
            delay_s=delay if isinstance(delay, int) else None,
            vehicle_id=vehicle_id,
        )

    async def _pickup_done(self, row: JobRow, vehicle_id: str) -> None:
        """The driver is at the delivery: whatever the pickup's state said, it is done."""
        d = self._d
        if row.job.state is JobState.ARRIVED:
            row = await d.jobs.transition(
                row.job.id, JobState.EN_ROUTE, "pickup_done", "driver", vehicle_id=vehicle_id
            )
        async with d.lock:
            v = d.vehicle(vehicle_id)
            pickup = [s for s in v.stops if s.job_id == row.job.id and s.kind is StopKind.PICKUP]
            if pickup:
                v.stops = [s for s in v.stops if s not in pickup]
                v.changed()
            await d.sync(row)
