"""What the job board allows: job states, the driver's answers and the Event each makes, offers
and withdrawals on the board, pruning, and the board as kept on disk. Pure: ``now`` is given.

::

    offered --accept--> accepted --arrived--> arrived (once per stop) --completed--> completed
    offered, accepted --reject--> rejected        accepted, arrived --delayed--> (unchanged)
    offered, accepted, arrived --withdraw_job--> withdrawn     newer offer version --> offered
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from fleetlink_edge.offers import (
    JobNotStored,
    JobRefused,
    JobUpdate,
    Offer,
    UnknownJob,
    offer_args,
    parse_offer,
)
from fleetlink_protocols.limits import MAX_TEXT_LEN
from fleetlink_protocols.records import Event, SignalScalar

log = logging.getLogger(__name__)

ANSWER_EVENT: Final = "job.answer"
MAX_DELAY_S: Final = 24 * 3600
FILE_FORMAT: Final = 1
_NS = 1_000_000_000


class JobState(enum.StrEnum):
    OFFERED = "offered"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    ARRIVED = "arrived"
    COMPLETED = "completed"
    WITHDRAWN = "withdrawn"


FINISHED: Final = frozenset({JobState.REJECTED, JobState.COMPLETED, JobState.WITHDRAWN})


class AnswerKind(enum.StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"
    ARRIVED = "arrived"
    COMPLETED = "completed"
    DELAYED = "delayed"


S, A = JobState, AnswerKind
# The states an answer may be given in, and the state it leaves the job in (None: unchanged).
RULES: Final[Mapping[AnswerKind, tuple[frozenset[JobState], JobState | None]]] = {
    A.ACCEPT: (frozenset({S.OFFERED}), S.ACCEPTED),
    A.REJECT: (frozenset({S.OFFERED, S.ACCEPTED}), S.REJECTED),
    A.ARRIVED: (frozenset({S.ACCEPTED, S.ARRIVED}), S.ARRIVED),
    A.COMPLETED: (frozenset({S.ARRIVED}), S.COMPLETED),
    A.DELAYED: (frozenset({S.ACCEPTED, S.ARRIVED}), None),
}
NEEDS_REASON: Final = frozenset({A.REJECT, A.DELAYED})


@dataclass(frozen=True, slots=True)
class Answer:
    """What the driver says about a job; ``delay_s`` only (and always) for ``delayed``."""

    job_id: str
    kind: AnswerKind
    reason: str = ""
    delay_s: int | None = None


@dataclass(frozen=True, slots=True)
class Job:
    """A job on the board: its newest offer and where the driver is with it."""

    offer: Offer
    state: JobState
    received_wall_ns: int  # when this offer version reached the device
    changed_wall_ns: int  # the last change of state
    stops_arrived: int = 0
    reason: str = ""  # of the last answer, or of the withdrawal
    delay_s: int | None = None  # the last delay the driver announced
    eta_s: int | None = None  # Unix s, from update_job
    note: str | None = None  # from update_job

    @property
    def job_id(self) -> str:
        return self.offer.job_id

    def late(self, now_wall_ns: int) -> bool:
        """Still unanswered after its ``respond_by``."""
        return self.state is S.OFFERED and now_wall_ns > self.offer.respond_by_s * _NS


Jobs = dict[str, Job]


def answered(job: Job | None, answer: Answer, now_wall_ns: int) -> tuple[Job, Event]:
    """The job after ``answer``, and the Event that reports it. Raises JobRefused."""
    if job is None:
        raise UnknownJob(f"no job {answer.job_id!r} on this device")
    _check_fields(answer)
    allowed, after = RULES[answer.kind]
    if job.state not in allowed:
        raise JobRefused(_refusal(job, answer.kind, allowed))
    arrived, stops = job.stops_arrived, len(job.offer.stops)
    if answer.kind is A.ARRIVED:
        if arrived >= stops:
            raise JobRefused(f"job {job.job_id} arrived at its last stop already")
        arrived += 1
    if answer.kind is A.COMPLETED and arrived < stops:
        raise JobRefused(f"job {job.job_id} has arrived at {arrived} of {stops} stops")
    data: dict[str, SignalScalar] = {
        "job_id": job.job_id,
        "answer": answer.kind.value,
        "offer_version": job.offer.version,
        "reason": answer.reason,
        "late": job.late(now_wall_ns),
    }
    if answer.delay_s is not None:
        data["delay_s"] = answer.delay_s
    if answer.kind is A.ARRIVED:
        data["stop"] = arrived - 1  # index into the offer's stops
    new = replace(
        job,
        state=after or job.state,
        changed_wall_ns=now_wall_ns,
        stops_arrived=arrived,
        reason=answer.reason,
        delay_s=job.delay_s if answer.delay_s is None else answer.delay_s,
    )
    return new, Event(now_wall_ns, ANSWER_EVENT, data)


def _check_fields(answer: Answer) -> None:
    if len(answer.reason) > MAX_TEXT_LEN:
        raise JobRefused(f"the reason is longer than {MAX_TEXT_LEN} characters")
    if answer.kind in NEEDS_REASON and not answer.reason.strip():
        raise JobRefused(f"{answer.kind} needs a reason")
    if answer.kind is A.DELAYED:
        delay = answer.delay_s
        if delay is None or isinstance(delay, bool) or not 0 < delay <= MAX_DELAY_S:
            raise JobRefused(f"delayed needs delay_s from 1 to {MAX_DELAY_S} seconds")
    elif answer.delay_s is not None:
        raise JobRefused("delay_s goes only with delayed")


def _refusal(job: Job, kind: AnswerKind, allowed: frozenset[JobState]) -> str:
    if job.state is S.WITHDRAWN:
        return f"job {job.job_id} was withdrawn" + (f": {job.reason}" if job.reason else "")
    if job.state in FINISHED:
        return f"job {job.job_id} is {job.state} already"
    need = " or ".join(sorted(allowed))
    return f"job {job.job_id} is {job.state}; {kind} is possible only when it is {need}"


def check_version(current: Job | None, offer: Offer) -> None:
    """Raises JobRefused for an offer older than the one on the board."""
    if current is not None and offer.version < current.offer.version:
        raise JobRefused(
            f"job {offer.job_id} is at version {current.offer.version};"
            f" version {offer.version} is older"
        )


def check_fresh(offer: Offer, now_wall_ns: int, keep_s: float) -> None:
    """Raises JobRefused for an offer the board would drop at once (its respond_by is more than
    ``keep_s`` past on the device clock): acking it stored would mislead the cloud."""
    if now_wall_ns - offer.respond_by_s * _NS > keep_s * _NS:
        raise JobRefused(
            f"respond_by {offer.respond_by_s} is {now_wall_ns // _NS - offer.respond_by_s} s"
            f" past (device clock); offers stay {keep_s:g} s after it (jobs.keep_finished_s)"
        )


def with_offer(
    jobs: Jobs, offer: Offer, now_wall_ns: int, max_jobs: int, keep_s: float
) -> tuple[Jobs, str]:
    """The board with ``offer``: a new job, or a newer version that asks the driver again.
    Raises JobRefused (an older version, a stale offer) or JobNotStored (the board is full)."""
    current = jobs.get(offer.job_id)
    check_version(current, offer)
    check_fresh(offer, now_wall_ns, keep_s)
    tag = f"job {offer.job_id} version {offer.version}"
    if current is not None and offer.version == current.offer.version:
        return jobs, f"{tag} is stored already ({current.state})"
    out = dict(jobs)
    if current is None:
        _make_room(out, max_jobs)
        detail = f"{tag} stored"
    else:
        detail = f"{tag} stored over version {current.offer.version} ({current.state})"
    out[offer.job_id] = Job(offer, S.OFFERED, now_wall_ns, now_wall_ns)
    return out, detail


def _make_room(jobs: Jobs, max_jobs: int) -> None:
    """Drop the oldest finished jobs until one more fits; raises JobNotStored if none is."""
    while len(jobs) >= max_jobs:
        finished = [j for j in jobs.values() if j.state in FINISHED]
        if not finished:
            raise JobNotStored(f"the job board is full: {len(jobs)} open jobs (jobs.max_jobs)")
        del jobs[min(finished, key=lambda j: j.changed_wall_ns).job_id]


def with_withdrawal(jobs: Jobs, job_id: str, reason: str, now_wall_ns: int) -> tuple[Jobs, str]:
    """The board with ``job_id`` withdrawn; a finished or unknown job stays as it is."""
    job = jobs.get(job_id)
    if job is None:
        return jobs, f"job {job_id} is not on this device"
    if job.state in FINISHED:
        return jobs, f"job {job_id} is {job.state} already; left as it is"
    gone = replace(job, state=S.WITHDRAWN, changed_wall_ns=now_wall_ns, reason=reason)
    out = {**jobs, job_id: gone}
    return out, f"job {job_id} withdrawn (was {job.state})"


def with_update(jobs: Jobs, update: JobUpdate) -> tuple[Jobs, str]:
    """The board with ``update``'s fields set on its job. Raises UnknownJob."""
    job = jobs.get(update.job_id)
    if job is None:
        raise UnknownJob(f"no job {update.job_id!r} on this device")
    eta = update.eta_s if "eta" in update.fields else job.eta_s
    note = update.note if "note" in update.fields else job.note
    return {**jobs, job.job_id: replace(job, eta_s=eta, note=note)}, f"job {job.job_id} updated"


