"""Nothing lost end to end: simulated vehicles -> real Mosquitto -> ingest workers -> PostgreSQL.

Peers: Mosquitto (Debian ``mosquitto``, started here on a free port with the registry's password
file and ACL) and PostgreSQL (a fresh database of this run). Five vehicles run as real edge agents
on simulated hardware (``fleetlink-edge simulate``, one process each, each with its own MQTT
credentials); ingest runs as ``fleetlink-cloud ingest`` processes on one MQTT 5 shared
subscription. During the drive the broker is stopped and restarted, an ingest worker is killed
with SIGKILL and restarted, a second worker joins, and a device publishes garbage on its own
topic. At the end every record each vehicle committed is stored exactly once or still waiting in
its outbox, nothing else is missing, and the garbage is a dead letter.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetlink_cloud.registry import add_device
from fleetlink_cloud.store import Store, open_store
from fleetlink_protocols.topics import mosquitto_acl_entries
from tests.peers.mosquitto import Mosquitto
from tests.peers.postgres import TestDatabase

pytestmark = [pytest.mark.mosquitto, pytest.mark.postgres, pytest.mark.slow]

VEHICLES = [f"veh-e2e-{i}" for i in range(1, 6)]
BACKEND_PASSWORD = "backend-e2e-secret"
RECORD_TABLES = ("positions", "signals", "dtcs", "events", "health")


@pytest.fixture
def database() -> Iterator[str]:
    db = TestDatabase.create()
    try:
        yield db.url_for_schema()
    finally:
        db.drop()


@pytest.fixture
async def registered(database: str) -> AsyncIterator[tuple[Store, dict[str, str]]]:
    """The store with the five vehicles registered; their MQTT passwords."""
    async with open_store(database) as store:
        passwords = {}
        for device_id in VEHICLES:
            creds = await add_device(store, device_id)
            passwords[device_id] = creds.password
        yield store, passwords


def cloud_config(tmp_path: Path, port: int, database: str) -> Path:
    path = tmp_path / "cloud.toml"
    path.write_text(
        f"""
