"""The live dispatcher against a real store (SQLite and PostgreSQL) and the real stream events:
records go in through ``ingest_batch`` with ingest's own ``stream_events``, presence through
births and deaths, and every stream event the store then holds is handed to the dispatcher in
id order, as the bus would. Commands stay queued in the store (no broker): the tests read them
back. The clock is fixed and moved by hand."""

from __future__ import annotations

import asyncio
import re
import tomllib
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetlink_cloud.api import ApiContext, create_app
from fleetlink_cloud.bus import EventBus, StreamEvent
from fleetlink_cloud.commands import CommandService
from fleetlink_cloud.config import ApiSettings
from fleetlink_cloud.dispatch.geofence import GeofenceSettings
from fleetlink_cloud.dispatch.model import Job, JobState, Location, RouteStop, Stop, StopKind
from fleetlink_cloud.dispatch.rules import (
    AntiThrash,
    FaultSettings,
    OfflineSettings,
    RuleSettings,
)
from fleetlink_cloud.dispatch.settings import DispatchSettings
from fleetlink_cloud.dispatcher import Dispatcher
from fleetlink_cloud.ingest.events import stream_events
from fleetlink_cloud.store import IngestBatch, Store, open_store
from fleetlink_cloud.store.base import CommandRow, JobRow, Lane
from fleetlink_protocols.records import (
    Dtc,
    DtcSource,
    Entry,
    Event,
    Position,
    Record,
    SignalScalar,
)
from tests.cloud.api.harness import mint
from tests.cloud.store.conftest import postgres_db, store_url  # noqa: F401  (fixtures)

S = 1_000_000_000
NOW_S = 1_750_000_000  # cloud clock at the start of every test
HERE = Location(52.5200, 13.4000)  # veh-a: next to the customer
NEAR = Location(52.5000, 13.4500)  # veh-b: 4 km away
FAR = Location(52.4000, 13.2000)  # veh-c: 19 km away
CUSTOMER = Location(52.5210, 13.4010)
EXAMPLE = Path(__file__).resolve().parents[2] / "cloud" / "examples" / "cloud.toml"

SETTINGS = DispatchSettings(
    eta_min_interval_s=0,
    en_route_speed_mps=None,
    geofence=GeofenceSettings(dwell_s=20, depart_after_s=10, complete_on_departure=True),
    rules=RuleSettings(
        offline=OfflineSettings(offline_for_s=60, grace_s=60),
        fault=FaultSettings(dtcs=("P0301",)),
        anti_thrash=AntiThrash(min_seconds_between_moves=0),
    ),
)


class Clock:
    def __init__(self) -> None:
        self.ns = NOW_S * S

    def __call__(self) -> int:
        return self.ns

    def advance(self, seconds: float) -> None:
        self.ns += int(seconds * S)


@dataclass
class World:
    store: Store
    clock: Clock
    dispatcher: Dispatcher
    cursor: int = 0
    seqs: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    seen: list[StreamEvent] = field(default_factory=list)

    async def pump(self) -> None:
        """Hand every new stream event to the dispatcher, until it adds none."""
        while True:
            events = await self.store.stream_events_after(self.cursor)
            if not events:
                return
            for ev in events:
                self.cursor = ev.id
                self.seen.append(ev)
                await self.dispatcher.on_event(ev)

    async def ingest(self, vid: str, lane: Lane, *records: Record, pump: bool = True) -> None:
        entries = []
        for r in records:
            self.seqs[vid] += 1
            entries.append(Entry(self.seqs[vid], r))
        batch = IngestBatch(vid, 1, lane, tuple(entries), self.clock())
        await self.store.ingest_batch(batch, stream_events)
        if pump:
            await self.pump()

    async def fix(self, vid: str, at: Location, speed_mps: float = 0.0) -> None:
        await self.ingest(vid, "live", Position(self.clock(), at.lat, at.lon, speed_mps=speed_mps))

    async def online(self, vid: str, at: Location | None = None) -> None:
        await self.store.record_birth(vid, 1, agent_version="t", started_wall_ns=self.clock(),
                                      alias_extras={}, received_wall_ns=self.clock())  # fmt: skip
        await self.pump()
        if at is not None:
            await self.fix(vid, at)

    async def offline(self, vid: str) -> None:
        await self.store.record_death(vid, 1, received_wall_ns=self.clock())
        await self.pump()

    async def answer(
        self, vid: str, job_id: str, answer: str, *, pump: bool = True, **data: SignalScalar
    ) -> None:
        """The driver's answer as the agent sends it (the offer version: the job's now)."""
        row = await self.store.get_job(job_id)
        assert row is not None
        body: dict[str, SignalScalar] = {"job_id": job_id, "answer": answer, "reason": "",
                                         "late": False, "offer_version": row.version}  # fmt: skip
        record = Event(self.clock(), "job.answer", {**body, **data})
        await self.ingest(vid, "events", record, pump=pump)

    async def create(self, job: Job) -> JobRow:
        row = (await self.dispatcher.jobs.create(job)).row
        await self.pump()
        return row

    async def job(self, job_id: str) -> JobRow:
        row = await self.store.get_job(job_id)
        assert row is not None
        return row

    async def commands(self, vid: str, name: str) -> list[CommandRow]:
        rows = await self.store.list_commands(vid)
        return [r for r in reversed(rows) if r.name == name]  # oldest first

    def events(self, kind: str) -> list[StreamEvent]:
        return [e for e in self.seen if e.type == kind]


