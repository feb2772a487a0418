"""Downlink commands on the device: the handler and its ack queue with fakes, the OBD read-now
hook on a virtual CAN bus, then the whole agent on simulated hardware against a real Mosquitto.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import can
import pytest

from fleetlink_edge.backoff import Backoff
from fleetlink_edge.commands import AckQueue, CommandHandler
from fleetlink_edge.config import (
    CanSettings,
    CommandSettings,
    EdgeSettings,
    ObdSettings,
    UplinkSettings,
    load_settings,
)
from fleetlink_edge.errors import NotDelivered, PublishRejected, SourceClosed, UplinkError
from fleetlink_edge.mqtt import Message, MqttClient
from fleetlink_edge.remote_config import REMOTE_KEYS, Applied, RemoteConfig, Restored
from fleetlink_edge.sim.ecu import EcuState, SimulatedEcu
from fleetlink_edge.simulate import SimOptions, simulate
from fleetlink_edge.sources.can import CanPort
from fleetlink_edge.sources.obd import ObdPoller
from fleetlink_protocols.codec import decode_batch
from fleetlink_protocols.messages import (
    AckStatus,
    Command,
    CommandAck,
    ConfigDocument,
    ReportedConfig,
    decode_ack,
    decode_reported_config,
    encode_ack,
    encode_command,
    encode_config,
)
from fleetlink_protocols.records import Dtc, Record
from fleetlink_protocols.topics import Topics, mosquitto_acl_entries
from tests.peers.mosquitto import Mosquitto

DEVICE = "veh-cmd-01"
TOPICS = Topics("fleet", DEVICE)
USERS = {DEVICE: "dev-secret", "backend": "backend-secret"}
NOW_NS = 1_717_243_200_000_000_000
WAIT_S = 30.0

A, D, F, R = AckStatus.ACCEPTED, AckStatus.DONE, AckStatus.FAILED, AckStatus.REJECTED


class FakeAcks:
    def __init__(self) -> None:
        self.sent: list[CommandAck] = []

    def send(self, ack: CommandAck) -> None:
        self.sent.append(ack)

    def of(self, command_id: str) -> list[tuple[AckStatus, str]]:
        return [(a.status, a.detail) for a in self.sent if a.command_id == command_id]


def remote_config(
    path: Path, health: Callable[[float], None] = lambda _: None
) -> tuple[RemoteConfig, list[ReportedConfig]]:
    """Remote configuration whose health setter is ``health``; the other setters do nothing."""

    async def nothing(_: EdgeSettings) -> None:
        pass

    async def set_health(s: EdgeSettings) -> None:
        health(s.health.interval_s)

    live = {k: nothing for k, how in REMOTE_KEYS.items() if how == "live"}
    live["health.interval_s"] = set_health
    reports: list[ReportedConfig] = []
    local = EdgeSettings()
    config = RemoteConfig(local, Restored(Applied(), local), path, live=live, report=reports.append)
    return config, reports


def make_handler(
    acks: FakeAcks,
    *,
    read_dtcs: Callable[[], Any] | None = None,
    config: RemoteConfig | None = None,
    **settings: Any,
) -> CommandHandler:
    return CommandHandler(
        CommandSettings(**settings),
        TOPICS,
        acks,
        agent_version="1.2.3",
        now_wall_ns=lambda: NOW_NS,
        uptime_s=lambda: 42.4,
        read_dtcs=read_dtcs,
        config=config,
    )


def message(command: Command, topic: str = TOPICS.cmd) -> Message:
    return Message(topic, encode_command(command))


async def run(handler: CommandHandler, *commands: Command) -> None:
    for command in commands:
        await handler.handle(message(command))


async def test_ping_is_accepted_then_done_with_version_and_uptime() -> None:
    acks = FakeAcks()
    await run(make_handler(acks), Command("c1", "ping"))
    assert acks.of("c1") == [(A, ""), (D, "agent 1.2.3, up 42 s")]
    assert all(a.ts_wall_ns == NOW_NS for a in acks.sent)


async def test_a_command_id_is_acted_on_once_among_the_recent_ones() -> None:
    acks = FakeAcks()
    handler = make_handler(acks, remember_ids=2)
    await run(handler, Command("c1", "ping"), Command("c1", "ping"), Command("c2", "ping"))
    assert [a.command_id for a in acks.sent] == ["c1", "c1", "c2", "c2"]
    assert handler.counters["duplicates"] == 1
    await run(handler, Command("c3", "ping"), Command("c1", "ping"))  # c1 forgotten by now
    assert [a.command_id for a in acks.sent[4:]] == ["c3", "c3", "c1", "c1"]


async def test_an_expired_command_is_rejected_and_not_run() -> None:
    acks = FakeAcks()
    await run(make_handler(acks), Command("c1", "ping", expires_wall_ns=NOW_NS - 2_500_000_000))
    assert acks.of("c1") == [(R, "expired 2.5 s ago (device clock)")]
    await run(make_handler(acks), Command("c2", "ping", expires_wall_ns=NOW_NS + 1))
    assert [s for s, _ in acks.of("c2")] == [A, D]


@pytest.mark.parametrize(
    ("name", "args", "reason"),
    [
        ("self_destruct", {}, "unknown command 'self_destruct'; this agent knows offer_job, ping"),
        ("ping", {"x": 1}, "ping takes no arguments, got x"),
        ("read_dtcs", {"mode": 7}, "read_dtcs takes no arguments"),
        ("set_config", {}, "set_config needs values"),
        ("set_config", {"values": {}, "force": True}, "takes values and version, not force"),
        ("set_config", {"values": {"uplink": {"host": "x"}}}, "uplink.host: cannot be set rem"),
        ("set_config", {"values": {"sampling": 5}}, "sampling: must be a map"),
        ("set_config", {"values": {"sampling": {"speed": 1}}}, "sampling.speed: no such setting"),
        ("set_config", {"values": {"health": {"interval_s": 0}}}, "health.interval_s: Input sh"),
        ("set_config", {"values": {"health": {"interval_s": "30"}}}, "health.interval_s: Input"),
        ("set_config", {"values": {"health": {"watchdog": 1}}}, "health.watchdog: cannot be set"),
        ("set_config", {"values": {}, "version": -1}, "version must be an unsigned integer"),
    ],
)
async def test_unknown_commands_and_bad_arguments_are_rejected(
    name: str, args: dict[str, Any], reason: str, tmp_path: Path
) -> None:
    acks = FakeAcks()
    handler = make_handler(acks, config=remote_config(tmp_path / "c.json")[0])
    await run(handler, Command("c1", name, args))
    ((status, detail),) = acks.of("c1")
    assert status is R
    assert reason in detail
    assert handler.counters["rejected"] == 1


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1garbage",
        b"\x93\x02\xa2c1\xa4ping",
        b"\x92\x01\xa2c1",
        b"\x94\x01\xa2c1\xa4ping\x05",
    ],
)
async def test_undecodable_commands_are_counted_never_raised(payload: bytes) -> None:
    acks = FakeAcks()
    handler = make_handler(acks)
    await handler.handle(Message(TOPICS.cmd, payload))
    assert handler.counters["decode_errors"] == 1
    assert acks.sent == []


async def test_other_downlink_topics_are_counted_and_left_alone() -> None:
    acks = FakeAcks()
    handler = make_handler(acks)  # without remote configuration, dn/config is only counted
    await handler.handle(Message(TOPICS.desired_config, b"\x94\x01\x05\x80"))
    await handler.handle(message(Command("c1", "ping"), topic="fleet/other/dn/cmd"))
    assert (handler.counters["desired_config"], handler.counters["other_topics"]) == (1, 1)
    assert acks.sent == []
    await run(handler, Command("c2", "set_config", {"values": {}}))
    assert acks.of("c2") == [(R, "remote configuration is off on this agent")]


async def test_desired_configuration_goes_to_remote_config(tmp_path: Path) -> None:
    applied: list[float] = []
    config, reports = remote_config(tmp_path / "c.json", applied.append)
    handler = make_handler(FakeAcks(), config=config)
    doc = ConfigDocument(4, {"health": {"interval_s": 12}})
    await handler.handle(Message(TOPICS.desired_config, encode_config(doc)))
    assert applied == [12.0]
    assert reports[-1] == ReportedConfig(4, doc.values)
    await handler.handle(Message(TOPICS.desired_config, b"\xc1"))  # undecodable: counted
    await handler.handle(Message(TOPICS.desired_config, b""))  # retained message cleared
    assert (handler.counters["desired_config"], handler.counters["decode_errors"]) == (3, 1)
    assert len(reports) == 1


async def test_read_dtcs_without_obd_fails_with_a_reason() -> None:
    acks = FakeAcks()
    await run(make_handler(acks), Command("c1", "read_dtcs"))
    assert acks.of("c1") == [(A, ""), (F, "OBD-II is not enabled (can.obd.enabled)")]


async def test_read_dtcs_reports_the_codes_of_every_ecu() -> None:
    async def two_ecus() -> Mapping[int, AbstractSet[str]]:
        return {0x7E9: frozenset(), 0x7E8: frozenset({"P0420", "P0301"})}

    async def nobody() -> Mapping[int, AbstractSet[str]]:
        return {}

    async def closed() -> Mapping[int, AbstractSet[str]]:
        raise SourceClosed("the OBD poller stopped")

    async def silent() -> Mapping[int, AbstractSet[str]]:
        await asyncio.Event().wait()
        raise AssertionError

    cases = [
        (two_ecus, (D, "stored DTCs 0x7e8: P0301 P0420; 0x7e9: none")),
        (nobody, (F, "no ECU answered (ignition off?)")),
        (closed, (F, "OBD-II: the OBD poller stopped")),
        (silent, (F, "no OBD-II answer within 0.05 s")),
    ]
    for reader, final in cases:
        acks = FakeAcks()
        await run(
            make_handler(acks, read_dtcs=reader, read_dtcs_timeout_s=0.05),
            Command("c", "read_dtcs"),
        )
        assert acks.of("c") == [(A, ""), final], reader.__name__


async def test_set_config_applies_what_it_can_live_and_lists_the_rest(tmp_path: Path) -> None:
    acks = FakeAcks()
    applied: list[float] = []
    config, reports = remote_config(tmp_path / "c.json", applied.append)
    handler = make_handler(acks, config=config)
    values: dict[str, Any] = {"health": {"interval_s": 5}, "uplink": {"batch_max_records": 50}}
    await run(handler, Command("c1", "set_config", {"values": values, "version": 7}))
    assert acks.of("c1") == [
        (A, ""),
        (D, "applied health.interval_s=5.0; pending a restart: uplink.batch_max_records=50"),
    ]
    assert applied == [5.0]
    assert reports[-1] == ReportedConfig(7, values, None, ("uplink.batch_max_records",))
    # A patch of the applied document: the restart key stays pending.
    await run(handler, Command("c2", "set_config", {"values": {"log": {"level": "error"}}}))
    assert acks.of("c2")[1] == (
        D,
        "applied log.level='error'; pending a restart: uplink.batch_max_records=50",
    )
    assert config.applied == Applied(7, values | {"log": {"level": "error"}})
    await run(handler, Command("c3", "set_config", {"values": {"health": {"interval_s": 5.0}}}))
    assert acks.of("c3")[1][0] is D
    await run(handler, Command("c4", "set_config", {"values": {}, "version": 6}))
    assert acks.of("c4") == [(R, "version 6 is older than the applied 7")]
    assert applied == [5.0]


async def test_a_setter_that_breaks_fails_the_command_and_the_handler_goes_on(
    tmp_path: Path,
) -> None:
    def broken(_: object) -> None:
        raise RuntimeError("boom")

    acks = FakeAcks()
    config, reports = remote_config(tmp_path / "c.json", broken)
    handler = make_handler(acks, config=config)
    await run(handler, Command("c1", "set_config", {"values": {"health": {"interval_s": 9}}}))
    await run(handler, Command("c2", "ping"))
    assert acks.of("c1") == [
        (A, ""),
        (F, "applying live failed: health.interval_s (RuntimeError('boom'))"),
    ]
    assert reports[-1].pending_restart == ("health.interval_s",)  # the next start applies it
    assert [s for s, _ in acks.of("c2")] == [A, D]


async def test_a_command_that_breaks_is_acked_failed_and_the_handler_goes_on() -> None:
    async def broken() -> Mapping[int, AbstractSet[str]]:
        raise RuntimeError("boom")

    acks = FakeAcks()
    handler = make_handler(acks, read_dtcs=broken)
    await run(handler, Command("c1", "read_dtcs"))
    await run(handler, Command("c2", "ping"))
    assert acks.of("c1") == [(A, ""), (F, "internal error: RuntimeError('boom')")]
    assert [s for s, _ in acks.of("c2")] == [A, D]
    assert handler.counters["internal_errors"] == 1


async def test_a_command_cut_short_by_shutdown_is_acked_failed() -> None:
    acks = FakeAcks()

    async def forever() -> Mapping[int, AbstractSet[str]]:
        await asyncio.Event().wait()
        raise AssertionError

    handler = make_handler(acks, read_dtcs=forever)
    task = asyncio.create_task(run(handler, Command("c1", "read_dtcs")))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert acks.of("c1") == [(A, ""), (F, "the agent stopped before it finished")]


# -- the ack queue ------------------------------------------------------------------------------


class FakeLink:
    """The MQTT client as the ack queue sees it: up or down, and what each publish does."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.published: list[bytes] = []
        self.failures: list[Exception] = []

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, require_subscriber: bool = False
    ) -> None:
        assert (topic, qos, require_subscriber) == (TOPICS.ack, 1, True)
        await asyncio.sleep(0)
        if self.failures:
            raise self.failures.pop(0)
        self.published.append(payload)


