"""Downlink commands on the device: decode, drop duplicates, execute, acknowledge.

``CommandHandler`` takes the commands of ``{prefix}/{device}/dn/cmd`` (QoS 1: at least once),
acts on a command id once, and answers on ``{prefix}/{device}/ack``: ``accepted``, then ``done``
or ``failed``; or ``rejected`` (not attempted) for an unknown name, bad arguments or a past
expiry. It hands the desired configuration of ``dn/config`` to ``RemoteConfig``, which
``set_config`` uses too; ``rotate_credentials`` keeps a new broker password with
``credentials.CredentialFile`` and ``reconnect`` asks the uplink for a new connection; the job
commands (``offer_job``, ``withdraw_job``, ``update_job``) go to ``jobs.JobBoard``. Nothing a
broker delivers makes it raise. ``AckQueue`` holds the acks,
bounded, until the link is up. docs/protocol.md ("How the agent handles commands") has the
commands and rules.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Protocol

from fleetlink_edge.backoff import Backoff
from fleetlink_edge.config import CommandSettings
from fleetlink_edge.credentials import check_password
from fleetlink_edge.errors import EdgeError, PublishRejected, UplinkError
from fleetlink_edge.offers import JobError, JobRefused
from fleetlink_edge.remote_config import ConfigRefused, RemoteConfig, clip
from fleetlink_protocols.errors import ProtocolError
from fleetlink_protocols.messages import (
    AckStatus,
    Command,
    CommandAck,
    decode_command,
    decode_config,
    encode_ack,
)
from fleetlink_protocols.topics import Topics

log = logging.getLogger(__name__)

FINAL = frozenset({AckStatus.DONE, AckStatus.FAILED, AckStatus.REJECTED})
HANDLER_COUNTERS = (
    "received",
    "duplicates",  # a command id seen recently: redelivered, ignored
    "decode_errors",
    "other_topics",
    "desired_config",  # dn/config documents, handed to RemoteConfig
    "accepted",
    "done",
    "failed",
    "rejected",
    "internal_errors",  # a command raised unexpectedly: acked failed
)

DtcReader = Callable[[], Awaitable[Mapping[int, AbstractSet[str]]]]
"""Reads stored DTCs now: ECU response id -> codes; empty when no ECU answered."""
Reconnect = Callable[[float], Awaitable[str]]
"""``Uplink.reconnect``: connect again within the timeout (s); says what the connection uses."""
# How long ``reconnect`` waits for the new connection: settling batches in flight, a refused
# CONNECT per rotated password and the one that works, each bounded by uplink.connect_timeout_s.
RECONNECT_TIMEOUT_S = 60.0


class CredentialKeeper(Protocol):
    """What ``rotate_credentials`` needs of ``credentials.CredentialFile``."""

    async def rotate(self, password: str) -> None: ...


class JobDesk(Protocol):
    """What the job commands need of ``jobs.JobBoard``."""

    def prepare(self, name: str, args: Mapping[str, Any]) -> Callable[[], Awaitable[str]]: ...


class Incoming(Protocol):
    """A received MQTT message (``mqtt.Message``)."""

    @property
    def topic(self) -> str: ...
    @property
    def payload(self) -> bytes: ...


class AckSink(Protocol):
    def send(self, ack: CommandAck) -> None: ...


class Refused(Exception):
    """A command that must not be attempted; the message is the ack's detail."""


@dataclass(frozen=True, slots=True)
class Outcome:
    status: AckStatus  # DONE or FAILED
    detail: str = ""


Job = Callable[[], Awaitable[Outcome]]


