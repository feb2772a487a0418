"""``fleetlink-cloud demo``: the cloud on embedded defaults, a simulated fleet streaming to it, and
a dispatch backend giving the fleet work.

Starts ``serve`` with an embedded MQTT broker and a SQLite file in a fresh folder, registers the
simulated vehicles, creates an admin token, then runs ``fleetlink-edge simulate --vehicles N`` in
a child process (real edge agents on simulated GNSS and CAN hardware, with simulated drivers; the
edge distribution is a separate install, so it runs as a program, never imported). Through the
public API (``demo_backend``) it sets the vehicles' dispatch profiles, creates jobs at a steady
rate and prints the dispatch stream: offers, assignments, ETAs, arrivals, reallocations. By
default one vehicle falls silent and another raises a fault, with the reallocation rules tuned
to react within a minute. Ctrl-C stops the jobs, then the fleet (its last records are
delivered), then the service.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

from fleetlink_cloud.app import Running, serve
from fleetlink_cloud.cli_serve import load, run_until_signalled
from fleetlink_cloud.cli_tokens import create_token
from fleetlink_cloud.config import CloudSettings
from fleetlink_cloud.demo_backend import DemoBackend
from fleetlink_cloud.demo_events import DispatchFeed
from fleetlink_cloud.demo_failures import (
    DEFAULT_FAULT,
    DEFAULT_FAULT_CODE,
    DEFAULT_SILENCE,
    Failures,
    choose,
    dispatch_overrides,
)
from fleetlink_cloud.demo_jobs import JobGenerator, fleet_profiles, spacing_s
from fleetlink_cloud.errors import CloudError, ConfigError
from fleetlink_cloud.registry import add_device

log = logging.getLogger(__name__)

FIRST_VEHICLE: Final = "veh-sim-001"
SKILLED_VEHICLE: Final = FIRST_VEHICLE  # the only one with demo_jobs.SKILL
_STOP_FLEET_S: Final = 20.0  # the agents flush their outboxes and say goodbye within this
_STREAM_CONNECT_S: Final = 10.0
_FLEET_READY_S: Final = 60.0  # jobs start once every vehicle has a position, or after this


def register(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo", help="run the cloud, a simulated fleet and dispatch on embedded defaults"
    )
    demo.add_argument("--vehicles", type=int, default=10, help="simulated vehicles (default 10)")
    demo.add_argument("--port", type=int, default=8080, help="API port (0: any free port)")
    demo.add_argument("--host", default="127.0.0.1", help="API address")
    demo.add_argument("--state-dir", type=Path, help="folder for the database and outboxes")
    demo.add_argument("--duration", type=float, help="stop after S seconds (default: Ctrl-C)")
    demo.add_argument("--lat", type=float, default=52.520, help="centre of the fleet's drives")
    demo.add_argument("--lon", type=float, default=13.405, help="centre of the fleet's drives")
    jobs = demo.add_argument_group("dispatch")
    jobs.add_argument(
        "--jobs-per-minute", type=float, default=6.0, help="jobs created a minute (default 6)"
    )
    jobs.add_argument("--no-jobs", dest="jobs", action="store_false", help="create no jobs")
    jobs.add_argument("--seed", type=int, default=1, help="seed of the generated jobs")
    jobs.add_argument(
        "--silence",
        action="append",
        metavar="VEHICLE@SECONDS",
        help=f"VEHICLE's uplink goes dark after SECONDS (default {DEFAULT_SILENCE})",
    )
    jobs.add_argument(
        "--fault",
        action="append",
        metavar="VEHICLE@SECONDS",
        help=f"VEHICLE's ECU stores --fault-code after SECONDS (default {DEFAULT_FAULT})",
    )
    jobs.add_argument("--fault-code", default=DEFAULT_FAULT_CODE, help="DTC of --fault (P0300)")
    jobs.add_argument(
        "--no-failures", dest="failures", action="store_false", help="inject no failures"
    )
    demo.set_defaults(func=_cmd_demo, config=None, database=None)


def fleet_ids(n: int) -> list[str]:
    return [f"veh-sim-{i:03d}" for i in range(1, n + 1)]


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.vehicles < 1:
        print("fleetlink-cloud: --vehicles must be at least 1", file=sys.stderr)
        return 2
    if args.jobs and not args.jobs_per_minute > 0:
        print("fleetlink-cloud: --jobs-per-minute must be positive", file=sys.stderr)
        return 2
    if importlib.util.find_spec("fleetlink_edge") is None:
        print(
            "fleetlink-cloud: the demo runs simulated vehicles with fleetlink-edge, which is not "
            "installed here; from the source tree run `uv sync` (the workspace installs both)",
            file=sys.stderr,
        )
        return 2
    try:
        ids = fleet_ids(args.vehicles)
        failures = choose(args.silence, args.fault, args.fault_code, ids, enabled=args.failures)
    except CloudError as exc:
        print(f"fleetlink-cloud: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request drowns the rest
    state_dir: Path = args.state_dir or Path(tempfile.mkdtemp(prefix="fleetlink-demo-"))
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        settings = load(
            args,
            database={"url": f"sqlite:///{state_dir / 'fleetlink.sqlite3'}"},
            broker={"embedded": True, "port": 0},
            # Short timeouts so that a vehicle that stops shows as offline while you watch.
            ingest={"heartbeat_timeout_s": 30.0},
            dispatch=dispatch_overrides(failures),
        )
    except CloudError as exc:
        print(f"fleetlink-cloud: {exc}", file=sys.stderr)
        return 2
    return run_until_signalled(
        lambda stop: demo(settings, args, failures, state_dir, stop, sys.stdout)
    )


async def demo(
    settings: CloudSettings,
    args: argparse.Namespace,
    failures: Failures,
    state_dir: Path,
    stop: asyncio.Event,
    out: TextIO,
) -> None:
    """Serve, register the fleet, start it and the jobs, print where to look and what dispatch
    does; stop the jobs, the fleet, then serve."""
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
        feed = DispatchFeed(watched_dtcs=settings.dispatch.rules.fault.dtcs)
        async with DemoBackend(running.api_url, token, feed, out) as backend:
            run = _Run(settings, args, failures, state_dir, out, running)
            await run.until(stop, backend, token)
    finally:
        service_stop.set()
        await service


@dataclass(frozen=True, slots=True)
class _Run:
    """One demo run once the service is up."""

    settings: CloudSettings
    args: argparse.Namespace
    failures: Failures
    state_dir: Path
    out: TextIO
    running: Running

    async def until(self, stop: asyncio.Event, backend: DemoBackend, token: str) -> None:
        """Stream, profiles, fleet, banner, status and jobs until ``stop``; then the summary."""
        args, out = self.args, self.out
        ids = fleet_ids(args.vehicles)
        connected = asyncio.Event()
        tasks = [asyncio.create_task(backend.follow(connected), name="dispatch-stream")]
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(connected.wait(), _STREAM_CONNECT_S)
            if not connected.is_set():
                log.warning("the dispatch stream is not connected yet; it keeps trying")
            skilled = SKILLED_VEHICLE if args.vehicles > 1 else None
            profiles = fleet_profiles(ids, int(time.time()), args.duration, skilled=skilled)
            await backend.put_profiles(profiles)
            fleet = await _start_fleet(args, self.failures, self.running, self.state_dir)
            _banner(out, self.running, token, args, self.failures, self.state_dir)
            tasks.append(asyncio.create_task(_relay(fleet.stdout, out), name="fleet-output"))
            report = _report(out, self.running, len(ids), backend.feed)
            tasks.append(asyncio.create_task(report, name="cloud-status"))
            producer = None
            if args.jobs:
                work = _jobs(self.settings, args, backend, skilled is not None)
                producer = asyncio.create_task(work, name="jobs")
            if args.duration is not None:
                asyncio.get_running_loop().call_later(args.duration, stop.set)
            await _until_stopped(fleet, stop, out, producer)
            await asyncio.sleep(0.5)  # the stream's last events of the fleet's goodbye
        finally:
            await _cancel(tasks)
        await _summary(out, self.running, backend.feed)


async def _jobs(
    settings: CloudSettings, args: argparse.Namespace, backend: DemoBackend, skills: bool
) -> None:
    """Once the fleet is on the map: a job per vehicle, then ``--jobs-per-minute``."""
    ready = await backend.wait_for_fleet(
        args.vehicles, settings.dispatch.rules_interval_s, _FLEET_READY_S
    )
    backend.say(
        f"dispatch {ready}/{args.vehicles} vehicles on the map: {args.vehicles} jobs now, then "
        f"{args.jobs_per_minute:g} a minute"
    )
    prefix = f"j{secrets.token_hex(2)}-"  # runs sharing a --state-dir keep their jobs apart
    jobs = JobGenerator(args.lat, args.lon, seed=args.seed, prefix=prefix, skills=skills)
    await backend.produce(jobs, args.vehicles, spacing_s(args.jobs_per_minute))


async def _until_stopped(
    fleet: asyncio.subprocess.Process,
    stop: asyncio.Event,
    out: TextIO,
    producer: asyncio.Task[None] | None,
) -> None:
    """Until ``stop`` or the fleet ends; then no more jobs, and the fleet stops."""
    ended = asyncio.create_task(fleet.wait())
    stopped = asyncio.create_task(stop.wait())
    either: list[asyncio.Future[Any]] = [ended, stopped]
    if producer is not None:
        either.append(producer)  # it only ends by failing: raised below
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if producer is not None:
        if producer.done():
            producer.result()
        await _cancel([producer])
    if fleet.returncode is None:
        out.write("stopping the fleet (the agents deliver what they hold)...\n")
        fleet.terminate()
        await asyncio.wait([ended], timeout=_STOP_FLEET_S)
        if fleet.returncode is None:
            fleet.kill()
    elif not stop.is_set():
        log.error("the simulated fleet exited with status %s", fleet.returncode)
    await fleet.wait()


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _start_fleet(
    args: argparse.Namespace, failures: Failures, running: Running, state_dir: Path
) -> asyncio.subprocess.Process:
    cmd = [
        sys.executable, "-m", "fleetlink_edge.cli", "simulate",
        "--vehicles", str(args.vehicles), "--device", FIRST_VEHICLE,
        "--broker", f"{running.broker_host}:{running.broker_port}",
        "--state-dir", str(state_dir / "edge"),
        "--lat", str(args.lat), "--lon", str(args.lon),
        "--report-every", "10",
    ]  # fmt: skip
    cmd += failures.simulate_args()
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


def _banner(
    out: TextIO,
    running: Running,
    token: str,
    args: argparse.Namespace,
    failures: Failures,
    state_dir: Path,
) -> None:
    url = running.api_url
    auth = f"-H 'Authorization: Bearer {token}'"
    where = {"lat_deg": args.lat, "lon_deg": args.lon}
    sample = json.dumps({"stop": {"location": where, "service_s": 180}})
    if args.jobs:
        work = f"{args.jobs_per_minute:g} jobs a minute around {args.lat:.3f},{args.lon:.3f}"
    else:
        work = "no jobs (--no-jobs): create them yourself"
    out.write(
        f"""
