"""Control messages of protocol v1: birth/death status, commands, command acks, configuration
(desired and reported).

Each is a msgpack array whose first element is the major protocol version, so a decoder can
refuse a future major version before reading anything else. Fields missing at the end are
absent; fields beyond the known ones are ignored (see docs/protocol.md, "Compatibility").
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from fleetlink_protocols import packing as p
from fleetlink_protocols.catalog import AliasTable
from fleetlink_protocols.codec import PROTOCOL_VERSION, check_version
from fleetlink_protocols.errors import InvalidValue, MalformedPayload, PayloadTooLarge
from fleetlink_protocols.limits import (
    MAX_COMMAND_ARGS,
    MAX_CONFIG_BYTES,
    MAX_CONFIG_DEPTH,
    MAX_DEVICE_ID_LEN,
    MAX_EXTRA_ALIASES,
    MAX_ID_LEN,
    MAX_NAME_LEN,
    MAX_PATH_LEN,
    MAX_PAYLOAD_BYTES,
    MAX_PENDING_KEYS,
    MAX_TEXT_LEN,
)
from fleetlink_protocols.topics import check_device_id

ConfigValue: TypeAlias = (
    bool | int | float | str | list["ConfigValue"] | dict[str, "ConfigValue"] | None
)
"""JSON-like values of configuration documents and command arguments (finite floats only)."""

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]*")
_STATUS_BYTES = 16 * 1024 + MAX_EXTRA_ALIASES * (MAX_PATH_LEN + 8)


class AckStatus(enum.IntEnum):
    """What became of a command. Numbers are wire values, never reused."""

    ACCEPTED = 1  # received and valid; the work may still be running
    DONE = 2  # finished successfully
    FAILED = 3  # tried and failed; ``detail`` says why
    REJECTED = 4  # not attempted: unknown name, bad arguments, expired


@dataclass(frozen=True)
class Birth:
    """Retained on ``status`` when the agent connects: who it is and how to read its batches."""

    device_id: str
    boot_id: int
    agent_version: str
    started_wall_ns: int
    aliases: AliasTable = field(default_factory=AliasTable)
    protocol_version: int = PROTOCOL_VERSION

    @property
    def online(self) -> bool:
        return True


@dataclass(frozen=True)
class Death:
    """Retained on ``status`` as the MQTT will (and on clean shutdown): the device is offline."""

    device_id: str
    boot_id: int

    @property
    def online(self) -> bool:
        return False


@dataclass(frozen=True)
class Command:
    """A downlink command. The device ignores it after ``expires_wall_ns`` (device clock)."""

    command_id: str
    name: str
    args: Mapping[str, ConfigValue] = field(default_factory=dict)
    expires_wall_ns: int | None = None


@dataclass(frozen=True)
class CommandAck:
    """The device's answer to a command, published on ``ack`` (possibly several per command)."""

    command_id: str
    status: AckStatus
    detail: str = ""
    ts_wall_ns: int | None = None


@dataclass(frozen=True)
class ConfigDocument:
    """Desired (``dn/config``) or reported (``config``) configuration, both retained.

    ``version`` increases with every desired change; the reported document echoes the version
    it applied, and ``error`` says why the device refused a desired one.
    """

    version: int
    values: Mapping[str, ConfigValue]
    error: str | None = None


@dataclass(frozen=True)
class ReportedConfig:
    """What the device runs, retained on ``config``: a superset of the ConfigDocument layout.

    ``version`` and ``values`` are the desired document it applied (0 and empty: none yet, it
    runs its local settings); ``pending_restart`` names the ``section.key`` settings of that
    document that take effect only at its next start. ``error`` says why it refused the desired
    document ``refused_version`` (the applied one stays in force).
    """

    version: int
    values: Mapping[str, ConfigValue]
    error: str | None = None
    pending_restart: tuple[str, ...] = ()
    refused_version: int | None = None


def encode_birth(birth: Birth) -> bytes:
    """Raises InvalidValue or PayloadTooLarge on fields outside the protocol's limits."""
    check_device_id(birth.device_id)
    body = [
        PROTOCOL_VERSION,
        True,
        birth.device_id,
        p.check_int(birth.boot_id, "boot_id", 0),
        _check_id(birth.agent_version, "agent_version"),
        p.check_int(birth.started_wall_ns, "started_wall_ns", 0),
        dict(birth.aliases.extras),
    ]
    return p.pack(body, _STATUS_BYTES, "birth")


