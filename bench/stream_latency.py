"""Latency from a record's creation on the device to its arrival on a WebSocket client.

``fleetlink-cloud serve`` (API + ingest, SQLite) reads a real Mosquitto; 1,000 vehicles each
publish one live-lane fix a second, stamped with the device clock at creation (this machine's
clock, shared by both ends); a WebSocket client on ``/v1/stream?type=position`` takes
``arrival - ts`` for every event. The publisher speaks for all vehicles over one connection (the
broker and ingest still see 1,000 device topics), so the figure is the cloud's path: broker,
ingest commit, store tail, WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench.ingest import free_port, mosquitto
from fleetlink_cloud.cli_tokens import create_token
from fleetlink_cloud.registry import add_device
from fleetlink_cloud.store import open_store
from fleetlink_protocols.codec import Batch, encode_batch
from fleetlink_protocols.messages import Birth, encode_birth
from fleetlink_protocols.records import Entry, FixMode, Position
from fleetlink_protocols.topics import Topics


async def _prepare(database: str, vehicles: int) -> str:
    async with open_store(database) as store:
        for i in range(vehicles):
            await add_device(store, f"lat-{i:04d}")
        return await create_token(store, "bench", "read", time.time_ns())


def _publish(port: int, vehicles: int, seconds: float, stop: threading.Event) -> int:
    """Each vehicle once a second, spread evenly over the second; returns fixes published."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="lat-fleet", protocol=paho.MQTTv5)
    client.max_inflight_messages_set(2000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    topics = [Topics("fleet", f"lat-{i:04d}") for i in range(vehicles)]
    for t in topics:
        client.publish(t.status, encode_birth(Birth(t.device_id, 1, "bench", time.time_ns())), 1)
    sent, seq = 0, 0
    start = time.perf_counter()
    while not stop.is_set() and time.perf_counter() - start < seconds:
        second = time.perf_counter()
        for i, t in enumerate(topics):
            fix = Position(time.time_ns(), 52.5 + i * 1e-3, 13.4 + seq * 1e-5, mode=FixMode.FIX_3D,
                           speed_mps=10.0, heading_deg=90.0)  # fmt: skip
            client.publish(t.live, encode_batch(Batch(t.device_id, 1, (Entry(seq, fix),))), 1)
            sent += 1
            lag = second + (i + 1) / vehicles - time.perf_counter()
            if lag > 0:
                time.sleep(lag)
        seq += 1
    client.loop_stop()
    client.disconnect()
    return sent


async def _listen(url: str, seconds: float, warmup_s: float) -> list[float]:
    import websockets

    latencies: list[float] = []
    async with websockets.connect(url, max_size=2**20) as ws:
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            try:
                async with asyncio.timeout(1.0):
                    raw = await ws.recv()
            except TimeoutError:
                continue
            now = time.time()
            event = json.loads(raw)
            if event.get("type") == "position" and time.monotonic() - start >= warmup_s:
                latencies.append(now - float(event["ts"]))
    return latencies


def _wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


def stream_latency(
    vehicles: int = 1000, seconds: float = 30.0, warmup_s: float = 5.0
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, mosquitto(Path(tmp)) as port:
        database = f"sqlite:///{tmp}/db.sqlite3"
        token = asyncio.run(_prepare(database, vehicles))
        api_port = free_port()
        config = Path(tmp) / "cloud.toml"
        config.write_text(
            f'[broker]\nembedded = false\nhost = "127.0.0.1"\nport = {port}\nprotocol = "5"\n'
            f'[database]\nurl = "{database}"\n[api]\nport = {api_port}\n'
        )
        with (Path(tmp) / "serve.log").open("ab") as log:
            serve = subprocess.Popen(
                [sys.executable, "-m", "fleetlink_cloud.cli", "serve", "-c", str(config)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        stop = threading.Event()
        try:
            _wait_http(f"http://127.0.0.1:{api_port}/healthz")
            result: dict[str, int] = {}
            pub = threading.Thread(
                target=lambda: result.update(sent=_publish(port, vehicles, seconds + 2, stop))
            )
            pub.start()
            url = f"ws://127.0.0.1:{api_port}/v1/stream?type=position&token={token}"
            latencies = asyncio.run(_listen(url, seconds, warmup_s))
            stop.set()
            pub.join()
        finally:
            stop.set()
            serve.terminate()
            serve.wait(timeout=30)
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 100 else []
    return {
        "vehicles": vehicles,
        "seconds_measured": seconds - warmup_s,
        "fixes_published": result.get("sent", 0),
        "events_received": len(latencies),
        "events_per_s": round(len(latencies) / (seconds - warmup_s)),
        "latency_p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "latency_p99_ms": round(q[98] * 1000, 1) if q else None,
        "latency_max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
        "goal_p99_ms": 250,
    }
