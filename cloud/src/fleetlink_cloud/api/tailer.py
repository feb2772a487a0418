"""Feeds the in-process ``EventBus`` from the store's stream events.

Ingest commits stream events with the data they describe, possibly in another process; the API
process runs one ``StreamTailer`` (a named task of its composition root) that reads the events
committed after the last one it saw and publishes them, in id order, to WebSocket clients and
the webhook dispatcher's wake-ups.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from fleetlink_cloud.bus import EventBus
from fleetlink_cloud.errors import CloudError
from fleetlink_cloud.store.base import Store

log = logging.getLogger(__name__)

PAGE_SIZE: Final = 500
POLL_INTERVAL_S: Final = 0.25


class StreamTailer:
    """``run()`` until cancelled; ``poll()`` once (tests). Starts from the newest event."""

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        *,
        poll_interval_s: float = POLL_INTERVAL_S,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self._store = store
        self._bus = bus
        self._poll_interval_s = poll_interval_s
        self._page_size = page_size
        self.last_id: int | None = None
        self.counters: dict[str, int] = {"published": 0, "store_errors": 0}

    async def poll(self) -> int:
        """Publish the events committed since the last poll; returns how many."""
        if self.last_id is None:
            self.last_id = await self._store.latest_stream_event_id()
            return 0
        events = await self._store.stream_events_after(self.last_id, self._page_size)
        for event in events:
            self._bus.publish(event)
            self.last_id = event.id
        self.counters["published"] += len(events)
        return len(events)

    async def run(self) -> None:
        while True:
            try:
                published = await self.poll()
            except CloudError as exc:  # the store is down: try again later
                self.counters["store_errors"] += 1
                log.warning("stream tailer: %s", exc)
                published = 0
            if published < self._page_size:
                await asyncio.sleep(self._poll_interval_s)