def encode_death(device_id: str, boot_id: int) -> bytes:
    """The will: small, encoded once at connect. Raises InvalidValue."""
    check_device_id(device_id)
    return p.pack(
        [PROTOCOL_VERSION, False, device_id, p.check_int(boot_id, "boot_id", 0)], 128, "death"
    )


def decode_status(payload: bytes) -> Birth | Death:
    """Decode a ``status`` payload, birth or death. Raises ProtocolError subclasses only."""
    arr = _message(payload, _STATUS_BYTES, "status", 4)
    online = p.boolean(arr[1], "online")
    device_id = check_device_id(p.text(arr[2], "device_id", MAX_DEVICE_ID_LEN))
    boot_id = p.integer(arr[3], "boot_id", 0)
    if not online:
        return Death(device_id, boot_id)
    p.array(arr, "birth", 7)
    agent_version = _id(arr[4], "agent_version")
    started = p.integer(arr[5], "started_wall_ns", 0)
    extras = p.mapping(arr[6], "aliases", MAX_EXTRA_ALIASES)
    for path, alias in extras.items():
        p.text(path, "alias path", MAX_PATH_LEN)
        p.integer(alias, "alias")
    return Birth(device_id, boot_id, agent_version, started, AliasTable(extras), arr[0])


def encode_command(command: Command) -> bytes:
    """Raises InvalidValue or PayloadTooLarge."""
    if len(command.args) > MAX_COMMAND_ARGS:
        raise PayloadTooLarge(f"command args: more than {MAX_COMMAND_ARGS} entries")
    body = [
        PROTOCOL_VERSION,
        _check_id(command.command_id, "command_id"),
        p.check_text(command.name, "command name", MAX_NAME_LEN),
        _check_doc(dict(command.args), "args", 0),
        None
        if command.expires_wall_ns is None
        else p.check_int(command.expires_wall_ns, "expires", 0),
    ]
    return p.pack(_trim(body), MAX_PAYLOAD_BYTES, "command")


def decode_command(payload: bytes) -> Command:
    """Raises ProtocolError subclasses only."""
    arr = _message(payload, MAX_PAYLOAD_BYTES, "command", 3)
    command_id = _id(arr[1], "command_id")
    name = p.text(arr[2], "command name", MAX_NAME_LEN)
    raw_args = {} if p.at(arr, 3) is None else arr[3]
    args = _decode_doc(p.mapping(raw_args, "args", MAX_COMMAND_ARGS), "args", 0)
    expires = p.opt_integer(p.at(arr, 4), "expires_wall_ns", 0)
    return Command(command_id, name, args, expires)


def encode_ack(ack: CommandAck) -> bytes:
    """Raises InvalidValue or PayloadTooLarge."""
    body = [
        PROTOCOL_VERSION,
        _check_id(ack.command_id, "command_id"),
        int(AckStatus(ack.status)),
        p.check_text(ack.detail, "detail", MAX_TEXT_LEN),
        None if ack.ts_wall_ns is None else p.check_int(ack.ts_wall_ns, "ts_wall_ns", 0),
    ]
    return p.pack(_trim(body), 1024, "ack")


def decode_ack(payload: bytes) -> CommandAck:
    """Raises ProtocolError subclasses only; an unknown status number is InvalidValue."""
    arr = _message(payload, 1024, "ack", 3)
    command_id = _id(arr[1], "command_id")
    status = p.integer(arr[2], "ack status")
    detail = "" if p.at(arr, 3) is None else p.text(arr[3], "detail", MAX_TEXT_LEN)
    ts = p.opt_integer(p.at(arr, 4), "ts_wall_ns", 0)
    try:
        return CommandAck(command_id, AckStatus(status), detail, ts)
    except ValueError:
        raise InvalidValue(f"ack status {status} is not defined") from None


def encode_config(doc: ConfigDocument) -> bytes:
    """Raises InvalidValue or PayloadTooLarge (over MAX_CONFIG_BYTES)."""
    body = [
        PROTOCOL_VERSION,
        p.check_int(doc.version, "config version", 0),
        _check_doc(dict(doc.values), "config", 0),
        None if doc.error is None else p.check_text(doc.error, "config error", MAX_TEXT_LEN),
    ]
    return p.pack(_trim(body), MAX_CONFIG_BYTES, "config")


def decode_config(payload: bytes) -> ConfigDocument:
    """Raises ProtocolError subclasses only."""
    return _config_of(_message(payload, MAX_CONFIG_BYTES, "config", 3))


