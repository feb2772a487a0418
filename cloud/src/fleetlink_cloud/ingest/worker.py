"""The ingest worker: MQTT messages in, committed rows out, acknowledgements after the commit.

``IngestWorker.run()`` runs three named tasks in one TaskGroup until cancelled: the consumer's
connection loop, the commit loop (take a group of queued messages, commit it through the
pipeline, then ack every message of it, in order) and the presence sweep (heartbeat timeout).

Nothing is acked before the store committed it, so a worker killed at any point loses nothing:
the broker delivers the unacked messages again and the store's dedupe drops what was committed.
A store failure is retried with backoff, the same group again, for as long as it takes; while
the commit loop waits, the consumer's bounded queue fills and the broker stops sending.

Every wait is an ``await``: paho runs in its own thread, the store in its driver's. Pipeline
work per group (decoding msgpack) is bounded by ``group_max_messages``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from fleetlink_cloud.config import IngestSettings
from fleetlink_cloud.errors import StoreError
from fleetlink_cloud.ingest.intake import Received
from fleetlink_cloud.ingest.pipeline import BirthPending, Pipeline
from fleetlink_cloud.live.presence import PresenceRules
from fleetlink_cloud.store.base import Store

log = logging.getLogger(__name__)

# A batch that needs a birth another worker may be committing right now is tried again this
# many times, this far apart; then the entries that need it become a dead letter.
BIRTH_RETRIES = 4
BIRTH_WAIT_S = 0.5


class Consumer(Protocol):
    """What the worker needs of ``MqttConsumer``."""

    async def run(self) -> None: ...

    async def next_group(self, max_messages: int) -> list[Received]: ...

    def ack(self, msg: Received) -> bool: ...


@dataclass(slots=True)
class WorkerCounters:
    groups: int = 0
    messages: int = 0
    acked: int = 0
    acks_void: int = 0  # the connection that delivered it is gone: it comes again, deduped
    store_retries: int = 0
    birth_waits: int = 0
    internal_errors: int = 0  # a message the pipeline failed on unexpectedly: a dead letter


class IngestWorker:
    """One ingest worker. Built by the composition root with its collaborators."""

    def __init__(
        self,
        consumer: Consumer,
        pipeline: Pipeline,
        store: Store,
        settings: IngestSettings,
        *,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._consumer = consumer
        self._pipeline = pipeline
        self._store = store
        self._s = settings
        self._clock = clock
        self._rules = PresenceRules(heartbeat_timeout_s=settings.heartbeat_timeout_s)
        self.counters = WorkerCounters()

    async def run(self) -> None:
        """Consume, commit and ack until cancelled; raises only on a bug."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._consumer.run(), name="ingest-mqtt")
            tg.create_task(self._commit_loop(), name="ingest-commit")
            tg.create_task(self._presence_loop(), name="ingest-presence")

    async def _commit_loop(self) -> None:
        while True:
            group = await self._consumer.next_group(self._s.group_max_messages)
            await self.commit(group)
            self.counters.groups += 1
            self.counters.messages += len(group)
            for msg in group:  # in the order received (MQTT 3.1.1 wants PUBACKs in order)
                if self._consumer.ack(msg):
                    self.counters.acked += 1
                else:
                    self.counters.acks_void += 1

    async def commit(self, group: Sequence[Received]) -> None:
        """Commit ``group`` through the pipeline; returns only once it is committed."""
        await self._retrying(group, self._process)

    async def _process(self, group: Sequence[Received], birth_waits: int) -> None:
        try:
            await self._pipeline.process(group, wait_for_births=birth_waits < BIRTH_RETRIES)
        except (BirthPending, StoreError):
            raise
        except Exception as exc:
            await self._isolate(group, exc)

    async def _retrying(
        self,
        group: Sequence[Received],
        attempt: Callable[[Sequence[Received], int], Awaitable[None]],
    ) -> None:
        """Run ``attempt`` until it succeeds: store failures with backoff, for as long as it
        takes; a pending birth a few times (``attempt`` is told how often it waited)."""
        delay_s = self._s.retry_initial_s
        birth_waits = 0
        while True:
            try:
                await attempt(group, birth_waits)
                return
            except BirthPending as exc:
                birth_waits += 1
                self.counters.birth_waits += 1
                log.info("%s; trying again in %.3g s", exc, BIRTH_WAIT_S)
                await asyncio.sleep(BIRTH_WAIT_S)
            except StoreError as exc:
                self.counters.store_retries += 1
                log.error(
                    "cannot commit %d messages: %s; retrying in %.3g s", len(group), exc, delay_s
                )
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, self._s.retry_max_s)

    async def _isolate(self, group: Sequence[Received], exc: Exception) -> None:
        """An unexpected failure: find the message that causes it, keep it as a dead letter.

        Without this, a message hitting a bug would crash every worker it is delivered to.
        """
        if len(group) > 1:
            log.error("ingest failed on a group of %d messages: %r; one by one", len(group), exc)
            for msg in group:
                await self.commit([msg])
            return
        (msg,) = group
        self.counters.internal_errors += 1
        log.error("ingest failed on a message from %s", msg.topic[:120], exc_info=exc)

        async def reject(one: Sequence[Received], _: int) -> None:
            await self._pipeline.reject(one[0], "InternalError", repr(exc)[:500])

        await self._retrying(group, reject)

    async def _presence_loop(self) -> None:
        """Mark vehicles silent for the heartbeat timeout offline (every worker may; the store
        changes each vehicle once)."""
        while True:
            await asyncio.sleep(self._s.presence_check_s)
            now = self._clock()
            try:
                expired = await self._store.expire_presence(
                    cutoff_wall_ns=self._rules.silent_since_ns(now), now_wall_ns=now
                )
            except StoreError as exc:
                log.warning("presence sweep failed: %s", exc)
                continue
            if expired:
                log.info("heartbeat timeout: %s offline", ", ".join(expired[:20]))