def pruned(jobs: Jobs, now_wall_ns: int, keep_s: float) -> Jobs:
    """Without jobs finished, or offers unanswered past ``respond_by``, more than ``keep_s`` ago
    (``jobs`` itself when nothing goes)."""
    keep_ns = int(keep_s * _NS)

    def gone(job: Job) -> bool:
        if job.state in FINISHED:
            return now_wall_ns - job.changed_wall_ns > keep_ns
        return job.state is S.OFFERED and now_wall_ns - job.offer.respond_by_s * _NS > keep_ns

    kept = {k: j for k, j in jobs.items() if not gone(j)}
    return jobs if len(kept) == len(jobs) else kept


def to_document(jobs: Jobs) -> dict[str, Any]:
    """The board as kept on disk (JSON)."""
    return {"format": FILE_FORMAT, "jobs": [_job_document(j) for j in jobs.values()]}


def _job_document(job: Job) -> dict[str, Any]:
    return {
        "offer": offer_args(job.offer),
        "state": job.state.value,
        "received_wall_ns": job.received_wall_ns,
        "changed_wall_ns": job.changed_wall_ns,
        "stops_arrived": job.stops_arrived,
        "reason": job.reason,
        "delay_s": job.delay_s,
        "eta": job.eta_s,
        "note": job.note,
    }


