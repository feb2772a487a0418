"""Ingest end to end: real edge uplinks -> real Mosquitto -> ingest workers -> SQLite.

Nothing lost, nothing stored twice: through SIGKILLed workers (before the commit, between the
commit and the acks, anywhere mid-stream), two workers sharing one subscription, and a broker
restart. Workers that must die run as subprocesses (worker_proc); the others run in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from fleetlink_cloud.ingest.consumer import MqttConsumer
from fleetlink_cloud.ingest.worker import IngestWorker
from fleetlink_cloud.store import Store, open_store
from tests.cloud.ingest.conftest import Vehicle, publish, until, vehicles
from tests.cloud.ingest.fleet import BOOT, batches, drive, seen_count, stored_keys
from tests.cloud.ingest.worker_proc import INGEST, Reporting, WorkerProcess, broker_settings
from tests.peers.mosquitto import Mosquitto

pytestmark = pytest.mark.mosquitto

DEVICES = ("veh001", "veh002", "veh003")


@pytest.fixture
async def spawn(
    broker: Mosquitto, db: Path, tmp_path: Path
) -> AsyncIterator[Callable[[str], WorkerProcess]]:
    """Worker subprocesses on the test's broker and database, killed at the end."""
    made: list[WorkerProcess] = []

    def make(client_id: str) -> WorkerProcess:
        made.append(WorkerProcess(broker.port, db, client_id, tmp_path))
        return made[-1]

    yield make
    for proc in made:
        await proc.close()


def expected(per_device: dict[str, int], boot: int = BOOT) -> list[tuple[str, int, int]]:
    return sorted((d, boot, seq) for d, n in per_device.items() for seq in range(n))


@contextlib.asynccontextmanager
async def worker(
    port: int, db: Path, client_id: str, **broker: object
) -> AsyncIterator[IngestWorker]:
    """An in-process worker on its own store connection."""
    async with open_store(f"sqlite:///{db}") as store:
        settings = broker_settings(port, **broker)
        consumer = MqttConsumer(settings, client_id=client_id, backoff_s=(0.05, 0.5))
        w = IngestWorker(consumer, Reporting(store, lambda _: None, None), store, INGEST)
        task = asyncio.create_task(w.run(), name=client_id)
        try:
            await until(consumer.connected.is_set)
            yield w
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def handled(proc: WorkerProcess) -> int:
    """Records the worker process committed, new or duplicate, since it started."""
    last = proc.committed()[-1:] or [{}]
    return last[0].get("records_stored", 0) + last[0].get("records_duplicate", 0)


async def produce(fleet: Sequence[Vehicle], seconds: int, pace_s: float = 0.0) -> None:
    """``seconds`` of driving per vehicle, appended one second at a time."""
    records = drive(seconds)
    for i in range(0, len(records), 2):
        for v in fleet:
            await v.append(records[i : i + 2])
        await asyncio.sleep(pace_s)


async def all_stored(db: Path, fleet: Sequence[Vehicle], timeout_s: float = 60.0) -> None:
    total = sum(v.produced for v in fleet)
    async with asyncio.timeout(timeout_s):
        while True:
            if all([await v.drained() for v in fleet]) and seen_count(db) >= total:
                break
            await asyncio.sleep(0.05)
    assert stored_keys(db) == expected({v.device: v.produced for v in fleet})


async def test_records_of_real_uplinks_are_stored_exactly_once(
    broker: Mosquitto, db: Path, tmp_path: Path
) -> None:
    async with (
        worker(broker.port, db, "ingest-1") as w,
        vehicles(broker.port, tmp_path, DEVICES) as fleet,
    ):
        await produce(fleet, 150)
        await all_stored(db, fleet)
        assert w.counters.acks_void == 0
        assert w.counters.acked == w.counters.messages
    async with open_store(f"sqlite:///{db}") as store:
        await check_live_state(store, fleet)


async def check_live_state(store: Store, fleet: Sequence[Vehicle]) -> None:
    for v in fleet:
        vehicle = await store.vehicle(v.device)
        assert vehicle is not None
        assert vehicle.position is not None
        assert vehicle.position.seq == v.produced - 2  # the last position, then its speed
        ledger = await store.ledger(v.device, now_wall_ns=time.time_ns())
        assert ledger.missing == 0
        assert [b.received for b in ledger.boots] == [v.produced]


async def test_sigkill_before_the_commit_loses_nothing(
    broker: Mosquitto, db: Path, tmp_path: Path, spawn: Callable[[str], WorkerProcess]
) -> None:
    proc = spawn("ingest-k1")
    await proc.start()
    await proc.kill(signal.SIGTERM)  # the session now exists at the broker
    data = batches(drive(100), 20)
    await asyncio.to_thread(publish, broker.port, "veh001", data)
    await proc.start(hold="before")
    assert int((await proc.wait_for("holding")).split()[1]) >= 1
    await asyncio.sleep(0.3)  # the rest of the messages are queued behind the held group
    assert seen_count(db) == 0
    await proc.kill()  # received, never committed, never acked
    await proc.start()
    await until(lambda: handled(proc) == 200)
    assert stored_keys(db) == expected({"veh001": 200})
    assert proc.committed()[-1]["records_duplicate"] == 0  # it never got that far before


