"""A simulated driver: answers the job offers on its vehicle's board and drives to the jobs.

It uses the agent's driver socket exactly as a driver's app does (docs/driver.md), so every
answer is checked by the job board and travels as a ``job.answer`` Event through the outbox.
``DriverMind`` is the pure part: given the jobs as the board shows them, where the vehicle is and
the time, it says what to answer and where to drive. ``SimulatedDriver`` is its loop: poll the
socket, answer, steer the simulated drive.

An offer is accepted after a random delay, or rejected (``reject_rate``); accepted jobs are
driven in the order they were accepted, stop by stop (a pickup before its delivery): ``arrived``
on reaching a stop, a dwell there of the service time times ``time_factor`` but at least
``min_dwell_s`` (the cloud's geofence wants the vehicle within 75 m for 60 s), ``completed`` after
the last stop's dwell. A job that leaves the board's active states (withdrawn, say) is dropped
from the plan at once; with no job left, the drive goes back to its loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from fleetlink_edge.driver_socket import DriverUnavailable, request
from fleetlink_edge.errors import ConfigError
from fleetlink_edge.job_rules import Answer, AnswerKind, JobState
from fleetlink_edge.offers import JobError, JobNotStored, JobRefused, Stop, UnknownJob, parse_offer
from fleetlink_edge.sim.route import Drive, DriveState, distance_m

log = logging.getLogger(__name__)

ACTIVE: Final = frozenset({JobState.ACCEPTED, JobState.ARRIVED})
REJECT_REASON: Final = "simulated driver: declined"
STARTUP_GRACE_S: Final = 30.0  # the agent serves its driver socket only once it has started
# Answers given, by kind, and answers the board did not take.
DRIVER_COUNTERS: Final = (*(kind.value for kind in AnswerKind), "refused")
Place = tuple[float, float]  # lat, lon degrees


@dataclass(frozen=True)
class DriverOptions:
    """How a simulated driver behaves; times in seconds of the simulation."""

    reject_rate: float = 0.1
    accept_delay_s: tuple[float, float] = (2.0, 8.0)
    time_factor: float = 1.0  # a stop's service_s is multiplied by this
    min_dwell_s: float = 70.0
    arrive_radius_m: float = 20.0
    poll_s: float = 1.0
    retry_s: float = 10.0  # an answer that did not get through is given again after this

    def __post_init__(self) -> None:
        low, high = self.accept_delay_s
        if not 0.0 <= self.reject_rate <= 1.0:
            raise ConfigError(f"reject rate must be from 0 to 1, not {self.reject_rate:g}")
        if not 0.0 <= low <= high:
            raise ConfigError(f"accept delay must be 0 <= low <= high, not {low:g}-{high:g}")
        if self.time_factor < 0 or self.min_dwell_s < 0:
            raise ConfigError("time factor and dwell must not be negative")
        if self.poll_s <= 0 or self.retry_s <= 0 or self.arrive_radius_m <= 0:
            raise ConfigError("poll period, retry period and arrival radius must be positive")


@dataclass(frozen=True, slots=True)
class SeenJob:
    """The parts of a job the driver acts on, as the driver interface shows them."""

    job_id: str
    version: int
    state: JobState
    stops: tuple[Stop, ...]
    stops_arrived: int


def seen_job(view: Mapping[str, Any]) -> SeenJob:
    """From a JOB object of the driver socket. Raises JobRefused, ValueError or KeyError."""
    keys = ("job_id", "kind", "stops", "respond_by", "version")
    offer = parse_offer({k: view.get(k) for k in keys})
    arrived = view["stops_arrived"]
    if type(arrived) is not int or not 0 <= arrived <= len(offer.stops):
        raise ValueError(f"job {offer.job_id}: stops_arrived {arrived!r} is out of range")
    return SeenJob(offer.job_id, offer.version, JobState(view["state"]), offer.stops, arrived)


@dataclass(frozen=True, slots=True)
class Decision:
    """What to say now, and where to drive (None: nowhere in particular)."""

    answers: tuple[Answer, ...] = ()
    goal: Place | None = None


@dataclass(frozen=True, slots=True)
class _Reply:
    version: int
    due_s: float
    accept: bool


@dataclass(frozen=True, slots=True)
class _Serving:
    job_id: str
    version: int
    stop: int
    until_s: float


def _place(stop: Stop) -> Place:
    return stop.lat_deg, stop.lon_deg


@dataclass
class DriverMind:
    """The driver's decisions. Pure: the caller gives the jobs, the position and ``now_s``."""

    options: DriverOptions
    rng: random.Random
    _replies: dict[str, _Reply] = field(default_factory=dict, init=False)
    _route: list[str] = field(default_factory=list, init=False)  # active ids, in order accepted
    _serving: _Serving | None = field(default=None, init=False)
    _served: set[tuple[str, int, int]] = field(
        default_factory=set, init=False
    )  # job, version, stop

    @property
    def route(self) -> list[str]:
        return list(self._route)

    def decide(self, jobs: Sequence[SeenJob], here: DriveState, now_s: float) -> Decision:
        """The answers due and the goal, for the board as it is now (oldest offer first)."""
        by_id = {j.job_id: j for j in jobs}
        answers = self._reply_to_offers(jobs, now_s)
        kept = [k for k in self._route if k in by_id and by_id[k].state in ACTIVE]
        self._route = kept + [j.job_id for j in jobs if j.state in ACTIVE and j.job_id not in kept]
        self._served = {s for s in self._served if s[0] in self._route}
        if not self._route:
            self._serving = None
            return Decision(tuple(answers))
        work, goal = self._work(by_id[self._route[0]], here, now_s)
        return Decision((*answers, *work), goal)

    def _reply_to_offers(self, jobs: Iterable[SeenJob], now_s: float) -> list[Answer]:
        offered = {j.job_id: j for j in jobs if j.state is JobState.OFFERED}
        self._replies = {
            k: r
            for k, r in self._replies.items()
            if k in offered and r.version == offered[k].version
        }
        out: list[Answer] = []
        for job in offered.values():
            reply = self._replies.get(job.job_id)
            if reply is None:  # a new offer, or a new version of one: decide afresh
                low, high = self.options.accept_delay_s
                delay_s = self.rng.uniform(low, high)
                accept = self.rng.random() >= self.options.reject_rate
                reply = _Reply(job.version, now_s + delay_s, accept)
            if now_s >= reply.due_s:
                out.append(
                    Answer(job.job_id, AnswerKind.ACCEPT)
                    if reply.accept
                    else Answer(job.job_id, AnswerKind.REJECT, REJECT_REASON)
                )
                reply = _Reply(reply.version, now_s + self.options.retry_s, reply.accept)
            self._replies[job.job_id] = reply
        return out

    def _work(self, job: SeenJob, here: DriveState, now_s: float) -> tuple[list[Answer], Place]:
        """The next step of the first job on the route: drive, arrive, dwell, complete."""
        serving = self._serving
        if serving is not None and (serving.job_id, serving.version) != (job.job_id, job.version):
            serving = self._serving = None
        if serving is not None:
            if now_s < serving.until_s:
                return [], _place(job.stops[serving.stop])
            self._served.add((job.job_id, job.version, serving.stop))
            self._serving = None
        done, key = job.stops_arrived, (job.job_id, job.version)
        if done > 0 and (*key, done - 1) not in self._served:  # the board took our "arrived"
            stop = job.stops[done - 1]
            dwell_s = max(self.options.min_dwell_s, stop.service_s * self.options.time_factor)
            self._serving = _Serving(job.job_id, job.version, done - 1, now_s + dwell_s)
            return [], _place(stop)
        if done == len(job.stops):
            return [Answer(job.job_id, AnswerKind.COMPLETED)], _place(job.stops[-1])
        goal = _place(job.stops[done])
        away_m = distance_m((here.lat_deg, here.lon_deg), goal)
        if here.speed_mps == 0.0 and away_m <= self.options.arrive_radius_m:
            return [Answer(job.job_id, AnswerKind.ARRIVED)], goal
        return [], goal


