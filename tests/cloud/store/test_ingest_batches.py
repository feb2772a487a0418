"""ingest_batches: dedupe by (device, boot, seq), typed rows, and the callback's stream events."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from fleetlink_cloud.bus import StreamEvent
from fleetlink_cloud.errors import StoreError
from fleetlink_cloud.ingest.events import stream_events
from fleetlink_cloud.store import (
    DtcRow,
    EventRow,
    HealthRow,
    IngestBatch,
    PositionRow,
    SignalRow,
    Store,
    open_store,
)
from fleetlink_protocols.records import DtcSource, Entry
from tests.cloud.store.records import DEV, RX0, T0, S, add, batch, dtc, event, health, pos, sig


def one_of_each(first_seq: int = 0, ts: int = T0) -> list[Entry]:
    s = first_seq
    return [
        pos(s, ts, 52.52, 13.405, alt=34.5, speed=12.25, heading=271.5, hdop=0.9, sats=11),
        sig(s + 1, ts + 1, "Vehicle.Speed", 12.5),
        dtc(s + 2, ts + 2, "SPN-FMI", source=DtcSource.J1939, ecu=0, spn=110, fmi=0,
            occurrences=3, lamps=0x40),
        event(s + 3, ts + 3, "harsh_braking", decel_mps2=4.5, ignition=True, gear="D"),
        health(s + 4, ts + 4, **{"outbox.appended": 120, "uplink.sent": 118}),
    ]  # fmt: skip


class Recorder:
    """An EventsFor callback: one event per new entry; remembers what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[IngestBatch, tuple[int, ...]]] = []

    def __call__(self, b: IngestBatch, new: Sequence[Entry]) -> list[StreamEvent]:
        self.calls.append((b, tuple(e.seq for e in new)))
        return [
            StreamEvent(
                999, "test", b.device_id, e.record.ts_wall_ns, {"seq": e.seq, "lane": b.lane}
            )
            for e in new
        ]


async def test_each_record_type_is_stored_typed(store: Store) -> None:
    await add(store)
    [result] = await store.ingest_batches([batch(one_of_each(), boot=7)])
    assert (len(result.new_entries), result.duplicates) == (5, 0)
    assert (await store.positions(DEV)).items == [
        PositionRow(DEV, 7, 0, T0, 52.52, 13.405, 3, 34.5, 12.25, 271.5, 0.9, 11)
    ]
    assert (await store.signal_history(DEV, "Vehicle.Speed")).items == [
        SignalRow(DEV, 7, 1, T0 + 1, "Vehicle.Speed", 12.5)
    ]
    assert (await store.dtc_history(DEV)).items == [
        DtcRow(DEV, 7, 2, T0 + 2, 2, "SPN-FMI", 0, True, 110, 0, 3, 0x40)
    ]
    assert (await store.events()).items == [
        EventRow(DEV, 7, 3, T0 + 3, "harsh_braking",
                 {"decel_mps2": 4.5, "ignition": True, "gear": "D"}),
    ]  # fmt: skip
    assert await store.health_latest(DEV) == HealthRow(
        DEV, 7, 4, T0 + 4, {"outbox.appended": 120, "uplink.sent": 118}
    )
    counts = (await store.stats()).counts
    assert [counts[t] for t in ("seen", "positions", "signals", "dtcs", "events", "health")] == [
        5, 1, 1, 1, 1, 1,
    ]  # fmt: skip


async def test_position_without_optional_fields(store: Store) -> None:
    await add(store)
    await store.ingest_batch(batch([pos(0, T0, -33.9, 151.2)]))
    assert (await store.positions(DEV)).items == [
        PositionRow(DEV, 1, 0, T0, -33.9, 151.2, 3, None, None, None, None, None)
    ]


