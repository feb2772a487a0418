"""The simulated driver: its decisions without I/O (``DriverMind``), then the driver on a real
job board and outbox behind a real driver socket, steering a simulated drive."""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from fleetlink_edge.config import JobSettings, OutboxSettings
from fleetlink_edge.driver_socket import DriverSocket
from fleetlink_edge.errors import ConfigError
from fleetlink_edge.job_rules import Answer, AnswerKind, JobState
from fleetlink_edge.jobs import JobBoard
from fleetlink_edge.offers import parse_offer
from fleetlink_edge.outbox import Outbox
from fleetlink_edge.sim.driver import (
    REJECT_REASON,
    Decision,
    DriverMind,
    DriverOptions,
    SeenJob,
    SimulatedDriver,
    SocketDesk,
)
from fleetlink_edge.sim.route import Drive, DriveState, distance_m
from fleetlink_protocols.records import Event
from tests.edge.test_jobs import events_in

HOME = (52.52, 13.405)
PICKUP = (52.5245, 13.405)  # 500 m north
DELIVERY = (52.5245, 13.4138)  # then 600 m east
ELSEWHERE = (52.515, 13.40)


def offer_args(
    job_id: str,
    stops: list[tuple[float, float]],
    *,
    service_s: int = 300,
    version: int = 1,
    respond_by: int | None = None,
) -> dict[str, Any]:
    kinds = ["single"] if len(stops) == 1 else ["pickup", "delivery"]
    return {
        "job_id": job_id,
        "kind": "single" if len(stops) == 1 else "shipment",
        "stops": [
            {"kind": k, "lat": lat, "lon": lon, "windows": [], "service_s": service_s}
            for k, (lat, lon) in zip(kinds, stops, strict=True)
        ],
        "respond_by": respond_by if respond_by is not None else int(time.time()) + 600,
        "version": version,
    }


def seen(args: dict[str, Any], state: JobState = JobState.OFFERED, arrived: int = 0) -> SeenJob:
    offer = parse_offer(args)
    return SeenJob(offer.job_id, offer.version, state, offer.stops, arrived)


def at(place: tuple[float, float], speed_mps: float = 0.0) -> DriveState:
    return DriveState(0.0, place[0], place[1], speed_mps, 0.0, 0.0, 750.0)


# -- decisions, without I/O ------------------------------------------------------------------


def test_an_offer_is_accepted_once_after_a_delay_in_the_range() -> None:
    mind = DriverMind(DriverOptions(reject_rate=0.0), random.Random(1))
    job = seen(offer_args("J-1", [PICKUP]))
    said = []
    for tick in range(41):  # 0 to 10 s
        now_s = 100.0 + tick * 0.25
        answers = mind.decide([job], at(HOME), now_s).answers
        said += [(now_s, a) for a in answers]
        if answers:
            job = replace(job, state=JobState.ACCEPTED)  # the board took it
    assert len(said) == 1
    when, answer = said[0]
    assert answer == Answer("J-1", AnswerKind.ACCEPT)
    assert 102.0 <= when <= 108.25


def test_the_reject_share_follows_the_rate_and_the_seed() -> None:
    jobs = [seen(offer_args(f"J-{i}", [PICKUP])) for i in range(200)]

    def rejected(rate: float, seed: int) -> list[str]:
        mind = DriverMind(DriverOptions(reject_rate=rate), random.Random(seed))
        mind.decide(jobs, at(HOME), 0.0)
        answers = mind.decide(jobs, at(HOME), 60.0).answers  # every delay is over
        assert len(answers) == len(jobs)
        assert all(a.reason == REJECT_REASON for a in answers if a.kind is AnswerKind.REJECT)
        return [a.job_id for a in answers if a.kind is AnswerKind.REJECT]

    share = len(rejected(0.25, 7)) / len(jobs)
    assert 0.17 < share < 0.33
    assert rejected(0.25, 7) == rejected(0.25, 7)
    assert rejected(0.25, 7) != rejected(0.25, 8)
    assert rejected(0.0, 7) == []
    assert len(rejected(1.0, 7)) == len(jobs)


