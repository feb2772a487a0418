"""Fixtures of the API tests (see harness.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.cloud.api.harness import Api, Served, api_for, client_for, served


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with api_for(tmp_path) as world:
        yield world


@pytest.fixture
async def client(api: Api) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(api) as c:
        yield c


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Served]:
    with served(tmp_path) as world:
        yield world