async def test_signal_values_keep_their_type(store: Store) -> None:
    await add(store)
    values: list[tuple[str, float | int | bool | str]] = [
        ("A.Float", 1.0), ("A.Int", 7), ("A.Bool", True), ("A.Str", "D"), ("A.Neg", -2.5e-9),
    ]  # fmt: skip
    await store.ingest_batch(batch([sig(i, T0, p, v) for i, (p, v) in enumerate(values)]))
    latest = await store.signals_latest(DEV)
    got = {p: (type(r.value), r.value) for p, r in latest.items()}
    assert got == {p: (type(v), v) for p, v in values}
    assert list(latest) == sorted(p for p, _ in values)


async def test_the_same_batch_twice_is_stored_once(store: Store) -> None:
    await add(store)
    b = batch(one_of_each())
    first = await store.ingest_batch(b)
    before = (await store.stats()).counts
    again = await store.ingest_batch(b)
    assert (again.new_entries, again.duplicates, again.batch) == ((), 5, b)
    assert first.new_entries == tuple(b.entries)
    assert (await store.stats()).counts == before


async def test_duplicates_within_one_call_and_one_batch(store: Store) -> None:
    await add(store)
    a = batch([pos(0, T0), pos(1, T0 + S), pos(0, T0)])  # seq 0 twice in one batch
    b = batch([pos(1, T0 + S), pos(2, T0 + 2 * S)], lane="history")
    results = await store.ingest_batches([a, b, a])
    assert [([e.seq for e in r.new_entries], r.duplicates) for r in results] == [
        ([0, 1], 1), ([2], 1), ([], 3),
    ]  # fmt: skip
    assert [p.seq for p in (await store.positions(DEV)).items] == [0, 1, 2]


async def test_overlapping_batches_store_only_new_seqs_in_batch_order(store: Store) -> None:
    await add(store)
    await store.ingest_batch(batch([sig(s, T0 + s, "X.Y", s) for s in range(5)]))
    mixed = [sig(s, T0 + s, "X.Y", s) for s in (7, 3, 6, 4, 5)]
    r = await store.ingest_batch(batch(mixed, lane="history"))
    assert ([e.seq for e in r.new_entries], r.duplicates) == ([7, 6, 5], 2)
    assert [x.seq for x in (await store.signal_history(DEV, "X.Y")).items] == list(range(8))


async def test_the_key_is_device_boot_and_seq(store: Store) -> None:
    await add(store, "veh-1", "veh-2")
    results = await store.ingest_batches(
        [
            batch([pos(0, T0)], device="veh-1", boot=1),
            batch([pos(0, T0)], device="veh-1", boot=2),
            batch([pos(0, T0)], device="veh-2", boot=1),
        ]
    )
    assert [len(r.new_entries) for r in results] == [1, 1, 1]
    assert (await store.stats()).counts["positions"] == 3


async def test_events_for_sees_only_new_entries_and_ids_ascend(store: Store) -> None:
    await add(store)
    rec = Recorder()
    b1 = batch([pos(0, T0), sig(1, T0 + 1, "X.Y", 1)])
    b2 = batch([sig(1, T0 + 1, "X.Y", 1), pos(2, T0 + 2)], lane="history")
    await store.ingest_batches([b1, b2], rec)
    await store.ingest_batches([b1], rec)  # redelivered: no new entries, no call, no event
    assert [(c[0], c[1]) for c in rec.calls] == [(b1, (0, 1)), (b2, (2,))]
    events = await store.stream_events_after(0)
    assert [(e.type, e.device_id, e.ts_wall_ns, dict(e.data)) for e in events] == [
        ("vehicle.online", DEV, RX0, {"boot_id": 1, "reason": "data"}),  # never born: data
        ("test", DEV, T0, {"seq": 0, "lane": "live"}),
        ("test", DEV, T0 + 1, {"seq": 1, "lane": "live"}),
        ("test", DEV, T0 + 2, {"seq": 2, "lane": "history"}),
    ]
    ids = [e.id for e in events]
    assert ids == list(range(ids[0], ids[0] + 4))
    assert await store.latest_stream_event_id() == max(e.id for e in events)
    assert [e.id for e in await store.stream_events_after(ids[0], limit=1)] == [ids[1]]


