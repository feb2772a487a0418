"""Shared builders of the ingest tests: records, encoded batches, received messages, a store."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fleetlink_protocols.catalog import AliasTable
from fleetlink_protocols.codec import Batch, encode_batch
from fleetlink_protocols.records import Entry, Position, Record, SignalValue

S = 1_000_000_000
T0 = 1_717_000_000 * S  # device clock of the first record
RX0 = T0 + 2 * S  # cloud clock at the first receipt
DEV = "veh001"
BOOT = 7
PREFIX = "fleet"
USERS = {"veh001": "secret1", "veh002": "secret2", "veh003": "secret3", "backend": "secret0"}


@dataclass(frozen=True, slots=True)
class Msg:
    """A received message as the pipeline sees it (the consumer's ``Received`` has more)."""

    topic: str
    payload: bytes
    received_wall_ns: int = RX0


def topic(kind: str, device: str = DEV) -> str:
    return f"{PREFIX}/{device}/{kind}"


def drive(
    seconds: int, *, start_s: int = 0, lat0: float = 52.5, speed_mps: float = 10.0
) -> list[Record]:
    """A Position and a Vehicle.Speed sample per second, heading north."""
    out: list[Record] = []
    for i in range(start_s, start_s + seconds):
        ts = T0 + i * S
        out.append(Position(ts, lat0 + i * 1e-4, 13.4, speed_mps=speed_mps))
        out.append(SignalValue(ts, "Vehicle.Speed", round(speed_mps * 3.6, 1)))
    return out


def payload(
    records: Sequence[Record],
    first_seq: int = 0,
    *,
    device: str = DEV,
    boot: int = BOOT,
    aliases: AliasTable | None = None,
) -> bytes:
    entries = tuple(Entry(first_seq + i, r) for i, r in enumerate(records))
    return encode_batch(Batch(device, boot, entries), aliases)


def batches(
    records: Sequence[Record], size: int, *, device: str = DEV, boot: int = BOOT
) -> list[bytes]:
    """``records`` as consecutive batches of ``size`` entries, seq from 0."""
    return [
        payload(records[i : i + size], i, device=device, boot=boot)
        for i in range(0, len(records), size)
    ]


def stored_keys(db: Path) -> list[tuple[str, int, int]]:
    """Every (device, boot, seq) in the record tables, duplicates kept (read with sqlite3, so a
    test can look while another process writes)."""
    with sqlite3.connect(db) as conn:
        rows = []
        for table in ("positions", "signals", "dtcs", "events", "health"):
            rows += conn.execute(f"SELECT device_id, boot_id, seq FROM {table}").fetchall()
    return sorted(rows)


def seen_count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=30) as conn:
            return int(conn.execute("SELECT count(*) FROM seen").fetchone()[0])
    except sqlite3.OperationalError:  # not migrated yet
        return 0
