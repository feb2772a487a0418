"""The ingest MQTT client: the only cloud module that imports paho-mqtt.

``MqttConsumer`` subscribes to every device's uplink topics (an MQTT 5 shared subscription
``$share/<group>/...`` so N workers split the load; a plain subscription over MQTT 3.1.1, which
the embedded broker speaks) in a persistent session, and hands messages to the worker in
groups. Acknowledgements are manual (``ack``): the worker acks a message only after the store
committed it, so a crash in between leaves it with the broker, which delivers it again. The
shared subscriptions are renewed on every connect: Mosquitto 2.0.11 restores a persisted
session over a restart, but without them.

Flow control instead of loss: the broker never sends more than ``queue_size`` unacked messages
(MQTT 5 Receive Maximum; Mosquitto caps 3.1.1 clients at its ``max_inflight_messages``), and if
a broker sends more anyway, paho's network thread waits for room (``intake``) rather than
dropping. So the ingest loop must never wait on ``publish()`` itself: that PUBACK may sit behind
the full queue.

paho runs its network loop in its own thread; every callback reaches the event loop through
``call_soon_threadsafe``. ``publish()`` (used by the downlink) completes on the PUBACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fleetlink_cloud.config import BrokerSettings, TlsSettings
from fleetlink_cloud.errors import BrokerError, BrokerRefused, ConfigError
from fleetlink_cloud.ingest.intake import ConsumerCounters, Intake, Received
from fleetlink_protocols.topics import UPLINK, TopicKind

log = logging.getLogger(__name__)
_paho_log = log.getChild("paho")
# paho logs this at ERROR when its thread loops once more after a clean disconnect.
_paho_log.addFilter(lambda record: not record.getMessage().startswith("Client is not connected"))

Protocol = Literal["5", "3.1.1"]
Clock = Callable[[], int]

# CONNACK codes that no retry can fix (MQTT 5 §3.2.2.2; paho maps 3.1.1 codes 2, 4, 5 to them).
REFUSED_CODES = {0x85, 0x86, 0x87, 0x8A, 0x8C}
UNSUPPORTED_PROTOCOL = 0x84  # MQTT 5 §3.2.2.2; also paho's reading of a 3.1.1 return code 1
MAX_RECEIVE_MAXIMUM = 65535  # MQTT 5 §3.1.2.11.3: a two-byte integer


@dataclass(eq=False)
class _Link:
    """One paho client and one TCP connection; fields are touched on the event loop only,
    except ``closing``, which paho's thread reads while it waits for queue room."""

    number: int
    client: paho.Client
    protocol: Protocol
    connack: asyncio.Future[tuple[ReasonCode, bool]]
    lost: asyncio.Future[BrokerError]
    acks: dict[int, asyncio.Future[None]] = field(default_factory=dict)
    connected: bool = False
    closing: threading.Event = field(default_factory=threading.Event)


class _Mqtt5Refused(BrokerError):
    """The broker would not speak MQTT 5 (explicitly, or by closing before CONNACK)."""


def subscription_filters(
    prefix: str, protocol: Protocol, group: str, kinds: Sequence[TopicKind] = UPLINK
) -> list[str]:
    """One filter per uplink kind; shared (``$share/group/``) over MQTT 5 when a group is set."""
    share = f"$share/{group}/" if protocol == "5" and group else ""
    return [f"{share}{prefix}/+/{kind.value}" for kind in kinds]


def build_tls_context(tls: TlsSettings) -> ssl.SSLContext:
    """An SSL context from the TLS settings; raises ConfigError for unreadable files."""
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        if tls.cert_file is not None:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS files: {exc}") from exc
    return ctx