fleetlink demo: {args.vehicles} simulated vehicles streaming to the cloud service
  API        {url}/v1
  API docs   {url}/docs
  jobs       {url}/v1/jobs  (GET a job for its explanation, /v1/jobs/ID/events for its log)
  routes     {url}/v1/vehicles/{{id}}/route  (stops with ETAs)
  plans      {url}/v1/plans  (POST: plan every open job at once)
  MQTT       {running.broker_host}:{running.broker_port} (embedded broker)
  database   {running.database_url}
  fleet log  {state_dir / "fleet.log"}
  admin token (demo only): {token}
  dispatch   {work}; failures: {failures.describe()}

try:
  curl -s {auth} {url}/v1/vehicles
  curl -s {auth} \\
       '{url}/v1/vehicles/{FIRST_VEHICLE}/positions?format=geojson&limit=5'
  curl -s {auth} -H 'Idempotency-Key: my-first-job' -H 'Content-Type: application/json' \\
       -d '{sample}' \\
       {url}/v1/jobs
Ctrl-C stops the jobs, the fleet and the service.

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


async def _report(
    out: TextIO, running: Running, registered: int, feed: DispatchFeed, every_s: float = 10.0
) -> None:
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
            f"cloud  {feed.summary()}\n"
        )
        out.flush()


async def _summary(out: TextIO, running: Running, feed: DispatchFeed) -> None:
    vehicles = await running.store.vehicles()
    stats = await running.store.stats()
    positioned = sum(1 for v in vehicles if v.position is not None)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(stats.counts.items()) if v)
    out.write(f"stored: {counts}; {positioned}/{len(vehicles)} vehicles with a position\n")
    out.write(f"{feed.summary()}\n")
