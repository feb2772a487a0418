"""The worker's commit loop without a broker: acks after commit, retries, isolation, sweep."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from fleetlink_cloud.config import IngestSettings
from fleetlink_cloud.errors import StoreError
from fleetlink_cloud.ingest import worker as worker_module
from fleetlink_cloud.ingest.intake import Received
from fleetlink_cloud.ingest.pipeline import Message, Pipeline
from fleetlink_cloud.ingest.worker import IngestWorker
from fleetlink_cloud.store import Store, open_store
from fleetlink_protocols.catalog import AliasTable
from fleetlink_protocols.messages import Birth, encode_birth
from fleetlink_protocols.records import SignalValue
from tests.cloud.ingest.conftest import until
from tests.cloud.ingest.fleet import BOOT, DEV, RX0, T0, S, drive, payload, topic

SETTINGS = IngestSettings(retry_initial_s=0.01, retry_max_s=0.04, presence_check_s=0.02)


class FakeConsumer:
    """Hands out the given groups, records acks; the connection never fails."""

    def __init__(self, groups: Sequence[Sequence[Received]]) -> None:
        self._groups = [list(g) for g in groups]
        self.acked: list[Received] = []

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def next_group(self, max_messages: int) -> list[Received]:
        if not self._groups:
            await asyncio.Event().wait()
        return self._groups.pop(0)

    def ack(self, msg: Received) -> bool:
        self.acked.append(msg)
        return True


def received(topic_: str, data: bytes, mid: int, rx: int = RX0) -> Received:
    return Received(topic_, data, 1, False, rx, mid, 1)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(f"sqlite:///{tmp_path / 'cloud.sqlite3'}") as s:
        await s.add_device(DEV, name=DEV, password_hash="", created_wall_ns=T0)
        yield s


@contextlib.asynccontextmanager
async def running(w: IngestWorker) -> AsyncIterator[None]:
    task = asyncio.create_task(w.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Flaky(Pipeline):
    """The real pipeline; fails ``failures`` times first, and always on payload b"poison"."""

    def __init__(self, store: Store, failures: int = 0) -> None:
        super().__init__(store, SETTINGS, topic_prefix="fleet")
        self.failures = failures
        self.calls = 0

    async def process(self, messages: Sequence[Message], *, wait_for_births: bool = True) -> None:
        self.calls += 1
        if any(m.payload == b"poison" for m in messages):
            raise KeyError("a bug")
        if self.failures:
            self.failures -= 1
            raise StoreError("database is gone")
        await super().process(messages, wait_for_births=wait_for_births)


async def test_a_group_is_acked_in_order_only_after_its_commit(store: Store) -> None:
    group = [received(topic("live"), payload(drive(5)[i : i + 2], i), i + 1) for i in (0, 2, 4)]
    consumer = FakeConsumer([group])
    pipeline = Flaky(store, failures=3)
    w = IngestWorker(consumer, pipeline, store, SETTINGS)
    async with running(w):
        await until(lambda: len(consumer.acked) == 3)
    assert consumer.acked == group
    assert pipeline.calls == 4  # three failures, retried with backoff, then committed
    assert w.counters.store_retries == 3
    assert (w.counters.groups, w.counters.messages, w.counters.acked) == (1, 3, 3)
    assert (await store.stats()).counts["seen"] == 6


async def test_a_message_that_breaks_the_pipeline_becomes_a_dead_letter(store: Store) -> None:
    good = received(topic("live"), payload(drive(1)), 1)
    poison = received(topic("live"), b"poison", 2)
    later = received(topic("live"), payload(drive(1, start_s=1), 2), 3)
    consumer = FakeConsumer([[good, poison], [later]])
    w = IngestWorker(consumer, Flaky(store), store, SETTINGS)
    async with running(w):
        await until(lambda: len(consumer.acked) == 3)
    assert consumer.acked == [good, poison, later]
    (letter,) = await store.list_dead_letters()
    assert (letter.reason, letter.payload) == ("InternalError: KeyError('a bug')", b"poison")
    assert letter.device_id == DEV
    assert w.counters.internal_errors == 1
    assert (await store.stats()).counts["seen"] == 4


async def test_a_batch_waits_for_the_birth_another_worker_commits(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "BIRTH_WAIT_S", 0.05)
    table = AliasTable({"Vehicle.Body.Winch.Load": 1024})
    sample = [SignalValue(T0, "Vehicle.Body.Winch.Load", 3.5)]
    batch = received(topic("live"), payload(sample, aliases=table), 1)
    consumer = FakeConsumer([[batch]])
    w = IngestWorker(consumer, Flaky(store), store, SETTINGS)
    async with running(w):
        await until(lambda: w.counters.birth_waits >= 1)
        other = Pipeline(store, SETTINGS, topic_prefix="fleet")  # the worker that got the birth
        birth = Birth(DEV, BOOT, "1.0.0", T0, table)
        await other.process([received(topic("status"), encode_birth(birth), 9)])
        await until(lambda: consumer.acked == [batch])
    assert (await store.signals_latest(DEV))["Vehicle.Body.Winch.Load"].value == 3.5
    assert await store.list_dead_letters() == []


async def test_a_birth_that_never_comes_ends_in_a_dead_letter(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "BIRTH_WAIT_S", 0.01)
    table = AliasTable({"Vehicle.Body.Winch.Load": 1024})
    sample = [SignalValue(T0, "Vehicle.Body.Winch.Load", 3.5)]
    batch = received(topic("live"), payload(sample, aliases=table), 1)
    consumer = FakeConsumer([[batch]])
    w = IngestWorker(consumer, Flaky(store), store, SETTINGS)
    async with running(w):
        await until(lambda: consumer.acked == [batch])
    assert w.counters.birth_waits == worker_module.BIRTH_RETRIES
    (letter,) = await store.list_dead_letters()
    assert letter.reason.startswith(
        "RejectedEntries: boot 7, 1 of 1 entries: seq 0 UnknownSignalAlias"
    )


async def offline_reason(store: Store, timeout_s: float = 10.0) -> str | None:
    async with asyncio.timeout(timeout_s):
        while True:
            presence = await store.presence(DEV)
            if presence is not None and not presence.online:
                return presence.reason
            await asyncio.sleep(0.02)


async def test_the_presence_sweep_marks_silent_vehicles_offline(store: Store) -> None:
    await store.record_birth(
        DEV, BOOT, agent_version="1.0.0", started_wall_ns=T0, alias_extras={}, received_wall_ns=RX0
    )
    now = RX0 + 100 * S
    w = IngestWorker(FakeConsumer([]), Flaky(store), store, SETTINGS, clock=lambda: now)
    async with running(w):
        await asyncio.sleep(0.1)  # a few sweeps: 100 s of silence is within the 180 s timeout
        presence = await store.presence(DEV)
        assert presence is not None
        assert presence.online
        now = RX0 + 181 * S
        assert await offline_reason(store) == "timeout"
    presence = await store.presence(DEV)
    assert presence is not None
    assert presence.changed_wall_ns == RX0 + 181 * S
