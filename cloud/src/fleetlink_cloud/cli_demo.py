"""``fleetlink-cloud demo``: the cloud on embedded defaults and a simulated fleet streaming to it.

Starts ``serve`` with an embedded MQTT broker and a SQLite file in a fresh folder, registers the
simulated vehicles, creates an admin token, then runs ``fleetlink-edge simulate --vehicles N`` in
a child process (real edge agents on simulated GNSS and CAN hardware; the edge distribution is a
separate install, so it runs as a program, never imported). Ctrl-C stops the fleet first, so its
last records are delivered, then the service.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from fleetlink_cloud.app import Running, serve
from fleetlink_cloud.cli_serve import load, run_until_signalled
from fleetlink_cloud.cli_tokens import create_token
from fleetlink_cloud.config import CloudSettings
from fleetlink_cloud.errors import CloudError, ConfigError
from fleetlink_cloud.registry import add_device

log = logging.getLogger(__name__)

FIRST_VEHICLE = "veh-sim-001"
_STOP_FLEET_S = 20.0  # the agents flush their outboxes and say goodbye within this


def register(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo", help="run the cloud and a simulated fleet on embedded defaults"
    )
    demo.add_argument("--vehicles", type=int, default=10, help="simulated vehicles (default 10)")
    demo.add_argument("--port", type=int, default=8080, help="API port (0: any free port)")
    demo.add_argument("--host", default="127.0.0.1", help="API address")
    demo.add_argument("--state-dir", type=Path, help="folder for the database and outboxes")
    demo.add_argument("--duration", type=float, help="stop after S seconds (default: Ctrl-C)")
    demo.add_argument("--lat", type=float, default=52.520, help="centre of the fleet's drives")
    demo.add_argument("--lon", type=float, default=13.405, help="centre of the fleet's drives")
    demo.set_defaults(func=_cmd_demo, config=None, database=None)


def fleet_ids(n: int) -> list[str]:
    return [f"veh-sim-{i:03d}" for i in range(1, n + 1)]


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.vehicles < 1:
        print("fleetlink-cloud: --vehicles must be at least 1", file=sys.stderr)
        return 2
    if importlib.util.find_spec("fleetlink_edge") is None:
        print(
            "fleetlink-cloud: the demo runs simulated vehicles with fleetlink-edge, which is not "
            "installed here; from the source tree run `uv sync` (the workspace installs both)",
            file=sys.stderr,
        )
        return 2
    state_dir: Path = args.state_dir or Path(tempfile.mkdtemp(prefix="fleetlink-demo-"))
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        settings = load(
            args,
            database={"url": f"sqlite:///{state_dir / 'fleetlink.sqlite3'}"},
            broker={"embedded": True, "port": 0},
            # Short timeouts so that a vehicle that stops shows as offline while you watch.
            ingest={"heartbeat_timeout_s": 30.0},
        )
    except CloudError as exc:
        print(f"fleetlink-cloud: {exc}", file=sys.stderr)
        return 2
    return run_until_signalled(lambda stop: demo(settings, args, state_dir, stop, sys.stdout))


async def demo(
    settings: CloudSettings,
    args: argparse.Namespace,
    state_dir: Path,
    stop: asyncio.Event,
    out: TextIO,
) -> None:
    """Serve, register the fleet, start it, print where to look; stop the fleet, then serve."""
    ready: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
    service_stop = asyncio.Event()
    service = asyncio.create_task(
        serve(settings, service_stop, on_ready=ready.set_result), name="serve"
    )
    first: list[asyncio.Future[Any]] = [service, ready]
    await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        await service  # it failed before it was up: raise its error
        raise ConfigError("the service stopped before it was ready")
    running = ready.result()
    try:
        ids = fleet_ids(args.vehicles)
        for device_id in ids:
            if await running.store.get_device(device_id) is None:
                await add_device(running.store, device_id, prefix=settings.broker.topic_prefix)
        token = await create_token(running.store, "demo", "admin", time.time_ns())
        fleet = await _start_fleet(args, running, state_dir)
        _banner(out, running, token, len(ids), state_dir)
        relay = asyncio.create_task(_relay(fleet.stdout, out), name="fleet-output")
        report = asyncio.create_task(_report(out, running, len(ids)), name="cloud-status")
        if args.duration is not None:
            asyncio.get_running_loop().call_later(args.duration, stop.set)
        ended = asyncio.create_task(fleet.wait())
        stopped = asyncio.create_task(stop.wait())
        either: list[asyncio.Future[Any]] = [ended, stopped]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if fleet.returncode is None:
            out.write("stopping the fleet (the agents deliver what they hold)...\n")
            fleet.terminate()
            await asyncio.wait([ended], timeout=_STOP_FLEET_S)
            if fleet.returncode is None:
                fleet.kill()
        elif not stop.is_set():
            log.error("the simulated fleet exited with status %s", fleet.returncode)
        await fleet.wait()
        for task in (relay, report):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await _summary(out, running)
    finally:
        service_stop.set()
        await service


async def _start_fleet(
    args: argparse.Namespace, running: Running, state_dir: Path
) -> asyncio.subprocess.Process:
    cmd = [
        sys.executable, "-m", "fleetlink_edge.cli", "simulate",
        "--vehicles", str(args.vehicles), "--device", FIRST_VEHICLE,
        "--broker", f"{running.broker_host}:{running.broker_port}",
        "--state-dir", str(state_dir / "edge"),
        "--lat", str(args.lat), "--lon", str(args.lon),
        "--report-every", "10",
    ]  # fmt: skip
    (state_dir / "edge").mkdir(exist_ok=True)
    log.info("starting the simulated fleet: %s", " ".join(cmd))
    env = dict(os.environ)
    if running.broker_embedded:
        # amqtt speaks 3.1.1 only and answers an MQTT 5 CONNECT with a will by hanging up
        # instead of refusing the protocol version, so the agents' fallback cannot tell.
        env["FLEETLINK_EDGE_UPLINK__PROTOCOL"] = "3.1.1"
    return await asyncio.create_subprocess_exec(
        *cmd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=(state_dir / "fleet.log").open("ab"),
        stdin=asyncio.subprocess.DEVNULL,
    )


def _banner(out: TextIO, running: Running, token: str, vehicles: int, state_dir: Path) -> None:
    url = running.api_url
    out.write(
        f"""
