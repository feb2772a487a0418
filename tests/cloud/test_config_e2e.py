"""Remote configuration end to end: the API -> the store -> retained on a real Mosquitto -> a
simulated vehicle that was offline when it was set -> its report through ingest -> the API.

Peers and setup as in test_commands_e2e: Mosquitto with the registry's ACL and passwords, a
SQLite store, one in-process ingest worker and the command/configuration downlink publishing
through its connection, and a real edge agent on simulated hardware in its own process. The
API runs in-process (httpx over ASGI) with a dispatch token.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetlink_cloud.api import ApiContext, create_app
from fleetlink_cloud.bus import EventBus
from fleetlink_cloud.commands import CommandService
from fleetlink_cloud.config import ApiSettings, BrokerSettings
from fleetlink_cloud.ingest.consumer import MqttConsumer
from fleetlink_cloud.ingest.pipeline import Pipeline
from fleetlink_cloud.ingest.worker import IngestWorker
from fleetlink_cloud.registry import add_device
from fleetlink_cloud.store import Store, open_store
from fleetlink_protocols.topics import mosquitto_acl_entries
from tests.cloud.api.harness import mint
from tests.cloud.test_commands_e2e import (
    BACKEND_PASSWORD,
    DEVICE,
    INGEST,
    WAIT_S,
    start_vehicle,
    until,
)
from tests.peers.mosquitto import Mosquitto

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]

URL = f"/v1/vehicles/{DEVICE}/config"
S = 1_000_000_000
EVERY_2_S = {"sampling": {"position_interval_s": 2}, "uplink": {"batch_max_records": 50}}
FUEL_RATE = "Vehicle.OBD.FuelRate"
# J1979 PID 5E (engine fuel rate): the simulated ECU supports it, the default list omits it.
WITH_FUEL_RATE = {"can": {"obd": {"pids": [0x0C, 0x0D, 0x5E]}}}


@contextlib.asynccontextmanager
async def cloud(port: int, store: Store) -> AsyncIterator[httpx.AsyncClient]:
    """Ingest and downlink in-process, and an API client holding a dispatch token."""
    settings = BrokerSettings(
        embedded=False, host="127.0.0.1", port=port, username="backend",
        password=BACKEND_PASSWORD, protocol="5", keepalive_s=5,
    )  # fmt: skip
    consumer = MqttConsumer(settings, client_id="cloud-config-e2e", backoff_s=(0.05, 0.5))
    worker = IngestWorker(consumer, Pipeline(store, INGEST, topic_prefix="fleet"), store, INGEST)
    commands = CommandService(store, consumer, prefix="fleet", sweep_interval_s=0.2)
    app = create_app(ApiContext(store, EventBus(), ApiSettings()), commands=commands)
    _, token = await mint(store, "dispatch")
    tasks = [
        asyncio.create_task(worker.run(), name="ingest"),
        asyncio.create_task(commands.run(), name="downlink"),
    ]
    headers = {"Authorization": f"Bearer {token}"}
    transport = httpx.ASGITransport(app)
    try:
        await until(consumer.connected.is_set)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=headers
        ) as client:
            yield client
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def reported(api: httpx.AsyncClient, check: Any) -> dict[str, Any]:
    """GET /config until ``check(body)`` holds; the body."""
    async with asyncio.timeout(WAIT_S):
        while True:
            body: dict[str, Any] = (await api.get(URL)).json()
            if body["reported"] is not None and check(body):
                return body
            await asyncio.sleep(0.1)


async def fixes_after(store: Store, from_wall_ns: int, n: int) -> list[int]:
    """Device times of the first ``n`` positions stored from ``from_wall_ns`` on."""
    async with asyncio.timeout(WAIT_S):
        while True:
            page = await store.positions(DEVICE, from_wall_ns=from_wall_ns, limit=n)
            if len(page.items) >= n:
                return [p.ts_wall_ns for p in page.items]
            await asyncio.sleep(0.2)


def gaps_s(times: list[int]) -> list[float]:
    return [(b - a) / S for a, b in itertools.pairwise(times)]


async def test_a_configuration_set_offline_reaches_the_vehicle_and_its_report_the_api(
    tmp_path: Path,
) -> None:
    log = tmp_path / "vehicle.log"
    async with open_store(f"sqlite:///{tmp_path / 'cloud.sqlite3'}") as store:
        password = (await add_device(store, DEVICE)).password
        users = {DEVICE: password, "backend": BACKEND_PASSWORD}
        with Mosquitto(users, mosquitto_acl_entries("fleet").splitlines()) as broker:
            async with cloud(broker.port, store) as api:
                first = await api.put(URL, json={"document": EVERY_2_S})
                assert first.status_code == 200, first.text
                assert (first.json()["desired"]["published"], first.headers["etag"]) == (
                    True,
                    '"1"',
                )

                vehicle = start_vehicle(password, broker.port, tmp_path / "vehicle", log)
                try:
                    await check_applied_then_refused(api, store)
                    await check_a_pid_added_is_polled_without_a_restart(api, store)
                    assert vehicle.poll() is None  # the same process all along
                finally:
                    vehicle.send_signal(signal.SIGTERM)
                    code = await asyncio.to_thread(vehicle.wait, 30)
                assert code == 0, log.read_text()[-3000:]
                assert await store.list_dead_letters(limit=10) == []
                audit = [(a.method, a.path, a.status) for a in await store.list_audit()]
                assert audit == [("PUT", URL, 200), ("PUT", URL, 200), ("PUT", URL, 412),
                                 ("PUT", URL, 200)]  # fmt: skip


async def check_applied_then_refused(api: httpx.AsyncClient, store: Store) -> None:
    # Picked up from the retained message on connect, applied, reported.
    body = await reported(api, lambda b: b["reported"]["version"] == 1)
    assert body["in_sync"] is True
    assert body["reported"]["document"] == EVERY_2_S
    assert body["reported"]["pending_restart"] == ["uplink.batch_max_records"]
    assert body["reported"]["error"] is None
    applied_at = body["reported"]["reported_wall_ns"]
    # Positions now arrive every 2 s of device time instead of every second.
    assert min(gaps_s(await fixes_after(store, applied_at, 4))) >= 1.9

    # A document the vehicle's model refuses: the cloud stores it (keys are the vehicle's
    # business), the vehicle reports why and keeps running version 1.
    bad = {"sampling": {"position_interval_s": -1}}
    second = await api.put(URL, json={"document": bad}, headers={"If-Match": '"1"'})
    assert (second.status_code, second.headers["etag"]) == (200, '"2"')
    stale = await api.put(URL, json={"document": EVERY_2_S}, headers={"If-Match": '"1"'})
    assert (stale.status_code, stale.headers["etag"]) == (412, '"2"')
    body = await reported(api, lambda b: b["reported"]["refused_version"] == 2)
    assert (body["reported"]["version"], body["in_sync"]) == (1, False)
    assert body["reported"]["error"].startswith("sampling.position_interval_s: Input should be")
    assert body["desired"]["version"] == 2
    # Nothing changed on the vehicle: still a fix every 2 s.
    refused_at = body["reported"]["reported_wall_ns"]
    assert min(gaps_s(await fixes_after(store, refused_at, 3))) >= 1.9


async def check_a_pid_added_is_polled_without_a_restart(
    api: httpx.AsyncClient, store: Store
) -> None:
    latest = await store.signals_latest(DEVICE)
    assert FUEL_RATE not in latest
    boot = latest["Vehicle.OBD.Speed"].boot_id
    third = await api.put(URL, json={"document": WITH_FUEL_RATE}, headers={"If-Match": '"2"'})
    assert (third.status_code, third.headers["etag"]) == (200, '"3"')
    body = await reported(api, lambda b: b["reported"]["version"] == 3)
    assert body["in_sync"] is True
    assert body["reported"]["document"] == WITH_FUEL_RATE
    assert (body["reported"]["error"], body["reported"]["pending_restart"]) == (None, [])
    # The poller takes the new list at once: fuel rate samples arrive from the same boot.
    async with asyncio.timeout(WAIT_S):
        while True:
            if (page := await store.signal_history(DEVICE, FUEL_RATE, limit=5)).items:
                break
            await asyncio.sleep(0.2)
    assert {row.boot_id for row in page.items} == {boot}
