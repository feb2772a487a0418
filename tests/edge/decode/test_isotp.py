"""ISO 15765-2 transport: hand-made frames, sender/receiver round trips, and real captures."""

from __future__ import annotations

from pathlib import Path

import cantools
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetlink_edge.decode.isotp import (
    FS_OVERFLOW,
    FS_WAIT,
    CaptureReassembler,
    Complete,
    IsoTpMessage,
    IsoTpOverflowError,
    IsoTpProtocolError,
    IsoTpSequenceError,
    IsoTpTimeoutError,
    IsoTpUnexpectedFrameError,
    Reassembler,
    Rejected,
    Sender,
    SenderState,
    SendFlowControl,
    encode_flow_control,
    encode_single,
    st_min_s,
)
from fleetlink_edge.frames import CanFrame
from fleetlink_edge.sources.replay import read_log

HYUNDAI = "can/uds_isotp/css_2F6913DB_00001089_00000001-63BEF5CD.candump.log"
LEAF = "can/uds_isotp/css_data-processing_2F6913DB_00000004_00000001.candump.log"


def transfer(payload: bytes, *, block_size: int = 0, st_min: int = 0) -> tuple[bytes, int]:
    """Send ``payload`` through Sender into an active Reassembler; returns payload and frames."""
    sender = Sender(payload)
    receiver = Reassembler(block_size=block_size, st_min=st_min)
    now, frames, result = 0.0, 0, b""
    while not sender.done:
        for data in sender.poll(now):
            frames += 1
            assert len(data) == 8  # padded classic CAN frames
            for event in receiver.feed(data, now):
                if isinstance(event, SendFlowControl):
                    sender.on_flow_control(event.data, now)
                elif isinstance(event, Complete):
                    result = event.payload
                else:
                    pytest.fail(f"unexpected {event}")
        wake = sender.wake_s
        now = max(now, wake) if wake is not None else now
    return result, frames


def test_single_frame_is_padded_with_cc() -> None:
    assert encode_single(b"\x01\x0c") == bytes.fromhex("02010CCCCCCCCCCC")
    assert encode_single(b"\x01\x0c", padding=None) == bytes.fromhex("02010C")
    with pytest.raises(IsoTpOverflowError):
        encode_single(bytes(8))


def test_single_frame_decodes_and_ignores_padding() -> None:
    assert Reassembler().feed(bytes.fromhex("0441 0C1AF8 AAAAAA"), 0.0) == [
        Complete(bytes.fromhex("410C1AF8"))
    ]