fleetlink demo: {vehicles} simulated vehicles streaming to the cloud service
  API        {url}/v1
  API docs   {url}/docs
  MQTT       {running.broker_host}:{running.broker_port} (embedded broker)
  database   {running.database_url}
  fleet log  {state_dir / "fleet.log"}
  admin token (demo only): {token}

try:
  curl -s -H 'Authorization: Bearer {token}' {url}/v1/vehicles
  curl -s -H 'Authorization: Bearer {token}' \\
       '{url}/v1/vehicles/{FIRST_VEHICLE}/positions?format=geojson&limit=5'
Ctrl-C stops the fleet and the service.

"""
    )
    out.flush()


async def _relay(stream: asyncio.StreamReader | None, out: TextIO) -> None:
    """The fleet's status lines, marked as the fleet's."""
    if stream is None:
        return
    while line := await stream.readline():
        out.write(f"fleet {line.decode(errors='replace')}")
        out.flush()


async def _report(out: TextIO, running: Running, registered: int, every_s: float = 10.0) -> None:
    """What the cloud sees, beside the fleet's own status lines."""
    while True:
        await asyncio.sleep(every_s)
        try:
            vehicles = await running.store.vehicles()
            counts = (await running.store.stats()).counts
        except CloudError as exc:
            out.write(f"cloud  status unavailable: {exc}\n")
            continue
        online = sum(1 for v in vehicles if v.presence.online)
        out.write(
            f"cloud  {online}/{registered} vehicles online | stored "
            f"{counts.get('positions', 0)} positions, {counts.get('signals', 0)} signal values, "
            f"{counts.get('stream_events', 0)} stream events\n"
        )
        out.flush()


async def _summary(out: TextIO, running: Running) -> None:
    vehicles = await running.store.vehicles()
    stats = await running.store.stats()
    positioned = sum(1 for v in vehicles if v.position is not None)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(stats.counts.items()) if v)
    out.write(f"stored: {counts}; {positioned}/{len(vehicles)} vehicles with a position\n")
