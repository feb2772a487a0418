"""Positions from a GNSS receiver on a serial port (USB or UART), through pyserial.

The only module that imports pyserial. The port is opened non-blocking in a worker thread and read
with the event loop's reader callback (no thread per read, cancellation is immediate). When the
device goes away (USB unplugged: the read fails, or the node is gone) or falls silent for
``idle_timeout_s``, the failure is logged as a SourceError and the port reopened every
``reopen_delay_s`` until it is back; the decoder's counters keep counting across reopenings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import serial

from fleetlink_edge.config import SerialGnssSettings
from fleetlink_edge.decode.nmea import NmeaDecoder, new_counters
from fleetlink_edge.errors import SourceError
from fleetlink_protocols.records import Position

log = logging.getLogger(__name__)

_READ_SIZE = 4096
_SPURIOUS_WAKEUPS = 1000  # readable without data this often in a row: the device hung up


class NmeaSerialSource:
    """``async for position in NmeaSerialSource(settings).positions()``; ``counters`` for health.

    Counters: the NMEA decoder's (sentences, fixes, rejections by reason...) plus ``opens``,
    ``open_errors``, ``reconnects`` (reopenings after a failure), ``bytes`` and ``positions``.
    """

    def __init__(self, settings: SerialGnssSettings) -> None:
        self._settings = settings
        self.counters = new_counters() | {
            "opens": 0,
            "open_errors": 0,
            "reconnects": 0,
            "bytes": 0,
            "positions": 0,
        }
        self._decoder = NmeaDecoder(
            rollover_reference=settings.rollover_reference, counters=self.counters
        )

    async def positions(self) -> AsyncIterator[Position]:
        """Yield Positions until cancelled; device failures are logged and the port reopened."""
        path, delay_s = self._settings.port, self._settings.reopen_delay_s
        while True:
            try:
                port = await self._open()
            except SourceError as exc:
                self.counters["open_errors"] += 1
                log.warning("%s; retrying in %.1f s", exc, delay_s)
                await asyncio.sleep(delay_s)
                continue
            try:
                while True:
                    data = await self._read(port)
                    self.counters["bytes"] += len(data)
                    for fix in self._decoder.feed(data):
                        if (position := fix.to_position()) is not None:
                            self.counters["positions"] += 1
                            yield position
            except SourceError as exc:
                log.warning("%s; reopening in %.1f s", exc, delay_s)
            finally:
                port.close()
                self._decoder.reset()  # a partial sentence must not join the next device's
            self.counters["reconnects"] += 1
            log.info("GNSS receiver %s closed, will reopen", path)
            await asyncio.sleep(delay_s)

    async def _open(self) -> serial.Serial:
        """Open in a worker thread (a USB device can take a moment); close it if we are gone."""
        opening = asyncio.get_running_loop().run_in_executor(None, self._open_blocking)
        try:
            port = await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_quietly)
            raise
        self.counters["opens"] += 1
        log.info("GNSS receiver %s open at %d baud", self._settings.port, port.baudrate)
        return port

    def _open_blocking(self) -> serial.Serial:
        s = self._settings
        try:
            # timeout=0: reads return what is there; the loop tells us when that is.
            return serial.Serial(s.port, s.baudrate, timeout=0)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise SourceError(f"GNSS receiver {s.port} cannot be opened: {exc}") from exc

    async def _read(self, port: serial.Serial) -> bytes:
        """The bytes available once the port is readable; SourceError when it fails or idles."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.idle_timeout_s
        for _ in range(_SPURIOUS_WAKEUPS):
            await self._readable(port, deadline - loop.time())
            try:
                # Ask the driver what is queued first: a pty can signal readable before its data
                # reaches the reading side, and pyserial's read() takes that for a hang-up.
                waiting = port.in_waiting
                data: bytes = port.read(min(waiting, _READ_SIZE)) if waiting else b""
            except (serial.SerialException, OSError) as exc:  # EIO: the device is gone
                raise SourceError(f"GNSS receiver {port.port} read failed: {exc}") from exc
            if data:
                return data
        raise SourceError(f"GNSS receiver {port.port} hung up")

    async def _readable(self, port: serial.Serial, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()
        fd = port.fileno()
        loop.add_reader(fd, _wake, readable)
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
            # races with the future completing, and then the source never stops.
            async with asyncio.timeout(max(timeout_s, 0.0)):
                await readable
        except TimeoutError as exc:
            raise SourceError(
                f"GNSS receiver {port.port} silent for {self._settings.idle_timeout_s} s"
            ) from exc
        finally:
            loop.remove_reader(fd)


def _wake(readable: asyncio.Future[None]) -> None:
    if not readable.done():
        readable.set_result(None)


def _close_quietly(opening: asyncio.Future[serial.Serial]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        with contextlib.suppress(serial.SerialException, OSError):
            opening.result().close()
