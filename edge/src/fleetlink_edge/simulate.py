"""``fleetlink-edge simulate``: the real agent on simulated hardware, in one process.

A drive around a point feeds a GNSS receiver writing NMEA to a pty (which the agent opens as its
serial port) and an ECU on python-can's virtual bus answering OBD-II with the same speed. The
virtual bus lives inside one process, so the ECU runs beside the agent. Optionally a recorded CAN
log is replayed onto the bus at a chosen frame rate (load tests, J1939), a simulated driver
answers job offers and steers the drive to the jobs (``sim.driver``), and faults are injected
for dispatch to react to: a vehicle whose uplink goes dark (``sim.relay``), or whose ECU stores a
DTC and lights its MIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import can

from fleetlink_edge.app import Agent
from fleetlink_edge.config import EdgeSettings
from fleetlink_edge.driver_socket import socket_path
from fleetlink_edge.frames import CanFrame
from fleetlink_edge.sim import faults
from fleetlink_edge.sim.driver import DriverOptions, SimulatedDriver, SocketDesk
from fleetlink_edge.sim.ecu import EcuState, SimulatedEcu
from fleetlink_edge.sim.faults import Failures
from fleetlink_edge.sim.gnss import PtyGnss
from fleetlink_edge.sim.route import Drive
from fleetlink_edge.sources.replay import read_log

log = logging.getLogger(__name__)

_FLEET_SPREAD_DEG = 0.02  # fleet drives start around the centre, about 2 km apart


@dataclass(frozen=True)
class SimOptions:
    duration_s: float | None = None
    gnss_hz: float = 1.0
    lat: float = 52.520
    lon: float = 13.405
    seed: int = 0
    can_replay: Path | None = None
    can_fps: float = 0.0
    report_every_s: float = 5.0
    quiet: bool = False  # no per-vehicle status lines (a fleet reports as one)
    drivers: DriverOptions | None = None  # None: nobody answers job offers
    failures: Failures = field(default_factory=Failures)


def simulated_settings(base: EdgeSettings, pty_path: str, channel: str) -> EdgeSettings:
    """The agent's settings with GNSS on the pty and CAN on the virtual bus."""
    gnss = base.gnss.model_copy(
        update={
            "source": "serial",
            "serial": base.gnss.serial.model_copy(update={"port": pty_path, "baudrate": 115200}),
        }
    )
    can_settings = base.can.model_copy(
        update={
            "enabled": True,
            "interface": "virtual",
            "channel": channel,
            "obd": base.can.obd.model_copy(update={"enabled": True}),
        }
    )
    return base.model_copy(update={"gnss": gnss, "can": can_settings})


def _frames_forever(path: Path) -> Iterator[CanFrame]:
    """The log's frames round and round, read as a stream: a long capture is not held in memory
    (it would count against the agent in memory benchmarks)."""
    while True:
        empty = True
        for frame in read_log(path):
            empty = False
            yield frame
        if empty:
            return


def _replay_forever(bus: can.BusABC, path: Path, fps: float, stop: threading.Event) -> None:
    """Send a log's frames round and round at ``fps`` (a thread: python-can's send blocks)."""
    period = 1.0 / fps
    next_t = time.monotonic()
    for frame in _frames_forever(path):
        if stop.is_set():
            return
        msg = can.Message(
            arbitration_id=frame.arbitration_id,
            data=frame.data,
            is_extended_id=frame.is_extended,
        )
        with contextlib.suppress(can.CanError):
            bus.send(msg)
        next_t += period
        delay = next_t - time.monotonic()
        if delay > 0.001:
            time.sleep(delay)


async def _drive(drive: Drive, ecu: EcuState, gnss: PtyGnss, hz: float) -> None:
    dt = 1.0 / hz
    while True:
        state = drive.step(dt)
        ecu.follow(state)
        gnss.write_epoch(state)
        await asyncio.sleep(dt)


