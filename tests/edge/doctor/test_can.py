"""CAN checks on python-can's virtual bus: the simulated ECU, broadcast traffic, silence."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import can
import pytest

from fleetlink_edge.config import CanSettings
from fleetlink_edge.doctor import can as can_check
from fleetlink_edge.doctor.findings import Status
from fleetlink_edge.sim.ecu import EcuState, SimulatedEcu
from tests.edge.doctor.harness import by_check

_channels = itertools.count()


@pytest.fixture
def channel() -> str:
    return f"doctor-can-{next(_channels)}"


def virtual(channel: str, *, obd: bool = True, **kw: Any) -> CanSettings:
    return CanSettings.model_validate(
        {"enabled": True, "interface": "virtual", "channel": channel, "obd": {"enabled": obd}, **kw}
    )


@contextlib.asynccontextmanager
async def ecu(channel: str, **options: Any) -> AsyncIterator[SimulatedEcu]:
    bus = can.Bus(interface="virtual", channel=channel)
    try:
        async with SimulatedEcu(bus, EcuState(), **options) as running:
            yield running
    finally:
        bus.shutdown()


@contextlib.asynccontextmanager
async def broadcasting(channel: str, ids: range) -> AsyncIterator[None]:
    """Another node sending a frame per id every 5 ms, as engine ECUs broadcast."""
    bus = can.Bus(interface="virtual", channel=channel)

    async def send() -> None:
        while True:
            for i in ids:
                bus.send(can.Message(arbitration_id=i, data=b"\x01\x02", is_extended_id=False))
            await asyncio.sleep(0.005)

    task = asyncio.create_task(send())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        bus.shutdown()


async def test_simulated_ecu_answers_pid_00(channel: str) -> None:
    async with ecu(channel) as sim:
        found = by_check(await can_check.check(virtual(channel), 1.0))
    assert sim.counters["responses"] == 1
    assert found["can.interface"].status is Status.SKIP  # virtual: no kernel interface
    obd = found["can.obd"]
    assert obd.status is Status.OK, obd
    assert obd.detail["ecus"]["0x7E8"] == [0x01, 0x04, 0x05, 0x0C, 0x0D, 0x11, 0x1F, 0x20]
    assert obd.detail["latency_s"] < 0.2
    # The simulated ECU only answers; a quiet bus that answers OBD-II is a gateway, not a fault.
    assert found["can.traffic"].status is Status.OK
    assert found["can.traffic"].detail["frames"] == 0
    assert found["can.errors"].status is Status.OK


async def test_unsupported_configured_pids_are_named(channel: str) -> None:
    settings = virtual(channel).model_copy(
        update={"obd": virtual(channel).obd.model_copy(update={"pids": [0x0C, 0x10]})}
    )
    async with ecu(channel):
        obd = by_check(await can_check.check(settings, 1.0))["can.obd"]
    assert obd.status is Status.OK
    assert obd.detail["unsupported_configured"] == [0x10]
    assert "0x10" in obd.summary


async def test_response_pending_is_not_slow(channel: str) -> None:
    # 7F 01 78 at once, the answer 0.4 s later: the poller waits for it (P2*), so all is well.
    async with ecu(channel, pending_delay_s=0.4):
        obd = by_check(await can_check.check(virtual(channel), 1.0))["can.obd"]
    assert obd.status is Status.OK, obd
    assert obd.detail["latency_s"] >= 0.4


@contextlib.asynccontextmanager
async def late_ecu(channel: str, delay_s: float) -> AsyncIterator[None]:
    """An ECU that answers 01 00 only after ``delay_s``, without a 'response pending'."""
    bus = can.Bus(interface="virtual", channel=channel)

    async def serve() -> None:
        while True:
            msg = await asyncio.to_thread(bus.recv, 0.05)
            if msg is not None and msg.arbitration_id == 0x7DF and msg.data[1:3] == b"\x01\x00":
                await asyncio.sleep(delay_s)
                answer = bytes([0x06, 0x41, 0x00, 0x98, 0x3B, 0x80, 0x01, 0xCC])
                bus.send(can.Message(arbitration_id=0x7E8, data=answer, is_extended_id=False))

    task = asyncio.create_task(serve())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        bus.shutdown()


async def test_late_answer_warns_about_the_response_timeout(channel: str) -> None:
    async with late_ecu(channel, 0.4):
        obd = by_check(await can_check.check(virtual(channel), 1.0))["can.obd"]
    assert obd.status is Status.WARN, obd
    assert "response_timeout_s" in (obd.fix or "")
    assert obd.detail["ecus"]["0x7E8"][:3] == [0x01, 0x04, 0x05]


async def test_silent_bus(channel: str) -> None:
    start = time.monotonic()
    found = by_check(await can_check.check(virtual(channel), 0.5))
    assert found["can.traffic"].status is Status.WARN
    assert "ignition" in (found["can.traffic"].fix or "")
    assert found["can.obd"].status is Status.FAIL
    assert "no ECU answered" in found["can.obd"].summary
    assert time.monotonic() - start < 3.0  # a 0.5 s window, then a 0.5 s wait for answers


async def test_broadcast_traffic_is_counted(channel: str) -> None:
    async with broadcasting(channel, range(0x100, 0x105)):
        found = by_check(await can_check.check(virtual(channel, obd=False), 2.0))
    traffic = found["can.traffic"]
    assert traffic.status is Status.OK
    assert traffic.detail["ids"] == 5
    assert traffic.detail["frames"] >= can_check.ENOUGH_FRAMES  # stopped early
    assert traffic.detail["window_s"] < 2.0
    assert found["can.obd"].status is Status.SKIP


async def test_disabled_can_is_skipped() -> None:
    assert [f.status for f in await can_check.check(CanSettings(), 1.0)] == [Status.SKIP]
