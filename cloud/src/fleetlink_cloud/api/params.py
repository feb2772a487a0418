"""Query and path parameters shared by routers: device ids, time windows, keyset pages.

Times in queries are either integers, nanoseconds since the Unix epoch (the ``*_wall_ns``
fields of every response, so a client can feed one back), or RFC 3339 date-times
(``2024-06-01T12:00:00Z``; without an offset they are taken as UTC).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Final

from fastapi import Depends, HTTPException, Path, Query

from fleetlink_cloud.api.deps import Ctx
from fleetlink_cloud.errors import NotFound
from fleetlink_protocols.limits import MAX_PATH_LEN
from fleetlink_protocols.topics import DEVICE_ID_PATTERN

MAX_WALL_NS: Final = 2**63 - 1  # the stores keep times as signed 64-bit integers
MAX_ID: Final = 2**63 - 1
DEFAULT_LIMIT: Final = 100
MAX_CURSOR_LEN: Final = 512
_INT_RE: Final = re.compile(r"[0-9]{1,19}")
SIGNAL_PATH_PATTERN: Final = r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+$"

DeviceId = Annotated[
    str,
    Path(
        description="The device (vehicle) id: 1-64 of A-Z a-z 0-9 _ -, starting alphanumeric.",
        pattern=DEVICE_ID_PATTERN.pattern,
        max_length=64,
    ),
]
SignalPath = Annotated[
    str,
    Path(
        description="A COVESA VSS signal path, e.g. `Vehicle.Speed`.",
        pattern=SIGNAL_PATH_PATTERN,
        max_length=MAX_PATH_LEN,
    ),
]
TIME_HELP: Final = (
    "Nanoseconds since the Unix epoch, or an RFC 3339 date-time (UTC when no offset is given)."
)


def parse_time(name: str, value: str | None) -> int | None:
    """``value`` as ns since the epoch; raise HTTPException 422 naming ``name`` if unreadable."""
    if value is None:
        return None
    text = value.strip()
    if _INT_RE.fullmatch(text):
        ns = int(text)
    else:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise HTTPException(
                422, f"{name}: not an integer ns time nor an RFC 3339 date-time"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        delta = when - datetime(1970, 1, 1, tzinfo=UTC)
        ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    if not 0 <= ns <= MAX_WALL_NS:
        raise HTTPException(422, f"{name}: out of range (1970 to 2262)")
    return ns


@dataclass(frozen=True, slots=True)
class Window:
    """A time window and a keyset page of it: ``from_wall_ns <= ts < to_wall_ns``."""

    from_wall_ns: int | None
    to_wall_ns: int | None
    limit: int
    cursor: str | None


def window(
    ctx: Ctx,
    from_: Annotated[str | None, Query(alias="from", description=TIME_HELP, max_length=64)] = None,
    to: Annotated[str | None, Query(description=TIME_HELP + " Exclusive.", max_length=64)] = None,
    limit: Annotated[
        int, Query(ge=1, description="Page size; capped at the server's maximum.")
    ] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None,
        Query(description="`next_cursor` of the previous page.", max_length=MAX_CURSOR_LEN),
    ] = None,
) -> Window:
    start = parse_time("from", from_)
    end = parse_time("to", to)
    if start is not None and end is not None and end < start:
        raise HTTPException(422, "to: must not be before from")
    return Window(start, end, clamp(ctx, limit), cursor)


def clamp(ctx: Ctx, limit: int) -> int:
    """``limit`` capped at the configured page maximum."""
    return min(limit, ctx.settings.page_size_max)


TimeWindow = Annotated[Window, Depends(window)]
Limit = Annotated[int, Query(ge=1, description="At most this many; capped at the server maximum.")]
AfterId = Annotated[
    int, Query(ge=0, le=MAX_ID, description="Return rows with an id above this one.")
]


async def known_device(device_id: DeviceId, ctx: Ctx) -> str:
    """The path's device id, if the device is registered; raise NotFound otherwise.

    Routes take the caller's ``Principal`` BEFORE this parameter, so a caller without a valid
    token gets 401 and cannot probe which devices exist.
    """
    if await ctx.store.get_device(device_id) is None:
        raise NotFound(f"no device {device_id!r}")
    return device_id


KnownDevice = Annotated[str, Depends(known_device)]
