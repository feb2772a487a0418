"""The device's configuration report on its way to the broker: retained on ``config``.

``RemoteConfig`` offers a ``ReportedConfig`` after every outcome; ``ConfigReporter`` keeps only
the newest one (it is retained: an older one says nothing the newer does not) and publishes it
whenever the uplink's connection is up, like ``commands.AckQueue`` does for acks.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from fleetlink_edge.backoff import Backoff
from fleetlink_edge.errors import PublishRejected, UplinkError
from fleetlink_protocols.errors import ProtocolError
from fleetlink_protocols.messages import ReportedConfig, encode_reported_config

log = logging.getLogger(__name__)


class ReportLink(Protocol):
    """What the reporter needs of ``mqtt.MqttClient``."""

    connected: asyncio.Event

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        require_subscriber: bool = False,
    ) -> None: ...


class ConfigReporter:
    """Sends the newest report retained on ``config`` whenever the link is up; never blocks.

    One slot: a report not sent yet is replaced by a newer one (only the newest matters, it is
    retained). A report that could not be sent (link lost, no subscriber) is sent again after a
    backoff; one the broker refuses (ACL) is dropped and counted.
    """

    def __init__(
        self, link: ReportLink, topic: str, retry: Backoff, *, require_subscriber: bool
    ) -> None:
        self._link = link
        self._topic = topic
        self._retry = retry
        self._require_subscriber = require_subscriber
        self._pending: bytes | None = None
        self._ready = asyncio.Event()
        self.counters: dict[str, int] = dict.fromkeys(
            ("offered", "sent", "replaced", "retries", "refused", "unencodable"), 0
        )

    @property
    def pending(self) -> bool:
        return self._pending is not None

    def offer(self, report: ReportedConfig) -> None:
        try:
            payload = encode_reported_config(report)
        except ProtocolError as exc:
            self.counters["unencodable"] += 1
            log.error("configuration report cannot be encoded: %s", exc)
            return
        self.counters["offered"] += 1
        self.counters["replaced"] += self._pending is not None
        self._pending = payload
        self._ready.set()

    async def run(self) -> None:
        """Send until cancelled."""
        while True:
            await self._ready.wait()
            await self._link.connected.wait()
            payload = self._pending
            if payload is None:
                self._ready.clear()
                continue
            if not await self._send(payload):
                self.counters["retries"] += 1
                await asyncio.sleep(self._retry.next_delay_s())

    async def _send(self, payload: bytes) -> bool:
        """Publish ``payload``; False if it must be tried again."""
        try:
            await self._link.publish(
                self._topic,
                payload,
                qos=1,
                retain=True,
                require_subscriber=self._require_subscriber,
            )
        except PublishRejected as exc:
            self.counters["refused"] += 1
            log.error("broker refused the configuration report on %s: %s", self._topic, exc)
        except UplinkError as exc:
            log.info("configuration report kept for the next try: %s", exc)
            return False
        else:
            self.counters["sent"] += 1
            self._retry.reset()
        if self._pending is payload:  # not replaced meanwhile
            self._pending = None
        return True
