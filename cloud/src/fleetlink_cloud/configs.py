"""Remote configuration: each device's desired document, versioned, published retained.

``ConfigService.put`` checks a document against protocol v1 (a map of settings sections,
JSON-like, at most ``MAX_DESIRED_CONFIG_BYTES`` encoded), stores it with optimistic concurrency
(the caller names the version it read, else ``StaleVersion``) and publishes it retained on
``{prefix}/{device}/dn/config``, so a device that is offline finds the newest one when it
reconnects. Keys and values are the device's business: it checks them against its own settings
model and reports what it applied, or why it refused, on ``config`` (ingest stores that).

A version is stored before it is published: a failed publish, or an API process without MQTT,
leaves it unpublished and ``sweep`` publishes it later. On a device's birth its document is
published again unless the device already reports that version (applied or refused), so a
broker that lost its retained messages still delivers it. ``CommandService`` drives both from
its downlink loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from fleetlink_cloud.bus import StreamEvent
from fleetlink_cloud.errors import BrokerError, CloudError, NotFound
from fleetlink_cloud.store.base import DesiredConfigRow, StaleVersion, Store
from fleetlink_protocols.errors import ProtocolError
from fleetlink_protocols.limits import MAX_DESIRED_CONFIG_BYTES
from fleetlink_protocols.messages import ConfigDocument, encode_config
from fleetlink_protocols.topics import Topics

log = logging.getLogger(__name__)

_WIDEST_VERSION: Final = 2**63 - 1  # sizes are checked as if the version took its 9 bytes
PATCH_ATTEMPTS: Final = 5


class InvalidConfig(CloudError, ValueError):
    """A document protocol v1 cannot carry, or not a map of sections (an API maps it to 422)."""


class ConfigTooLarge(InvalidConfig):
    """A document over MAX_DESIRED_CONFIG_BYTES encoded (an API maps it to 413)."""


class Publisher(Protocol):
    """What the cloud needs of an MQTT client to send downlink; returns once the broker has it."""

    async def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class GroupResult:
    """The outcome for one device of ``put_many``; ``status`` as HTTP would say it."""

    device_id: str
    status: int  # 200 stored, 404 no such device, 412 not at the expected version
    version: int | None  # the stored version (200), or the current one (412)
    detail: str = ""


def check_document(document: Mapping[str, Any]) -> None:
    """Raise InvalidConfig unless ``document`` is ``{section: {key: value}}`` that protocol v1
    carries, or ConfigTooLarge if it encodes to more than MAX_DESIRED_CONFIG_BYTES."""
    for section, keys in document.items():
        if not isinstance(keys, Mapping):
            raise InvalidConfig(f"document.{section[:64]}: a section must be a map of settings")
    try:
        size = len(encode_config(ConfigDocument(_WIDEST_VERSION, dict(document))))
    except ProtocolError as exc:
        raise InvalidConfig(f"document: {exc}") from None
    if size > MAX_DESIRED_CONFIG_BYTES:
        raise ConfigTooLarge(
            f"the document encodes to {size} bytes, more than {MAX_DESIRED_CONFIG_BYTES}"
        )


def merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` merged in: maps merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in changes.items():
        current = out.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            out[key] = merged(current, value)
        else:
            out[key] = value
    return out


class ConfigService:
    """Stores desired documents and publishes them retained. One per process with a store.

    ``publisher`` may be None (an API process without an MQTT connection): documents then stay
    unpublished until a process that has one sweeps them.
    """

    def __init__(
        self,
        store: Store,
        publisher: Publisher | None,
        *,
        prefix: str = "fleet",
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._prefix = prefix
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}  # per device: one publish at a time, in order
        self.counters: dict[str, int] = {"set": 0, "stale": 0, "published": 0, "publish_failed": 0}

    async def put(
        self,
        device_id: str,
        document: Mapping[str, Any],
        *,
        expected_version: int | None,
        set_by: str,
    ) -> DesiredConfigRow:
        """Store ``document`` as the device's desired configuration and publish it.

        ``expected_version``: what the caller read (0: none yet), None to replace any. Raises
        InvalidConfig, ConfigTooLarge, StaleVersion, NotFound.
        """
        check_document(document)
        exists = expected_version is not None and expected_version > 0
        first = 1 if exists else await self._first_version(device_id)
        try:
            row = await self._store.set_desired_config(
                device_id,
                document,
                expected_version=expected_version,
                set_by=set_by,
                set_wall_ns=self._clock(),
                first_version=first,
            )
        except StaleVersion:
            self.counters["stale"] += 1
            raise
        self.counters["set"] += 1
        log.info("%s: desired configuration version %d set by %s", device_id, row.version, set_by)
        await self.publish(device_id)
        return row

    async def patch(
        self, device_id: str, changes: Mapping[str, Any], *, set_by: str
    ) -> DesiredConfigRow:
        """Merge ``changes`` into the current document (``set_config``), retrying when another
        writer got in between. Raises InvalidConfig, ConfigTooLarge, NotFound, StaleVersion
        (after PATCH_ATTEMPTS tries)."""
        for attempt in range(PATCH_ATTEMPTS):
            current = (await self._store.get_config(device_id)).desired
            base = {} if current is None else current.document
            expected = 0 if current is None else current.version
            try:
                return await self.put(
                    device_id, merged(base, changes), expected_version=expected, set_by=set_by
                )
            except StaleVersion:
                if attempt == PATCH_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def put_many(
        self,
        device_ids: Sequence[str] | None,
        document: Mapping[str, Any],
        *,
        expected: Mapping[str, int],
        set_by: str,
    ) -> list[GroupResult]:
        """``put`` for each device (None: every registered one), in id order. A device named in
        ``expected`` must be at that version; the others are replaced whatever they hold.
        Raises InvalidConfig or ConfigTooLarge before storing anything."""
        check_document(document)
        if device_ids is None:
            device_ids = [d.id for d in await self._store.list_devices()]
        results = []
        for device_id in sorted(set(device_ids)):
            try:
                row = await self.put(
                    device_id, document, expected_version=expected.get(device_id), set_by=set_by
                )
            except NotFound as exc:
                results.append(GroupResult(device_id, 404, None, str(exc)))
            except StaleVersion as exc:
                results.append(GroupResult(device_id, 412, exc.current, str(exc)))
            else:
                results.append(GroupResult(device_id, 200, row.version))
        return results

    async def _first_version(self, device_id: str) -> int:
        """Where a device's first document starts: above the versions of older ``set_config``
        commands, which a device may still hold from the retained message they published."""
        recent = await self._store.list_commands(device_id, limit=100)
        versions = [c.args.get("version") for c in recent if c.name == "set_config"]
        return max([1, *(v + 1 for v in versions if type(v) is int)])

    async def publish(self, device_id: str, *, again: bool = False) -> bool:
        """Publish the device's current document retained unless it is out already (``again``:
        even then); True if it was published. A broker failure is logged and counted."""
        if self._publisher is None:
            return False
        lock = self._locks.setdefault(device_id, asyncio.Lock())
        async with lock:
            desired = (await self._store.get_config(device_id)).desired
            if desired is None or (desired.published and not again):
                return False
            payload = encode_config(ConfigDocument(desired.version, dict(desired.document)))
            topic = Topics(self._prefix, device_id).desired_config
            try:
                await self._publisher.publish(topic, payload, qos=1, retain=True)
            except BrokerError as exc:
                self.counters["publish_failed"] += 1
                log.warning(
                    "%s: configuration %d not published: %s", device_id, desired.version, exc
                )
                return False
            await self._store.mark_config_published(device_id, desired.version, self._clock())
            self.counters["published"] += 1
            return True

    async def sweep(self) -> int:
        """Publish every document not published yet; returns how many went out."""
        sent = 0
        for desired in await self._store.unpublished_configs():
            sent += await self.publish(desired.device_id)
        return sent

    async def on_event(self, event: StreamEvent) -> None:
        """On a ``vehicle.online`` (birth), publish again what the device does not report."""
        if event.type != "vehicle.online":
            return
        config = await self._store.get_config(event.device_id)
        desired, reported = config.desired, config.reported
        if desired is None:
            return
        known = reported is not None and desired.version in (
            reported.version,
            reported.refused_version,
        )
        await self.publish(event.device_id, again=not known)