async def _report(
    agent: Agent,
    drive: Drive,
    drivers: list[SimulatedDriver],
    every_s: float,
    out: TextIO,
    now: Callable[[], float],
) -> None:
    start = now()
    while True:
        await asyncio.sleep(every_s)
        c = agent.counters()
        st = drive.state()
        out.write(
            f"[{now() - start:6.0f}s] at {st.lat_deg:.5f},{st.lon_deg:.5f} "
            f"{st.speed_mps * 3.6:5.1f} km/h | fixes {c.get('gnss.fixes', 0)} "
            f"obd answers {c.get('obd.responses', 0)} | stored {c.get('capture.appended', 0)} "
            f"| sent {c.get('uplink.records_sent', 0)} in {c.get('uplink.batches_sent', 0)} "
            f"batches, connects {c.get('uplink.connects', 0)}{_jobs_text(drivers)}\n"
        )
        out.flush()


def _jobs_text(drivers: list[SimulatedDriver]) -> str:
    """`` | jobs accepted 3 rejected 1 arrived 4 completed 2`` for the drivers' answers."""
    if not drivers:
        return ""
    total = {k: sum(d.counters[k] for d in drivers) for k in ("accept", "reject", "arrived")}
    done = sum(d.counters["completed"] for d in drivers)
    return (
        f" | jobs accepted {total['accept']} rejected {total['reject']} "
        f"arrived {total['arrived']} completed {done}"
    )


def _driver(
    settings: EdgeSettings, drive: Drive, options: DriverOptions, seed: int
) -> SimulatedDriver:
    """The vehicle's simulated driver, on the agent's driver socket like a driver's app."""
    desk = SocketDesk(socket_path(settings))
    return SimulatedDriver(desk, drive, options, seed=seed, name=settings.device.id)


async def simulate(
    base: EdgeSettings,
    options: SimOptions,
    out: TextIO,
    stop: asyncio.Event,
    on_agent: Callable[[Agent], None] | None = None,
    on_driver: Callable[[SimulatedDriver], None] | None = None,
) -> None:
    """Run drive, GNSS, ECU, agent (and driver) until ``stop`` is set or ``duration_s`` has
    passed. Raises ConfigError for a failure it cannot inject (silence over TLS)."""
    gnss = PtyGnss()
    channel = f"fleetlink-sim-{secrets.token_hex(4)}"
    agent_bus = can.Bus(interface="virtual", channel=channel)
    ecu_bus = can.Bus(interface="virtual", channel=channel)
    replay_bus = can.Bus(interface="virtual", channel=channel)
    settings = simulated_settings(base, gnss.path, channel)
    if options.can_replay is not None:
        j1939 = settings.can.j1939.model_copy(update={"enabled": True})
        settings = settings.model_copy(
            update={"can": settings.can.model_copy(update={"j1939": j1939})}
        )
    drive = Drive(options.lat, options.lon, seed=options.seed)
    state = EcuState()
    replay_stop = threading.Event()
    replayer: threading.Thread | None = None
    handles: list[asyncio.TimerHandle] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            settings, relay = await faults.relayed(settings, options.failures, stack)
            await stack.enter_async_context(SimulatedEcu(ecu_bus, state))
            agent = Agent(settings, can_bus=agent_bus)
            out.write(
                f"simulated vehicle {settings.device.id}: GNSS on {gnss.path}, "
                f"CAN on virtual bus {channel}, outbox {settings.outbox.path}, "
                f"broker {base.uplink.host}:{base.uplink.port}\n"
            )
            if options.can_replay is not None and options.can_fps > 0:
                replayer = threading.Thread(
                    target=_replay_forever,
                    args=(replay_bus, options.can_replay, options.can_fps, replay_stop),
                    name="can-replay",
                    daemon=True,
                )
                replayer.start()
            helpers = [
                asyncio.create_task(_drive(drive, state, gnss, options.gnss_hz), name="drive")
            ]
            drivers = []
            if options.drivers is not None:
                driver = _driver(settings, drive, options.drivers, options.seed)
                drivers.append(driver)
                helpers.append(asyncio.create_task(driver.run(), name="driver"))
                if on_driver is not None:
                    on_driver(driver)
            if not options.quiet:
                report = _report(agent, drive, drivers, options.report_every_s, out, time.monotonic)
                helpers.append(asyncio.create_task(report, name="report"))
            if on_agent is not None:
                on_agent(agent)
            handles = faults.schedule(options.failures, settings.device.id, state, relay, out)
            if options.duration_s is not None:
                loop = asyncio.get_running_loop()
                handles.append(loop.call_later(options.duration_s, stop.set))
            try:
                await agent.run(stop)
            finally:
                for task in helpers:
                    task.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
    finally:
        for handle in handles:
            handle.cancel()
        replay_stop.set()
        if replayer is not None:
            replayer.join(timeout=2)
        for bus in (agent_bus, ecu_bus, replay_bus):
            bus.shutdown()
        gnss.close()


