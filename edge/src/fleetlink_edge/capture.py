"""The capture loop: sources -> sampler -> outbox, in group commits. Never waits on the network.

Sources call ``submit`` (never blocks; a full queue drops the newest record and counts it). One
writer task drains the queue, samples, and appends whatever is left in a single transaction, so a
burst of CAN signals costs one fsync, not hundreds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from fleetlink_edge.sample import Sampler
from fleetlink_protocols.records import Record

log = logging.getLogger(__name__)


class RecordSink(Protocol):
    async def append(self, records: Sequence[Record]) -> list[int]: ...


class Capture:
    """Bounded queue plus writer task. ``now_wall_ns`` is injected for the sampler's tick."""

    def __init__(
        self,
        sampler: Sampler,
        sink: RecordSink,
        *,
        maxsize: int = 10_000,
        max_batch: int = 500,
        now_wall_ns: Callable[[], int] = time.time_ns,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self._sampler = sampler
        self._sink = sink
        self._queue: asyncio.Queue[Record] = asyncio.Queue(maxsize)
        self._max_batch = max_batch
        self._now = now_wall_ns
        self._on_commit = on_commit
        self.counters: dict[str, int] = {"submitted": 0, "dropped_queue_full": 0, "appended": 0}

    def submit(self, record: Record) -> None:
        """Hand a decoded record to the capture path; never blocks."""
        try:
            self._queue.put_nowait(record)
            self.counters["submitted"] += 1
        except asyncio.QueueFull:
            self.counters["dropped_queue_full"] += 1

    def _drain(self, first: Record | None) -> list[Record]:
        pending = [first] if first is not None else []
        while len(pending) < self._max_batch:
            try:
                pending.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        kept = [r for r in (self._sampler.offer(p) for p in pending) if r is not None]
        kept.extend(self._sampler.tick(self._now()))
        return kept

    async def _commit(self, records: list[Record]) -> None:
        if records:
            await self._sink.append(records)
            self.counters["appended"] += len(records)
        if self._on_commit is not None:
            self._on_commit()

    async def run(self, tick_s: float = 1.0) -> None:
        """Write until cancelled; on cancel, finish the commit under way and flush the queue."""
        while True:
            try:
                async with asyncio.timeout(tick_s):
                    first: Record | None = await self._queue.get()
            except TimeoutError:
                first = None
            except asyncio.CancelledError:
                await self.flush()
                raise
            # Records taken off the queue must reach the outbox even if we are cancelled now.
            commit = asyncio.ensure_future(self._commit(self._drain(first)))
            try:
                await asyncio.shield(commit)
            except asyncio.CancelledError:
                await commit
                await self.flush()
                raise

    async def flush(self) -> None:
        """Append everything still queued (shutdown path)."""
        while not self._queue.empty():
            await self._commit(self._drain(None))
