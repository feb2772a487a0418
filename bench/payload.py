"""Payload bytes per position: a batch of 10 one-second fixes, envelope included."""

from __future__ import annotations

from typing import Any

from fleetlink_edge.sim.route import Drive
from fleetlink_protocols.codec import Batch, bytes_per_position_example, encode_batch
from fleetlink_protocols.records import Entry, FixMode, Position

T0_NS = 1_764_072_000_000_000_000  # 2025-11-25T12:00:00Z


def _drive_fixes(count: int, seed: int) -> list[Position]:
    drive = Drive(52.52, 13.405, seed=seed)
    for _ in range(600):  # get moving first
        drive.step(0.1)
    fixes = []
    for i in range(count):
        for _ in range(10):
            st = drive.step(0.1)
        fixes.append(
            Position(
                ts_wall_ns=T0_NS + i * 1_000_000_000,
                lat_deg=st.lat_deg,
                lon_deg=st.lon_deg,
                mode=FixMode.FIX_3D,
                alt_msl_m=35.0 + 0.1 * i,
                speed_mps=st.speed_mps,
                heading_deg=st.heading_deg,
                hdop=0.9,
                sats_used=9,
            )
        )
    return fixes


def bytes_per_position() -> dict[str, Any]:
    per_batch = []
    for seed in range(20):
        fixes = _drive_fixes(10, seed)
        entries = tuple(Entry(5000 + i, f) for i, f in enumerate(fixes))
        payload = encode_batch(Batch("veh-0001", 0x1F2E3D4C5B6A7988, entries))
        per_batch.append(len(payload) / len(fixes))
    single = encode_batch(Batch("veh-0001", 0x1F2E3D4C5B6A7988, (Entry(1, _drive_fixes(1, 0)[0]),)))
    return {
        "bytes_per_position_batch10_simulated_drive_mean": round(sum(per_batch) / 20, 2),
        "bytes_per_position_batch10_simulated_drive_max": round(max(per_batch), 2),
        "bytes_per_position_batch10_protocol_example": round(bytes_per_position_example(10), 2),
        "bytes_single_position_batch": len(single),
        "reference_teltonika_codec8_min_bytes_per_record": 45,
    }
