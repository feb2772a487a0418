"""Downlink commands end to end: cloud CommandService -> real Mosquitto -> simulated vehicle ->
acks through ingest -> the store.

Peers: Mosquitto (Debian ``mosquitto``, started here with the registry's ACL, the device's and
the backend's passwords) and a SQLite store. The cloud side runs in-process: one ingest worker
(``MqttConsumer`` on the MQTT 5 shared subscription, the real pipeline) and the
``CommandService`` publishing through that consumer. The vehicle is a real edge agent on
simulated hardware (``fleetlink-edge simulate``, its own process and credentials), started only
after the first command was queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from fleetlink_cloud.commands import CommandService
from fleetlink_cloud.config import BrokerSettings, IngestSettings
from fleetlink_cloud.ingest.consumer import MqttConsumer
from fleetlink_cloud.ingest.pipeline import Pipeline
from fleetlink_cloud.ingest.worker import IngestWorker
from fleetlink_cloud.registry import add_device
from fleetlink_cloud.store import Store, open_store
from fleetlink_cloud.store.base import CommandRow
from fleetlink_protocols.topics import mosquitto_acl_entries
from tests.peers.mosquitto import Mosquitto

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]

DEVICE = "veh-cmd-e2e"
BACKEND_PASSWORD = "backend-cmd-secret"
INGEST = IngestSettings(group_max_messages=50, retry_initial_s=0.05, retry_max_s=0.5)
WAIT_S = 60.0
FINAL = {"done", "failed", "rejected"}


@pytest.fixture
async def registered(tmp_path: Path) -> AsyncIterator[tuple[Store, str]]:
    """The cloud store with the vehicle registered; its MQTT password."""
    async with open_store(f"sqlite:///{tmp_path / 'cloud.sqlite3'}") as store:
        creds = await add_device(store, DEVICE)
        yield store, creds.password


@contextlib.asynccontextmanager
async def cloud(port: int, store: Store) -> AsyncIterator[CommandService]:
    """Ingest and command delivery, in-process, until the block ends."""
    settings = BrokerSettings(
        embedded=False,
        host="127.0.0.1",
        port=port,
        username="backend",
        password=BACKEND_PASSWORD,
        protocol="5",
        keepalive_s=5,
    )
    consumer = MqttConsumer(settings, client_id="cloud-commands-e2e", backoff_s=(0.05, 0.5))
    worker = IngestWorker(consumer, Pipeline(store, INGEST, topic_prefix="fleet"), store, INGEST)
    commands = CommandService(store, consumer, prefix="fleet", sweep_interval_s=0.2)
    tasks = [
        asyncio.create_task(worker.run(), name="ingest"),
        asyncio.create_task(commands.run(), name="commands"),
    ]
    try:
        await until(consumer.connected.is_set)
        yield commands
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def start_vehicle(password: str, port: int, state: Path, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "fleetlink_edge.cli", "simulate", "--device", DEVICE,
           "--broker", f"127.0.0.1:{port}", "--state-dir", str(state),
           "--report-every", "60"]  # fmt: skip
    env = {
        **os.environ,
        "FLEETLINK_EDGE_UPLINK__USERNAME": DEVICE,
        "FLEETLINK_EDGE_UPLINK__PASSWORD": password,
        "FLEETLINK_EDGE_UPLINK__BACKOFF_INITIAL_S": "0.2",
        "FLEETLINK_EDGE_UPLINK__BACKOFF_MAX_S": "1.0",
    }
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


async def until(predicate: Callable[[], object], timeout_s: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.05)


async def settled(store: Store, command_id: str, timeout_s: float = WAIT_S) -> CommandRow:
    """The command once it has a final status."""
    async with asyncio.timeout(timeout_s):
        while True:
            row = await store.get_command(command_id)
            if row is not None and row.status in FINAL:
                return row
            await asyncio.sleep(0.05)


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if await check():
                return
            await asyncio.sleep(0.2)


async def test_commands_reach_the_vehicle_and_their_acks_reach_the_store(
    tmp_path: Path, registered: tuple[Store, str]
) -> None:
    store, password = registered
    users = {DEVICE: password, "backend": BACKEND_PASSWORD}
    log = tmp_path / "vehicle.log"
    with Mosquitto(users, mosquitto_acl_entries("fleet").splitlines()) as broker:
        async with cloud(broker.port, store) as commands:
            ping = (await commands.create(DEVICE, "ping")).command
            await asyncio.sleep(1.0)  # five sweeps: the vehicle was never online
            queued = await store.get_command(ping.command_id)
            assert queued is not None
            assert (queued.status, queued.sent_wall_ns) == ("queued", None)

            vehicle = start_vehicle(password, broker.port, tmp_path / "vehicle", log)
            try:
                pong = await settled(store, ping.command_id)
                assert (pong.status, pong.detail[:6]) == ("done", "agent "), pong
                assert pong.sent_wall_ns is not None

                await read_dtcs_until_p0420(commands, store)
                await check_set_config_and_unknown_command(commands, store)
                assert await store.list_dead_letters(limit=10) == []
            finally:
                vehicle.send_signal(signal.SIGTERM)
                code = await asyncio.to_thread(vehicle.wait, 30)
            assert code == 0, log.read_text()[-3000:]


async def read_dtcs_until_p0420(commands: CommandService, store: Store) -> None:
    """The simulated drive stores P0420 about 8 s in; a read on demand reports it, and its Dtc
    record travels the normal path into the store long before the next scheduled read."""
    deadline = time.monotonic() + WAIT_S
    while True:
        created = await commands.create(DEVICE, "read_dtcs")
        row = await settled(store, created.command.command_id)
        assert row.status == "done", row
        if "P0420" in row.detail:
            break
        assert row.detail == "stored DTCs 0x7e8: none"
        assert time.monotonic() < deadline, "the simulated ECU never reported P0420"
        await asyncio.sleep(1.0)
    assert row.detail == "stored DTCs 0x7e8: P0420"

    async def stored() -> bool:
        states = await store.dtc_states(DEVICE)
        return any(s.code == "P0420" and s.ecu == 0x7E8 and s.active for s in states)

    await eventually(stored)


async def check_set_config_and_unknown_command(commands: CommandService, store: Store) -> None:
    values = {"health": {"interval_s": 30}, "uplink": {"batch_max_records": 100}}
    created = await commands.create(DEVICE, "set_config", {"values": values})
    assert created.command.args["version"] == 1  # the desired configuration's new version
    row = await settled(store, created.command.command_id)
    assert (row.status, row.detail) == (
        "done",
        "applied health.interval_s=30.0; pending a restart: uplink.batch_max_records=100",
    )

    async def reported() -> bool:
        config = await store.get_config(DEVICE)
        return config.reported is not None and config.reported.version == 1

    await eventually(reported)
    # The service refuses names it does not know, so this one goes into the store directly,
    # as an older or newer cloud might have queued it; the sweep sends it all the same.
    await store.create_command(
        DEVICE, "cmd-unknown-1", "self_destruct", {"in_s": 10}, created_wall_ns=time.time_ns()
    )
    row = await settled(store, "cmd-unknown-1")
    assert row.status == "rejected"
    assert row.detail.startswith("unknown command 'self_destruct'"), row
