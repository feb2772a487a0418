"""Positions from a gpsd daemon: an asyncio client of its JSON socket protocol.

Not gpsd-py3: it blocks in ``connect()``, has no timeouts, and polls with ``?POLL;`` so it sees
whichever TPV is current (intermediate or final). Here one ``?WATCH`` subscribes to every report,
the sans-I/O ``GpsdJsonDecoder`` turns them into Positions, and a lost or refused connection is
retried every ``reconnect_delay_s`` until the caller cancels.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from fleetlink_edge.config import GpsdSettings
from fleetlink_edge.decode.gpsd_json import WATCH_COMMAND, GpsdJsonDecoder, new_counters
from fleetlink_edge.errors import SourceError
from fleetlink_protocols.records import Position

log = logging.getLogger(__name__)

_READ_SIZE = 65536


class GpsdSource:
    """``async for position in GpsdSource(settings).positions()``; ``counters`` for health.

    Counters: the decoder's (lines, tpv, sky, fixes, rejections...) plus ``connects``,
    ``connect_errors`` and ``reconnects`` (connections that ended and were tried again).
    """

    def __init__(self, settings: GpsdSettings) -> None:
        self._settings = settings
        self.counters = new_counters() | {"connects": 0, "connect_errors": 0, "reconnects": 0}
        self._decoder = GpsdJsonDecoder(counters=self.counters)

    @property
    def address(self) -> str:
        return f"{self._settings.host}:{self._settings.port}"

    async def positions(self) -> AsyncIterator[Position]:
        """Yield Positions until cancelled; every failure is logged and retried."""
        delay_s = self._settings.reconnect_delay_s
        while True:
            try:
                reader, writer = await self._connect()
            except SourceError as exc:
                self.counters["connect_errors"] += 1
                log.warning("%s; retrying in %.1f s", exc, delay_s)
                await asyncio.sleep(delay_s)
                continue
            try:
                writer.write(WATCH_COMMAND)
                await writer.drain()
                while True:
                    data = await reader.read(_READ_SIZE)
                    if not data:
                        raise SourceError(f"gpsd {self.address} closed the connection")
                    for position in self._decoder.feed(data):
                        yield position
            except (SourceError, OSError) as exc:
                log.warning("gpsd %s lost: %s; reconnecting in %.1f s", self.address, exc, delay_s)
            finally:
                writer.close()
                self._decoder.reset()
            self.counters["reconnects"] += 1
            await asyncio.sleep(delay_s)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        s = self._settings
        try:
            async with asyncio.timeout(s.connect_timeout_s):
                reader, writer = await asyncio.open_connection(s.host, s.port, limit=_READ_SIZE)
        except TimeoutError as exc:
            raise SourceError(f"gpsd {self.address}: no answer in {s.connect_timeout_s} s") from exc
        except OSError as exc:
            raise SourceError(f"gpsd {self.address} unreachable: {exc}") from exc
        self.counters["connects"] += 1
        log.info("connected to gpsd %s", self.address)
        return reader, writer
