"""Migrations, opening and closing, URL handling and driver-error translation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fleetlink_cloud.errors import ConfigError, StoreError
from fleetlink_cloud.store import BACKENDS, Store, open_store
from fleetlink_cloud.store import postgres as pg_backend
from fleetlink_cloud.store import sql as sql_backend
from fleetlink_cloud.store.postgres import redacted
from fleetlink_cloud.store.schema import MIGRATIONS, latest_version
from fleetlink_cloud.store.sql import TABLES
from fleetlink_cloud.store.sqlite import sqlite_path
from tests.cloud.store.records import T0, add

LATEST = 4  # the migrations this release ships; a new one changes this on purpose


async def test_fresh_schema_is_at_the_latest_version_and_empty(store: Store) -> None:
    assert latest_version() == MIGRATIONS[-1][0] == LATEST
    assert [n for n, _ in MIGRATIONS] == list(range(1, LATEST + 1))
    assert await store.schema_version() == LATEST
    stats = await store.stats()
    assert dict(stats.counts) == dict.fromkeys(TABLES, 0)
    assert await store.list_devices() == []
    assert await store.latest_stream_event_id() == 0


async def test_opening_again_is_idempotent_and_keeps_data(store_url: str) -> None:
    async with open_store(store_url) as first:
        await add(first, "veh-1")
        await first.append_stream_events([])
    for _ in range(2):
        async with open_store(store_url) as again:
            assert await again.schema_version() == LATEST
            devices = await again.list_devices()
            assert [(d.id, d.created_wall_ns) for d in devices] == [("veh-1", T0)]
            assert (await again.stats()).counts["devices"] == 1


async def test_a_version_1_database_is_migrated_to_2_and_keeps_its_data(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:
        m.setattr(sql_backend, "MIGRATIONS", MIGRATIONS[:1])
        async with open_store(store_url) as old:
            assert await old.schema_version() == 1
            await add(old, "veh-1")
    async with open_store(store_url) as upgraded:
        assert await upgraded.schema_version() == LATEST
        assert [d.id for d in await upgraded.list_devices()] == ["veh-1"]
        row = await upgraded.set_desired_config(
            "veh-1", {"health": {"interval_s": 30}}, expected_version=0, set_by="t", set_wall_ns=T0
        )
        assert row.version == 1


async def test_concurrent_first_opens_migrate_once(store_url: str) -> None:
    stores = [open_store(store_url) for _ in range(3)]
    opened = await asyncio.gather(*(s.__aenter__() for s in stores))
    try:
        assert [await s.schema_version() for s in opened] == [LATEST] * 3
        await add(opened[0], "veh-1")
        assert [d.id for d in await opened[2].list_devices()] == ["veh-1"]
    finally:
        for s in opened:
            await s.__aexit__(None, None, None)


async def test_sqlite_openers_of_a_new_file_race_safely(tmp_path: Path) -> None:
    """Workers starting together race to switch a new file to WAL; SQLite answers the losers
    "database is locked" at once, so a single round rarely shows it: run many."""
    for i in range(20):
        stores = [open_store(f"sqlite:///{tmp_path / f'race{i}.sqlite3'}") for _ in range(3)]
        opened = await asyncio.gather(*(s.__aenter__() for s in stores))
        for s in opened:
            await s.__aexit__(None, None, None)


async def test_a_closed_store_raises_store_error(store_url: str) -> None:
    store = open_store(store_url)
    with pytest.raises(StoreError, match="not open"):
        await store.get_device("veh-1")
    async with store:
        assert await store.get_device("veh-1") is None
    with pytest.raises(StoreError, match="not open"):
        await store.list_devices()


def test_unknown_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown database url scheme 'mysql'"):
        open_store("mysql://localhost/fleetlink")
    assert set(BACKENDS) == {"sqlite", "postgresql", "postgres"}


def test_postgres_url_is_redacted() -> None:
    assert redacted("postgresql://fleet:s3cr%t@db:5432/fl") == "postgresql://fleet:***@db:5432/fl"
    assert redacted("postgresql://fleet@db/fl") == "postgresql://fleet@db/fl"
    store = open_store("postgresql://fleet:hunter2@127.0.0.1:1/fl")
    assert store.url == "postgresql://fleet:***@127.0.0.1:1/fl"


def test_sqlite_url_paths() -> None:
    assert sqlite_path("sqlite:///data/fl.sqlite3") == "data/fl.sqlite3"
    assert sqlite_path("sqlite:////var/lib/fl.sqlite3?mode=rw") == "/var/lib/fl.sqlite3"
    assert sqlite_path("sqlite:///:memory:") == ":memory:"
    for bad in ("sqlite://host/x", "sqlite:///", "sqlite:///?x=1"):
        with pytest.raises(StoreError):
            sqlite_path(bad)


async def test_in_memory_sqlite_works() -> None:
    async with open_store("sqlite:///:memory:") as store:
        assert await store.schema_version() == LATEST
        await add(store, "veh-1")
        assert [d.id for d in await store.list_devices()] == ["veh-1"]


async def test_unusable_sqlite_path_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError):
        async with open_store(f"sqlite:///{blocker / 'sub' / 'cloud.sqlite3'}"):
            pass
    with pytest.raises(StoreError):
        async with open_store(f"sqlite:///{blocker}"):  # a file that is not a database
            pass


async def test_unreachable_postgres_is_a_store_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg_backend, "CONNECT_TIMEOUT_S", 0.5)
    store = open_store("postgresql://postgres:pw@127.0.0.1:1/none?connect_timeout=1")
    with pytest.raises(StoreError) as info:
        async with store:
            pass
    assert "pw" not in str(info.value)
