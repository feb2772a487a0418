"""The uplink loop: a real SQLite outbox streamed to a real Mosquitto, through broker faults."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import pytest

from fleetlink_edge.config import OutboxSettings, UplinkSettings
from fleetlink_edge.errors import UplinkError
from fleetlink_edge.mqtt import Message, MqttClient
from fleetlink_edge.outbox import Lane, Outbox, Stored
from fleetlink_edge.sim.route import Drive
from fleetlink_edge.uplink import LaneTimer, Uplink, split_to_fit
from fleetlink_protocols.codec import Batch, DecodedBatch, decode_batch, encode_batch, quantize
from fleetlink_protocols.errors import InvalidValue
from fleetlink_protocols.limits import MAX_PAYLOAD_BYTES, MAX_TEXT_LEN
from fleetlink_protocols.messages import Birth, Death, decode_status
from fleetlink_protocols.records import Entry, Event, Position, Record, SignalValue
from fleetlink_protocols.topics import TopicKind, Topics, mosquitto_acl_entries
from tests.peers.mosquitto import Mosquitto, MqttProxy

DEVICE = "veh001"
BOOT = 7
USERS = {"veh001": "secret1", "veh002": "secret2", "backend": "secret3"}
TOPICS = Topics("fleet", DEVICE)
T0_NS = 1_717_000_000_000_000_000  # 2024-05-29T16:26:40Z
WAIT_S = 30.0


# -- pure parts -------------------------------------------------------------------------------


def big_events(n: int) -> list[Event]:
    """Events near the per-string limit: about 8 KB each once encoded."""
    text = "x" * MAX_TEXT_LEN
    return [
        Event(T0_NS + i * 1_000_000_000, "diag_dump", {f"k{j}": text for j in range(32)})
        for i in range(n)
    ]


def stored(records: Sequence[Record]) -> list[Stored]:
    return [Stored(100 + i, BOOT, i, r) for i, r in enumerate(records)]


def real_encoder(items: Sequence[Stored]) -> bytes:
    return encode_batch(Batch(DEVICE, BOOT, tuple(Entry(s.seq, s.record) for s in items)))


def test_split_to_fit_keeps_every_record_in_order_under_the_payload_limit() -> None:
    items = stored(big_events(80))  # about 640 KB: needs at least three messages
    parts, unsendable = split_to_fit(items, real_encoder)
    assert unsendable == []
    assert len(parts) >= 3
    assert all(len(payload) <= MAX_PAYLOAD_BYTES for _, payload in parts)
    assert [s.seq for part, _ in parts for s in part] == list(range(80))
    for part, payload in parts:
        assert [e.seq for e in decode_batch(payload).batch.entries] == [s.seq for s in part]


def test_split_to_fit_isolates_a_record_the_codec_refuses() -> None:
    items = stored(big_events(9))

    def refuses_seq_5(part: Sequence[Stored]) -> bytes:
        if any(s.seq == 5 for s in part):
            raise InvalidValue("seq 5 is poisoned")
        return real_encoder(part)

    parts, unsendable = split_to_fit(items, refuses_seq_5)
    assert [s.seq for s in unsendable] == [5]
    assert [s.seq for part, _ in parts for s in part] == [0, 1, 2, 3, 4, 6, 7, 8]


def test_lane_timer() -> None:
    t = LaneTimer(1.0)
    assert not t.due(Lane.LIVE, 0, 10, now=0.0)
    assert not t.due(Lane.LIVE, 3, 10, now=5.0)  # first seen now: waits for more
    assert not t.due(Lane.LIVE, 4, 10, now=5.5)
    assert t.due(Lane.LIVE, 4, 10, now=6.0)  # waited max_delay_s
    assert t.due(Lane.HISTORY, 10, 10, now=6.0)  # a full batch never waits
    t.sent(Lane.LIVE)
    assert not t.due(Lane.LIVE, 1, 10, now=6.1)
    t.expire_all()
    assert t.due(Lane.LIVE, 1, 10, now=6.2)
    assert t.due(Lane.EVENTS, 1, 10, now=6.2)


# -- against Mosquitto ------------------------------------------------------------------------


def drive_records(n: int, *, start_s: int = 0, seed: int = 1) -> list[Record]:
    """``n`` seconds of a simulated drive: a Position and a Vehicle.Speed sample per second."""
    drive = Drive(52.52, 13.405, seed=seed)
    out: list[Record] = []
    for i in range(start_s + n):
        s = drive.step(1.0)
        if i < start_s:
            continue
        ts = T0_NS + i * 1_000_000_000
        out.append(
            Position(ts, s.lat_deg, s.lon_deg, speed_mps=s.speed_mps, heading_deg=s.heading_deg)
        )
        out.append(SignalValue(ts, "Vehicle.Speed", round(s.speed_mps * 3.6, 2)))
    return out


def uplink_settings(port: int, user: str = DEVICE, **kw: object) -> UplinkSettings:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "username": user,
        "password": USERS.get(user),
        "keepalive_s": 5,
        "connect_timeout_s": 5.0,
        "batch_max_records": 40,
        "batch_max_delay_s": 0.05,
        "max_inflight_batches": 4,
        "backoff_initial_s": 0.1,
        "backoff_max_s": 0.5,
        "poll_interval_s": 0.02,
    }
    values.update(kw)
    return UplinkSettings.model_validate(values)


def birth() -> Birth:
    return Birth(DEVICE, BOOT, "0.1.0", T0_NS)


class Backend:
    """The cloud's view: a QoS 1 persistent-session subscriber that reconnects by itself."""

    def __init__(self, port: int) -> None:
        self.client = MqttClient(uplink_settings(port, "backend"), "backend-uplink-test")
        self.messages: list[Message] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Backend:
        self._tasks = [
            asyncio.create_task(self._connect_loop()),
            asyncio.create_task(self._collect()),
        ]
        await until(lambda: self.client.is_connected)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.disconnect()

    async def _connect_loop(self) -> None:
        while True:
            try:
                await self.client.connect()
                await self.client.subscribe("fleet/#", qos=1)
            except UplinkError:
                await asyncio.sleep(0.1)
                continue
            await self.client.wait_disconnected()

    async def _collect(self) -> None:
        async for msg in self.client.messages():
            self.messages.append(msg)

    def on(self, kind: TopicKind) -> list[Message]:
        return [m for m in self.messages if m.topic == TOPICS.topic(kind)]

    def batches(self, *kinds: TopicKind) -> list[DecodedBatch]:
        return [
            decode_batch(m.payload)
            for m in self.messages
            if m.topic in {TOPICS.topic(k) for k in kinds}
        ]

    def received(self) -> dict[int, Record]:
        """seq -> record, over every data topic (duplicates collapse, as in the cloud)."""
        got: dict[int, Record] = {}
        for b in self.batches(TopicKind.LIVE, TopicKind.HISTORY, TopicKind.EVENTS):
            assert b.rejected == ()
            assert (b.batch.device_id, b.batch.boot_id) == (DEVICE, BOOT)
            got.update((e.seq, e.record) for e in b.batch.entries)
        return got

    def statuses(self) -> list[Birth | Death]:
        return [decode_status(m.payload) for m in self.on(TopicKind.STATUS)]


