"""Credential rotation end to end, with records streaming throughout: cloud -> real Mosquitto ->
a real agent -> acks -> the broker's password file -> the agent on its new password.

Peers: Mosquitto (Debian ``mosquitto``, started here with the registry's ACL, a password file
and a pid file) and a SQLite store. The cloud runs in-process: one ingest worker, command
delivery, the store -> bus tail and ``CredentialRotation``. The vehicle is a real edge agent on
simulated hardware (``fleetlink-edge simulate``, its own process), streaming all along.

1. A rotation whose broker reload does nothing (the operator's reload is broken): the agent
   keeps the new password, the reconnect finds the broker without it, the agent falls back to
   the password it has, and the old password still works. A reload by hand then switches it.
2. A rotation with the real reload: the broker takes the new password, the agent switches,
   the old passwords are refused.
3. The agent restarts with only the first password in its settings: it connects with the kept
   one. At the end the commands table holds no password and no record is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetlink_cloud.api.tailer import StreamTailer
from fleetlink_cloud.bus import EventBus
from fleetlink_cloud.commands import CommandService
from fleetlink_cloud.config import BrokerSettings, IngestSettings
from fleetlink_cloud.credentials import (
    BrokerPasswords,
    CredentialRotation,
    Rotation,
    latest_rotation,
    start_rotation,
)
from fleetlink_cloud.ingest.consumer import MqttConsumer
from fleetlink_cloud.ingest.pipeline import Pipeline
from fleetlink_cloud.ingest.worker import IngestWorker
from fleetlink_cloud.registry import add_device, verify_mosquitto_hash
from fleetlink_cloud.store import Store, open_store
from fleetlink_protocols.topics import mosquitto_acl_entries
from tests.peers.mosquitto import Mosquitto

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]

DEVICE = "veh-rotate-e2e"
BACKEND_PASSWORD = "backend-rotate-secret"
INGEST = IngestSettings(group_max_messages=50, retry_initial_s=0.05, retry_max_s=0.5)
WAIT_S = 60.0


@dataclass
class World:
    store: Store
    db_path: Path
    broker: Mosquitto
    pid_file: Path
    commands: CommandService
    bus: EventBus
    state: Path  # the agent's state folder (outbox, kept credentials)

    @property
    def kept_file(self) -> Path:
        return self.state / "outbox.credentials.json"


@pytest.fixture
def pid_dir() -> Iterator[Path]:
    # Writable by the user the broker drops to (pytest's tmp_path is not).
    d = Path(tempfile.mkdtemp(prefix="fleetlink-pid-"))
    d.chmod(0o777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.asynccontextmanager
async def cloud(tmp_path: Path, pid_dir: Path) -> AsyncIterator[tuple[World, str]]:
    """Broker, store and the cloud's loops (rotation not included); the first password."""
    db_path = tmp_path / "cloud.sqlite3"
    async with open_store(f"sqlite:///{db_path}") as store:
        first = (await add_device(store, DEVICE)).password
        pid_file = pid_dir / "mosquitto.pid"
        users = {DEVICE: first, "backend": BACKEND_PASSWORD}
        acl = mosquitto_acl_entries("fleet").splitlines()
        with Mosquitto(users, acl, extra_config=[f"pid_file {pid_file}"]) as broker:
            settings = BrokerSettings(embedded=False, host="127.0.0.1", port=broker.port,
                                      username="backend", password=BACKEND_PASSWORD,
                                      protocol="5", keepalive_s=5)  # fmt: skip
            consumer = MqttConsumer(settings, client_id="cloud-rotate-e2e", backoff_s=(0.05, 0.5))
            pipeline = Pipeline(store, INGEST, topic_prefix="fleet")
            commands = CommandService(store, consumer, prefix="fleet", sweep_interval_s=0.2)
            bus = EventBus()
            tasks = [
                asyncio.create_task(IngestWorker(consumer, pipeline, store, INGEST).run()),
                asyncio.create_task(commands.run(bus)),
                asyncio.create_task(StreamTailer(store, bus, poll_interval_s=0.05).run()),
            ]
            world = World(store, db_path, broker, pid_file, commands, bus, tmp_path / "vehicle")
            try:
                await until(consumer.connected.is_set)
                yield world, first
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                bus.close()


