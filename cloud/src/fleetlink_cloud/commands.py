"""Downlink commands: create (queued in the store), publish when the device is online, track acks.

A command is stored first, ``queued``, so it survives restarts and never depends on the device
being reachable. ``CommandService`` publishes queued commands on ``{prefix}/{device}/dn/cmd``
(QoS 1) when the device is online: right after creation, on every ``vehicle.online`` stream event
(a birth), and in a periodic sweep that also catches commands created by another process. Acks
travel the other way through ingest, which applies them with ``store.record_command_ack``.

``set_config`` merges its ``values`` into the device's desired configuration (``ConfigService``,
which publishes it retained on ``dn/config``) and carries the resulting version, so the device's
ack says what that version changed. The same loop publishes desired documents: the periodic
sweep sends unpublished ones, a birth sends one again that the device does not report.

Sending is at least once: a command may be published twice (a sweep racing a birth, two
processes); the device acts on a command id once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from fleetlink_cloud.bus import EventBus, StreamEvent, follow
from fleetlink_cloud.configs import ConfigService, InvalidConfig, Publisher, check_document
from fleetlink_cloud.errors import BrokerError, CloudError
from fleetlink_cloud.store.base import CommandRow, Store
from fleetlink_protocols.errors import ProtocolError
from fleetlink_protocols.messages import Command, encode_command
from fleetlink_protocols.topics import Topics

log = logging.getLogger(__name__)

# Commands the edge agent understands, and which API scopes may send each (admin: all).
COMMAND_SCOPES: Final[Mapping[str, tuple[str, ...]]] = {
    "ping": ("dispatch", "maintenance"),  # liveness round trip: ack "done"
    "read_dtcs": ("dispatch", "maintenance"),  # read trouble codes now (J1979 mode 03 / DM1)
    "set_config": ("dispatch",),  # args {"values": {...}}: patches the desired configuration
    # args {"password": ...}: the device keeps a new MQTT password (credentials.py starts these)
    "rotate_credentials": (),
    "reconnect": (),  # the device connects again now, offering its newest password first
    # Job offers (docs/protocol.md, "Job offers"): the dispatcher sends these; admin may too.
    "offer_job": (),  # args {job_id, kind, stops, respond_by, version, customer_ref?}
    "withdraw_job": (),  # args {job_id, reason?}
    "update_job": (),  # args {job_id, eta?, note?}
}
COMMAND_NAMES: Final = tuple(COMMAND_SCOPES)
# Arguments no API response shows (they travel to the device only): name -> arg names.
SECRET_ARGS: Final[Mapping[str, tuple[str, ...]]] = {"rotate_credentials": ("password",)}
REDACTED: Final = "<redacted>"
REMOVED: Final = "<removed>"  # the value once the store no longer holds the secret (credentials)
# What the device checks too: 32 to 256 characters (the registry mints 43), nothing else.
ROTATE_PASSWORD_RE: Final = re.compile(r"[\x21-\x7e]{32,256}")

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}")
# Namespace of command ids derived from an Idempotency-Key (uuid5), fixed for ever.
IDEMPOTENCY_NAMESPACE: Final = uuid.UUID("6f2d1f9e-3c1b-5e0a-9d57-2b8f0f1c7a41")
SWEEP_INTERVAL_S: Final = 30.0


class InvalidCommand(CloudError, ValueError):
    """Unknown command name, bad id or arguments the protocol refuses (an API maps it to 422)."""


class CommandConflict(CloudError):
    """The command id exists with a different device, name or arguments (an API maps it to 409)."""


def command_id_for(device_id: str, *, command_id: str | None, idempotency_key: str | None) -> str:
    """The id of a new command: client-supplied, derived from an Idempotency-Key, or random.

    Raises InvalidCommand for an id protocol v1 cannot carry.
    """
    if command_id is not None:
        if not _ID_RE.fullmatch(command_id):
            raise InvalidCommand(
                "command_id: 1-64 of A-Z a-z 0-9 . _ : + -, starting with a letter or digit"
            )
        return command_id
    if idempotency_key is not None:
        if not 0 < len(idempotency_key) <= 255:
            raise InvalidCommand("Idempotency-Key: 1-255 characters")
        return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{device_id}\n{idempotency_key}"))
    return str(uuid.uuid4())


def check_command(name: str, args: Mapping[str, Any]) -> None:
    """Raise InvalidCommand unless ``name`` is known and ``args`` fit it and protocol v1."""
    if name not in COMMAND_SCOPES:
        raise InvalidCommand(f"unknown command {name[:64]!r}; known: {', '.join(COMMAND_NAMES)}")
    if name == "set_config":
        values = args.get("values")
        if not isinstance(values, Mapping) or set(args) - {"values", "version"}:
            raise InvalidCommand('set_config takes args {"values": {...}}')
    if name == "rotate_credentials":
        password = args.get("password")
        if set(args) != {"password"} or not isinstance(password, str):
            raise InvalidCommand('rotate_credentials takes args {"password": "..."}')
        if not ROTATE_PASSWORD_RE.fullmatch(password):
            raise InvalidCommand("args.password: 32-256 printable ASCII characters, no space")
    try:
        encode_command(Command("x", name, args, None))
        if name == "set_config":
            check_document(args["values"])
    except ProtocolError as exc:
        raise InvalidCommand(f"args: {exc}") from None
    except InvalidConfig as exc:
        raise InvalidCommand(f"args.values: {exc}") from None


def public_args(name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """``args`` as an API response may show them: secret values replaced by REDACTED."""
    secret = SECRET_ARGS.get(name, ())
    return {k: REDACTED if k in secret and v != REMOVED else v for k, v in args.items()}


def args_fingerprint(name: str, args: Mapping[str, Any]) -> str:
    """What makes two creations of one command id the same request (version excluded)."""
    given = {k: v for k, v in args.items() if not (name == "set_config" and k == "version")}
    return hashlib.sha256(repr((name, sorted(given.items()))).encode()).hexdigest()


def command_message(row: CommandRow) -> Command:
    return Command(row.command_id, row.name, dict(row.args), row.expires_wall_ns)


@dataclass(frozen=True, slots=True)
class Created:
    """Result of ``CommandService.create``: the row and whether this call created it."""

    command: CommandRow
    created: bool


class CommandService:
    """Creates commands and publishes queued ones to online devices. One per process with MQTT.

    ``publisher`` may be None (an API process without an MQTT connection): commands then stay
    queued until a process that has one sends them.
    """

    def __init__(
        self,
        store: Store,
        publisher: Publisher | None,
        *,
        prefix: str = "fleet",
        clock: Callable[[], int] = time.time_ns,
        sweep_interval_s: float = SWEEP_INTERVAL_S,
        configs: ConfigService | None = None,
    ) -> None:
        """``configs``: the desired configurations this loop publishes (default: a service on
        the same store and publisher)."""
        self._store = store
        self._publisher = publisher
        self._prefix = prefix
        self._clock = clock
        self._sweep_interval_s = sweep_interval_s
        self.configs = configs or ConfigService(store, publisher, prefix=prefix, clock=clock)
        self._locks: dict[str, asyncio.Lock] = {}  # one per device ever flushed: serialises sends
        self.counters: dict[str, int] = {"created": 0, "sent": 0, "send_failed": 0}

    async def create(
        self,
        device_id: str,
        name: str,
        args: Mapping[str, Any] | None = None,
        *,
        command_id: str | None = None,
        idempotency_key: str | None = None,
        expires_in_s: float | None = None,
        actor: str = "api",
    ) -> Created:
        """Queue a command and try to send it now. Raises InvalidCommand, CommandConflict, NotFound
        (and for ``set_config`` what ``ConfigService.patch`` raises).

        Repeating a creation with the same id (or Idempotency-Key) returns the existing command.
        ``actor`` (a token id) is recorded as who set the configuration a ``set_config`` changes.
        """
        args = dict(args or {})
        check_command(name, args)
        cid = command_id_for(device_id, command_id=command_id, idempotency_key=idempotency_key)
        existing = await self._store.get_command(cid)
        if existing is not None:
            return Created(self._same_or_conflict(existing, device_id, name, args), False)
        now = self._clock()
        if name == "set_config":
            desired = await self.configs.patch(device_id, args["values"], set_by=actor)
            args["version"] = desired.version
        expires = None if expires_in_s is None else now + int(expires_in_s * 1e9)
        row = await self._store.create_command(
            device_id, cid, name, args, created_wall_ns=now, expires_wall_ns=expires
        )
        if row.created_wall_ns != now:  # a concurrent creation of the same id won the race
            return Created(self._same_or_conflict(row, device_id, name, args), False)
        self.counters["created"] += 1
        presence = await self._store.presence(device_id)
        if presence is not None and presence.online:
            await self.flush(device_id)
            row = await self._store.get_command(cid) or row
        return Created(row, True)

    @staticmethod
    def _same_or_conflict(
        row: CommandRow, device_id: str, name: str, args: Mapping[str, Any]
    ) -> CommandRow:
        same = row.device_id == device_id and args_fingerprint(
            row.name, row.args
        ) == args_fingerprint(name, args)
        if not same:
            raise CommandConflict(
                f"command {row.command_id} exists for {row.device_id} with other content"
            )
        return row

    async def flush(self, device_id: str) -> int:
        """Publish the device's queued commands, oldest first; returns how many were sent.

        Stops at the first publish failure (BrokerError): the rest stay queued for the next try.
        """
        if self._publisher is None:
            return 0
        lock = self._locks.setdefault(device_id, asyncio.Lock())
        sent = 0
        async with lock:
            topics = Topics(self._prefix, device_id)
            for row in await self._store.pending_commands(device_id):
                try:
                    await self._send(topics, row)
                except BrokerError as exc:
                    self.counters["send_failed"] += 1
                    log.warning("command %s to %s not sent: %s", row.command_id, device_id, exc)
                    break
                await self._store.mark_command_sent(row.command_id, self._clock())
                self.counters["sent"] += 1
                sent += 1
        return sent

    async def _send(self, topics: Topics, row: CommandRow) -> None:
        assert self._publisher is not None
        payload = encode_command(command_message(row))
        await self._publisher.publish(topics.cmd, payload, qos=1, retain=False)

    async def sweep(self) -> int:
        """Publish unpublished configurations, then flush every online device with queued
        commands; returns how many commands were sent."""
        await self.configs.sweep()
        sent = 0
        for device in await self._store.list_devices():
            presence = await self._store.presence(device.id)
            if presence is not None and presence.online and not device.disabled:
                sent += await self.flush(device.id)
        return sent

    async def on_event(self, event: StreamEvent) -> None:
        """React to a stream event: a ``vehicle.online`` (birth) sends the configuration the
        device lacks, then what was queued."""
        if event.type == "vehicle.online":
            await self.configs.on_event(event)
            await self.flush(event.device_id)

    async def run(self, bus: EventBus | None = None) -> None:
        """Send on births (from ``bus``) and sweep periodically, until cancelled."""
        await follow(
            bus,
            {"vehicle.online"},
            self.on_event,
            self.sweep,
            self._sweep_interval_s,
            what="command delivery",
        )
