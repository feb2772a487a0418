"""Stream events and the in-process bus that fans them out to WebSocket clients and webhooks.

Ingest writes every stream event to the store in the same transaction as the data it describes;
the API process tails the store and publishes here. Subscribers get bounded queues: a consumer
that falls behind loses the oldest events, counted, and never slows ingest down.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleetlink_cloud.errors import CloudError

log = logging.getLogger(__name__)

# Event types a backend can filter on (WebSocket ``types=``, webhook subscriptions).
EVENT_TYPES: tuple[str, ...] = (
    "position",  # a live-lane position (history never fires real-time events)
    "signal",  # a live-lane signal value
    "dtc.raised",  # a DTC became active
    "dtc.cleared",  # a DTC was reported inactive
    "event",  # an edge event (harsh braking, ignition...)
    "vehicle.online",  # birth
    "vehicle.offline",  # death (will) or heartbeat timeout
    "command.acked",  # a device acknowledged a command
    # Dispatch (device_id: the job's vehicle, "" while it has none); data names the job.
    "job.created",  # a job was stored (state new)
    "job.state_changed",  # every state transition, with its reason
    "job.assigned",  # a job became assigned to a vehicle (also a direct reassignment)
    "job.unassigned",  # a job went back to new, off the vehicle it was on
    "job.updated",  # no state change: a dispatcher lock or unlock, a driver's delay report
    "job.eta_changed",  # a planned arrival moved
    "job.reallocated",  # a re-plan moved a job to another vehicle
)


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event. ``id`` is the store's ascending event id (stable, usable as a resume cursor)."""

    id: int
    type: str
    device_id: str
    ts_wall_ns: int  # device time of what happened (receive time for online/offline)
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "device_id": self.device_id,
            "ts": self.ts_wall_ns / 1e9,
            "data": dict(self.data),
        }


Filter = Callable[[StreamEvent], bool]


def make_filter(devices: set[str] | None, types: set[str] | None) -> Filter:
    def accept(ev: StreamEvent) -> bool:
        return (devices is None or ev.device_id in devices) and (types is None or ev.type in types)

    return accept


class Subscription:
    """A bounded queue of events for one consumer; iterate it until the bus closes it."""

    def __init__(self, accept: Filter, maxsize: int) -> None:
        self.accept = accept
        self._queue: asyncio.Queue[StreamEvent | None] = asyncio.Queue(maxsize)
        self.dropped = 0

    def offer(self, ev: StreamEvent) -> None:
        if not self.accept(ev):
            return
        if self._queue.full():  # drop the oldest: a live view wants the newest
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(ev)

    def close(self) -> None:
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        while True:
            ev = await self._queue.get()
            if ev is None:
                return
            yield ev


class EventBus:
    """Fan-out of stream events to subscribers. All methods run on the event loop."""

    def __init__(self) -> None:
        self._subs: dict[int, Subscription] = {}
        self._ids = itertools.count()
        self.counters: dict[str, int] = {"published": 0, "dropped": 0}

    def subscribe(self, accept: Filter, *, maxsize: int = 1000) -> tuple[int, Subscription]:
        key = next(self._ids)
        sub = Subscription(accept, maxsize)
        self._subs[key] = sub
        return key, sub

    def unsubscribe(self, key: int) -> None:
        sub = self._subs.pop(key, None)
        if sub is not None:
            self.counters["dropped"] += sub.dropped

    def publish(self, ev: StreamEvent) -> None:
        self.counters["published"] += 1
        for sub in self._subs.values():
            sub.offer(ev)

    def close(self) -> None:
        for sub in self._subs.values():
            sub.close()
        self._subs.clear()

    @property
    def subscribers(self) -> int:
        return len(self._subs)


async def follow(
    bus: EventBus | None,
    types: set[str],
    on_event: Callable[[StreamEvent], Awaitable[object]],
    sweep: Callable[[], Awaitable[object]],
    interval_s: float,
    *,
    what: str,
) -> None:
    """Run ``on_event`` for every event of ``types`` on ``bus`` and ``sweep`` every
    ``interval_s``, until cancelled. A CloudError (the store or broker is down) is logged as
    ``what`` and never ends the loop: the next event or sweep tries again."""

    async def guarded(work: Awaitable[object]) -> None:
        try:
            await work
        except CloudError as exc:
            log.warning("%s: %s", what, exc)

    async def sweep_forever() -> None:
        while True:
            await guarded(sweep())
            await asyncio.sleep(interval_s)

    sweeper = asyncio.create_task(sweep_forever(), name=f"{what} sweep")
    try:
        if bus is None:
            await sweeper
            return
        key, sub = bus.subscribe(make_filter(None, types), maxsize=10_000)
        try:
            async for event in sub:
                await guarded(on_event(event))
        finally:
            bus.unsubscribe(key)
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
