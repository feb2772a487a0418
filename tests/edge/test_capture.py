from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fleetlink_edge.capture import Capture
from fleetlink_edge.config import SamplingSettings
from fleetlink_edge.sample import Sampler
from fleetlink_protocols.records import Position, Record, SignalValue

S = 1_000_000_000
T0 = 1_750_000_000 * S


class SlowSink:
    """Stands in for the outbox: records what was appended, one transaction per call."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.transactions: list[list[Record]] = []
        self.delay_s = delay_s

    async def append(self, records: Sequence[Record]) -> list[int]:
        await asyncio.sleep(self.delay_s)
        self.transactions.append(list(records))
        return list(range(len(records)))


def sig(i: int) -> SignalValue:
    return SignalValue(T0 + i * S, "Vehicle.Speed", float(i))


async def test_bursts_are_sampled_and_group_committed() -> None:
    sink = SlowSink()
    cap = Capture(Sampler(SamplingSettings()), sink, now_wall_ns=lambda: T0)
    for i in range(100):
        cap.submit(sig(i))
        cap.submit(Position(T0 + i * S // 10, 1.0, 2.0))  # 10 Hz -> 1 Hz
    task = asyncio.create_task(cap.run(tick_s=0.05))
    await asyncio.sleep(0.2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    appended = [r for t in sink.transactions for r in t]
    assert sum(isinstance(r, SignalValue) for r in appended) == 100
    assert sum(isinstance(r, Position) for r in appended) == 10
    assert len(sink.transactions) == 1  # 200 queued records, one transaction
    assert cap.counters["appended"] == 110


async def test_full_queue_drops_newest_and_counts() -> None:
    cap = Capture(Sampler(SamplingSettings()), SlowSink(), maxsize=5)
    for i in range(8):
        cap.submit(sig(i))
    assert cap.counters == {"submitted": 5, "dropped_queue_full": 3, "appended": 0}


async def test_cancel_during_commit_loses_nothing() -> None:
    sink = SlowSink(delay_s=0.1)
    cap = Capture(Sampler(SamplingSettings(signal_interval_s=0)), sink, max_batch=3)
    for i in range(10):
        cap.submit(sig(i))
    task = asyncio.create_task(cap.run())
    await asyncio.sleep(0.05)  # inside the first (slow) append
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    values = [r.value for t in sink.transactions for r in t if isinstance(r, SignalValue)]
    assert values == [float(i) for i in range(10)]
