"""The MQTT topic tree, device-id rules and the generated Mosquitto ACL."""

from __future__ import annotations

import queue
import threading

import pytest

from fleetlink_protocols.errors import InvalidDeviceId, InvalidTopic, ProtocolError
from fleetlink_protocols.topics import (
    DOWNLINK,
    TOPIC_SPECS,
    UPLINK,
    TopicKind,
    Topics,
    check_device_id,
    mosquitto_acl_entries,
    parse_topic,
    uplink_filter,
)


def test_topics_of_a_device() -> None:
    t = Topics("fleet", "veh-001")
    assert [t.live, t.history, t.events, t.status, t.ack, t.config] == [
        "fleet/veh-001/live",
        "fleet/veh-001/history",
        "fleet/veh-001/events",
        "fleet/veh-001/status",
        "fleet/veh-001/ack",
        "fleet/veh-001/config",
    ]
    assert (t.cmd, t.desired_config) == ("fleet/veh-001/dn/cmd", "fleet/veh-001/dn/config")
    assert t.downlink_filter == "fleet/veh-001/dn/#"
    assert Topics("acme/prod", "A1").live == "acme/prod/A1/live"


def test_six_uplink_two_downlink_and_retain_only_for_state() -> None:
    assert len(UPLINK) == 6
    assert len(DOWNLINK) == 2
    retained = {k for k, spec in TOPIC_SPECS.items() if spec.retain}
    assert retained == {TopicKind.STATUS, TopicKind.CONFIG, TopicKind.DESIRED_CONFIG}
    assert all(spec.qos == 1 for spec in TOPIC_SPECS.values())


@pytest.mark.parametrize("kind", list(TopicKind))
def test_parse_inverts_topics(kind: TopicKind) -> None:
    assert parse_topic(Topics("fleet", "veh_9").topic(kind)) == ("veh_9", kind)
    assert parse_topic(Topics("a/b", "x").topic(kind), prefix="a/b") == ("x", kind)


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "fleet",
        "fleet/",
        "fleet/veh-001",
        "fleet/veh-001/",
        "fleet/veh-001/telemetry",
        "fleet/veh-001/dn/other",
        "fleet/veh-001/live/extra",
        "other/veh-001/live",
        "fleet/+/live",
        "fleet/#",
        "fleet//live",
        "fleet/" + "x" * 65 + "/live",
        "fleet/veh 1/live",
        "fleet/-veh/live",
        "x" * 1000,
    ],
)
def test_parse_rejects_foreign_topics(topic: str) -> None:
    with pytest.raises((InvalidTopic, InvalidDeviceId)):
        parse_topic(topic)


@pytest.mark.parametrize("device_id", ["a", "A1", "veh-001", "v_2", "x" * 64, "0"])
def test_valid_device_ids(device_id: str) -> None:
    assert check_device_id(device_id) == device_id


@pytest.mark.parametrize(
    "device_id", ["", "-a", "_a", "x" * 65, "a/b", "a+b", "a#", "a b", "é", "a\n", "%u"]
)
def test_invalid_device_ids(device_id: str) -> None:
    with pytest.raises(InvalidDeviceId):
        check_device_id(device_id)
    with pytest.raises(ProtocolError):
        Topics("fleet", device_id)


@pytest.mark.parametrize("prefix", ["", "/fleet", "fleet/", "a//b", "+", "#", "fl eet"])
def test_invalid_prefixes(prefix: str) -> None:
    with pytest.raises(InvalidTopic):
        Topics(prefix, "veh-001")


def test_uplink_filters() -> None:
    assert uplink_filter() == "fleet/+/#"
    assert uplink_filter("fleet", TopicKind.LIVE) == "fleet/+/live"
    with pytest.raises(InvalidTopic):
        uplink_filter("fleet", TopicKind.CMD)


