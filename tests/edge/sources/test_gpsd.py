"""GpsdSource: against a real gpsd fed by gpsfake (restart included), and an in-process fake."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from fleetlink_edge.config import GpsdSettings
from fleetlink_edge.decode.gpsd_json import WATCH_COMMAND
from fleetlink_edge.decode.nmea import NmeaDecoder
from fleetlink_edge.sources.gpsd import GpsdSource
from fleetlink_protocols.records import Position
from tests.peers import free_port
from tests.peers.gpsd import Gpsfake

TPV = (
    b'{"class":"TPV","device":"/dev/pts/1","mode":3,"time":"2034-08-16T03:07:%02d.000Z",'
    b'"lat":-37.784788333,"lon":175.314896667,"altMSL":59.900,"track":181.3900,"speed":0.355}\n'
)


def our_positions(log: Path) -> dict[int, Position]:
    """Our NMEA decoder's dated positions for a log, by time."""
    decoder = NmeaDecoder()
    fixes = decoder.feed(log.read_bytes()) + decoder.flush()
    return {p.ts_wall_ns: p for f in fixes if (p := f.to_position()) is not None}


async def until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def consuming(source: GpsdSource) -> AsyncIterator[list[Position]]:
    """Run ``source.positions()`` in a task; yield the list it appends to; cancel at the end."""
    received: list[Position] = []
    positions = source.positions()

    async def consume() -> None:
        async for position in positions:
            received.append(position)

    task = asyncio.create_task(consume())
    try:
        yield received
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await positions.aclose()


@pytest.mark.gpsd
async def test_positions_from_gpsd_survive_a_gpsd_restart(
    shared_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first_log = shared_data / "gpsd" / "bu353s4.log"
    second_log = shared_data / "gpsd" / "mt3339.log"
    first, second = our_positions(first_log), our_positions(second_log)
    port = free_port()
    source = GpsdSource(GpsdSettings(port=port, reconnect_delay_s=0.05, connect_timeout_s=2.0))
    caplog.set_level(logging.INFO, logger="fleetlink_edge.sources.gpsd")
    async with consuming(source) as received:
        gpsfake = Gpsfake(first_log, port, cycle_s=0.05)
        try:
            await asyncio.to_thread(gpsfake.start)
            await until(lambda: sum(p.ts_wall_ns in first for p in received) >= 5)
        finally:
            await asyncio.to_thread(gpsfake.close)  # gpsd goes away under the client
        gpsfake = Gpsfake(second_log, port, cycle_s=0.05)  # another gpsd, same port
        try:
            await asyncio.to_thread(gpsfake.start)
            await until(lambda: sum(p.ts_wall_ns in second for p in received) >= 5)
        finally:
            await asyncio.to_thread(gpsfake.close)

    # gpsd 3.22's fixes are ours: same times (rollover included), same places.
    origin = [1 if p.ts_wall_ns in first else 2 if p.ts_wall_ns in second else 0 for p in received]
    assert 0 not in origin
    assert origin == sorted(origin)  # everything from the first gpsd, then from the second
    for i, p in enumerate(received):
        mine = (first if p.ts_wall_ns in first else second)[p.ts_wall_ns]
        assert p.lat_deg == pytest.approx(mine.lat_deg, abs=1e-7)
        assert p.lon_deg == pytest.approx(mine.lon_deg, abs=1e-7)
        if i > 0 and origin[i - 1] == origin[i]:  # gpsd may join mid-cycle: 2D for one fix
            assert p.mode == mine.mode
    assert source.counters["reconnects"] >= 1
    assert source.counters["connects"] >= 2
    assert source.counters["fixes"] == len(received)
    assert source.counters["rejected_malformed"] == 0
    assert "closed the connection" in caplog.text or "lost" in caplog.text


async def test_fake_gpsd_watch_then_reconnect_after_the_server_drops_us() -> None:
    """A 20-line stand-in for gpsd: checks the WATCH request and the reconnect loop."""
    watches: list[bytes] = []
    connection = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connection
        connection += 1
        watches.append(await reader.readline())
        writer.write(b'{"class":"VERSION","release":"fake"}\n')
        for second in range(3):
            writer.write(TPV % (connection * 10 + second))
        writer.write(b"garbage\n")
        await writer.drain()
        writer.close()  # gpsd went away

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    source = GpsdSource(GpsdSettings(port=port, reconnect_delay_s=0.01))
    async with server, consuming(source) as received:
        await until(lambda: len(received) >= 6, timeout_s=10)
    assert watches[:2] == [WATCH_COMMAND, WATCH_COMMAND]
    assert [p.ts_wall_ns // 10**9 % 60 for p in received[:6]] == [10, 11, 12, 20, 21, 22]
    assert source.counters["reconnects"] >= 1
    assert source.counters["rejected_malformed"] >= 2
    assert source.counters["ignored"] >= 2  # the VERSION lines


async def test_unreachable_gpsd_is_retried_until_cancelled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = GpsdSource(GpsdSettings(port=free_port(), reconnect_delay_s=0.01))
    async with consuming(source):
        await until(lambda: source.counters["connect_errors"] >= 3, timeout_s=10)
    assert "unreachable" in caplog.text
