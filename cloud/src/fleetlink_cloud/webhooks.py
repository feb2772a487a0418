"""Webhooks for dispatch backends: signed POSTs of stream events, retried, logged, auto-disabled.

Each webhook tails the store's stream events from its own durable cursor (the last event id it
handled), so nothing is lost or skipped across restarts, and delivers the events of its
subscribed types one at a time, in event-id order. An event is retried with jittered exponential
backoff up to ``WebhookSettings.max_attempts`` attempts, then given up (logged) so one poisoned
event cannot stall the stream forever; ``disable_after_failures`` consecutive failed attempts
disable the webhook until someone enables it again. Every attempt lands in the delivery log,
which is also where a restarted dispatcher learns how far the pending event had got. Delivery is
at least once: a process stopped between an answer and its log entry sends that event again, so
receivers dedupe by ``Fleetlink-Event-Id``.

Request (one event per POST)::

    POST <url>
    Content-Type: application/json
    Fleetlink-Event-Id: 4711
    Fleetlink-Event-Type: dtc.raised
    Fleetlink-Delivery-Attempt: 1
    Fleetlink-Signature: t=1717243200,v1=<64 hex digits>

    {"data":{...},"device_id":"veh-0001","id":4711,"ts":1717243199.5,"type":"dtc.raised",
     "webhook_id":"wh_..."}

Signature (the scheme Stripe uses): ``t`` is the cloud's Unix time in seconds when the attempt
was signed, ``v1`` the lowercase hex HMAC-SHA256, keyed with the webhook's secret (UTF-8), of the
bytes ``f"{t}."`` followed by the exact request body. A receiver recomputes it over the raw body,
compares in constant time, and refuses a ``t`` further than a tolerance (300 s by default) from
its own clock, which stops replays (``verify_signature`` does all three). Any 2xx answer is
success; anything else, a redirect, a timeout (``timeout_s`` for the whole attempt) or a
connection error is a failed attempt.

Run ``WebhookDispatcher`` in ONE process per database: two dispatchers would deliver twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, Self

import httpx

from fleetlink_cloud.bus import EventBus, StreamEvent, make_filter
from fleetlink_cloud.config import WebhookSettings
from fleetlink_cloud.errors import CloudError
from fleetlink_cloud.store.base import Store, Webhook

log = logging.getLogger(__name__)

SIGNATURE_HEADER: Final = "Fleetlink-Signature"
PING_EVENT_TYPE: Final = "webhook.ping"
PING_EVENT_ID: Final = 0  # the delivery log's event id of test pings
PAGE_SIZE: Final = 200
POLL_INTERVAL_S: Final = 1.0  # without a bus, new events are noticed within this time
REFRESH_INTERVAL_S: Final = 5.0  # how soon created/enabled/deleted webhooks are picked up
USER_AGENT: Final = "fleetlink-webhooks/1"


def generate_secret() -> str:
    """A new signing secret: ``whsec_`` and 256 random bits, base64url."""
    return "whsec_" + secrets.token_urlsafe(32)


def sign(secret: str, body: bytes, timestamp_s: int) -> str:
    """The ``Fleetlink-Signature`` header value for ``body`` signed at ``timestamp_s``."""
    mac = hmac.new(secret.encode(), f"{timestamp_s}.".encode() + body, hashlib.sha256)
    return f"t={timestamp_s},v1={mac.hexdigest()}"


def verify_signature(
    secret: str, body: bytes, header: str, *, now_s: float, tolerance_s: float = 300
) -> bool:
    """True if ``header`` signs ``body`` with ``secret`` at a time within ``tolerance_s`` of now.

    Accepts several ``v1=`` entries (a receiver rotating secrets may see more than one).
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        # ASCII digits only: str.isdigit() also accepts "²" (int() refuses it) and other scripts'
        # digits, which are not the text that was signed.
        if key == "t" and value.isascii() and value.isdigit() and len(value) < 16:
            timestamp = int(value)
        elif key == "v1" and value.isascii():  # compare_digest raises TypeError for non-ASCII
            candidates.append(value)
    if timestamp is None or not candidates or abs(now_s - timestamp) > tolerance_s:
        return False
    expected = sign(secret, body, timestamp).rpartition("v1=")[2]
    return any(hmac.compare_digest(expected, c) for c in candidates)


def backoff_s(attempt: int, settings: WebhookSettings, rand: float) -> float:
    """Wait before attempt ``attempt + 1``: exponential, capped, with "equal jitter".

    ``rand`` in [0, 1) picks the delay between half and all of ``initial * 2**(attempt-1)``
    (capped at ``backoff_max_s``), so failing receivers are not hit in lockstep.
    """
    doubling: float = 2.0 ** min(attempt - 1, 60)
    ceiling = min(settings.backoff_max_s, settings.backoff_initial_s * doubling)
    return ceiling * (0.5 + 0.5 * rand)


def event_body(webhook_id: str, event: StreamEvent) -> bytes:
    """The JSON body of one delivery: the stream event as the WebSocket sends it, plus the hook."""
    doc: dict[str, Any] = {**event.to_json(), "webhook_id": webhook_id}
    return json.dumps(doc, separators=(",", ":"), sort_keys=True, default=str).encode()