def test_acl_lets_a_device_write_its_six_uplinks_and_read_only_its_downlink() -> None:
    acl = mosquitto_acl_entries("fleet")
    patterns = [line for line in acl.splitlines() if line.startswith("pattern")]
    assert patterns == [
        "pattern write fleet/%u/live",
        "pattern write fleet/%u/history",
        "pattern write fleet/%u/events",
        "pattern write fleet/%u/status",
        "pattern write fleet/%u/ack",
        "pattern write fleet/%u/config",
        "pattern read fleet/%u/dn/#",
    ]
    lines = acl.splitlines()
    backend = lines[lines.index("user backend") + 1 : lines.index("")]
    assert "topic write fleet/+/dn/cmd" in backend
    assert "topic write fleet/+/dn/config" in backend
    assert "topic read fleet/+/live" in backend
    assert not any(line.startswith("topic write") and "/dn/" not in line for line in backend)


# The ACL against a real broker: a device writes only its six uplink topics and reads only its
# own downlink. paho is used directly here (synchronously): this test needs no agent code.


class _Client:
    """A blocking MQTT 5 test client that records messages and PUBACK reason codes."""

    def __init__(self, port: int, user: str) -> None:
        from paho.mqtt.client import CallbackAPIVersion, Client, MQTTv5

        self.received: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.acks: dict[int, int] = {}
        self._acked = threading.Condition()
        self._subscribed = threading.Event()
        self._connected = threading.Event()
        self.client = Client(CallbackAPIVersion.VERSION2, client_id=user, protocol=MQTTv5)
        self.client.username_pw_set(user, PASSWORD)
        self.client.on_connect = lambda *_: self._connected.set()
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.received.put((m.topic, m.payload))
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._connected.wait(10)

    def _on_publish(self, _c: object, _u: object, mid: int, rc: object, _p: object) -> None:
        with self._acked:
            self.acks[mid] = int(getattr(rc, "value", 0))
            self._acked.notify_all()

    def subscribe(self, topic_filter: str) -> None:
        self._subscribed.clear()
        self.client.subscribe(topic_filter, qos=1)
        assert self._subscribed.wait(10)

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1 and return the PUBACK reason code (0 ok, 0x87 not authorised)."""
        mid = self.client.publish(topic, payload, qos=1).mid
        with self._acked:
            assert self._acked.wait_for(lambda: mid in self.acks, 10)
            return self.acks[mid]

    def next(self) -> tuple[str, bytes]:
        return self.received.get(timeout=10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


PASSWORD = "secret"
NOT_AUTHORIZED = 0x87


@pytest.mark.mosquitto
def test_generated_acl_confines_each_device_to_its_topics() -> None:
    from tests.peers.mosquitto import Mosquitto

    users = dict.fromkeys(("veh-001", "veh-002", "backend"), PASSWORD)
    with Mosquitto(users, mosquitto_acl_entries("fleet").splitlines()) as broker:
        backend = _Client(broker.port, "backend")
        device = _Client(broker.port, "veh-001")
        try:
            backend.subscribe("fleet/#")
            device.subscribe("fleet/#")
            mine, other = Topics("fleet", "veh-001"), Topics("fleet", "veh-002")
            for topic in (
                other.live,
                other.status,
                mine.cmd,
                mine.desired_config,
                "fleet/veh-001/x",
            ):
                assert device.publish(topic, b"forbidden") == NOT_AUTHORIZED, topic
            uplinks = [mine.topic(kind) for kind in UPLINK]
            for topic in uplinks:
                assert device.publish(topic, b"ok") == 0, topic
            # The backend sees exactly the six allowed publishes, in order, none of the others.
            assert [backend.next() for _ in uplinks] == [(t, b"ok") for t in uplinks]
            # The device reads neither its own uplink nor another device's downlink.
            assert backend.publish(other.cmd, b"not for veh-001") == 0
            assert backend.publish(mine.cmd, b"for veh-001") == 0
            assert device.next() == (mine.cmd, b"for veh-001")
            assert backend.received.empty()  # the backend does not read downlink either
        finally:
            device.close()
            backend.close()