[broker]
embedded = false
host = "127.0.0.1"
port = {port}
username = "backend"
password = "{BACKEND_PASSWORD}"
protocol = "5"
shared_group = "ingest"
[database]
url = "{database}"
[ingest]
retry_initial_s = 0.2
retry_max_s = 1.0
"""
    )
    return path


def start_worker(config: Path, worker_id: str, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "fleetlink_cloud.cli", "ingest", "-c", str(config),
           "--worker-id", worker_id]  # fmt: skip
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


def start_vehicle(
    device_id: str, password: str, port: int, state: Path, log: Path
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "fleetlink_edge.cli", "simulate", "--device", device_id,
           "--broker", f"127.0.0.1:{port}", "--state-dir", str(state), "--gnss-hz", "2",
           "--report-every", "60", "--seed", str(VEHICLES.index(device_id))]  # fmt: skip
    env = {
        **os.environ,
        "FLEETLINK_EDGE_UPLINK__USERNAME": device_id,
        "FLEETLINK_EDGE_UPLINK__PASSWORD": password,
        "FLEETLINK_EDGE_UPLINK__BACKOFF_INITIAL_S": "0.2",
        "FLEETLINK_EDGE_UPLINK__BACKOFF_MAX_S": "1.0",
    }
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=timeout_s)


def publish_garbage(port: int, device_id: str, password: str) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{device_id}-garbage",
                         protocol=paho.MQTTv5)  # fmt: skip
    client.username_pw_set(device_id, password)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        info = client.publish(f"fleet/{device_id}/live", b"\xc1 not msgpack \xff", qos=1)
        info.wait_for_publish(timeout=10)
    finally:
        client.loop_stop()
        client.disconnect()


def outbox_state(path: Path) -> tuple[dict[int, int], dict[int, set[int]]]:
    """A stopped agent's outbox: each boot's next seq, and the seqs still waiting."""
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        next_seq = dict(db.execute("SELECT boot_id, next_seq FROM boots").fetchall())
        waiting: dict[int, set[int]] = defaultdict(set)
        for boot, seq in db.execute("SELECT boot_id, seq FROM records"):
            waiting[boot].add(seq)
    finally:
        db.close()
    return next_seq, waiting


async def stored(database: str) -> dict[str, dict[int, list[int]]]:
    """device -> boot -> seqs in the dedupe table, and a check that no typed row is doubled."""
    import psycopg

    out: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    async with await psycopg.AsyncConnection.connect(database) as conn:
        rows = await (await conn.execute("SELECT device_id, boot_id, seq FROM seen")).fetchall()
        for device_id, boot, seq in rows:
            out[device_id][boot].append(seq)
        for device_id in VEHICLES:
            typed = 0
            for table in RECORD_TABLES:
                cur = await conn.execute(
                    f"SELECT count(*) FROM {table} WHERE device_id = %s", (device_id,)
                )
                row = await cur.fetchone()
                typed += row[0] if row else 0
            seen = sum(len(s) for s in out[device_id].values())
            assert typed == seen, f"{device_id}: {typed} typed rows for {seen} records"
    return out


async def until_stored(
    database: str, want: dict[str, dict[int, set[int]]], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        have = await stored(database)
        if all(want[d][b] <= set(have[d].get(b, ())) for d in want for b in want[d]):
            return
        await asyncio.sleep(0.5)


async def test_faults_lose_nothing_and_store_everything_once(
    tmp_path: Path, database: str, registered: tuple[Store, dict[str, str]]
) -> None:
    store, passwords = registered
    users = {**passwords, "backend": BACKEND_PASSWORD}
    with Mosquitto(users, mosquitto_acl_entries("fleet").splitlines()) as broker:
        config = cloud_config(tmp_path, broker.port, database)
        logs = tmp_path / "logs"
        logs.mkdir()
        worker_a = start_worker(config, "a", logs / "worker-a.log")
        workers = [worker_a]
        vehicles = {
            d: start_vehicle(d, passwords[d], broker.port, tmp_path / d, logs / f"{d}.log")
            for d in VEHICLES
        }
        try:
            await asyncio.sleep(6)
            broker.stop()  # SIGTERM: the broker saves its sessions and queues
            await asyncio.sleep(4)
            broker.start()
            await asyncio.sleep(5)
            worker_a.send_signal(signal.SIGKILL)  # mid-stream, acks outstanding
            worker_a.wait()
            await asyncio.sleep(3)
            workers = [start_worker(config, "a", logs / "worker-a.log")]
            await asyncio.sleep(3)
            workers.append(start_worker(config, "b", logs / "worker-b.log"))
            await asyncio.to_thread(
                publish_garbage, broker.port, VEHICLES[0], passwords[VEHICLES[0]]
            )
            await asyncio.sleep(8)
            codes = {d: stop(p) for d, p in vehicles.items()}
            assert codes == dict.fromkeys(VEHICLES, 0), codes

            committed: dict[str, dict[int, set[int]]] = {}
            delivered: dict[str, dict[int, set[int]]] = {}
            for d in VEHICLES:
                next_seq, waiting = outbox_state(tmp_path / d / "outbox.sqlite3")
                committed[d] = {b: set(range(n)) for b, n in next_seq.items() if n}
                delivered[d] = {b: committed[d][b] - waiting.get(b, set()) for b in committed[d]}
            await until_stored(database, delivered, timeout_s=30)
        finally:
            for p in [*vehicles.values(), *workers]:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        for w in workers:
            assert w.returncode in (0, -signal.SIGKILL), (logs / "worker-a.log").read_text()[-3000:]

    have = await stored(database)
    dead = await store.list_dead_letters(limit=100)
    reasons = sorted({x.reason[:100] for x in dead})
    for d in VEHICLES:
        assert committed[d], f"{d} committed nothing"
        _, waiting = outbox_state(tmp_path / d / "outbox.sqlite3")
        for boot, seqs in committed[d].items():
            got = set(have[d].get(boot, []))
            assert len(got) == len(have[d].get(boot, [])), f"{d} boot {boot}: stored twice"
            missing = sorted(delivered[d][boot] - got)
            assert not missing, (
                f"{d} boot {boot}: acked by the broker, not stored: {missing[:10]}; "
                f"dead letters: {reasons}"
            )
            # Neither stored nor waiting in the outbox would be lost: nothing may be.
            lost = sorted(seqs - got - waiting.get(boot, set()))
            assert not lost, f"{d} boot {boot}: lost {lost[:10]}"
        ledger = await store.ledger(d, now_wall_ns=time.time_ns())
        for b in ledger.boots:
            gap_seqs = {s for g in b.gaps for s in range(g.first, g.last + 1)}
            assert gap_seqs <= waiting.get(b.boot_id, set()), f"{d}: ledger gaps {b.gaps}"
        assert ledger.evicted == 0
        page = await store.positions(d, limit=100_000)
        by_boot: dict[int, list[int]] = defaultdict(list)
        for row in page.items:
            by_boot[row.boot_id].append(row.seq)
        for boot, order in by_boot.items():
            assert order == sorted(order), f"{d} boot {boot}: positions out of device order"
    assert [x.device_id for x in dead] == [VEHICLES[0]], dead