class SocketDesk:
    """The agent's job board through its driver socket (docs/driver.md "The socket protocol")."""

    def __init__(self, path: Path, *, timeout_s: float = 5.0) -> None:
        self.path = path
        self._timeout_s = timeout_s

    async def jobs(self) -> list[SeenJob]:
        """The jobs on the board, oldest offer first; one it cannot read is left out (logged).
        Raises DriverUnavailable."""
        response = await self._ask({"op": "list"})
        views = response.get("jobs")
        if not isinstance(views, list):
            raise DriverUnavailable("the agent's list has no jobs")
        out = []
        for view in views:
            try:
                out.append(seen_job(view))
            except (JobRefused, ValueError, KeyError, TypeError, AttributeError) as exc:
                log.warning("a job on %s is not readable: %s", self.path, exc)
        return out

    async def answer(self, answer: Answer) -> None:
        """Give ``answer``; returns once it is in the outbox. Raises JobError or
        DriverUnavailable."""
        message: dict[str, Any] = {
            "op": "answer",
            "job_id": answer.job_id,
            "answer": answer.kind.value,
        }
        if answer.reason:
            message["reason"] = answer.reason
        if answer.delay_s is not None:
            message["delay_s"] = answer.delay_s
        await self._ask(message)

    async def _ask(self, message: Mapping[str, Any]) -> dict[str, Any]:
        response = await request(self.path, message, timeout_s=self._timeout_s)
        if response.get("ok") is True:
            return response
        code, text = response.get("error"), str(response.get("message", ""))
        if code == "unknown_job":
            raise UnknownJob(text)
        if code == "not_stored":
            raise JobNotStored(text)
        if code == "busy":
            raise DriverUnavailable(f"the driver socket is busy: {text}")
        raise JobRefused(f"{code}: {text}")


