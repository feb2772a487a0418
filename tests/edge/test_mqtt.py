"""The paho adapter against a real Mosquitto: PUBACK-bound publish, ACL rejections, refusals,
MQTT 3.1.1 fallback, will, persistent sessions and TLS."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from fleetlink_edge.config import TlsSettings, UplinkSettings
from fleetlink_edge.errors import BrokerRefused, ConfigError, PublishRejected, UplinkError
from fleetlink_edge.mqtt import Message, MqttClient
from fleetlink_protocols.topics import mosquitto_acl_entries
from tests.peers import free_port
from tests.peers.mosquitto import Mosquitto, MqttProxy

pytestmark = pytest.mark.mosquitto

USERS = {"veh001": "secret1", "veh002": "secret2", "backend": "secret3"}
ACL = mosquitto_acl_entries("fleet").splitlines()
WAIT_S = 10.0


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    with Mosquitto(USERS, ACL) as b:
        yield b


def settings(port: int, user: str = "veh001", **kw: object) -> UplinkSettings:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "username": user,
        "password": USERS.get(user),
        "keepalive_s": 5,
        "connect_timeout_s": 5.0,
    }
    values.update(kw)
    return UplinkSettings.model_validate(values)


@pytest.fixture
async def backend(broker: Mosquitto) -> AsyncIterator[MqttClient]:
    client = MqttClient(settings(broker.port, "backend"), "backend-test")
    async with client:
        await client.subscribe("fleet/#", qos=1)
        yield client


async def next_message(client: MqttClient, timeout_s: float = WAIT_S) -> Message:
    async with asyncio.timeout(timeout_s):
        return await anext(aiter(client.messages()))


async def until(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


async def no_message(client: MqttClient, within_s: float = 0.5) -> None:
    with pytest.raises(TimeoutError):
        await next_message(client, within_s)


async def test_publish_returns_after_puback_and_backend_receives(
    broker: Mosquitto, backend: MqttClient
) -> None:
    async with MqttClient(settings(broker.port), "veh001") as dev:
        assert dev.protocol == "5"
        await dev.publish("fleet/veh001/live", b"\x01\x02", qos=1)
        assert dev.counters.pubacks == 1
        assert dev.counters.bytes_published == 2
    msg = await next_message(backend)
    assert msg == Message("fleet/veh001/live", b"\x01\x02", qos=1, retain=False)


async def test_acl_denial_raises_publish_rejected(broker: Mosquitto, backend: MqttClient) -> None:
    async with MqttClient(settings(broker.port), "veh001") as dev:
        with pytest.raises(PublishRejected, match=r"0x87"):
            await dev.publish("fleet/veh002/live", b"spoof")
        assert dev.counters.publish_rejected == 1
        # The link survives a rejection: the next allowed publish goes through.
        await dev.publish("fleet/veh001/live", b"ok")
    assert (await next_message(backend)).payload == b"ok"


async def test_wrong_password_is_broker_refused(broker: Mosquitto) -> None:
    dev = MqttClient(settings(broker.port, password="wrong"), "veh001")
    with pytest.raises(BrokerRefused, match=r"credentials for user veh001.*0x8[67]"):
        await dev.connect()
    assert not dev.is_connected
    assert dev.counters.connect_failures == 1
    with pytest.raises(UplinkError, match="not connected"):
        await dev.publish("fleet/veh001/live", b"x")


async def test_unknown_user_over_mqtt311_is_broker_refused(broker: Mosquitto) -> None:
    dev = MqttClient(settings(broker.port, "nobody", password="x", protocol="3.1.1"), "nobody")
    with pytest.raises(BrokerRefused, match=r"user nobody"):
        await dev.connect()


async def test_nothing_listening_is_uplink_error() -> None:
    dev = MqttClient(settings(free_port()), "veh001")
    with pytest.raises(UplinkError, match="cannot connect") as info:
        await dev.connect()
    assert not isinstance(info.value, BrokerRefused)


async def test_falls_back_to_mqtt311_when_broker_refuses_mqtt5(
    broker: Mosquitto, backend: MqttClient
) -> None:
    async with MqttProxy(broker.port, refuse_mqtt5=True) as proxy:
        dev = MqttClient(settings(proxy.port), "veh001")
        info = await dev.connect()
        assert (info.protocol, dev.protocol) == ("3.1.1", "3.1.1")
        assert dev.counters.protocol_fallbacks == 1
        await dev.publish("fleet/veh001/live", b"via 3.1.1")
        assert (await next_message(backend)).payload == b"via 3.1.1"
        await dev.disconnect()
        # The refusal is remembered: the reconnect goes straight to 3.1.1.
        await dev.connect()
        assert proxy.refused_mqtt5 == 1
        assert dev.counters.protocol_fallbacks == 1
        await dev.disconnect()


async def test_mqtt5_only_setting_does_not_fall_back(broker: Mosquitto) -> None:
    async with MqttProxy(broker.port, refuse_mqtt5=True) as proxy:
        dev = MqttClient(settings(proxy.port, protocol="5"), "veh001")
        with pytest.raises(UplinkError, match="refused MQTT 5"):
            await dev.connect()


async def test_will_published_when_link_dies_not_on_clean_disconnect(
    broker: Mosquitto, backend: MqttClient
) -> None:
    will = Message("fleet/veh001/status", b"dead", qos=1, retain=True)
    async with MqttProxy(broker.port) as proxy:
        dev = MqttClient(settings(proxy.port), "veh001", will=will)
        await dev.connect()
        await dev.disconnect()
        await no_message(backend)

        await dev.connect()
        proxy.cut()
        reason = await asyncio.wait_for(dev.wait_disconnected(), WAIT_S)
        assert "lost" in str(reason)
        assert not dev.is_connected
        msg = await next_message(backend)
        assert (msg.topic, msg.payload) == ("fleet/veh001/status", b"dead")
        assert dev.counters.disconnects == 2


async def test_broker_stop_fails_pending_publish_and_signals_disconnect(
    broker: Mosquitto,
) -> None:
    dev = MqttClient(settings(broker.port), "veh001")
    await dev.connect()
    assert dev.connected.is_set()
    waiter = asyncio.create_task(dev.wait_disconnected())
    broker.stop()
    err = await asyncio.wait_for(waiter, WAIT_S)
    assert isinstance(err, UplinkError)
    assert not dev.connected.is_set()
    with pytest.raises(UplinkError):
        await dev.publish("fleet/veh001/live", b"x")
    broker.start()
    await dev.connect()
    await dev.publish("fleet/veh001/live", b"after restart")
    await dev.disconnect()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_persistent_session_gets_messages_sent_while_offline(
    broker: Mosquitto, protocol: str
) -> None:
    sub = MqttClient(settings(broker.port, "backend", protocol=protocol), "backend-persist")
    await sub.connect()
    await sub.subscribe("fleet/+/events", qos=1)
    await sub.disconnect()
    async with MqttClient(settings(broker.port), "veh001") as dev:
        for i in range(3):
            await dev.publish("fleet/veh001/events", bytes([i]))
    broker.restart()  # queued messages survive a broker restart too
    info = await sub.connect()
    assert info.session_present
    got = [(await next_message(sub)).payload for _ in range(3)]
    assert got == [b"\x00", b"\x01", b"\x02"]
    await sub.disconnect()


async def test_incoming_queue_is_bounded_and_counts_drops(broker: Mosquitto) -> None:
    sub = MqttClient(settings(broker.port, "backend", incoming_queue_size=2), "backend-small")
    async with sub, MqttClient(settings(broker.port), "veh001") as dev:
        await sub.subscribe("fleet/#")
        for i in range(5):
            await dev.publish("fleet/veh001/live", bytes([i]))
        await until(lambda: sub.counters.messages_received == 5)
        assert sub.counters.messages_dropped == 3
        assert [(await next_message(sub)).payload for _ in range(2)] == [b"\x00", b"\x01"]


async def test_tls_with_ca_and_password() -> None:
    with Mosquitto(USERS, ACL, tls=True) as b:
        assert b.tls_port is not None
        tls = TlsSettings(ca_file=b.ca_file)
        async with MqttClient(settings(b.tls_port, tls=tls), "veh001") as dev:
            await dev.publish("fleet/veh001/live", b"over tls")
        # Without our CA the broker's certificate must not be trusted.
        untrusted = MqttClient(settings(b.tls_port, tls=TlsSettings()), "veh001")
        with pytest.raises(UplinkError, match="TLS"):
            await untrusted.connect()


def test_missing_tls_files_are_a_config_error(tmp_path: Path) -> None:
    tls = TlsSettings(ca_file=tmp_path / "missing-ca.crt")
    with pytest.raises(ConfigError, match="TLS"):
        MqttClient(settings(1883, tls=tls), "veh001")


async def test_connect_is_logged_with_protocol(
    broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "fleetlink_edge.mqtt")
    async with MqttClient(settings(broker.port), "veh001") as dev:
        assert dev.is_connected
    assert any("(MQTT 5, session present" in r.getMessage() for r in caplog.records)
