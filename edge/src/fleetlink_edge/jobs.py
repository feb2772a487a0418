"""The device's job board: offers from the cloud, the driver's answers, kept across restarts.

Offers arrive as ``offer_job`` commands (``offers``) and are kept with their state in one small
JSON file beside the outbox, written atomically. A driver's ``Answer`` is checked against its
job's state (``job_rules``), then appended to the outbox as an Event ``job.answer`` *before* the
board changes: once ``JobBoard.answer`` returns, the answer survives a power cut and a dead
link like any record, and travels on the ``events`` lane. docs/driver.md has the rules.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from fleetlink_edge.capture import RecordSink
from fleetlink_edge.config import EdgeSettings, JobSettings
from fleetlink_edge.errors import OutboxError
from fleetlink_edge.job_rules import (
    Answer,
    Job,
    Jobs,
    answered,
    check_fresh,
    check_version,
    from_document,
    pruned,
    to_document,
    with_offer,
    with_update,
    with_withdrawal,
)
from fleetlink_edge.offers import (
    JobNotStored,
    JobRefused,
    UnknownJob,
    check_job_id,
    parse_offer,
    parse_update,
    parse_withdrawal,
)
from fleetlink_edge.statefile import write_atomically
from fleetlink_protocols.records import Event

log = logging.getLogger(__name__)

# Few on purpose: they ride in every Health record, which holds at most 128 counters.
BOARD_COUNTERS: Final = (
    "offers",  # offer_job commands done
    "answers",
    "answers_refused",
    "persist_failures",  # the board file could not be written
    "unreadable",  # kept boards or jobs that could not be read at start
)
_NS = 1_000_000_000
Plan = Callable[[Jobs, int], tuple[Jobs, str]]
Work = Callable[[], Awaitable[str]]


def jobs_file(settings: EdgeSettings) -> Path:
    """Where the board is kept: ``jobs.path``, else beside the outbox (``outbox.jobs.json``)."""
    return settings.jobs.path or settings.outbox.path.with_suffix(".jobs.json")


class JobBoard:
    """The board on the running agent. Built by the composition root; ``sink`` is the outbox,
    the same ``append`` the capture loop writes through."""

    def __init__(
        self,
        settings: JobSettings,
        path: Path,
        sink: RecordSink,
        *,
        now_wall_ns: Callable[[], int],
    ) -> None:
        self._settings = settings
        self._path = path
        self._sink = sink
        self._now = now_wall_ns
        self._jobs: Jobs = {}
        self._lock = asyncio.Lock()  # one change at a time: plan, keep, swap
        self.counters: dict[str, int] = dict.fromkeys(BOARD_COUNTERS, 0)

    async def load(self) -> None:
        """Read the kept board. None kept: empty. A file that is not a board is moved aside;
        one that cannot be read is left (both logged, counted as ``unreadable``)."""
        try:
            text = await asyncio.to_thread(self._path.read_text, encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as exc:  # not ours to move aside; the next change writes it anew
            self.counters["unreadable"] += 1
            log.critical("job board %s cannot be read (%s); starting empty", self._path, exc)
            return
        try:
            jobs, skipped = from_document(json.loads(text))
        except ValueError as exc:  # JSONDecodeError is one
            stamp = datetime.fromtimestamp(self._now() / _NS, UTC).strftime("%Y%m%dT%H%M%SZ")
            aside = self._path.with_name(f"{self._path.name}.corrupt-{stamp}")
            await asyncio.to_thread(os.replace, self._path, aside)
            self.counters["unreadable"] += 1
            log.critical("job board %s is unreadable (%s); moved to %s", self._path, exc, aside)
            return
        self.counters["unreadable"] += skipped
        self._jobs = jobs
        log.info("job board: %d jobs restored from %s", len(jobs), self._path)

    def now_wall_ns(self) -> int:
        return self._now()

    def jobs(self) -> list[Job]:
        """The jobs on the board, oldest offer first."""
        self._jobs = pruned(self._jobs, self._now(), self._settings.keep_finished_s)
        return sorted(self._jobs.values(), key=lambda j: j.received_wall_ns)

    def job(self, job_id: str) -> Job:
        """Raises UnknownJob."""
        job = next((j for j in self.jobs() if j.job_id == job_id), None)
        if job is None:
            raise UnknownJob(f"no job {job_id!r} on this device")
        return job

    def prepare(self, name: str, args: Mapping[str, Any]) -> Work:
        """The work of a job command whose args are fine; it returns the ack's detail or raises
        JobError. Raises JobRefused (bad args, an older offer, an unknown job to update)."""
        if name == "offer_job":
            offer = parse_offer(args)
            limit, keep_s = self._settings.max_jobs, self._settings.keep_finished_s
            check_version(self._jobs.get(offer.job_id), offer)
            check_fresh(offer, self._now(), keep_s)
            return self._work(
                lambda jobs, now: with_offer(jobs, offer, now, limit, keep_s), "offers"
            )
        if name == "withdraw_job":
            w = parse_withdrawal(args)
            return self._work(lambda jobs, now: with_withdrawal(jobs, w.job_id, w.reason, now))
        if name == "update_job":
            update = parse_update(args)
            self.job(update.job_id)
            return self._work(lambda jobs, _now: with_update(jobs, update))
        raise JobRefused(f"{name} is not a job command")

    def _work(self, plan: Plan, counter: str | None = None) -> Work:
        async def work() -> str:
            detail = await self._change(plan)
            if counter is not None:
                self.counters[counter] += 1
            return detail

        return work

    async def _change(self, plan: Plan) -> str:
        """Plan against the board now, keep the result on disk, then use it."""
        async with self._lock:
            now = self._now()
            jobs = pruned(self._jobs, now, self._settings.keep_finished_s)
            new, detail = plan(jobs, now)
            if new is not jobs:
                await self._keep(new)
            self._jobs = new
            return detail

    async def answer(self, answer: Answer) -> tuple[Job, Event]:
        """Check ``answer``, append its Event to the outbox, then change the board. Raises
        JobRefused, or JobNotStored when the outbox cannot take it (the board is unchanged)."""
        check_job_id(answer.job_id)
        async with self._lock:
            now = self._now()
            jobs = pruned(self._jobs, now, self._settings.keep_finished_s)
            try:
                job, event = answered(jobs.get(answer.job_id), answer, now)
            except JobRefused:
                self.counters["answers_refused"] += 1
                raise
            try:
                stored = await self._sink.append([event])
            except OutboxError as exc:
                raise JobNotStored(f"the outbox cannot take the answer: {exc}") from exc
            if not stored:
                raise JobNotStored("the outbox refused the answer (see the agent log)")
            new = {**jobs, job.job_id: job}
            try:
                await self._keep(new)
            except JobNotStored as exc:  # the answer is out; only the board may be stale
                log.error(
                    "answer %s of job %s is in the outbox, but the board is not kept: %s",
                    answer.kind,
                    job.job_id,
                    exc,
                )
            self._jobs = new
        self.counters["answers"] += 1
        log.info("job %s: %s (%s)", job.job_id, answer.kind, job.state)
        return job, event

    async def _keep(self, jobs: Jobs) -> None:
        text = json.dumps(to_document(jobs), separators=(",", ":"))
        try:
            await asyncio.to_thread(write_atomically, self._path, text)
        except OSError as exc:
            self.counters["persist_failures"] += 1
            raise JobNotStored(f"cannot keep the job board in {self._path}: {exc}") from exc
