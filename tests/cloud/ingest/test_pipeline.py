"""The ingest pipeline against a real SQLite store: dedupe, dead letters, lanes, presence order."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import msgpack
import pytest

from fleetlink_cloud.config import IngestSettings
from fleetlink_cloud.errors import StoreError
from fleetlink_cloud.ingest.pipeline import BirthPending, Pipeline
from fleetlink_cloud.store import Store, open_store
from fleetlink_cloud.store.base import IngestBatch, IngestResult
from fleetlink_protocols.catalog import AliasTable
from fleetlink_protocols.limits import MAX_PAYLOAD_BYTES
from fleetlink_protocols.messages import (
    AckStatus,
    Birth,
    CommandAck,
    ConfigDocument,
    ReportedConfig,
    encode_ack,
    encode_birth,
    encode_config,
    encode_death,
    encode_reported_config,
)
from fleetlink_protocols.records import Dtc, DtcSource, Event, Health, Position, SignalValue
from tests.cloud.ingest.fleet import BOOT, DEV, RX0, T0, Msg, S, drive, payload, topic

SETTINGS = IngestSettings()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(f"sqlite:///{tmp_path / 'cloud.sqlite3'}") as s:
        for device in (DEV, "veh002"):
            await s.add_device(device, name=device, password_hash="", created_wall_ns=T0)
        yield s


@pytest.fixture
def pipeline(store: Store) -> Pipeline:
    return Pipeline(store, SETTINGS, topic_prefix="fleet")


def live(records: Sequence[Any], first_seq: int = 0, rx: int = RX0, **kw: Any) -> Msg:
    return Msg(topic("live", kw.get("device", DEV)), payload(records, first_seq, **kw), rx)


async def counts(store: Store) -> dict[str, int]:
    return dict((await store.stats()).counts)


async def event_types(store: Store, after: int = 0) -> list[str]:
    return [e.type for e in await store.stream_events_after(after)]


# -- the happy path and dedupe ----------------------------------------------------------------


async def test_every_record_type_is_stored_and_live_ones_fire_events(
    store: Store, pipeline: Pipeline
) -> None:
    records = [
        Position(T0, 52.5, 13.4, speed_mps=12.0),
        SignalValue(T0, "Vehicle.Speed", 43.2),
        Dtc(T0 + S, DtcSource.OBD, "P0301", ecu=0x7E8),
        Event(T0 + S, "harsh_braking", {"decel_mps2": 5.5}),
        Health(T0 + 2 * S, {"can.frames": 1200}),
    ]
    await pipeline.process([live(records)])
    c = await counts(store)
    assert (c["seen"], c["positions"], c["signals"], c["dtcs"], c["events"], c["health"]) == (
        5, 1, 1, 1, 1, 1,
    )  # fmt: skip
    events = await store.stream_events_after(0)
    assert [e.type for e in events] == [
        "vehicle.online",
        "position",
        "signal",
        "dtc.raised",
        "event",
    ]
    dtc = events[3].data
    assert (dtc["code"], dtc["ecu"], dtc["source"]) == ("P0301", 0x7E8, "obd")
    assert dtc["description"]  # SAE J2012 text
    vehicle = await store.vehicle(DEV)
    assert vehicle is not None
    assert vehicle.position is not None
    assert (vehicle.position.lat_deg, vehicle.position.seq) == (52.5, 0)
    assert pipeline.counters == {
        "messages": 1, "batches.live": 1, "records_stored": 5, "records_duplicate": 0,
    }  # fmt: skip


async def test_a_redelivered_message_is_stored_once_and_fires_once(
    store: Store, pipeline: Pipeline
) -> None:
    msg = live(drive(10))
    await pipeline.process([msg, msg])  # twice in one group
    await pipeline.process([msg])  # and again later (redelivered after a lost PUBACK)
    overlapping = live(drive(15), 0)  # the agent resent seq 0..19 with 10 new records
    await pipeline.process([overlapping])
    c = await counts(store)
    assert (c["seen"], c["positions"], c["signals"]) == (30, 15, 15)
    assert pipeline.counters["records_stored"] == 30
    assert pipeline.counters["records_duplicate"] == 20 + 20 + 20
    types = await event_types(store)
    assert (types.count("position"), types.count("signal"), types.count("vehicle.online")) == (
        15, 15, 1,
    )  # fmt: skip
    positions = (await store.positions(DEV)).items
    assert [p.seq for p in positions] == list(range(0, 30, 2))


# -- dead letters -----------------------------------------------------------------------------


async def test_bad_messages_become_dead_letters_while_good_ones_flow(
    store: Store, pipeline: Pipeline
) -> None:
    garbage = b"\xc1\x00not msgpack"
    oversized = b"\x91" + b"\x00" * MAX_PAYLOAD_BYTES
    spoofed = payload(drive(2), device="veh002")  # veh002's batch on veh001's topic
    group = [
        live(drive(3)),
        Msg(topic("live"), garbage),
        Msg(topic("history"), oversized),
        Msg(topic("live", "veh404"), payload(drive(1), device="veh404")),
        Msg(topic("events"), spoofed),
        Msg("fleet/veh001/telemetry", b"x"),
        Msg("other/veh001/live", b"x"),
        Msg("fleet/bad id/live", b"x"),
        Msg(topic("dn/cmd"), b"x"),
        live(drive(3, start_s=3), 6),
    ]
    await pipeline.process(group)
    assert [p.seq for p in (await store.positions(DEV)).items] == [0, 2, 4, 6, 8, 10]
    assert await store.positions("veh002") == (await store.positions("nobody"))  # nothing
    letters = await store.list_dead_letters()
    got = [(d.topic, d.reason.split(":")[0], d.device_id, d.payload) for d in letters]
    assert got == [
        (topic("live"), "MalformedPayload", DEV, garbage),
        (topic("history"), "PayloadTooLarge", DEV, oversized[:MAX_PAYLOAD_BYTES]),
        (topic("live", "veh404"), "UnknownDevice", "veh404", group[3].payload),
        (topic("events"), "DeviceMismatch", DEV, spoofed),
        ("fleet/veh001/telemetry", "InvalidTopic", None, b"x"),
        ("other/veh001/live", "InvalidTopic", None, b"x"),
        ("fleet/bad id/live", "InvalidDeviceId", None, b"x"),
        (topic("dn/cmd"), "NotUplink", DEV, b"x"),
    ]
    assert letters[2].reason == "UnknownDevice: device 'veh404' is not registered"
    assert letters[3].reason == "DeviceMismatch: topic device 'veh001', envelope device 'veh002'"
    assert letters[1].reason.startswith(f"PayloadTooLarge: {MAX_PAYLOAD_BYTES + 1} bytes exceed")
    assert all(d.received_wall_ns == RX0 for d in letters)
    assert pipeline.counters["dead_letters.InvalidTopic"] == 2
    assert pipeline.counters["records_stored"] == 12
    assert pipeline.counters["messages"] == len(group)


def with_unknown_record_type(data: bytes, index: int, tag: int = 99) -> bytes:
    """Re-pack a batch with entry ``index`` retagged as a record type from a newer version."""
    top = msgpack.unpackb(data)
    top[7][index][0] = tag
    return bytes(msgpack.packb(top))


async def test_an_unknown_record_type_is_a_dead_letter_and_the_rest_is_stored(
    store: Store, pipeline: Pipeline
) -> None:
    raw = with_unknown_record_type(payload(drive(2)), 1)
    await pipeline.process([Msg(topic("live"), raw)])
    assert [(p.seq, p.ts_wall_ns) for p in (await store.positions(DEV)).items] == [
        (0, T0),
        (2, T0 + S),
    ]
    (letter,) = await store.list_dead_letters()
    assert letter.payload == raw
    assert letter.reason.startswith(
        "RejectedEntries: boot 7, 1 of 4 entries: seq 1 UnknownRecordType:"
    )
    assert pipeline.counters["records_rejected"] == 1
    assert pipeline.counters["records_stored"] == 3


async def test_unknown_devices_are_registered_when_accepted(store: Store) -> None:
    pipeline = Pipeline(store, IngestSettings(accept_unknown_devices=True), topic_prefix="fleet")
    await pipeline.process([live(drive(1), device="veh777")])
    device = await store.get_device("veh777")
    assert device is not None
    assert device.created_wall_ns == RX0
    assert len((await store.positions("veh777")).items) == 1
    assert pipeline.counters["devices_registered"] == 1


async def test_a_disabled_device_is_refused(store: Store, pipeline: Pipeline) -> None:
    await store.set_device_disabled("veh002", True)
    await pipeline.process([live(drive(1), device="veh002")])
    (letter,) = await store.list_dead_letters()
    assert letter.reason == "DeviceDisabled: device 'veh002' is disabled"


async def test_records_from_a_clock_far_ahead_never_pin_the_live_position(
    store: Store, pipeline: Pipeline
) -> None:
    year_ahead = T0 + 365 * 86400 * S
    records = [
        Position(T0, 52.0, 13.0),
        Position(year_ahead, 1.0, 1.0),
        Position(T0 + S, 52.1, 13.1),
    ]
    msg = live(records)
    await pipeline.process([msg])
    await pipeline.process([live([Position(T0 + 2 * S, 52.2, 13.2)], 3)])
    vehicle = await store.vehicle(DEV)
    assert vehicle is not None
    assert vehicle.position is not None
    assert (vehicle.position.seq, vehicle.position.lat_deg) == (3, 52.2)
    assert [p.seq for p in (await store.positions(DEV)).items] == [0, 2, 3]
    (letter,) = await store.list_dead_letters()
    assert letter.reason == (
        f"ClockAhead: boot 7, 1 of 3 entries over 300 s ahead of receipt: seq 1 at {year_ahead} ns"
    )
    assert letter.payload == msg.payload
    assert pipeline.counters["records_clock_future"] == 1


# -- lanes ------------------------------------------------------------------------------------


async def test_history_never_moves_live_state_back_nor_fires_events(
    store: Store, pipeline: Pipeline
) -> None:
    rx = T0 + 601 * S
    now = [Position(T0 + 600 * S, 53.0, 14.0), SignalValue(T0 + 600 * S, "Vehicle.Speed", 50.0)]
    await pipeline.process([live(now, 1000, rx)])
    before = await store.latest_stream_event_id()
    backlog = drive(300)  # the five minutes before, arriving after the live data
    history = [
        Msg(topic("history"), payload(backlog[i : i + 100], i), rx + S) for i in range(0, 600, 100)
    ]
    await pipeline.process(history)
    assert await store.stream_events_after(before) == []
    vehicle = await store.vehicle(DEV)
    assert vehicle is not None
    assert vehicle.position is not None
    assert (vehicle.position.seq, vehicle.position.lat_deg) == (1000, 53.0)
    assert vehicle.signals["Vehicle.Speed"].value == 50.0
    assert len((await store.positions(DEV)).items) == 301
    assert pipeline.counters["batches.history"] == 6
    assert pipeline.counters["records_stored"] == 602


async def test_history_of_a_silent_device_fires_nothing(store: Store, pipeline: Pipeline) -> None:
    await pipeline.process([Msg(topic("history"), payload(drive(5)))])
    assert await store.stream_events_after(0) == []
    assert len((await store.positions(DEV)).items) == 5


async def test_events_lane_fires_and_stores(store: Store, pipeline: Pipeline) -> None:
    ev = Event(T0, "ignition_on", {})
    await pipeline.process([Msg(topic("events"), payload([ev]))])
    assert (await event_types(store))[-1] == "event"
    assert [e.kind for e in (await store.events(device_id=DEV)).items] == ["ignition_on"]


# -- status, acks, presence order --------------------------------------------------------------


def birth(boot: int = BOOT, extras: dict[str, int] | None = None, rx: int = RX0) -> Msg:
    b = Birth(DEV, boot, "1.2.3", T0, AliasTable(extras or {}))
    return Msg(topic("status"), encode_birth(b), rx)


def death(boot: int = BOOT, rx: int = RX0) -> Msg:
    return Msg(topic("status"), encode_death(DEV, boot), rx)


async def test_birth_and_death(store: Store, pipeline: Pipeline) -> None:
    await pipeline.process([birth()])
    presence = await store.presence(DEV)
    assert presence is not None
    assert (presence.online, presence.boot_id, presence.agent_version, presence.reason) == (
        True, BOOT, "1.2.3", "birth",
    )  # fmt: skip
    await pipeline.process([death(rx=RX0 + S)])
    presence = await store.presence(DEV)
    assert presence is not None
    assert (presence.online, presence.reason) == (False, "death")
    assert await event_types(store) == ["vehicle.online", "vehicle.offline"]
    assert pipeline.counters["births"] == pipeline.counters["deaths"] == 1


async def test_status_sees_the_batches_received_before_it(store: Store, pipeline: Pipeline) -> None:
    # Timed out, then its last batch and its goodbye arrive in one group: offline at the end.
    await pipeline.process([birth()])
    await store.expire_presence(cutoff_wall_ns=RX0 + S, now_wall_ns=RX0 + 200 * S)
    await pipeline.process([live(drive(1), rx=RX0 + 201 * S), death(rx=RX0 + 202 * S)])
    presence = await store.presence(DEV)
    assert presence is not None
    assert (presence.online, presence.reason) == (False, "death")
    assert await event_types(store) == [
        "vehicle.online", "vehicle.offline", "vehicle.online", "position", "signal",
        "vehicle.offline",
    ]  # fmt: skip


async def test_a_status_of_another_device_is_refused(store: Store, pipeline: Pipeline) -> None:
    await pipeline.process([Msg(topic("status", "veh002"), birth().payload)])
    (letter,) = await store.list_dead_letters()
    assert letter.reason == "DeviceMismatch: topic device 'veh002', status device 'veh001'"
    assert await store.presence("veh002") is None


async def test_device_aliases_are_decoded_with_the_boots_birth(
    store: Store, pipeline: Pipeline
) -> None:
    extras = {"Vehicle.Body.Winch.Load": 1024}
    table = AliasTable(extras)
    sample = [SignalValue(T0, "Vehicle.Body.Winch.Load", 812.5)]
    batch = live(sample, aliases=table)
    with pytest.raises(BirthPending, match="no birth of that boot is stored yet"):
        await pipeline.process([batch])  # on another worker, the birth may be committing now
    assert (await counts(store))["seen"] == 0
    await pipeline.process([birth(extras=extras), batch])
    assert (await store.signals_latest(DEV))["Vehicle.Body.Winch.Load"].value == 812.5
    # A fresh worker (no cache) finds the boot's aliases in the store.
    other = Pipeline(store, SETTINGS, topic_prefix="fleet")
    await other.process(
        [live([SignalValue(T0 + S, "Vehicle.Body.Winch.Load", 9.0)], 1, aliases=table)]
    )
    assert (await store.signals_latest(DEV))["Vehicle.Body.Winch.Load"].value == 9.0


async def test_aliases_of_a_boot_never_born_end_as_a_dead_letter_at_last(
    store: Store, pipeline: Pipeline
) -> None:
    table = AliasTable({"Vehicle.Body.Winch.Load": 1024})
    records = [SignalValue(T0, "Vehicle.Body.Winch.Load", 1.0), Position(T0, 52.0, 13.0)]
    await pipeline.process([live(records, aliases=table)], wait_for_births=False)
    assert [p.seq for p in (await store.positions(DEV)).items] == [1]
    (letter,) = await store.list_dead_letters()
    assert "seq 0 UnknownSignalAlias" in letter.reason


async def test_command_acks(store: Store, pipeline: Pipeline) -> None:
    await store.create_command(DEV, "cmd-1", "reboot", {}, created_wall_ns=T0)
    ack = CommandAck("cmd-1", AckStatus.DONE, "rebooted")
    await pipeline.process([Msg(topic("ack"), encode_ack(ack))])
    row = await store.get_command("cmd-1")
    assert row is not None
    assert (row.status, row.detail, row.acked_wall_ns) == (
        "done",
        "rebooted",
        RX0,
    )
    stray = CommandAck("cmd-9", AckStatus.DONE)
    await pipeline.process([Msg(topic("ack"), encode_ack(stray))])
    (letter,) = await store.list_dead_letters()
    assert letter.reason == "UnknownCommand: ack of command 'cmd-9' never sent to it"


async def test_reported_configurations_replace_the_previous_one(
    store: Store, pipeline: Pipeline
) -> None:
    applied = ReportedConfig(3, {"sampling": {"position_interval_s": 2.0}}, None, ("u.k",))
    await pipeline.process([Msg(topic("config"), encode_reported_config(applied))])
    reported = (await store.get_config(DEV)).reported
    assert reported is not None
    assert (reported.version, reported.document, reported.pending_restart) == (
        3,
        {"sampling": {"position_interval_s": 2.0}},
        ("u.k",),
    )
    assert (reported.refused_version, reported.error, reported.reported_wall_ns) == (
        None,
        None,
        RX0,
    )
    # An agent that writes the plain config layout (no pending keys, no refused version).
    plain = encode_config(ConfigDocument(3, {}, "sampling.x: Extra inputs are not permitted"))
    await pipeline.process([Msg(topic("config"), plain, RX0 + S)])
    reported = (await store.get_config(DEV)).reported
    assert reported is not None
    assert (reported.version, reported.error, reported.refused_version) == (
        3,
        "sampling.x: Extra inputs are not permitted",
        None,
    )
    await pipeline.process([Msg(topic("config"), b"\x93\x01")])
    (letter,) = await store.list_dead_letters()
    assert letter.reason.startswith("MalformedPayload")
    assert pipeline.counters["config_reported"] == 2


# -- failures ---------------------------------------------------------------------------------


class FailingStore:
    """The real store, whose next ``ingest_batches`` fails (a lost database connection)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.fail_next = True

    async def ingest_batches(
        self, batches: Sequence[IngestBatch], events_for: Any = None
    ) -> list[IngestResult]:
        if self.fail_next:
            self.fail_next = False
            raise StoreError("connection lost")
        return await self._store.ingest_batches(batches, events_for)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def test_a_store_failure_counts_nothing_and_the_retry_stores_once(store: Store) -> None:
    flaky = FailingStore(store)
    pipeline = Pipeline(flaky, SETTINGS, topic_prefix="fleet")  # a Store by duck typing
    group = [live(drive(5)), Msg(topic("live"), b"\xc1")]
    with pytest.raises(StoreError, match="connection lost"):
        await pipeline.process(group)
    assert pipeline.counters == {}
    assert (await counts(store))["seen"] == 0
    await pipeline.process(group)
    assert (await counts(store))["seen"] == 10
    assert pipeline.counters["records_stored"] == 10
    assert pipeline.counters["dead_letters.MalformedPayload"] == 1
    assert len(await store.list_dead_letters()) == 1  # written after the batches: once
