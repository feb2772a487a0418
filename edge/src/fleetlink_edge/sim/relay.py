"""A TCP relay between a simulated vehicle's agent and its broker that can go dark.

``go_dark()`` plays a vehicle driving out of coverage: from then on no byte passes either way and
nobody is told. The connections stay open, so the agent learns of it only from its own MQTT
keepalive, and the broker only from its keepalive timeout (1.5 x the agent's ``keepalive_s``,
MQTT 3.1.1 section 3.1.2.10), when it publishes the agent's will. A dark relay still takes new
connections and swallows them, as a dead radio link would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024


class LinkRelay:
    """Listens on ``127.0.0.1:port`` (a free port) while entered and forwards to the broker."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._host = upstream_host
        self._upstream_port = upstream_port
        self.port = 0
        self.dark = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> LinkRelay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def go_dark(self) -> None:
        """Pass nothing from now on, without closing anything."""
        self.dark = True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        writers = [writer]
        self._writers.add(writer)
        try:
            if self.dark:
                await self._pipe(reader, None)
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self._host, self._upstream_port
                )
            except OSError as exc:  # the broker is down: the agent sees its connection end
                log.debug("relay cannot reach %s:%d: %s", self._host, self._upstream_port, exc)
                return
            writers.append(up_writer)
            self._writers.add(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for w in writers:
                w.close()
                self._writers.discard(w)
            self._tasks.discard(task)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter | None) -> None:
        """Copy ``src`` to ``dst`` until ``src`` ends, then end ``dst`` too; while dark, read and
        drop, and let an end on one side go unnoticed on the other."""
        with contextlib.suppress(ConnectionError, OSError):
            while data := await src.read(_CHUNK):
                if self.dark or dst is None:
                    continue
                dst.write(data)
                await dst.drain()
        if dst is not None and not self.dark:
            dst.close()