def single(job_id: str = "job-1", at: Location = CUSTOMER, **kw: Any) -> Job:
    return Job(job_id, Stop(at, service_s=300), **kw)


@pytest.fixture
async def world(store_url: str) -> AsyncIterator[World]:  # noqa: F811
    async with open_store(store_url) as store:
        for vid in ("veh-a", "veh-b", "veh-c", "veh-off"):
            await store.add_device(vid, name=vid, password_hash="h", created_wall_ns=NOW_S * S)
        clock = Clock()
        commands = CommandService(store, None, clock=clock)
        w = World(store, clock, Dispatcher(store, commands, SETTINGS, clock=clock))
        await w.dispatcher.ready()
        for vid, at in (("veh-a", HERE), ("veh-b", NEAR), ("veh-c", FAR)):
            await w.online(vid, at)
        yield w


async def test_a_job_is_offered_to_the_cheapest_eligible_vehicle_with_the_explanation(
    world: World,
) -> None:
    row = await world.create(single())
    assert (row.job.state, row.job.vehicle_id) == (JobState.OFFERED, "veh-a")
    assert row.explanation is not None
    assert row.explanation["considered"][0]["vehicle_id"] == "veh-a"
    assert {e["vehicle_id"]: e["reason"] for e in row.explanation["excluded"]} == {
        "veh-off": "offline"
    }
    events = await world.store.job_events("job-1")
    assert [(e.to_state, e.reason_code, e.actor) for e in events] == [
        (JobState.NEW, "created", "dispatcher"),
        (JobState.OFFERED, "instant_assignment", "system"),
    ]
    assert set(events[1].evidence) >= {"cost", "added_travel_s", "candidates"}
    assert events[1].evidence["candidates"] == 3
    [offer] = await world.commands("veh-a", "offer_job")
    assert offer.args["job_id"] == "job-1"
    assert offer.args["version"] == row.version
    assert offer.args["respond_by"] == NOW_S + SETTINGS.offer_timeout_s
    assert offer.args["stops"] == [
        {"kind": "single", "lat": CUSTOMER.lat, "lon": CUSTOMER.lon, "windows": [],
         "service_s": 300}
    ]  # fmt: skip
    route = await world.store.get_vehicle_route("veh-a")
    assert route is not None
    assert [(p.stop.job_id, p.stop.kind) for p in route.stops] == [("job-1", StopKind.SINGLE)]
    eta = route.stops[0].eta
    assert eta is not None
    assert eta >= NOW_S


async def test_nobody_eligible_leaves_the_job_new_with_reasons(world: World) -> None:
    row = await world.create(single(skills=frozenset({"crane"})))
    assert (row.job.state, row.job.vehicle_id) == (JobState.NEW, None)
    assert row.unassigned_reasons[0] == {"reason": "skills", "vehicles": 3}
    [unassigned] = world.events("job.unassigned")
    assert unassigned.data["job_id"] == "job-1"
    assert [r["reason"] for r in unassigned.data["unassigned_reasons"]] == ["skills", "offline"]
    await world.dispatcher.tick()  # tried again: the same reasons are not announced twice
    await world.pump()
    assert len(world.events("job.unassigned")) == 1


async def test_a_vehicle_without_a_profile_has_no_capacity_limit(world: World) -> None:
    # As batch planning treats it: no stored profile means no skills and unlimited capacity.
    row = await world.create(single(demand=(800, 3)))
    assert (row.job.state, row.job.vehicle_id) == (JobState.OFFERED, "veh-a")


