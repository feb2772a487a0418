"""The CAN frame as the agent passes it around, independent of python-can."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CanFrame:
    """One CAN frame. ``ts_wall_ns`` is UTC nanoseconds (receive time, or the log's time)."""

    ts_wall_ns: int
    arbitration_id: int
    data: bytes
    is_extended: bool = False
    is_error: bool = False
    is_remote: bool = False
    channel: str | None = None
