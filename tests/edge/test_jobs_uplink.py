"""A job offer down to a simulated vehicle and the driver's answer back up, across a dead link
and an agent restart: a real Mosquitto, the real agent in simulate mode, the CLI on its socket.

Peer: Mosquitto (Debian package ``mosquitto``), started by the test with the protocol's ACL.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetlink_edge import cli
from fleetlink_edge.config import EdgeSettings, UplinkSettings, load_settings
from fleetlink_edge.driver_socket import request
from fleetlink_edge.mqtt import MqttClient
from fleetlink_edge.simulate import SimOptions, simulate
from fleetlink_protocols.codec import decode_batch
from fleetlink_protocols.messages import AckStatus, Command, CommandAck, decode_ack, encode_command
from fleetlink_protocols.records import Event
from fleetlink_protocols.topics import Topics, mosquitto_acl_entries
from tests.edge.test_jobs import shipment_args
from tests.peers.mosquitto import Mosquitto

pytestmark = pytest.mark.mosquitto

DEVICE = "veh-jobs-01"
TOPICS = Topics("fleet", DEVICE)
USERS = {DEVICE: "dev-secret", "backend": "backend-secret"}
WAIT_S = 30.0


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    with Mosquitto(USERS, mosquitto_acl_entries("fleet").splitlines()) as b:
        yield b


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="fl-e2e-"))  # sun_path holds 107 bytes at most
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


class Dispatch:
    """The cloud's side: a persistent session that sends commands and collects acks and events."""

    def __init__(self, port: int) -> None:
        settings = UplinkSettings(
            host="127.0.0.1", port=port, username="backend", password=USERS["backend"]
        )
        self.client = MqttClient(settings, "backend-jobs-test")
        self.acks: list[CommandAck] = []
        self.events: list[Event] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Dispatch:
        await self.client.connect()
        await self.client.subscribe(TOPICS.ack, qos=1)
        await self.client.subscribe(TOPICS.events, qos=1)
        self._task = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.disconnect()

    async def _collect(self) -> None:
        async for msg in self.client.messages():
            if msg.topic == TOPICS.ack:
                self.acks.append(decode_ack(msg.payload))
            else:
                entries = decode_batch(msg.payload).batch.entries
                self.events += [e.record for e in entries if isinstance(e.record, Event)]

    def answers(self) -> list[Event]:
        return [e for e in self.events if e.kind == "job.answer"]

    async def command(self, name: str, args: dict[str, Any]) -> CommandAck:
        """Send a command and wait for its final ack."""
        command_id = uuid.uuid4().hex
        await self.client.publish(TOPICS.cmd, encode_command(Command(command_id, name, args)))

        def final() -> CommandAck | None:
            return next(
                (a for a in self.acks if a.command_id == command_id and a.status != 1), None
            )

        await until(lambda: final() is not None)
        ack = final()
        assert ack is not None
        return ack


async def until(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.05)


def agent_settings(tmp_path: Path, port: int, socket: Path) -> EdgeSettings:
    path = tmp_path / "agent.toml"
    path.write_text(
        f"""
[device]
id = "{DEVICE}"
[outbox]
path = "{tmp_path / "outbox.sqlite3"}"
[uplink]
host = "127.0.0.1"
port = {port}
username = "{DEVICE}"
password = "{USERS[DEVICE]}"
backoff_initial_s = 0.2
backoff_max_s = 1.0
[jobs]
socket = "{socket}"
"""
    )
    return load_settings(path)


@contextlib.asynccontextmanager
async def vehicle(settings: EdgeSettings) -> AsyncIterator[list[Any]]:
    """The simulated vehicle, running until the block ends; yields its agent (once built)."""
    stop = asyncio.Event()
    agents: list[Any] = []
    run: Coroutine[Any, Any, None] = simulate(
        settings, SimOptions(quiet=True), io.StringIO(), stop, on_agent=agents.append
    )
    task = asyncio.create_task(run)
    try:
        yield agents
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)


def connected(agents: list[Any]) -> bool:
    return bool(agents) and agents[0].counters().get("uplink.connects", 0) > 0


async def test_an_answer_made_offline_reaches_dispatch_after_a_restart_of_both(
    tmp_path: Path, broker: Mosquitto, socket_dir: Path
) -> None:
    sock = socket_dir / "driver.sock"
    settings = agent_settings(tmp_path, broker.port, sock)
    async with Dispatch(broker.port) as cloud:
        async with vehicle(settings) as agents:
            await until(lambda: connected(agents))
            offer = shipment_args("J-77", version=4, respond_by=int(time.time()) + 600)
            ack = await cloud.command("offer_job", offer)
            assert (ack.status, ack.detail) == (AckStatus.DONE, "job J-77 version 4 stored")

            await asyncio.to_thread(broker.stop)  # the link dies
            code = await asyncio.to_thread(
                cli.main, ["jobs", "--socket", os.fspath(sock), "accept", "J-77"]
            )
            assert code == 0
            assert agents[0].counters()["jobs.answers"] == 1
        # The agent stopped with the answer in its outbox; a new one starts, still offline.
        async with vehicle(settings) as agents:
            await until(lambda: bool(agents) and sock.exists())
            shown = await request(sock, {"op": "show", "job_id": "J-77"})
            assert (shown["job"]["state"], shown["job"]["version"]) == ("accepted", 4)
            assert cloud.answers() == []

            await asyncio.to_thread(broker.start)
            await cloud.client.connect()  # the persistent session kept the subscriptions
            await until(lambda: len(cloud.answers()) == 1)
    (answer,) = cloud.answers()
    assert answer.data == {
        "job_id": "J-77",
        "answer": "accept",
        "offer_version": 4,
        "reason": "",
        "late": False,
    }