async def test_reject_goes_to_the_next_vehicle_and_accept_assigns(world: World) -> None:
    await world.create(single())
    await world.answer("veh-a", "job-1", "reject", reason="too busy")
    row = await world.job("job-1")
    assert (row.job.state, row.job.vehicle_id) == (JobState.OFFERED, "veh-b")
    assert row.explanation is not None
    reasons = {e["vehicle_id"]: e["reason"] for e in row.explanation["excluded"]}
    assert reasons["veh-a"] == "declined"
    assert await world.store.get_vehicle_route("veh-a") is not None
    assert world.dispatcher.vehicles["veh-a"].stops == []
    assert [s.job_id for s in world.dispatcher.vehicles["veh-b"].stops] == ["job-1"]

    # The same answer again (the device lost power before its board was written): once only.
    before = await world.job("job-1")
    await world.ingest("veh-a", "events", Event(world.clock(), "job.answer", {
        "job_id": "job-1", "answer": "reject", "reason": "too busy", "late": False,
        "offer_version": 2}))  # fmt: skip
    assert (await world.job("job-1")).version == before.version
    assert world.dispatcher.counters["answers_repeated"] == 1

    await world.answer("veh-a", "job-1", "accept")  # not its job any more: refused
    assert world.dispatcher.counters["answers_refused"] == 1
    await world.answer("veh-b", "job-1", "accept")
    row = await world.job("job-1")
    assert (row.job.state, row.job.vehicle_id) == (JobState.ASSIGNED, "veh-b")
    route = await world.store.get_vehicle_route("veh-b")
    assert route is not None
    assert [p.stop.job_id for p in route.stops] == ["job-1"]


async def test_eta_changed_fires_past_the_threshold_and_tells_the_vehicle(world: World) -> None:
    await world.create(single())
    await world.answer("veh-a", "job-1", "accept")
    world.clock.advance(30)
    await world.fix("veh-a", Location(52.5205, 13.4005))  # a few metres: no news
    assert world.events("job.eta_changed") == []
    world.clock.advance(30)
    await world.fix("veh-a", NEAR)  # 4 km away now
    [changed] = world.events("job.eta_changed")
    data = changed.data
    assert (changed.device_id, data["job_id"], data["vehicle_id"]) == ("veh-a", "job-1", "veh-a")
    assert data["eta"] - data["previous"] > SETTINGS.eta_change_threshold_s
    assert (data["lateness_s"], data["stop"]) == (0, "single")
    [update] = await world.commands("veh-a", "update_job")
    assert update.args == {"job_id": "job-1", "eta": data["eta"]}
    route = await world.store.get_vehicle_route("veh-a")
    assert route is not None
    assert route.stops[0].eta == data["eta"]


async def test_en_route_then_arrival_then_departure_from_fixes(world: World) -> None:
    world.dispatcher.settings = SETTINGS.model_copy(update={"en_route_speed_mps": 2.0})
    await world.create(single())
    await world.answer("veh-a", "job-1", "accept")
    world.clock.advance(5)
    await world.fix("veh-a", Location(52.5203, 13.4003), speed_mps=6.0)
    assert (await world.job("job-1")).job.state is JobState.EN_ROUTE
    for _ in range(6):  # 25 s at the stop: longer than the 20 s dwell
        world.clock.advance(5)
        await world.fix("veh-a", CUSTOMER)
    row = await world.job("job-1")
    assert row.job.state is JobState.ARRIVED
    arrival = (await world.store.job_events("job-1"))[-1]
    assert (arrival.reason_code, arrival.actor) == ("geofence_arrival", "system")
    assert arrival.evidence["dwell_s"] >= 20
    assert arrival.evidence["fixes_used"] >= 5
    assert world.dispatcher.vehicles["veh-a"].stops[0].started
    for _ in range(4):  # 15 s beyond the exit radius: departed, and completes the job
        world.clock.advance(5)
        await world.fix("veh-a", Location(52.5300, 13.4010))
    row = await world.job("job-1")
    assert row.job.state is JobState.COMPLETED
    route = await world.store.get_vehicle_route("veh-a")
    assert route is not None
    assert route.stops == ()


