"""The API under test: a real SQLite store with a small fleet in it, tokens of every scope, a
fixed clock, and the app. ``api_for`` is for async tests (httpx over ASGI, one event loop);
``served`` runs the same world in a loop thread for starlette's TestClient (WebSockets) and
for the schemathesis run, whose requests come from a synchronous thread."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio.from_thread
import httpx
from fastapi import FastAPI
from starlette.exceptions import StarletteDeprecationWarning

from fleetlink_cloud import tokens
from fleetlink_cloud.api import ApiContext, create_app
from fleetlink_cloud.bus import EventBus
from fleetlink_cloud.config import ApiSettings
from fleetlink_cloud.ingest.events import stream_events
from fleetlink_cloud.store import IngestBatch, Store, open_store
from fleetlink_cloud.store.base import SCOPES, Scope
from fleetlink_protocols.records import (
    Dtc,
    DtcSource,
    Entry,
    Event,
    Health,
    Position,
    Record,
    SignalValue,
)

with warnings.catch_warnings():
    # Starlette 1.x prefers the httpx2 package for its TestClient; the lock pins httpx, which
    # the TestClient still supports (it only warns, once, at import).
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

NOW_NS = 1_717_243_200_000_000_000  # 2024-06-01T12:00:00Z, the cloud clock in every test
T0_NS = NOW_NS - 3_600_000_000_000  # the first fix of veh-1: an hour earlier (device clock)
FIX_STEP_NS = 10_000_000_000  # one fix every 10 s
N_FIXES = 25
BOOT = 7
LOST_SEQS = (N_FIXES, N_FIXES + 1)
PAGE_SIZE_MAX = 50


@dataclass
class Api:
    store: Store
    ctx: ApiContext
    app: FastAPI
    tokens: dict[Scope, str] = field(default_factory=dict)
    token_ids: dict[Scope, str] = field(default_factory=dict)

    def auth(self, scope: Scope) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[scope]}"}


async def mint(store: Store, scope: Scope, name: str | None = None) -> tuple[str, str]:
    """A stored token of ``scope``: (token id, bearer token)."""
    new = tokens.generate()
    await store.create_token(
        new.token_id,
        name=name or f"test-{scope}",
        scope=scope,
        token_hash=new.secret_hash,
        created_wall_ns=NOW_NS,
    )
    return new.token_id, new.token


def _veh1_records() -> list[Record]:
    records: list[Record] = [
        Position(T0_NS + i * FIX_STEP_NS, 52.5 + i * 1e-3, 13.4, alt_msl_m=40.0, speed_mps=8.0)
        for i in range(N_FIXES)
    ]
    t = T0_NS + N_FIXES * FIX_STEP_NS
    records += [
        SignalValue(t - 2, "Vehicle.Speed", 1.0),  # lost on the way: seq N_FIXES
        SignalValue(t - 1, "Vehicle.Speed", 2.0),  # lost: seq N_FIXES + 1
        SignalValue(t, "Vehicle.Speed", 28.8),
        SignalValue(t + 1, "Vehicle.Speed", 30.0),
        SignalValue(t + 2, "Vehicle.Powertrain.CombustionEngine.Speed", 1500),
        Dtc(t + 3, DtcSource.OBD, "P0301"),
        Dtc(t + 4, DtcSource.OBD, "P1234"),  # manufacturer-specific: no generic text
        Dtc(t + 5, DtcSource.J1939, "100-1", ecu=0, spn=100, fmi=1, occurrences=3, lamps=0x0400),
        Dtc(t + 6, DtcSource.OBD, "P0420", active=False),
        Event(t + 7, "harsh_brake", {"decel_mps2": 5.5}),
        Event(t + 8, "ignition_off", {}),
        Health(t + 9, {"outbox.evicted_total": 2, "can.frames": 1000}),
    ]
    return records


async def seed(store: Store) -> None:
    """veh-1: online, a drive with signals, DTCs, events and a gap; veh-2: registered, quiet."""
    for device_id, name in (("veh-1", "Truck 1"), ("veh-2", "Van 2")):
        await store.add_device(device_id, name=name, password_hash="", created_wall_ns=T0_NS)
    await store.record_birth(
        "veh-1",
        BOOT,
        agent_version="1.0",
        started_wall_ns=T0_NS - 1,
        alias_extras={},
        received_wall_ns=T0_NS,
    )
    entries = [Entry(seq, r) for seq, r in enumerate(_veh1_records())]
    entries = [e for e in entries if e.seq not in LOST_SEQS]  # the ledger shows the gap
    await store.ingest_batch(
        IngestBatch("veh-1", BOOT, "live", entries, received_wall_ns=NOW_NS - 1), stream_events
    )


def store_url(tmp_path: Path) -> str:
    return "sqlite:///" + str(tmp_path / "db.sqlite3")


@contextlib.asynccontextmanager
async def api_for(tmp_path: Path) -> AsyncIterator[Api]:
    async with open_store(store_url(tmp_path)) as store:
        await seed(store)
        ctx = ApiContext(
            store=store,
            bus=EventBus(),
            settings=ApiSettings(page_size_max=PAGE_SIZE_MAX),
            clock=lambda: NOW_NS,
        )
        api = Api(store, ctx, create_app(ctx))
        for scope in SCOPES:
            api.token_ids[scope], api.tokens[scope] = await mint(store, scope)
        yield api


def client_for(api: Api) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(api.app), base_url="http://test")


@dataclass
class Served:
    """The world in a loop thread: ``client`` is a TestClient bound to that loop."""

    api: Api
    client: TestClient
    portal: anyio.from_thread.BlockingPortal


@contextlib.contextmanager
def served(tmp_path: Path) -> Iterator[Served]:
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(api_for(tmp_path)) as api,
    ):
        client = TestClient(api.app, base_url="http://test")
        client.portal = portal  # every request and WebSocket runs on the store's loop
        yield Served(api, client, portal)
