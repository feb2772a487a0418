"""Operators: tokens (shown once, revocable), the audit log, dead letters, devices, status."""

from __future__ import annotations

import base64

import httpx

from fleetlink_cloud.api.deps import ApiCounters
from fleetlink_cloud.errors import StoreError
from tests.cloud.api.harness import NOW_NS, Api


async def test_token_lifecycle(api: Api, client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/tokens",
        json={"name": "dispatch backend", "scope": "dispatch"},
        headers=api.auth("admin"),
    )
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["token"].startswith(f"flk_{new['token_id']}_")
    assert new["scope"] == "dispatch"
    assert new["active"] is True
    mine = {"Authorization": f"Bearer {new['token']}"}
    assert (await client.get("/v1/webhooks", headers=mine)).status_code == 200
    listed = await client.get("/v1/tokens", headers=api.auth("admin"))
    assert new["token"] not in listed.text
    assert new["token_id"] in {t["token_id"] for t in listed.json()["items"]}
    gone = await client.delete(f"/v1/tokens/{new['token_id']}", headers=api.auth("admin"))
    assert gone.json()["active"] is False
    assert gone.json()["revoked_wall_ns"] == NOW_NS
    assert (await client.get("/v1/webhooks", headers=mine)).status_code == 401
    missing = await client.delete("/v1/tokens/0123456789ab", headers=api.auth("admin"))
    assert missing.status_code == 404


async def test_token_body_is_validated(api: Api, client: httpx.AsyncClient) -> None:
    for body in ({"name": "x", "scope": "root"}, {"name": "", "scope": "read"}, {"scope": "read"}):
        r = await client.post("/v1/tokens", json=body, headers=api.auth("admin"))
        assert r.status_code == 422, body


async def test_audit_log_pages_by_id(api: Api, client: httpx.AsyncClient) -> None:
    for device in ("veh-1", "veh-2"):
        await client.post(f"/v1/devices/{device}/disable", headers=api.auth("admin"))
    first = await client.get("/v1/audit", params={"limit": 1}, headers=api.auth("admin"))
    (row,) = first.json()["items"]
    assert row["path"] == "/v1/devices/veh-1/disable"
    assert row["actor"] == api.token_ids["admin"]
    assert row["detail"] == "device veh-1 disabled"
    rest = await client.get("/v1/audit", params={"after_id": row["id"]}, headers=api.auth("admin"))
    assert [a["path"] for a in rest.json()["items"]] == ["/v1/devices/veh-2/disable"]


async def test_reads_are_not_audited(api: Api, client: httpx.AsyncClient) -> None:
    await client.get("/v1/vehicles", headers=api.auth("admin"))
    await client.get("/v1/audit", headers=api.auth("admin"))
    assert await api.store.list_audit() == []


async def test_devices_list_disable_enable(api: Api, client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/devices", headers=api.auth("admin"))
    assert [d["id"] for d in r.json()["items"]] == ["veh-1", "veh-2"]
    assert "password" not in r.text
    off = await client.post("/v1/devices/veh-2/disable", headers=api.auth("admin"))
    assert off.json()["disabled"] is True
    assert (await api.store.get_device("veh-2")).disabled  # type: ignore[union-attr]
    on = await client.post("/v1/devices/veh-2/enable", headers=api.auth("admin"))
    assert on.json()["disabled"] is False
    one = await client.get("/v1/devices/veh-2", headers=api.auth("admin"))
    assert one.json() == on.json()
    for method, path in (("GET", ""), ("POST", "/disable")):
        r = await client.request(method, f"/v1/devices/veh-9{path}", headers=api.auth("admin"))
        assert r.status_code == 404


async def test_dead_letters_carry_the_raw_payload(api: Api, client: httpx.AsyncClient) -> None:
    ids = [
        await api.store.add_dead_letter(
            topic="fleet/veh-1/live",
            reason="MalformedPayload",
            payload=bytes([0xC1, 0x00, 0xFF]),
            received_wall_ns=NOW_NS,
            device_id="veh-1",
        )
        for _ in range(2)
    ]
    r = await client.get("/v1/dead-letters", params={"limit": 1}, headers=api.auth("admin"))
    (letter,) = r.json()["items"]
    assert letter["id"] == ids[0]
    assert base64.b64decode(letter["payload_b64"]) == bytes([0xC1, 0x00, 0xFF])
    assert letter["payload_bytes"] == 3
    assert letter["reason"] == "MalformedPayload"
    r2 = await client.get(
        "/v1/dead-letters", params={"after_id": ids[0]}, headers=api.auth("admin")
    )
    assert [d["id"] for d in r2.json()["items"]] == [ids[1]]


async def test_status_counts(api: Api, client: httpx.AsyncClient) -> None:
    await client.get("/v1/vehicles")
    await client.get("/v1/tokens", headers=api.auth("read"))
    r = await client.get("/v1/status", headers=api.auth("admin"))
    status = r.json()
    assert status["counts"]["devices"] == 2
    assert status["api"]["unauthenticated"] == 1
    assert status["api"]["forbidden"] == 1
    assert set(status["api"]) == set(ApiCounters.__dataclass_fields__)
    assert status["stream_subscribers"] == 0


class _FailingAudit:
    """The real store, except that audit rows cannot be written."""

    def __init__(self, api: Api) -> None:
        self._store = api.store

    async def add_audit(self, **kwargs: object) -> int:
        raise StoreError("disk full")

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


async def test_a_failed_audit_write_is_counted_not_fatal(
    api: Api, client: httpx.AsyncClient
) -> None:
    api.ctx.store = _FailingAudit(api)  # type: ignore[assignment]
    r = await client.post("/v1/devices/veh-2/disable", headers=api.auth("admin"))
    assert r.status_code == 200
    assert api.ctx.counters.audit_failures == 1


class _DownStore:
    def __getattr__(self, name: str) -> object:
        async def fail(*args: object, **kwargs: object) -> None:
            raise StoreError("connection refused")

        return fail


async def test_store_down_is_503(api: Api, client: httpx.AsyncClient) -> None:
    api.ctx.store = _DownStore()  # type: ignore[assignment]
    r = await client.get("/healthz")
    assert r.status_code == 503
    assert r.json() == {"detail": "store unavailable"}