async def test_offline_past_grace_reallocates_with_audit_event_and_withdraw(world: World) -> None:
    await world.create(single())
    await world.answer("veh-a", "job-1", "accept")
    await world.offline("veh-a")
    world.clock.advance(100)  # offline 100 s: past offline_for_s, within the grace
    await world.dispatcher.tick()
    await world.pump()
    assert (await world.job("job-1")).job.vehicle_id == "veh-a"
    assert world.dispatcher.reallocation.counters["hold.grace"] == 1
    world.clock.advance(30)  # 130 s: past offline_for_s + grace_s
    await world.dispatcher.tick()
    await world.pump()
    row = await world.job("job-1")
    assert (row.job.state, row.job.vehicle_id) == (JobState.OFFERED, "veh-b")
    moved = (await world.store.job_events("job-1"))[-1]
    assert (moved.reason_code, moved.actor) == ("reallocated", "rule")
    assert (moved.evidence["rule"], moved.evidence["old_vehicle_id"]) == ("offline", "veh-a")
    [audit] = await world.store.list_audit()
    assert (audit.actor, audit.method, audit.path) == ("dispatch", "REALLOCATE", "/v1/jobs/job-1")
    assert '"rule":"offline"' in audit.detail
    assert '"new_vehicle_id":"veh-b"' in audit.detail
    [event] = world.events("job.reallocated")
    assert (event.data["rule"], event.data["old_vehicle_id"], event.data["new_vehicle_id"]) == (
        "offline",
        "veh-a",
        "veh-b",
    )
    [withdraw] = await world.commands("veh-a", "withdraw_job")
    assert withdraw.args == {"job_id": "job-1", "reason": "reallocated"}
    assert withdraw.status == "queued"  # the vehicle is offline: it gets it when back
    assert len(await world.commands("veh-b", "offer_job")) == 1
    assert world.dispatcher.vehicles["veh-a"].stops == []


async def test_a_critical_dtc_reallocates_the_job(world: World) -> None:
    await world.create(single())
    await world.answer("veh-a", "job-1", "accept")
    await world.ingest("veh-a", "live", Dtc(world.clock(), DtcSource.OBD, "P0301", 0x7E8, True))
    await world.dispatcher.tick()
    await world.pump()
    row = await world.job("job-1")
    assert (row.job.state, row.job.vehicle_id) == (JobState.OFFERED, "veh-b")
    [event] = world.events("job.reallocated")
    assert event.data["rule"] == "fault"
    assert event.data["evidence"]["listed_dtcs"] == ["P0301"]
    await world.create(single("job-2"))  # a faulted vehicle gets no new work either
    row = await world.job("job-2")
    assert row.explanation is not None
    reasons = {e["vehicle_id"]: e["reason"] for e in row.explanation["excluded"]}
    assert reasons["veh-a"] == "fault"


async def test_a_locked_job_is_not_moved(world: World) -> None:
    await world.create(single(locked_vehicle_id="veh-c"))
    assert (await world.job("job-1")).job.vehicle_id == "veh-c"  # the lock beats the cost
    await world.answer("veh-c", "job-1", "accept")
    await world.offline("veh-c")
    world.clock.advance(500)
    await world.dispatcher.tick()
    await world.pump()
    row = await world.job("job-1")
    assert (row.job.state, row.job.vehicle_id) == (JobState.ASSIGNED, "veh-c")
    assert world.dispatcher.reallocation.counters["hold.locked"] == 1
    assert world.events("job.reallocated") == []
    assert await world.store.list_audit() == []


async def test_a_restart_resumes_the_routes(world: World) -> None:
    await world.create(single())
    await world.create(single("job-2", Location(52.5220, 13.4020)))
    before = [s.job_id for s in world.dispatcher.vehicles["veh-a"].stops]
    assert sorted(before) == ["job-1", "job-2"]
    again = Dispatcher(world.store, CommandService(world.store, None), SETTINGS, clock=world.clock)
    await again.ready()
    assert [s.job_id for s in again.vehicles["veh-a"].stops] == before
    assert set(again.open) == {"job-1", "job-2"}
    assert again.open["job-1"].offer_sent_s == NOW_S


