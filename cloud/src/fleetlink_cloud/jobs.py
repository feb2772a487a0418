"""Jobs: ``JobService`` is the only writer of job state; the rules it applies are pure functions.

Every change is read, checked (``dispatch.model.check_transition``, the dispatcher's lock, the
job's vehicle), then written with the version it was read at: the job row, one job event (what,
why, who) and its stream events commit in ONE transaction, so the log, the row and the
WebSocket/webhook stream never disagree. A lost race re-reads and re-checks; a caller that
names a version (If-Match) gets ``StaleJob`` instead.

Assignment is not done here: ``JobService`` takes an optional ``assign(row)`` callback, awaited
after a job is created, after a driver rejects it (back to ``new``) and after its lock changes;
the assigner moves the job on by calling ``transition``. A failing assigner (a CloudError) is
logged and leaves the job where it is.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from fleetlink_cloud.bus import StreamEvent
from fleetlink_cloud.dispatch.model import (
    DispatchError,
    Job,
    JobState,
    check_transition,
)
from fleetlink_cloud.errors import CloudError, NotFound
from fleetlink_cloud.store.base import (
    Actor,
    AlreadyExists,
    JobEventKind,
    JobEventRow,
    JobRow,
    StaleJob,
    Store,
)

log = logging.getLogger(__name__)

Assign = Callable[[JobRow], Awaitable[None]]
"""The assigner's hook: called with the stored job when it may need a vehicle."""

Answer = Literal["accept", "reject", "arrived", "completed", "failed", "delayed"]
MAX_RETRIES: Final = 5  # re-reads after losing a race to another writer of the same job


class EventReason(enum.StrEnum):
    """The reason codes this module writes; callers (rules, the assigner) may use their own."""

    CREATED = "created"
    CANCELLED = "cancelled"
    LOCKED = "locked"
    UNLOCKED = "unlocked"
    DRIVER_ACCEPTED = "driver_accepted"
    DRIVER_REJECTED = "driver_rejected"
    DRIVER_ARRIVED = "driver_arrived"
    DRIVER_COMPLETED = "driver_completed"
    DRIVER_FAILED = "driver_failed"
    DRIVER_DELAYED = "driver_delayed"
    ANNOUNCED = "announced"


class JobConflict(DispatchError):
    """The request contradicts the job: an id or Idempotency-Key reused with another body, a
    vehicle other than the job's or its lock (an API maps it to 409)."""


class InvalidJob(DispatchError, ValueError):
    """A job or change that can never be valid, e.g. an offer without a vehicle (API: 422)."""


class AnswerRefused(DispatchError):
    """A driver's answer that the job's state does not take (an API maps it to 409)."""

    def __init__(self, job_id: str, current: JobState, answer: Answer) -> None:
        allowed = " or ".join(s.value for s in _ANSWER_RULES[answer][2])
        super().__init__(
            f"job {job_id!r} is {current.value}; a driver's {answer!r} needs it {allowed}"
        )
        self.job_id = job_id
        self.current = current
        self.answer = answer


_ON_ROUTE: Final = (JobState.ASSIGNED, JobState.EN_ROUTE, JobState.ARRIVED)
# answer -> (the state it moves to, None: none; its reason code; the states that take it)
_ANSWER_RULES: Final[Mapping[Answer, tuple[JobState | None, EventReason, tuple[JobState, ...]]]] = {
    "accept": (JobState.ASSIGNED, EventReason.DRIVER_ACCEPTED, (JobState.OFFERED,)),
    "reject": (JobState.NEW, EventReason.DRIVER_REJECTED, (JobState.OFFERED,)),
    "arrived": (JobState.ARRIVED, EventReason.DRIVER_ARRIVED, _ON_ROUTE[:2]),
    "completed": (JobState.COMPLETED, EventReason.DRIVER_COMPLETED, (JobState.ARRIVED,)),
    "failed": (JobState.FAILED, EventReason.DRIVER_FAILED, _ON_ROUTE),
    "delayed": (None, EventReason.DRIVER_DELAYED, _ON_ROUTE),
}


# -- pure rules --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Change:
    """What one write does to a job: its new fields and the event that says why."""

    job: Job
    kind: JobEventKind
    reason: str
    evidence: Mapping[str, Any]


def new_job_id() -> str:
    return "job_" + secrets.token_hex(12)


def request_hash(job: Job) -> str:
    """What makes two creations the same request: everything but the id and the state."""
    spec = (job.stop, job.pickup, sorted(job.skills), job.demand, job.priority)
    return hashlib.sha256(
        repr((*spec, job.customer_ref, job.locked_vehicle_id)).encode()
    ).hexdigest()


