"""Remote configuration: desired documents with optimistic concurrency, reports, publishing."""

from __future__ import annotations

import asyncio

import pytest

from fleetlink_cloud.errors import NotFound
from fleetlink_cloud.store import DesiredConfigRow, DeviceConfig, ReportedConfigRow, Store
from fleetlink_cloud.store.base import StaleVersion
from tests.cloud.store.records import DEV, T0, S, add

DOC = {"sampling": {"position_interval_s": 2.0}, "log": {"level": "debug"}}


async def test_a_device_without_configuration_has_neither_side(store: Store) -> None:
    await add(store)
    assert await store.get_config(DEV) == DeviceConfig(DEV, None, None)
    assert await store.unpublished_configs() == []


async def test_versions_start_at_one_and_grow_by_one_per_change(store: Store) -> None:
    await add(store)
    first = await store.set_desired_config(
        DEV, DOC, expected_version=0, set_by="tok-a", set_wall_ns=T0
    )
    assert first == DesiredConfigRow(DEV, 1, DOC, "tok-a", T0, None, None)
    assert not first.published
    second = await store.set_desired_config(
        DEV, {"health": {"interval_s": 30}}, expected_version=1, set_by="tok-b", set_wall_ns=T0 + S
    )
    assert (second.version, second.document, second.set_by) == (
        2,
        {"health": {"interval_s": 30}},
        "tok-b",
    )
    forced = await store.set_desired_config(
        DEV, {}, expected_version=None, set_by="tok-c", set_wall_ns=T0 + 2 * S
    )
    assert (forced.version, forced.document, forced.set_wall_ns) == (3, {}, T0 + 2 * S)
    assert (await store.get_config(DEV)).desired == forced


async def test_a_stale_or_absent_version_changes_nothing(store: Store) -> None:
    await add(store)
    with pytest.raises(StaleVersion) as none_yet:
        await store.set_desired_config(DEV, DOC, expected_version=3, set_by="t", set_wall_ns=T0)
    assert (none_yet.value.expected, none_yet.value.current) == (3, 0)
    current = await store.set_desired_config(
        DEV, DOC, expected_version=0, set_by="t", set_wall_ns=T0
    )
    for stale in (0, 2, 5):
        with pytest.raises(StaleVersion) as info:
            await store.set_desired_config(
                DEV, {"x": 1}, expected_version=stale, set_by="u", set_wall_ns=T0 + S
            )
        assert info.value.current == 1
    assert (await store.get_config(DEV)).desired == current


async def test_of_two_writers_holding_one_version_exactly_one_wins(store: Store) -> None:
    await add(store)
    await store.set_desired_config(DEV, DOC, expected_version=0, set_by="t", set_wall_ns=T0)

    async def write(i: int) -> int | None:
        try:
            row = await store.set_desired_config(
                DEV, {"n": i}, expected_version=1, set_by=f"w{i}", set_wall_ns=T0 + i
            )
        except StaleVersion:
            return None
        return row.version

    results = await asyncio.gather(*(write(i) for i in range(4)))
    assert sorted(r for r in results if r is not None) == [2]
    assert results.count(None) == 3
    desired = (await store.get_config(DEV)).desired
    assert desired is not None
    assert desired.version == 2
    assert desired.document == {"n": results.index(2)}


async def test_first_documents_of_concurrent_writers_do_not_both_land(store: Store) -> None:
    await add(store)

    async def first(i: int) -> bool:
        try:
            await store.set_desired_config(
                DEV, {"n": i}, expected_version=0, set_by="w", set_wall_ns=T0
            )
        except StaleVersion:
            return False
        return True

    assert sorted(await asyncio.gather(*(first(i) for i in range(3)))) == [False, False, True]


async def test_first_version_is_where_a_device_starts(store: Store) -> None:
    await add(store)
    row = await store.set_desired_config(
        DEV, DOC, expected_version=0, set_by="t", set_wall_ns=T0, first_version=1_750_000_000_001
    )
    assert row.version == 1_750_000_000_001
    again = await store.set_desired_config(
        DEV, DOC, expected_version=None, set_by="t", set_wall_ns=T0, first_version=7
    )
    assert again.version == 1_750_000_000_002  # first_version only counts for the first


async def test_an_unknown_device_is_not_found(store: Store) -> None:
    for expected in (None, 0, 1):
        with pytest.raises(NotFound):
            await store.set_desired_config(
                "nope", DOC, expected_version=expected, set_by="t", set_wall_ns=T0
            )


async def test_publishing_is_tracked_per_version_and_never_goes_back(store: Store) -> None:
    await add(store, DEV, "veh-2")
    for device in ("veh-2", DEV):
        await store.set_desired_config(device, DOC, expected_version=0, set_by="t", set_wall_ns=T0)
    assert [c.device_id for c in await store.unpublished_configs()] == [DEV, "veh-2"]
    await store.mark_config_published(DEV, 1, T0 + S)
    assert [c.device_id for c in await store.unpublished_configs()] == ["veh-2"]
    desired = (await store.get_config(DEV)).desired
    assert desired is not None
    assert desired.published
    assert (desired.published_version, desired.published_wall_ns) == (1, T0 + S)
    await store.set_desired_config(DEV, {}, expected_version=1, set_by="t", set_wall_ns=T0)
    assert [c.device_id for c in await store.unpublished_configs(limit=1)] == [DEV]
    await store.mark_config_published(DEV, 2, T0 + 3 * S)
    await store.mark_config_published(DEV, 1, T0 + 4 * S)  # a slow publisher of the old one
    desired = (await store.get_config(DEV)).desired
    assert desired is not None
    assert (desired.published_version, desired.published_wall_ns) == (2, T0 + 3 * S)


async def test_the_newest_report_replaces_the_previous_one(store: Store) -> None:
    await add(store)
    applied = await store.record_reported_config(
        DEV,
        version=3,
        document=DOC,
        pending_restart=["uplink.batch_max_records"],
        refused_version=None,
        error=None,
        received_wall_ns=T0,
    )
    assert applied == ReportedConfigRow(DEV, 3, DOC, ("uplink.batch_max_records",), None, None, T0)
    assert (await store.get_config(DEV)).reported == applied
    refused = await store.record_reported_config(
        DEV,
        version=3,
        document=DOC,
        pending_restart=[],
        refused_version=4,
        error="sampling.position_interval_s: too small\x00",
        received_wall_ns=T0 + S,
    )
    assert refused.error == "sampling.position_interval_s: too small\ufffd"
    got = await store.get_config(DEV)
    assert got.reported == refused
    assert got.desired is None
    assert (await store.stats()).counts["reported_config"] == 1