async def test_a_failing_callback_rolls_the_whole_call_back(store: Store) -> None:
    await add(store)
    boom_after = 1

    def flaky(b: IngestBatch, new: Sequence[Entry]) -> list[StreamEvent]:
        if b.lane == "history" and boom_after:
            raise StoreError("callback failed")
        return Recorder()(b, new)

    batches = [batch([pos(0, T0)]), batch([pos(1, T0 + S)], lane="history")]
    with pytest.raises(StoreError, match="callback failed"):
        await store.ingest_batches(batches, flaky)
    counts = (await store.stats()).counts
    assert (counts["seen"], counts["positions"], counts["stream_events"]) == (0, 0, 0)
    assert (await store.vehicle(DEV)).position is None  # type: ignore[union-attr]
    assert await store.presence(DEV) is None
    boom_after = 0
    results = await store.ingest_batches(batches, flaky)
    assert [len(r.new_entries) for r in results] == [1, 1]
    assert [e.data["seq"] for e in await store.stream_events_after(0) if e.type == "test"] == [0, 1]


async def test_with_the_ingest_event_rules(store: Store) -> None:
    await add(store)
    live = batch([pos(0, T0, 1.0, 2.0), health(1, T0)])
    history = batch([pos(2, T0 - S)], lane="history")
    await store.ingest_batches([live, history], stream_events)
    fired = [e for e in await store.stream_events_after(0) if e.type == "position"]
    assert [(e.ts_wall_ns, e.data["seq"], e.data["lat"]) for e in fired] == [(T0, 0, 1.0)]


async def test_ingest_of_nothing(store: Store) -> None:
    assert await store.ingest_batches([]) == []
    await add(store)
    [r] = await store.ingest_batches([batch([])])
    assert (r.new_entries, r.duplicates) == ((), 0)


async def test_a_large_call_across_devices(store: Store) -> None:
    devices = [f"veh-{i:02d}" for i in range(5)]
    await add(store, *devices)
    batches = [
        batch([sig(s, T0 + s * S, "Vehicle.Speed", float(s)) for s in range(k, 2000, 4)],
              device=d, boot=3, lane="history", rx=RX0 + k)
        for d in devices
        for k in range(4)
    ]  # fmt: skip
    results = await store.ingest_batches(batches)
    assert sum(len(r.new_entries) for r in results) == 5 * 2000
    again = await store.ingest_batches(batches[::-1])
    assert sum(r.duplicates for r in again) == 5 * 2000
    counts = (await store.stats()).counts
    assert (counts["seen"], counts["signals"]) == (10_000, 10_000)
    latest = await store.signals_latest("veh-03")
    assert (latest["Vehicle.Speed"].seq, latest["Vehicle.Speed"].value) == (1999, 1999.0)
    presence = await store.presence("veh-03")
    assert presence is not None
    assert presence.last_seen_wall_ns == RX0 + 3


async def test_concurrent_writers_store_a_redelivery_once(store_url: str) -> None:
    """Two workers (separate connections) take the same messages at the same time."""
    async with open_store(store_url) as one, open_store(store_url) as two:
        await add(one)
        batches = [batch([sig(s, T0 + s, "X.Y", s) for s in range(i, i + 50)]) for i in (0, 25, 50)]
        results = await asyncio.gather(
            *(w.ingest_batches(batches[::step], Recorder()) for w in (one, two) for step in (1, -1))
        )
        new = sum(len(r.new_entries) for rs in results for r in rs)
        dup = sum(r.duplicates for rs in results for r in rs)
        assert (new, dup) == (100, 4 * 150 - 100)
        assert [x.seq for x in (await two.signal_history(DEV, "X.Y")).items] == list(range(100))
        events = await one.stream_events_after(0)
        assert sorted(e.data["seq"] for e in events if e.type == "test") == list(range(100))
        assert [e.id for e in events] == sorted(e.id for e in events)