class CommandHandler:
    """Executes the device's commands, one at a time. Built by the composition root.

    ``read_dtcs`` is None without OBD; ``config`` None leaves ``dn/config`` alone and
    rejects ``set_config``; ``credentials`` None (no user name) rejects ``rotate_credentials``,
    ``reconnect`` None rejects ``reconnect``. Clocks are injected (device wall clock for expiry
    and ack times, agent uptime for ``ping``).
    """

    def __init__(
        self,
        settings: CommandSettings,
        topics: Topics,
        acks: AckSink,
        *,
        agent_version: str,
        now_wall_ns: Callable[[], int],
        uptime_s: Callable[[], float],
        read_dtcs: DtcReader | None = None,
        config: RemoteConfig | None = None,
        credentials: CredentialKeeper | None = None,
        reconnect: Reconnect | None = None,
        jobs: JobDesk | None = None,
    ) -> None:
        self._settings = settings
        self._topics = topics
        self._acks = acks
        self._version = agent_version
        self._now = now_wall_ns
        self._uptime_s = uptime_s
        self._read_dtcs = read_dtcs
        self._config = config
        self._credentials = credentials
        self._reconnect = reconnect
        self._jobs = jobs
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._commands: dict[str, Callable[[Command], Job]] = {
            "ping": self._ping,
            "read_dtcs": self._read_dtcs_job,
            "set_config": self._set_config,
            "rotate_credentials": self._rotate_credentials,
            "reconnect": self._reconnect_job,
            "offer_job": self._job_command,
            "withdraw_job": self._job_command,
            "update_job": self._job_command,
        }
        self.counters: dict[str, int] = dict.fromkeys(HANDLER_COUNTERS, 0)

    async def run(self, messages: AsyncIterator[Incoming]) -> None:
        """Handle downlink messages until cancelled."""
        async for message in messages:
            await self.handle(message)

    async def handle(self, message: Incoming) -> None:
        if message.topic == self._topics.desired_config:
            self.counters["desired_config"] += 1
            await self._desired(message.payload)
            return
        if message.topic != self._topics.cmd:
            self.counters["other_topics"] += 1
            return
        try:
            command = decode_command(message.payload)
        except ProtocolError as exc:
            self.counters["decode_errors"] += 1
            log.warning("undecodable command (%d bytes): %s", len(message.payload), exc)
            return
        await self.execute(command)

    async def _desired(self, payload: bytes) -> None:
        """A desired configuration (retained: again after every connect)."""
        if self._config is None or not payload:  # an empty payload clears a retained message
            return
        try:
            doc = decode_config(payload)
        except ProtocolError as exc:
            self.counters["decode_errors"] += 1
            log.warning("undecodable desired configuration (%d bytes): %s", len(payload), exc)
            return
        try:
            await self._config.on_desired(doc)
        except Exception:  # a bug must not end the handler
            self.counters["internal_errors"] += 1
            log.exception("desired configuration version %d failed", doc.version)

    async def execute(self, command: Command) -> None:
        """Act on a decoded command once per command id and acknowledge it."""
        if not self._first_sighting(command.command_id):
            self.counters["duplicates"] += 1
            log.info("command %s seen before, ignored", command.command_id)
            return
        self.counters["received"] += 1
        try:
            job = self._prepare(command)
        except Refused as exc:
            self._ack(command, AckStatus.REJECTED, str(exc))
            return
        self._ack(command, AckStatus.ACCEPTED)
        try:
            outcome = await job()
        except asyncio.CancelledError:  # shutdown: say so, the ack queue still flushes
            self._ack(command, AckStatus.FAILED, "the agent stopped before it finished")
            raise
        except Exception as exc:  # a bug in one command must not end the handler
            self.counters["internal_errors"] += 1
            log.exception("command %s (%s) failed", command.command_id, command.name)
            outcome = Outcome(AckStatus.FAILED, f"internal error: {exc!r}")
        self._ack(command, outcome.status, outcome.detail)

    def _first_sighting(self, command_id: str) -> bool:
        if command_id in self._seen:
            self._seen.move_to_end(command_id)
            return False
        self._seen[command_id] = None
        while len(self._seen) > self._settings.remember_ids:
            self._seen.popitem(last=False)
        return True

    def _prepare(self, command: Command) -> Job:
        """The command's work, once its name, arguments and expiry are fine; raises Refused."""
        now = self._now()
        expires = command.expires_wall_ns
        if expires is not None and now > expires:
            raise Refused(f"expired {(now - expires) / 1e9:.1f} s ago (device clock)")
        make = self._commands.get(command.name)
        if make is None:
            known = ", ".join(sorted(self._commands))
            raise Refused(f"unknown command {command.name!r}; this agent knows {known}")
        return make(command)

    def _ack(self, command: Command, status: AckStatus, detail: str = "") -> None:
        self.counters[status.name.lower()] += 1
        level = (
            logging.WARNING if status in (AckStatus.FAILED, AckStatus.REJECTED) else logging.INFO
        )
        log.log(
            level, "command %s (%s): %s %s", command.command_id, command.name, status.name, detail
        )
        self._acks.send(CommandAck(command.command_id, status, clip(detail), self._now()))

    @staticmethod
    def _no_args(command: Command) -> None:
        if command.args:
            raise Refused(f"{command.name} takes no arguments, got {', '.join(command.args)}")

    # -- the commands ------------------------------------------------------------------------

    def _ping(self, command: Command) -> Job:
        self._no_args(command)

        async def ping() -> Outcome:
            return Outcome(AckStatus.DONE, f"agent {self._version}, up {self._uptime_s():.0f} s")

        return ping

    def _read_dtcs_job(self, command: Command) -> Job:
        self._no_args(command)
        reader, timeout_s = self._read_dtcs, self._settings.read_dtcs_timeout_s

        async def read_dtcs() -> Outcome:
            if reader is None:
                return Outcome(AckStatus.FAILED, "OBD-II is not enabled (can.obd.enabled)")
            try:
                async with asyncio.timeout(timeout_s):
                    reading = await reader()
            except TimeoutError:
                return Outcome(AckStatus.FAILED, f"no OBD-II answer within {timeout_s:g} s")
            except EdgeError as exc:
                return Outcome(AckStatus.FAILED, f"OBD-II: {exc}")
            if not reading:
                return Outcome(AckStatus.FAILED, "no ECU answered (ignition off?)")
            return Outcome(AckStatus.DONE, describe_dtcs(reading))

        return read_dtcs

    def _set_config(self, command: Command) -> Job:
        values, version = self._config_args(command.args)
        config = self._config
        if config is None:
            raise Refused("remote configuration is off on this agent")
        try:
            target, document, wanted = config.plan_patch(values, version)
        except ConfigRefused as exc:
            raise Refused(str(exc)) from None

        async def set_config() -> Outcome:
            try:
                result = await config.apply(target, document, wanted)
            except ConfigRefused as exc:
                return Outcome(AckStatus.FAILED, str(exc))
            return Outcome(AckStatus.FAILED if result.failed else AckStatus.DONE, result.describe())

        return set_config

    def _rotate_credentials(self, command: Command) -> Job:
        if set(command.args) != {"password"}:
            raise Refused("rotate_credentials takes one argument, password")
        try:
            password = check_password(command.args["password"])
        except ValueError as exc:
            raise Refused(str(exc)) from None
        keeper = self._credentials
        if keeper is None:
            raise Refused("this agent connects without a user name: no password to rotate")

        async def rotate() -> Outcome:
            try:
                await keeper.rotate(password)
            except EdgeError as exc:
                return Outcome(AckStatus.FAILED, str(exc))
            # done only once it is on disk: the cloud then replaces the password in the broker
            return Outcome(AckStatus.DONE, "new credential kept; offered first from now on")

        return rotate

    def _reconnect_job(self, command: Command) -> Job:
        self._no_args(command)
        reconnect = self._reconnect
        if reconnect is None:
            raise Refused("this agent has no uplink to reconnect")

        async def reconnect_now() -> Outcome:
            try:
                return Outcome(AckStatus.DONE, await reconnect(RECONNECT_TIMEOUT_S))
            except UplinkError as exc:
                return Outcome(AckStatus.FAILED, str(exc))

        return reconnect_now

    @staticmethod
    def _config_args(args: Mapping[str, Any]) -> tuple[dict[str, Any], int | None]:
        """The ``values`` and ``version`` of a set_config; raises Refused when malformed."""
        extra = set(args) - {"values", "version"}
        if extra:
            raise Refused(f"set_config takes values and version, not {', '.join(sorted(extra))}")
        values, version = args.get("values"), args.get("version")
        if not isinstance(values, dict):
            raise Refused("set_config needs values: {section: {key: value}}")
        if version is not None and (type(version) is not int or version < 0):
            raise Refused(f"version must be an unsigned integer, not {version!r}")
        return values, version

    def _job_command(self, command: Command) -> Job:
        """offer_job, withdraw_job, update_job: done once the job board has kept the change."""
        jobs = self._jobs
        if jobs is None:
            raise Refused("job offers are off on this agent (jobs.enabled)")
        try:
            work = jobs.prepare(command.name, command.args)
        except JobRefused as exc:
            raise Refused(str(exc)) from None

        async def job_command() -> Outcome:
            try:
                return Outcome(AckStatus.DONE, await work())
            except JobError as exc:
                return Outcome(AckStatus.FAILED, str(exc))

        return job_command