def check_new(job: Job) -> None:
    """Raise InvalidJob unless ``job`` can be created: state new, on no vehicle, sane numbers."""
    if job.state is not JobState.NEW or job.vehicle_id is not None:
        raise InvalidJob(f"job {job.id!r}: a new job is in state new, on no vehicle")
    if not 0 <= job.priority <= 100 or any(d < 0 for d in job.demand):
        raise InvalidJob(f"job {job.id!r}: priority is 0..100 and demand non-negative")
    if any(stop.service_s < 0 for _, stop in job.stops()):
        raise InvalidJob(f"job {job.id!r}: service_s must not be negative")


def moved(job: Job, to: JobState, vehicle_id: str | None) -> Job:
    """``job`` in state ``to``: which vehicle it is then on, under the model's rules and the
    dispatcher's lock. Raises InvalidTransition, InvalidJob or JobConflict."""
    check_transition(job.id, job.state, to)
    if to is JobState.NEW:
        vehicle = None  # back to the pool, off any vehicle
    elif to in (JobState.OFFERED, JobState.ASSIGNED):
        vehicle = vehicle_id or job.vehicle_id
        if vehicle is None:
            raise InvalidJob(f"job {job.id!r}: becoming {to.value} needs a vehicle")
        if job.locked_vehicle_id is not None and vehicle != job.locked_vehicle_id:
            raise JobConflict(
                f"job {job.id!r} is locked to {job.locked_vehicle_id}; it cannot go to {vehicle}"
            )
    else:
        if vehicle_id is not None and vehicle_id != job.vehicle_id:
            raise JobConflict(f"job {job.id!r} is on {job.vehicle_id}, not {vehicle_id}")
        vehicle = job.vehicle_id
    return dataclasses.replace(job, state=to, vehicle_id=vehicle)


def relocked(job: Job, vehicle_id: str | None) -> _Change:
    """The dispatcher's lock set to ``vehicle_id`` (None: lifted). Raises JobConflict."""
    if job.state.terminal:
        raise JobConflict(f"job {job.id!r} is {job.state.value}; its lock cannot change")
    if vehicle_id is not None and job.state.started and job.vehicle_id != vehicle_id:
        raise JobConflict(f"job {job.id!r}: work has begun on {job.vehicle_id}")
    evidence = {"vehicle_id": vehicle_id, "previous_lock": job.locked_vehicle_id}
    kind: JobEventKind = "unlocked" if vehicle_id is None else "locked"
    reason = EventReason.UNLOCKED if vehicle_id is None else EventReason.LOCKED
    return _Change(dataclasses.replace(job, locked_vehicle_id=vehicle_id), kind, reason, evidence)


def announced(job: Job, eta: int | None) -> _Change:
    """The job's ETA was given to the customer: re-plans keep its stop where it is."""
    if job.state.terminal:
        raise JobConflict(f"job {job.id!r} is {job.state.value}; there is nothing to announce")
    if not job.state.with_vehicle:
        raise JobConflict(f"job {job.id!r} is {job.state.value}: it is on no vehicle's route")
    evidence = {"eta": eta, "vehicle_id": job.vehicle_id}
    return _Change(dataclasses.replace(job, announced=True), "announced", "announced", evidence)


def stream_events(row: JobRow, event: JobEventRow) -> list[StreamEvent]:
    """The stream events describing one job event (see ``bus.EVENT_TYPES``)."""
    types: list[str]
    if event.kind == "created":
        types = ["job.created"]
    elif event.kind == "transition":
        types = ["job.state_changed"]
        if event.to_state is JobState.ASSIGNED:
            types.append("job.assigned")
        if event.vehicle_before is not None and event.vehicle_after is None:
            types.append("job.unassigned")
    else:
        types = ["job.updated"]
    data: dict[str, Any] = {
        "job_id": row.job.id,
        "event_id": event.id,
        "kind": event.kind,
        "from_state": None if event.from_state is None else event.from_state.value,
        "to_state": event.to_state.value,
        "reason": event.reason_code,
        "reason_text": event.reason_text,
        "actor": event.actor,
        "vehicle_before": event.vehicle_before,
        "vehicle_id": event.vehicle_after,
        "locked_vehicle_id": row.job.locked_vehicle_id,
        "customer_ref": row.job.customer_ref,
        "version": row.version,
        "evidence": dict(event.evidence),
    }
    device = event.vehicle_after or event.vehicle_before or ""
    return [StreamEvent(0, t, device, event.ts_wall_ns, data) for t in types]