def test_arrived_then_a_dwell_of_the_scaled_service_then_the_next_stop() -> None:
    options = DriverOptions(time_factor=0.5, min_dwell_s=70.0)
    mind = DriverMind(options, random.Random(0))
    args = offer_args("J-1", [PICKUP, DELIVERY], service_s=300)
    job = seen(args, JobState.ACCEPTED)
    assert mind.decide([job], at(HOME, 12.0), 0.0) == Decision((), PICKUP)
    assert mind.decide([job], at(PICKUP, 3.0), 1.0).answers == ()  # still rolling
    decided = mind.decide([job], at(PICKUP), 2.0)
    assert decided.answers == (Answer("J-1", AnswerKind.ARRIVED),)
    job = seen(args, JobState.ARRIVED, arrived=1)
    assert mind.decide([job], at(PICKUP), 3.0).goal == PICKUP  # the dwell starts: 150 s
    assert mind.decide([job], at(PICKUP), 152.9) == Decision((), PICKUP)
    assert mind.decide([job], at(PICKUP), 153.0) == Decision((), DELIVERY)
    assert mind.decide([job], at(DELIVERY), 400.0).answers == (Answer("J-1", AnswerKind.ARRIVED),)
    job = seen(args, JobState.ARRIVED, arrived=2)
    mind.decide([job], at(DELIVERY), 401.0)
    assert mind.decide([job], at(DELIVERY), 550.9).answers == ()
    assert mind.decide([job], at(DELIVERY), 551.0).answers == (Answer("J-1", AnswerKind.COMPLETED),)
    done = seen(args, JobState.COMPLETED, arrived=2)
    assert mind.decide([done], at(DELIVERY), 552.0) == Decision((), None)  # back to random driving


def test_short_services_still_dwell_the_minimum() -> None:
    mind = DriverMind(DriverOptions(min_dwell_s=70.0), random.Random(0))
    args = offer_args("J-1", [PICKUP], service_s=10)
    mind.decide([seen(args, JobState.ARRIVED, arrived=1)], at(PICKUP), 0.0)
    assert mind.decide([seen(args, JobState.ARRIVED, arrived=1)], at(PICKUP), 69.9).answers == ()
    assert mind.decide([seen(args, JobState.ARRIVED, arrived=1)], at(PICKUP), 70.0).answers == (
        Answer("J-1", AnswerKind.COMPLETED),
    )


def test_withdrawn_jobs_leave_the_plan_and_new_versions_are_answered_again() -> None:
    mind = DriverMind(DriverOptions(reject_rate=0.0, accept_delay_s=(1.0, 1.0)), random.Random(0))
    a, b = offer_args("J-A", [PICKUP]), offer_args("J-B", [ELSEWHERE])
    both = [seen(a, JobState.ACCEPTED), seen(b, JobState.ACCEPTED)]
    assert mind.decide(both, at(HOME, 10.0), 0.0).goal == PICKUP
    assert mind.route == ["J-A", "J-B"]
    withdrawn = [seen(a, JobState.WITHDRAWN), seen(b, JobState.ACCEPTED)]
    assert mind.decide(withdrawn, at(HOME, 10.0), 1.0) == Decision((), ELSEWHERE)
    assert mind.route == ["J-B"]
    v2 = seen(offer_args("J-B", [ELSEWHERE], version=2))
    assert mind.decide([v2], at(HOME, 10.0), 2.0) == Decision((), None)
    assert mind.decide([v2], at(HOME, 10.0), 3.0).answers == (Answer("J-B", AnswerKind.ACCEPT),)


def test_options_out_of_range_are_refused() -> None:
    with pytest.raises(ConfigError, match="reject rate"):
        DriverOptions(reject_rate=1.5)
    with pytest.raises(ConfigError, match="accept delay"):
        DriverOptions(accept_delay_s=(5.0, 2.0))


