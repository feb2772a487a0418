"""Live state is "latest by device time": order-independent, so late history never moves it
backwards. Ties on device time fall to boot, then seq."""

from __future__ import annotations

import pytest

from fleetlink_cloud.store import DtcState, PositionRow, Presence, SignalRow, Store, VehicleState
from fleetlink_protocols.records import DtcSource
from tests.cloud.store.records import DEV, RX0, T0, S, add, batch, dtc, pos, sig

NO_PRESENCE = Presence(False, None, None, None, None, None, None)


async def test_late_history_never_moves_the_position_back(store: Store) -> None:
    await add(store)
    await store.ingest_batch(batch([pos(10, T0 + 10 * S, 1.0, 1.0)]))
    await store.ingest_batch(batch([pos(5, T0 + 5 * S, 2.0, 2.0)], lane="history"))
    vehicle = await store.vehicle(DEV)
    assert vehicle is not None
    assert vehicle.position == PositionRow(DEV, 1, 10, T0 + 10 * S, 1.0, 1.0, 3, *[None] * 5)
    await store.ingest_batch(batch([pos(11, T0 + 11 * S, 3.0, 3.0)]))
    vehicle = await store.vehicle(DEV)
    assert vehicle is not None
    assert vehicle.position is not None
    assert (vehicle.position.seq, vehicle.position.lat_deg) == (11, 3.0)


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0)])
async def test_the_newest_wins_in_any_order_and_within_one_call(
    store: Store, order: tuple[int, int, int]
) -> None:
    await add(store)
    fixes = [pos(0, T0, 0.0, 0.0), pos(1, T0 + 2 * S, 2.0, 0.0), pos(2, T0 + S, 1.0, 0.0)]
    signals = [
        sig(3, T0 + 5, "X.Y", "newest"),
        sig(4, T0 + 1, "X.Y", "old"),
        sig(5, T0, "X.Y", "a"),
    ]
    await store.ingest_batches([batch([fixes[i], signals[i]]) for i in order])
    vehicle = await store.vehicle(DEV)
    assert vehicle is not None
    assert vehicle.position is not None
    assert (vehicle.position.seq, vehicle.position.lat_deg) == (1, 2.0)
    assert vehicle.signals == {"X.Y": SignalRow(DEV, 1, 3, T0 + 5, "X.Y", "newest")}
    assert await store.signals_latest(DEV) == vehicle.signals


async def test_ties_on_device_time_go_to_the_later_boot_then_seq(store: Store) -> None:
    await add(store)
    await store.ingest_batches(
        [
            batch([sig(9, T0, "X.Y", "boot 1 seq 9")], boot=1),
            batch([sig(2, T0, "X.Y", "boot 2 seq 2"), sig(1, T0, "X.Y", "boot 2 seq 1")], boot=2),
        ]
    )
    await store.ingest_batch(batch([sig(8, T0, "X.Y", "boot 1 seq 8")], boot=1))
    assert (await store.signals_latest(DEV))["X.Y"].value == "boot 2 seq 2"


async def test_dtc_state_follows_the_latest_observation_and_spans_all(store: Store) -> None:
    await add(store)
    await store.ingest_batch(batch([dtc(10, T0 + 10 * S, occurrences=2)]))
    await store.ingest_batch(batch([dtc(5, T0 + 5 * S, active=False)], lane="history"))
    [state] = await store.dtc_states(DEV)
    assert state == DtcState(
        DEV, 1, 0x7E8, "P0301", True, None, None, 2, None, T0 + 10 * S, T0 + 5 * S, T0 + 10 * S
    )
    await store.ingest_batch(batch([dtc(20, T0 + 20 * S, active=False, occurrences=3)]))
    assert await store.dtc_states(DEV) == []
    assert await store.dtc_states(DEV, active_only=False) == [
        DtcState(DEV, 1, 0x7E8, "P0301", False, None, None, 3, None, T0 + 20 * S, T0 + 5 * S,
                 T0 + 20 * S),
    ]  # fmt: skip
    vehicle = await store.vehicle(DEV)
    assert vehicle is not None
    assert vehicle.active_dtcs == ()
    assert len((await store.dtc_history(DEV)).items) == 3


async def test_dtc_state_within_one_call_in_any_order(store: Store) -> None:
    await add(store)
    observations = [dtc(3, T0 + 3, active=True), dtc(1, T0 + 1, active=False), dtc(2, T0 + 2)]
    await store.ingest_batch(batch(observations))
    [state] = await store.dtc_states(DEV)
    assert (state.active, state.ts_wall_ns, state.first_seen_wall_ns, state.last_seen_wall_ns) == (
        True, T0 + 3, T0 + 1, T0 + 3,
    )  # fmt: skip


async def test_dtc_states_are_per_source_ecu_and_code_active_first(store: Store) -> None:
    await add(store)
    await store.ingest_batch(
        batch(
            [
                dtc(0, T0 + 1, "P0301", ecu=0x7E8),
                dtc(1, T0 + 3, "P0301", ecu=0x7E9),
                dtc(2, T0 + 2, "P0420", ecu=0x7E8, active=False),
                dtc(3, T0 + 4, "110-0", source=DtcSource.J1939, ecu=0, spn=110, fmi=0),
                dtc(4, T0 + 9, "P0171", ecu=0x7E8, active=False),
            ]
        )
    )
    active = [(s.code, s.ecu) for s in await store.dtc_states(DEV)]
    assert active == [("110-0", 0), ("P0301", 0x7E9), ("P0301", 0x7E8)]
    every = [(s.code, s.active) for s in await store.dtc_states(DEV, active_only=False)]
    assert every == [
        ("110-0", True), ("P0301", True), ("P0301", True), ("P0171", False), ("P0420", False),
    ]  # fmt: skip
    vehicle = await store.vehicle(DEV)
    assert vehicle is not None
    assert [(s.code, s.ecu) for s in vehicle.active_dtcs] == active


async def test_vehicles_lists_every_device_by_id(store: Store) -> None:
    await add(store, "veh-b", "veh-a")
    await store.ingest_batch(batch([pos(0, T0, 5.0, 6.0), sig(1, T0, "A.B", 1)], device="veh-b"))
    a, b = await store.vehicles()
    assert a == VehicleState(
        (await store.get_device("veh-a")),
        NO_PRESENCE,
        None,
        {},
        (),  # type: ignore[arg-type]
    )
    assert b.device.id == "veh-b"
    assert b.presence == Presence(True, 1, None, None, RX0, RX0, "data")
    assert b.position == PositionRow("veh-b", 1, 0, T0, 5.0, 6.0, 3, *[None] * 5)
    assert b.signals == {"A.B": SignalRow("veh-b", 1, 1, T0, "A.B", 1)}
    assert await store.vehicle("veh-b") == b
    assert await store.vehicle("nope") is None
    assert await store.signals_latest("veh-a") == {}
    assert await store.health_latest("veh-a") is None