async def test_sigkill_between_commit_and_ack_stores_once(
    broker: Mosquitto, db: Path, tmp_path: Path, spawn: Callable[[str], WorkerProcess]
) -> None:
    proc = spawn("ingest-k2")
    await proc.start()
    await proc.kill(signal.SIGTERM)
    data = batches(drive(100), 20)
    await asyncio.to_thread(publish, broker.port, "veh001", data)
    await proc.start(hold="after")
    held = int((await proc.wait_for("holding")).split()[1]) * 20  # records of the held group
    assert seen_count(db) == held  # committed, not acked
    await proc.kill()
    await proc.start()
    await until(lambda: handled(proc) == 200)  # every message came again
    counters = proc.committed()[-1]
    assert (counters["records_stored"], counters["records_duplicate"]) == (200 - held, held)
    assert stored_keys(db) == expected({"veh001": 200})


@pytest.mark.slow
async def test_sigkill_mid_stream_again_and_again_loses_and_duplicates_nothing(
    broker: Mosquitto, db: Path, tmp_path: Path, spawn: Callable[[str], WorkerProcess]
) -> None:
    rng = random.Random(7)
    proc = spawn("ingest-k3")
    await proc.start()
    async with vehicles(broker.port, tmp_path, DEVICES) as fleet:
        producer = asyncio.create_task(produce(fleet, 400, pace_s=0.005))
        for _ in range(4):
            await asyncio.sleep(rng.uniform(0.3, 0.8))
            await proc.kill()
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            await proc.start()
        await producer
        await all_stored(db, fleet)


async def test_two_workers_on_one_shared_subscription_split_the_load(
    broker: Mosquitto, db: Path
) -> None:
    data = {d: batches(drive(100), 10, device=d) for d in DEVICES}
    async with worker(broker.port, db, "ingest-s1") as a, worker(broker.port, db, "ingest-s2") as b:
        await asyncio.gather(
            *(asyncio.to_thread(publish, broker.port, d, data[d]) for d in DEVICES)
        )
        await until(lambda: seen_count(db) >= 600)
        await until(lambda: a.counters.acked + b.counters.acked == 60)
    assert stored_keys(db) == expected(dict.fromkeys(DEVICES, 200))
    assert a.counters.messages + b.counters.messages == 60  # each message went to one worker
    assert min(a.counters.messages, b.counters.messages) >= 20  # round robin, roughly


@pytest.mark.slow
@pytest.mark.parametrize("group", ["ingest", ""], ids=["shared", "plain"])
async def test_a_broker_restart_mid_stream_loses_nothing(
    broker: Mosquitto, db: Path, tmp_path: Path, group: str
) -> None:
    # Mosquitto 2.0.11 restores a plain subscription with the persisted session, a shared one
    # not (the worker renews it on connect). Until then it answers the vehicles' publishes "no
    # matching subscribers", and the uplink keeps those records in its outbox.
    async with (
        worker(broker.port, db, "ingest-r", shared_group=group) as w,
        vehicles(broker.port, tmp_path, DEVICES) as fleet,
    ):
        producer = asyncio.create_task(produce(fleet, 300, pace_s=0.01))
        await until(lambda: seen_count(db) > 150)
        await asyncio.to_thread(broker.stop)
        await asyncio.sleep(1.5)  # the vehicles keep recording into their outboxes
        await asyncio.to_thread(broker.start)
        await producer
        await all_stored(db, fleet)
        consumer = w._consumer
        assert isinstance(consumer, MqttConsumer)
        assert consumer.counters.connects >= 2
        # Plain: subscribed once, the session kept it. Shared: renewed on every connect.
        assert consumer.counters.subscribes == 6 * (consumer.counters.connects if group else 1)


async def test_the_event_loop_never_waits_on_ingest(broker: Mosquitto, db: Path) -> None:
    data = batches(drive(1000), 4)  # 500 messages of 4 records
    lags: list[float] = []

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - t - 0.01)

    async with worker(broker.port, db, "ingest-lag") as w:
        tick = asyncio.create_task(ticker())
        await asyncio.to_thread(publish, broker.port, "veh001", data)
        await until(lambda: w.counters.acked == len(data))
        tick.cancel()
    assert stored_keys(db) == expected({"veh001": 2000})
    assert len(lags) >= 10  # it ticked all along
    assert max(lags) < 0.25, sorted(lags)[-5:]
