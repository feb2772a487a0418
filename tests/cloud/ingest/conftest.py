"""Fixtures of the ingest tests: a real Mosquitto per test, a SQLite database, producers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetlink_cloud.store import open_store
from fleetlink_edge.config import OutboxSettings, UplinkSettings
from fleetlink_edge.outbox import Outbox
from fleetlink_edge.uplink import Uplink
from fleetlink_protocols.messages import Birth
from fleetlink_protocols.records import Record
from fleetlink_protocols.topics import mosquitto_acl_entries
from tests.cloud.ingest.fleet import BOOT, PREFIX, T0, USERS, topic
from tests.peers.mosquitto import Mosquitto

WAIT_S = 60.0


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    with Mosquitto(USERS, mosquitto_acl_entries(PREFIX).splitlines()) as b:
        yield b


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    """A migrated SQLite database with the test devices registered."""
    path = tmp_path / "cloud.sqlite3"
    async with open_store(f"sqlite:///{path}") as store:
        for device in USERS:
            if device != "backend":
                await store.add_device(device, name=device, password_hash="", created_wall_ns=T0)
    return path


async def until(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.02)


def publish(port: int, device: str, payloads: Sequence[bytes], kind: str = "live") -> list[int]:
    """Publish at QoS 1 as the device, each PUBACKed (blocking: call it in a thread); returns
    the PUBACK reason codes (0 success, 0x10 "no matching subscribers")."""
    reasons: dict[int, int] = {}
    client = paho.Client(CallbackAPIVersion.VERSION2, f"{device}-pub", protocol=paho.MQTTv5)
    client.on_publish = lambda _c, _u, mid, rc, _p: reasons.__setitem__(mid, rc.value)
    client.username_pw_set(device, USERS[device])
    client.connect("127.0.0.1", port, 30)
    client.loop_start()
    try:
        mids = []
        for data in payloads:
            info = client.publish(topic(kind, device), data, qos=1)
            info.wait_for_publish(10)
            assert info.is_published()
            mids.append(info.mid)
    finally:
        client.disconnect()
        client.loop_stop()
    return [reasons[mid] for mid in mids]


@dataclass
class Vehicle:
    """A real edge agent's outbox and uplink streaming to the broker."""

    device: str
    outbox: Outbox
    uplink: Uplink
    task: asyncio.Task[None] | None = None

    async def append(self, records: Sequence[Record]) -> None:
        await self.outbox.append(records)

    @property
    def produced(self) -> int:
        return self.outbox.next_seq

    async def drained(self) -> bool:
        return await self.outbox.pending_count() == 0 and self.outbox.counters["in_flight"] == 0


def uplink_settings(port: int, device: str) -> UplinkSettings:
    return UplinkSettings(
        host="127.0.0.1",
        port=port,
        username=device,
        password=USERS[device],
        keepalive_s=5,
        connect_timeout_s=5.0,
        batch_max_records=40,
        batch_max_delay_s=0.05,
        backoff_initial_s=0.1,
        backoff_max_s=0.5,
        poll_interval_s=0.02,
    )


@contextlib.asynccontextmanager
async def vehicles(
    port: int, tmp_path: Path, devices: Sequence[str], boot: int = BOOT
) -> AsyncIterator[list[Vehicle]]:
    """Running uplinks of ``devices``; stopped (death published) on exit."""
    async with contextlib.AsyncExitStack() as stack:
        fleet = []
        for device in devices:
            settings = OutboxSettings(path=tmp_path / f"outbox-{device}.sqlite3")
            outbox = await stack.enter_async_context(Outbox(settings, boot_id=boot))
            birth = Birth(device, boot, "0.1.0", T0)
            uplink = Uplink(uplink_settings(port, device), device, outbox, birth)
            fleet.append(Vehicle(device, outbox, uplink))
        for v in fleet:
            v.task = asyncio.create_task(v.uplink.run(), name=f"uplink-{v.device}")
        try:
            yield fleet
        finally:
            for v in fleet:
                assert v.task is not None
                v.task.cancel()
            await asyncio.gather(*(v.task for v in fleet if v.task), return_exceptions=True)