class MqttConsumer:
    """Asyncio MQTT client for ingest: persistent session, manual acks, bounded intake.

    Built by the ingest worker; ``run()`` keeps it connected (with backoff) until cancelled.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        client_id: str,
        queue_size: int = 1000,
        kinds: Sequence[TopicKind] = UPLINK,
        clock: Clock = time.time_ns,
        connect_timeout_s: float = 10.0,
        backoff_s: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self._s = settings
        self._client_id = client_id
        self._kinds = tuple(kinds)
        self._clock = clock
        self._connect_timeout_s = connect_timeout_s
        self._backoff_s = backoff_s
        self._tls = build_tls_context(settings.tls) if settings.tls is not None else None
        self._protocol_hint: Protocol = "3.1.1" if settings.protocol == "3.1.1" else "5"
        self._receive_max = min(queue_size, MAX_RECEIVE_MAXIMUM)
        self._link: _Link | None = None
        self._links = 0
        self.connected = asyncio.Event()
        self.counters = ConsumerCounters()
        self._intake = Intake(queue_size, self.counters)

    @property
    def protocol(self) -> Protocol | None:
        link = self._link
        return link.protocol if link is not None and link.connected else None

    @property
    def where(self) -> str:
        return f"{self._s.host}:{self._s.port}"

    # -- the connection ------------------------------------------------------------------------

    async def run(self) -> None:
        """Stay connected and subscribed until cancelled; then disconnect (session kept)."""
        delay = self._backoff_s[0]
        try:
            while True:
                try:
                    await self.connect()
                except BrokerRefused as exc:
                    log.error("%s; retrying in %.1f s", exc, delay)
                except BrokerError as exc:
                    log.warning("%s; retrying in %.1f s", exc, delay)
                else:
                    delay = self._backoff_s[0]
                    lost = await self.wait_disconnected()
                    log.warning("%s; reconnecting", lost)
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, self._backoff_s[1])
        finally:
            await self.disconnect()

    async def connect(self) -> bool:
        """Connect and subscribe (unless the session has a plain subscription already); returns
        session_present.

        Raises BrokerRefused (credentials, ACL) or BrokerError.
        """
        if self._link is not None:
            await self._drop(self._link)
        try:
            protocol, present = await self._connect_as(self._protocol_hint)
        except _Mqtt5Refused as exc:
            if self._s.protocol != "auto":
                raise BrokerError(f"broker {self.where} refused MQTT 5: {exc}") from None
            self.counters.protocol_fallbacks += 1
            self._protocol_hint = "3.1.1"
            log.warning("broker at %s refused MQTT 5 (%s), using MQTT 3.1.1", self.where, exc)
            protocol, present = await self._connect_as("3.1.1")
        s = self._s
        # Shared subscriptions are renewed on every connect: Mosquitto 2.0.11 keeps plain ones
        # in a persisted session over a restart, but drops the shared ones (checked).
        if not present or (protocol == "5" and s.shared_group):
            for topic_filter in subscription_filters(
                s.topic_prefix, protocol, s.shared_group, self._kinds
            ):
                await self._subscribe(topic_filter)
        return present

    async def _connect_as(self, protocol: Protocol) -> tuple[Protocol, bool]:
        loop = asyncio.get_running_loop()
        self._links += 1
        link = _Link(
            self._links,
            self._new_paho(protocol),
            protocol,
            loop.create_future(),
            loop.create_future(),
        )
        self._link = link
        self._wire(link, loop)
        try:
            reason, present = await self._handshake(link)
        except BaseException:
            self.counters.connect_failures += 1
            await self._drop(link)
            raise
        if reason.is_failure:
            self.counters.connect_failures += 1
            await self._drop(link)
            raise self._refusal(protocol, reason)
        link.connected = True
        self.connected.set()
        self.counters.connects += 1
        log.info(
            "ingest connected to %s (MQTT %s, session present: %s)", self.where, protocol, present
        )
        return protocol, present

    async def _handshake(self, link: _Link) -> tuple[ReasonCode, bool]:
        s = self._s
        props: Properties | None = None
        clean_start: Any = paho.MQTT_CLEAN_START_FIRST_ONLY
        if link.protocol == "5":
            # A persistent session needs clean start off AND an expiry (MQTT 5 §3.1.2.11.2);
            # Receive Maximum keeps the broker from sending more than our queue holds.
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = s.session_expiry_s
            props.ReceiveMaximum = self._receive_max
            clean_start = False
        try:
            await asyncio.to_thread(
                link.client.connect,
                s.host,
                s.port,
                s.keepalive_s,
                clean_start=clean_start,
                properties=props,
            )
        except ssl.SSLError as exc:
            raise BrokerError(f"TLS handshake with {self.where} failed: {exc}") from None
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot connect to {self.where}: {exc}") from None
        link.client.loop_start()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                return await asyncio.shield(link.connack)
        except TimeoutError:
            raise BrokerError(f"no CONNACK from {self.where}") from None
        except BrokerError as exc:
            # Some 3.1.1-only brokers (amqtt) close the socket instead of answering CONNACK 1.
            if link.protocol == "5" and s.protocol == "auto":
                raise _Mqtt5Refused(str(exc)) from None
            raise

    def _refusal(self, protocol: Protocol, reason: ReasonCode) -> BrokerError:
        code = reason.value
        if protocol == "5" and code == UNSUPPORTED_PROTOCOL:
            return _Mqtt5Refused(str(reason))
        text = f"{reason} (reason code 0x{code:02X})"
        if code in REFUSED_CODES:
            self.counters.broker_refused += 1
            user = self._s.username or "<none>"
            return BrokerRefused(f"broker {self.where} refused ingest user {user}: {text}")
        return BrokerError(f"broker {self.where} refused the connection: {text}")

    def _new_paho(self, protocol: Protocol) -> paho.Client:
        s = self._s
        version: dict[str, Any] = (
            {"protocol": paho.MQTTv5}
            if protocol == "5"
            else {"protocol": paho.MQTTv311, "clean_session": False}  # 3.1.1 persistent session
        )
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            self._client_id,
            reconnect_on_failure=False,  # reconnects are ours, with backoff and a fresh link
            manual_ack=True,
            **version,
        )
        client.connect_timeout = self._connect_timeout_s
        client.enable_logger(_paho_log)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if self._tls is not None:
            client.tls_set_context(self._tls)
        return client

    def _wire(self, link: _Link, loop: asyncio.AbstractEventLoop) -> None:
        """Route paho's thread callbacks to the event loop, tagged with their link."""

        def bridge(fn: Callable[..., None]) -> Callable[..., None]:
            def from_paho_thread(*args: Any) -> None:
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                    loop.call_soon_threadsafe(fn, link, *args)

            return from_paho_thread

        c = link.client
        c.on_connect = bridge(lambda lk, _c, _u, flags, rc, _p: self._on_connack(lk, rc, flags))
        c.on_disconnect = bridge(lambda lk, _c, _u, _f, rc, _p: self._on_lost(lk, rc))
        c.on_publish = bridge(lambda lk, _c, _u, mid, rc, _p: self._on_ack(lk, mid, [rc]))
        c.on_subscribe = bridge(lambda lk, _c, _u, mid, rcs, _p: self._on_ack(lk, mid, rcs))
        c.on_message = lambda _c, _u, msg: self._on_message_thread(link, loop, msg)

    def _on_message_thread(
        self, link: _Link, loop: asyncio.AbstractEventLoop, msg: paho.MQTTMessage
    ) -> None:
        """In paho's thread: wait for queue room (backpressure), then hand over to the loop."""

        def received() -> Received:
            topic = msg._topic.decode("utf-8", "replace")  # invalid UTF-8: a dead letter
            payload = bytes(msg.payload)
            return Received(
                topic, payload, msg.qos, msg.retain, self._clock(), msg.mid, link.number
            )

        self._intake.offer(received, loop, link.closing)

    def _on_connack(self, link: _Link, reason: ReasonCode, flags: paho.ConnectFlags) -> None:
        # Connected from here on, not once connect() resumes: a persistent session's unacked
        # messages arrive right behind the CONNACK, and their acks must count.
        if not reason.is_failure and not link.closing.is_set():
            link.connected = True
        if not link.connack.done():
            link.connack.set_result((reason, flags.session_present))

    def _on_lost(self, link: _Link, reason: ReasonCode) -> None:
        ended = "closed" if link.closing.is_set() else "lost"
        err = BrokerError(f"ingest connection to {self.where} {ended}: {reason}")
        link.closing.set()
        if not link.connack.done():
            link.connack.set_exception(BrokerError(f"connection closed before CONNACK: {reason}"))
        if link.connected:
            link.connected = False
            self.counters.disconnects += 1
        if link is self._link:
            self.connected.clear()
        if not link.lost.done():
            link.lost.set_result(err)
        for fut in link.acks.values():
            if not fut.done():
                fut.set_exception(BrokerError(str(err)))

    def _on_ack(self, link: _Link, mid: int, reasons: list[ReasonCode]) -> None:
        fut = link.acks.get(mid)
        if fut is None or fut.done():
            return
        bad = next((r for r in reasons if r.is_failure), None)
        if bad is None:
            fut.set_result(None)
        else:
            fut.set_exception(BrokerError(f"broker refused: {bad} (0x{bad.value:02X}, mid {mid})"))

    async def _await_ack(self, link: _Link, mid: int) -> None:
        # The ack reaches the loop through call_soon_threadsafe, so it cannot overtake this
        # registration, which runs synchronously right after paho's publish()/subscribe().
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        link.acks[mid] = fut
        try:
            await fut
        finally:
            link.acks.pop(mid, None)

    async def _subscribe(self, topic_filter: str) -> None:
        link = self._live_link()
        rc, mid = link.client.subscribe(topic_filter, qos=1)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise BrokerError(f"subscribe to {topic_filter!r} failed: {paho.error_string(rc)}")
        try:
            await self._await_ack(link, mid)
        except BrokerError as exc:
            raise BrokerRefused(f"subscription to {topic_filter!r} refused: {exc}") from None
        self.counters.subscribes += 1

    def _live_link(self) -> _Link:
        link = self._link
        if link is None or not link.connected:
            raise BrokerError(f"not connected to {self.where}")
        return link

    async def wait_disconnected(self) -> BrokerError:
        """Wait until the current connection ends; returns why (at once if there is none)."""
        link = self._link
        if link is None:
            return BrokerError(f"not connected to {self.where}")
        return await asyncio.shield(link.lost)

    async def disconnect(self) -> None:
        """Send DISCONNECT (the session stays with the broker) and stop paho's thread."""
        link = self._link
        if link is None:
            return
        link.closing.set()
        if link.connected:
            link.client.disconnect()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._connect_timeout_s):
                    await asyncio.shield(link.lost)
        await self._drop(link)

    async def _drop(self, link: _Link) -> None:
        """Stop the link's thread and close its socket; safe to call twice."""
        if link is self._link:
            self._link = None
            self.connected.clear()
        link.closing.set()  # releases a paho thread waiting for queue room
        if not link.connack.done():
            link.connack.cancel()
        if not link.lost.done() and link.client.socket() is not None:
            link.client.disconnect()
        await asyncio.to_thread(link.client.loop_stop)
        sock = link.client.socket()
        if sock is not None:
            sock.close()
        self._on_lost(link, ReasonCode(PacketTypes.DISCONNECT, "Normal disconnection"))

    # -- messages ------------------------------------------------------------------------------

    async def next_group(self, max_messages: int) -> list[Received]:
        """Wait for a message, then take up to ``max_messages`` already queued (no waiting)."""
        return await self._intake.next_group(max_messages)

    @property
    def queued(self) -> int:
        return self._intake.queued

    def ack(self, msg: Received) -> bool:
        """Acknowledge a committed message (PUBACK); False if its connection is gone.

        Call in the order messages were received (MQTT 3.1.1 §4.6 wants PUBACKs in order).
        """
        if msg.qos == 0:
            return True
        link = self._link
        if link is None or link.number != msg.link or not link.connected:
            self.counters.acks_void += 1
            return False
        link.client.ack(msg.mid, msg.qos)
        self.counters.acked += 1
        return True

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish; returns once the broker PUBACKed (QoS 1). Raises BrokerError.

        Never await this from the ingest loop itself (see the module docstring).
        """
        link = self._live_link()
        try:
            info = link.client.publish(topic, payload, qos=qos, retain=retain)
        except ValueError as exc:
            self.counters.publish_failures += 1
            raise BrokerError(f"cannot publish to {topic!r}: {exc}") from exc
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.counters.publish_failures += 1
            raise BrokerError(f"publish to {topic!r} failed: {paho.error_string(info.rc)}")
        self.counters.publishes += 1
        if qos == 0:
            return
        try:
            await self._await_ack(link, info.mid)
        except BrokerError:
            self.counters.publish_failures += 1
            raise
        self.counters.pubacks += 1