async def until(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.02)


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    with Mosquitto(USERS, mosquitto_acl_entries("fleet").splitlines()) as b:
        yield b


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    async with Outbox(OutboxSettings(path=tmp_path / "outbox.sqlite3"), boot_id=BOOT) as ob:
        yield ob


@contextlib.asynccontextmanager
async def running(uplink: Uplink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(uplink.run(), name="uplink")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def drained(outbox: Outbox) -> bool:
    return await outbox.pending_count() == 0 and outbox.counters["in_flight"] == 0


async def wait_drained(outbox: Outbox, backend: Backend, n: int) -> None:
    async with asyncio.timeout(WAIT_S):
        while True:
            if await drained(outbox) and len(backend.received()) >= n:
                return
            await asyncio.sleep(0.05)


def assert_same(records: Sequence[Record], got: dict[int, Record]) -> None:
    assert sorted(got) == list(range(len(records)))
    for seq, record in enumerate(records):
        assert got[seq] == quantize(record), seq


@pytest.mark.mosquitto
async def test_outbox_records_reach_the_backend_decoded(broker: Mosquitto, outbox: Outbox) -> None:
    records = drive_records(120)
    records[50:50] = [Event(T0_NS + 50_500_000_000, "harsh_braking", {"decel_mps2": 5.2})]
    await outbox.append(records)
    uplink = Uplink(uplink_settings(broker.port), DEVICE, outbox, birth())
    async with Backend(broker.port) as backend, running(uplink):
        await wait_drained(outbox, backend, len(records))
        assert_same(records, backend.received())
        status = backend.statuses()[0]
        assert isinstance(status, Birth)
        assert (status.device_id, status.boot_id, status.agent_version) == (DEVICE, BOOT, "0.1.0")
        (event_batch,) = backend.batches(TopicKind.EVENTS)
        assert [e.seq for e in event_batch.batch.entries] == [50]
        assert uplink.counters.records_sent == len(records)
        assert uplink.counters.batches_sent >= len(records) // 40
        assert uplink.counters.bytes_sent == sum(
            len(m.payload) for m in backend.messages if m.topic != TOPICS.status
        )


@pytest.mark.mosquitto
@pytest.mark.slow
async def test_broker_restart_mid_stream_loses_nothing(broker: Mosquitto, outbox: Outbox) -> None:
    produced: list[Record] = []
    source = iter(drive_records(3000))

    async def produce() -> None:
        while True:
            chunk = [next(source), next(source)]
            produced.extend(chunk)  # append() completes even when cancelled: count it first
            await outbox.append(chunk)
            await asyncio.sleep(0.01)

    uplink = Uplink(uplink_settings(broker.port), DEVICE, outbox, birth())
    async with Backend(broker.port) as backend, running(uplink):
        producer = asyncio.create_task(produce())
        await until(lambda: uplink.counters.records_sent > 100)
        await asyncio.to_thread(broker.stop)
        sent_before = uplink.counters.records_sent
        await asyncio.sleep(3.0)  # an outage while the producer keeps appending
        assert uplink.counters.records_sent == sent_before
        await asyncio.to_thread(broker.start)
        await until(lambda: uplink.counters.records_sent > sent_before + 100)
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer
        await wait_drained(outbox, backend, len(produced))
        assert_same(produced, backend.received())
        assert uplink.counters.disconnects >= 1
        assert uplink.counters.connects >= 2
        assert uplink.counters.connect_failures >= 1  # it retried while the broker was down


@pytest.mark.mosquitto
async def test_after_an_outage_live_goes_first_and_history_drains_oldest_first(
    broker: Mosquitto, outbox: Outbox
) -> None:
    uplink = Uplink(uplink_settings(broker.port, batch_max_records=10), DEVICE, outbox, birth())
    before = drive_records(5)
    during = drive_records(60, start_s=5)
    async with Backend(broker.port) as backend, running(uplink):
        await outbox.append(before)
        await wait_drained(outbox, backend, len(before))
        await asyncio.to_thread(broker.stop)
        await until(lambda: not uplink.client.is_connected)
        await outbox.append(during)
        await asyncio.to_thread(broker.start)
        await wait_drained(outbox, backend, len(before) + len(during))
        assert_same(before + during, backend.received())

    # The broker publishes the will when it shuts down and redelivers unacknowledged QoS 1
    # messages after its restart: look from the second birth on.
    births = [
        i
        for i, m in enumerate(backend.messages)
        if m.topic == TOPICS.status and isinstance(decode_status(m.payload), Birth)
    ]
    after = backend.messages[births[1] :]
    live = [decode_batch(m.payload).batch for m in after if m.topic == TOPICS.live]
    history = [decode_batch(m.payload).batch for m in after if m.topic == TOPICS.history]
    newest_position = quantize(during[-2])
    assert isinstance(newest_position, Position)
    first_live = [e.record for e in live[0].entries]
    assert [r for r in first_live if isinstance(r, Position)] == [newest_position]
    assert quantize(during[-1]) in first_live  # the newest speed sample too
    # The first data message after the reconnect is that live batch.
    first_data = next(m for m in after if m.topic in {TOPICS.live, TOPICS.history})
    assert first_data.topic == TOPICS.live
    history_seqs = [e.seq for b in history for e in b.entries]
    assert history_seqs == sorted(history_seqs)
    assert history_seqs[0] == len(before)  # the oldest backlog record leads the history lane
    assert len(history) >= 10


@pytest.mark.mosquitto
async def test_publishing_to_another_devices_topics_is_rejected_and_nothing_acked(
    broker: Mosquitto, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    # Logged in as veh002 but publishing veh001's topics: the ACL refuses every PUBACK.
    records = drive_records(10)
    await outbox.append(records)
    uplink = Uplink(uplink_settings(broker.port, "veh002"), DEVICE, outbox, birth())
    async with Backend(broker.port) as backend, running(uplink) as task:
        await until(lambda: uplink.counters.publish_rejected >= 2)
        assert not task.done()
        assert await outbox.pending_count() == len(records)
        assert backend.messages == []
    assert uplink.counters.records_sent == 0
    assert "broker rejected a publish" in caplog.text
    assert "Not authorized" in caplog.text


@pytest.mark.mosquitto
async def test_wrong_password_is_logged_and_retried(
    broker: Mosquitto, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "fleetlink_edge")
    await outbox.append(drive_records(3))
    settings = uplink_settings(broker.port, password="not-the-password")
    uplink = Uplink(settings, DEVICE, outbox, birth())
    async with running(uplink) as task:
        await until(lambda: uplink.counters.broker_refused >= 3)
        assert not task.done()
    refusals = [
        r for r in caplog.records if "broker refused credentials for user veh001" in r.getMessage()
    ]
    assert len(refusals) >= 3
    assert all(r.levelno == logging.ERROR for r in refusals)
    assert uplink.counters.connects == 0
    assert 0 < uplink.counters.backoff_s <= 0.5
    assert await outbox.pending_count() == 6


@pytest.mark.mosquitto
async def test_birth_on_every_connect_death_as_will_and_on_shutdown(
    broker: Mosquitto, outbox: Outbox
) -> None:
    async with MqttProxy(broker.port) as proxy, Backend(broker.port) as backend:
        uplink = Uplink(uplink_settings(proxy.port), DEVICE, outbox, birth())
        async with running(uplink):
            await until(lambda: len(backend.statuses()) == 1)
            proxy.cut()  # the link dies without DISCONNECT: the broker publishes the will
            await until(lambda: len(backend.statuses()) >= 3)
            await outbox.append(drive_records(2))
            await wait_drained(outbox, backend, 4)
        await until(lambda: len(backend.statuses()) >= 4)
        kinds = [type(s) for s in backend.statuses()]
        assert kinds == [Birth, Death, Birth, Death]
        assert all(s.boot_id == BOOT for s in backend.statuses())
        assert uplink.counters.connects == 2
        assert uplink.counters.disconnects == 1
        # The status topic is retained: a late subscriber learns the device is offline.
        late = MqttClient(uplink_settings(broker.port, "backend"), "late-subscriber")
        async with late:
            await late.subscribe(TOPICS.status)
            async with asyncio.timeout(WAIT_S):
                retained = await anext(aiter(late.messages()))
        assert retained.retain
        assert isinstance(decode_status(retained.payload), Death)


@pytest.mark.mosquitto
async def test_streams_over_mqtt311_when_the_broker_refuses_mqtt5(
    broker: Mosquitto, outbox: Outbox
) -> None:
    records = drive_records(30)
    await outbox.append(records)
    async with MqttProxy(broker.port, refuse_mqtt5=True) as proxy:
        uplink = Uplink(uplink_settings(proxy.port), DEVICE, outbox, birth())
        async with Backend(broker.port) as backend, running(uplink):
            await wait_drained(outbox, backend, len(records))
            assert uplink.client.protocol == "3.1.1"
        assert_same(records, backend.received())


@pytest.mark.mosquitto
async def test_oversized_backlog_is_split_under_the_payload_limit(
    broker: Mosquitto, outbox: Outbox
) -> None:
    events = big_events(60)
    await outbox.append(events)
    settings = uplink_settings(broker.port, batch_max_records=200)
    uplink = Uplink(settings, DEVICE, outbox, birth())
    async with Backend(broker.port) as backend, running(uplink):
        await wait_drained(outbox, backend, len(events))
        assert_same(events, backend.received())
        sizes = [len(m.payload) for m in backend.on(TopicKind.EVENTS)]
    assert len(sizes) >= 2
    assert max(sizes) <= MAX_PAYLOAD_BYTES


@pytest.mark.mosquitto
async def test_downlink_subscription_survives_reconnects(broker: Mosquitto, outbox: Outbox) -> None:
    uplink = Uplink(
        uplink_settings(broker.port), DEVICE, outbox, birth(), subscribe=[TOPICS.downlink_filter]
    )
    backend = MqttClient(uplink_settings(broker.port, "backend"), "backend-commands")
    async with running(uplink), backend:
        await until(lambda: uplink.counters.connects == 1)
        await backend.publish(TOPICS.cmd, b"command 1")
        await asyncio.to_thread(broker.restart)  # the session (and subscription) is persisted
        await until(lambda: uplink.counters.connects == 2)
        await backend.connect()
        await backend.publish(TOPICS.cmd, b"command 2")
        async with asyncio.timeout(WAIT_S):
            got = [m async for m in _first(uplink.client.messages(), 2)]
    assert [(m.topic, m.payload) for m in got] == [
        (TOPICS.cmd, b"command 1"),
        (TOPICS.cmd, b"command 2"),
    ]


async def _first(messages: AsyncIterator[Message], n: int) -> AsyncIterator[Message]:
    for _ in range(n):
        yield await anext(messages)


def test_birth_of_another_device_is_refused(tmp_path: Path) -> None:
    outbox = Outbox(OutboxSettings(path=tmp_path / "o.sqlite3"), boot_id=BOOT)
    with pytest.raises(ValueError, match="veh002"):
        Uplink(uplink_settings(1883), DEVICE, outbox, Birth("veh002", BOOT, "0.1.0", T0_NS))


@pytest.mark.mosquitto
async def test_a_batch_nobody_subscribed_to_stays_in_the_outbox(
    broker: Mosquitto, outbox: Outbox
) -> None:
    """MQTT 5 PUBACK 0x10 "No matching subscribers": the broker dropped it, so it is not acked;
    once the cloud's subscription exists the same records go out."""
    records = drive_records(30)
    await outbox.append(records)
    uplink = Uplink(uplink_settings(broker.port), DEVICE, outbox, birth())
    async with running(uplink):
        await until(lambda: uplink.counters.not_delivered >= 2)  # tried, held back, tried again
        assert uplink.counters.records_sent == 0
        assert await outbox.pending_count() == len(records)
        assert outbox.counters["acked"] == 0
        assert uplink.client.counters.no_subscribers >= 2
        async with Backend(broker.port) as backend:
            await wait_drained(outbox, backend, len(records))
            assert_same(records, backend.received())


@pytest.mark.mosquitto
async def test_without_require_subscriber_a_puback_is_enough(
    broker: Mosquitto, outbox: Outbox
) -> None:
    await outbox.append(drive_records(5))
    uplink = Uplink(uplink_settings(broker.port, require_subscriber=False), DEVICE, outbox, birth())
    async with running(uplink):
        await until(lambda: uplink.counters.records_sent == 10)
        assert await drained(outbox)
        assert uplink.counters.not_delivered == 0
