"""Remote configuration: desired documents with optimistic concurrency, and devices' reports.

Every change of a desired document is one statement that checks the version and writes the new
one (an UPDATE ... WHERE version = ?, or an INSERT ... ON CONFLICT DO NOTHING for the first),
so two writers holding the same version cannot both win, on either backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fleetlink_cloud.errors import NotFound
from fleetlink_cloud.store.base import (
    DesiredConfigRow,
    DeviceConfig,
    ReportedConfigRow,
    StaleVersion,
)
from fleetlink_cloud.store.conn import Conn, Row, dumps, loads, text

DESIRED_SELECT = (
    "SELECT device_id, version, document, set_by, set_wall_ns, published_version,"
    " published_wall_ns FROM desired_config"
)
REPORTED_SELECT = (
    "SELECT device_id, version, document, pending_restart, refused_version, error,"
    " reported_wall_ns FROM reported_config"
)
_INSERT = (
    "INSERT INTO desired_config (device_id, version, document, set_by, set_wall_ns)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_id)"
)


def _desired_of(r: Row) -> DesiredConfigRow:
    return DesiredConfigRow(r[0], r[1], loads(r[2]), r[3], r[4], r[5], r[6])


def _reported_of(r: Row) -> ReportedConfigRow:
    return ReportedConfigRow(r[0], r[1], loads(r[2]), tuple(loads(r[3])), r[4], r[5], r[6])


async def set_desired(
    conn: Conn,
    device_id: str,
    document: Mapping[str, Any],
    expected: int | None,
    set_by: str,
    set_wall_ns: int,
    first_version: int,
) -> DesiredConfigRow:
    """See Store.set_desired_config."""
    if await conn.fetchone("SELECT 1 FROM devices WHERE id = ?", (device_id,)) is None:
        raise NotFound(f"no device {device_id!r}")
    doc, who = dumps(dict(document)), text(set_by)
    if expected is None:  # replace whatever is there
        row = await conn.fetchone(
            f"{_INSERT} DO UPDATE SET version = desired_config.version + 1,"
            " document = excluded.document, set_by = excluded.set_by,"
            " set_wall_ns = excluded.set_wall_ns RETURNING version",
            (device_id, first_version, doc, who, set_wall_ns),
        )
    elif expected == 0:  # the first document: only if there is none
        row = await conn.fetchone(
            f"{_INSERT} DO NOTHING RETURNING version",
            (device_id, first_version, doc, who, set_wall_ns),
        )
    else:
        row = await conn.fetchone(
            "UPDATE desired_config SET version = version + 1, document = ?, set_by = ?,"
            " set_wall_ns = ? WHERE device_id = ? AND version = ? RETURNING version",
            (doc, who, set_wall_ns, device_id, expected),
        )
    current = await get_desired(conn, device_id)
    if row is None:
        raise StaleVersion(device_id, expected, 0 if current is None else current.version)
    assert current is not None
    return current


async def get_desired(conn: Conn, device_id: str) -> DesiredConfigRow | None:
    row = await conn.fetchone(f"{DESIRED_SELECT} WHERE device_id = ?", (device_id,))
    return None if row is None else _desired_of(row)


async def get_config(conn: Conn, device_id: str) -> DeviceConfig:
    reported = await conn.fetchone(f"{REPORTED_SELECT} WHERE device_id = ?", (device_id,))
    return DeviceConfig(
        device_id,
        await get_desired(conn, device_id),
        None if reported is None else _reported_of(reported),
    )


async def record_reported(
    conn: Conn,
    device_id: str,
    version: int,
    document: Mapping[str, Any],
    pending_restart: Sequence[str],
    refused_version: int | None,
    error: str | None,
    received: int,
) -> ReportedConfigRow:
    """See Store.record_reported_config."""
    row = ReportedConfigRow(
        device_id,
        version,
        dict(document),
        tuple(text(k) for k in pending_restart),
        refused_version,
        None if error is None else text(error),
        received,
    )
    await conn.execute(
        "INSERT INTO reported_config (device_id, version, document, pending_restart,"
        " refused_version, error, reported_wall_ns) VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (device_id) DO UPDATE SET version = excluded.version,"
        " document = excluded.document, pending_restart = excluded.pending_restart,"
        " refused_version = excluded.refused_version, error = excluded.error,"
        " reported_wall_ns = excluded.reported_wall_ns",
        (
            device_id,
            version,
            dumps(row.document),
            dumps(list(row.pending_restart)),
            refused_version,
            row.error,
            received,
        ),
    )
    return row


async def mark_published(conn: Conn, device_id: str, version: int, published: int) -> None:
    await conn.execute(
        "UPDATE desired_config SET published_version = ?, published_wall_ns = ?"
        " WHERE device_id = ? AND (published_version IS NULL OR published_version < ?)",
        (version, published, device_id, version),
    )


async def unpublished(conn: Conn, limit: int) -> list[DesiredConfigRow]:
    rows = await conn.fetchall(
        f"{DESIRED_SELECT} WHERE published_version IS NULL OR published_version < version"
        " ORDER BY device_id LIMIT ?",
        (max(1, limit),),
    )
    return [_desired_of(r) for r in rows]