def ack(command_id: str, status: AckStatus = D) -> CommandAck:
    return CommandAck(command_id, status, "", NOW_NS)


def ack_queue(link: FakeLink, maxsize: int = 8) -> AckQueue:
    retry = Backoff(0.01, 0.02, lambda: 0.5)
    return AckQueue(link, TOPICS.ack, maxsize, retry, require_subscriber=True)


@contextlib.asynccontextmanager
async def running(coro: Any) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


async def test_acks_made_offline_wait_and_go_out_in_order_once_connected() -> None:
    link = FakeLink()
    queue = ack_queue(link)
    async with running(queue.run()):
        for i in range(3):
            queue.send(ack(f"c{i}"))
        await asyncio.sleep(0.05)
        assert (link.published, queue.pending) == ([], 3)
        link.failures = [UplinkError("lost"), NotDelivered("no subscriber")]
        link.connected.set()
        await until(lambda: queue.pending == 0)
    assert [decode_ack(p).command_id for p in link.published] == ["c0", "c1", "c2"]
    assert (queue.counters["sent"], queue.counters["retries"]) == (3, 2)


async def test_a_full_ack_queue_drops_accepted_acks_before_final_ones() -> None:
    link = FakeLink()
    queue = ack_queue(link, maxsize=3)
    for item in (ack("c1", A), ack("c1"), ack("c2", A), ack("c2"), ack("c3")):
        queue.send(item)
    assert queue.pending == 3
    assert queue.counters["dropped"] == 2
    link.connected.set()
    await queue.flush(1.0)
    assert [(a.command_id, a.status) for a in map(decode_ack, link.published)] == [
        ("c1", D), ("c2", D), ("c3", D),
    ]  # fmt: skip