class SimulatedDriver:
    """The driver of one simulated vehicle: ``run()`` polls, answers and steers ``drive``."""

    def __init__(
        self, desk: SocketDesk, drive: Drive, options: DriverOptions, *, seed: int, name: str
    ) -> None:
        self._desk = desk
        self._drive = drive
        self._options = options
        self.mind = DriverMind(options, random.Random(f"driver:{seed}"))
        self.name = name
        self.counters: dict[str, int] = dict.fromkeys(DRIVER_COUNTERS, 0)
        self._down_since_s: float | None = None  # the socket has not answered since then
        self._was_up = False
        self._warned = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.turn(loop.time())
            await asyncio.sleep(self._options.poll_s)

    async def turn(self, now_s: float) -> None:
        """One look at the board: answer what is due, then steer toward the goal."""
        try:
            jobs = await self._desk.jobs()
        except DriverUnavailable as exc:
            self._unreachable(exc, now_s)
            return
        self._down_since_s, self._was_up, self._warned = None, True, False
        decision = self.mind.decide(jobs, self._drive.state(), now_s)
        for answer in decision.answers:
            try:
                await self._desk.answer(answer)
            except JobError as exc:
                self.counters["refused"] += 1
                log.info(
                    "%s driver: %s %s not taken: %s", self.name, answer.kind, answer.job_id, exc
                )
                continue
            except DriverUnavailable as exc:
                self._unreachable(exc, now_s)
                break
            self.counters[answer.kind.value] += 1
            log.info("%s driver: %s %s", self.name, answer.kind, answer.job_id)
        self._drive.steer(decision.goal)

    def _unreachable(self, exc: DriverUnavailable, now_s: float) -> None:
        """Warn once per outage; while the agent starts (STARTUP_GRACE_S), only debug."""
        if self._down_since_s is None:
            self._down_since_s = now_s
        starting = not self._was_up and now_s - self._down_since_s < STARTUP_GRACE_S
        if self._warned or starting:
            log.debug("%s driver: %s", self.name, exc)
            return
        log.warning("%s driver: %s", self.name, exc)
        self._warned = True
