"""The webhook dispatcher's loop: waking on the bus, pings, and what happens when things go
wrong: retries with backoff, timeouts, giving up, disabling, re-enabling, deletion, restarts and
store outages. Same real receiver and SQLite store as test_webhooks.py, whose helpers it uses."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from fleetlink_cloud.bus import EventBus
from fleetlink_cloud.errors import StoreError
from fleetlink_cloud.store import Store, Webhook, open_store
from fleetlink_cloud.webhooks import WebhookDispatcher, event_body
from tests.cloud.test_webhooks import (
    FAST,
    T0,
    Receiver,
    append,
    current,
    cursor_is,
    dispatching,
    free_port,
    log_of,
    make_hook,
    until,
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store("sqlite:///" + str(tmp_path / "db.sqlite3")) as s:
        yield s


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as r:
        yield r


async def test_a_new_event_on_the_bus_wakes_the_dispatcher(
    store: Store, receiver: Receiver
) -> None:
    hook = await make_hook(store, receiver.url)
    bus = EventBus()
    async with dispatching(store, bus=bus, poll_interval_s=30.0):
        await asyncio.sleep(0.1)  # the webhook's task is idle, polling every 30 s
        (event,) = await append(store, "event")
        bus.publish(event)
        await cursor_is(store, hook.id, event.id)
    assert [r.event_id for r in receiver.requests] == [event.id]


async def test_ping_sends_a_test_event_once_and_logs_it_as_event_zero(
    store: Store, receiver: Receiver
) -> None:
    receiver.plan(503)
    hook = await make_hook(store, receiver.url)
    async with WebhookDispatcher(store, FAST) as dispatcher:
        failed = await dispatcher.ping(hook)
        delivered = await dispatcher.ping(hook)
    assert (failed.ok, failed.status_code, failed.error) == (False, 503, "HTTP 503")
    assert (delivered.ok, delivered.status_code, delivered.error) == (True, 200, None)
    body = json.loads(receiver.requests[1].body)
    assert (body["id"], body["type"], body["data"]) == (0, "webhook.ping", {"webhook_id": "wh_a"})
    assert all(r.signature_ok for r in receiver.requests)
    log = await log_of(store, hook.id)
    assert [(d.event_id, d.attempt, d.ok, d.status_code) for d in log] == [
        (0, 1, False, 503), (0, 1, True, 200),
    ]  # fmt: skip


async def test_failed_attempts_are_retried_with_growing_delays_and_logged(
    store: Store, receiver: Receiver
) -> None:
    settings = FAST.model_copy(update={"max_attempts": 4, "backoff_max_s": 0.15})
    receiver.plan(500, 500, 500, 200)
    hook = await make_hook(store, receiver.url)
    (event,) = await append(store, "dtc.raised")
    async with dispatching(store, settings, rand=lambda: 0.5) as dispatcher:
        await cursor_is(store, hook.id, event.id)
    delays = [0.05 * 0.75, 0.1 * 0.75, 0.15 * 0.75]  # equal jitter at rand 0.5, capped at 0.15
    log = await log_of(store, hook.id)
    assert [(d.attempt, d.ok, d.status_code, d.error) for d in log] == [
        (1, False, 500, "HTTP 500"),
        (2, False, 500, "HTTP 500"),
        (3, False, 500, "HTTP 500"),
        (4, True, 200, None),
    ]
    waits = [d.next_attempt_wall_ns - d.ts_wall_ns for d in log[:3] if d.next_attempt_wall_ns]
    assert waits == [int(s * 1e9) for s in delays]
    assert log[3].next_attempt_wall_ns is None
    assert [r.attempt for r in receiver.requests] == [1, 2, 3, 4]
    assert {r.body for r in receiver.requests} == {event_body(hook.id, event)}
    assert all(r.signature_ok for r in receiver.requests)
    arrived = [r.arrived_s for r in receiver.requests]
    gaps = [b - a for a, b in itertools.pairwise(arrived)]
    assert all(gap >= delay - 0.005 for gap, delay in zip(gaps, delays, strict=True)), gaps
    assert dispatcher.counters == {"delivered": 1, "failed_attempts": 3, "given_up": 0}
    after = await current(store, hook.id)
    assert (after.enabled, after.consecutive_failures) == (True, 0)


async def test_timeouts_redirects_and_refused_connections_are_failed_attempts(
    store: Store, receiver: Receiver
) -> None:
    settings = FAST.model_copy(update={"max_attempts": 4})
    receiver.plan("hang", "drip", 302)  # a dripped answer would take about 2 s
    hook = await make_hook(store, receiver.url)
    dead = await make_hook(store, f"http://127.0.0.1:{free_port()}/hook", hook_id="wh_dead")
    (event,) = await append(store, "event")
    async with dispatching(store, settings):
        await cursor_is(store, hook.id, event.id)
        await cursor_is(store, dead.id, event.id)
    log = await log_of(store, hook.id)
    assert [(d.attempt, d.ok, d.status_code, d.error) for d in log] == [
        (1, False, None, "timeout after 0.3 s"),
        (2, False, None, "timeout after 0.3 s"),
        (3, False, 302, "HTTP 302"),
        (4, True, 200, None),
    ]
    assert all(b.ts_wall_ns - a.ts_wall_ns < 1e9 for a, b in itertools.pairwise(log))
    dead_log = await log_of(store, dead.id)
    assert [(d.attempt, d.ok, d.status_code) for d in dead_log] == [
        (1, False, None), (2, False, None), (3, False, None), (4, False, None),
    ]  # fmt: skip
    assert all((d.error or "").startswith("ConnectError: ") for d in dead_log)


async def test_an_event_is_given_up_after_max_attempts_and_the_next_one_delivered(
    store: Store, receiver: Receiver
) -> None:
    receiver.plan(500, 500, 500)
    hook = await make_hook(store, receiver.url)
    _, second = await append(store, "dtc.raised", "dtc.raised")
    async with dispatching(store) as dispatcher:
        await cursor_is(store, hook.id, second.id)
    assert [(r.event_id, r.attempt) for r in receiver.requests] == [(1, 1), (1, 2), (1, 3), (2, 1)]
    log = await log_of(store, hook.id)
    assert [(d.event_id, d.attempt, d.ok, d.status_code) for d in log] == [
        (1, 1, False, 500), (1, 2, False, 500), (1, 3, False, 500), (2, 1, True, 200),
    ]  # fmt: skip
    assert log[2].next_attempt_wall_ns is None  # given up: no next attempt
    assert dispatcher.counters == {"delivered": 1, "failed_attempts": 3, "given_up": 1}


@pytest.mark.parametrize(
    ("disable_after", "sent_before", "cursor_before", "sent_after"),
    [
        (4, [(1, 1), (1, 2), (1, 3), (2, 1)], 1, [(2, 2), (3, 1)]),  # 2 pending, resumes
        (3, [(1, 1), (1, 2), (1, 3)], 1, [(2, 1), (3, 1)]),  # 1 given up as it disabled
    ],
    ids=["pending-event-resumes", "disabled-on-the-last-attempt"],
)
async def test_consecutive_failures_disable_the_webhook_and_enabling_it_continues(
    store: Store,
    receiver: Receiver,
    disable_after: int,
    sent_before: list[tuple[int, int]],
    cursor_before: int,
    sent_after: list[tuple[int, int]],
) -> None:
    settings = FAST.model_copy(update={"disable_after_failures": disable_after})
    receiver.default = 500
    hook = await make_hook(store, receiver.url)
    *_, last = await append(store, "event", "event", "event")

    async def disabled() -> bool:
        return not (await current(store, hook.id)).enabled

    async with dispatching(store, settings):
        await until(disabled)
        await asyncio.sleep(0.2)  # nothing more goes to a disabled webhook
        assert [(r.event_id, r.attempt) for r in receiver.requests] == sent_before
        off = await current(store, hook.id)
        assert off.cursor == cursor_before
        assert off.consecutive_failures == disable_after
        assert off.disabled_reason == f"{disable_after} consecutive failed deliveries"
        receiver.default = 200
        await store.set_webhook_enabled(hook.id, True)
        await cursor_is(store, hook.id, last.id)
        await asyncio.sleep(0.1)
    assert [(r.event_id, r.attempt) for r in receiver.requests][len(sent_before) :] == sent_after
    on = await current(store, hook.id)
    assert (on.enabled, on.consecutive_failures, on.disabled_reason) == (True, 0, None)


async def test_disabling_during_retries_stops_and_keeps_the_event_pending(
    store: Store, receiver: Receiver
) -> None:
    settings = FAST.model_copy(update={"backoff_initial_s": 0.3, "max_attempts": 5})
    receiver.default = 500
    hook = await make_hook(store, receiver.url)
    (event,) = await append(store, "dtc.raised")
    async with dispatching(store, settings):
        await until(lambda: len(receiver.requests) == 1)
        await store.set_webhook_enabled(hook.id, False, reason="paused by an operator")
        await asyncio.sleep(0.5)  # past the 0.225 s backoff
        assert len(receiver.requests) == 1
        assert (await current(store, hook.id)).cursor == 0
        receiver.default = 200
        await store.set_webhook_enabled(hook.id, True)
        await cursor_is(store, hook.id, event.id)
    assert [r.attempt for r in receiver.requests] == [1, 2]


async def test_deleting_a_webhook_during_retries_stops_its_deliveries(
    store: Store, receiver: Receiver
) -> None:
    receiver.default = 500
    hook = await make_hook(store, receiver.url)
    await append(store, "event")
    async with dispatching(store) as dispatcher:
        await until(lambda: len(receiver.requests) == 1)
        await store.delete_webhook(hook.id)
        await asyncio.sleep(0.3)
        assert len(receiver.requests) == 1
        assert dispatcher.counters["failed_attempts"] == 1


async def test_a_restarted_dispatcher_resumes_from_the_durable_cursor(
    store: Store, receiver: Receiver
) -> None:
    hook = await make_hook(store, receiver.url)
    before = await append(store, "event", "event")
    async with dispatching(store):
        await cursor_is(store, hook.id, before[-1].id)
    after = await append(store, "position", "event", "dtc.raised")  # while nothing runs
    async with dispatching(store):
        await cursor_is(store, hook.id, after[-1].id)
        await asyncio.sleep(0.1)
    assert [r.event_id for r in receiver.requests] == [1, 2, 4, 5]


async def test_a_restart_during_retries_continues_the_attempt_count(
    store: Store, receiver: Receiver
) -> None:
    slow = FAST.model_copy(update={"backoff_initial_s": 30.0})
    receiver.plan(500)
    hook = await make_hook(store, receiver.url)
    (event,) = await append(store, "event")
    async with dispatching(store, slow):  # stopped while waiting 22.5 s for attempt 2
        await until(lambda: log_of(store, hook.id))
    async with dispatching(store):
        await cursor_is(store, hook.id, event.id)
    assert [r.attempt for r in receiver.requests] == [1, 2]
    log = await log_of(store, hook.id)
    assert [(d.attempt, d.ok) for d in log] == [(1, False), (2, True)]


@pytest.mark.parametrize(
    ("attempt", "ok", "status"),
    [(1, True, 200), (3, False, 500)],
    ids=["delivered", "given-up"],
)
async def test_a_restart_does_not_resend_an_event_the_log_shows_handled(
    store: Store, receiver: Receiver, attempt: int, ok: bool, status: int
) -> None:
    """The process died after logging the event's last attempt, before moving the cursor."""
    hook = await make_hook(store, receiver.url)
    first, second = await append(store, "event", "event")
    await store.record_delivery(
        hook.id, event_id=first.id, attempt=attempt, ok=ok, status_code=status,
        error=None if ok else "HTTP 500", ts_wall_ns=T0, next_attempt_wall_ns=None,
    )  # fmt: skip
    async with dispatching(store):
        await cursor_is(store, hook.id, second.id)
    assert [r.event_id for r in receiver.requests] == [second.id]


