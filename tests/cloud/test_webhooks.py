"""Webhooks: signatures, backoff and bodies (pure), and delivery to a real HTTP receiver.

The receiver (``asyncio.start_server`` + h11, on a free loopback port) records every request as
it arrives, checks its signature with the webhook's secret, and answers from a script: a status
code, "hang" (never answer) or "drip" (a 200, one byte every 50 ms). The store is real SQLite.
The dispatcher's loop and failure paths are in test_webhooks_dispatcher.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import inspect
import json
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import h11
import pytest

from fleetlink_cloud.bus import EventBus, StreamEvent
from fleetlink_cloud.config import WebhookSettings
from fleetlink_cloud.store import Delivery, Store, Webhook, open_store
from fleetlink_cloud.webhooks import (
    WebhookDispatcher,
    backoff_s,
    event_body,
    generate_secret,
    sign,
    verify_signature,
)

SECRET = "whsec_test-secret"
T0 = 1_717_243_200_000_000_000
FAST = WebhookSettings(
    timeout_s=0.3,
    max_attempts=3,
    backoff_initial_s=0.05,
    backoff_max_s=0.2,
    disable_after_failures=20,
)
Answer = int | Literal["hang", "drip"]


@dataclass(frozen=True)
class Received:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    arrived_s: float  # monotonic
    signature_ok: bool

    @property
    def event_id(self) -> int:
        return int(self.headers["fleetlink-event-id"])

    @property
    def attempt(self) -> int:
        return int(self.headers["fleetlink-delivery-attempt"])


class Receiver:
    """A dispatch backend: answers ``default`` unless ``plan`` queued other answers first."""

    def __init__(self, secret: str = SECRET) -> None:
        self.secret = secret
        self.requests: list[Received] = []
        self.default: Answer = 200
        self._plan: deque[Answer] = deque()
        self._server: asyncio.Server | None = None
        self._handlers: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    def plan(self, *answers: Answer) -> None:
        self._plan.extend(answers)

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook"

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        # Hanging up ends every handler; cancelling them instead makes Python 3.11's
        # start_server log "Exception in callback" for each.
        for writer in self._handlers.values():
            writer.close()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        conn = h11.Connection(h11.SERVER)
        try:
            while (request := await self._read(conn, reader)) is not None:
                self.requests.append(request)
                answer = self._plan.popleft() if self._plan else self.default
                if answer == "hang":
                    await reader.read()  # until the dispatcher gives up and hangs up
                    return
                await self._answer(conn, writer, answer)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (h11.ProtocolError, ConnectionError):
            pass
        finally:
            writer.close()
            del self._handlers[task]

    @staticmethod
    async def _answer(
        conn: h11.Connection, writer: asyncio.StreamWriter, answer: int | Literal["drip"]
    ) -> None:
        status = 200 if answer == "drip" else answer
        headers = [("content-length", "2")]
        if 300 <= status < 400:
            headers.append(("location", "http://127.0.0.1:1/elsewhere"))
        data = conn.send(h11.Response(status_code=status, headers=headers))
        data += conn.send(h11.Data(data=b"ok")) + conn.send(h11.EndOfMessage())
        for chunk in [data] if answer != "drip" else [data[i : i + 1] for i in range(len(data))]:
            if writer.is_closing():  # the dispatcher gave up, or the receiver is closing
                return
            writer.write(chunk)
            await writer.drain()
            if answer == "drip":
                await asyncio.sleep(0.05)

    async def _read(self, conn: h11.Connection, reader: asyncio.StreamReader) -> Received | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return self._received(head, bytes(body))
            else:  # ConnectionClosed
                return None

    def _received(self, head: h11.Request, body: bytes) -> Received:
        headers = {k.decode().lower(): v.decode() for k, v in head.headers}
        signature = headers.get("fleetlink-signature", "")
        ok = verify_signature(self.secret, body, signature, now_s=time.time())
        return Received(
            head.method.decode(), head.target.decode(), headers, body, time.monotonic(), ok
        )


# -- pure: signature, backoff, body -----------------------------------------------------------

BODY = b'{"data":{},"id":1,"type":"dtc.raised"}'
TS = 1_717_243_200


def hmac_hex(secret: str, body: bytes, timestamp_s: int) -> str:
    """The signature as a receiver computes it from the documented scheme."""
    message = str(timestamp_s).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


@pytest.mark.parametrize("secret", [SECRET, "clé-ünïcode"])
def test_sign_is_hmac_sha256_over_timestamp_dot_body(secret: str) -> None:
    assert sign(secret, BODY, TS) == f"t={TS},v1={hmac_hex(secret, BODY, TS)}"
    assert sign(secret, BODY, TS) != sign(secret, BODY, TS + 1)


def test_verify_accepts_within_the_tolerance_and_refuses_outside() -> None:
    header = sign(SECRET, BODY, TS)
    for now_s in (TS, TS - 300, TS + 300, TS + 299.9):
        assert verify_signature(SECRET, BODY, header, now_s=now_s)
    for now_s in (TS - 300.5, TS + 301, TS + 86_400):
        assert not verify_signature(SECRET, BODY, header, now_s=now_s)
    assert verify_signature(SECRET, BODY, header, now_s=TS + 10, tolerance_s=10)
    assert not verify_signature(SECRET, BODY, header, now_s=TS + 11, tolerance_s=10)


def test_verify_refuses_a_tampered_body_timestamp_secret_or_signature() -> None:
    header = sign(SECRET, BODY, TS)
    mac = hmac_hex(SECRET, BODY, TS)
    flipped = mac[:-1] + ("0" if mac[-1] != "0" else "1")
    assert not verify_signature(SECRET, BODY.replace(b"1", b"2"), header, now_s=TS)
    assert not verify_signature(SECRET, BODY + b" ", header, now_s=TS)
    assert not verify_signature("whsec_other", BODY, header, now_s=TS)
    assert not verify_signature(SECRET, BODY, f"t={TS + 1},v1={mac}", now_s=TS)
    assert not verify_signature(SECRET, BODY, f"t={TS},v1={flipped}", now_s=TS)


def test_verify_accepts_any_of_several_signatures_and_spaces() -> None:
    mac = hmac_hex(SECRET, BODY, TS)
    other = hmac_hex("whsec_old", BODY, TS)
    assert verify_signature(SECRET, BODY, f"t={TS}, v1={other}, v1={mac}", now_s=TS)
    assert verify_signature("whsec_old", BODY, f"v1={other},t={TS},v1={mac}", now_s=TS)


MAC = hmac_hex(SECRET, BODY, TS)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        ",,,",
        f"v1={MAC}",  # no timestamp
        f"t={TS}",  # no signature
        f"t={TS},v1=",
        f"t=,v1={MAC}",
        f"t=abc,v1={MAC}",
        f"t=-{TS},v1={MAC}",
        f"t={TS}.0,v1={MAC}",
        f"t={'9' * 20},v1={MAC}",
        f"t=\u00b2,v1={MAC}",  # superscript two: str.isdigit() says yes, int() says no
        f"t={str(TS).translate(str.maketrans('0123456789', '٠١٢٣٤٥٦٧٨٩'))},v1={MAC}",
        f"t={TS},v1=é{MAC[1:]}",  # not ASCII: hmac.compare_digest would raise TypeError
        f"T={TS},V1={MAC}",
        f"t={TS};v1={MAC}",
    ],
)
def test_verify_refuses_malformed_headers_without_raising(header: str) -> None:
    assert verify_signature(SECRET, BODY, header, now_s=TS) is False


def test_backoff_doubles_from_the_initial_delay_up_to_the_cap() -> None:
    settings = WebhookSettings(backoff_initial_s=1.0, backoff_max_s=600.0)
    ceilings = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 600.0, 600.0]
    for attempt, ceiling in enumerate(ceilings, start=1):
        assert backoff_s(attempt, settings, 0.0) == ceiling / 2
        assert backoff_s(attempt, settings, 0.5) == ceiling * 0.75
        assert ceiling / 2 <= backoff_s(attempt, settings, 0.999_999) < ceiling
    assert backoff_s(10_000, settings, 0.0) == 300.0  # no OverflowError far past the cap
    small = WebhookSettings(backoff_initial_s=0.05, backoff_max_s=0.2)
    assert [backoff_s(a, small, 0.0) for a in (1, 2, 3, 4)] == [0.025, 0.05, 0.1, 0.1]


def test_event_body_is_the_stream_event_plus_the_webhook_id_compact_and_sorted() -> None:
    event = StreamEvent(
        4711, "dtc.raised", "veh-0001", 1_717_243_199_500_000_000, {"code": "P0300"}
    )
    assert event_body("wh_1", event) == (
        b'{"data":{"code":"P0300"},"device_id":"veh-0001","id":4711,"ts":1717243199.5,'
        b'"type":"dtc.raised","webhook_id":"wh_1"}'
    )


def test_generated_secrets_are_prefixed_and_random() -> None:
    secrets = {generate_secret() for _ in range(100)}
    assert len(secrets) == 100
    assert all(s.startswith("whsec_") and len(s) == 6 + 43 for s in secrets)


# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store("sqlite:///" + str(tmp_path / "db.sqlite3")) as s:
        yield s


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as r:
        yield r


async def make_hook(
    store: Store, url: str, types: tuple[str, ...] = ("dtc.raised", "event"), hook_id: str = "wh_a"
) -> Webhook:
    return await store.create_webhook(
        hook_id,
        url=url,
        secret=SECRET,
        event_types=types,
        created_wall_ns=T0,
        cursor=await store.latest_stream_event_id(),
    )


async def append(store: Store, *types: str) -> list[StreamEvent]:
    """Append one event per type; returns them as the store holds them (with their ids)."""
    offset = await store.latest_stream_event_id()
    new = [StreamEvent(0, t, "veh-0001", T0 + i, {"n": i}) for i, t in enumerate(types)]
    ids = await store.append_stream_events(new)
    events = await store.stream_events_after(offset, len(ids))
    assert [e.id for e in events] == ids
    return events


async def until(check: Callable[[], object], timeout_s: float = 5.0) -> None:
    """Wait until ``check()`` (or what it returns, if awaitable) is true."""
    async with asyncio.timeout(timeout_s):
        while True:
            result = check()
            if await result if inspect.isawaitable(result) else result:
                return
            await asyncio.sleep(0.01)


async def current(store: Store, hook_id: str) -> Webhook:
    hook = await store.get_webhook(hook_id)
    assert hook is not None
    return hook


async def cursor_is(store: Store, hook_id: str, event_id: int) -> None:
    async def reached() -> bool:
        return (await current(store, hook_id)).cursor >= event_id

    await until(reached)


async def log_of(store: Store, hook_id: str) -> list[Delivery]:
    """The delivery log, oldest first."""
    return list(reversed(await store.deliveries(hook_id, limit=1000)))


@contextlib.asynccontextmanager
async def dispatching(
    store: Store,
    settings: WebhookSettings = FAST,
    *,
    bus: EventBus | None = None,
    poll_interval_s: float = 0.02,
    rand: Callable[[], float] = lambda: 0.5,
) -> AsyncIterator[WebhookDispatcher]:
    """A running dispatcher; stopped (cancelled) on exit like the app's TaskGroup does."""
    async with WebhookDispatcher(
        store, settings, rand=rand, poll_interval_s=poll_interval_s, refresh_interval_s=0.05
    ) as dispatcher:
        task = asyncio.create_task(dispatcher.run(bus))
        try:
            yield dispatcher
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- delivery ----------------------------------------------------------------------------------


