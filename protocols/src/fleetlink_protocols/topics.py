"""The MQTT topic tree of protocol v1, device-id validation, and the broker ACL that enforces it.

``{prefix}/{device}/live|history|events|status|ack|config`` go up from the vehicle;
``{prefix}/{device}/dn/cmd|dn/config`` come down. A device may write exactly its six uplink
topics and read only ``{prefix}/{device}/dn/#``; the backend reads all uplink and writes downlink.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from fleetlink_protocols.errors import InvalidDeviceId, InvalidTopic

DEFAULT_PREFIX = "fleet"
DEVICE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
"""Device ids double as MQTT user names and topic levels, so no '/', '+', '#' or spaces."""

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")


class TopicKind(enum.StrEnum):
    """The leaf of a device topic; the value is the topic suffix after ``{prefix}/{device}/``."""

    LIVE = "live"
    HISTORY = "history"
    EVENTS = "events"
    STATUS = "status"
    ACK = "ack"
    CONFIG = "config"
    CMD = "dn/cmd"
    DESIRED_CONFIG = "dn/config"

    @property
    def uplink(self) -> bool:
        return not self.value.startswith("dn/")


UPLINK = tuple(k for k in TopicKind if k.uplink)
DOWNLINK = tuple(k for k in TopicKind if not k.uplink)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """How a topic is published: QoS and the retain flag."""

    qos: int
    retain: bool


TOPIC_SPECS: dict[TopicKind, TopicSpec] = {
    TopicKind.LIVE: TopicSpec(1, False),
    TopicKind.HISTORY: TopicSpec(1, False),
    TopicKind.EVENTS: TopicSpec(1, False),
    TopicKind.STATUS: TopicSpec(1, True),  # birth, and death as the last will
    TopicKind.ACK: TopicSpec(1, False),
    TopicKind.CONFIG: TopicSpec(1, True),  # reported config
    TopicKind.CMD: TopicSpec(1, False),
    TopicKind.DESIRED_CONFIG: TopicSpec(1, True),
}


def check_device_id(device_id: str) -> str:
    """Return ``device_id`` if it matches DEVICE_ID_PATTERN; raise InvalidDeviceId otherwise."""
    if not isinstance(device_id, str) or not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise InvalidDeviceId(f"invalid device id {str(device_id)[:80]!r}")
    return device_id


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is one or more plain topic levels; raise InvalidTopic otherwise."""
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise InvalidTopic(f"invalid topic prefix {str(prefix)[:80]!r}")
    return prefix


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics of one device under ``prefix``. Raises InvalidDeviceId / InvalidTopic."""

    prefix: str
    device_id: str

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        check_device_id(self.device_id)

    def topic(self, kind: TopicKind) -> str:
        return f"{self.prefix}/{self.device_id}/{kind.value}"

    @property
    def live(self) -> str:
        return self.topic(TopicKind.LIVE)

    @property
    def history(self) -> str:
        return self.topic(TopicKind.HISTORY)

    @property
    def events(self) -> str:
        return self.topic(TopicKind.EVENTS)

    @property
    def status(self) -> str:
        return self.topic(TopicKind.STATUS)

    @property
    def ack(self) -> str:
        return self.topic(TopicKind.ACK)

    @property
    def config(self) -> str:
        return self.topic(TopicKind.CONFIG)

    @property
    def cmd(self) -> str:
        return self.topic(TopicKind.CMD)

    @property
    def desired_config(self) -> str:
        return self.topic(TopicKind.DESIRED_CONFIG)

    @property
    def downlink_filter(self) -> str:
        """What the device subscribes to: its ``dn/#``."""
        return f"{self.prefix}/{self.device_id}/dn/#"


def uplink_filter(prefix: str = DEFAULT_PREFIX, kind: TopicKind | None = None) -> str:
    """Backend subscription filter for one uplink kind of every device, or all of them."""
    check_prefix(prefix)
    if kind is not None and not kind.uplink:
        raise InvalidTopic(f"{kind.value} is not an uplink topic")
    return f"{prefix}/+/{kind.value}" if kind is not None else f"{prefix}/+/#"


def parse_topic(topic: str, prefix: str = DEFAULT_PREFIX) -> tuple[str, TopicKind]:
    """Split a concrete topic into (device_id, kind). Raises InvalidTopic or InvalidDeviceId."""
    if not isinstance(topic, str) or len(topic) > 256:
        raise InvalidTopic("topic is not a string of at most 256 characters")
    head = prefix + "/"
    if not topic.startswith(head):
        raise InvalidTopic(f"topic {topic[:80]!r} is not under {prefix!r}")
    device_id, sep, suffix = topic[len(head) :].partition("/")
    if not sep:
        raise InvalidTopic(f"topic {topic[:80]!r} has no kind")
    try:
        kind = TopicKind(suffix)
    except ValueError:
        raise InvalidTopic(f"unknown topic kind {suffix[:40]!r}") from None
    return check_device_id(device_id), kind


def mosquitto_acl_entries(prefix: str = DEFAULT_PREFIX, backend_user: str = "backend") -> str:
    """Mosquitto ``acl_file`` text: per-device pattern lines (``%u``) plus a backend user block.

    Mosquitto applies ``pattern`` lines to every user, the backend included; the backend never
    publishes on device uplink topics, so that is harmless.
    """
    check_prefix(prefix)
    check_device_id(backend_user)
    lines = [
        f"# fleetlink protocol v1 topic ACL for prefix {prefix!r}",
        f"user {backend_user}",
        *(f"topic read {prefix}/+/{k.value}" for k in UPLINK),
        *(f"topic write {prefix}/+/{k.value}" for k in DOWNLINK),
        "",
        "# every device (user name = device id): its six uplink topics, its own downlink",
        *(f"pattern write {prefix}/%u/{k.value}" for k in UPLINK),
        f"pattern read {prefix}/%u/dn/#",
    ]
    return "\n".join(lines) + "\n"
