"""The MQTT adapter: the only edge module that imports paho-mqtt.

``MqttClient`` gives the uplink an asyncio interface: ``await publish()`` returns once the broker's
PUBACK arrived and raises ``PublishRejected`` when an MQTT 5 PUBACK carries a failure reason code
(an ACL denial). paho's network loop runs in its own thread (``loop_start``); every paho callback
is handed to the event loop with ``call_soon_threadsafe`` and touches asyncio state only there.

Each ``connect()`` builds a fresh paho client (a "link"): callbacks of a dead link are ignored, and
its unacknowledged messages die with it, because the outbox, not paho, owns redelivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fleetlink_edge.config import TlsSettings, UplinkSettings
from fleetlink_edge.errors import (
    BrokerRefused,
    ConfigError,
    NotDelivered,
    PublishRejected,
    UplinkError,
)

log = logging.getLogger(__name__)


def _not_after_close(record: logging.LogRecord) -> bool:
    # paho's thread makes one more pass after every socket close and logs it at ERROR; we
    # report the loss ourselves, with its reason.
    return not str(record.msg).startswith("Client is not connected")


_paho_log = log.getChild("paho")
_paho_log.addFilter(_not_after_close)

Protocol = Literal["5", "3.1.1"]

# CONNACK reason codes that mean "this client may not connect as configured" (MQTT 5 §3.2.2.2;
# paho maps MQTT 3.1.1 return codes 2, 4, 5 to 0x85, 0x86, 0x87). Retrying will not help until an
# operator fixes credentials or ACLs, so these raise BrokerRefused; other failures are transient.
# PUBACK "No matching subscribers" (MQTT 5 §3.4.2.1): accepted, and dropped for want of anyone
# to deliver it to. Mosquitto 2.0 answers it, for example, for a shared subscription whose members
# have not reconnected since the broker restarted (their sessions are not matched until then).
NO_MATCHING_SUBSCRIBERS = 0x10
REFUSED_CODES = {0x85, 0x86, 0x87, 0x8A, 0x8C}
# Mosquitto answers a wrong password with 0x87 "Not authorized", so both read as credentials.
REFUSED_NAMES = {0x85: "client id", 0x86: "credentials", 0x87: "credentials", 0x8A: "device"}
# The refusals another password may cure (CredentialsRefused): the agent then offers the next.
CREDENTIAL_CODES = frozenset({0x86, 0x87})
# "Unsupported protocol version" (MQTT 5 §3.2.2.2); paho also reports a 3.1.1 broker's CONNACK
# return code 1 (MQTT 3.1.1 §3.2.2.3) as this.
UNSUPPORTED_PROTOCOL = 0x84


@dataclass(frozen=True, slots=True)
class Message:
    """An MQTT application message, outgoing (the will) or received on a subscription."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True, slots=True)
class ConnectInfo:
    """What the broker said in its CONNACK."""

    protocol: Protocol
    session_present: bool


@dataclass(slots=True)
class MqttCounters:
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    protocol_fallbacks: int = 0
    publishes: int = 0
    pubacks: int = 0
    publish_rejected: int = 0
    bytes_published: int = 0
    messages_received: int = 0
    messages_dropped: int = 0  # incoming queue full
    messages_rejected: int = 0  # topic not valid UTF-8
    no_subscribers: int = 0  # PUBACK 0x10 where a subscriber was required