async def test_an_ack_the_broker_refuses_is_dropped_not_retried() -> None:
    link = FakeLink()
    link.connected.set()
    link.failures = [PublishRejected("not authorized")]
    queue = ack_queue(link)
    queue.send(ack("c1"))
    queue.send(ack("c2"))
    await queue.flush(1.0)
    assert [decode_ack(p).command_id for p in link.published] == ["c2"]
    assert queue.counters["refused"] == 1


async def test_a_long_reason_is_clipped_to_the_protocol_limit() -> None:
    acks = FakeAcks()
    args = {f"{i:02d}" + "x" * 60: i for i in range(20)}
    await run(make_handler(acks), Command("c1", "ping", args))
    ((status, detail),) = acks.of("c1")
    assert (status, len(detail), detail[-3:]) == (R, 256, "...")
    assert all(encode_ack(a) for a in acks.sent)


# -- the OBD poller's read-now hook, on a python-can virtual bus -------------------------------


@pytest.fixture
def channel() -> str:
    return f"cmd-{uuid.uuid4().hex}"


@contextlib.asynccontextmanager
async def obd_vehicle(
    channel: str, state: EcuState
) -> AsyncIterator[tuple[ObdPoller, list[Record]]]:
    """A simulated ECU and a running poller (scheduled DTC reads an hour apart)."""
    ecu_bus = can.Bus(interface="virtual", channel=channel)
    settings = ObdSettings(poll_interval_s=0.05, response_timeout_s=0.1, dtc_interval_s=3600)
    try:
        async with (
            SimulatedEcu(ecu_bus, state),
            CanPort(CanSettings(interface="virtual", channel=channel)) as port,
        ):
            poller = ObdPoller(port, settings)
            records: list[Record] = []

            async def pump() -> None:
                async for record in poller.records():
                    records.append(record)

            async with running(pump()):
                await until(lambda: bool(poller.support))
                yield poller, records
    finally:
        ecu_bus.shutdown()