@contextlib.asynccontextmanager
async def rotation_service(world: World, reload: list[str] | None) -> AsyncIterator[None]:
    """CredentialRotation on the broker's password file; ``reload`` None: SIGHUP the pid."""
    broker = BrokerPasswords(
        world.broker.dir / "passwd",
        reload_command=reload,
        reload_pid_file=None if reload is not None else world.pid_file,
    )
    service = CredentialRotation(world.store, world.commands, broker, settle_s=0.5,
                                 sweep_interval_s=0.5)  # fmt: skip
    task = asyncio.create_task(service.run(world.bus), name="rotation")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def start_vehicle(world: World, password: str, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "fleetlink_edge.cli", "simulate", "--device", DEVICE,
           "--broker", f"127.0.0.1:{world.broker.port}", "--state-dir", str(world.state),
           "--gnss-hz", "2", "--report-every", "60"]  # fmt: skip
    env = {
        **os.environ,
        "FLEETLINK_EDGE_UPLINK__USERNAME": DEVICE,
        "FLEETLINK_EDGE_UPLINK__PASSWORD": password,
        "FLEETLINK_EDGE_UPLINK__BACKOFF_INITIAL_S": "0.2",
        "FLEETLINK_EDGE_UPLINK__BACKOFF_MAX_S": "1.0",
    }
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def stop(vehicle: subprocess.Popen[bytes], log: Path) -> None:
    vehicle.send_signal(signal.SIGTERM)
    assert vehicle.wait(30) == 0, log.read_text()[-3000:]


async def until(predicate: Callable[[], object], timeout_s: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.05)


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if await check():
                return
            await asyncio.sleep(0.1)


def broker_takes(port: int, password: str) -> bool:
    """Whether a raw paho client logging in as the device gets a successful CONNACK."""
    got: list[bool] = []
    answered = threading.Event()

    def on_connect(_c: object, _u: object, _f: object, rc: paho.ReasonCode, _p: object) -> None:
        got.append(not rc.is_failure)
        answered.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="rotation-probe",
                         protocol=paho.MQTTv5, reconnect_on_failure=False)  # fmt: skip
    client.username_pw_set(DEVICE, password)
    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert answered.wait(10), "no CONNACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0]


async def received(store: Store) -> int:
    ledger = await store.ledger(DEVICE, now_wall_ns=time.time_ns())
    return sum(b.received for b in ledger.boots)


async def rotate(world: World) -> tuple[str, Rotation]:
    """Start a rotation and wait until it is finished and its reconnect answered; returns the
    new password (read from the store while it still holds it) and the rotation."""
    row = await start_rotation(world.commands, DEVICE, actor="e2e")
    queued = await world.store.get_command(row.command_id)
    assert queued is not None
    password = str(queued.args["password"])
    done: list[Rotation] = []

    async def finished() -> bool:
        latest = await latest_rotation(world.store, DEVICE)
        if latest is None or latest.command.command_id != row.command_id:
            return False
        reconnect = latest.reconnect
        if reconnect is None or reconnect.status not in ("done", "failed", "rejected"):
            return False
        done.append(latest)
        return True

    await eventually(finished)
    return password, done[-1]


def outbox_state(path: Path) -> tuple[dict[int, int], dict[int, set[int]]]:
    """A stopped agent's outbox: each boot's next seq, and the seqs still waiting."""
    db = sqlite3.connect(path)
    try:
        next_seq = dict(db.execute("SELECT boot_id, next_seq FROM boots").fetchall())
        waiting: dict[int, set[int]] = defaultdict(set)
        for boot, seq in db.execute("SELECT boot_id, seq FROM records"):
            waiting[boot].add(seq)
    finally:
        db.close()
    return next_seq, waiting


