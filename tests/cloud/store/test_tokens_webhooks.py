"""API tokens, the audit log, webhooks and their delivery log."""

from __future__ import annotations

import pytest

from fleetlink_cloud.errors import NotFound
from fleetlink_cloud.store import Delivery, Store, TokenRow, Webhook
from fleetlink_cloud.store.base import AlreadyExists, AuditRow
from tests.cloud.store.records import T0, S

# -- tokens ------------------------------------------------------------------------------------


async def test_token_is_found_by_hash_and_revoked_once(store: Store) -> None:
    row = await store.create_token(
        "tok-1", name="dispatch backend", scope="dispatch", token_hash="sha256:aa",
        created_wall_ns=T0,
    )  # fmt: skip
    assert row == TokenRow("tok-1", "dispatch backend", "dispatch", "sha256:aa", T0, None)
    assert row.active
    assert await store.token_by_hash("sha256:aa") == row
    assert await store.token_by_hash("sha256:bb") is None
    revoked = await store.revoke_token("tok-1", revoked_wall_ns=T0 + S)
    assert revoked == TokenRow("tok-1", "dispatch backend", "dispatch", "sha256:aa", T0, T0 + S)
    assert not revoked.active
    assert await store.revoke_token("tok-1", revoked_wall_ns=T0 + 2 * S) == revoked
    assert await store.token_by_hash("sha256:aa") == revoked  # revoked ones are returned too
    with pytest.raises(NotFound):
        await store.revoke_token("tok-2", revoked_wall_ns=T0)


async def test_token_id_and_hash_are_unique(store: Store) -> None:
    await store.create_token("tok-1", name="a", scope="read", token_hash="h1", created_wall_ns=T0)
    with pytest.raises(AlreadyExists):
        await store.create_token(
            "tok-1", name="b", scope="admin", token_hash="h2", created_wall_ns=T0
        )
    with pytest.raises(AlreadyExists):
        await store.create_token(
            "tok-2", name="b", scope="admin", token_hash="h1", created_wall_ns=T0
        )
    assert await store.list_tokens() == [TokenRow("tok-1", "a", "read", "h1", T0, None)]


async def test_list_tokens_by_creation(store: Store) -> None:
    for token_id, created in (("tok-b", T0 + S), ("tok-c", T0), ("tok-a", T0 + S)):
        await store.create_token(
            token_id,
            name=token_id,
            scope="read",
            token_hash=f"h-{token_id}",
            created_wall_ns=created,
        )
    assert [t.token_id for t in await store.list_tokens()] == ["tok-c", "tok-a", "tok-b"]


# -- audit -------------------------------------------------------------------------------------


async def test_audit_log_is_append_only_in_id_order(store: Store) -> None:
    first = await store.add_audit(
        ts_wall_ns=T0, actor="tok-1", method="POST", path="/v1/devices", status=201
    )
    second = await store.add_audit(
        ts_wall_ns=T0 + S, actor="cli", method="DELETE", path="/v1/webhooks/w1", status=404,
        detail="no webhook 'w1'",
    )  # fmt: skip
    assert second > first
    assert await store.list_audit() == [
        AuditRow(first, T0, "tok-1", "POST", "/v1/devices", 201, ""),
        AuditRow(second, T0 + S, "cli", "DELETE", "/v1/webhooks/w1", 404, "no webhook 'w1'"),
    ]
    assert [a.id for a in await store.list_audit(after_id=first)] == [second]
    assert [a.id for a in await store.list_audit(limit=1)] == [first]


# -- webhooks ----------------------------------------------------------------------------------


async def _hook(store: Store, webhook_id: str = "w1", cursor: int = 0) -> Webhook:
    return await store.create_webhook(
        webhook_id, url=f"https://backend.example/{webhook_id}", secret="s3cret",
        event_types=["position", "vehicle.offline"], created_wall_ns=T0, cursor=cursor,
    )  # fmt: skip


async def test_create_get_and_list_webhooks(store: Store) -> None:
    hook = await _hook(store, "w2", cursor=7)
    expected = Webhook(
        "w2", "https://backend.example/w2", "s3cret", ("position", "vehicle.offline"), T0,
        True, 0, 7, None,
    )  # fmt: skip
    assert hook == expected
    assert await store.get_webhook("w2") == expected
    await _hook(store, "w1")
    assert [w.id for w in await store.list_webhooks()] == ["w1", "w2"]
    assert await store.get_webhook("w3") is None
    with pytest.raises(AlreadyExists):
        await _hook(store, "w1")