def dtcs(records: list[Record]) -> list[tuple[str, bool]]:
    return [(r.code, r.active) for r in records if isinstance(r, Dtc)]


async def test_a_requested_dtc_read_happens_now_and_reports_every_stored_code(
    channel: str,
) -> None:
    state = EcuState()
    async with obd_vehicle(channel, state) as (poller, records):
        await until(lambda: poller.counters["requests"] > 5)  # past the first scheduled read
        state.dtcs = ["P0420", "P0301"]
        assert dtcs(records) == []  # the next scheduled read is an hour away
        async with asyncio.timeout(2):
            assert await poller.request_dtc_read() == {0x7E8: frozenset({"P0301", "P0420"})}
        await until(lambda: len(dtcs(records)) == 2)
        assert dtcs(records) == [("P0301", True), ("P0420", True)]
        state.dtcs = ["P0420"]
        async with asyncio.timeout(2):
            assert await poller.request_dtc_read() == {0x7E8: frozenset({"P0420"})}
        await until(lambda: len(dtcs(records)) == 4)
        # Every stored code again (the sampler drops repeats), and the one that cleared.
        assert dtcs(records)[2:] == [("P0420", True), ("P0301", False)]
    assert poller.counters["dtc_reads_requested"] == 2


async def test_a_dtc_read_with_the_ignition_off_answers_nobody(channel: str) -> None:
    state = EcuState()
    async with obd_vehicle(channel, state) as (poller, _):
        state.ignition_on = False
        async with asyncio.timeout(10):
            reading = await poller.request_dtc_read()
    assert reading == {}