# -- the service -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Created:
    """Result of ``JobService.create``: the job and whether this call created it."""

    row: JobRow
    created: bool


class JobService:
    """Creates jobs and moves them through their states; see the module docstring."""

    def __init__(
        self, store: Store, *, clock: Callable[[], int] = time.time_ns, assign: Assign | None = None
    ) -> None:
        self._store = store
        self._clock = clock
        self._assign = assign
        self.counters: dict[str, int] = {"created": 0, "changes": 0, "races": 0, "assign_failed": 0}

    async def create(
        self,
        job: Job,
        *,
        idempotency_key: str | None = None,
        actor: Actor = "dispatcher",
        actor_id: str | None = None,
    ) -> Created:
        """Store a new job (then run the assigner). A repeat with the same Idempotency-Key or id
        and the same content returns the existing job; other content raises JobConflict. Raises
        InvalidJob, NotFound (a lock to an unknown vehicle)."""
        check_new(job)
        digest = request_hash(job)
        existing = await self._existing(job.id, idempotency_key, digest)
        if existing is not None:
            return Created(existing, False)
        if job.locked_vehicle_id is not None:
            await self._known_vehicle(job.locked_vehicle_id)
        now = self._clock()
        evidence = (
            {} if job.locked_vehicle_id is None else {"locked_vehicle_id": job.locked_vehicle_id}
        )
        event = JobEventRow(
            id=0,
            job_id=job.id,
            ts_wall_ns=now,
            kind="created",
            from_state=None,
            to_state=JobState.NEW,
            reason_code=EventReason.CREATED.value,
            actor=actor,
            actor_id=actor_id,
            evidence=evidence,
        )
        try:
            row = await self._store.create_job(
                JobRow(job, 1, now, now, idempotency_key, digest), event, stream_events
            )
        except AlreadyExists:  # a concurrent creation with the same key or id won
            existing = await self._existing(job.id, idempotency_key, digest)
            if existing is None:
                raise JobConflict(f"job {job.id!r} exists") from None
            return Created(existing, False)
        self.counters["created"] += 1
        return Created(await self._assigned(row), True)

    async def transition(
        self,
        job_id: str,
        to_state: JobState,
        reason: str,
        actor: Actor,
        vehicle_id: str | None = None,
        evidence: Mapping[str, Any] | None = None,
        expected_version: int | None = None,
        *,
        reason_text: str = "",
        actor_id: str | None = None,
    ) -> JobRow:
        """Move a job to ``to_state`` for ``reason`` (a short code; ``reason_text`` says more).
        ``vehicle_id``: the vehicle an offer or assignment goes to. Raises NotFound,
        InvalidTransition, InvalidJob, JobConflict, StaleJob."""

        def change(job: Job) -> _Change:
            return _Change(moved(job, to_state, vehicle_id), "transition", reason, evidence or {})

        return await self._write(job_id, expected_version, change, actor, actor_id, reason_text)

    async def cancel(
        self,
        job_id: str,
        *,
        reason: str = EventReason.CANCELLED.value,
        reason_text: str = "",
        actor: Actor = "dispatcher",
        actor_id: str | None = None,
        expected_version: int | None = None,
    ) -> JobRow:
        """``transition`` to cancelled (allowed until work has begun at the stop)."""
        return await self.transition(
            job_id,
            JobState.CANCELLED,
            reason,
            actor,
            expected_version=expected_version,
            reason_text=reason_text,
            actor_id=actor_id,
        )

    async def set_lock(
        self,
        job_id: str,
        vehicle_id: str | None,
        *,
        reason_text: str = "",
        actor_id: str | None = None,
        expected_version: int | None = None,
    ) -> JobRow:
        """Lock the job to ``vehicle_id`` (only it may have the job) or, with None, unlock it;
        then run the assigner. Asking for the lock it has changes nothing. Raises NotFound,
        JobConflict (finished, or work begun on another vehicle), StaleJob."""
        if vehicle_id is not None:
            await self._known_vehicle(vehicle_id)
        row = await self._get(job_id)
        if row.job.locked_vehicle_id == vehicle_id and expected_version in (None, row.version):
            return row
        written = await self._write(
            job_id,
            expected_version,
            lambda job: relocked(job, vehicle_id),
            "dispatcher",
            actor_id,
            reason_text,
        )
        return await self._assigned(written)

    async def announce(
        self,
        job_id: str,
        *,
        eta: int | None = None,
        reason_text: str = "",
        actor_id: str | None = None,
        expected_version: int | None = None,
    ) -> JobRow:
        """Record that the job's ETA (``eta``, Unix s) was told to the customer; from then on
        re-plans keep its stop on its vehicle and in its place. Announcing again changes
        nothing. Raises NotFound, JobConflict (finished, or on no vehicle), StaleJob."""
        row = await self._get(job_id)
        if row.job.announced and expected_version in (None, row.version):
            return row
        return await self._write(
            job_id,
            expected_version,
            lambda job: announced(job, eta),
            "dispatcher",
            actor_id,
            reason_text,
        )

    async def answer(
        self,
        job_id: str,
        answer: Answer,
        *,
        reason_text: str = "",
        delay_s: int | None = None,
        vehicle_id: str | None = None,
        actor_id: str | None = None,
        expected_version: int | None = None,
    ) -> JobRow:
        """Apply a driver's answer: accept (offered -> assigned), reject (offered -> new, then
        the assigner runs), arrived, completed, failed, or delayed (no state change; ``delay_s``
        required). ``vehicle_id``, when given, must be the job's. Raises NotFound,
        AnswerRefused, JobConflict, InvalidJob, StaleJob."""
        wanted, reason, allowed = _ANSWER_RULES[answer]
        if answer == "delayed" and delay_s is None:
            raise InvalidJob("a delayed answer needs delay_s")

        def change(job: Job) -> _Change:
            if job.state not in allowed:
                raise AnswerRefused(job_id, job.state, answer)
            if vehicle_id is not None and vehicle_id != job.vehicle_id:
                raise JobConflict(f"job {job_id!r} is on {job.vehicle_id}, not {vehicle_id}")
            if wanted is None:
                return _Change(job, "delayed", reason.value, {"delay_s": delay_s})
            evidence = {"rejected_by": job.vehicle_id} if answer == "reject" else {}
            return _Change(moved(job, wanted, None), "transition", reason.value, evidence)

        row = await self._write(job_id, expected_version, change, "driver", actor_id, reason_text)
        return await self._assigned(row) if answer == "reject" else row

    # -- internals ---------------------------------------------------------------------------

    async def _write(
        self,
        job_id: str,
        expected_version: int | None,
        change: Callable[[Job], _Change],
        actor: Actor,
        actor_id: str | None,
        reason_text: str,
    ) -> JobRow:
        """Read, apply ``change`` (pure; it raises to refuse), write at the version read."""
        lost: StaleJob | None = None
        for _ in range(MAX_RETRIES):
            row = await self._get(job_id)
            if expected_version is not None and row.version != expected_version:
                raise StaleJob(job_id, expected_version, row.version)
            done = change(row.job)
            now = self._clock()
            event = JobEventRow(
                id=0,
                job_id=job_id,
                ts_wall_ns=now,
                kind=done.kind,
                from_state=row.job.state,
                to_state=done.job.state,
                reason_code=done.reason,
                reason_text=reason_text,
                actor=actor,
                actor_id=actor_id,
                vehicle_before=row.job.vehicle_id,
                vehicle_after=done.job.vehicle_id,
                evidence=done.evidence,
            )
            try:
                written = await self._store.update_job(
                    done.job,
                    expected_version=row.version,
                    updated_wall_ns=now,
                    event=event,
                    stream_for=stream_events,
                )
            except StaleJob as exc:
                if expected_version is not None:
                    raise
                self.counters["races"] += 1
                lost = exc
                continue
            self.counters["changes"] += 1
            return written
        assert lost is not None
        raise lost

    async def _get(self, job_id: str) -> JobRow:
        row = await self._store.get_job(job_id)
        if row is None:
            raise NotFound(f"no job {job_id!r}")
        return row

    async def _known_vehicle(self, vehicle_id: str) -> None:
        if await self._store.get_device(vehicle_id) is None:
            raise NotFound(f"no vehicle {vehicle_id!r}")

    async def _existing(self, job_id: str, key: str | None, digest: str) -> JobRow | None:
        """The job a repeated creation names (by key first, then id), if its content matches."""
        found = await self._store.job_by_idempotency_key(key) if key is not None else None
        how = "Idempotency-Key"
        if found is None:
            found, how = await self._store.get_job(job_id), "id"
        if found is not None and found.request_hash != digest:
            raise JobConflict(f"a job with this {how} exists ({found.job.id}) with other content")
        return found

    async def _assigned(self, row: JobRow) -> JobRow:
        """Run the assigner on ``row`` and return the job as it then is."""
        if self._assign is None:
            return row
        try:
            await self._assign(row)
        except CloudError as exc:
            self.counters["assign_failed"] += 1
            log.warning("assigning job %s failed: %s", row.job.id, exc)
        return await self._store.get_job(row.job.id) or row
