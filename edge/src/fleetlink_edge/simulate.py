"""``fleetlink-edge simulate``: the real agent on simulated hardware, in one process.

A drive around a point feeds a GNSS receiver writing NMEA to a pty (which the agent opens as its
serial port) and an ECU on python-can's virtual bus answering OBD-II with the same speed. The
virtual bus lives inside one process, so the ECU runs beside the agent. Optionally a recorded CAN
log is replayed onto the bus at a chosen frame rate (load tests, J1939).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import can

from fleetlink_edge.app import Agent
from fleetlink_edge.config import EdgeSettings
from fleetlink_edge.sim.ecu import EcuState, SimulatedEcu
from fleetlink_edge.sim.gnss import PtyGnss
from fleetlink_edge.sim.route import Drive
from fleetlink_edge.sources.replay import read_log

log = logging.getLogger(__name__)


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


def _replay_forever(bus: can.BusABC, path: Path, fps: float, stop: threading.Event) -> None:
    """Send a log's frames round and round at ``fps`` (a thread: python-can's send blocks)."""
    frames = list(read_log(path))
    if not frames:
        return
    period = 1.0 / fps
    next_t = time.monotonic()
    for frame in itertools.cycle(frames):
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
    agent: Agent, drive: Drive, every_s: float, out: TextIO, now: Callable[[], float]
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
            f"batches, connects {c.get('uplink.connects', 0)}\n"
        )
        out.flush()


async def simulate(
    base: EdgeSettings, options: SimOptions, out: TextIO, stop: asyncio.Event
) -> None:
    """Run drive, GNSS, ECU and agent until ``stop`` is set or ``duration_s`` has passed."""
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
    try:
        async with SimulatedEcu(ecu_bus, state):
            agent = Agent(settings, can_bus=agent_bus)
            out.write(
                f"simulated vehicle {settings.device.id}: GNSS on {gnss.path}, "
                f"CAN on virtual bus {channel}, outbox {settings.outbox.path}, "
                f"broker {settings.uplink.host}:{settings.uplink.port}\n"
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
                asyncio.create_task(_drive(drive, state, gnss, options.gnss_hz), name="drive"),
                asyncio.create_task(
                    _report(agent, drive, options.report_every_s, out, time.monotonic),
                    name="report",
                ),
            ]
            if options.duration_s is not None:
                loop = asyncio.get_running_loop()
                loop.call_later(options.duration_s, stop.set)
            try:
                await agent.run(stop)
            finally:
                for task in helpers:
                    task.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
    finally:
        replay_stop.set()
        if replayer is not None:
            replayer.join(timeout=2)
        for bus in (agent_bus, ecu_bus, replay_bus):
            bus.shutdown()
        gnss.close()
