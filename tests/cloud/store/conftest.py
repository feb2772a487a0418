"""The store suite runs every test against both backends: SQLite (a file in tmp_path, WAL) and
PostgreSQL (a fresh schema of this run's database on the real server)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from fleetlink_cloud.store import Store, open_store
from tests.peers.postgres import TestDatabase

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="session")
def postgres_db() -> Iterator[TestDatabase]:
    """This run's database, created at first use and dropped at the end of the session."""
    db = TestDatabase.create()
    try:
        yield db
    finally:
        db.drop()


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database of the backend under test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cloud.sqlite3'}"
    db: TestDatabase = request.getfixturevalue("postgres_db")
    return db.url_for_schema()


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    async with open_store(store_url) as s:
        yield s
