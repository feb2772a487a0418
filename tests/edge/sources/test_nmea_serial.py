"""NmeaSerialSource through a real pseudo-terminal: the agent opens the slave path with pyserial
exactly as it opens /dev/ttyACM0, and the test plays the receiver on the master side."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
import tty
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from fleetlink_edge.config import SerialGnssSettings
from fleetlink_edge.decode.nmea import NmeaDecoder
from fleetlink_edge.sources.nmea_serial import NmeaSerialSource
from fleetlink_protocols.records import Position


class Pty:
    """A pty pair standing in for a USB receiver; closing it is unplugging the receiver."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo or line editing before the agent configures the port
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)

    async def play(self, data: bytes, rng: random.Random) -> None:
        """Write ``data`` in random chunk sizes, as a receiver's USB packets arrive."""
        i = 0
        while i < len(data):
            n = rng.randint(1, 64)
            try:
                i += os.write(self.master, data[i : i + n])
            except BlockingIOError:  # the agent is behind: the pty buffer is full
                await asyncio.sleep(0.005)
                continue
            await asyncio.sleep(0)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def receiver_bytes(log: Path) -> bytes:
    """A gpsd test log as its receiver sent it: without the '#' header lines."""
    lines = log.read_bytes().splitlines(keepends=True)
    return b"".join(line for line in lines if not line.startswith(b"#"))


def expected_positions(data: bytes) -> list[Position]:
    """What the decoder makes of the whole stream at once (no flush: a live port never ends)."""
    fixes = NmeaDecoder().feed(data)
    return [p for f in fixes if (p := f.to_position()) is not None]


async def until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def consuming(source: NmeaSerialSource) -> AsyncIterator[list[Position]]:
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


def settings(port: str) -> SerialGnssSettings:
    return SerialGnssSettings(port=port, baudrate=9600, reopen_delay_s=0.05, idle_timeout_s=5.0)


async def test_positions_from_a_pty_in_random_chunks(shared_data: Path) -> None:
    data = b"".join(
        receiver_bytes(shared_data / "gpsd" / name)
        for name in ("ublox-zed-f9p-nmea.log", "triton400.log", "isync.log")
    )
    expected = expected_positions(data)
    pty = Pty()
    source = NmeaSerialSource(settings(pty.path))
    try:
        async with consuming(source) as received:
            await until(lambda: source.counters["opens"] == 1)
            await pty.play(data, random.Random(11))
            await until(lambda: source.counters["bytes"] == len(data))
    finally:
        pty.close()
    assert received == expected
    assert source.counters["bytes"] == len(data)
    assert source.counters["positions"] == len(expected)
    assert source.counters["rejected_truncated"] == 1  # triton400 cuts a GGA; isync is rejoined
    assert source.counters["reconnects"] == 0


async def test_the_receiver_is_unplugged_and_plugged_back(
    shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The configured path is a symlink (as udev makes /dev/gnss0): it vanishes, then returns
    pointing at a new pty; the source logs the failures, keeps retrying, and carries on."""
    caplog.set_level(logging.INFO, logger="fleetlink_edge.sources.nmea_serial")
    before = receiver_bytes(shared_data / "gpsd" / "bu353s4.log")
    after = receiver_bytes(shared_data / "gpsd" / "mt3339.log")
    expected = expected_positions(before) + expected_positions(after)
    link = tmp_path / "gnss0"
    first = Pty()
    link.symlink_to(first.path)
    source = NmeaSerialSource(settings(str(link)))
    rng = random.Random(5)
    async with consuming(source) as received:
        try:
            await until(lambda: source.counters["opens"] == 1)
            await first.play(before, rng)
            await until(lambda: len(received) == len(expected_positions(before)))
        finally:
            link.unlink()  # udev removes the link, the kernel the device
            first.close()
        await until(lambda: source.counters["open_errors"] >= 3)  # retried while it is gone
        second = Pty()
        try:
            link.symlink_to(second.path)
            await until(lambda: source.counters["opens"] == 2)
            await second.play(after, rng)
            await until(lambda: len(received) == len(expected))
        finally:
            second.close()
    assert received == expected
    assert source.counters["reconnects"] >= 1
    assert "read failed" in caplog.text or "hung up" in caplog.text
    assert "cannot be opened" in caplog.text


async def test_a_silent_receiver_is_reopened(caplog: pytest.LogCaptureFixture) -> None:
    pty = Pty()
    source = NmeaSerialSource(
        SerialGnssSettings(port=pty.path, reopen_delay_s=0.01, idle_timeout_s=0.05)
    )
    try:
        async with consuming(source):
            await until(lambda: source.counters["opens"] >= 2)
    finally:
        pty.close()
    assert source.counters["reconnects"] >= 1
    assert "silent for 0.05 s" in caplog.text


async def test_a_missing_device_is_retried_until_cancelled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = NmeaSerialSource(settings(str(tmp_path / "ttyACM9")))
    async with consuming(source):
        await until(lambda: source.counters["open_errors"] >= 2)
    assert source.counters["opens"] == 0
    assert "cannot be opened" in caplog.text