async def test_every_subscribed_event_arrives_once_in_order_signed(
    store: Store, receiver: Receiver
) -> None:
    hook = await make_hook(store, receiver.url)
    events = await append(store, "dtc.raised", "position", "event", "signal", "dtc.raised")
    async with dispatching(store) as dispatcher:
        await cursor_is(store, hook.id, events[-1].id)
        later = await append(store, "position", "event", "position")  # tailing, while running
        await cursor_is(store, hook.id, later[-1].id)
        await asyncio.sleep(0.2)  # time for any duplicate to show up
    wanted = [e for e in events + later if e.type in hook.event_types]
    assert [r.event_id for r in receiver.requests] == [e.id for e in wanted] == [1, 3, 5, 7]
    for request, event in zip(receiver.requests, wanted, strict=True):
        assert (request.method, request.target) == ("POST", "/hook")
        assert request.headers["content-type"] == "application/json"
        assert request.headers["user-agent"] == "fleetlink-webhooks/1"
        assert request.headers["fleetlink-event-type"] == event.type
        assert request.headers["fleetlink-delivery-attempt"] == "1"
        assert request.body == event_body(hook.id, event)
        assert request.signature_ok
        t, v1 = (p.partition("=")[2] for p in request.headers["fleetlink-signature"].split(","))
        assert abs(int(t) - time.time()) < 10
        mac = hmac.new(SECRET.encode(), t.encode() + b"." + request.body, hashlib.sha256)
        assert v1 == mac.hexdigest()
    assert json.loads(receiver.requests[0].body) == {
        "id": 1, "type": "dtc.raised", "device_id": "veh-0001", "ts": T0 / 1e9,
        "data": {"n": 0}, "webhook_id": "wh_a",
    }  # fmt: skip
    log = await log_of(store, hook.id)
    assert [(d.event_id, d.attempt, d.ok, d.status_code, d.error) for d in log] == [
        (e.id, 1, True, 200, None) for e in wanted
    ]
    assert all(d.next_attempt_wall_ns is None for d in log)
    assert dispatcher.counters == {"delivered": 4, "failed_attempts": 0, "given_up": 0}


async def test_unsubscribed_events_are_skipped_but_the_cursor_advances(
    store: Store, receiver: Receiver
) -> None:
    hook = await make_hook(store, receiver.url, types=("command.acked",))
    events = await append(store, "position", "signal", "dtc.raised")
    async with dispatching(store):
        await cursor_is(store, hook.id, events[-1].id)
        await asyncio.sleep(0.1)
    assert receiver.requests == []
    assert await store.deliveries(hook.id) == []
