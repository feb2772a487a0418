"""Liveness and health: systemd notifications, the watchdog, and the periodic Health record.

The watchdog is pinged only while every registered loop has beaten recently, so a wedged capture
or uplink loop gets the agent restarted by systemd instead of silently running on.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Mapping

from fleetlink_protocols.limits import MAX_HEALTH_COUNTERS

log = logging.getLogger(__name__)

CounterSource = Callable[[], Mapping[str, int]]


class SystemdNotifier:
    """sd_notify(3) over the datagram socket systemd passes in NOTIFY_SOCKET; no-op without it."""

    def __init__(self, notify_socket: str | None) -> None:
        self._addr: str | None = None
        self._sock: socket.socket | None = None
        if notify_socket:
            # A leading '@' names a socket in the abstract namespace.
            self._addr = "\0" + notify_socket[1:] if notify_socket[0] == "@" else notify_socket
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, state: str) -> None:
        if self._sock is None or self._addr is None:
            return
        try:
            self._sock.sendto(state.encode(), self._addr)
        except OSError as exc:  # systemd gone (shutdown): nothing useful to do but say so
            log.warning("sd_notify failed: %s", exc)

    def ready(self, status: str) -> None:
        self.notify(f"READY=1\nSTATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


class Heartbeats:
    """Loops call ``beat(name, now)``; ``stale(now)`` names those silent for too long."""

    def __init__(self, max_silence_s: float) -> None:
        self._max_silence_ns = int(max_silence_s * 1e9)
        self._last: dict[str, int] = {}

    def register(self, name: str, now_mono_ns: int) -> None:
        self._last[name] = now_mono_ns

    def beat(self, name: str, now_mono_ns: int) -> None:
        self._last[name] = now_mono_ns

    def stale(self, now_mono_ns: int) -> list[str]:
        return sorted(n for n, t in self._last.items() if now_mono_ns - t > self._max_silence_ns)


OMITTED_COUNTER = "health.counters_omitted"


def collect_counters(
    sources: Mapping[str, CounterSource], limit: int = MAX_HEALTH_COUNTERS
) -> dict[str, int]:
    """Flatten every component's counters into ``component.counter`` names for a Health record.

    A record carries at most ``limit`` counters (protocol limit); past it, zero counters go
    first (absent reads as zero), then the last names in order, and ``health.counters_omitted``
    says how many went, so the record is never refused for its size.
    """
    merged: dict[str, int] = {}
    for prefix, read in sources.items():
        for name, value in read().items():
            merged[f"{prefix}.{name}"] = int(value)
    if len(merged) <= limit:
        return merged
    kept = {k: v for k, v in merged.items() if v != 0}
    if len(kept) >= limit:
        kept = dict(sorted(kept.items())[: limit - 1])
    kept[OMITTED_COUNTER] = len(merged) - len(kept)
    return kept


def watchdog_interval_s(watchdog_usec: str | None) -> float | None:
    """Ping at half the interval systemd asked for (WATCHDOG_USEC), as sd_watchdog_enabled says."""
    if not watchdog_usec:
        return None
    try:
        usec = int(watchdog_usec)
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None
