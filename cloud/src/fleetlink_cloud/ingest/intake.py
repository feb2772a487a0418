"""The consumer's bounded handoff of received messages from paho's thread to the event loop.

``offer`` runs in paho's network thread and waits for room instead of dropping: while it waits,
paho reads nothing more from the socket, TCP flow control holds the broker back, and no message
is lost. ``next_group`` runs on the event loop and frees the room of what it takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

_SLOT_WAIT_S = 0.2  # how often a waiting paho thread checks that its connection is still wanted


@dataclass(frozen=True, slots=True)
class Received:
    """A message as delivered, with what ``ack`` needs: its packet id and its connection."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    received_wall_ns: int  # cloud clock when paho handed it over
    mid: int
    link: int  # the connection that delivered it; acks on any other one are void


@dataclass(slots=True)
class ConsumerCounters:
    connects: int = 0
    connect_failures: int = 0
    broker_refused: int = 0
    disconnects: int = 0
    protocol_fallbacks: int = 0
    subscribes: int = 0
    received: int = 0
    received_bytes: int = 0
    acked: int = 0
    acks_void: int = 0  # the delivering connection is gone: the broker delivers it again
    backpressure_waits: int = 0  # paho's thread waited for queue room (no message dropped)
    abandoned: int = 0  # waiting when the connection closed: unacked, delivered again
    publishes: int = 0
    pubacks: int = 0
    publish_failures: int = 0


class Intake:
    """At most ``size`` messages between paho's thread and the ingest loop."""

    def __init__(self, size: int, counters: ConsumerCounters) -> None:
        self._slots = threading.Semaphore(size)  # taken in paho's thread, freed on take
        self._queue: asyncio.Queue[Received] = asyncio.Queue()  # bounded by the slots
        self._counters = counters

    def offer(
        self,
        make: Callable[[], Received],
        loop: asyncio.AbstractEventLoop,
        closing: threading.Event,
    ) -> None:
        """In paho's thread: wait for room, then hand ``make()`` to the loop. Gives up (the
        message stays unacked, so the broker delivers it again) once ``closing`` is set."""
        waited = False
        while not self._slots.acquire(timeout=_SLOT_WAIT_S if waited else 0):
            if closing.is_set():
                self._count(loop, "abandoned")
                return
            if not waited:
                waited = True
                self._count(loop, "backpressure_waits")
        try:
            loop.call_soon_threadsafe(self._queue.put_nowait, make())
        except RuntimeError:  # the loop is closed: nobody will take it
            self._slots.release()

    def _count(self, loop: asyncio.AbstractEventLoop, name: str) -> None:
        def count() -> None:
            setattr(self._counters, name, getattr(self._counters, name) + 1)

        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(count)

    async def next_group(self, max_messages: int) -> list[Received]:
        """Wait for a message, then take up to ``max_messages`` already queued (no waiting)."""
        group = [await self._queue.get()]
        while len(group) < max_messages and not self._queue.empty():
            group.append(self._queue.get_nowait())
        for item in group:
            self._slots.release()
            self._counters.received += 1
            self._counters.received_bytes += len(item.payload)
        return group

    @property
    def queued(self) -> int:
        return self._queue.qsize()
