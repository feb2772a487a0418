"""Presence from births, deaths and heartbeat expiry, and the stream events they make."""

from __future__ import annotations

from fleetlink_cloud.store import Presence, Store
from tests.cloud.store.records import DEV, T0, S, add, batch, pos

EXTRAS = {"Vehicle.Private.Fuel": 200, "Vehicle.Private.Door": 201}


async def birth(
    store: Store, boot: int, rx: int, started: int | None = None, device: str = DEV
) -> Presence:
    return await store.record_birth(
        device, boot, agent_version=f"1.{boot}.0", started_wall_ns=started or T0 + boot * S,
        alias_extras=EXTRAS if boot == 1 else {}, received_wall_ns=rx,
    )  # fmt: skip


async def changes(store: Store) -> list[tuple[str, str, int, dict[str, object]]]:
    return [
        (e.type, e.device_id, e.ts_wall_ns, dict(e.data))
        for e in await store.stream_events_after(0)
    ]


async def test_birth_marks_online_and_appends_an_event(store: Store) -> None:
    await add(store)
    assert await store.presence(DEV) is None
    p = await birth(store, 1, rx=T0 + 100)
    assert p == Presence(True, 1, "1.1.0", T0 + S, T0 + 100, T0 + 100, "birth")
    assert await store.presence(DEV) == p
    assert await store.alias_extras(DEV, 1) == EXTRAS
    assert await store.alias_extras(DEV, 2) is None
    assert await changes(store) == [
        (
            "vehicle.online",
            DEV,
            T0 + 100,
            {"boot_id": 1, "reason": "birth", "agent_version": "1.1.0"},
        )
    ]


async def test_a_repeated_birth_only_moves_last_seen(store: Store) -> None:
    await add(store)
    await birth(store, 1, rx=T0 + 100)
    p = await birth(store, 1, rx=T0 + 200)
    assert p == Presence(True, 1, "1.1.0", T0 + S, T0 + 100, T0 + 200, "birth")
    assert len(await changes(store)) == 1


async def test_a_reboot_replaces_the_boot_and_a_stale_birth_is_ignored(store: Store) -> None:
    await add(store)
    await birth(store, 1, rx=T0 + 100)
    rebooted = await birth(store, 2, rx=T0 + 300)
    assert rebooted == Presence(True, 2, "1.2.0", T0 + 2 * S, T0 + 300, T0 + 300, "birth")
    stale = await birth(store, 1, rx=T0 + 400, started=T0 + S)  # boot 1 redelivered late
    assert stale == Presence(True, 2, "1.2.0", T0 + 2 * S, T0 + 300, T0 + 400, "birth")
    assert await store.alias_extras(DEV, 1) == EXTRAS
    assert await store.alias_extras(DEV, 2) == {}
    assert [(t, d["boot_id"]) for t, _, _, d in await changes(store)] == [
        ("vehicle.online", 1), ("vehicle.online", 2),
    ]  # fmt: skip


async def test_death_of_the_current_boot_only(store: Store) -> None:
    await add(store)
    await birth(store, 1, rx=T0 + 100)
    await birth(store, 2, rx=T0 + 200)
    assert await store.record_death(DEV, 1, received_wall_ns=T0 + 300) is False  # stale will
    assert (await store.presence(DEV)).online  # type: ignore[union-attr]
    assert await store.record_death(DEV, 2, received_wall_ns=T0 + 400) is True
    assert await store.presence(DEV) == Presence(
        False, 2, "1.2.0", T0 + 2 * S, T0 + 400, T0 + 200, "death"
    )
    assert await store.record_death(DEV, 2, received_wall_ns=T0 + 500) is False  # already off
    assert await store.record_death("veh-x", 1, received_wall_ns=T0) is False  # never seen
    assert (await changes(store))[-1] == (
        "vehicle.offline",
        DEV,
        T0 + 400,
        {"boot_id": 2, "reason": "death"},
    )
    assert len(await changes(store)) == 3


async def test_a_birth_after_death_of_the_same_boot_reconnects(store: Store) -> None:
    await add(store)
    await birth(store, 1, rx=T0 + 100)
    await store.record_death(DEV, 1, received_wall_ns=T0 + 200)
    p = await birth(store, 1, rx=T0 + 300)  # the agent publishes its birth on every connect
    assert p == Presence(True, 1, "1.1.0", T0 + S, T0 + 300, T0 + 300, "birth")
    assert [t for t, *_ in await changes(store)] == [
        "vehicle.online", "vehicle.offline", "vehicle.online",
    ]  # fmt: skip


async def test_heartbeat_expiry_and_return_on_data(store: Store) -> None:
    await add(store, "veh-1", "veh-2", "veh-3")
    await birth(store, 1, rx=T0 + 100, device="veh-1")
    await birth(store, 1, rx=T0 + 100, device="veh-2")
    await store.touch("veh-2", T0 + 900)
    await store.touch("veh-3", T0 + 50)  # known but never born: not online, never expires
    expired = await store.expire_presence(cutoff_wall_ns=T0 + 500, now_wall_ns=T0 + 1000)
    assert expired == ["veh-1"]
    assert await store.presence("veh-1") == Presence(
        False, 1, "1.1.0", T0 + S, T0 + 1000, T0 + 100, "timeout"
    )
    assert (await store.presence("veh-2")).online  # type: ignore[union-attr]
    assert await store.expire_presence(cutoff_wall_ns=T0 + 500, now_wall_ns=T0 + 1100) == []
    await store.ingest_batch(batch([pos(0, T0)], device="veh-1", boot=2, rx=T0 + 1200))
    assert (await store.presence("veh-1")).online is False  # type: ignore[union-attr]
    await store.ingest_batch(batch([pos(1, T0)], device="veh-1", boot=1, rx=T0 + 1300))
    assert await store.presence("veh-1") == Presence(
        True, 1, "1.1.0", T0 + S, T0 + 1300, T0 + 1300, "data"
    )
    assert (await changes(store))[-2:] == [
        ("vehicle.offline", "veh-1", T0 + 1000, {"boot_id": 1, "reason": "timeout"}),
        ("vehicle.online", "veh-1", T0 + 1300, {"boot_id": 1, "reason": "data"}),
    ]


async def test_data_after_a_death_does_not_bring_it_back(store: Store) -> None:
    await add(store)
    await birth(store, 1, rx=T0 + 100)
    await store.record_death(DEV, 1, received_wall_ns=T0 + 200)
    await store.ingest_batch(batch([pos(0, T0)], lane="history", rx=T0 + 300))
    p = await store.presence(DEV)
    assert p is not None
    assert (p.online, p.reason, p.last_seen_wall_ns) == (False, "death", T0 + 300)


async def test_touch_never_moves_last_seen_backwards(store: Store) -> None:
    await add(store)
    await store.touch(DEV, T0 + 500)
    await store.touch(DEV, T0 + 100)
    assert await store.presence(DEV) == Presence(False, None, None, None, None, T0 + 500, None)
    await store.ingest_batch(batch([pos(0, T0)], rx=T0 + 200))  # an older batch, e.g. a retry
    p = await store.presence(DEV)
    assert p is not None
    assert (p.last_seen_wall_ns, p.online, p.reason) == (T0 + 500, True, "data")
