"""The ingest MQTT consumer against a real Mosquitto: persistent session, manual acks, faults."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest

from fleetlink_cloud.errors import BrokerRefused
from fleetlink_cloud.ingest.consumer import MqttConsumer, subscription_filters
from fleetlink_cloud.ingest.intake import Received
from tests.cloud.ingest.conftest import publish, until
from tests.cloud.ingest.fleet import DEV, topic
from tests.cloud.ingest.worker_proc import broker_settings
from tests.peers.mosquitto import Mosquitto, MqttProxy

pytestmark = pytest.mark.mosquitto


def test_subscription_filters() -> None:
    assert subscription_filters("fleet", "5", "ingest") == [
        "$share/ingest/fleet/+/live",
        "$share/ingest/fleet/+/history",
        "$share/ingest/fleet/+/events",
        "$share/ingest/fleet/+/status",
        "$share/ingest/fleet/+/ack",
        "$share/ingest/fleet/+/config",
    ]
    assert subscription_filters("acme/prod", "5", "")[0] == "acme/prod/+/live"
    assert subscription_filters("fleet", "3.1.1", "ingest")[0] == "fleet/+/live"


@contextlib.asynccontextmanager
async def running(consumer: MqttConsumer) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(consumer.run(), name="consumer")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def take(consumer: MqttConsumer, n: int, timeout_s: float = 20.0) -> list[Received]:
    got: list[Received] = []
    async with asyncio.timeout(timeout_s):
        while len(got) < n:
            got += await consumer.next_group(n - len(got))
    return got


def payloads(n: int, tag: str = "m") -> list[bytes]:
    return [f"{tag}{i}".encode() for i in range(n)]


async def test_unacked_messages_come_back_on_the_next_connection(broker: Mosquitto) -> None:
    consumer = MqttConsumer(broker_settings(broker.port), client_id="ingest-a")
    async with running(consumer):
        await until(consumer.connected.is_set)
        assert consumer.protocol == "5"
        await asyncio.to_thread(publish, broker.port, DEV, payloads(6))
        first = await take(consumer, 6)
        assert [(m.topic, m.payload, m.qos) for m in first] == [
            (topic("live"), p, 1) for p in payloads(6)
        ]
        for msg in first[:3]:
            assert consumer.ack(msg)
        await asyncio.sleep(0.2)  # let paho send the PUBACKs
    assert consumer.counters.acked == 3
    # A new process with the same client id: the broker kept the session and the three unacked.
    again = MqttConsumer(broker_settings(broker.port), client_id="ingest-a")
    async with running(again):
        redelivered = await take(again, 3)
        assert [m.payload for m in redelivered] == payloads(6)[3:]
        for msg in redelivered:
            assert again.ack(msg)
        await asyncio.to_thread(publish, broker.port, DEV, [b"fresh"])
        (fresh,) = await take(again, 1)
        assert fresh.payload == b"fresh"
        again.ack(fresh)
        await asyncio.sleep(0.2)
        assert again.queued == 0
    assert again.counters.subscribes == 6  # shared subscriptions are renewed on every connect


NO_MATCHING_SUBSCRIBERS = 0x10  # MQTT 5 PUBACK reason code (§3.4.2.1): accepted, delivered to none


async def test_a_shared_subscription_is_renewed_after_a_broker_restart(broker: Mosquitto) -> None:
    consumer = MqttConsumer(broker_settings(broker.port), client_id="ingest-f")
    await consumer.connect()
    await consumer.disconnect()  # the session (with its shared subscriptions) stays
    assert await asyncio.to_thread(publish, broker.port, DEV, [b"kept"]) == [0]
    await asyncio.to_thread(broker.restart)
    # Mosquitto 2.0.11 restores the session and its queued message, not its shared
    # subscriptions: until a worker renews them, what devices publish reaches nobody.
    gap = await asyncio.to_thread(publish, broker.port, DEV, [b"lost"])
    assert gap == [NO_MATCHING_SUBSCRIBERS]
    async with running(consumer):
        (kept,) = await take(consumer, 1)
        assert kept.payload == b"kept"
        consumer.ack(kept)
        await until(lambda: consumer.counters.subscribes == 12)  # renewed, session present
        assert await asyncio.to_thread(publish, broker.port, DEV, [b"after"]) == [0]
        (after,) = await take(consumer, 1)
        assert after.payload == b"after"
        consumer.ack(after)


async def test_an_ack_on_a_dead_connection_is_void_and_the_message_comes_again(
    broker: Mosquitto,
) -> None:
    async with MqttProxy(broker.port) as proxy:
        consumer = MqttConsumer(
            broker_settings(proxy.port), client_id="ingest-b", backoff_s=(0.05, 0.2)
        )
        async with running(consumer):
            await until(consumer.connected.is_set)
            await asyncio.to_thread(publish, broker.port, DEV, [b"one"])
            (msg,) = await take(consumer, 1)
            proxy.cut()  # the link dies before the commit finished
            await until(lambda: consumer.counters.disconnects == 1)
            assert not consumer.ack(msg)
            (again,) = await take(consumer, 1)
            assert (again.payload, again.mid) == (b"one", msg.mid)
            assert again.link != msg.link
            assert consumer.ack(again)  # counts even before connect() has resumed
            await until(lambda: consumer.counters.connects == 2)
    assert consumer.counters.acks_void == 1
    assert consumer.counters.connects == 2


async def test_falls_back_to_mqtt311_when_the_broker_refuses_mqtt5(broker: Mosquitto) -> None:
    async with MqttProxy(broker.port, refuse_mqtt5=True) as proxy:
        consumer = MqttConsumer(broker_settings(proxy.port), client_id="ingest-c")
        async with running(consumer):
            await until(consumer.connected.is_set)
            assert consumer.protocol == "3.1.1"
            await asyncio.to_thread(publish, broker.port, DEV, payloads(3))
            got = await take(consumer, 3)
            assert [m.payload for m in got] == payloads(3)
            assert all(consumer.ack(m) for m in got)
        assert proxy.refused_mqtt5 == 1
    assert consumer.counters.protocol_fallbacks == 1
    assert consumer.counters.subscribes == 6  # plain filters: 3.1.1 has no shared subscriptions


async def test_wrong_credentials_are_logged_and_retried(
    broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    settings = broker_settings(broker.port, password="wrong")
    consumer = MqttConsumer(settings, client_id="ingest-d", backoff_s=(0.05, 0.1))
    with pytest.raises(BrokerRefused, match="refused ingest user backend"):
        await consumer.connect()
    async with running(consumer) as task:
        await until(lambda: consumer.counters.broker_refused >= 3)
        assert not task.done()
    refused = [r for r in caplog.records if "refused ingest user backend" in r.getMessage()]
    assert refused
    assert all(r.levelno == logging.ERROR for r in refused)
    assert consumer.counters.connects == 0


async def test_the_broker_never_sends_more_than_the_queue_holds(broker: Mosquitto) -> None:
    consumer = MqttConsumer(broker_settings(broker.port), client_id="ingest-e", queue_size=5)
    async with running(consumer):
        await until(consumer.connected.is_set)
        await asyncio.to_thread(publish, broker.port, DEV, payloads(40))
        await until(lambda: consumer.queued == 5)
        await asyncio.sleep(0.3)
        assert consumer.queued == 5  # Receive Maximum: the rest waits at the broker
        got: list[Received] = []
        while len(got) < 40:
            group = await take(consumer, 1)
            consumer.ack(group[0])
            got += group
        assert [m.payload for m in got] == payloads(40)  # nothing dropped, in order