@pytest.mark.parametrize("length", [1, 7, 8, 13, 14, 20, 111, 112, 113, 300, 4095])
def test_round_trip_lengths(length: int) -> None:
    payload = bytes(i & 0xFF for i in range(length))
    result, frames = transfer(payload)
    assert result == payload
    assert frames == (1 if length <= 7 else 1 + -(-(length - 6) // 7))


@given(
    payload=st.binary(min_size=1, max_size=600),
    block_size=st.integers(0, 5),
    st_min=st.sampled_from([0, 1, 0x7F, 0xF1, 0xF9]),
)
def test_round_trip_with_flow_control(payload: bytes, block_size: int, st_min: int) -> None:
    assert transfer(payload, block_size=block_size, st_min=st_min)[0] == payload


def test_sequence_number_wraps_after_15() -> None:
    sender = Sender(bytes(range(200)))
    frames = sender.poll(0.0)
    sender.on_flow_control(encode_flow_control(), 0.0)
    frames += sender.poll(0.0)
    assert [f[0] for f in frames[15:18]] == [0x2F, 0x20, 0x21]
    receiver = Reassembler(active=False)
    events = [e for f in frames for e in receiver.feed(f, 0.0)]
    assert events == [Complete(bytes(range(200)))]


def test_missing_consecutive_frame_is_a_sequence_error() -> None:
    receiver = Reassembler(active=False)
    assert receiver.feed(bytes.fromhex("1014 620100 7FD407"), 0.0) == []
    assert receiver.feed(bytes.fromhex("21 C8FF655D5F00E4"), 0.01) == []
    [rejected] = receiver.feed(bytes.fromhex("23 FF55866D7302FF"), 0.02)
    assert isinstance(rejected, Rejected)
    assert isinstance(rejected.error, IsoTpSequenceError)
    assert not receiver.busy
    [late] = receiver.feed(bytes.fromhex("24 FF010000000000"), 0.03)
    assert isinstance(late, Rejected)
    assert isinstance(late.error, IsoTpUnexpectedFrameError)


def test_short_consecutive_frame_is_rejected() -> None:
    receiver = Reassembler(active=False)
    receiver.feed(bytes.fromhex("1014 0102030405 06"), 0.0)
    [rejected] = receiver.feed(bytes.fromhex("21 0708"), 0.01)  # not the last CF: needs 8 bytes
    assert isinstance(rejected, Rejected)
    assert isinstance(rejected.error, IsoTpProtocolError)
    assert not receiver.busy
    # The last CF may be as short as what is left (no padding).
    receiver.feed(bytes.fromhex("1009 0102030405 06"), 0.0)
    assert receiver.feed(bytes.fromhex("21 070809"), 0.01) == [Complete(bytes(range(1, 10)))]


def test_new_first_frame_interrupts_transfer() -> None:
    receiver = Reassembler(active=False)
    receiver.feed(bytes.fromhex("100A 0102030405 06"), 0.0)
    events = receiver.feed(bytes.fromhex("02 4100 CCCCCCCCCC"), 0.1)
    assert isinstance(events[0], Rejected)
    assert isinstance(events[0].error, IsoTpUnexpectedFrameError)
    assert events[1] == Complete(b"\x41\x00")


def test_consecutive_frame_timeout() -> None:
    receiver = Reassembler(active=False, timeout_s=1.0)
    receiver.feed(bytes.fromhex("100A 0102030405 06"), 10.0)
    assert receiver.deadline_s == 11.0
    assert receiver.expire(10.9) is None
    expired = receiver.expire(11.5)
    assert expired is not None
    assert isinstance(expired.error, IsoTpTimeoutError)
    # A late CF after the timeout is reported as both timeout and unexpected, never completed.
    receiver.feed(bytes.fromhex("100A 0102030405 06"), 20.0)
    events = receiver.feed(bytes.fromhex("21 0708090A CCCCCC"), 25.0)
    assert [type(e.error) for e in events if isinstance(e, Rejected)] == [
        IsoTpTimeoutError,
        IsoTpUnexpectedFrameError,
    ]


@pytest.mark.parametrize(
    "data",
    [
        bytes.fromhex("00 0102030405 0607"),  # SF length 0 (CAN FD escape) on classic CAN
        bytes.fromhex("09 0102030405 0607"),  # SF length beyond the frame
        bytes.fromhex("1005 0102030405 06"),  # FF announcing a single-frame length
        bytes.fromhex("1014 0102"),  # FF shorter than 8 bytes
        bytes.fromhex("4001"),  # reserved PCI
        b"",
    ],
)
def test_malformed_frames_are_rejected(data: bytes) -> None:
    [event] = Reassembler().feed(data, 0.0)
    assert isinstance(event, Rejected)
    assert isinstance(event.error, IsoTpProtocolError)


def test_oversized_message_gets_overflow_flow_control() -> None:
    events = Reassembler(max_length=100).feed(bytes.fromhex("10FF 0102030405 06"), 0.0)
    assert isinstance(events[0], Rejected)
    assert isinstance(events[0].error, IsoTpOverflowError)
    assert events[1] == SendFlowControl(encode_flow_control(FS_OVERFLOW))


def test_first_frame_32_bit_length_escape() -> None:
    receiver = Reassembler(active=False)
    assert receiver.feed(bytes.fromhex("1000 00000009 AABB"), 0.0) == []
    assert receiver.feed(bytes.fromhex("21 CCDDEEFF001122"), 0.0) == [
        Complete(bytes.fromhex("AABBCCDDEEFF001122"))
    ]


@given(st.lists(st.binary(max_size=8), max_size=40))
def test_garbage_never_raises(frames: list[bytes]) -> None:
    receiver = Reassembler()
    for i, data in enumerate(frames):
        receiver.feed(data, i * 0.01)


def test_st_min_table() -> None:
    assert st_min_s(0x00) == 0.0
    assert st_min_s(0x7F) == pytest.approx(0.127)
    assert st_min_s(0xF1) == pytest.approx(0.0001)
    assert st_min_s(0xF9) == pytest.approx(0.0009)
    assert st_min_s(0x80) == pytest.approx(0.127)  # reserved -> the largest defined value


def test_sender_paces_by_st_min_and_block_size() -> None:
    sender = Sender(bytes(40))  # FF + 5 CFs
    assert len(sender.poll(0.0)) == 1
    assert sender.poll(0.5) == []
    sender.on_flow_control(encode_flow_control(block_size=2, st_min=10), 0.5)
    assert len(sender.poll(0.5)) == 1
    assert sender.poll(0.505) == []
    assert len(sender.poll(0.510)) == 1
    assert sender.state is SenderState.WAIT_FLOW_CONTROL  # block of 2 sent
    sender.on_flow_control(encode_flow_control(), 0.6)
    assert len(sender.poll(0.6)) == 3
    assert sender.done


def test_sender_times_out_without_flow_control() -> None:
    sender = Sender(bytes(20), timeout_s=1.0)
    sender.poll(0.0)
    assert sender.poll(1.0) == []
    with pytest.raises(IsoTpTimeoutError):
        sender.poll(1.01)


def test_sender_wait_and_overflow() -> None:
    sender = Sender(bytes(20), max_wait_frames=1)
    sender.poll(0.0)
    sender.on_flow_control(encode_flow_control(FS_WAIT), 0.5)
    assert sender.wake_s == 1.5  # N_Bs restarts on FC.WAIT
    with pytest.raises(IsoTpTimeoutError):
        sender.on_flow_control(encode_flow_control(FS_WAIT), 0.6)
    sender = Sender(bytes(20))
    sender.poll(0.0)
    with pytest.raises(IsoTpOverflowError):
        sender.on_flow_control(encode_flow_control(FS_OVERFLOW), 0.1)


@pytest.mark.parametrize("fc", ["33000000", "0300", "30"])
def test_sender_rejects_malformed_flow_control(fc: str) -> None:
    sender = Sender(bytes(20))
    sender.poll(0.0)
    with pytest.raises(IsoTpProtocolError):
        sender.on_flow_control(bytes.fromhex(fc), 0.1)
    assert sender.done


def test_sender_ignores_unrequested_flow_control() -> None:
    sender = Sender(b"\x01\x00")
    sender.on_flow_control(encode_flow_control(), 0.0)
    assert sender.ignored_frames == 1
    assert sender.poll(0.0) == [encode_single(b"\x01\x00")]


# Real captures (../shared/data/can/uds_isotp, see its README for the reference values).


def reassemble(path: Path, ids: set[int]) -> tuple[list[IsoTpMessage], CaptureReassembler]:
    capture = CaptureReassembler(ids=ids)
    frames = (f for f in read_log(path) if f.channel == "can0")  # can1: the logger's own data
    messages = [m for f in frames if (m := capture.feed(f)) is not None]
    return messages, capture


def test_hyundai_capture_sequence_errors_on_7bb(shared_data: Path) -> None:
    messages, capture = reassemble(shared_data / HYUNDAI, {0x7BB})
    assert capture.counters_by_id[0x7BB]["completed"] == 1
    assert capture.counters_by_id[0x7BB]["sequence_error"] == 14
    assert capture.counters_by_id[0x7BB]["frames"] == 15 + 59
    [only] = messages
    db = cantools.database.load_file(str(shared_data / "can/uds_isotp/tp_uds.dbc"))
    # The CSS DBCs expect the first frame's length byte before the service ID (README pitfall).
    decoded = db.decode_message(
        0x7BB, bytes([len(only.payload)]) + only.payload, allow_truncated=True
    )
    assert decoded["M_SID_0x220100_OutdoorTemp"] == 6.5


def test_hyundai_capture_bms_and_7a8_complete(shared_data: Path) -> None:
    messages, capture = reassemble(shared_data / HYUNDAI, {0x7EC, 0x7A8, 0x7E4})
    assert capture.counters_by_id[0x7EC] == {"frames": 74 + 466, "completed": 74}
    assert capture.counters_by_id[0x7A8] == {"frames": 25 + 125, "completed": 25}
    assert capture.counters_by_id[0x7E4] == {"frames": 74, "completed": 74, "flow_control": 75}
    db = cantools.database.load_file(str(shared_data / "can/uds_isotp/tp_uds.dbc"))
    soc = [
        db.decode_message(0x7EC, bytes([len(m.payload) & 0xFF]) + m.payload)
        for m in messages
        if m.arbitration_id == 0x7EC and m.payload.startswith(b"\x62\x01\x01")
    ]
    assert len(soc) == 24
    assert {s["M_SID_0x220101_StateOfChargeBMS"] for s in soc} == {83.5}


def test_nissan_leaf_capture_completes_all(shared_data: Path) -> None:
    messages, capture = reassemble(shared_data / LEAF, {0x7BB})
    assert capture.counters_by_id[0x7BB] == {"frames": 26 + 143, "completed": 26}
    db = cantools.database.load_file(str(shared_data / "can/uds_isotp/tp_uds_nissan.dbc"))
    soc = [
        db.decode_message(0x7BB, bytes([len(m.payload)]) + m.payload, allow_truncated=True)["SoC"]
        for m in messages
        if m.payload.startswith(b"\x61\x01")
    ]
    assert soc
    assert all(89.10 <= value <= 89.23 for value in soc)


def test_capture_bounds_streams() -> None:
    capture = CaptureReassembler(max_streams=2)
    for arbitration_id in (1, 2, 3):
        capture.feed(CanFrame(0, arbitration_id, bytes.fromhex("020100")))
    assert capture.counters["completed"] == 2
    assert capture.counters["too_many_streams"] == 1
