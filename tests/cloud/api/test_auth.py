"""Every route needs a token of the right scope: walked from the app, so none can escape."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIWebSocketRoute, iter_route_contexts
from starlette.testclient import WebSocketDenialResponse

from fleetlink_cloud import tokens
from fleetlink_cloud.api.auth import required_scopes
from fleetlink_cloud.store.base import SCOPES, Scope
from tests.cloud.api.harness import NOW_NS, Api, Served, mint

PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect"})
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Ids that match each path parameter's pattern but name nothing: no test request changes data.
PLACEHOLDERS = {
    "device_id": "veh-none",
    "path": "Vehicle.Speed",
    "webhook_id": "wh_none",
    "command_id": "cmd-none",
    "token_id": "0123456789ab",
    "job_id": "job-none",
    "depot_id": "depot-none",
    "driver_id": "driver-none",
    "plan_id": "plan_0000000000000000",
}


def tampered(token: str) -> str:
    """The same token with the last character of its secret changed."""
    return token[:-1] + ("B" if token.endswith("A") else "A")


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: PLACEHOLDERS[m.group(1)], path)


def operations(app: FastAPI) -> Iterator[tuple[str, str, Any]]:
    """(method, path, route) of every HTTP operation the app serves, included routers too."""
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, APIWebSocketRoute):
            continue
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                yield method, str(route.path), route


def refused(scopes: tuple[Scope, ...]) -> list[Scope]:
    return [s for s in SCOPES if not any(tokens.allows(s, need) for need in scopes)]


async def _send(
    client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str]
) -> httpx.Response:
    body: dict[str, Any] | None = {} if method in WRITE_METHODS else None
    return await client.request(method, concrete(path), json=body, headers=headers)


async def test_every_route_refuses_callers_without_the_scope(
    api: Api, client: httpx.AsyncClient
) -> None:
    _, revoked = await mint(api.store, "admin", "revoked")
    await api.store.revoke_token(revoked.split("_")[1], revoked_wall_ns=NOW_NS)
    wrong_secret = tampered(api.tokens["admin"])
    checked = 0
    for method, path, route in operations(api.app):
        scopes = required_scopes(route)
        if path in PUBLIC_PATHS:
            assert scopes is None, f"{path} is public but asks for a scope"
            continue
        assert path.startswith("/v1/"), f"{method} {path}: every API route is versioned"
        assert scopes, f"{method} {path} declares no scope: every route must take a Principal"
        for header in (None, "Bearer nonsense", f"Bearer {revoked}", f"Bearer {wrong_secret}"):
            headers = {} if header is None else {"Authorization": header}
            r = await _send(client, method, path, headers=headers)
            assert r.status_code == 401, (method, path, header, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert isinstance(r.json()["detail"], str)
        for scope in refused(scopes):
            r = await _send(client, method, path, headers=api.auth(scope))
            assert r.status_code == 403, (method, path, scope, r.text)
            assert "insufficient_scope" in r.headers["www-authenticate"]
        for scope in SCOPES:
            if scope not in refused(scopes):
                r = await _send(client, method, path, headers=api.auth(scope))
                assert r.status_code not in (401, 403), (method, path, scope, r.text)
        checked += 1
    assert checked >= 30
    assert api.ctx.counters.unauthenticated >= 4 * checked


async def test_read_scope_is_refused_somewhere(api: Api) -> None:
    """The walk above proves 403s only where some scope is not enough: make sure those exist."""
    needs = {required_scopes(r) for _, p, r in operations(api.app) if p not in PUBLIC_PATHS}
    assert ("admin",) in needs
    assert ("dispatch",) in needs
    assert ("dispatch", "maintenance") in needs


async def test_every_operation_documents_its_scope(api: Api, client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    by_op = {(m, p): r for m, p, r in operations(api.app)}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            scopes = required_scopes(by_op[(method.upper(), path)])
            assert op["x-required-scopes"] == list(scopes or ())
            if scopes is None:
                assert op["description"].startswith("**Public**")
                assert "security" not in op
            else:
                assert op["description"].startswith("**Required scope**: ")
                assert all(f"`{s}`" in op["description"].split("\n")[0] for s in scopes)
                assert op["security"] == [{"bearerAuth": []}]


async def test_maintenance_may_not_send_set_config(api: Api, client: httpx.AsyncClient) -> None:
    body = {"name": "set_config", "args": {"values": {"gps": {"rate_hz": 1}}}}
    r = await client.post("/v1/vehicles/veh-1/commands", json=body, headers=api.auth("maintenance"))
    assert r.status_code == 403
    assert "set_config" in r.json()["detail"]
    ok = await client.post("/v1/vehicles/veh-1/commands", json=body, headers=api.auth("dispatch"))
    assert ok.status_code == 201


async def test_unauthenticated_callers_cannot_probe_devices(client: httpx.AsyncClient) -> None:
    for device in ("veh-1", "veh-none"):
        assert (await client.get(f"/v1/vehicles/{device}")).status_code == 401


def ws_paths(app: FastAPI) -> list[str]:
    return [
        str(r.path)
        for r in iter_route_contexts(app.routes)
        if isinstance(r.original_route, APIWebSocketRoute)
    ]


def test_every_websocket_refuses_callers_without_a_token(live: Served) -> None:
    paths = ws_paths(live.api.app)
    assert paths == ["/v1/stream"]
    for path in paths:
        assert required_scopes(
            next(r for r in iter_route_contexts(live.api.app.routes) if r.path == path)
        ) == ("read",)
        for suffix in ("", "?token=nonsense", f"?token={tampered(live.api.tokens['read'])}"):
            with (
                pytest.raises(WebSocketDenialResponse) as denied,
                live.client.websocket_connect(path + suffix),
            ):
                pass
            assert denied.value.status_code == 401
            assert denied.value.json()["detail"]


@pytest.mark.parametrize("where", ["header", "query"])
def test_websocket_accepts_a_token_in_header_or_query(live: Served, where: str) -> None:
    token = live.api.tokens["read"]
    path, headers = "/v1/stream", {}
    if where == "header":
        headers = {"Authorization": f"Bearer {token}"}
    else:
        path += f"?token={token}"
    with live.client.websocket_connect(path, headers=headers) as ws:
        ws.close()
