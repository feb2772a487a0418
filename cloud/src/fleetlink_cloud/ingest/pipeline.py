"""The ingest pipeline: decode, validate, dedupe and commit a group of MQTT messages.

``Pipeline.process(messages)`` returns only when everything the group holds is committed: its
batches in one store transaction (with their stream events), its births, deaths, command acks
and dead letters. A status message commits the batches received before it first, so presence
sees batches, births and deaths in the order they arrived. A reported configuration replaces
the device's previous one (``record_reported_config``). The caller acks the messages after
that; if it raises (StoreError, BirthPending), nothing may be acked and the group is processed
again later, which the store's dedupe by (device, boot, seq) makes harmless (a dead letter
written before a failure may be written twice; records never are).

A message that can never succeed is not retried: it becomes a dead letter (reason and raw
bytes) and is acked. That covers oversized or malformed payloads, topics outside the tree, an
envelope naming another device than its topic, unknown or disabled devices, acks of unknown
commands, and, per entry, records this version cannot take and records stamped further ahead
of the receive time than ``max_clock_skew_s`` (the rest of the batch is stored).
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from fleetlink_cloud.config import IngestSettings
from fleetlink_cloud.errors import IngestError
from fleetlink_cloud.ingest.events import stream_events
from fleetlink_cloud.live.presence import is_future
from fleetlink_cloud.store.base import (
    AlreadyExists,
    CommandStatus,
    Device,
    IngestBatch,
    Lane,
    Store,
)
from fleetlink_protocols.catalog import CATALOG, AliasTable
from fleetlink_protocols.codec import DecodedBatch, decode_batch
from fleetlink_protocols.errors import ProtocolError
from fleetlink_protocols.limits import MAX_PAYLOAD_BYTES
from fleetlink_protocols.messages import (
    AckStatus,
    Birth,
    decode_ack,
    decode_reported_config,
    decode_status,
)
from fleetlink_protocols.topics import TopicKind, parse_topic

log = logging.getLogger(__name__)

_NS = 1_000_000_000
LANE_OF: dict[TopicKind, Lane] = {
    TopicKind.LIVE: "live",
    TopicKind.HISTORY: "history",
    TopicKind.EVENTS: "events",
}
CACHE_SIZE = 10_000  # devices whose registry entry and alias table are kept in memory
ACK_STATUS: dict[AckStatus, CommandStatus] = {
    AckStatus.ACCEPTED: "accepted",
    AckStatus.DONE: "done",
    AckStatus.FAILED: "failed",
    AckStatus.REJECTED: "rejected",
}
V = TypeVar("V")


class Message(Protocol):
    """What the pipeline needs of a received MQTT message (the consumer's ``Received``)."""

    @property
    def topic(self) -> str: ...

    @property
    def payload(self) -> bytes: ...

    @property
    def received_wall_ns(self) -> int: ...


class BirthPending(IngestError):
    """A batch uses signal aliases of a boot whose birth is not stored yet.

    On a shared subscription the birth may be with another worker, committing right now: the
    caller processes the group again shortly, and at last with ``wait_for_births=False``, which
    turns the undecodable entries into a dead letter.
    """


class Rejected(IngestError):
    """A message (or part of one) that can never be ingested: it becomes a dead letter."""

    def __init__(self, kind: str, detail: str, device_id: str | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.device_id = device_id


@dataclass(slots=True)
class _Known:
    exists: bool
    disabled: bool
    checked_wall_ns: int


@dataclass(slots=True)
class _Group:
    """What one group of messages produced: batches wait for one commit (at the end, or
    before a status message), dead letters are written last."""

    batches: list[IngestBatch]
    dead: list[tuple[Message, Rejected]]
    counts: Counter[str]
    wait_for_births: bool


class Pipeline:
    """Stateless between groups but for caches (device registry, alias tables).

    Built by the ingest worker with its store; any worker can take any message.
    """

    def __init__(self, store: Store, settings: IngestSettings, *, topic_prefix: str) -> None:
        self._store = store
        self._s = settings
        self._prefix = topic_prefix
        self._devices: OrderedDict[str, _Known] = OrderedDict()
        self._aliases: OrderedDict[str, tuple[int, AliasTable]] = OrderedDict()
        self.counters: Counter[str] = Counter()

    async def process(self, messages: Sequence[Message], *, wait_for_births: bool = True) -> None:
        """Commit everything ``messages`` hold. Raises StoreError or BirthPending: then ack none
        of them and process the same group again later."""
        group = _Group([], [], Counter(), wait_for_births)
        for msg in messages:
            try:
                await self._one(msg, group)
            except Rejected as exc:
                group.dead.append((msg, exc))
        await self._flush(group)
        for msg, rejected in group.dead:
            await self._dead_letter(msg, rejected)
            group.counts[f"dead_letters.{rejected.kind}"] += 1
        group.counts["messages"] += len(messages)
        self.counters.update(group.counts)  # only once committed: a retried group counts once

    async def _flush(self, group: _Group) -> None:
        """Commit the batches gathered so far, in one transaction."""
        if not group.batches:
            return
        results = await self._store.ingest_batches(group.batches, stream_events)
        group.batches = []
        group.counts["records_stored"] += sum(len(r.new_entries) for r in results)
        group.counts["records_duplicate"] += sum(r.duplicates for r in results)

    async def reject(self, msg: Message, kind: str, detail: str) -> None:
        """Keep ``msg`` as a dead letter (the worker's last resort for a message that fails
        unexpectedly). Raises StoreError."""
        try:
            device_id: str | None = parse_topic(msg.topic, self._prefix)[0]
        except ProtocolError:
            device_id = None
        await self._dead_letter(msg, Rejected(kind, detail, device_id))
        self.counters[f"dead_letters.{kind}"] += 1

    async def _dead_letter(self, msg: Message, exc: Rejected) -> None:
        payload = msg.payload[:MAX_PAYLOAD_BYTES]  # an oversized payload is kept truncated
        log.info("dead letter from %s: %s", msg.topic[:120], exc)
        await self._store.add_dead_letter(
            topic=msg.topic,
            reason=str(exc),
            payload=payload,
            received_wall_ns=msg.received_wall_ns,
            device_id=exc.device_id,
        )

    async def _one(self, msg: Message, group: _Group) -> None:
        try:
            device_id, kind = parse_topic(msg.topic, self._prefix)
        except ProtocolError as exc:
            raise Rejected(type(exc).__name__, str(exc)) from None
        if len(msg.payload) > MAX_PAYLOAD_BYTES:
            raise Rejected(
                "PayloadTooLarge",
                f"{len(msg.payload)} bytes exceed {MAX_PAYLOAD_BYTES} (first bytes kept)",
                device_id,
            )
        await self._check_device(device_id, msg.received_wall_ns, group)
        try:
            if kind in LANE_OF:
                await self._batch(msg, device_id, LANE_OF[kind], group)
            elif kind is TopicKind.STATUS:
                await self._flush(group)  # presence must see what arrived before the status
                await self._status(msg, device_id, group)
            elif kind is TopicKind.ACK:
                await self._ack(msg, device_id, group)
            elif kind is TopicKind.CONFIG:
                await self._config(msg, device_id, group)
            else:
                raise Rejected("NotUplink", f"{kind.value} is a downlink topic", device_id)
        except ProtocolError as exc:
            raise Rejected(type(exc).__name__, str(exc), device_id) from None

    async def _check_device(self, device_id: str, now_ns: int, group: _Group) -> None:
        """Raise Rejected for an unknown (unless accepted) or disabled device; cached briefly."""
        known = self._devices.get(device_id)
        if known is None or now_ns - known.checked_wall_ns > self._s.device_cache_s * _NS:
            device = await self._store.get_device(device_id)
            if device is None and self._s.accept_unknown_devices:
                device = await self._register(device_id, now_ns, group)
            known = _Known(device is not None, bool(device and device.disabled), now_ns)
            self._remember(self._devices, device_id, known)
        if not known.exists:
            raise Rejected("UnknownDevice", f"device {device_id!r} is not registered", device_id)
        if known.disabled:
            raise Rejected("DeviceDisabled", f"device {device_id!r} is disabled", device_id)

    async def _register(self, device_id: str, now_ns: int, group: _Group) -> Device | None:
        try:
            device = await self._store.add_device(
                device_id, name=device_id, password_hash="", created_wall_ns=now_ns
            )
        except AlreadyExists:  # another worker registered it first
            return await self._store.get_device(device_id)
        group.counts["devices_registered"] += 1
        return device

    async def _batch(self, msg: Message, device_id: str, lane: Lane, group: _Group) -> None:
        decoded = await self._decode(msg.payload, device_id, group.wait_for_births)
        batch = decoded.batch
        if batch.device_id != device_id:
            raise Rejected(
                "DeviceMismatch",
                f"topic device {device_id!r}, envelope device {batch.device_id!r}",
                device_id,
            )
        total = len(batch.entries) + len(decoded.rejected)
        now = msg.received_wall_ns
        skew_s = self._s.max_clock_skew_s
        # Kept out of the record tables: one record from a clock running years ahead would pin
        # "latest by device time" for good. The dead letter keeps the raw bytes.
        entries = [e for e in batch.entries if not is_future(e.record.ts_wall_ns, now, skew_s)]
        if len(entries) < len(batch.entries):
            future = [e for e in batch.entries if is_future(e.record.ts_wall_ns, now, skew_s)]
            group.counts["records_clock_future"] += len(future)
            log.warning(
                "%s: %d records over %.0f s ahead of the cloud clock",
                device_id,
                len(future),
                skew_s,
            )
            detail = [f"seq {e.seq} at {e.record.ts_wall_ns} ns" for e in future]
            reason = f"{len(future)} of {total} entries over {skew_s:g} s ahead of receipt"
            group.dead.append(
                (msg, _entries("ClockAhead", batch.boot_id, reason, detail, device_id))
            )
        if entries:
            group.batches.append(
                IngestBatch(device_id, batch.boot_id, lane, tuple(entries), now, len(msg.payload))
            )
            group.counts[f"batches.{lane}"] += 1
        if decoded.rejected:
            group.counts["records_rejected"] += len(decoded.rejected)
            detail = [f"seq {r.seq} {r.kind}: {r.reason}" for r in decoded.rejected]
            reason = f"{len(decoded.rejected)} of {total} entries"
            group.dead.append(
                (msg, _entries("RejectedEntries", batch.boot_id, reason, detail, device_id))
            )

    async def _decode(self, payload: bytes, device_id: str, wait_for_births: bool) -> DecodedBatch:
        """Decode with the device's alias table; fetch the batch boot's table if it differs.

        Raises BirthPending when the batch needs a boot's aliases whose birth is not stored.
        """
        cached = self._aliases.get(device_id)
        table = cached[1] if cached is not None else CATALOG
        decoded = decode_batch(payload, table)
        boot_id = decoded.batch.boot_id
        stale = cached is None or cached[0] != boot_id
        if stale and any(r.kind == "UnknownSignalAlias" for r in decoded.rejected):
            extras = await self._store.alias_extras(device_id, boot_id)
            if extras is None and wait_for_births:
                raise BirthPending(
                    f"{device_id}: a batch of boot {boot_id} uses device aliases, and no birth"
                    " of that boot is stored yet"
                )
            if extras:
                fresh = self._table(extras)
                if fresh is not None:
                    self._remember(self._aliases, device_id, (boot_id, fresh))
                    decoded = decode_batch(payload, fresh)
        return decoded

    @staticmethod
    def _table(extras: dict[str, int]) -> AliasTable | None:
        try:
            return AliasTable(extras)
        except ProtocolError as exc:
            log.error("stored alias extras are invalid (%s); decoding with the catalog", exc)
            return None

    async def _status(self, msg: Message, device_id: str, group: _Group) -> None:
        status = decode_status(msg.payload)
        if status.device_id != device_id:
            raise Rejected(
                "DeviceMismatch",
                f"topic device {device_id!r}, status device {status.device_id!r}",
                device_id,
            )
        if isinstance(status, Birth):
            await self._store.record_birth(
                device_id,
                status.boot_id,
                agent_version=status.agent_version,
                started_wall_ns=status.started_wall_ns,
                alias_extras=dict(status.aliases.extras),
                received_wall_ns=msg.received_wall_ns,
            )
            self._remember(self._aliases, device_id, (status.boot_id, status.aliases))
            group.counts["births"] += 1
        else:
            changed = await self._store.record_death(
                device_id, status.boot_id, received_wall_ns=msg.received_wall_ns
            )
            group.counts["deaths" if changed else "deaths_ignored"] += 1

    async def _ack(self, msg: Message, device_id: str, group: _Group) -> None:
        ack = decode_ack(msg.payload)
        row = await self._store.record_command_ack(
            device_id,
            ack.command_id,
            status=ACK_STATUS[ack.status],
            detail=ack.detail,
            received_wall_ns=msg.received_wall_ns,
        )
        if row is None:
            raise Rejected(
                "UnknownCommand", f"ack of command {ack.command_id!r} never sent to it", device_id
            )
        await self._store.touch(device_id, msg.received_wall_ns)
        group.counts["command_acks"] += 1

    async def _config(self, msg: Message, device_id: str, group: _Group) -> None:
        report = decode_reported_config(msg.payload)
        await self._store.record_reported_config(
            device_id,
            version=report.version,
            document=report.values,
            pending_restart=report.pending_restart,
            refused_version=report.refused_version,
            error=report.error,
            received_wall_ns=msg.received_wall_ns,
        )
        await self._store.touch(device_id, msg.received_wall_ns)
        group.counts["config_reported"] += 1
        if report.error is not None:
            log.info(
                "%s refused configuration %s: %s", device_id, report.refused_version, report.error
            )

    @staticmethod
    def _remember(cache: OrderedDict[str, V], key: str, value: V) -> None:
        """Bounded LRU: a fleet larger than the cache costs lookups, never memory."""
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > CACHE_SIZE:
            cache.popitem(last=False)


def _entries(
    kind: str, boot_id: int, reason: str, detail: Sequence[str], device_id: str
) -> Rejected:
    """A dead letter for some entries of a batch: the first 20 named, the rest counted."""
    more = len(detail) - 20
    text = f"boot {boot_id}, {reason}: " + "; ".join(detail[:20])
    return Rejected(kind, text + (f"; and {more} more" if more > 0 else ""), device_id)