def describe_dtcs(reading: Mapping[int, AbstractSet[str]]) -> str:
    """``0x7e8: P0301 P0420; 0x7e9: none`` (ECUs in id order, codes sorted)."""
    parts = [
        f"{ecu:#x}: {' '.join(sorted(codes)) or 'none'}" for ecu, codes in sorted(reading.items())
    ]
    return clip("stored DTCs " + "; ".join(parts))


class AckLink(Protocol):
    """What the ack queue needs of ``mqtt.MqttClient``."""

    connected: asyncio.Event

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, require_subscriber: bool = False
    ) -> None: ...


class AckQueue:
    """Acks waiting for the broker, sent in order whenever the link is up; never blocks a caller.

    Bounded by ``maxsize``: when full, the oldest ``accepted`` ack goes first (a final ack says
    more), else the oldest; each drop is counted and logged. An ack the broker refuses (ACL) is
    dropped; one that could not be sent (link lost, no subscriber) is kept and sent again.
    """

    def __init__(
        self, link: AckLink, topic: str, maxsize: int, retry: Backoff, *, require_subscriber: bool
    ) -> None:
        self._link = link
        self._topic = topic
        self._maxsize = maxsize
        self._retry = retry
        self._require_subscriber = require_subscriber
        self._pending: deque[tuple[AckStatus, bytes]] = deque()
        self._ready = asyncio.Event()
        self.counters: dict[str, int] = dict.fromkeys(
            ("queued", "sent", "retries", "dropped", "refused", "unencodable"), 0
        )

    @property
    def pending(self) -> int:
        return len(self._pending)

    def send(self, ack: CommandAck) -> None:
        try:
            payload = encode_ack(ack)
        except ProtocolError as exc:
            self.counters["unencodable"] += 1
            log.error("ack of %s cannot be encoded: %s", ack.command_id, exc)
            return
        self._pending.append((ack.status, payload))
        self.counters["queued"] += 1
        self._bound()
        self._ready.set()

    def _bound(self) -> None:
        while len(self._pending) > self._maxsize:
            victim = next((i for i, (s, _) in enumerate(self._pending) if s not in FINAL), 0)
            del self._pending[victim]
            self.counters["dropped"] += 1
            log.warning("ack queue full (%d): an ack was dropped", self._maxsize)

    async def run(self) -> None:
        """Send until cancelled; an ack in flight when cancelled stays queued."""
        while True:
            await self._ready.wait()
            await self._link.connected.wait()
            if not self._pending:
                self._ready.clear()
                continue
            if not await self._send_one():
                delay = self._retry.next_delay_s()
                self.counters["retries"] += 1
                await asyncio.sleep(delay)

    async def _send_one(self) -> bool:
        """Publish the oldest ack; False if it stays queued for another try."""
        item = self._pending.popleft()
        try:
            await self._link.publish(
                self._topic, item[1], qos=1, require_subscriber=self._require_subscriber
            )
        except PublishRejected as exc:  # an ACL denial: it would never succeed
            self.counters["refused"] += 1
            log.error("broker refused an ack on %s: %s", self._topic, exc)
            return True
        except BaseException as exc:
            self._pending.appendleft(item)
            self._bound()
            if isinstance(exc, UplinkError):
                log.info("ack kept for the next try: %s", exc)
                return False
            raise
        self.counters["sent"] += 1
        self._retry.reset()
        return True

    async def flush(self, timeout_s: float) -> None:
        """Shutdown: send what is queued while the link is up, for at most ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                while self._pending and self._link.connected.is_set():
                    if not await self._send_one():
                        return
        except TimeoutError:
            pass
        if self._pending:
            log.warning("%d command acks not sent before shutdown", len(self._pending))
