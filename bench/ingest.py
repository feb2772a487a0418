"""Ingest throughput: records committed per second per worker (SQLite, PostgreSQL; 1 and 2 workers).

A real Mosquitto on a free port holds a backlog for the workers' shared subscription: the
workers (``fleetlink-cloud ingest`` processes) connect once so their persistent sessions exist,
stop, the backlog is published (births, then batches of 50 records from many devices), and the
workers start again. The figure is records over the time from the first committed row to the
last, so process start-up is not counted; the wall time including start-up is reported too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from fleetlink_cloud.registry import add_device
from fleetlink_cloud.store import open_store
from fleetlink_protocols.codec import Batch, encode_batch
from fleetlink_protocols.messages import Birth, encode_birth
from fleetlink_protocols.records import Entry, FixMode, Position, Record, SignalValue
from fleetlink_protocols.topics import Topics

S = 1_000_000_000
T0 = 1_764_072_000 * S
PG_ADMIN = os.environ.get(
    "FLEETLINK_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def mosquitto(workdir: Path) -> Iterator[int]:
    """An anonymous broker on loopback that queues generously for offline sessions."""
    binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if binary is None:
        raise RuntimeError("mosquitto not installed")
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
        "max_queued_bytes 0\nmax_inflight_messages 0\n"
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait()


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    import psycopg

    name = f"fleetlink_bench_{os.getpid()}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def device_records(i: int, n: int) -> list[Record]:
    """``n`` records of device ``i``: a fix and two signal values per second, by turns."""
    out: list[Record] = []
    t = 0
    while len(out) < n:
        ts = T0 + t * S
        out.append(
            Position(ts, 52.5 + i * 1e-3 + t * 1e-5, 13.4 + t * 1e-5, mode=FixMode.FIX_3D,
                     alt_msl_m=35.0, speed_mps=12.5, heading_deg=90.0, hdop=0.9, sats_used=9)
        )  # fmt: skip
        out.append(SignalValue(ts, "Vehicle.Speed", 45.0 + (t % 7)))
        out.append(SignalValue(ts, "Vehicle.OBD.EngineSpeed", 1800.0 + (t % 50)))
        t += 1
    return out[:n]


def backlog(devices: int, batches: int, size: int) -> list[tuple[str, bytes]]:
    """(topic, payload): a birth per device, then its batches, devices interleaved."""
    messages = []
    per_device = []
    for i in range(devices):
        device_id = f"bench-{i:04d}"
        topics = Topics("fleet", device_id)
        messages.append((topics.status, encode_birth(Birth(device_id, 1, "bench", T0))))
        records = device_records(i, batches * size)
        payloads = [
            encode_batch(
                Batch(device_id, 1, tuple(Entry(s, records[s]) for s in range(b, b + size)))
            )
            for b in range(0, len(records), size)
        ]
        per_device.append([(topics.history, p) for p in payloads])
    for round_ in zip(*per_device, strict=True):
        messages.extend(round_)
    return messages


def publish_all(port: int, messages: list[tuple[str, bytes]]) -> float:
    """Publish at QoS 1 and wait for every PUBACK; returns seconds."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-publisher", protocol=paho.MQTTv5
    )
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    start = time.perf_counter()
    infos = [client.publish(t, p, qos=1) for t, p in messages]
    for info in infos:
        info.wait_for_publish(timeout=120)
    elapsed = time.perf_counter() - start
    client.loop_stop()
    client.disconnect()
    return elapsed


def worker_config(workdir: Path, port: int, database: str) -> Path:
    path = workdir / "cloud.toml"
    path.write_text(
        f'[broker]\nembedded = false\nhost = "127.0.0.1"\nport = {port}\nprotocol = "5"\n'
        f'shared_group = "ingest"\n[database]\nurl = "{database}"\n'
        "[ingest]\nqueue_size = 2000\ngroup_max_messages = 500\n"
    )
    return path


def start_workers(config: Path, n: int, log: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    with log.open("ab") as out:
        for w in range(n):
            cmd = [sys.executable, "-m", "fleetlink_cloud.cli", "ingest", "-c", str(config),
                   "--worker-id", f"bench{w}"]  # fmt: skip
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT))
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class SeenCounter:
    """Counts committed records (the dedupe table) over one open connection, cheaply."""

    def __init__(self, database: str) -> None:
        if database.startswith("sqlite:///"):
            import sqlite3

            self._conn: Any = sqlite3.connect(database.removeprefix("sqlite:///"))
        else:
            import psycopg

            self._conn = psycopg.connect(database, autocommit=True)

    def __call__(self) -> int:
        row = self._conn.execute("SELECT count(*) FROM seen").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self._conn.close()


async def _register(database: str, devices: int) -> None:
    async with open_store(database) as store:
        for i in range(devices):
            await add_device(store, f"bench-{i:04d}")


def run_once(database: str, workers: int, devices: int, batches: int, size: int) -> dict[str, Any]:
    total = devices * batches * size
    with tempfile.TemporaryDirectory() as tmp, mosquitto(Path(tmp)) as port:
        asyncio.run(_register(database, devices))
        config = worker_config(Path(tmp), port, database)
        log = Path(tmp) / "workers.log"
        stop_workers(_wait_subscribed(start_workers(config, workers, log), log, workers))
        publish_s = publish_all(port, backlog(devices, batches, size))
        count = SeenCounter(database)
        started = time.perf_counter()
        procs = start_workers(config, workers, log)
        first: float | None = None
        try:
            while True:
                n = count()
                now = time.perf_counter()
                if n and first is None:
                    first = now
                if n >= total or now - started > 300:
                    break
                time.sleep(0.05)
        finally:
            stop_workers(procs)
            count.close()
    busy = now - (first or started)
    return {
        "records": total,
        "stored": n,
        "messages": devices * batches,
        "publish_s": round(publish_s, 2),
        "wall_s_with_startup": round(now - started, 2),
        "records_per_s": round(n / busy) if busy > 0 else None,
        "records_per_s_per_worker": round(n / busy / workers) if busy > 0 else None,
    }


def _wait_subscribed(
    procs: list[subprocess.Popen[bytes]], log: Path, n: int
) -> list[subprocess.Popen[bytes]]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if log.read_text(errors="replace").count("ingest connected") >= n:
            time.sleep(0.5)  # the SUBSCRIBE follows the CONNACK
            return procs
        time.sleep(0.1)
    raise RuntimeError(f"ingest workers did not connect:\n{log.read_text()[-2000:]}")


def ingest(devices: int = 500, batches: int = 20, size: int = 50) -> dict[str, Any]:
    out: dict[str, Any] = {"devices": devices, "records_per_batch": size}
    for kind in ("sqlite", "postgresql"):
        for workers in (1, 2):
            if kind == "sqlite":
                tmp = tempfile.mkdtemp(prefix="fleetlink-bench-")
                try:
                    result = run_once(
                        f"sqlite:///{tmp}/db.sqlite3", workers, devices, batches, size
                    )
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
            else:
                try:
                    with postgres_database() as url:
                        result = run_once(url, workers, devices, batches, size)
                except Exception as exc:  # no server: report, do not fail the other figures
                    result = {"skipped": f"PostgreSQL unavailable: {exc}"}
            out[f"{kind}_{workers}_worker"] = result
    for kind in ("sqlite", "postgresql"):
        one = out[f"{kind}_1_worker"].get("records_per_s")
        two = out[f"{kind}_2_worker"].get("records_per_s")
        if one and two:
            out[f"{kind}_speedup_1_to_2_workers"] = round(two / one, 2)
    out["goal_records_per_s_per_worker"] = 20_000
    return out
