"""CanPort over python-can's in-process virtual bus, fed with real captured traffic."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import can
import pytest

from fleetlink_edge.config import CanFilterSettings, CanSettings
from fleetlink_edge.decode.can import CanDecoder
from fleetlink_edge.decode.j1939 import J1939Decoder
from fleetlink_edge.errors import SourceClosed, SourceError
from fleetlink_edge.frames import CanFrame
from fleetlink_edge.sources.can import CanPort
from fleetlink_edge.sources.replay import read_log
from fleetlink_protocols.records import Dtc, SignalValue

J1939_IDLE = "can/j1939/css_matlab-basics_11111111_00000012_00000001.candump.log"
_channels = itertools.count()


@pytest.fixture
def channel() -> str:
    return f"test-can-port-{next(_channels)}"


@pytest.fixture
def tx_bus(channel: str) -> Iterator[can.BusABC]:
    # preserve_timestamps: the receiver sees the log's own times, as on a replayed drive.
    bus = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
    yield bus
    bus.shutdown()


def _settings(channel: str, **kw: object) -> CanSettings:
    return CanSettings.model_validate({"interface": "virtual", "channel": channel, **kw})


def _message(frame: CanFrame) -> can.Message:
    return can.Message(
        timestamp=frame.ts_wall_ns / 1e9,
        arbitration_id=frame.arbitration_id,
        data=frame.data,
        is_extended_id=frame.is_extended,
        is_error_frame=frame.is_error,
        is_remote_frame=frame.is_remote,
    )


async def _wait_for(port: CanPort, key: str, value: int) -> None:
    """Wait (bounded) until the Notifier thread has handed ``value`` frames to the loop."""
    for _ in range(1000):
        if port.counters[key] >= value:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"{key} reached only {port.counters[key]} of {value}")


async def test_real_j1939_log_through_virtual_bus_decodes(
    shared_data: Path, channel: str, tx_bus: can.BusABC
) -> None:
    frames = list(itertools.islice(read_log(shared_data / J1939_IDLE), 3000))
    extended = [f for f in frames if f.is_extended]
    direct = CanDecoder(j1939=J1939Decoder())
    expected = [r for f in extended for r in direct.feed(f)]
    decoder = CanDecoder(j1939=J1939Decoder())
    records: list[SignalValue | Dtc] = []
    async with CanPort(_settings(channel)) as port:
        q = port.listen(maxsize=4096, accept=lambda f: f.is_extended)
        for f in frames:
            tx_bus.send(_message(f))
        for _ in extended:
            records.extend(decoder.feed(await q.get()))
        await _wait_for(port, "frames", len(frames))
    assert port.counters["frames"] == 3000
    assert port.counters["dropped"] == q.dropped == 0
    assert len(q) == 0
    # Through the bus or straight from the file: the same records, log timestamps included.
    assert records == expected
    signals = [r for r in records if isinstance(r, SignalValue)]
    rpm = [r.value for r in signals if r.path == "Vehicle.Powertrain.CombustionEngine.Speed"]
    assert len(rpm) == 838  # every EEC1 frame among the first 3,000
    assert all(646.5 <= float(v) <= 653.75 for v in rpm)
    dtcs = {(r.spn, r.fmi, r.occurrences) for r in records if isinstance(r, Dtc)}
    assert dtcs == {(980, 9, 126), (3216, 20, 2), (609, 9, 1), (609, 12, 3)}


async def test_tiny_queue_drops_newest_and_counts_exactly(
    shared_data: Path, channel: str, tx_bus: can.BusABC
) -> None:
    frames = list(itertools.islice(read_log(shared_data / J1939_IDLE), 2000))
    async with CanPort(_settings(channel)) as port:
        tiny = port.listen(maxsize=5)
        roomy = port.listen(maxsize=4096)
        for f in frames:
            tx_bus.send(_message(f))
        await _wait_for(port, "frames", 2000)
        assert tiny.dropped == 1995
        assert roomy.dropped == 0
        assert port.counters["dropped"] == 1995
        # The oldest five survive: newest-dropped keeps the queue's order intact.
        kept = [await tiny.get() for _ in range(5)]
        assert [k.data for k in kept] == [f.data for f in frames[:5]]
        assert tiny.get_nowait() is None
        assert len(roomy) == 2000


async def test_error_and_remote_frames_are_counted(channel: str, tx_bus: can.BusABC) -> None:
    async with CanPort(_settings(channel)) as port:
        q = port.listen(maxsize=10)
        tx_bus.send(can.Message(arbitration_id=0x20000080, is_error_frame=True, data=b"\0" * 8))
        tx_bus.send(
            can.Message(arbitration_id=0x7DF, is_extended_id=False, is_remote_frame=True, dlc=8)
        )
        tx_bus.send(
            can.Message(arbitration_id=0x7E8, is_extended_id=False, data=b"\x02\x41\x0d\x32")
        )
        await _wait_for(port, "frames", 2)
        assert port.counters["error_frames"] == 1
        assert port.counters["remote_frames"] == 1
        remote, data = await q.get(), await q.get()
    assert remote.is_remote
    assert remote.arbitration_id == 0x7DF
    assert data.data == b"\x02\x41\x0d\x32"
    assert not data.is_extended
    assert len(q) == 0


async def test_accept_predicate_and_bus_filters(channel: str, tx_bus: can.BusABC) -> None:
    # Only 0x7E8-0x7EF pass the bus filter; the queue further keeps 0x7E8 alone.
    flt = CanFilterSettings(can_id=0x7E8, can_mask=0x7F8, extended=False)
    async with CanPort(_settings(channel, filters=[flt])) as port:
        q = port.listen(maxsize=10, accept=lambda f: f.arbitration_id == 0x7E8)
        everything = port.listen(maxsize=10)
        for can_id in (0x7E0, 0x7E8, 0x7E9, 0x123, 0x7E8):
            tx_bus.send(can.Message(arbitration_id=can_id, is_extended_id=False, data=b"\x01"))
        await _wait_for(port, "frames", 3)
        await asyncio.sleep(0.05)
        assert port.counters["frames"] == 3
        assert len(q) == 2
        assert [(await everything.get()).arbitration_id for _ in range(3)] == [
            0x7E8,
            0x7E9,
            0x7E8,
        ]


async def test_send_reaches_peer_and_failures_are_counted(channel: str) -> None:
    peer = can.Bus(interface="virtual", channel=channel, rx_queue_size=1)
    try:
        async with CanPort(_settings(channel, send_timeout_s=0.01)) as port:
            await port.send(0x7DF, b"\x02\x01\x0c\x00\x00\x00\x00\x00")
            # The peer's one-frame queue is now full: the bus refuses, the port says why.
            with pytest.raises(SourceError, match="send 0x18ea00f9 failed"):
                await port.send(0x18EA00F9, b"\xec\xfe\x00", is_extended=True)
            assert port.counters["sent"] == 1
            assert port.counters["send_errors"] == 1
            with pytest.raises(ValueError, match="out of range"):
                await port.send(0x800, b"")
            with pytest.raises(ValueError, match="longer than 8"):
                await port.send(0x7DF, bytes(9))
        got = peer.recv(timeout=1)
        assert got is not None
        assert got.arbitration_id == 0x7DF
        assert bytes(got.data) == b"\x02\x01\x0c\x00\x00\x00\x00\x00"
    finally:
        peer.shutdown()


async def test_closing_ends_queues_after_draining(channel: str, tx_bus: can.BusABC) -> None:
    async with CanPort(_settings(channel)) as port:
        q = port.listen(maxsize=10)
        tx_bus.send(can.Message(arbitration_id=0x100, data=b"\x01"))
        await _wait_for(port, "frames", 1)
        waiter = asyncio.create_task(port.listen(maxsize=1).get())
        await asyncio.sleep(0)
    assert (await q.get()).arbitration_id == 0x100
    with pytest.raises(SourceClosed):
        await q.get()
    with pytest.raises(SourceClosed):
        await waiter  # a consumer blocked in get() is woken, not left hanging
    with pytest.raises(SourceClosed):
        await port.listen(maxsize=1).get()
    with pytest.raises(SourceClosed):
        await port.send(0x100, b"")


async def test_closed_queue_unsubscribes_and_keeps_its_drops(
    channel: str, tx_bus: can.BusABC
) -> None:
    async with CanPort(_settings(channel)) as port:
        q = port.listen(maxsize=1)
        for i in range(3):
            tx_bus.send(can.Message(arbitration_id=0x100 + i, data=b""))
        await _wait_for(port, "frames", 3)
        q.close()
        assert q.closed
        assert q not in port.queues
        tx_bus.send(can.Message(arbitration_id=0x200, data=b""))
        await _wait_for(port, "frames", 4)
        assert port.counters["dropped"] == 2
        assert (await q.get()).arbitration_id == 0x100
        with pytest.raises(SourceClosed):
            await q.get()


async def test_injected_bus_stays_open_for_its_owner(channel: str) -> None:
    bus = can.Bus(interface="virtual", channel=channel)
    try:
        async with CanPort(_settings(channel), bus=bus):
            pass
        async with CanPort(_settings(channel), bus=bus) as again:  # reusable: not shut down
            assert again.counters["frames"] == 0
    finally:
        bus.shutdown()


async def test_unavailable_interface_is_a_source_error() -> None:
    # No SocketCAN on build machines (and no can99 anywhere): a clear SourceError.
    settings = CanSettings(interface="socketcan", channel="can99")
    with pytest.raises(SourceError, match="cannot open CAN socketcan can99"):
        async with CanPort(settings):
            pass


# The Notifier's receive thread re-raises after reporting the error to the loop; Python then
# prints it through threading.excepthook, which pytest turns into this warning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_vanished_bus_ends_every_queue_with_a_source_error(channel: str) -> None:
    bus = can.Bus(interface="virtual", channel=channel)
    async with CanPort(_settings(channel), bus=bus) as port:
        q = port.listen(maxsize=10)
        waiting = asyncio.create_task(q.get())
        bus.shutdown()  # what an unplugged USB adapter looks like to the receive thread
        with pytest.raises(SourceError, match="receive failed"):
            await asyncio.wait_for(waiting, timeout=10)
        assert port.counters["bus_errors"] == 1
