"""The live WebSocket stream: filters, replay, drops for slow clients; and the store tailer."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import pytest
from starlette.testclient import WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from fleetlink_cloud.api import StreamTailer
from fleetlink_cloud.api.routers import stream
from fleetlink_cloud.bus import StreamEvent, make_filter
from fleetlink_cloud.store.base import Store
from tests.cloud.api.harness import NOW_NS, Api, Served

BASE_ID = 10_000  # above every id the seeded store holds


def ev(n: int, type_: str = "position", device: str = "veh-1") -> StreamEvent:
    return StreamEvent(BASE_ID + n, type_, device, NOW_NS + n, {"n": n})


def publish(live: Served, *events: StreamEvent) -> None:
    def run() -> None:
        for e in events:
            live.api.ctx.bus.publish(e)

    live.portal.call(run)


def url(live: Served, query: str = "") -> str:
    return f"/v1/stream?token={live.api.tokens['read']}" + (f"&{query}" if query else "")


def test_filters_by_vehicle_and_type(live: Served) -> None:
    query = "vehicle=veh-1&type=position,dtc.raised&type=vehicle.online"
    with live.client.websocket_connect(url(live, query)) as ws:
        publish(
            live,
            ev(1),
            ev(2, device="veh-2"),
            ev(3, "signal"),
            ev(4, "dtc.raised"),
            ev(5, "vehicle.online"),
        )
        got = [ws.receive_json() for _ in range(3)]
    assert [m["id"] - BASE_ID for m in got] == [1, 4, 5]
    assert got[0] == {
        "id": BASE_ID + 1,
        "type": "position",
        "device_id": "veh-1",
        "ts": (NOW_NS + 1) / 1e9,
        "data": {"n": 1},
    }
    assert live.api.ctx.bus.subscribers == 0  # gone with the client


def test_no_filter_means_everything(live: Served) -> None:
    with live.client.websocket_connect(url(live)) as ws:
        publish(live, ev(1, "signal", "veh-2"), ev(2, "command.acked"))
        assert [ws.receive_json()["id"] - BASE_ID for _ in range(2)] == [1, 2]


@pytest.mark.parametrize(
    "query", ["type=nonsense", "type=position,teleport", "vehicle=a/b", "after=-1"]
)
def test_bad_filters_are_refused_before_the_handshake(live: Served, query: str) -> None:
    with (
        pytest.raises(WebSocketDenialResponse) as denied,
        live.client.websocket_connect(url(live, query)),
    ):
        pass
    assert denied.value.status_code == 422
    assert denied.value.json()["detail"]
    assert live.api.ctx.bus.subscribers == 0


def test_slow_client_loses_oldest_events_and_is_told(
    live: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream, "QUEUE_SIZE", 10)
    with live.client.websocket_connect(url(live)) as ws:
        publish(live, *(ev(n) for n in range(1, 16)))  # 15 at once into a queue of 10
        notice = ws.receive_json()
        got = [ws.receive_json()["id"] - BASE_ID for _ in range(10)]
    assert notice == {"type": "stream.dropped", "dropped": 5, "total": 5}
    assert got == list(range(6, 16))
    assert live.api.ctx.counters.stream_dropped == 5
    assert live.api.ctx.bus.counters["dropped"] == 5


def test_after_replays_committed_events_then_goes_live(live: Served) -> None:
    query = "after=0&type=dtc.raised"
    with live.client.websocket_connect(url(live, query)) as ws:
        replayed = [ws.receive_json() for _ in range(3)]
        last_id = replayed[-1]["id"]
        publish(
            live,
            StreamEvent(last_id, "dtc.raised", "veh-1", 0),  # replayed already: not again
            ev(1, "dtc.raised"),
        )
        live_event = ws.receive_json()
    assert [m["data"]["code"] for m in replayed] == ["P0301", "P1234", "100-1"]
    assert replayed[2]["data"]["spn_name"] == "Engine Oil Pressure"
    assert live_event["id"] == BASE_ID + 1


def test_server_shutdown_closes_with_1001(live: Served) -> None:
    with live.client.websocket_connect(url(live)) as ws:
        live.portal.call(live.api.ctx.bus.close)
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1001


def test_client_messages_are_ignored(live: Served) -> None:
    with live.client.websocket_connect(url(live)) as ws:
        ws.send_text("hello")
        publish(live, ev(1))
        assert ws.receive_json()["id"] == BASE_ID + 1


async def _append(store: Store, *types: str) -> list[int]:
    return await store.append_stream_events(
        [StreamEvent(0, t, "veh-1", NOW_NS, {"x": 1}) for t in types]
    )


async def test_tailer_publishes_new_store_events_in_order(api: Api) -> None:
    tailer = StreamTailer(api.store, api.ctx.bus, page_size=2)
    received: list[dict[str, Any]] = []
    _, sub = api.ctx.bus.subscribe(make_filter(None, None))
    assert await tailer.poll() == 0  # starts from the newest event: history is not re-sent
    ids = await _append(api.store, "position", "signal", "event")
    assert await tailer.poll() == 2
    assert await tailer.poll() == 1
    assert await tailer.poll() == 0
    api.ctx.bus.close()
    async for event in sub:
        received.append(event.to_json())
    assert [e["id"] for e in received] == ids
    assert [e["type"] for e in received] == ["position", "signal", "event"]
    assert tailer.counters["published"] == 3


async def test_without_the_denial_extension_a_refusal_is_close_1008(api: Api) -> None:
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": "/v1/stream",
        "raw_path": b"/v1/stream",
        "query_string": b"token=nonsense",
        "headers": [],
        "server": ("test", 80),
        "client": ("127.0.0.1", 5000),
        "subprotocols": [],
    }
    await api.app(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "invalid or revoked token"}]
