"""Capture-path throughput: real J1939 frames through decode, sample and the durable outbox."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from fleetlink_edge.config import CanSettings, J1939Settings, OutboxSettings, SamplingSettings
from fleetlink_edge.decode.can import CanDecoder
from fleetlink_edge.frames import CanFrame
from fleetlink_edge.outbox import Outbox
from fleetlink_edge.sample import Sampler
from fleetlink_edge.sources.replay import read_log
from fleetlink_protocols.records import Record, SignalValue

J1939_LOG = "can/j1939/css_matlab-basics_11111111_00000012_00000001.candump.log"
REPEAT = 4  # the 127 s log four times over, timestamps shifted, about 230,000 frames


def _frames(data: Path) -> list[CanFrame]:
    base = list(read_log(data / J1939_LOG))
    span = base[-1].ts_wall_ns - base[0].ts_wall_ns + 1_000_000
    return [
        CanFrame(
            f.ts_wall_ns + k * span, f.arbitration_id, f.data, f.is_extended, channel=f.channel
        )
        for k in range(REPEAT)
        for f in base
    ]


async def can_capture(data: Path) -> dict[str, Any]:
    frames = _frames(data)
    decoder = CanDecoder.from_settings(CanSettings(j1939=J1939Settings(enabled=True)))
    t0 = time.perf_counter()
    decoded = sum(len(decoder.feed(f)) for f in frames)
    decode_s = time.perf_counter() - t0

    decoder = CanDecoder.from_settings(CanSettings(j1939=J1939Settings(enabled=True)))
    sampler = Sampler(SamplingSettings())
    with tempfile.TemporaryDirectory() as tmp:
        settings = OutboxSettings(path=Path(tmp) / "outbox.sqlite3")
        async with Outbox(settings, boot_id=1) as outbox:
            t0 = time.perf_counter()
            cpu0 = time.process_time()
            pending: list[Record] = []
            stored = 0
            for i, frame in enumerate(frames, 1):
                for record in decoder.feed(frame):
                    kept = sampler.offer(record)
                    if kept is not None:
                        pending.append(kept)
                if i % 2000 == 0 and pending:  # the capture loop's group commit
                    stored += len(await outbox.append(pending))
                    pending = []
            if pending:
                stored += len(await outbox.append(pending))
            full_s = time.perf_counter() - t0
            full_cpu = time.process_time() - cpu0
    return {
        "frames": len(frames),
        "records_decoded": decoded,
        "decode_only_frames_per_s": round(len(frames) / decode_s),
        "capture_path_frames_per_s": round(len(frames) / full_s),
        "capture_path_cpu_s": round(full_cpu, 3),
        "capture_path_wall_s": round(full_s, 3),
        "records_stored_after_sampling": stored,
        "goal_frames_per_s": 50_000,
    }


async def outbox_append() -> dict[str, Any]:
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        settings = OutboxSettings(path=Path(tmp) / "outbox.sqlite3")
        async with Outbox(settings, boot_id=7) as outbox:
            for batch in (1, 10, 100, 1000):
                total = 20_000 if batch >= 100 else 2_000 if batch == 10 else 500
                records = [
                    SignalValue(1_764_072_000_000_000_000 + i, "Vehicle.Speed", float(i % 130))
                    for i in range(total)
                ]
                t0 = time.perf_counter()
                for start in range(0, total, batch):
                    await outbox.append(records[start : start + batch])
                elapsed = time.perf_counter() - t0
                result[f"records_per_s_batch{batch}"] = round(total / elapsed)
                result[f"commits_per_s_batch{batch}"] = round(total / batch / elapsed)
    result["durability"] = "WAL, synchronous=FULL: one fsync'd transaction per append call"
    return result