def wants(hook: Webhook, event: StreamEvent) -> bool:
    """True if the webhook subscribes to the event's type."""
    return event.type in hook.event_types


Handled = Literal["delivered", "given_up", "stopped"]
"""What became of one event: delivered (a 2xx), given up (``max_attempts`` attempts failed; the
cursor moves past it either way), or stopped: the webhook was disabled or deleted before either,
so the event stays pending and is tried again (continuing its attempt count) once enabled."""


def _new_client(timeout_s: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One delivery attempt: ok for any 2xx; otherwise the status or the transport error."""

    ok: bool
    status_code: int | None
    error: str | None


class WebhookDispatcher:
    """Delivers stream events to every enabled webhook; ``run()`` until cancelled.

    Use as an async context manager: entering builds the HTTP client (unless one is given),
    leaving stops every delivery task and closes the client if this dispatcher built it.
    """

    def __init__(
        self,
        store: Store,
        settings: WebhookSettings,
        *,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], int] = time.time_ns,
        rand: Callable[[], float] = random.random,
        poll_interval_s: float = POLL_INTERVAL_S,
        refresh_interval_s: float = REFRESH_INTERVAL_S,
    ) -> None:
        self._store = store
        self._settings = settings
        self._own_client = client is None
        self._client = client
        self._clock = clock
        self._rand = rand
        self._poll_interval_s = poll_interval_s
        self._refresh_interval_s = refresh_interval_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wakers: dict[str, asyncio.Event] = {}
        self.counters: dict[str, int] = {"delivered": 0, "failed_attempts": 0, "given_up": 0}

    async def __aenter__(self) -> Self:
        if self._client is None:
            # Building a client reads the CA bundle from disk: blocking, so not on the loop.
            self._client = await asyncio.to_thread(_new_client, self._settings.timeout_s)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop every delivery task and close the HTTP client (if this dispatcher made it)."""
        await self._stop_tasks()
        if self._own_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def _stop_tasks(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._wakers.clear()

    # -- one attempt -------------------------------------------------------------------------

    async def attempt(self, hook: Webhook, event: StreamEvent, attempt: int) -> Outcome:
        """POST one event once, signed now. Never raises for receiver or network trouble.

        ``timeout_s`` bounds the whole attempt: httpx's timeout applies to each read or write,
        so a receiver dripping its answer byte by byte would hold the webhook up for ever.
        Raises RuntimeError outside ``async with``.
        """
        if self._client is None:
            raise RuntimeError("WebhookDispatcher used outside `async with`")
        body = event_body(hook.id, event)
        headers = {
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json",
            "Fleetlink-Event-Id": str(event.id),
            "Fleetlink-Event-Type": event.type,
            "Fleetlink-Delivery-Attempt": str(attempt),
            SIGNATURE_HEADER: sign(hook.secret, body, self._clock() // 1_000_000_000),
        }
        try:
            async with asyncio.timeout(self._settings.timeout_s):
                # Streamed and never read: a receiver's answer body is of no use and may be huge.
                async with self._client.stream(
                    "POST", hook.url, content=body, headers=headers, follow_redirects=False
                ) as response:
                    status = response.status_code
        except (httpx.TimeoutException, TimeoutError):
            return Outcome(False, None, f"timeout after {self._settings.timeout_s} s")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return Outcome(False, None, f"{type(exc).__name__}: {exc}"[:500])
        if 200 <= status < 300:
            return Outcome(True, status, None)
        return Outcome(False, status, f"HTTP {status}")

    async def ping(self, hook: Webhook) -> Outcome:
        """Send a ``webhook.ping`` test event once (no retries) and log it with event id 0.

        The store counts a failed ping among the consecutive failures, but it never disables.
        """
        now = self._clock()
        event = StreamEvent(PING_EVENT_ID, PING_EVENT_TYPE, "", now, {"webhook_id": hook.id})
        outcome = await self.attempt(hook, event, 1)
        await self._record(hook.id, PING_EVENT_ID, 1, outcome, 0.0, disable_after=None)
        return outcome

    async def _record(
        self, hook_id: str, event_id: int, attempt: int, outcome: Outcome, delay_s: float, *,
        disable_after: int | None,
    ) -> Webhook:  # fmt: skip
        """Log one attempt (``delay_s``: the wait before the next one, 0 for none)."""
        now = self._clock()
        return await self._store.record_delivery(
            hook_id,
            event_id=event_id,
            attempt=attempt,
            ok=outcome.ok,
            status_code=outcome.status_code,
            error=outcome.error,
            ts_wall_ns=now,
            next_attempt_wall_ns=None if delay_s == 0.0 else now + int(delay_s * 1e9),
            disable_after=disable_after,
        )

    # -- one event, with retries -------------------------------------------------------------

    async def deliver(
        self, hook: Webhook, event: StreamEvent, *, first_attempt: int = 1
    ) -> Handled:
        """Deliver ``event`` from attempt ``first_attempt`` on, with backoff between attempts.

        Raises StoreError (the caller tries again later, continuing from the delivery log).
        """
        attempt = first_attempt
        limit = self._settings.disable_after_failures
        while True:
            outcome = await self.attempt(hook, event, attempt)
            last = attempt >= self._settings.max_attempts
            delay = 0.0 if outcome.ok or last else backoff_s(attempt, self._settings, self._rand())
            hook = await self._record(
                hook.id, event.id, attempt, outcome, delay, disable_after=limit
            )
            if outcome.ok:
                self.counters["delivered"] += 1
                return "delivered"
            self.counters["failed_attempts"] += 1
            if not hook.enabled:
                log.warning("webhook %s disabled: %s", hook.id, hook.disabled_reason)
            if last:  # given up even if that failure also disabled the webhook
                self.counters["given_up"] += 1
                log.warning("webhook %s: event %d given up: %s", hook.id, event.id, outcome.error)
                return "given_up"
            if not hook.enabled:
                return "stopped"
            await asyncio.sleep(delay)
            current = await self._store.get_webhook(hook.id)
            if current is None or not current.enabled:
                return "stopped"
            hook = current  # the URL or secret may have changed meanwhile
            attempt += 1

    # -- tailing -------------------------------------------------------------------------------

    async def run(self, bus: EventBus | None = None) -> None:
        """Keep one delivery task per enabled webhook, until cancelled; ``bus`` wakes them early.

        Call it inside ``async with``; cancelling it stops the delivery tasks.
        """
        listener = None
        if bus is not None:
            listener = asyncio.create_task(self._listen(bus), name="webhooks-wake")
        try:
            while True:
                await self.refresh()
                await asyncio.sleep(self._refresh_interval_s)
        finally:
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
            await self._stop_tasks()

    async def refresh(self) -> None:
        """Start tasks for enabled webhooks that have none; finished tasks are forgotten."""
        for hook_id, task in list(self._tasks.items()):
            if task.done():
                del self._tasks[hook_id]
                self._wakers.pop(hook_id, None)
                if not task.cancelled() and (exc := task.exception()) is not None:
                    log.error("webhook %s: delivery task failed", hook_id, exc_info=exc)
        try:
            hooks = await self._store.list_webhooks()
        except CloudError as exc:
            log.warning("webhooks: cannot list webhooks: %s", exc)
            return
        for hook in hooks:
            if hook.enabled and hook.id not in self._tasks:
                self._wakers[hook.id] = asyncio.Event()
                self._tasks[hook.id] = asyncio.create_task(
                    self._tail(hook.id), name=f"webhook-{hook.id}"
                )

    def wake(self) -> None:
        """New events may be in the store: let every webhook look now."""
        for event in self._wakers.values():
            event.set()

    async def _listen(self, bus: EventBus) -> None:
        key, sub = bus.subscribe(make_filter(None, None), maxsize=1000)
        try:
            async for _ in sub:
                self.wake()
        finally:
            bus.unsubscribe(key)

    async def _tail(self, hook_id: str) -> None:
        """Deliver one webhook's events from its cursor until it is disabled or deleted."""
        while True:
            try:
                hook = await self._store.get_webhook(hook_id)
                if hook is None or not hook.enabled:
                    return
                events = await self._store.stream_events_after(hook.cursor, PAGE_SIZE)
                if not events:
                    await self._idle(hook_id)
                elif not await self._deliver_page(hook, events):
                    return
            except CloudError as exc:  # the store is down: wait and try again
                log.warning("webhook %s: %s", hook_id, exc)
                await asyncio.sleep(self._poll_interval_s)

    async def _deliver_page(self, hook: Webhook, events: list[StreamEvent]) -> bool:
        """Deliver the wanted events of a page read from the cursor, moving the cursor past each
        one handled; False once the webhook is disabled or deleted."""
        first = True
        for event in events:
            if not wants(hook, event):
                continue
            current = await self._store.get_webhook(hook.id)  # disabled meanwhile?
            if current is None or not current.enabled:
                return False
            # Only the first wanted event after the cursor can have been tried already: by a
            # process that stopped, before a store outage, or before the webhook was disabled.
            start = await self._resume_attempt(hook.id, event.id) if first else 1
            first = False
            if start is None:
                log.info("webhook %s: event %d was handled before a restart", hook.id, event.id)
            elif await self.deliver(current, event, first_attempt=start) == "stopped":
                return False
            await self._store.set_webhook_cursor(hook.id, event.id)
        await self._store.set_webhook_cursor(hook.id, events[-1].id)
        return True

    async def _resume_attempt(self, hook_id: str, event_id: int) -> int | None:
        """The attempt to go on with, from the event's newest logged attempt: None if that one
        succeeded or was the last allowed (handled, only the cursor did not move)."""
        logged = await self._store.deliveries(hook_id, limit=1, event_id=event_id)
        if not logged:
            return 1
        newest = logged[0]
        if newest.ok or newest.attempt >= self._settings.max_attempts:
            return None
        return newest.attempt + 1

    async def _idle(self, hook_id: str) -> None:
        waker = self._wakers.get(hook_id)
        if waker is None:
            await asyncio.sleep(self._poll_interval_s)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._poll_interval_s):
                await waker.wait()
        waker.clear()
