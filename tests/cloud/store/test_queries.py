"""Record history: time ranges and keyset pagination (stable under inserts, BadCursor)."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from fleetlink_cloud.store import BadCursor, Page, Store
from fleetlink_cloud.store.conn import encode_cursor
from tests.cloud.store.records import DEV, T0, S, add, batch, dtc, event, pos, sig

Query = Callable[..., Awaitable[Page[Any]]]


def key(row: Any) -> tuple[int, int, int]:
    return (row.ts_wall_ns, row.boot_id, row.seq)


async def drain(query: Query, limit: int, start: str | None = None, **kw: Any) -> list[list[Any]]:
    """Every page of ``query`` from cursor ``start``."""
    pages, cursor = [], start
    while True:
        page = await query(limit=limit, cursor=cursor, **kw)
        pages.append(page.items)
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


async def test_positions_page_by_device_time_then_boot_then_seq(store: Store) -> None:
    await add(store, "veh-1", "veh-2")
    # 24 fixes: device times collide across boots, arrive out of order
    entries = {boot: [pos(s, T0 + (s // 2) * S) for s in range(12)] for boot in (1, 2)}
    await store.ingest_batches([batch(entries[2][::-1], boot=2), batch(entries[1], boot=1)])
    await store.ingest_batch(batch([pos(0, T0)], device="veh-2"))
    pages = await drain(store.positions, 10, device_id=DEV)
    assert [len(p) for p in pages] == [10, 10, 4]
    keys = [key(r) for p in pages for r in p]
    assert keys == sorted((T0 + (s // 2) * S, b, s) for b in (1, 2) for s in range(12))
    assert {r.device_id for p in pages for r in p} == {DEV}


async def test_a_full_last_page_has_no_cursor(store: Store) -> None:
    await add(store)
    await store.ingest_batch(batch([pos(s, T0 + s) for s in range(6)]))
    assert [len(p) for p in await drain(store.positions, 3, device_id=DEV)] == [3, 3]
    page = await store.positions(DEV, limit=6)
    assert (len(page.items), page.next_cursor) == (6, None)
    assert [r.seq for r in (await store.positions(DEV, limit=0)).items] == [0]  # at least one
    assert await store.positions("nope") == Page([], None)


async def test_time_range_is_from_inclusive_to_exclusive(store: Store) -> None:
    await add(store)
    await store.ingest_batch(batch([pos(s, T0 + s * S) for s in range(10)]))
    page = await store.positions(DEV, from_wall_ns=T0 + 3 * S, to_wall_ns=T0 + 7 * S)
    assert [r.seq for r in page.items] == [3, 4, 5, 6]
    assert [r.seq for r in (await store.positions(DEV, from_wall_ns=T0 + 8 * S)).items] == [8, 9]
    assert [r.seq for r in (await store.positions(DEV, to_wall_ns=T0 + S)).items] == [0]
    ranged = await drain(
        store.positions, 2, device_id=DEV, from_wall_ns=T0 + S, to_wall_ns=T0 + 6 * S
    )
    assert [[r.seq for r in p] for p in ranged] == [[1, 2], [3, 4], [5]]


async def test_cursors_are_stable_while_rows_are_inserted(store: Store) -> None:
    await add(store)
    await store.ingest_batch(batch([pos(s, T0 + s * S) for s in range(0, 20, 2)]))
    first = await store.positions(DEV, limit=4)
    assert [r.seq for r in first.items] == [0, 2, 4, 6]
    # New rows before the cursor (late history) and after it (live) arrive between pages.
    await store.ingest_batch(batch([pos(s, T0 + s * S) for s in (1, 3, 9, 25)], lane="history"))
    rest = await drain(store.positions, 4, first.next_cursor, device_id=DEV)
    seqs = [r.seq for p in rest for r in p]
    assert seqs == [8, 9, 10, 12, 14, 16, 18, 25]


async def test_signal_history_is_per_path(store: Store) -> None:
    await add(store)
    await store.ingest_batch(
        batch([sig(s, T0 + s, "A.Speed" if s % 3 else "A.Rpm", s) for s in range(15)])
    )
    pages = await drain(store.signal_history, 3, device_id=DEV, path="A.Speed")
    assert [[r.value for r in p] for p in pages] == [[1, 2, 4], [5, 7, 8], [10, 11, 13], [14]]
    rpm = await store.signal_history(DEV, "A.Rpm", from_wall_ns=T0 + 3, to_wall_ns=T0 + 10)
    assert [r.seq for r in rpm.items] == [3, 6, 9]
    assert await store.signal_history(DEV, "A.None") == Page([], None)


async def test_dtc_history_pages(store: Store) -> None:
    await add(store)
    await store.ingest_batch(
        batch([dtc(s, T0 + s, f"P0{300 + s}", active=s % 2 == 0) for s in range(5)])
    )
    pages = await drain(store.dtc_history, 2, device_id=DEV)
    assert [[(r.code, r.active) for r in p] for p in pages] == [
        [("P0300", True), ("P0301", False)], [("P0302", True), ("P0303", False)], [("P0304", True)],
    ]  # fmt: skip


async def test_events_across_devices_and_by_kind(store: Store) -> None:
    await add(store, "veh-a", "veh-b")
    await store.ingest_batches(
        [
            batch([event(s, T0 + s // 2, "harsh" if s % 2 else "idle", n=s) for s in range(8)],
                  device=device, lane="events")
            for device in ("veh-b", "veh-a")
        ]
    )  # fmt: skip
    pages = await drain(store.events, 3)
    order = [(r.ts_wall_ns - T0, r.device_id, r.seq) for p in pages for r in p]
    assert order == sorted((s // 2, d, s) for d in ("veh-a", "veh-b") for s in range(8))
    assert [len(p) for p in pages] == [3, 3, 3, 3, 3, 1]
    harsh_b = await drain(store.events, 2, device_id="veh-b", kind="harsh")
    assert [[r.data["n"] for r in p] for p in harsh_b] == [[1, 3], [5, 7]]
    ranged = await store.events(kind="idle", from_wall_ns=T0 + 1, to_wall_ns=T0 + 3)
    assert [(r.device_id, r.seq) for r in ranged.items] == [
        ("veh-a", 2), ("veh-b", 2), ("veh-a", 4), ("veh-b", 4),
    ]  # fmt: skip
    assert await store.events(device_id="veh-c") == Page([], None)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


GARBAGE = [
    "",
    "not a cursor!",
    "%%%%",
    _b64(b"\xff\xfe\x00"),  # not UTF-8
    _b64(b"{}"),  # not a list
    _b64(b"[1, 2]"),  # too short
    _b64(json.dumps([1, 2, 3, 4, 5]).encode()),  # too long
    _b64(json.dumps(["1", 2, 3]).encode()),  # a string for an int
    _b64(json.dumps([1.5, 2, 3]).encode()),  # a float for an int
    _b64(json.dumps([True, 2, 3]).encode()),  # a bool is not an int
    _b64(json.dumps([None, 2, 3]).encode()),
    encode_cursor(10**30, 0, 0),  # out of any database's integer range
    encode_cursor(-(2**63) - 1, 0, 0),
]


@pytest.mark.parametrize("cursor", GARBAGE)
async def test_garbage_cursors_are_bad_cursor(store: Store, cursor: str) -> None:
    await add(store)
    await store.ingest_batch(batch([pos(0, T0), sig(1, T0, "X.Y", 1), dtc(2, T0)]))
    for query in (
        lambda: store.positions(DEV, cursor=cursor),
        lambda: store.signal_history(DEV, "X.Y", cursor=cursor),
        lambda: store.dtc_history(DEV, cursor=cursor),
        lambda: store.events(cursor=cursor),
    ):
        with pytest.raises(BadCursor):
            await query()


async def test_a_cursor_of_another_query_shape_is_bad(store: Store) -> None:
    await add(store)
    await store.ingest_batch(batch([pos(s, T0 + s) for s in range(3)] + [event(3, T0, "x")]))
    await store.ingest_batch(batch([event(s, T0, "x") for s in range(4, 7)], lane="events"))
    positions_cursor = (await store.positions(DEV, limit=1)).next_cursor
    events_cursor = (await store.events(limit=1)).next_cursor
    assert positions_cursor is not None
    assert events_cursor is not None
    with pytest.raises(BadCursor):
        await store.events(cursor=positions_cursor)
    with pytest.raises(BadCursor):
        await store.positions(DEV, cursor=events_cursor)
    assert isinstance(BadCursor("x"), ValueError)
