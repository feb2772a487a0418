"""The uplink loop: outbox -> batches -> MQTT -> ack. It never touches hardware.

On every connect it publishes the birth (retained, status topic; the will is the death), marks
the live boundary in the outbox and then keeps up to ``max_inflight_batches`` batches in flight,
always serving the LIVE lane first, then EVENTS, then the HISTORY backlog (oldest first). A
record is acked (deleted) only after the PUBACK of the message that carried it; when the link
drops, in-flight records are released and sent again on the next connection (the cloud dedupes
by device, boot and seq). Connection failures back off with jitter. Each connect offers the
kept credentials newest first (``credentials.CredentialFile``): a rotated password the broker
refuses costs one CONNECT, then the one that works is offered. ``reconnect()`` ends a session
on request (batches in flight finish first) and connects again at once.

A PUBACK is not proof that anyone will get the message: an MQTT 5 broker that had no subscriber
for it says "No matching subscribers" (0x10) and drops it. Such a batch is released, not acked,
and the uplink holds new batches back for a growing delay, so records wait in the outbox until
the cloud's subscription is there again (a broker restart, before ingest has reconnected).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fleetlink_edge.backoff import Backoff
from fleetlink_edge.config import UplinkSettings
from fleetlink_edge.credentials import Attempt, CredentialFile, Kept, describe_connection
from fleetlink_edge.errors import BrokerRefused, NotDelivered, PublishRejected, UplinkError
from fleetlink_edge.mqtt import CredentialsRefused, Message, MqttClient
from fleetlink_edge.outbox import Lane, Outbox, Stored
from fleetlink_protocols.codec import Batch, encode_batch
from fleetlink_protocols.errors import PayloadTooLarge, ProtocolError
from fleetlink_protocols.limits import MAX_BATCH_ENTRIES
from fleetlink_protocols.messages import Birth, encode_birth, encode_death
from fleetlink_protocols.records import Entry
from fleetlink_protocols.topics import TOPIC_SPECS, TopicKind, Topics

log = logging.getLogger(__name__)

# Service order when a slot frees: the vehicle's present first, then events, then the backlog.
LANE_ORDER = (Lane.LIVE, Lane.EVENTS, Lane.HISTORY)
LANE_TOPIC = {
    Lane.LIVE: TopicKind.LIVE,
    Lane.EVENTS: TopicKind.EVENTS,
    Lane.HISTORY: TopicKind.HISTORY,
}

Encoder = Callable[[Sequence[Stored]], bytes]


@dataclass(slots=True)
class UplinkCounters:
    connects: int = 0
    disconnects: int = 0
    connect_failures: int = 0
    broker_refused: int = 0
    batches_sent: int = 0
    records_sent: int = 0
    bytes_sent: int = 0
    publish_rejected: int = 0
    not_delivered: int = 0  # batches the broker had no subscriber for: released, sent again
    records_unsendable: int = 0  # the codec refused them even alone: dropped, logged
    backoff_s: float = 0.0  # the last reconnect delay chosen
    credentials_refused: int = 0  # a rotated or kept password refused, an older one offered
    reconnects_asked: int = 0  # reconnect() calls (the reconnect command)


def split_to_fit(
    items: Sequence[Stored], encode: Encoder
) -> tuple[list[tuple[Sequence[Stored], bytes]], list[Stored]]:
    """Encode ``items`` as one payload, halving until every part fits the protocol limits.

    Returns the (part, payload) pairs in order and the items the codec refuses even alone.
    """
    try:
        return [(items, encode(items))], []
    except ProtocolError as exc:
        if len(items) == 1:
            log.error("record %d/%d cannot be sent: %r", items[0].boot_id, items[0].seq, exc)
            return [], [items[0]]
        if not isinstance(exc, PayloadTooLarge):
            log.warning("batch refused by the codec (%r), isolating the record", exc)
    half = len(items) // 2
    head, bad_head = split_to_fit(items[:half], encode)
    tail, bad_tail = split_to_fit(items[half:], encode)
    return head + tail, bad_head + bad_tail


class LaneTimer:
    """When a partly filled lane is due: ``max_delay_s`` after it was first seen non-empty."""

    def __init__(self, max_delay_s: float) -> None:
        self._max_delay_s = max_delay_s
        self._since: dict[Lane, float] = {}

    def due(self, lane: Lane, pending: int, full: int, now: float) -> bool:
        """``now`` is monotonic seconds. A full batch is always due; an empty lane never."""
        if pending <= 0:
            self._since.pop(lane, None)
            return False
        since = self._since.setdefault(lane, now)
        return pending >= full or now - since >= self._max_delay_s

    def sent(self, lane: Lane) -> None:
        self._since.pop(lane, None)

    def expire_all(self) -> None:
        """Everything pending is due now (after a reconnect it has waited long enough)."""
        self._since = {lane: float("-inf") for lane in Lane}


class Uplink:
    """Streams the outbox to the broker until cancelled. Built by the composition root."""

    def __init__(
        self,
        settings: UplinkSettings,
        device_id: str,
        outbox: Outbox,
        birth: Birth,
        *,
        subscribe: Sequence[str] = (),
        random_source: Callable[[], float] = random.random,
        credentials: CredentialFile | None = None,
    ) -> None:
        """``subscribe``: downlink topic filters, read from ``client.messages()`` (QoS 1).
        ``credentials``: the passwords to offer on each connect (default: ``settings.password``).
        """
        if birth.device_id != device_id:
            raise ValueError(f"birth is for {birth.device_id!r}, not {device_id!r}")
        self._settings = settings
        self._device_id = device_id
        self._outbox = outbox
        # Encoded once: a bad agent version or alias table fails at start, not on connect.
        self._birth = encode_birth(birth)
        self._death = encode_death(device_id, birth.boot_id)
        self._aliases = birth.aliases
        self._subscriptions = tuple(subscribe)
        self.topics = Topics(settings.topic_prefix, device_id)
        will_spec = TOPIC_SPECS[TopicKind.STATUS]
        will = Message(self.topics.status, self._death, will_spec.qos, will_spec.retain)
        self.client = MqttClient(settings, settings.client_id or device_id, will=will)
        self._backoff = Backoff(settings.backoff_initial_s, settings.backoff_max_s, random_source)
        self._undelivered = Backoff(
            settings.backoff_initial_s, settings.backoff_max_s, random_source
        )
        self._hold_until = 0.0  # loop time: no new batch before (nobody subscribed)
        self._timer = LaneTimer(settings.batch_max_delay_s)
        self._batch_max = min(settings.batch_max_records, MAX_BATCH_ENTRIES)
        self._inflight: dict[asyncio.Task[None], Lane] = {}
        self.credentials = credentials
        self._restart = asyncio.Event()  # reconnect() was called
        self._asked = False  # the session ended because of it: connect again without a pause
        self._waiters: set[asyncio.Future[str]] = set()
        self.counters = UplinkCounters()

    async def run(self) -> None:
        """Connect, stream, reconnect with backoff; on cancel, drain briefly and say goodbye."""
        try:
            while True:
                healthy = await self._session()
                if healthy:
                    self._backoff.reset()
                if self._asked:
                    self._asked = False
                    continue
                delay = self._backoff.next_delay_s()
                self.counters.backoff_s = delay
                log.info("reconnecting to the broker in %.1f s", delay)
                await self._nap(delay)
        except BaseException:  # cancelled, or the outbox failed: leave the broker cleanly
            await self._shutdown()
            raise

    async def _session(self) -> bool:
        """One connection's life; returns whether it worked well enough to reset the backoff."""
        try:
            attempt = await self._connect()
            # On every connect, not only when the broker has no session: a session kept from
            # before an upgrade may lack a filter this version reads. A repeat SUBSCRIBE is
            # harmless (MQTT 5 §3.8.4: it replaces the subscription, queued messages stay).
            for topic_filter in self._subscriptions:
                await self.client.subscribe(topic_filter, qos=1)
        except BrokerRefused as exc:
            self.counters.broker_refused += 1
            log.error("%s; check the device's credentials and the broker ACL", exc)
            return False
        except UplinkError as exc:
            self.counters.connect_failures += 1
            log.warning("cannot reach the broker: %s", exc)
            return False
        self.counters.connects += 1
        await self._connected(attempt)
        healthy = False
        # CancelledError goes straight through: run() drains, says goodbye and disconnects.
        try:
            await self._publish_status(self._birth)
            healthy = True
            await self._outbox.mark_live_boundary()
            self._timer.expire_all()
            await self._pump()
        except PublishRejected as exc:
            log.error("broker rejected a publish, check its ACL for %s: %s", self.topics.live, exc)
            healthy = False
        except UplinkError as exc:
            log.warning("uplink interrupted: %s", exc)
        await self._settle()
        self.counters.disconnects += 1
        await self.client.disconnect()
        return healthy

    async def _connect(self) -> Attempt:
        """Connect with the first password the broker takes, rotated ones first; raises what
        ``MqttClient.connect`` raises for the last one."""
        offered = self.credentials
        attempts = offered.attempts() if offered is not None else [Attempt(None, "configured")]
        for attempt in attempts[:-1]:
            try:
                await self.client.connect(password=attempt.password)
            except CredentialsRefused as exc:
                self.counters.credentials_refused += 1
                log.warning("%s (the %s credential); offering an older one", exc, attempt.source)
                continue
            return attempt
        await self.client.connect(password=attempts[-1].password)
        return attempts[-1]

    async def _connected(self, attempt: Attempt) -> None:
        """Keep what the broker took; answer reconnect() callers waiting for a connection."""
        kept = Kept()
        if self.credentials is not None:
            await self.credentials.connected(attempt)
            kept = self.credentials.kept
        self._restart.clear()  # a reconnect asked for before this connection is satisfied
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(describe_connection(attempt, kept))

    async def reconnect(self, timeout_s: float) -> str:
        """End the session and connect again now, offering the newest credential first (the
        ``reconnect`` command); returns what the new connection uses. Raises UplinkError when
        none follows within ``timeout_s``."""
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        self._restart.set()
        self.counters.reconnects_asked += 1
        try:
            async with asyncio.timeout(timeout_s):
                return await waiter
        except TimeoutError:
            raise UplinkError(f"not connected again within {timeout_s:g} s") from None
        finally:
            self._waiters.discard(waiter)

    async def _nap(self, delay_s: float) -> None:
        """The backoff pause, cut short by reconnect(): a reconnect asked for while the broker
        is unreachable is tried once at once, then the backoff holds again."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await self._restart.wait()
        self._restart.clear()

    async def _publish_status(self, payload: bytes) -> None:
        spec = TOPIC_SPECS[TopicKind.STATUS]
        try:
            await self.client.publish(self.topics.status, payload, qos=spec.qos, retain=spec.retain)
        except PublishRejected:
            self.counters.publish_rejected += 1
            raise

    async def _pump(self) -> None:
        """Fill free slots, then wait for a PUBACK, the link to drop, a reconnect() or the poll
        interval."""
        lost = asyncio.ensure_future(self.client.wait_disconnected())
        restart = asyncio.ensure_future(self._restart.wait())
        try:
            while True:
                await self._fill()
                done, _ = await asyncio.wait(
                    {lost, restart, *self._inflight},
                    timeout=self._settings.poll_interval_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if lost in done:
                    raise lost.result()
                if restart in done:
                    log.info("reconnecting now, as asked; batches in flight finish first")
                    self._restart.clear()
                    self._asked = True
                    return
                for task in [t for t in self._inflight if t.done()]:
                    del self._inflight[task]
                    task.result()  # PublishRejected ends the session
        finally:
            lost.cancel()
            restart.cancel()

    async def _fill(self) -> None:
        now = asyncio.get_running_loop().time()
        if now < self._hold_until:
            return
        for lane in LANE_ORDER:
            while self._free_slots(lane) > 0:
                pending = await self._outbox.pending_count(lane)
                if not self._timer.due(lane, pending, self._batch_max, now):
                    break
                if not await self._start_batch(lane):
                    break

    def _free_slots(self, lane: Lane) -> int:
        slots = self._settings.max_inflight_batches
        free = slots - len(self._inflight)
        if lane is Lane.HISTORY:
            # The backlog never takes the last slot: a fresh position must not wait behind it.
            busy = sum(1 for ln in self._inflight.values() if ln is Lane.HISTORY)
            free = min(free, max(1, slots - 1) - busy)
        return free

    async def _start_batch(self, lane: Lane) -> bool:
        items = await self._take(lane)
        if not items:
            return False
        self._timer.sent(lane)
        parts, unsendable = split_to_fit(items, self._encoder(items[0].boot_id))
        if unsendable:
            # Kept, they would block their lane forever; they are logged with their seq.
            self.counters.records_unsendable += len(unsendable)
            await self._outbox.ack([s.id for s in unsendable])
        topic = self.topics.topic(LANE_TOPIC[lane])
        for part, payload in parts:
            task = asyncio.create_task(self._send(topic, part, payload), name=f"uplink-{lane}")
            self._inflight[task] = lane
        return True

    async def _take(self, lane: Lane) -> list[Stored]:
        # take() finishes even when we are cancelled meanwhile; its records, then marked in
        # flight, must go back to pending rather than wait for the next start of the agent.
        taking = asyncio.ensure_future(self._outbox.take(lane, self._batch_max))
        try:
            return await asyncio.shield(taking)
        except asyncio.CancelledError:
            await asyncio.wait([taking])
            if not taking.cancelled() and taking.exception() is None:
                await self._outbox.release([s.id for s in taking.result()])
            raise

    def _encoder(self, boot_id: int) -> Encoder:
        def encode(items: Sequence[Stored]) -> bytes:
            entries = tuple(Entry(s.seq, s.record) for s in items)
            return encode_batch(Batch(self._device_id, boot_id, entries), self._aliases)

        return encode

    async def _send(self, topic: str, items: Sequence[Stored], payload: bytes) -> None:
        ids = [s.id for s in items]
        try:
            await self.client.publish(
                topic, payload, qos=1, require_subscriber=self._settings.require_subscriber
            )
        except NotDelivered as exc:
            await self._outbox.release(ids)
            self._hold_back(exc)
            return
        except BaseException as exc:
            if isinstance(exc, PublishRejected):
                self.counters.publish_rejected += 1
            await self._outbox.release(ids)
            raise
        self._undelivered.reset()
        self.counters.batches_sent += 1
        self.counters.records_sent += len(ids)
        self.counters.bytes_sent += len(payload)
        await self._outbox.ack(ids)

    def _hold_back(self, exc: NotDelivered) -> None:
        """Nobody subscribed: keep the records and wait before the next batch."""
        self.counters.not_delivered += 1
        delay = self._undelivered.next_delay_s()
        self._hold_until = asyncio.get_running_loop().time() + delay
        log.warning("%s: kept in the outbox, sending again in %.1f s", exc, delay)

    async def _settle(self) -> None:
        """Let in-flight batches end (PUBACK: ack; failure: release) within shutdown_drain_s."""
        tasks = list(self._inflight)
        self._inflight.clear()
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=self._settings.shutdown_drain_s)
        for task in late:
            task.cancel()  # _send releases its records on the way out
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _shutdown(self) -> None:
        """Cancelled: wait briefly for PUBACKs, publish the death, disconnect cleanly."""
        await self._settle()
        if self.client.is_connected:
            try:
                async with asyncio.timeout(self._settings.shutdown_drain_s):
                    await self._publish_status(self._death)
            except (UplinkError, TimeoutError) as exc:
                log.warning("death message not confirmed: %s", exc)
        await self.client.disconnect()