def fleet_ids(first: str, n: int) -> list[str]:
    """``n`` device ids counting up from ``first`` (``veh-sim-001`` -> ``veh-sim-002`` ...)."""
    stem = first.rstrip("0123456789")
    digits = first[len(stem) :]
    start, width = (int(digits), len(digits)) if digits else (1, 3)
    if not digits:
        stem += "-"
    return [f"{stem}{start + i:0{width}d}" for i in range(n)]


def fleet_member(base: EdgeSettings, device_id: str, state_dir: Path) -> EdgeSettings:
    """One vehicle of a simulated fleet: its own device id and outbox file."""
    return base.model_copy(
        update={
            "device": base.device.model_copy(update={"id": device_id}),
            "outbox": base.outbox.model_copy(
                update={"path": state_dir / f"{device_id}.outbox.sqlite3"}
            ),
        }
    )


async def simulate_fleet(
    base: EdgeSettings,
    options: SimOptions,
    device_ids: list[str],
    state_dir: Path,
    out: TextIO,
    stop: asyncio.Event,
) -> None:
    """Run one simulated vehicle per id in this process, each a whole agent, with one status
    line for the fleet every ``report_every_s``."""
    agents: list[Agent] = []
    drivers: list[SimulatedDriver] = []
    quiet = SimOptions(**{**options.__dict__, "quiet": True})
    runs = []
    for i, device_id in enumerate(device_ids):
        angle = 2 * math.pi * i / len(device_ids)
        member = SimOptions(
            **{
                **quiet.__dict__,
                "seed": options.seed + i,
                "lat": options.lat + _FLEET_SPREAD_DEG * math.sin(angle) * (i % 3 + 1) / 3,
                "lon": options.lon + _FLEET_SPREAD_DEG * math.cos(angle) * (i % 3 + 1) / 3,
            }
        )
        settings = fleet_member(base, device_id, state_dir)
        runs.append(
            simulate(settings, member, out, stop, on_agent=agents.append, on_driver=drivers.append)
        )
    reporter = asyncio.create_task(
        _report_fleet(agents, drivers, options.report_every_s, out, time.monotonic),
        name="report",
    )
    try:
        results = await asyncio.gather(*runs, return_exceptions=True)
    finally:
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)
    for device_id, result in zip(device_ids, results, strict=True):
        if isinstance(result, BaseException):
            log.error("simulated vehicle %s failed: %s", device_id, result)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise failed[0]


async def _report_fleet(
    agents: list[Agent],
    drivers: list[SimulatedDriver],
    every_s: float,
    out: TextIO,
    now: Callable[[], float],
) -> None:
    start = now()
    while True:
        await asyncio.sleep(every_s)
        counters = [a.counters() for a in agents]

        def total(key: str, counters: list[dict[str, int]] = counters) -> int:
            return sum(c.get(key, 0) for c in counters)

        online = sum(
            1 for c in counters if c.get("uplink.connects", 0) > c.get("uplink.disconnects", 0)
        )
        out.write(
            f"[{now() - start:6.0f}s] {len(agents)} vehicles ({online} connected) | "
            f"fixes {total('gnss.fixes')} obd answers {total('obd.responses')} | "
            f"stored {total('capture.appended')} | sent {total('uplink.records_sent')} "
            f"in {total('uplink.batches_sent')} batches{_jobs_text(drivers)}\n"
        )
        out.flush()
