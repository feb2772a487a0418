"""The simulated ECU: J1979 answers without a bus, then ISO-TP on a python-can virtual bus."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import can
import pytest

from fleetlink_edge.decode.isotp import (
    Complete,
    Reassembler,
    SendFlowControl,
    encode_flow_control,
    encode_single,
)
from fleetlink_edge.sim.ecu import EcuState, J1979Responder, SimulatedEcu
from fleetlink_edge.sim.route import Drive
from fleetlink_protocols import obd


def ask(responder: J1979Responder, hex_request: str, *, functional: bool = True) -> str | None:
    answer = responder.answer(bytes.fromhex(hex_request), functional=functional)
    return None if answer is None else answer.hex().upper()


def test_answers_supported_pids_with_j1979_formulas() -> None:
    state = EcuState(rpm=1726, speed_kmh=50, coolant_c=83, odometer_km=12345.6)
    responder = J1979Responder(state)
    assert ask(responder, "010C") == "410C1AF8"
    assert ask(responder, "010D") == "410D32"
    assert ask(responder, "0105") == "41057B"
    assert ask(responder, "01A6") == "41A60001E240"
    assert ask(responder, "010C0D05") == "410C1AF80D3205" + "7B"


def test_refuses_unsupported_pids() -> None:
    responder = J1979Responder(EcuState(), supported={0x0C, 0x0D})
    assert ask(responder, "0105") is None  # functional: silence
    assert ask(responder, "0105", functional=False) == "7F0112"  # physical: NRC 12
    assert ask(responder, "01050D") == "410D00"  # only the supported part is answered
    assert ask(responder, "0100", functional=False) == "4100" + "00180000"
    assert ask(responder, "0120") is None  # nothing above 0x20: no second bitmap
    assert ask(responder, "01000C", functional=False) == "7F0112"  # bitmaps are not mixed
    assert ask(responder, "01" + "0C" * 7, functional=False) == "7F0112"  # at most six PIDs


def test_bitmaps_chain_to_higher_pids() -> None:
    responder = J1979Responder(EcuState(), supported={0x0C, 0xA6})
    answer = ask(responder, "0100")
    assert answer is not None
    assert obd.decode_supported_pids(0x00, bytes.fromhex(answer[4:])) == {0x0C, 0x20}
    for base in (0x20, 0x40, 0x60, 0x80):
        answer = ask(responder, f"01{base:02X}")
        assert answer is not None
        assert obd.decode_supported_pids(base, bytes.fromhex(answer[4:])) == {base + 0x20}
    assert ask(responder, "01A0") == "41A0" + "04000000"  # A6 only; no C0 bitmap
    assert ask(responder, "01C0") is None


def test_dtcs_vin_and_unknown_services() -> None:
    state = EcuState(dtcs=["P0301", "P0420", "U0100"], distance_with_mil_km=42)
    responder = J1979Responder(state)
    assert ask(responder, "03") == "4303" + "0301" + "0420" + "C100"
    assert ask(responder, "0101") == "4101" + "83000000"  # MIL on, 3 DTCs
    assert ask(responder, "04") == "44"
    assert state.dtcs == []
    assert state.distance_with_mil_km == 0
    assert ask(responder, "03") == "4300"
    assert ask(responder, "0900") == "4900" + "40000000"
    assert ask(responder, "0902") == "490201" + b"1FLTS2AB1NA000042".hex().upper()
    assert ask(responder, "0904") is None
    assert ask(responder, "0904", functional=False) == "7F0912"
    assert ask(responder, "2201") is None
    assert ask(responder, "2201", functional=False) == "7F2211"


def test_ignition_off_is_silent() -> None:
    responder = J1979Responder(EcuState(ignition_on=False))
    assert ask(responder, "0100") is None
    assert ask(responder, "0100", functional=False) is None


def test_unencodable_pid_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="cannot encode"):
        J1979Responder(EcuState(), supported={0x0B})


def test_state_follows_simulated_drive() -> None:
    drive = Drive(48.137, 11.575, seed=3)
    state = EcuState()
    for _ in range(200):
        ds = drive.step(0.5)
    state.follow(ds, odometer_start_km=1000.0)
    assert state.speed_kmh == pytest.approx(ds.speed_mps * 3.6)
    assert state.rpm == ds.engine_rpm
    assert state.odometer_km == pytest.approx(1000.0 + ds.odometer_m / 1000)
    assert state.odometer_km > 1000.0


# On a virtual bus: a raw python-can tester talks to the ECU.


@pytest.fixture
def channel() -> str:
    return f"ecu-{uuid.uuid4().hex}"


@pytest.fixture
async def tester(channel: str) -> AsyncIterator[can.BusABC]:
    """A raw diagnostic tester on the virtual bus."""
    tester_bus = can.Bus(interface="virtual", channel=channel)
    yield tester_bus
    tester_bus.shutdown()


@pytest.fixture
async def bus(channel: str) -> AsyncIterator[can.BusABC]:
    """The ECU's own connection to the same virtual bus."""
    ecu_bus = can.Bus(interface="virtual", channel=channel)
    yield ecu_bus
    ecu_bus.shutdown()