async def test_rotation_switches_the_agent_and_revokes_the_old_password_losing_nothing(
    tmp_path: Path, pid_dir: Path
) -> None:
    logs = [tmp_path / "vehicle-1.log", tmp_path / "vehicle-2.log"]
    async with cloud(tmp_path, pid_dir) as (world, first):
        vehicle = start_vehicle(world, first, logs[0])
        try:
            await eventually(lambda: _more_than(world.store, 5))

            # 1. The broker is not reloaded: the agent falls back, the old password holds.
            async with rotation_service(world, reload=["true"]):
                second, r1 = await rotate(world)
            assert r1.state == "applied"
            assert r1.reconnect is not None
            assert (r1.reconnect.status, r1.reconnect.detail) == (
                "done",
                "connected with the configured credential; the broker refused 1 newer rotated "
                "credential(s), kept for the next connection",
            )
            assert await asyncio.to_thread(broker_takes, world.broker.port, first)
            n = await received(world.store)
            await eventually(lambda: _more_than(world.store, n + 5))  # streaming on
            # The operator reloads by hand: Mosquitto drops the agent, which comes back on
            # the new password without being told.
            os.kill(int(world.pid_file.read_text()), signal.SIGHUP)
            await until(lambda: _kept(world) == (second, []))
            assert not await asyncio.to_thread(broker_takes, world.broker.port, first)

            # 2. The real reload: switched at once, every older password refused.
            async with rotation_service(world, reload=None):
                third, r2 = await rotate(world)
            assert r2.state == "applied"
            assert r2.reconnect is not None
            assert r2.reconnect.status == "done"
            assert "refused" not in r2.reconnect.detail, r2.reconnect.detail
            assert _kept(world) == (third, [])
            for old in (first, second):
                assert not await asyncio.to_thread(broker_takes, world.broker.port, old)
            n = await received(world.store)
            await eventually(lambda: _more_than(world.store, n + 5))
        finally:
            stop(vehicle, logs[0])
        assert "(the rotated credential); offering an older one" in logs[0].read_text()

        # 3. A restart with only the first password configured: the kept one is used.
        vehicle = start_vehicle(world, first, logs[1])
        try:
            n = await received(world.store)
            await eventually(lambda: _more_than(world.store, n + 5))
            assert _kept(world) == (third, [])
        finally:
            stop(vehicle, logs[1])
        assert "broker refused" not in logs[1].read_text()  # not even the configured one tried

        device = await world.store.get_device(DEVICE)
        assert device is not None
        assert verify_mosquitto_hash(third, device.password_hash)
        line = next(ln for ln in (world.broker.dir / "passwd").read_text().splitlines()
                    if ln.startswith(f"{DEVICE}:"))  # fmt: skip
        assert verify_mosquitto_hash(third, line.split(":", 1)[1])
        await check_no_password_stored(world, (first, second, third))
        audit = [a for a in await world.store.list_audit() if a.actor == "rotation"]
        assert [(a.method, a.status) for a in audit] == [("ROTATE", 200), ("ROTATE", 200)]
        await check_nothing_lost(world)
        assert await world.store.list_dead_letters(limit=10) == []


async def _more_than(store: Store, n: int) -> bool:
    return await received(store) > n


def _kept(world: World) -> tuple[str | None, list[str]] | None:
    try:
        doc = json.loads(world.kept_file.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return doc["current"], doc["pending"]


async def check_no_password_stored(world: World, passwords: tuple[str, ...]) -> None:
    """No command holds a password: not through the store, not in the table's raw text."""
    rows = await world.store.list_commands(DEVICE, limit=1000)
    assert {r.name for r in rows} >= {"rotate_credentials", "reconnect"}
    db = sqlite3.connect(world.db_path)
    try:
        raw = [str(args) for (args,) in db.execute("SELECT args FROM commands")]
    finally:
        db.close()
    for password in passwords[1:]:  # the first was never in a command
        assert not any(password in args for args in raw)
        assert not any(password in str(r.args) for r in rows)


async def check_nothing_lost(world: World) -> None:
    """Every record the agent committed is stored exactly once, or still waits in its outbox;
    the ledger's gaps are only records that wait."""
    next_seq, waiting = outbox_state(world.state / "outbox.sqlite3")
    sent = {b: set(range(n)) - waiting.get(b, set()) for b, n in next_seq.items()}
    assert len(sent) == 2  # two runs of the agent
    assert all(sent.values())

    async def all_stored() -> bool:  # ingest may still be committing the last messages
        ledger = await world.store.ledger(DEVICE, now_wall_ns=time.time_ns())
        return {b.boot_id: b.received for b in ledger.boots} == {b: len(s) for b, s in sent.items()}

    await eventually(all_stored, timeout_s=30)
    ledger = await world.store.ledger(DEVICE, now_wall_ns=time.time_ns())
    for b in ledger.boots:
        gaps = {s for g in b.gaps for s in range(g.first, g.last + 1)}
        assert gaps <= waiting.get(b.boot_id, set()), f"boot {b.boot_id}: lost {sorted(gaps)}"
        tail = set(range(b.last_seq + 1, next_seq[b.boot_id]))
        assert tail <= waiting.get(b.boot_id, set()), f"boot {b.boot_id}: lost its tail"
    assert ledger.evicted == 0