# -- the driver on a real board, through the driver socket ---------------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder with a short path: a Unix socket path has at most 107 bytes (sun_path)."""
    folder = Path(tempfile.mkdtemp(prefix="fl-simdrv-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Vehicle:
    board: JobBoard
    outbox: Outbox
    drive: Drive
    driver: SimulatedDriver

    async def offer(self, args: dict[str, Any]) -> None:
        await self.board.prepare("offer_job", args)()

    async def answers(self) -> list[tuple[str, str, object]]:
        events = [e for e in await events_in(self.outbox) if isinstance(e, Event)]
        assert {e.kind for e in events} <= {"job.answer"}
        out = []
        for e in events:
            stop = e.data.get("stop")
            out.append((str(e.data["job_id"]), str(e.data["answer"]), stop))
        return out


FAST = DriverOptions(
    reject_rate=0.0, accept_delay_s=(0.05, 0.1), min_dwell_s=0.4, time_factor=0.0, poll_s=0.02
)


async def _steps(drive: Drive) -> None:
    """Simulated seconds much faster than real ones: 1 s of driving every 5 ms."""
    while True:
        drive.step(1.0)
        await asyncio.sleep(0.005)


@pytest.fixture
async def vehicle(tmp_path: Path, short_dir: Path) -> AsyncIterator[Vehicle]:
    async with Outbox(OutboxSettings(path=tmp_path / "outbox.sqlite3"), boot_id=3) as outbox:
        board = JobBoard(JobSettings(), tmp_path / "jobs.json", outbox, now_wall_ns=time.time_ns)
        async with DriverSocket(board, short_dir / "driver.sock") as server:
            drive = Drive(*HOME, seed=11)
            driver = SimulatedDriver(SocketDesk(server.path), drive, FAST, seed=1, name="veh-t")
            tasks = [asyncio.create_task(c) for c in (driver.run(), _steps(drive))]
            try:
                yield Vehicle(board, outbox, drive, driver)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)


async def until(predicate: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_shipment_is_accepted_driven_and_completed_through_the_outbox(
    vehicle: Vehicle,
) -> None:
    await vehicle.offer(offer_args("J-1", [PICKUP, DELIVERY]))
    await until(lambda: vehicle.driver.counters["completed"] == 1)
    assert await vehicle.answers() == [
        ("J-1", "accept", None),
        ("J-1", "arrived", 0),
        ("J-1", "arrived", 1),
        ("J-1", "completed", None),
    ]
    assert vehicle.board.job("J-1").state is JobState.COMPLETED
    here = vehicle.drive.state()
    assert distance_m((here.lat_deg, here.lon_deg), DELIVERY) < 1.0  # completed where it ended
    await until(lambda: vehicle.drive.goal is None)  # and then drives about again
    await until(lambda: vehicle.drive.state().speed_mps > 0)
    assert vehicle.driver.counters["refused"] == 0


async def test_the_dwell_at_a_stop_lasts_before_the_vehicle_moves_on(vehicle: Vehicle) -> None:
    await vehicle.offer(offer_args("J-1", [PICKUP, DELIVERY]))
    await until(lambda: vehicle.board.job("J-1").stops_arrived == 1)
    arrived_s = time.monotonic()
    parked = (vehicle.drive.state().lat_deg, vehicle.drive.state().lon_deg)
    assert distance_m(parked, PICKUP) < 1.0
    await until(lambda: vehicle.drive.state().speed_mps > 0)
    assert time.monotonic() - arrived_s >= FAST.min_dwell_s - 0.05


async def test_a_withdrawn_job_is_dropped_and_the_next_one_driven(vehicle: Vehicle) -> None:
    await vehicle.offer(offer_args("J-A", [PICKUP]))
    await vehicle.offer(offer_args("J-B", [ELSEWHERE]))
    await until(lambda: len(vehicle.driver.mind.route) == 2)  # the board took both accepts
    first, second = vehicle.driver.mind.route  # in the order the random delays accepted them
    places = {"J-A": PICKUP, "J-B": ELSEWHERE}
    assert vehicle.drive.goal == places[first]
    await vehicle.board.prepare("withdraw_job", {"job_id": first, "reason": "reassigned"})()
    await until(lambda: vehicle.drive.goal == places[second])
    await until(lambda: vehicle.driver.counters["completed"] == 1)
    answers = await vehicle.answers()
    assert [a for a in answers if a[0] == first] == [(first, "accept", None)]
    assert answers[-1] == (second, "completed", None)
    assert vehicle.board.job(first).state is JobState.WITHDRAWN
    assert vehicle.driver.counters["refused"] == 0


async def test_rejections_carry_a_reason_to_the_outbox(tmp_path: Path, short_dir: Path) -> None:
    async with Outbox(OutboxSettings(path=tmp_path / "outbox.sqlite3"), boot_id=4) as outbox:
        board = JobBoard(JobSettings(), tmp_path / "jobs.json", outbox, now_wall_ns=time.time_ns)
        async with DriverSocket(board, short_dir / "driver.sock") as server:
            drive = Drive(*HOME)
            driver = SimulatedDriver(
                SocketDesk(server.path), drive, replace(FAST, reject_rate=1.0), seed=0, name="v"
            )
            await board.prepare("offer_job", offer_args("J-9", [PICKUP]))()
            loop = asyncio.get_running_loop()
            while driver.counters["reject"] == 0:
                await driver.turn(loop.time())
                await asyncio.sleep(0.02)
            (event,) = await events_in(outbox)
    assert isinstance(event, Event)
    assert (event.data["answer"], event.data["reason"]) == ("reject", REJECT_REASON)
    assert board.job("J-9").state is JobState.REJECTED
    assert drive.goal is None


async def test_a_driver_without_an_agent_waits_quietly(short_dir: Path) -> None:
    drive = Drive(*HOME)
    driver = SimulatedDriver(SocketDesk(short_dir / "none.sock"), drive, FAST, seed=0, name="v")
    await driver.turn(0.0)
    assert drive.goal is None
    assert sum(driver.counters.values()) == 0