async def test_apply_plan_gives_moves_keeps_and_unassigns(world: World) -> None:
    for jid in ("job-1", "job-2", "job-3"):
        await world.create(single(jid))
    await world.create(single("job-4", skills=frozenset({"crane"})))  # nobody has a crane
    assert sorted(s.job_id for s in world.dispatcher.vehicles["veh-a"].stops) == [
        "job-1",
        "job-2",
        "job-3",
    ]

    def stop(jid: str) -> RouteStop:
        return RouteStop(jid, StopKind.SINGLE, Location(0.0, 0.0), arrival=NOW_S + 600)

    result = await world.dispatcher.apply_plan(
        {"veh-a": [stop("job-2")], "veh-b": [stop("job-1"), stop("job-4"), stop("nope")]},
        reason="replan",
    )
    await world.pump()
    assert (result.given, result.moved, result.kept) == (("job-4",), ("job-1",), ("job-2",))
    assert (result.unassigned, result.skipped) == (("job-3",), (("nope", "unknown job"),))
    b_stops = world.dispatcher.vehicles["veh-b"].stops
    assert [s.job_id for s in b_stops] == ["job-1", "job-4"]
    assert b_stops[0].location == CUSTOMER  # the stored job's, not the plan's
    assert b_stops[0].arrival == NOW_S + 600
    assert [s.job_id for s in world.dispatcher.vehicles["veh-a"].stops] == ["job-2"]
    assert (await world.job("job-3")).job.state is JobState.NEW
    assert (await world.job("job-1")).job.vehicle_id == "veh-b"
    assert [e.data["reason"] for e in world.events("job.reallocated")] == ["replan"]
    withdrawn = [c.args["job_id"] for c in await world.commands("veh-a", "withdraw_job")]
    assert sorted(withdrawn) == ["job-1", "job-3"]
    nowhere = await world.dispatcher.apply_plan({"veh-zz": [stop("job-3")]}, reason="replan")
    assert nowhere.skipped == (("job-3", "unknown vehicle veh-zz"),)
    assert (await world.job("job-3")).job.state is JobState.NEW


async def test_the_run_loop_follows_the_bus(world: World) -> None:
    """``run`` takes its events from the bus: here, as the tailer would publish them."""
    bus = EventBus()
    task = asyncio.create_task(world.dispatcher.run(bus))
    try:
        await world.create(single())
        await world.answer("veh-a", "job-1", "accept", pump=False)
        for ev in await world.store.stream_events_after(world.cursor):
            bus.publish(ev)
        for _ in range(1000):
            if (await world.job("job-1")).job.state is JobState.ASSIGNED:
                break
            await asyncio.sleep(0.01)
        assert (await world.job("job-1")).job.state is JobState.ASSIGNED
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_jobs_created_through_the_api_are_assigned_and_the_route_is_served(
    world: World,
) -> None:
    ctx = ApiContext(store=world.store, bus=EventBus(), settings=ApiSettings(), clock=world.clock)
    app = create_app(ctx, jobs=world.dispatcher.jobs)
    _, token = await mint(world.store, "dispatch")
    auth = {"Authorization": f"Bearer {token}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        body = {"id": "job-api", "stop": {"location": {"lat_deg": CUSTOMER.lat,
                                                       "lon_deg": CUSTOMER.lon}}}  # fmt: skip
        created = await client.post("/v1/jobs", json=body, headers=auth)
        assert created.status_code == 201, created.text
        assert (created.json()["state"], created.json()["vehicle_id"]) == ("offered", "veh-a")
        got = await client.get("/v1/vehicles/veh-a/route", headers=auth)
        assert got.status_code == 200
        route = got.json()
        assert [s["job_id"] for s in route["stops"]] == ["job-api"]
        stop = route["stops"][0]
        assert (stop["kind"], stop["started"]) == ("single", False)
        assert stop["eta_unix_s"] >= NOW_S
        empty = await client.get("/v1/vehicles/veh-c/route", headers=auth)
        assert (empty.status_code, empty.json()["stops"]) == (200, [])
        assert (await client.get("/v1/vehicles/nobody/route", headers=auth)).status_code == 404
        cancelled = await client.post("/v1/jobs/job-api/cancel", headers=auth)
        assert cancelled.status_code == 200, cancelled.text
    await world.pump()  # the dispatcher follows the REST change from the stream
    assert world.dispatcher.vehicles["veh-a"].stops == []
    [withdraw] = await world.commands("veh-a", "withdraw_job")
    assert withdraw.args == {"job_id": "job-api", "reason": "cancelled"}


def test_the_example_dispatch_block_is_valid_settings() -> None:
    """The shipped example has the [dispatch] block commented out; uncommented, it loads."""
    text = EXAMPLE.read_text()
    block = text[text.index("# [dispatch]") :]
    lines = [re.sub(r"^# ?", "", line) for line in block.splitlines()]
    doc = tomllib.loads("\n".join(lines))
    assert DispatchSettings.model_validate(doc["dispatch"]) == DispatchSettings()