def _config_of(arr: list[Any]) -> ConfigDocument:
    version = p.integer(arr[1], "config version", 0)
    values = _decode_doc(p.mapping(arr[2], "config", MAX_CONFIG_BYTES), "config", 0)
    error = None if p.at(arr, 3) is None else p.text(arr[3], "config error", MAX_TEXT_LEN)
    return ConfigDocument(version, values, error)


def encode_reported_config(report: ReportedConfig) -> bytes:
    """``[1, version, values, error?, pending_restart?, refused_version?]``; the first four as in
    ``encode_config``. Raises InvalidValue or PayloadTooLarge."""
    if len(report.pending_restart) > MAX_PENDING_KEYS:
        raise PayloadTooLarge(f"pending_restart: more than {MAX_PENDING_KEYS} keys")
    refused = report.refused_version
    body = [
        PROTOCOL_VERSION,
        p.check_int(report.version, "config version", 0),
        _check_doc(dict(report.values), "config", 0),
        None if report.error is None else p.check_text(report.error, "config error", MAX_TEXT_LEN),
        [p.check_text(k, "pending key", MAX_PATH_LEN) for k in report.pending_restart] or None,
        None if refused is None else p.check_int(refused, "refused version", 0),
    ]
    return p.pack(_trim(body), MAX_CONFIG_BYTES, "reported config")


def decode_reported_config(payload: bytes) -> ReportedConfig:
    """Decode a ``config`` payload (also one written by ``encode_config``). Raises
    ProtocolError subclasses only."""
    arr = _message(payload, MAX_CONFIG_BYTES, "config", 3)
    doc = _config_of(arr)
    raw_pending = p.at(arr, 4)
    pending = () if raw_pending is None else p.array(raw_pending, "pending_restart")
    if len(pending) > MAX_PENDING_KEYS:
        raise PayloadTooLarge(f"pending_restart: more than {MAX_PENDING_KEYS} keys")
    keys = tuple(p.text(k, "pending key", MAX_PATH_LEN) for k in pending)
    refused = p.opt_integer(p.at(arr, 5), "refused version", 0)
    return ReportedConfig(doc.version, doc.values, doc.error, keys, refused)


def _message(payload: bytes, limit: int, what: str, min_len: int) -> list[Any]:
    arr = p.array(p.unpack(payload, limit, what), what, 1)
    check_version(arr[0])
    return p.array(arr, what, min_len)


def _trim(fields: list[Any]) -> list[Any]:
    while fields and fields[-1] is None:
        fields.pop()
    return fields


def _check_id(value: str, what: str) -> str:
    p.check_text(value, what, MAX_ID_LEN)
    if not _ID_RE.fullmatch(value):
        raise InvalidValue(f"{what}: {value!r} is not a plain identifier")
    return value


def _id(value: object, what: str) -> str:
    text = p.text(value, what, MAX_ID_LEN)
    if not _ID_RE.fullmatch(text):
        raise InvalidValue(f"{what}: {text!r} is not a plain identifier")
    return text


def _check_doc(value: Any, what: str, depth: int) -> Any:
    """Encoder-side: JSON-like, finite floats, string keys, at most MAX_CONFIG_DEPTH deep."""
    if depth > MAX_CONFIG_DEPTH:
        raise InvalidValue(f"{what}: nested deeper than {MAX_CONFIG_DEPTH}")
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return p.finite(value, what)
    if isinstance(value, list | tuple):
        return [_check_doc(v, what, depth + 1) for v in value]
    if isinstance(value, Mapping):
        for key in value:
            p.check_text(key, f"{what} key", MAX_NAME_LEN)
        return {k: _check_doc(v, what, depth + 1) for k, v in value.items()}
    raise InvalidValue(f"{what}: {type(value).__name__} is not JSON-like")


def _decode_doc(value: Any, what: str, depth: int) -> Any:
    if depth > MAX_CONFIG_DEPTH:
        raise MalformedPayload(f"{what}: nested deeper than {MAX_CONFIG_DEPTH}")
    if value is None or type(value) in (bool, int, str):
        return value
    if type(value) is float:
        if not math.isfinite(value):
            raise InvalidValue(f"{what}: non-finite number")
        return value
    if type(value) is list:
        return [_decode_doc(v, what, depth + 1) for v in value]
    if type(value) is dict:
        return {
            p.text(k, f"{what} key", MAX_NAME_LEN): _decode_doc(v, what, depth + 1)
            for k, v in value.items()
        }
    raise MalformedPayload(f"{what}: {type(value).__name__} is not JSON-like")