class FlakyStore:
    """The real store, except that logging attempt ``fail_attempt`` fails once."""

    def __init__(self, store: Store, fail_attempt: int) -> None:
        self._store = store
        self._fail_attempt: int | None = fail_attempt

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def record_delivery(self, webhook_id: str, **kwargs: Any) -> Webhook:
        if kwargs["attempt"] == self._fail_attempt:
            self._fail_attempt = None
            raise StoreError("database is locked")
        return await self._store.record_delivery(webhook_id, **kwargs)


async def test_a_store_outage_during_retries_keeps_the_attempt_count(
    store: Store, receiver: Receiver
) -> None:
    hook = await make_hook(store, receiver.url)
    (first,) = await append(store, "event")
    async with dispatching(cast(Store, FlakyStore(store, fail_attempt=2))):
        await cursor_is(store, hook.id, first.id)  # a first page, delivered
        receiver.plan(500, 500, 500, 500)  # the second of these is never logged
        _, last = await append(store, "event", "event")
        await cursor_is(store, hook.id, last.id)
    log = await log_of(store, hook.id)
    assert [(d.event_id, d.attempt, d.ok) for d in log] == [
        (1, 1, True), (2, 1, False), (2, 2, False), (2, 3, False), (3, 1, True),
    ]  # fmt: skip
    assert [(r.event_id, r.attempt) for r in receiver.requests] == [
        (1, 1), (2, 1), (2, 2), (2, 2), (2, 3), (3, 1),
    ]  # fmt: skip