# -- the whole agent against a real Mosquitto ------------------------------------------------


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    with Mosquitto(USERS, mosquitto_acl_entries("fleet").splitlines()) as b:
        yield b


def backend_settings(port: int) -> UplinkSettings:
    return UplinkSettings(
        host="127.0.0.1", port=port, username="backend", password=USERS["backend"]
    )


class Cloud:
    """The backend's side: sends commands, collects acks and DTCs of the device."""

    def __init__(self, port: int) -> None:
        self.client = MqttClient(backend_settings(port), "backend-commands-test")
        self.acks: list[CommandAck] = []
        self.dtcs: list[Dtc] = []
        self.reported: ReportedConfig | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Cloud:
        await self.client.connect()
        await self.client.subscribe(TOPICS.ack, qos=1)
        await self.client.subscribe(TOPICS.events, qos=1)
        await self.client.subscribe(TOPICS.config, qos=1)
        self._task = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.disconnect()

    async def _collect(self) -> None:
        async for msg in self.client.messages():
            if msg.topic == TOPICS.ack:
                self.acks.append(decode_ack(msg.payload))
            elif msg.topic == TOPICS.config:
                self.reported = decode_reported_config(msg.payload)
            else:
                batch = decode_batch(msg.payload).batch
                self.dtcs += [e.record for e in batch.entries if isinstance(e.record, Dtc)]

    async def command(self, name: str, args: dict[str, Any] | None = None) -> CommandAck:
        """Send a command and wait for its final ack."""
        command_id = uuid.uuid4().hex
        await self.client.publish(TOPICS.cmd, encode_command(Command(command_id, name, args or {})))
        await until(lambda: any(a.command_id == command_id and a.status != A for a in self.acks))
        return next(a for a in self.acks if a.command_id == command_id and a.status != A)


