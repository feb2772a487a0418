"""Devices, dead letters, commands, tokens, audit and webhooks: small rows, plain SQL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fleetlink_cloud.bus import StreamEvent
from fleetlink_cloud.errors import NotFound
from fleetlink_cloud.store.base import (
    AlreadyExists,
    AuditRow,
    CommandRow,
    CommandStatus,
    DeadLetter,
    Delivery,
    Device,
    Scope,
    TokenRow,
    Webhook,
)
from fleetlink_cloud.store.conn import Conn, Row, dumps, loads, text
from fleetlink_cloud.store.read import DEVICE_SELECT, device_of
from fleetlink_cloud.store.stream import insert_stream_events

COMMAND_SELECT = (
    "SELECT command_id, device_id, name, args, status, created_wall_ns, expires_wall_ns,"
    " sent_wall_ns, acked_wall_ns, detail FROM commands"
)
TOKEN_SELECT = (
    "SELECT token_id, name, scope, token_hash, created_wall_ns, revoked_wall_ns FROM tokens"
)
WEBHOOK_SELECT = (
    "SELECT id, url, secret, event_types, created_wall_ns, enabled, consecutive_failures,"
    " last_event_id, disabled_reason FROM webhooks"
)
DELIVERY_SELECT = (
    "SELECT id, webhook_id, event_id, attempt, ok, status_code, error, ts_wall_ns,"
    " next_attempt_wall_ns FROM deliveries"
)
# A command's status only moves forward: a late "accepted" never hides a "done", and the first
# final status is kept.
_RANK: dict[str, int] = {"queued": 0, "sent": 1, "accepted": 2, "done": 3, "failed": 3}
_RANK["rejected"] = 3
_FINAL = frozenset({"done", "failed", "rejected"})


def _command_of(r: Row) -> CommandRow:
    return CommandRow(r[0], r[1], r[2], loads(r[3]), *r[4:])


def _token_of(r: Row) -> TokenRow:
    return TokenRow(*r)


def _webhook_of(r: Row) -> Webhook:
    return Webhook(r[0], r[1], r[2], tuple(loads(r[3])), r[4], bool(r[5]), *r[6:])


def _delivery_of(r: Row) -> Delivery:
    return Delivery(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6], r[7], r[8])


# -- devices -----------------------------------------------------------------------------------


async def add_device(
    conn: Conn, device_id: str, name: str, password_hash: str, created_wall_ns: int
) -> Device:
    if await get_device(conn, device_id) is not None:
        raise AlreadyExists(f"device {device_id!r} exists")
    await conn.execute(
        "INSERT INTO devices (id, name, created_wall_ns, disabled, password_hash)"
        " VALUES (?, ?, ?, FALSE, ?)",
        (device_id, name, created_wall_ns, password_hash),
    )
    return Device(device_id, name, created_wall_ns, False, password_hash)


async def get_device(conn: Conn, device_id: str) -> Device | None:
    row = await conn.fetchone(f"{DEVICE_SELECT} WHERE id = ?", (device_id,))
    return None if row is None else device_of(row)


async def list_devices(conn: Conn) -> list[Device]:
    return [device_of(r) for r in await conn.fetchall(f"{DEVICE_SELECT} ORDER BY id")]


async def update_device(conn: Conn, device_id: str, column: str, value: Any) -> Device:
    row = await conn.fetchone(
        f"UPDATE devices SET {column} = ? WHERE id = ? RETURNING id, name, created_wall_ns,"
        " disabled, password_hash",
        (value, device_id),
    )
    if row is None:
        raise NotFound(f"no device {device_id!r}")
    return device_of(row)


# -- dead letters ------------------------------------------------------------------------------


async def add_dead_letter(
    conn: Conn, topic: str, reason: str, payload: bytes, received: int, device_id: str | None
) -> int:
    row = await conn.fetchone(
        "INSERT INTO dead_letters (topic, reason, payload, received_wall_ns, device_id)"
        " VALUES (?, ?, ?, ?, ?) RETURNING id",
        (text(topic), text(reason), payload, received, device_id),
    )
    assert row is not None
    return int(row[0])


async def list_dead_letters(conn: Conn, limit: int, after_id: int) -> list[DeadLetter]:
    rows = await conn.fetchall(
        "SELECT id, topic, reason, payload, received_wall_ns, device_id FROM dead_letters"
        " WHERE id > ? ORDER BY id LIMIT ?",
        (after_id, max(1, limit)),
    )
    return [DeadLetter(r[0], r[1], r[2], bytes(r[3]), r[4], r[5]) for r in rows]


# -- commands ----------------------------------------------------------------------------------


async def create_command(
    conn: Conn,
    device_id: str,
    command_id: str,
    name: str,
    args: Mapping[str, Any],
    created: int,
    expires: int | None,
) -> CommandRow:
    if await get_device(conn, device_id) is None:
        raise NotFound(f"no device {device_id!r}")
    await conn.execute(
        "INSERT INTO commands (command_id, device_id, name, args, status, created_wall_ns,"
        " expires_wall_ns, detail) VALUES (?, ?, ?, ?, 'queued', ?, ?, '')"
        " ON CONFLICT (command_id) DO NOTHING",
        (command_id, device_id, name, dumps(dict(args)), created, expires),
    )
    row = await get_command(conn, command_id)
    assert row is not None
    if row.device_id != device_id:
        raise AlreadyExists(f"command id {command_id!r} is used by another device")
    return row


async def get_command(conn: Conn, command_id: str) -> CommandRow | None:
    row = await conn.fetchone(f"{COMMAND_SELECT} WHERE command_id = ?", (command_id,))
    return None if row is None else _command_of(row)


async def list_commands(
    conn: Conn, device_id: str, status: CommandStatus | None, limit: int, oldest_first: bool
) -> list[CommandRow]:
    cond, args = ("", [device_id]) if status is None else (" AND status = ?", [device_id, status])
    order = "ASC" if oldest_first else "DESC"
    rows = await conn.fetchall(
        f"{COMMAND_SELECT} WHERE device_id = ?{cond}"
        f" ORDER BY created_wall_ns {order}, command_id {order} LIMIT ?",
        [*args, max(1, limit)],
    )
    return [_command_of(r) for r in rows]


async def mark_command_sent(conn: Conn, command_id: str, sent: int) -> CommandRow:
    await conn.execute(
        "UPDATE commands SET status = CASE WHEN status = 'queued' THEN 'sent' ELSE status END,"
        " sent_wall_ns = COALESCE(sent_wall_ns, ?) WHERE command_id = ?",
        (sent, command_id),
    )
    row = await get_command(conn, command_id)
    if row is None:
        raise NotFound(f"no command {command_id!r}")
    return row


async def record_command_ack(
    conn: Conn, device_id: str, command_id: str, status: CommandStatus, detail: str, received: int
) -> CommandRow | None:
    """See Store.record_command_ack. An ack that changes nothing (redelivered, late, or after a
    final status) appends no event: a retried ingest group must not fire it twice."""
    current = await get_command(conn, command_id)
    if current is None or current.device_id != device_id:
        return None
    detail = text(detail)
    if (
        current.status in _FINAL
        or _RANK[status] < _RANK[current.status]
        or (status, detail) == (current.status, current.detail)
    ):
        return current
    await conn.execute(
        "UPDATE commands SET status = ?, detail = ?, acked_wall_ns = ? WHERE command_id = ?",
        (status, detail, received, command_id),
    )
    data = {"command_id": command_id, "name": current.name, "status": status, "detail": detail}
    await insert_stream_events(conn, [StreamEvent(0, "command.acked", device_id, received, data)])
    return await get_command(conn, command_id)


# -- tokens, audit -----------------------------------------------------------------------------


async def create_token(
    conn: Conn, token_id: str, name: str, scope: Scope, token_hash: str, created: int
) -> TokenRow:
    taken = await conn.fetchone(
        "SELECT 1 FROM tokens WHERE token_id = ? OR token_hash = ?", (token_id, token_hash)
    )
    if taken is not None:
        raise AlreadyExists(f"token {token_id!r} (or its hash) exists")
    await conn.execute(
        "INSERT INTO tokens (token_id, name, scope, token_hash, created_wall_ns)"
        " VALUES (?, ?, ?, ?, ?)",
        (token_id, name, scope, token_hash, created),
    )
    return TokenRow(token_id, name, scope, token_hash, created, None)


async def token_by(conn: Conn, column: str, value: str) -> TokenRow | None:
    row = await conn.fetchone(f"{TOKEN_SELECT} WHERE {column} = ?", (value,))
    return None if row is None else _token_of(row)


async def revoke_token(conn: Conn, token_id: str, revoked: int) -> TokenRow:
    await conn.execute(
        "UPDATE tokens SET revoked_wall_ns = COALESCE(revoked_wall_ns, ?) WHERE token_id = ?",
        (revoked, token_id),
    )
    row = await token_by(conn, "token_id", token_id)
    if row is None:
        raise NotFound(f"no token {token_id!r}")
    return row


async def list_tokens(conn: Conn) -> list[TokenRow]:
    return [
        _token_of(r)
        for r in await conn.fetchall(f"{TOKEN_SELECT} ORDER BY created_wall_ns, token_id")
    ]


async def add_audit(
    conn: Conn, ts: int, actor: str, method: str, path: str, status: int, detail: str
) -> int:
    row = await conn.fetchone(
        "INSERT INTO audit (ts_wall_ns, actor, method, path, status, detail)"
        " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        (ts, actor, method, path, status, detail),
    )
    assert row is not None
    return int(row[0])


async def list_audit(conn: Conn, limit: int, after_id: int) -> list[AuditRow]:
    rows = await conn.fetchall(
        "SELECT id, ts_wall_ns, actor, method, path, status, detail FROM audit WHERE id > ?"
        " ORDER BY id LIMIT ?",
        (after_id, max(1, limit)),
    )
    return [AuditRow(*r) for r in rows]


# -- webhooks ----------------------------------------------------------------------------------


async def create_webhook(
    conn: Conn,
    webhook_id: str,
    url: str,
    secret: str,
    event_types: Sequence[str],
    created: int,
    cursor: int,
) -> Webhook:
    if await get_webhook(conn, webhook_id) is not None:
        raise AlreadyExists(f"webhook {webhook_id!r} exists")
    await conn.execute(
        "INSERT INTO webhooks (id, url, secret, event_types, created_wall_ns, enabled,"
        " consecutive_failures, last_event_id) VALUES (?, ?, ?, ?, ?, TRUE, 0, ?)",
        (webhook_id, url, secret, dumps(list(event_types)), created, cursor),
    )
    return Webhook(webhook_id, url, secret, tuple(event_types), created, True, 0, cursor)


async def get_webhook(conn: Conn, webhook_id: str) -> Webhook | None:
    row = await conn.fetchone(f"{WEBHOOK_SELECT} WHERE id = ?", (webhook_id,))
    return None if row is None else _webhook_of(row)


async def must_get_webhook(conn: Conn, webhook_id: str) -> Webhook:
    hook = await get_webhook(conn, webhook_id)
    if hook is None:
        raise NotFound(f"no webhook {webhook_id!r}")
    return hook


async def list_webhooks(conn: Conn) -> list[Webhook]:
    return [_webhook_of(r) for r in await conn.fetchall(f"{WEBHOOK_SELECT} ORDER BY id")]


async def delete_webhook(conn: Conn, webhook_id: str) -> None:
    await must_get_webhook(conn, webhook_id)
    await conn.execute("DELETE FROM deliveries WHERE webhook_id = ?", (webhook_id,))
    await conn.execute("DELETE FROM webhooks WHERE id = ?", (webhook_id,))


async def set_webhook_enabled(
    conn: Conn, webhook_id: str, enabled: bool, reason: str | None
) -> Webhook:
    await conn.execute(
        "UPDATE webhooks SET enabled = ?, disabled_reason = ?, consecutive_failures ="
        " CASE WHEN ? THEN 0 ELSE consecutive_failures END WHERE id = ?",
        (enabled, None if enabled else reason, enabled, webhook_id),
    )
    return await must_get_webhook(conn, webhook_id)


async def set_webhook_cursor(conn: Conn, webhook_id: str, event_id: int) -> None:
    await must_get_webhook(conn, webhook_id)
    await conn.execute(
        f"UPDATE webhooks SET last_event_id = {conn.dialect.greatest}(last_event_id, ?)"
        " WHERE id = ?",
        (event_id, webhook_id),
    )


async def record_delivery(
    conn: Conn, webhook_id: str, delivery: Delivery, disable_after: int | None
) -> Webhook:
    """Log the attempt and count failures in one atomic UPDATE (concurrent senders are safe)."""
    row = await conn.fetchone(
        "UPDATE webhooks SET consecutive_failures = CASE WHEN ? THEN 0"
        " ELSE consecutive_failures + 1 END WHERE id = ? RETURNING consecutive_failures",
        (delivery.ok, webhook_id),
    )
    if row is None:
        raise NotFound(f"no webhook {webhook_id!r}")
    d = delivery
    await conn.execute(
        "INSERT INTO deliveries (webhook_id, event_id, attempt, ok, status_code, error,"
        " ts_wall_ns, next_attempt_wall_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            webhook_id,
            d.event_id,
            d.attempt,
            d.ok,
            d.status_code,
            d.error,
            d.ts_wall_ns,
            d.next_attempt_wall_ns,
        ),
    )
    if disable_after is not None and row[0] >= disable_after:
        await conn.execute(
            "UPDATE webhooks SET enabled = FALSE, disabled_reason = ? WHERE id = ? AND enabled",
            (f"{row[0]} consecutive failed deliveries", webhook_id),
        )
    return await must_get_webhook(conn, webhook_id)


async def deliveries(
    conn: Conn, webhook_id: str, limit: int, event_id: int | None
) -> list[Delivery]:
    cond, args = (
        ("", [webhook_id]) if event_id is None else (" AND event_id = ?", [webhook_id, event_id])
    )
    rows = await conn.fetchall(
        f"{DELIVERY_SELECT} WHERE webhook_id = ?{cond} ORDER BY id DESC LIMIT ?",
        [*args, max(1, limit)],
    )
    return [_delivery_of(r) for r in rows]