@dataclass(eq=False)
class _Link:
    """One paho client and one TCP connection; everything here is touched on the event loop."""

    client: paho.Client
    protocol: Protocol
    connack: asyncio.Future[tuple[ReasonCode, bool]]
    lost: asyncio.Future[UplinkError]
    acks: dict[int, asyncio.Future[int]] = field(default_factory=dict)
    connected: bool = False
    closing: bool = False  # we asked for the end: not a fault worth a warning


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when the handshake fails: paho drops the socket without closing it."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def build_tls_context(tls: TlsSettings) -> ssl.SSLContext:
    """An SSL context from the TLS settings; raises ConfigError for unreadable files."""
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        if tls.cert_file is not None:
            key = str(tls.key_file) if tls.key_file else None
            ctx.load_cert_chain(str(tls.cert_file), key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS files: {exc}") from exc
    ctx.sslsocket_class = _ClosingSSLSocket
    if tls.insecure:  # self-signed test brokers only: no hostname or chain check
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class MqttClient:
    """Asyncio MQTT client with QoS 1 publish-until-PUBACK, a persistent session and a will.

    Created by the uplink (and tests); ``connect()`` may be called again after a disconnect.
    """

    def __init__(
        self, settings: UplinkSettings, client_id: str, *, will: Message | None = None
    ) -> None:
        self._settings = settings
        self._client_id = client_id
        self._will = will
        self._tls = build_tls_context(settings.tls) if settings.tls is not None else None
        # An explicit refusal of MQTT 5 is remembered: the broker will not learn it overnight.
        self._protocol_hint: Protocol = "3.1.1" if settings.protocol == "3.1.1" else "5"
        self._password = settings.password
        self._link: _Link | None = None
        self._incoming: asyncio.Queue[Message] = asyncio.Queue(settings.incoming_queue_size)
        self.connected = asyncio.Event()
        self.counters = MqttCounters()

    @property
    def protocol(self) -> Protocol | None:
        """The protocol of the current connection, None when disconnected."""
        link = self._link
        return link.protocol if link is not None and link.connected else None

    @property
    def is_connected(self) -> bool:
        return self.connected.is_set()

    async def connect(self, *, password: str | None = None) -> ConnectInfo:
        """Connect and wait for the CONNACK; raises CredentialsRefused, BrokerRefused or
        UplinkError. ``password`` replaces ``uplink.password`` for this connection."""
        self._password = self._settings.password if password is None else password
        if self._link is not None:
            await self._drop_link(self._link)
        try:
            return await self._connect_as(self._protocol_hint)
        except _Mqtt5RefusedError as exc:
            if self._settings.protocol != "auto":
                raise UplinkError(f"broker refused MQTT 5: {exc}") from None
            self.counters.protocol_fallbacks += 1
            if exc.explicit:
                self._protocol_hint = "3.1.1"
            log.warning("broker at %s refused MQTT 5 (%s), using MQTT 3.1.1", self._where, exc)
            return await self._connect_as("3.1.1")

    @property
    def _where(self) -> str:
        return f"{self._settings.host}:{self._settings.port}"

    async def _connect_as(self, protocol: Protocol) -> ConnectInfo:
        loop = asyncio.get_running_loop()
        link = _Link(self._new_paho(protocol), protocol, loop.create_future(), loop.create_future())
        self._link = link
        self._wire(link, loop)
        try:
            reason, session_present = await self._handshake(link)
        except BaseException:
            self.counters.connect_failures += 1
            await self._drop_link(link)
            raise
        if reason.is_failure:
            self.counters.connect_failures += 1
            await self._drop_link(link)
            raise self._refusal(protocol, reason)
        link.connected = True
        self.connected.set()
        self.counters.connects += 1
        log.info(
            "connected to %s (MQTT %s, session present: %s)", self._where, protocol, session_present
        )
        return ConnectInfo(protocol, session_present)

    async def _handshake(self, link: _Link) -> tuple[ReasonCode, bool]:
        """Open the socket, send CONNECT, start paho's thread and wait for the CONNACK."""
        s = self._settings
        props: Properties | None = None
        clean_start: Any = paho.MQTT_CLEAN_START_FIRST_ONLY
        if link.protocol == "5":
            # Persistent session: MQTT 5 keeps it only with clean start off and an expiry.
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = s.session_expiry_s
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
            raise UplinkError(f"TLS handshake with {self._where} failed: {exc}") from None
        except (OSError, ValueError) as exc:
            raise UplinkError(f"cannot connect to {self._where}: {exc}") from None
        link.client.loop_start()
        try:
            async with asyncio.timeout(s.connect_timeout_s):
                return await asyncio.shield(link.connack)
        except TimeoutError:
            raise UplinkError(f"no CONNACK from {self._where} in {s.connect_timeout_s} s") from None
        except UplinkError as exc:
            # Some MQTT 3.1.1-only brokers close the socket instead of answering CONNACK 1.
            if link.protocol == "5" and s.protocol == "auto":
                raise _Mqtt5RefusedError(str(exc), explicit=False) from None
            raise

    def _refusal(self, protocol: Protocol, reason: ReasonCode) -> UplinkError:
        code = reason.value
        if protocol == "5" and code == UNSUPPORTED_PROTOCOL:
            return _Mqtt5RefusedError(str(reason), explicit=True)
        text = f"{reason} (reason code 0x{code:02X})"
        if code in REFUSED_CODES:
            what = REFUSED_NAMES.get(code, "connection")
            user = self._settings.username or "<none>"
            kind = CredentialsRefused if code in CREDENTIAL_CODES else BrokerRefused
            return kind(f"broker refused {what} for user {user}: {text}")
        return UplinkError(f"broker {self._where} refused the connection: {text}")

    def _new_paho(self, protocol: Protocol) -> paho.Client:
        s = self._settings
        # MQTT 3.1.1 persistent session: clean_session False (MQTT 5 sets it in CONNECT).
        version: dict[str, Any] = (
            {"protocol": paho.MQTTv5}
            if protocol == "5"
            else {"protocol": paho.MQTTv311, "clean_session": False}
        )
        # reconnect_on_failure False: reconnects are ours, with backoff and a fresh link.
        client = paho.Client(
            CallbackAPIVersion.VERSION2, self._client_id, reconnect_on_failure=False, **version
        )
        client.connect_timeout = s.connect_timeout_s
        client.enable_logger(_paho_log)
        if s.username is not None:
            client.username_pw_set(s.username, self._password)
        if self._tls is not None:
            client.tls_set_context(self._tls)
        if self._will is not None:
            w = self._will
            client.will_set(w.topic, w.payload, qos=w.qos, retain=w.retain)
        return client

    def _wire(self, link: _Link, loop: asyncio.AbstractEventLoop) -> None:
        """Route paho's thread callbacks to the loop, tagged with their link."""

        def bridge(fn: Callable[..., None]) -> Callable[..., None]:
            def from_paho_thread(*args: Any) -> None:
                # RuntimeError: the loop closed first (interpreter shutdown); nobody waits.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(fn, link, *args)

            return from_paho_thread

        c = link.client
        c.on_connect = bridge(lambda lk, _c, _u, flags, rc, _p: self._on_connack(lk, rc, flags))
        c.on_disconnect = bridge(lambda lk, _c, _u, _f, rc, _p: self._on_lost(lk, rc))
        c.on_publish = bridge(lambda lk, _c, _u, mid, rc, _p: self._on_ack(lk, mid, [rc]))
        c.on_subscribe = bridge(lambda lk, _c, _u, mid, rcs, _p: self._on_ack(lk, mid, rcs))
        c.on_message = bridge(lambda lk, _c, _u, msg: self._on_message(lk, msg))

    def _on_connack(self, link: _Link, reason: ReasonCode, flags: paho.ConnectFlags) -> None:
        if not link.connack.done():
            link.connack.set_result((reason, flags.session_present))

    def _on_lost(self, link: _Link, reason: ReasonCode) -> None:
        ended = "closed" if link.closing else "lost"
        err = UplinkError(f"connection to {self._where} {ended}: {reason}")
        if not link.connack.done():
            link.connack.set_exception(UplinkError(f"connection closed before CONNACK: {reason}"))
        if link.connected:
            link.connected = False
            self.counters.disconnects += 1
            log.log(logging.INFO if link.closing else logging.WARNING, "%s", err)
        if link is self._link:
            self.connected.clear()
        if not link.lost.done():
            link.lost.set_result(err)
        for fut in link.acks.values():
            if not fut.done():
                fut.set_exception(UplinkError(str(err)))  # one instance per waiter

    def _on_ack(self, link: _Link, mid: int, reasons: list[ReasonCode]) -> None:
        fut = link.acks.get(mid)
        if fut is None or fut.done():
            return
        bad = next((r for r in reasons if r.is_failure), None)
        if bad is None:
            fut.set_result(reasons[0].value if reasons else 0)
        else:
            fut.set_exception(PublishRejected(f"{bad} (reason code 0x{bad.value:02X}, mid {mid})"))

    def _on_message(self, link: _Link, msg: paho.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            self.counters.messages_rejected += 1
            return
        self.counters.messages_received += 1
        try:
            self._incoming.put_nowait(Message(topic, bytes(msg.payload), msg.qos, msg.retain))
        except asyncio.QueueFull:
            self.counters.messages_dropped += 1

    def _live_link(self) -> _Link:
        link = self._link
        if link is None or not link.connected:
            raise UplinkError(f"not connected to {self._where}")
        return link

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        require_subscriber: bool = False,
    ) -> None:
        """Publish and wait for the PUBACK (QoS 1); raises PublishRejected or UplinkError.

        ``require_subscriber``: an MQTT 5 PUBACK "No matching subscribers" raises NotDelivered
        (the broker dropped the message: nobody, not even an offline session, was to get it).
        """
        link = self._live_link()
        try:
            info = link.client.publish(topic, payload, qos=qos, retain=retain)
        except ValueError as exc:  # bad topic or oversize payload: a caller bug, not the link
            raise PublishRejected(f"cannot publish to {topic!r}: {exc}") from exc
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise UplinkError(f"publish failed: {paho.error_string(info.rc)}")
        self.counters.publishes += 1
        self.counters.bytes_published += len(payload)
        if qos == 0:
            return
        try:
            reason = await self._await_ack(link, info.mid)
        except PublishRejected:
            self.counters.publish_rejected += 1
            raise
        self.counters.pubacks += 1
        if require_subscriber and reason == NO_MATCHING_SUBSCRIBERS:
            self.counters.no_subscribers += 1
            raise NotDelivered(f"no subscriber for {topic} (PUBACK reason code 0x10)")

    async def subscribe(self, topic_filter: str, *, qos: int = 1) -> None:
        """Subscribe and wait for the SUBACK; raises UplinkError when the broker refuses."""
        link = self._live_link()
        rc, mid = link.client.subscribe(topic_filter, qos=qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise UplinkError(f"subscribe failed: {paho.error_string(rc)}")
        try:
            await self._await_ack(link, mid)
        except PublishRejected as exc:
            raise UplinkError(f"subscription to {topic_filter!r} refused: {exc}") from None

    async def _await_ack(self, link: _Link, mid: int) -> int:
        """The (first) reason code of the PUBACK or SUBACK for ``mid``."""
        # The ack callback reaches the loop through call_soon_threadsafe, so it cannot run before
        # this synchronous registration that follows paho's publish()/subscribe() call.
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        link.acks[mid] = fut
        try:
            return await fut
        finally:
            link.acks.pop(mid, None)

    async def messages(self) -> AsyncIterator[Message]:
        """Incoming messages of every subscription, across reconnects; never ends by itself."""
        while True:
            yield await self._incoming.get()

    async def wait_disconnected(self) -> UplinkError:
        """Wait until the current connection is lost; returns why (immediately if none)."""
        link = self._link
        if link is None:
            return UplinkError(f"not connected to {self._where}")
        return await asyncio.shield(link.lost)

    async def disconnect(self) -> None:
        """Send DISCONNECT (the broker then discards the will) and stop the network thread."""
        link = self._link
        if link is None:
            return
        if link.connected:
            link.closing = True
            link.client.disconnect()
            try:
                async with asyncio.timeout(self._settings.connect_timeout_s):
                    await asyncio.shield(link.lost)
            except TimeoutError:
                log.warning("no clean disconnect from %s, closing the socket", self._where)
        await self._drop_link(link)

    async def _drop_link(self, link: _Link) -> None:
        """Stop the link's thread and close its socket; safe to call twice."""
        if link is self._link:
            self._link = None
            self.connected.clear()
        link.closing = True
        if not link.connack.done():
            link.connack.cancel()
        if not link.lost.done() and link.client.socket() is not None:
            # A link paho still holds open: DISCONNECT lets its thread finish and exit.
            link.client.disconnect()
        await asyncio.to_thread(link.client.loop_stop)
        sock = link.client.socket()
        if sock is not None:
            sock.close()
        self._on_lost(link, ReasonCode(PacketTypes.DISCONNECT, "Normal disconnection"))

    async def __aenter__(self) -> MqttClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()


class CredentialsRefused(BrokerRefused):
    """The broker refused the user name and password (CONNACK 0x86/0x87; MQTT 3.1.1 return
    codes 4 and 5): another password may do."""


class _Mqtt5RefusedError(UplinkError):
    """The broker would not speak MQTT 5 (explicitly, or by closing before CONNACK)."""

    def __init__(self, text: str, *, explicit: bool) -> None:
        super().__init__(text)
        self.explicit = explicit