def agent_settings(tmp_path: Path, port: int) -> EdgeSettings:
    path = tmp_path / "agent.toml"
    path.write_text(
        f"""
[device]
id = "{DEVICE}"
[outbox]
path = "{tmp_path / "outbox.sqlite3"}"
[uplink]
host = "127.0.0.1"
port = {port}
username = "{DEVICE}"
password = "{USERS[DEVICE]}"
backoff_initial_s = 0.2
backoff_max_s = 1.0
"""
    )
    return load_settings(path)


@pytest.mark.mosquitto
async def test_the_simulated_vehicle_answers_commands_over_mosquitto(
    tmp_path: Path, broker: Mosquitto
) -> None:
    stop = asyncio.Event()
    agents: list[Any] = []
    vehicle = simulate(
        agent_settings(tmp_path, broker.port),
        SimOptions(quiet=True),
        io.StringIO(),
        stop,
        on_agent=agents.append,
    )
    async with Cloud(broker.port) as cloud, running(vehicle):
        await until(lambda: bool(agents) and agents[0].counters().get("uplink.connects", 0) > 0)
        ping = await cloud.command("ping")
        assert (ping.status, ping.detail[:6]) == (D, "agent ")
        # The simulated drive stores P0420 after 8 s; a read on demand finds it well before
        # the next scheduled read (every 60 s) would.
        while "P0420" not in (reading := await cloud.command("read_dtcs")).detail:
            assert reading.status is D, reading
            await asyncio.sleep(1.0)
        assert (reading.status, reading.detail) == (D, "stored DTCs 0x7e8: P0420")
        await until(lambda: any(d.code == "P0420" and d.active for d in cloud.dtcs))
        values = {
            "health": {"interval_s": 30},
            "sampling": {"signal_interval_s": 2},
            "uplink": {"batch_max_records": 100},
            "log": {"level": "info"},
            "outbox": {"max_bytes": 32 << 20},
        }
        config = await cloud.command("set_config", {"values": values, "version": 1})
        assert (config.status, config.detail) == (
            D,
            "applied sampling.signal_interval_s=2.0, health.interval_s=30.0, log.level='info', "
            "outbox.max_bytes=33554432; pending a restart: uplink.batch_max_records=100",
        )
        await until(lambda: cloud.reported is not None and cloud.reported.version == 1)
        assert cloud.reported == ReportedConfig(1, values, None, ("uplink.batch_max_records",))
        unknown = await cloud.command("open_pod_bay_doors")
        assert unknown.status is R
        count = agents[0].counters
        # Two acks per command, one for the rejected one; PUBACKs may still be on their way.
        await until(lambda: count()["acks.sent"] == 2 * count()["commands.received"] - 1)
        assert count()["commands.rejected"] == 1
        assert count()["commands.duplicates"] == count()["commands.decode_errors"] == 0
        stop.set()


@pytest.mark.mosquitto
async def test_acks_made_while_the_broker_is_down_are_sent_after_it_returns(
    broker: Mosquitto,
) -> None:
    device = MqttClient(
        UplinkSettings(
            host="127.0.0.1",
            port=broker.port,
            username=DEVICE,
            password=USERS[DEVICE],
            connect_timeout_s=2.0,
        ),
        DEVICE,
    )
    queue = AckQueue(
        device, TOPICS.ack, 16, Backoff(0.05, 0.2, lambda: 0.5), require_subscriber=True
    )
    async with running(queue.run()):
        await device.connect()
        await asyncio.to_thread(broker.stop)
        await until(lambda: not device.is_connected)
        queue.send(ack("c1", A))
        queue.send(ack("c1"))
        await asyncio.sleep(0.2)
        assert queue.pending == 2
        await asyncio.to_thread(broker.start)
        async with Cloud(broker.port) as cloud:  # subscribed before the device is back
            await device.connect()
            await until(lambda: len(cloud.acks) == 2)
        await device.disconnect()
    assert [(a.command_id, a.status) for a in cloud.acks] == [("c1", A), ("c1", D)]
