"""Downlink commands: created through the CommandService, idempotent, audited, acks readable."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from fleetlink_cloud.api import ApiContext, create_app
from fleetlink_cloud.commands import CommandService
from tests.cloud.api.harness import NOW_NS, Api, client_for

URL = "/v1/vehicles/veh-1/commands"


async def test_create_ping_then_read_its_ack(api: Api, client: httpx.AsyncClient) -> None:
    r = await client.post(URL, json={"name": "ping"}, headers=api.auth("maintenance"))
    assert r.status_code == 201, r.text
    cmd = r.json()
    assert cmd["name"] == "ping"
    assert cmd["device_id"] == "veh-1"
    assert cmd["status"] == "queued"  # this app has no MQTT link: ingest's service sends it
    assert cmd["created_wall_ns"] == NOW_NS
    await api.store.record_command_ack(
        "veh-1", cmd["command_id"], status="done", detail="pong", received_wall_ns=NOW_NS + 5
    )
    got = await client.get(f"/v1/commands/{cmd['command_id']}", headers=api.auth("read"))
    assert got.json()["status"] == "done"
    assert got.json()["detail"] == "pong"
    assert got.json()["acked_wall_ns"] == NOW_NS + 5
    listed = await client.get(URL, params={"status": "done"}, headers=api.auth("read"))
    assert [c["command_id"] for c in listed.json()["items"]] == [cmd["command_id"]]


async def test_idempotency_key_returns_the_same_command(
    api: Api, client: httpx.AsyncClient
) -> None:
    headers = {**api.auth("dispatch"), "Idempotency-Key": "job-17-dtc-check"}
    first = await client.post(URL, json={"name": "read_dtcs"}, headers=headers)
    again = await client.post(URL, json={"name": "read_dtcs"}, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json() == again.json()
    other = await client.post(URL, json={"name": "ping"}, headers=headers)
    assert other.status_code == 409
    assert "other content" in other.json()["detail"]
    assert len(await api.store.list_commands("veh-1")) == 1


async def test_client_supplied_command_id(api: Api, client: httpx.AsyncClient) -> None:
    values = {"gps": {"rate_hz": 5}}
    body = {"name": "set_config", "args": {"values": values}, "command_id": "cfg-1"}
    first = await client.post(URL, json=body, headers=api.auth("dispatch"))
    again = await client.post(URL, json=body, headers=api.auth("dispatch"))
    assert (first.status_code, again.status_code) == (201, 200)
    cmd = first.json()
    assert cmd["command_id"] == "cfg-1"
    assert cmd["args"]["values"] == {"gps": {"rate_hz": 5}}
    assert cmd["args"]["version"] == 1  # the desired configuration's new version
    desired = (await api.store.get_config("veh-1")).desired
    assert desired is not None
    assert (desired.version, desired.document) == (1, {"gps": {"rate_hz": 5}})
    other_vehicle = await client.post(
        "/v1/vehicles/veh-2/commands", json=body, headers=api.auth("dispatch")
    )
    assert other_vehicle.status_code == 409


@pytest.mark.parametrize(
    "body",
    [
        {"name": "self_destruct"},
        {"name": "set_config", "args": {}},
        {"name": "set_config", "args": {"values": {}, "extra": 1}},
        {"name": "set_config", "args": {"values": {"gps.rate_hz": 5}}},
        {"name": "ping", "command_id": "bad id"},
        {"name": "ping", "expires_in_s": 0},
        {"name": "ping", "args": {f"k{i}": i for i in range(100)}},
    ],
)
async def test_invalid_commands_are_422(api: Api, client: httpx.AsyncClient, body: dict) -> None:  # type: ignore[type-arg]
    r = await client.post(URL, json=body, headers=api.auth("admin"))
    assert r.status_code == 422, r.text
    assert r.json()["detail"]
    assert await api.store.list_commands("veh-1") == []


async def test_unknown_vehicle_and_command_are_404(api: Api, client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/vehicles/veh-9/commands", json={"name": "ping"}, headers=api.auth("dispatch")
    )
    assert r.status_code == 404
    r2 = await client.get("/v1/commands/nope", headers=api.auth("read"))
    assert r2.status_code == 404
    assert r2.json() == {"detail": "no command 'nope'"}


async def test_command_writes_are_audited(api: Api, client: httpx.AsyncClient) -> None:
    headers = {**api.auth("dispatch"), "Idempotency-Key": "k1"}
    cid = (await client.post(URL, json={"name": "ping"}, headers=headers)).json()["command_id"]
    await client.post(URL, json={"name": "ping"}, headers=headers)
    await client.post(URL, json={"name": "nope"}, headers=api.auth("dispatch"))
    rows = await api.store.list_audit()
    assert [(a.actor, a.method, a.path, a.status, a.detail) for a in rows] == [
        (api.token_ids["dispatch"], "POST", URL, 201, f"command {cid} ping"),
        (api.token_ids["dispatch"], "POST", URL, 200, f"command {cid} ping (repeat)"),
        (api.token_ids["dispatch"], "POST", URL, 422, ""),
    ]


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.sent.append((topic, payload))


async def test_an_online_vehicle_gets_the_command_at_once(api: Api) -> None:
    recorder = _Recorder()
    ctx: ApiContext = api.ctx
    service = CommandService(ctx.store, recorder, clock=ctx.clock)
    app = create_app(ctx, commands=service)
    async with client_for(type(api)(api.store, ctx, app)) as client:
        r = await client.post(URL, json={"name": "ping"}, headers=api.auth("dispatch"))
    assert r.status_code == 201
    assert r.json()["status"] == "sent"
    assert [t for t, _ in recorder.sent] == ["fleet/veh-1/dn/cmd"]


async def test_oversized_bodies_are_refused(api: Api, client: httpx.AsyncClient) -> None:
    body = {"name": "set_config", "args": {"values": {"blob": "x" * 300_000}}}
    r = await client.post(URL, json=body, headers=api.auth("dispatch"))
    assert r.status_code == 413
    assert r.json() == {"detail": "request body larger than 262144 bytes"}

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"name": "ping", "args": {"x": "'
        for _ in range(300):
            yield b"y" * 1024
        yield b'"}}'

    headers = {**api.auth("dispatch"), "Content-Type": "application/json"}
    r2 = await client.post(URL, content=chunks(), headers=headers)
    assert r2.status_code == 413
    assert await api.store.list_commands("veh-1") == []
    assert [a.status for a in await api.store.list_audit()] == []