async def test_enable_disable_with_reason(store: Store) -> None:
    await _hook(store)
    await store.record_delivery(
        "w1", event_id=1, attempt=1, ok=False, status_code=500, error="HTTP 500",
        ts_wall_ns=T0, next_attempt_wall_ns=T0 + S,
    )  # fmt: skip
    off = await store.set_webhook_enabled("w1", False, reason="paused by admin")
    assert (off.enabled, off.disabled_reason, off.consecutive_failures) == (
        False, "paused by admin", 1,
    )  # fmt: skip
    on = await store.set_webhook_enabled("w1", True, reason="ignored")
    assert (on.enabled, on.disabled_reason, on.consecutive_failures) == (True, None, 0)
    assert await store.get_webhook("w1") == on
    with pytest.raises(NotFound):
        await store.set_webhook_enabled("nope", True)


async def test_cursor_never_moves_backwards(store: Store) -> None:
    await _hook(store, cursor=3)
    await store.set_webhook_cursor("w1", 10)
    await store.set_webhook_cursor("w1", 4)
    hook = await store.get_webhook("w1")
    assert hook is not None
    assert hook.cursor == 10
    with pytest.raises(NotFound):
        await store.set_webhook_cursor("nope", 1)


async def test_failures_count_up_disable_and_reset(store: Store) -> None:
    await _hook(store)

    async def attempt(n: int, ok: bool, limit: int | None = 3) -> Webhook:
        return await store.record_delivery(
            "w1", event_id=5, attempt=n, ok=ok, status_code=200 if ok else None,
            error=None if ok else "connect timeout", ts_wall_ns=T0 + n * S,
            next_attempt_wall_ns=None if ok else T0 + (n + 1) * S, disable_after=limit,
        )  # fmt: skip

    assert (await attempt(1, False)).consecutive_failures == 1
    reset = await attempt(2, True)
    assert (reset.consecutive_failures, reset.enabled) == (0, True)
    assert (await attempt(3, False)).consecutive_failures == 1
    assert (await attempt(4, False)).enabled is True
    disabled = await attempt(5, False)
    assert (disabled.consecutive_failures, disabled.enabled) == (3, False)
    assert disabled.disabled_reason == "3 consecutive failed deliveries"
    assert (await attempt(6, False, limit=None)).consecutive_failures == 4
    log = await store.deliveries("w1")
    assert [d.attempt for d in log] == [6, 5, 4, 3, 2, 1]
    assert log[4] == Delivery(log[4].id, "w1", 5, 2, True, 200, None, T0 + 2 * S, None)
    assert log[5] == Delivery(
        log[5].id, "w1", 5, 1, False, None, "connect timeout", T0 + S, T0 + 2 * S
    )
    assert [d.attempt for d in await store.deliveries("w1", limit=2)] == [6, 5]
    with pytest.raises(NotFound):
        await store.record_delivery(
            "nope", event_id=1, attempt=1, ok=True, status_code=200, error=None,
            ts_wall_ns=T0, next_attempt_wall_ns=None,
        )  # fmt: skip
    assert (await store.stats()).counts["deliveries"] == 6


async def test_deliveries_of_one_event(store: Store) -> None:
    await _hook(store)
    for event_id in (1, 2, 1):
        await store.record_delivery(
            "w1", event_id=event_id, attempt=1, ok=True, status_code=204, error=None,
            ts_wall_ns=T0 + event_id, next_attempt_wall_ns=None,
        )  # fmt: skip
    assert [d.event_id for d in await store.deliveries("w1", event_id=1)] == [1, 1]
    assert [d.event_id for d in await store.deliveries("w1", event_id=2)] == [2]
    assert await store.deliveries("w1", event_id=3) == []
    assert await store.deliveries("other") == []


async def test_delete_webhook_and_its_log(store: Store) -> None:
    await _hook(store, "w1")
    await _hook(store, "w2")
    for hook in ("w1", "w2"):
        await store.record_delivery(
            hook, event_id=1, attempt=1, ok=True, status_code=200, error=None,
            ts_wall_ns=T0, next_attempt_wall_ns=None,
        )  # fmt: skip
    await store.delete_webhook("w1")
    assert await store.get_webhook("w1") is None
    assert await store.deliveries("w1") == []
    assert [d.webhook_id for d in await store.deliveries("w2")] == ["w2"]
    assert (await store.stats()).counts["webhooks"] == 1
    with pytest.raises(NotFound):
        await store.delete_webhook("w1")
