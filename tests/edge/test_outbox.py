"""The durable outbox: lanes, sequences, in-flight bookkeeping, eviction, corrupt files."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from fleetlink_edge.config import OutboxSettings
from fleetlink_edge.errors import OutboxError
from fleetlink_edge.outbox import Lane, Outbox, Stored
from fleetlink_protocols.codec import quantize
from fleetlink_protocols.records import (
    Dtc,
    DtcSource,
    Event,
    Health,
    Position,
    Record,
    SignalValue,
    record_type,
)
from tests.edge.outbox_writer import record_for

S = 1_000_000_000
T0 = 1_750_000_000 * S
SPEED, RPM = "Vehicle.Speed", "Vehicle.Powertrain.CombustionEngine.Speed"


def pos(i: int) -> Position:
    return Position(T0 + i * S, 52.0 + i * 1e-5, 4.3, speed_mps=12.5, heading_deg=90.0)


def sig(i: int, path: str = SPEED) -> SignalValue:
    return SignalValue(T0 + i * S, path, float(i % 250))


def event(i: int) -> Event:
    return Event(T0 + i * S, "harsh_braking", {"decel_mps2": 6.5})


def dtc(i: int) -> Dtc:
    return Dtc(T0 + i * S, DtcSource.OBD, "P0301", ecu=0x7E8)


def health(i: int) -> Health:
    return Health(T0 + i * S, {"can.frames": i})


@pytest.fixture
def settings(tmp_path: Path) -> OutboxSettings:
    return OutboxSettings(path=tmp_path / "outbox.sqlite3", max_bytes=64 << 20)


async def drain(outbox: Outbox, lane: Lane, limit: int = 500) -> list[Stored]:
    """Take and ack until ``lane`` is empty, checking the one-boot, ascending-seq contract."""
    out: list[Stored] = []
    while batch := await outbox.take(lane, limit):
        assert len({s.boot_id for s in batch}) == 1
        assert [s.seq for s in batch] == sorted(s.seq for s in batch)
        await outbox.ack([s.id for s in batch])
        out += batch
    return out


async def test_round_trip_of_real_gnss_fixes(settings: OutboxSettings, shared_data: Path) -> None:
    lines = (shared_data / "gpsd" / "haicom-305N.log.chk").read_text().splitlines()
    tpvs = [t for t in map(json.loads, (x for x in lines if x.startswith("{"))) if "lat" in t]
    fixes = [
        Position(T0 + i * S, t["lat"], t["lon"], alt_msl_m=t.get("altMSL"), speed_mps=t["speed"])
        for i, t in enumerate(tpvs)
    ]
    assert len(fixes) == 134
    async with Outbox(settings, boot_id=7) as outbox:
        ids = await outbox.append(fixes)
        assert len(ids) == len(fixes) == await outbox.pending_count(Lane.LIVE)
        got = await drain(outbox, Lane.LIVE)
    assert [s.record for s in got] == [quantize(f) for f in fixes]
    assert [(s.boot_id, s.seq) for s in got] == [(7, i) for i in range(len(fixes))]
    assert outbox.counters["appended"] == outbox.counters["acked"] == len(fixes)


async def test_events_and_dtcs_travel_only_on_the_events_lane(settings: OutboxSettings) -> None:
    records: list[Record] = [pos(0), event(1), sig(2), dtc(3), health(4)]
    async with Outbox(settings, boot_id=1) as outbox:
        await outbox.append(records)
        assert await outbox.pending_count(Lane.EVENTS) == 2
        assert await outbox.pending_count() == 5
        events = await drain(outbox, Lane.EVENTS)
        live = await drain(outbox, Lane.LIVE)
        assert await outbox.pending_count() == 0
    assert [(s.seq, s.record) for s in events] == [(1, event(1)), (3, dtc(3))]
    assert [(s.seq, s.record) for s in live] == [(0, pos(0)), (2, sig(2)), (4, health(4))]


async def test_live_boundary_sends_newest_state_first_then_new_records(
    settings: OutboxSettings,
) -> None:
    async with Outbox(settings, boot_id=1) as outbox:
        await outbox.append([pos(0), sig(1), sig(2, RPM), pos(3), sig(4), health(5), sig(6, RPM)])
        await outbox.mark_live_boundary()
        await outbox.append([sig(7), event(8)])
        assert await outbox.pending_count(Lane.LIVE) == 4  # pos 3, speed 4, rpm 6, speed 7
        assert await outbox.pending_count(Lane.HISTORY) == 4
        live = await outbox.take(Lane.LIVE, 100)
        assert [s.seq for s in live] == [3, 4, 6, 7]
        history = await outbox.take(Lane.HISTORY, 100)
        assert [s.seq for s in history] == [0, 1, 2, 5]
        # Acked newest state is not replaced by older state at the next boundary.
        await outbox.ack([s.id for s in live])
        await outbox.release([s.id for s in history])
        await outbox.mark_live_boundary()
        assert await outbox.take(Lane.LIVE, 100) == []
        assert [s.seq for s in await drain(outbox, Lane.HISTORY)] == [0, 1, 2, 5]
        assert [s.seq for s in await drain(outbox, Lane.EVENTS)] == [8]


async def test_in_flight_records_are_not_taken_twice_until_released(
    settings: OutboxSettings,
) -> None:
    async with Outbox(settings, boot_id=1) as outbox:
        await outbox.append([sig(i) for i in range(10)])
        first = await outbox.take(Lane.LIVE, 4)
        second = await outbox.take(Lane.LIVE, 4)
        assert [s.seq for s in first + second] == list(range(8))
        assert await outbox.pending_count(Lane.LIVE) == 2
        assert outbox.counters["in_flight"] == 8
        await outbox.release([s.id for s in first])
        assert [s.seq for s in await outbox.take(Lane.LIVE, 100)] == [0, 1, 2, 3, 8, 9]
        await outbox.ack([s.id for s in second])
        assert outbox.counters["acked"] == 4
    # In flight is memory only: after a restart, everything not acked is pending again, and
    # opening draws a live boundary: the newest speed goes LIVE, the rest is backlog.
    async with Outbox(settings, boot_id=1) as outbox:
        assert [s.seq for s in await drain(outbox, Lane.LIVE)] == [9]
        assert [s.seq for s in await drain(outbox, Lane.HISTORY)] == [0, 1, 2, 3, 8]


async def test_sequences_continue_per_boot_across_restarts_and_acks(
    settings: OutboxSettings,
) -> None:
    async with Outbox(settings, boot_id=1) as outbox:
        await outbox.append([sig(i) for i in range(5)])
        await drain(outbox, Lane.LIVE)  # every row of boot 1 deleted
    async with Outbox(settings, boot_id=1) as outbox:  # agent restart, same boot
        await outbox.append([sig(5), sig(6)])
    async with Outbox(settings, boot_id=2) as outbox:  # reboot
        assert outbox.boot_id == 2
        await outbox.append([sig(7), event(8)])
        history = await drain(outbox, Lane.HISTORY, limit=10)
        live = await drain(outbox, Lane.LIVE)
        events = await drain(outbox, Lane.EVENTS)
    assert [(s.boot_id, s.seq) for s in history] == [(1, 5)]
    assert [(s.boot_id, s.seq) for s in live] == [(1, 6), (2, 0)]  # newest state first
    assert [(s.boot_id, s.seq) for s in events] == [(2, 1)]


async def test_take_never_mixes_boots(settings: OutboxSettings) -> None:
    for boot in (1, 2, 3):
        async with Outbox(settings, boot_id=boot) as outbox:
            await outbox.append([health(boot * 10 + i) for i in range(3)] + [event(boot)])
    async with Outbox(settings, boot_id=4) as outbox:
        batches = [await outbox.take(Lane.HISTORY, 100) for _ in range(4)]
        assert [[(s.boot_id, s.seq) for s in b] for b in batches] == [
            [(1, 0), (1, 1), (1, 2)],
            [(2, 0), (2, 1), (2, 2)],
            [(3, 0), (3, 1), (3, 2)],
            [],
        ]
        events = [await outbox.take(Lane.EVENTS, 100) for _ in range(3)]
        assert [[(s.boot_id, s.seq) for s in b] for b in events] == [[(1, 3)], [(2, 3)], [(3, 3)]]


async def test_records_the_codec_refuses_are_counted_not_stored(settings: OutboxSettings) -> None:
    bad: list[Record] = [Position(T0, 91.0, 0.0), SignalValue(T0, "x" * 500, 1.0)]
    async with Outbox(settings, boot_id=1) as outbox:
        ids = await outbox.append([sig(0), *bad, sig(1)])
        assert len(ids) == 2
        assert outbox.counters["rejected"] == 2
        assert [s.seq for s in await drain(outbox, Lane.LIVE)] == [0, 1]
        assert await outbox.append(bad) == []


async def test_undecodable_rows_are_dropped_and_counted(settings: OutboxSettings) -> None:
    async with Outbox(settings, boot_id=1) as outbox:
        await outbox.append([sig(i) for i in range(3)])
    with sqlite3.connect(settings.path) as db:  # a row damaged by something else
        db.execute("UPDATE records SET body = x'c1c1' WHERE seq = 1")
    db.close()
    async with Outbox(settings, boot_id=1) as outbox:
        assert [s.seq for s in await drain(outbox, Lane.HISTORY)] == [0]
        assert [s.seq for s in await drain(outbox, Lane.LIVE)] == [2]
        assert outbox.counters["dropped_undecodable"] == 1


@pytest.mark.parametrize("damage", ["garbage", "torn_page"])
async def test_corrupt_file_is_moved_aside_and_counted(
    settings: OutboxSettings, damage: str
) -> None:
    async with Outbox(settings, boot_id=1) as outbox:
        await outbox.append([sig(i) for i in range(2000)])
    raw = bytearray(settings.path.read_bytes())
    if damage == "garbage":
        raw[:100] = b"\x5a" * 100  # not a database header any more
    else:
        raw[4096 * 3 : 4096 * 3 + 2048] = b"\xff" * 2048  # half of a b-tree page
    settings.path.write_bytes(bytes(raw))
    failing = settings.model_copy(update={"on_corrupt": "fail"})
    with pytest.raises(OutboxError, match=r"corrupt|quick_check"):
        async with Outbox(failing, boot_id=1):
            pass
    async with Outbox(settings, boot_id=1) as outbox:
        assert outbox.counters["corrupt_recovered"] == 1
        assert await outbox.pending_count() == 0
        await outbox.append([sig(0)])
    moved = list(settings.path.parent.glob("outbox.sqlite3.corrupt-*"))
    assert len(moved) == 1
    assert moved[0].read_bytes()[:100] == bytes(raw[:100])
    async with Outbox(settings, boot_id=1) as outbox:  # the count is persisted
        assert outbox.counters["corrupt_recovered"] == 1


async def test_refuses_a_newer_schema_and_a_second_writer(settings: OutboxSettings) -> None:
    async with Outbox(settings, boot_id=1) as outbox:
        with pytest.raises(OutboxError, match="in use"):
            async with Outbox(settings, boot_id=1):
                pass
        await outbox.append([sig(0)])
    with sqlite3.connect(settings.path) as db:
        db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(OutboxError, match="schema 99"):
        async with Outbox(settings, boot_id=1):
            pass


async def test_cancelled_append_never_reuses_sequence_numbers(settings: OutboxSettings) -> None:
    async with Outbox(settings, boot_id=1) as outbox:
        for i in range(20):
            task = asyncio.create_task(outbox.append([sig(i)]))
            for _ in range(i % 5):
                await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await outbox.append([sig(99)])
        got = await drain(outbox, Lane.LIVE)
    # Cancelled before it started: nothing stored; cancelled later: the commit still completes.
    assert [s.seq for s in got] == list(range(len(got)))
    assert 1 < len(got) < 21
    assert got[-1].record == sig(99)


def on_disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def check_eviction_policy(kinds: list[str], delivered: set[int], counters: dict[str, int]) -> None:
    """``kinds[seq]`` is the type of each appended record; ``delivered`` the seqs that survived.

    Exact counts; oldest first within a type; and a record of a type is evicted only when
    every older record of each lower-priority type had already gone.
    """
    order = ["health", "signal", "position", "event", "dtc"]  # Priority, lowest first
    evicted = [(seq, kind) for seq, kind in enumerate(kinds) if seq not in delivered]
    for kind in order:
        gone = [seq for seq, k in evicted if k == kind]
        kept = [seq for seq, k in enumerate(kinds) if k == kind and seq in delivered]
        assert counters[f"evicted_{kind}"] == len(gone), kind
        assert not gone or not kept or max(gone) < min(kept), kind
        if gone:
            lower = set(order[: order.index(kind)])
            assert all(
                k not in lower for seq, k in enumerate(kinds[: max(gone)]) if seq in delivered
            )
    assert counters["evicted_total"] == len(evicted)


async def drain_all(outbox: Outbox) -> set[int]:
    got = [s for lane in Lane for s in await drain(outbox, lane)]
    seqs = [s.seq for s in got]
    assert len(seqs) == len(set(seqs))
    return set(seqs)


async def test_eviction_by_priority_then_age_with_exact_persisted_counts(tmp_path: Path) -> None:
    settings = OutboxSettings(path=tmp_path / "outbox.sqlite3", max_bytes=1 << 20)
    kinds: list[str] = []

    async def add(outbox: Outbox, records: Sequence[Record]) -> None:
        assert len(await outbox.append(records)) == len(records)
        kinds.extend(record_type(r).name.lower() for r in records)
        assert on_disk(settings.path) <= settings.max_bytes

    async with Outbox(settings, boot_id=3) as outbox:
        await add(outbox, [dtc(i) for i in range(20)] + [event(i) for i in range(20)])
        i = 0
        while outbox.counters["evicted_position"] < 100:  # a realistic mix fills the budget
            i += 1
            paths = (SPEED, RPM, "Vehicle.OBD.ThrottlePosition", "Vehicle.OBD.EngineLoad")
            mix: list[Record] = [health(i), *(sig(i, p) for p in paths * 10), *map(pos, range(59))]
            await add(outbox, mix)
        assert outbox.counters["evicted_event"] == 0
        while outbox.counters["evicted_dtc"] < 100:  # DTCs only: now events must go too
            await add(outbox, [dtc(i) for i in range(1000)])
        counters = dict(outbox.counters)
        assert counters["evicted_position"] == kinds.count("position")
        assert counters["evicted_event"] == 20
        per_boot = await outbox.eviction_counts()
    assert set(per_boot) == {3}
    assert {f"evicted_{k}": n for k, n in per_boot[3].items()} == {
        k: v for k, v in counters.items() if k.startswith("evicted_") and k != "evicted_total"
    }
    async with Outbox(settings, boot_id=4) as outbox:  # counts survive a restart
        assert await outbox.eviction_counts() == per_boot
        assert outbox.counters["evicted_total"] == counters["evicted_total"]
        delivered = await drain_all(outbox)
    check_eviction_policy(kinds, delivered, counters)


async def test_records_in_flight_are_never_evicted(tmp_path: Path) -> None:
    settings = OutboxSettings(path=tmp_path / "outbox.sqlite3", max_bytes=1 << 20)
    async with Outbox(settings, boot_id=1) as outbox:
        while outbox.counters["evicted_total"] == 0:
            await outbox.append([pos(j) for j in range(100)])
        await outbox.mark_live_boundary()
        taken = [s for lane in Lane for s in await outbox.take(lane, 100_000)]
        assert await outbox.pending_count() == 0
        before = outbox.counters["evicted_total"]
        for _ in range(20):  # newer records make way: those in flight are the uplink's
            await outbox.append([pos(j) for j in range(100)])
        assert outbox.counters["evicted_total"] > before + 1000
        taken += [s for lane in Lane for s in await outbox.take(lane, 100_000)]
        with pytest.raises(OutboxError, match="nothing can be evicted"):
            await outbox.append([pos(j) for j in range(2000)])
        with pytest.raises(OutboxError, match="exceed max_bytes"):  # would never fit
            await outbox.append([pos(j) for j in range(30_000)])
        assert on_disk(settings.path) <= settings.max_bytes
        await outbox.ack([s.id for s in taken])
        assert outbox.counters["acked"] == len(taken)
        await outbox.append([pos(0)])  # the failed append used no sequence number
        await outbox.mark_live_boundary()
        last = await outbox.take(Lane.LIVE, 10)
        assert [s.seq for s in last] == [outbox.counters["appended"] - 1]


async def test_a_smaller_budget_set_while_running_evicts_at_once(tmp_path: Path) -> None:
    settings = OutboxSettings(path=tmp_path / "outbox.sqlite3", max_bytes=4 << 20)
    async with Outbox(settings, boot_id=1) as outbox:
        await outbox.append([dtc(i) for i in range(10)])
        for _ in range(30):  # about 3 MB of fixes and signals
            await outbox.append([*map(pos, range(400)), *(sig(i) for i in range(400))])
        assert outbox.counters["evicted_total"] == 0
        with pytest.raises(ValueError, match="at least 1 MiB"):
            await outbox.set_budget(1000)
        await outbox.set_budget(1 << 20)
        evicted = outbox.counters["evicted_total"]
        assert evicted > 0
        assert outbox.counters["evicted_dtc"] == 0  # lowest priority first, as always
        for _ in range(10):  # appends stay within the new budget
            await outbox.append([*map(pos, range(400))])
        assert outbox.counters["evicted_total"] > evicted
        used = await outbox._used_pages()  # the budget bounds the pages in use
        assert used * 4096 <= 1 << 20
        await outbox.set_budget(64 << 20)  # larger again: nothing more goes
        before = outbox.counters["evicted_total"]
        await outbox.append([*map(pos, range(400))])
        assert outbox.counters["evicted_total"] == before
    async with Outbox(settings, boot_id=2) as outbox:  # the file's own budget at the next start
        assert outbox.counters["evicted_dtc"] == 0
        assert len(await drain(outbox, Lane.EVENTS)) == 10


@pytest.mark.parametrize("max_bytes", [64 << 20, 1 << 20])
async def test_random_operations_keep_counts_and_contents(tmp_path: Path, max_bytes: int) -> None:
    """Appends, takes, acks, releases, boundaries and restarts in random order (fixed seed)."""
    settings = OutboxSettings(path=tmp_path / "outbox.sqlite3", max_bytes=max_bytes)
    rng, boot, appended = random.Random(max_bytes), 1, 0
    delivered: set[tuple[int, int]] = set()
    outbox = await Outbox(settings, boot_id=boot).__aenter__()
    inflight: dict[int, Stored] = {}
    try:
        for _ in range(600):
            op = rng.random()
            if op < 0.45:
                first, n = outbox.next_seq, rng.randint(1, 30 if max_bytes > 1 << 20 else 300)
                await outbox.append([record_for(boot, first + i) for i in range(n)])
                appended += n
            elif op < 0.7:
                lane = rng.choice(list(Lane))
                batch = await outbox.take(lane, rng.randint(1, 50))
                assert len({s.boot_id for s in batch}) <= 1
                assert [s.seq for s in batch] == sorted(s.seq for s in batch)
                for s in batch:
                    assert s.id not in inflight
                    assert s.record == quantize(record_for(s.boot_id, s.seq))
                    assert (lane is Lane.EVENTS) == isinstance(s.record, Event | Dtc)
                    inflight[s.id] = s
            elif op < 0.85 and inflight:
                ids = rng.sample(sorted(inflight), rng.randint(1, len(inflight)))
                if rng.random() < 0.7:
                    await outbox.ack(ids)
                    delivered.update((inflight[i].boot_id, inflight[i].seq) for i in ids)
                else:
                    await outbox.release(ids)
                for i in ids:
                    del inflight[i]
            elif op < 0.95:
                await outbox.mark_live_boundary()
            else:  # restart; sometimes a reboot
                await outbox.__aexit__(None, None, None)
                boot += rng.random() < 0.5
                outbox = await Outbox(settings, boot_id=boot).__aenter__()
                inflight.clear()
            lanes = [await outbox.pending_count(lane) for lane in Lane]
            assert sum(lanes) == await outbox.pending_count() >= 0
            assert min(lanes) >= 0
            assert outbox.counters["in_flight"] == len(inflight)
            assert on_disk(settings.path) <= max_bytes
        await outbox.release(list(inflight))
        expected = {lane: await outbox.pending_count(lane) for lane in Lane}
        for lane in Lane:
            got = await drain(outbox, lane)
            assert len(got) == expected[lane]
            delivered.update((s.boot_id, s.seq) for s in got)
        evicted = outbox.counters["evicted_total"]
    finally:
        await outbox.__aexit__(None, None, None)
    assert len(delivered) + evicted == appended
    assert (evicted > 0) == (max_bytes == 1 << 20)


async def test_unusable_path_is_a_clear_outbox_error(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("not a directory")
    settings = OutboxSettings(path=tmp_path / "plain-file" / "outbox.sqlite3")
    with pytest.raises(OutboxError, match="cannot open outbox"):
        async with Outbox(settings, boot_id=1):
            pass
    with pytest.raises(OutboxError, match="not open"):
        await Outbox(settings, boot_id=1).append([sig(0)])