def from_document(doc: object) -> tuple[Jobs, int]:
    """The board of a kept document, and how many entries were unreadable (left out).
    Raises ValueError when it is not a job board at all."""
    if not isinstance(doc, dict) or doc.get("format") != FILE_FORMAT:
        raise ValueError(f"not a job board of format {FILE_FORMAT}")
    entries = doc.get("jobs")
    if not isinstance(entries, list):
        raise ValueError("no list of jobs")
    jobs: Jobs = {}
    for raw in entries:
        try:
            job = _job_of(raw)
        except (JobRefused, ValueError, TypeError, KeyError) as exc:
            log.error("a kept job is unreadable and left out: %s", exc)
            continue
        jobs[job.job_id] = job
    return jobs, len(entries) - len(jobs)


def _job_of(raw: Any) -> Job:
    offer = parse_offer(raw["offer"])
    ints = {k: raw[k] for k in ("received_wall_ns", "changed_wall_ns", "stops_arrived")}
    opt_ints = {k: raw.get(k) for k in ("delay_s", "eta")}
    if any(type(v) is not int or v < 0 for v in ints.values()) or any(
        v is not None and type(v) is not int for v in opt_ints.values()
    ):
        raise ValueError(f"job {offer.job_id}: malformed times or counts")
    if not isinstance(raw.get("reason"), str) or not isinstance(raw.get("note"), str | None):
        raise ValueError(f"job {offer.job_id}: malformed reason or note")
    return Job(
        offer,
        JobState(raw["state"]),
        ints["received_wall_ns"],
        ints["changed_wall_ns"],
        min(ints["stops_arrived"], len(offer.stops)),
        raw["reason"],
        opt_ints["delay_s"],
        opt_ints["eta"],
        raw["note"],
    )
