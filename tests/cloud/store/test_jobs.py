"""Dispatch tables: depots, drivers, vehicle profiles, jobs with optimistic versions and events."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from fleetlink_cloud.bus import StreamEvent
from fleetlink_cloud.dispatch.model import (
    Break,
    Depot,
    Driver,
    Job,
    JobState,
    Location,
    Shift,
    Stop,
    TimeWindow,
    VehicleProfile,
)
from fleetlink_cloud.errors import NotFound
from fleetlink_cloud.store import BadCursor, Store
from fleetlink_cloud.store.base import AlreadyExists, InUse, JobEventRow, JobRow, StaleJob
from tests.cloud.store.records import DEV, T0, S, add

H = 3600  # dispatch times are Unix seconds
DAY0 = T0 // S


def job(job_id: str = "j1", **fields: object) -> Job:
    spec: dict[str, object] = {
        "id": job_id,
        "stop": Stop(Location(52.52, 13.405), (TimeWindow(DAY0, DAY0 + H),), service_s=300),
        "skills": frozenset({"fridge", "tail_lift"}),
        "demand": (120, 2),
        "priority": 50,
        "customer_ref": "order-1",
    }
    spec.update(fields)
    return Job(**spec)  # type: ignore[arg-type]


def created(job_id: str, ts: int = T0) -> JobEventRow:
    return JobEventRow(0, job_id, ts, "created", None, JobState.NEW, "created", actor="dispatcher")


def moved(row: JobRow, to: JobState, vehicle: str | None, ts: int) -> tuple[Job, JobEventRow]:
    new = dataclasses.replace(row.job, state=to, vehicle_id=vehicle)
    event = JobEventRow(
        0, row.job.id, ts, "transition", row.job.state, to, "test_move",
        reason_text="moved by the test", actor="rule", vehicle_before=row.job.vehicle_id,
        vehicle_after=vehicle, evidence={"score": 1.5},
    )  # fmt: skip
    return new, event


def one_stream_event(row: JobRow, event: JobEventRow) -> list[StreamEvent]:
    data = {"job_id": row.job.id, "event_id": event.id, "version": row.version}
    return [StreamEvent(0, "job.state_changed", event.vehicle_after or "", event.ts_wall_ns, data)]


async def new_job(store: Store, j: Job | None = None, key: str | None = None) -> JobRow:
    j = j or job()
    return await store.create_job(JobRow(j, 1, T0, T0, key, "hash-" + j.id), created(j.id))


# -- depots, drivers, profiles -----------------------------------------------------------------


async def test_depots_are_created_replaced_listed_and_deleted(store: Store) -> None:
    north = Depot("north", Location(53.55, 9.99), "Hamburg")
    assert await store.put_depot(north) is True
    assert await store.put_depot(Depot("east", Location(52.52, 13.40), "Berlin")) is True
    moved_north = Depot("north", Location(53.6, 10.0), "Hamburg Nord")
    assert await store.put_depot(moved_north) is False  # replaced
    assert await store.get_depot("north") == moved_north
    assert [d.id for d in await store.list_depots()] == ["east", "north"]
    await store.delete_depot("east")
    assert await store.get_depot("east") is None
    with pytest.raises(NotFound):
        await store.delete_depot("east")


async def test_drivers_keep_their_skills(store: Store) -> None:
    ana = Driver("d-ana", "Ana", frozenset({"adr", "forklift"}))
    assert await store.put_driver(ana) is True
    assert await store.get_driver("d-ana") == ana
    assert await store.put_driver(dataclasses.replace(ana, skills=frozenset())) is False
    assert await store.list_drivers() == [Driver("d-ana", "Ana", frozenset())]
    assert await store.get_driver("nobody") is None


async def test_vehicle_profile_round_trips_shifts_and_breaks(store: Store) -> None:
    await add(store)
    await store.put_depot(Depot("north", Location(53.55, 9.99)))
    await store.put_driver(Driver("d-ana", "Ana"))
    lunch = Break((TimeWindow(DAY0 + 3 * H, DAY0 + 5 * H),), duration_s=1800)
    profile = VehicleProfile(
        DEV,
        skills=frozenset({"fridge"}),
        capacity=(1000, 12),
        depot_id="north",
        shifts=(Shift(DAY0, DAY0 + 8 * H, (lunch,)), Shift(DAY0 + 24 * H, DAY0 + 32 * H)),
        driver_id="d-ana",
        dispatchable=False,
    )
    assert await store.get_vehicle_profile(DEV) is None
    assert await store.put_vehicle_profile(profile) == profile
    assert await store.get_vehicle_profile(DEV) == profile
    plain = VehicleProfile(DEV)
    assert await store.put_vehicle_profile(plain) == plain  # replaced, not merged
    assert await store.list_vehicle_profiles() == [plain]


async def test_profile_naming_unknown_things_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="device"):
        await store.put_vehicle_profile(VehicleProfile("ghost"))
    await add(store)
    with pytest.raises(NotFound, match="depot"):
        await store.put_vehicle_profile(VehicleProfile(DEV, depot_id="nowhere"))
    with pytest.raises(NotFound, match="driver"):
        await store.put_vehicle_profile(VehicleProfile(DEV, driver_id="nobody"))
    assert await store.get_vehicle_profile(DEV) is None


async def test_a_depot_or_driver_in_use_cannot_be_deleted(store: Store) -> None:
    await add(store)
    await store.put_depot(Depot("north", Location(53.55, 9.99)))
    await store.put_driver(Driver("d-ana", "Ana"))
    await store.put_vehicle_profile(VehicleProfile(DEV, depot_id="north", driver_id="d-ana"))
    with pytest.raises(InUse, match=DEV):
        await store.delete_depot("north")
    with pytest.raises(InUse, match=DEV):
        await store.delete_driver("d-ana")
    await store.put_vehicle_profile(VehicleProfile(DEV))
    await store.delete_depot("north")
    await store.delete_driver("d-ana")
    assert await store.list_depots() == []
    assert await store.list_drivers() == []


# -- jobs --------------------------------------------------------------------------------------


async def test_schema_3_holds_the_dispatch_tables(store: Store) -> None:
    assert await store.schema_version() >= 3  # migration 3 added them; later ones keep them
    counts = (await store.stats()).counts
    tables = ("depots", "drivers", "vehicle_profiles", "jobs", "job_events")
    assert {t: counts.get(t) for t in tables} == dict.fromkeys(tables, 0)


async def test_create_stores_the_job_its_event_and_stream_events_together(store: Store) -> None:
    shipment = job(pickup=Stop(Location(52.4, 13.0), (), 60), locked_vehicle_id=DEV)
    row = JobRow(shipment, 1, T0, T0, "key-1", "h1", {"chosen": DEV}, ({"reason": "skills"},))
    stored = await store.create_job(row, created("j1"), one_stream_event)
    assert stored == row
    assert await store.get_job("j1") == row
    assert await store.job_by_idempotency_key("key-1") == row
    assert await store.job_by_idempotency_key("key-2") is None
    [ev] = await store.job_events("j1")
    assert ev == dataclasses.replace(created("j1"), id=ev.id)
    [stream] = await store.stream_events_after(0)
    assert (stream.type, stream.data) == (
        "job.state_changed",
        {"job_id": "j1", "event_id": ev.id, "version": 1},
    )


async def test_a_taken_id_or_key_is_already_exists(store: Store) -> None:
    await new_job(store, key="key-1")
    with pytest.raises(AlreadyExists):
        await new_job(store)
    with pytest.raises(AlreadyExists):
        await new_job(store, job("j2"), key="key-1")
    assert (await store.stats()).counts["jobs"] == 1
    assert len(await store.job_events("j1")) == 1


async def test_update_raises_the_version_and_logs_the_event(store: Store) -> None:
    row = await new_job(store)
    new, event = moved(row, JobState.ASSIGNED, DEV, T0 + S)
    updated = await store.update_job(
        new, expected_version=1, updated_wall_ns=T0 + S, event=event, stream_for=one_stream_event
    )
    assert updated.version == 2
    assert (updated.job.state, updated.job.vehicle_id, updated.updated_wall_ns) == (
        JobState.ASSIGNED, DEV, T0 + S,
    )  # fmt: skip
    assert updated.created_wall_ns == T0
    assert updated.request_hash == "hash-j1"
    events = await store.job_events("j1")
    assert [(e.kind, e.from_state, e.to_state) for e in events] == [
        ("created", None, JobState.NEW),
        ("transition", JobState.NEW, JobState.ASSIGNED),
    ]
    assert events[1] == dataclasses.replace(event, id=events[1].id)
    [stream] = await store.stream_events_after(0)
    assert stream.device_id == DEV
    assert stream.data["version"] == 2


async def test_a_stale_version_writes_nothing(store: Store) -> None:
    row = await new_job(store)
    new, event = moved(row, JobState.OFFERED, DEV, T0 + S)
    await store.update_job(new, expected_version=1, updated_wall_ns=T0 + S, event=event)
    again, event2 = moved(row, JobState.CANCELLED, None, T0 + 2 * S)
    with pytest.raises(StaleJob) as info:
        await store.update_job(again, expected_version=1, updated_wall_ns=T0 + 2 * S, event=event2)
    assert (info.value.expected, info.value.current) == (1, 2)
    current = await store.get_job("j1")
    assert current is not None
    assert current.job.state is JobState.OFFERED
    assert len(await store.job_events("j1")) == 2
    with pytest.raises(NotFound):
        await store.update_job(job("nope"), expected_version=1, updated_wall_ns=T0, event=event)


async def test_a_failing_stream_callback_rolls_the_whole_change_back(store: Store) -> None:
    row = await new_job(store)
    new, event = moved(row, JobState.ASSIGNED, DEV, T0 + S)

    def broken(row: JobRow, event: JobEventRow) -> list[StreamEvent]:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await store.update_job(
            new, expected_version=1, updated_wall_ns=T0 + S, event=event, stream_for=broken
        )
    assert await store.get_job("j1") == row
    assert len(await store.job_events("j1")) == 1
    assert await store.latest_stream_event_id() == 0


async def test_concurrent_writers_of_one_version_cannot_both_win(store: Store) -> None:
    row = await new_job(store)
    tries = [moved(row, JobState.ASSIGNED, f"veh-{i}", T0 + i) for i in range(4)]
    results = await asyncio.gather(
        *(
            store.update_job(j, expected_version=1, updated_wall_ns=T0 + 1, event=e)
            for j, e in tries
        ),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, JobRow)]
    assert len(winners) == 1
    assert all(isinstance(r, StaleJob) for r in results if not isinstance(r, JobRow))
    assert len(await store.job_events("j1")) == 2
    assert await store.get_job("j1") == winners[0]


async def test_list_filters_and_pages_by_creation_time(store: Store) -> None:
    for i in range(5):
        j = job(f"j{i}", customer_ref="acme" if i % 2 else "other")
        await store.create_job(JobRow(j, 1, T0 + i, T0 + i, None, "h"), created(j.id))
    row = await store.get_job("j3")
    assert row is not None
    new, event = moved(row, JobState.ASSIGNED, DEV, T0 + S)
    await store.update_job(new, expected_version=1, updated_wall_ns=T0 + S, event=event)

    first = await store.list_jobs(limit=2)
    assert [r.job.id for r in first.items] == ["j0", "j1"]
    second = await store.list_jobs(limit=2, cursor=first.next_cursor)
    third = await store.list_jobs(limit=2, cursor=second.next_cursor)
    assert [r.job.id for r in second.items + third.items] == ["j2", "j3", "j4"]
    assert third.next_cursor is None
    by_ref = await store.list_jobs(customer_ref="acme")
    assert [r.job.id for r in by_ref.items] == ["j1", "j3"]
    assigned = await store.list_jobs(states=[JobState.ASSIGNED, JobState.OFFERED])
    assert [r.job.id for r in assigned.items] == ["j3"]
    on_vehicle = await store.list_jobs(vehicle_id=DEV, states=[JobState.NEW])
    assert on_vehicle.items == []
    assert (await store.list_jobs(states=[])).items == []
    with pytest.raises(BadCursor):
        await store.list_jobs(cursor="not-a-cursor")


async def test_explanation_is_replaced_without_a_new_version(store: Store) -> None:
    await new_job(store)
    reasons = ({"vehicle_id": "veh-2", "reason": "capacity"},)
    row = await store.set_job_explanation(
        "j1", explanation={"score": 12.5, "vehicle_id": DEV}, unassigned_reasons=reasons
    )
    assert row.version == 1
    assert row.explanation == {"score": 12.5, "vehicle_id": DEV}
    assert row.unassigned_reasons == reasons
    assert await store.get_job("j1") == row
    with pytest.raises(NotFound):
        await store.set_job_explanation("nope", explanation=None, unassigned_reasons=())


async def test_job_events_page_after_an_id(store: Store) -> None:
    row = await new_job(store)
    for i, to in enumerate((JobState.OFFERED, JobState.NEW, JobState.OFFERED)):
        new, event = moved(row, to, None if to is JobState.NEW else DEV, T0 + i)
        row = await store.update_job(
            new, expected_version=row.version, updated_wall_ns=T0, event=event
        )
    events = await store.job_events("j1")
    assert [e.to_state for e in events] == [
        JobState.NEW, JobState.OFFERED, JobState.NEW, JobState.OFFERED,
    ]  # fmt: skip
    assert await store.job_events("j1", after_id=events[1].id, limit=1) == [events[2]]
    assert await store.job_events("other") == []


async def test_nul_in_free_text_is_stored_as_a_replacement_character(store: Store) -> None:
    row = await new_job(store, job(customer_ref="a\x00b"))
    assert row.job.customer_ref == "a\ufffdb"
    assert [r.job.id for r in (await store.list_jobs(customer_ref="a\x00b")).items] == ["j1"]
