"""kill -9 a writer process at random moments, many times: nothing it reported is ever lost.

Each round starts tests/edge/outbox_writer.py on the same file (continuing the previous boot
or starting a new one), lets it append for 5-200 ms, then SIGKILLs it. Between some rounds an
uplink stand-in takes and acks part of the backlog, or takes without acking (as a publish that
never got its PUBACK). At the end every sequence number the writers reported as committed must
come out of the lanes exactly once, with its content, and each boot's sequence must be gap-free.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import sys
from pathlib import Path

import pytest

from fleetlink_edge.config import OutboxSettings
from fleetlink_edge.outbox import Lane, Outbox
from fleetlink_protocols.codec import quantize
from tests.edge.outbox_writer import record_for

WRITER = Path(__file__).with_name("outbox_writer.py")
ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 30
MAX_BYTES = 64 << 20  # large enough that nothing is evicted: every record must come back


async def run_writer(path: Path, boot: int, delay_s: float) -> set[tuple[int, int]]:
    """Start a writer, let it write, kill -9 it; returns the (boot, seq) it reported."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(WRITER), str(path), str(boot), str(MAX_BYTES),
        stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert proc.stdout is not None
    ready = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert ready == b"ready\n", ready
    await asyncio.sleep(delay_s)
    proc.kill()
    out = await proc.stdout.read()
    assert await proc.wait() == -9
    reported: set[tuple[int, int]] = set()
    for line in out.split(b"\n")[:-1]:  # the last piece may be a torn line
        b, first, last = map(int, line.split())
        reported.update((b, seq) for seq in range(first, last + 1))
    return reported


async def uplink_pass(
    settings: OutboxSettings, boot: int, rng: random.Random, delivered: list[tuple[int, int]]
) -> None:
    """Take part of each lane; ack most of it, leave the rest in flight (never acked)."""
    async with Outbox(settings, boot_id=boot) as outbox:
        for lane in Lane:
            for _ in range(rng.randint(0, 4)):
                batch = await outbox.take(lane, rng.randint(1, 300))
                if rng.random() < 0.8:
                    await outbox.ack([s.id for s in batch])
                    delivered.extend(check(s.boot_id, s.seq, s.record) for s in batch)


def check(boot: int, seq: int, record: object) -> tuple[int, int]:
    assert record == quantize(record_for(boot, seq)), (boot, seq)
    return boot, seq


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_kill_9_never_loses_a_committed_record(tmp_path: Path) -> None:
    settings = OutboxSettings(path=tmp_path / "outbox.sqlite3", max_bytes=MAX_BYTES)
    rng = random.Random(20240611)
    reported: set[tuple[int, int]] = set()
    delivered: list[tuple[int, int]] = []
    boot = 1
    for round_ in range(ROUNDS):
        if round_ and rng.random() < 0.3:
            boot += 1  # the vehicle rebooted; otherwise the agent restarted in the same boot
        reported |= await run_writer(settings.path, boot, rng.uniform(0.005, 0.2))
        if round_ % 4 == 3:
            await uplink_pass(settings, boot, rng, delivered)

    with sqlite3.connect(settings.path) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    db.close()
    async with Outbox(settings, boot_id=boot + 1) as outbox:
        for lane in Lane:
            while batch := await outbox.take(lane, 1000):
                assert len({s.boot_id for s in batch}) == 1
                assert [s.seq for s in batch] == sorted(s.seq for s in batch)
                await outbox.ack([s.id for s in batch])
                delivered.extend(check(s.boot_id, s.seq, s.record) for s in batch)
        assert await outbox.pending_count() == 0
        assert outbox.counters["evicted_total"] == 0

    assert len(delivered) == len(set(delivered)), "a record was delivered twice"
    assert reported <= set(delivered), f"lost: {sorted(reported - set(delivered))[:10]}"
    assert len(reported) > 5 * ROUNDS
    for b in range(1, boot + 1):
        seqs = sorted(seq for bb, seq in delivered if bb == b)
        assert seqs == list(range(len(seqs))), f"boot {b}: gap in {seqs[:5]}...{seqs[-5:]}"