async def test_any_text_and_the_widest_wire_integers_are_stored(store: Store) -> None:
    """What the wire protocol lets through must store on both backends: a failure here would
    fail the whole ingest group on every retry. NUL (which PostgreSQL text cannot hold) is
    stored as U+FFFD."""
    await add(store)
    odd = 'tab\there\nnew line \\N back\\slash \u00e9\U0001f69a quote\' "dq" ,;|'
    uint32_max, can_id_max = 2**32 - 1, 2**29 - 1
    entries = [
        event(0, T0, odd, text=odd + "\x00", n=2**63 - 1),
        event(1, T0 + 1, "nul\x00kind"),
        dtc(2, T0, "P\x000301", ecu=can_id_max, occurrences=uint32_max, lamps=uint32_max),
        sig(3, T0, "X.Text", odd + "\x00"),
        health(4, T0, counter=2**63 - 1),
    ]
    [r] = await store.ingest_batches([batch(entries, boot=2**63 - 1)])
    assert r.duplicates == 0
    kinds = [(e.kind, dict(e.data)) for e in (await store.events()).items]
    assert kinds == [(odd, {"text": odd + "\x00", "n": 2**63 - 1}), ("nul\ufffdkind", {})]
    [d] = (await store.dtc_history(DEV)).items
    assert (d.code, d.ecu, d.occurrences, d.lamps, d.boot_id) == (
        "P\ufffd0301", can_id_max, uint32_max, uint32_max, 2**63 - 1,
    )  # fmt: skip
    [state] = await store.dtc_states(DEV)
    assert (state.code, state.occurrences, state.lamps) == ("P\ufffd0301", uint32_max, uint32_max)
    assert (await store.signals_latest(DEV))["X.Text"].value == odd + "\x00"
    assert (await store.health_latest(DEV)).counters == {"counter": 2**63 - 1}  # type: ignore[union-attr]


async def test_concurrent_tasks_on_one_store(store: Store) -> None:
    devices = [f"veh-{i}" for i in range(6)]
    await add(store, *devices)

    async def device_task(device: str) -> int:
        stored = 0
        for k in range(4):
            entries = [pos(s, T0 + s * S) for s in range(k * 10, k * 10 + 10)]
            [r] = await store.ingest_batches([batch(entries, device=device)], Recorder())
            stored += len(r.new_entries)
            assert (await store.vehicle(device)).position.seq == k * 10 + 9  # type: ignore[union-attr]
        return stored

    assert await asyncio.gather(*(device_task(d) for d in devices)) == [40] * 6
    events = await store.stream_events_after(0, limit=10_000)
    assert len([e for e in events if e.type == "test"]) == 240
    assert [e.id for e in events] == list(range(events[0].id, events[0].id + len(events)))


async def test_append_stream_events_assigns_ascending_ids(store: Store) -> None:
    assert await store.append_stream_events([]) == []
    first = await store.append_stream_events(
        [
            StreamEvent(77, "eta.updated", DEV, T0, {"job": "j1", "eta_s": 120.5}),
            StreamEvent(77, "job.assigned", DEV, T0 + 1, {"job": "j1", "stops": [1, 2]}),
        ]
    )
    second = await store.append_stream_events([StreamEvent(0, "job.done", DEV, T0 + 2)])
    assert len(first) == 2
    assert second == [first[1] + 1]
    assert first[1] == first[0] + 1
    assert await store.stream_events_after(0) == [
        StreamEvent(first[0], "eta.updated", DEV, T0, {"job": "j1", "eta_s": 120.5}),
        StreamEvent(first[1], "job.assigned", DEV, T0 + 1, {"job": "j1", "stops": [1, 2]}),
        StreamEvent(second[0], "job.done", DEV, T0 + 2, {}),
    ]
    assert await store.stream_events_after(second[0]) == []
    assert await store.latest_stream_event_id() == second[0]
