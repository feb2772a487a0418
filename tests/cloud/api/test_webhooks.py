"""Webhooks CRUD: the secret once, event-type validation, enable/disable, the delivery log."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.cloud.api.harness import NOW_NS, Api

BODY = {"url": "https://backend.example/hooks/fleet", "event_types": ["dtc.raised", "position"]}


async def _create(api: Api, client: httpx.AsyncClient, **extra: Any) -> httpx.Response:
    return await client.post("/v1/webhooks", json={**BODY, **extra}, headers=api.auth("dispatch"))


async def test_creation_shows_the_secret_once_and_starts_from_now(
    api: Api, client: httpx.AsyncClient
) -> None:
    r = await _create(api, client)
    assert r.status_code == 201, r.text
    hook = r.json()
    assert hook["secret"].startswith("whsec_")
    assert hook["id"].startswith("wh_")
    assert hook["event_types"] == ["position", "dtc.raised"]  # known order, no duplicates
    assert hook["url"] == BODY["url"]
    assert hook["enabled"] is True
    assert hook["created_wall_ns"] == NOW_NS
    assert hook["cursor"] == await api.store.latest_stream_event_id() > 0
    stored = await api.store.get_webhook(hook["id"])
    assert stored is not None
    assert stored.secret == hook["secret"]
    listed = await client.get("/v1/webhooks", headers=api.auth("dispatch"))
    one = await client.get(f"/v1/webhooks/{hook['id']}", headers=api.auth("dispatch"))
    for text in (listed.text, one.text):
        assert hook["secret"] not in text
        assert "secret" not in text
    assert one.json() == {k: v for k, v in hook.items() if k != "secret"}


async def test_a_client_chosen_id_makes_retries_safe(api: Api, client: httpx.AsyncClient) -> None:
    assert (await _create(api, client, id="dispatch-main")).status_code == 201
    again = await _create(api, client, id="dispatch-main")
    assert again.status_code == 409
    assert again.json() == {"detail": "webhook 'dispatch-main' exists"}
    assert len(await api.store.list_webhooks()) == 1


@pytest.mark.parametrize(
    "body",
    [
        {**BODY, "event_types": []},
        {**BODY, "event_types": ["teleport"]},
        {**BODY, "url": "ftp://example.com/x"},
        {**BODY, "url": "not a url"},
        {**BODY, "id": "has space"},
        {**BODY, "surprise": 1},
        {"url": BODY["url"]},
    ],
)
async def test_invalid_subscriptions_are_422(
    api: Api, client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    r = await client.post("/v1/webhooks", json=body, headers=api.auth("dispatch"))
    assert r.status_code == 422, r.text
    assert r.json()["detail"]
    assert await api.store.list_webhooks() == []


async def test_disable_enable_delete(api: Api, client: httpx.AsyncClient) -> None:
    hook_id = (await _create(api, client)).json()["id"]
    auth = api.auth("dispatch")
    off = await client.post(f"/v1/webhooks/{hook_id}/disable", headers=auth)
    assert off.json()["enabled"] is False
    assert api.token_ids["dispatch"] in off.json()["disabled_reason"]
    on = await client.post(f"/v1/webhooks/{hook_id}/enable", headers=auth)
    assert on.json()["enabled"] is True
    assert on.json()["consecutive_failures"] == 0
    gone = await client.delete(f"/v1/webhooks/{hook_id}", headers=auth)
    assert gone.status_code == 204
    assert gone.content == b""
    for method, path in (
        ("GET", ""),
        ("DELETE", ""),
        ("POST", "/enable"),
        ("POST", "/disable"),
        ("GET", "/deliveries"),
    ):
        r = await client.request(method, f"/v1/webhooks/{hook_id}{path}", headers=auth)
        assert r.status_code == 404, (method, path)
        assert r.json() == {"detail": f"no webhook '{hook_id}'"}


async def test_delivery_log_newest_first(api: Api, client: httpx.AsyncClient) -> None:
    hook_id = (await _create(api, client)).json()["id"]
    for attempt, ok in ((1, False), (2, True)):
        await api.store.record_delivery(
            hook_id,
            event_id=42,
            attempt=attempt,
            ok=ok,
            status_code=200 if ok else 502,
            error=None if ok else "HTTP 502",
            ts_wall_ns=NOW_NS + attempt,
            next_attempt_wall_ns=None,
        )
    r = await client.get(f"/v1/webhooks/{hook_id}/deliveries", headers=api.auth("dispatch"))
    log = r.json()["items"]
    assert [(d["attempt"], d["ok"], d["status_code"]) for d in log] == [
        (2, True, 200),
        (1, False, 502),
    ]
    assert log[1]["error"] == "HTTP 502"
    only = await client.get(
        f"/v1/webhooks/{hook_id}/deliveries",
        params={"event_id": 7, "limit": 5},
        headers=api.auth("dispatch"),
    )
    assert only.json() == {"items": []}


async def test_every_webhook_write_is_audited(api: Api, client: httpx.AsyncClient) -> None:
    hook_id = (await _create(api, client)).json()["id"]
    await client.post(f"/v1/webhooks/{hook_id}/disable", headers=api.auth("dispatch"))
    await client.delete(f"/v1/webhooks/{hook_id}", headers=api.auth("admin"))
    await client.post("/v1/webhooks", json=BODY, headers=api.auth("read"))  # refused: 403
    await client.post("/v1/webhooks", json=BODY)  # anonymous: counted, not audited
    rows = await api.store.list_audit()
    assert [(a.method, a.path, a.status) for a in rows] == [
        ("POST", "/v1/webhooks", 201),
        ("POST", f"/v1/webhooks/{hook_id}/disable", 200),
        ("DELETE", f"/v1/webhooks/{hook_id}", 204),
        ("POST", "/v1/webhooks", 403),
    ]
    assert [a.actor for a in rows] == [
        api.token_ids["dispatch"],
        api.token_ids["dispatch"],
        api.token_ids["admin"],
        api.token_ids["read"],
    ]
    assert all(a.ts_wall_ns == NOW_NS for a in rows)
    assert rows[0].detail == f"webhook {hook_id} position,dtc.raised"
