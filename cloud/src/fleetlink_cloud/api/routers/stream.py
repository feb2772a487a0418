"""``/v1/stream``: live stream events over a WebSocket, filtered by vehicle and event type.

Connect with ``Authorization: Bearer <token>`` or, from a browser, ``?token=<token>``; any
scope may read. Filters are query parameters, repeated or comma-separated:
``?vehicle=veh-1,veh-2&type=position&type=dtc.raised``; none means everything. ``?after=<id>``
first replays the committed events after that event id (resume after a reconnect), then goes
live without repeating one.

Each message is one JSON event, exactly as webhooks deliver it::

    {"id": 4711, "type": "dtc.raised", "device_id": "veh-1", "ts": 1717243199.5, "data": {...}}

A client that reads too slowly loses the oldest queued events; before the next event it gets
``{"type": "stream.dropped", "dropped": <since the last notice>, "total": <n>}``, so it knows to
resynchronise over REST. The server closes with 1001 when it shuts down. Refused handshakes get
an HTTP status (401 token, 422 bad filter) where the server supports it, else close code 1008.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Annotated, Any, Final

from fastapi import APIRouter, HTTPException, Query, WebSocket, WebSocketDisconnect

from fleetlink_cloud.api.auth import Reader
from fleetlink_cloud.api.deps import ApiContext, Ctx
from fleetlink_cloud.api.params import MAX_ID
from fleetlink_cloud.bus import EVENT_TYPES, Filter, StreamEvent, Subscription, make_filter
from fleetlink_protocols.topics import DEVICE_ID_PATTERN

QUEUE_SIZE: Final = 1000  # events held per client before the oldest are dropped
REPLAY_PAGE: Final = 500
MAX_FILTER_VALUES: Final = 1000

router = APIRouter(tags=["stream"])


def split_values(values: Iterable[str] | None) -> set[str] | None:
    """Repeated and comma-separated query values as a set; None when absent or empty."""
    out = {v.strip() for value in values or () for v in value.split(",") if v.strip()}
    return out or None


def stream_filter(vehicles: list[str] | None, types: list[str] | None) -> Filter:
    """The subscription filter; raise HTTPException 422 for unknown types or bad ids."""
    devices = split_values(vehicles)
    kinds = split_values(types)
    if kinds is not None and not kinds <= set(EVENT_TYPES):
        unknown = ", ".join(sorted(kinds - set(EVENT_TYPES)))[:200]
        raise HTTPException(422, f"type: unknown {unknown}; known: {', '.join(EVENT_TYPES)}")
    if devices is not None and (
        len(devices) > MAX_FILTER_VALUES or not all(DEVICE_ID_PATTERN.fullmatch(d) for d in devices)
    ):
        raise HTTPException(422, "vehicle: device ids are 1-64 of A-Z a-z 0-9 _ -")
    return make_filter(devices, kinds)


@router.websocket("/stream")
async def live_stream(
    websocket: WebSocket,
    principal: Reader,
    ctx: Ctx,
    vehicle: Annotated[list[str] | None, Query()] = None,
    types: Annotated[list[str] | None, Query(alias="type")] = None,
    after: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
) -> None:
    """Live stream events (see the module docstring)."""
    accept = stream_filter(vehicle, types)
    key, sub = ctx.bus.subscribe(accept, maxsize=QUEUE_SIZE)
    try:
        await websocket.accept()
        sender = asyncio.create_task(_send_events(websocket, ctx, sub, accept, after))
        reader = asyncio.create_task(_until_disconnect(websocket))
        done, pending = await asyncio.wait({sender, reader}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await task
        for task in done:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                task.result()
    finally:
        ctx.bus.unsubscribe(key)


async def _until_disconnect(websocket: WebSocket) -> None:
    """Read (and ignore) client messages until it goes away."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return


async def _send_events(
    websocket: WebSocket, ctx: ApiContext, sub: Subscription, accept: Filter, after: int | None
) -> None:
    last_id = -1
    if after is not None:
        last_id = await _replay(websocket, ctx, accept, after)
    reported = 0
    async for event in sub:
        if event.id <= last_id:
            continue  # already replayed from the store
        if sub.dropped > reported:
            notice: dict[str, Any] = {
                "type": "stream.dropped",
                "dropped": sub.dropped - reported,
                "total": sub.dropped,
            }
            ctx.counters.stream_dropped += sub.dropped - reported
            reported = sub.dropped
            await websocket.send_json(notice)
        await websocket.send_json(event.to_json())
    await websocket.close(1001)  # the bus closed: the server is shutting down


async def _replay(websocket: WebSocket, ctx: ApiContext, accept: Filter, after: int) -> int:
    """Send committed events after ``after`` that pass ``accept``; returns the last id read."""
    last = after
    while True:
        events: list[StreamEvent] = await ctx.store.stream_events_after(last, REPLAY_PAGE)
        for event in events:
            if accept(event):
                await websocket.send_json(event.to_json())
            last = event.id
        if len(events) < REPLAY_PAGE:
            return last
