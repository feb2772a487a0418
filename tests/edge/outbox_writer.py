"""Child process of the crash test: append records until killed, reporting each commit.

Usage: python outbox_writer.py PATH BOOT_ID MAX_BYTES. Prints "ready" once the outbox is open,
then "BOOT FIRST LAST" after every append returned, i.e. once those sequence numbers are
durable. The record stored under a (boot, seq) is ``record_for(boot, seq)``, so the test can
check content as well as presence.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from fleetlink_edge.config import OutboxSettings
from fleetlink_edge.outbox import Outbox
from fleetlink_protocols.records import Dtc, DtcSource, Event, Health, Position, Record, SignalValue

T0_NS = 1_750_000_000 * 1_000_000_000
PATHS = ("Vehicle.Speed", "Vehicle.Powertrain.CombustionEngine.Speed", "Vehicle.OBD.EngineLoad")


def record_for(boot: int, seq: int) -> Record:
    """A record of every type, deterministic in (boot, seq)."""
    ts = T0_NS + boot * 10**12 + seq * 1_000_000
    kind = seq % 10
    if kind < 5:
        return SignalValue(ts, PATHS[seq % 3], float(seq))
    if kind < 8:
        return Position(ts, 52.0 + seq * 1e-6, 4.0 + boot * 1e-3, speed_mps=float(seq % 40))
    if kind == 8:
        return Event(ts, "crash_test", {"boot": boot, "seq": seq}) if seq % 20 else Health(ts)
    return Dtc(ts, DtcSource.OBD, f"P{seq % 10000:04d}")


async def main(path: Path, boot: int, max_bytes: int) -> None:
    settings = OutboxSettings(path=path, max_bytes=max_bytes)
    async with Outbox(settings, boot_id=boot) as outbox:
        print("ready", flush=True)
        n = 1
        while True:
            first = outbox.next_seq
            await outbox.append([record_for(boot, first + i) for i in range(n)])
            print(boot, first, outbox.next_seq - 1, flush=True)
            n = n % 97 + 1  # batch sizes 1..97


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
