"""The loss ledger: sequence gaps per boot, evictions the device reports, time offline."""

from __future__ import annotations

import pytest

from fleetlink_cloud.errors import NotFound
from fleetlink_cloud.store import BootLedger, Ledger, SeqGap, Store
from tests.cloud.store.records import DEV, T0, S, add, batch, event, health, pos, sig


async def test_an_empty_ledger(store: Store) -> None:
    await add(store)
    assert await store.ledger(DEV, now_wall_ns=T0) == Ledger(DEV, (), 0, 0)
    with pytest.raises(NotFound):
        await store.ledger("nope", now_wall_ns=T0)


async def test_gaps_evictions_and_receipt_times_per_boot(store: Store) -> None:
    await add(store)
    rx = T0 + 1000 * S
    boot1_live = [pos(s, T0 + s) for s in (0, 1, 2, 5, 6)]
    boot1_events = [event(8, T0 + 8, "ignition_off")]
    boot1_history = [
        health(9, T0 + 9, **{"outbox.evicted_total": 5, "outbox.evicted_position": 3,
                             "outbox.evicted_signal": 2, "outbox.appended": 900}),
        # Counters are cumulative per boot: seq 10 is the latest, though its clock stepped back.
        health(10, T0 - 5, **{"outbox.evicted_total": 7, "outbox.evicted_position": 3,
                              "outbox.evicted_signal": 4}),
    ]  # fmt: skip
    boot2 = [sig(s, T0 + 50 + s, "X.Y", s) for s in (3, 4, 5)]
    await store.ingest_batches(
        [
            batch(boot2, boot=2, rx=rx + 10),
            batch(boot1_live, boot=1, rx=rx + 20),
            batch(boot1_events, boot=1, lane="events", rx=rx + 30),
        ]
    )
    await store.ingest_batch(batch(boot1_history, boot=1, lane="history", rx=rx + 40))
    await store.ingest_batch(batch(boot1_live, boot=1, rx=rx + 50))  # duplicates change nothing
    ledger = await store.ledger(DEV, now_wall_ns=rx + 60)
    assert ledger.boots == (
        BootLedger(2, 3, 5, 3, (SeqGap(0, 2),), {}, rx + 10, rx + 10),
        BootLedger(
            1, 0, 10, 8, (SeqGap(3, 4), SeqGap(7, 7)),
            {"outbox.evicted_total": 7, "outbox.evicted_position": 3, "outbox.evicted_signal": 4},
            rx + 20, rx + 40,
        ),
    )  # fmt: skip
    assert [b.missing for b in ledger.boots] == [3, 3]
    assert (ledger.missing, ledger.evicted) == (6, 7)
    assert (ledger.offline_ns, ledger.offline_periods) == (0, 0)
    assert SeqGap(3, 4).count == 2


async def test_offline_time_sums_every_offline_interval(store: Store) -> None:
    await add(store)

    async def birth(boot: int, rx: int) -> None:
        await store.record_birth(
            DEV, boot, agent_version="1", started_wall_ns=T0 + boot, alias_extras={},
            received_wall_ns=rx,
        )  # fmt: skip

    await birth(1, T0 + 100)
    await store.record_death(DEV, 1, received_wall_ns=T0 + 200)
    await birth(1, T0 + 500)  # offline 200..500
    await birth(2, T0 + 600)  # a reboot while online: still online
    await store.expire_presence(cutoff_wall_ns=T0 + 700, now_wall_ns=T0 + 800)
    ledger = await store.ledger(DEV, now_wall_ns=T0 + 1000)  # offline since 800
    assert (ledger.offline_ns, ledger.offline_periods) == (300 + 200, 2)
    await store.ingest_batch(batch([pos(0, T0)], boot=2, rx=T0 + 1100))  # back at 1100
    ledger = await store.ledger(DEV, now_wall_ns=T0 + 5000)
    assert (ledger.offline_ns, ledger.offline_periods) == (300 + 300, 2)
    assert [(b.boot_id, b.received, b.gaps) for b in ledger.boots] == [(2, 1, ())]