async def recv(bus: can.BusABC, timeout_s: float = 2.0) -> can.Message | None:
    msg: can.Message | None = await asyncio.to_thread(bus.recv, timeout_s)
    return msg


async def send(bus: can.BusABC, arbitration_id: int, data: bytes) -> None:
    bus.send(can.Message(arbitration_id=arbitration_id, data=data, is_extended_id=False))


async def test_single_frame_answer_on_7e8(bus: can.BusABC, tester: can.BusABC) -> None:
    async with SimulatedEcu(bus, EcuState(rpm=1726)) as ecu:
        await send(tester, 0x7DF, encode_single(b"\x01\x0c"))
        msg = await recv(tester)
        assert msg is not None
        assert msg.arbitration_id == 0x7E8
        assert bytes(msg.data) == bytes.fromhex("04410C1AF8CCCCCC")
        await send(tester, 0x7DF, encode_single(b"\x01\x0b"))  # unsupported: no answer
        await send(tester, 0x7E0, encode_single(b"\x01\x0b"))  # physical: NRC 12
        msg = await recv(tester)
        assert msg is not None
        assert bytes(msg.data)[:4] == bytes.fromhex("037F0112")
    assert ecu.counters["silent"] == 1


async def test_vin_waits_for_flow_control(bus: can.BusABC, tester: can.BusABC) -> None:
    async with SimulatedEcu(bus, EcuState(), index=2) as ecu:
        await send(tester, 0x7DF, encode_single(b"\x09\x02"))
        first = await recv(tester)
        assert first is not None
        assert first.arbitration_id == 0x7EA
        assert bytes(first.data[:2]) == bytes.fromhex("1014")  # FF, 20 bytes
        assert await recv(tester, 0.3) is None  # no consecutive frame before flow control
        receiver = Reassembler(block_size=1)  # one CF per flow control
        events = receiver.feed(bytes(first.data), 0.0)
        payload = b""
        while not payload:
            for event in events:
                if isinstance(event, SendFlowControl):
                    await send(tester, 0x7E2, event.data)
                elif isinstance(event, Complete):
                    payload = event.payload
            if not payload:
                msg = await recv(tester)
                assert msg is not None
                events = receiver.feed(bytes(msg.data), 0.0)
        assert obd.decode_vin(payload[1:]) == "1FLTS2AB1NA000042"
    assert ecu.counters["responses"] == 1


async def test_ecu_gives_up_without_flow_control(bus: can.BusABC, tester: can.BusABC) -> None:
    async with SimulatedEcu(bus, EcuState(dtcs=["P0301", "P0302", "P0303"]), timeout_s=0.2) as ecu:
        await send(tester, 0x7DF, encode_single(b"\x03"))
        first = await recv(tester)
        assert first is not None
        assert bytes(first.data[:2]) == bytes.fromhex("1008")  # 43 03 + 3 DTCs
        assert await recv(tester, 0.5) is None
        # The ECU is free again: the next request gets its answer.
        await send(tester, 0x7DF, encode_single(b"\x01\x0d"))
        msg = await recv(tester)
        assert msg is not None
        assert bytes(msg.data[:3]) == bytes.fromhex("03410D")
        await send(tester, 0x7E0, encode_flow_control())  # late FC: counted, harmless
        await send(tester, 0x7E0, encode_single(b"\x01\x0d"))
        assert await recv(tester) is not None
    assert ecu.counters["aborted"] == 1
    assert ecu.counters["isotp_errors"] == 1
