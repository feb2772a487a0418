"""The OBD-II poller against simulated ECUs on a python-can virtual bus, through CanPort."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable

import can
import pytest

from fleetlink_edge.config import CanSettings, ObdSettings
from fleetlink_edge.decode.isotp import encode_single
from fleetlink_edge.errors import SourceClosed
from fleetlink_edge.frames import CanFrame
from fleetlink_edge.sim.ecu import EcuState, SimulatedEcu
from fleetlink_edge.sources.can import CanPort
from fleetlink_edge.sources.obd import EcuAnswer, Exchange, ObdPoller
from fleetlink_protocols.obd import NegativeResponse, PositiveResponse
from fleetlink_protocols.records import Dtc, DtcSource, Record, SignalValue

FAST = {"poll_interval_s": 0.05, "response_timeout_s": 0.1, "dtc_interval_s": 0.3}


@pytest.fixture
def channel() -> str:
    return f"obd-{uuid.uuid4().hex}"


@pytest.fixture
async def port(channel: str) -> AsyncIterator[CanPort]:
    async with CanPort(CanSettings(interface="virtual", channel=channel)) as opened:
        yield opened


@contextlib.asynccontextmanager
async def ecu(channel: str, state: EcuState, **options: object) -> AsyncIterator[SimulatedEcu]:
    bus = can.Bus(interface="virtual", channel=channel)
    try:
        async with SimulatedEcu(bus, state, **options) as running:  # type: ignore[arg-type]
            yield running
    finally:
        bus.shutdown()


async def collect(
    poller: ObdPoller, until: Callable[[list[Record]], bool], timeout_s: float = 10.0
) -> list[Record]:
    """Run the poller until ``until(records)`` holds."""
    records: list[Record] = []
    async with asyncio.timeout(timeout_s), contextlib.aclosing(poller.records()) as stream:
        async for record in stream:
            records.append(record)
            if until(records):
                break
    return records


def values(records: list[Record]) -> dict[str, object]:
    return {r.path: r.value for r in records if isinstance(r, SignalValue)}


def polled_twice(paths: set[str]) -> Callable[[list[Record]], bool]:
    def done(records: list[Record]) -> bool:
        seen = [r.path for r in records if isinstance(r, SignalValue)]
        return all(seen.count(p) >= 2 for p in paths)

    return done


async def test_discovers_and_polls_only_supported_pids(channel: str, port: CanPort) -> None:
    state = EcuState(rpm=1726, speed_kmh=50, coolant_c=83, odometer_km=12345.6)
    supported = {0x05, 0x0C, 0x0D, 0xA6}
    async with ecu(channel, state, supported=supported) as sim:
        poller = ObdPoller(port, ObdSettings(**FAST))
        before_ns = time.time_ns()
        records = await collect(poller, polled_twice({"Vehicle.OBD.Speed"}))
    assert poller.support == {0x7E8: frozenset(supported | {0x20, 0x40, 0x60, 0x80, 0xA0})}
    assert poller.polled_pids == [0x05, 0x0C, 0x0D, 0xA6]  # configured order, supported only
    assert values(records) == {
        "Vehicle.VehicleIdentification.VIN": "1FLTS2AB1NA000042",
        "Vehicle.OBD.CoolantTemperature": 83.0,
        "Vehicle.OBD.EngineSpeed": 1726.0,
        "Vehicle.OBD.Speed": 50.0,
        "Vehicle.TraveledDistance": pytest.approx(12345600.0),
    }
    assert all(before_ns <= r.ts_wall_ns <= time.time_ns() for r in records)
    assert sim.counters["silent"] == 0  # never asked for anything the ECU does not support
    counters = poller.counters
    assert counters["responses"] == counters["requests"] > 10
    assert counters["timeouts"] == counters["negative_responses"] == counters["isotp_errors"] == 0


async def test_values_follow_the_ecu_state(channel: str, port: CanPort) -> None:
    state = EcuState(speed_kmh=10)
    async with ecu(channel, state):
        poller = ObdPoller(port, ObdSettings(**FAST, pids=[0x0D]))

        def speeds(records: list[Record]) -> list[object]:
            return [
                r.value for r in records if isinstance(r, SignalValue) and r.path.endswith("Speed")
            ]

        def changed(records: list[Record]) -> bool:
            if len(speeds(records)) == 2:
                state.speed_kmh = 88.0  # the simulator moves on
            return 88.0 in speeds(records)

        records = await collect(poller, changed)
    assert speeds(records)[:2] == [10.0, 10.0]


async def test_two_ecus_answer_functional_requests(channel: str, port: CanPort) -> None:
    engine, gearbox = EcuState(speed_kmh=61), EcuState(speed_kmh=60, dtcs=["P0700"])
    async with (
        ecu(channel, engine, supported={0x0C, 0x0D}),
        ecu(channel, gearbox, index=1, supported={0x0D}),
    ):
        poller = ObdPoller(port, ObdSettings(**FAST, pids=[0x0C, 0x0D]))
        records = await collect(poller, polled_twice({"Vehicle.OBD.Speed"}))
    assert set(poller.support) == {0x7E8, 0x7E9}
    assert values(records)["Vehicle.OBD.Speed"] == 61.0  # the engine ECU (0x7E8) wins
    assert [r for r in records if isinstance(r, Dtc)] == [
        Dtc(records_ts(records, "P0700"), DtcSource.OBD, "P0700", ecu=0x7E9)
    ]
    assert poller.counters["timeouts"] == 0


def records_ts(records: list[Record], code: str) -> int:
    return next(r.ts_wall_ns for r in records if isinstance(r, Dtc) and r.code == code)


async def test_multi_frame_dtcs_appear_and_clear(channel: str, port: CanPort) -> None:
    state = EcuState(dtcs=["P0301", "P0302", "P0420", "U0100"])  # 10 bytes: multi-frame
    async with ecu(channel, state):
        poller = ObdPoller(port, ObdSettings(**FAST))

        def cleared(records: list[Record]) -> bool:
            dtcs = [r for r in records if isinstance(r, Dtc)]
            if len(dtcs) == 4:
                state.dtcs = ["P0420"]  # a repair: three codes go away
            return len(dtcs) == 7

        records = await collect(poller, cleared)
    dtcs = [(r.code, r.active) for r in records if isinstance(r, Dtc)]
    assert dtcs[:4] == [("P0301", True), ("P0302", True), ("P0420", True), ("U0100", True)]
    assert sorted(dtcs[4:]) == [("P0301", False), ("P0302", False), ("U0100", False)]
    assert poller.counters["isotp_errors"] == 0


async def test_several_pids_per_request(channel: str, port: CanPort) -> None:
    state = EcuState(rpm=900, speed_kmh=12, fuel_level_pct=50.2)
    async with ecu(channel, state) as sim:
        poller = ObdPoller(port, ObdSettings(**FAST, pids_per_request=6))
        records = await collect(poller, polled_twice({"Vehicle.OBD.FuelLevel"}))
    assert len(poller.polled_pids) == 9
    got = values(records)
    assert got["Vehicle.OBD.EngineSpeed"] == 900.0
    assert got["Vehicle.OBD.FuelLevel"] == pytest.approx(50.2, abs=0.2)
    assert len(got) == 10  # nine PIDs and the VIN
    assert sim.counters["silent"] == 0


async def test_response_pending_extends_the_wait(channel: str, port: CanPort) -> None:
    async with ecu(channel, EcuState(speed_kmh=33), pending_delay_s=0.1):
        poller = ObdPoller(port, ObdSettings(**FAST, pids=[0x0D]))
        records = await collect(poller, polled_twice({"Vehicle.OBD.Speed"}))
    assert values(records)["Vehicle.OBD.Speed"] == 33.0
    assert poller.counters["response_pending"] >= 4


async def test_ignition_off_leads_to_rediscovery(channel: str, port: CanPort) -> None:
    state = EcuState(speed_kmh=20)
    settings = ObdSettings(**FAST, pids=[0x0D], discovery_retry_s=0.1)
    async with ecu(channel, state):
        poller = ObdPoller(port, settings)

        def back_on(records: list[Record]) -> bool:
            speeds = [r for r in records if isinstance(r, SignalValue) and r.path.endswith("Speed")]
            if len(speeds) == 2 and state.ignition_on:
                state.ignition_on = False
                asyncio.get_running_loop().call_later(1.0, setattr, state, "ignition_on", True)
            return len(speeds) == 3

        await collect(poller, back_on)
    assert poller.counters["rediscoveries"] == 1
    assert poller.counters["timeouts"] >= settings.rediscover_after_silent_cycles


async def test_no_ecu_means_no_records(port: CanPort) -> None:
    poller = ObdPoller(port, ObdSettings(**FAST, discovery_retry_s=0.05))
    with pytest.raises(TimeoutError):
        await collect(poller, lambda records: True, timeout_s=0.5)
    assert poller.support == {}
    assert poller.counters["requests"] >= 2
    # Every request timed out, but the last one may have been cut short by the test's timeout.
    assert poller.counters["timeouts"] >= poller.counters["requests"] - 1


async def test_hostile_frames_are_counted(channel: str, port: CanPort) -> None:
    rogue = can.Bus(interface="virtual", channel=channel)
    try:
        async with ecu(channel, EcuState(speed_kmh=70)):
            poller = ObdPoller(port, ObdSettings(**FAST, pids=[0x0D]))

            def inject(records: list[Record]) -> bool:
                if len(records) == 2:  # garbage from an ECU address the engine does not use
                    for data in ("1014490201314654", "2353324142314E41", "0000", "03410D"):
                        rogue.send(
                            can.Message(
                                arbitration_id=0x7EF, data=bytes.fromhex(data), is_extended_id=False
                            )
                        )
                return len(records) >= 6

            records = await collect(poller, inject)
    finally:
        rogue.shutdown()
    assert values(records)["Vehicle.OBD.Speed"] == 70.0
    counters = poller.counters
    assert counters["isotp_errors"] + counters["decode_errors"] + counters["unsolicited"] >= 3


async def test_records_end_when_the_port_closes(channel: str) -> None:
    async with ecu(channel, EcuState()):
        async with CanPort(CanSettings(interface="virtual", channel=channel)) as port:
            poller = ObdPoller(port, ObdSettings(**FAST))
            stream = poller.records()
            first = await anext(stream)
            assert isinstance(first, SignalValue)
        with pytest.raises(SourceClosed):
            await asyncio.wait_for(drain(stream), 5)


async def drain(stream: AsyncIterator[Record]) -> None:
    async for _ in stream:
        pass


def test_exchange_sorts_answers_from_late_frames() -> None:
    """Sans-I/O: one request's answers, a stale answer, an NRC, and a multi-frame start."""
    counters: dict[str, int] = {}
    exchange = Exchange(bytes.fromhex("010D"), 1.0, ObdSettings(), counters)
    stale = CanFrame(1, 0x7E8, encode_single(bytes.fromhex("410C1AF8")))  # answers 01 0C
    assert exchange.feed(stale, 0.1) == []
    assert exchange.answers == {}
    assert counters == {"unsolicited": 1}
    assert exchange.feed(CanFrame(2, 0x7EA, encode_single(bytes.fromhex("7F0112"))), 0.1) == []
    assert exchange.answers[0x7EA].response == NegativeResponse(0x01, 0x12)
    first = CanFrame(3, 0x7E9, bytes.fromhex("1008410D32000000"))
    assert exchange.feed(first, 0.2) == [(0x7E1, bytes.fromhex("300000CCCCCCCCCC"))]
    assert exchange.wait_until_s() == pytest.approx(1.2)  # N_Cr after the first frame
    exchange.feed(CanFrame(4, 0x7E9, bytes.fromhex("210000CCCCCCCCCC")), 0.3)
    assert exchange.answers[0x7E9] == EcuAnswer(
        0x7E9, PositiveResponse(0x01, bytes.fromhex("0D320000000000")), 4
    )
    pending = CanFrame(5, 0x7EB, encode_single(bytes.fromhex("7F0178")))
    exchange.feed(pending, 0.4)
    assert exchange.wait_until_s() == pytest.approx(5.4)  # P2*CAN after "response pending"
    assert counters == {
        "unsolicited": 1,
        "negative_responses": 1,
        "responses": 1,
        "response_pending": 1,
    }
