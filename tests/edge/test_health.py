from __future__ import annotations

import socket
from pathlib import Path

from fleetlink_edge.health import (
    Heartbeats,
    SystemdNotifier,
    collect_counters,
    watchdog_interval_s,
)


def test_notifier_speaks_sd_notify_over_a_datagram_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(2)
    notifier = SystemdNotifier(str(path))
    try:
        notifier.ready("streaming")
        notifier.watchdog()
        notifier.stopping()
        got = [server.recv(256) for _ in range(3)]
    finally:
        notifier.close()
        server.close()
    assert got == [b"READY=1\nSTATUS=streaming", b"WATCHDOG=1", b"STOPPING=1"]


def test_notifier_without_systemd_is_silent() -> None:
    notifier = SystemdNotifier(None)
    assert not notifier.enabled
    notifier.ready("x")  # must not raise


def test_heartbeats_name_the_stalled_loop() -> None:
    hb = Heartbeats(max_silence_s=5)
    hb.register("capture", 0)
    hb.register("uplink", 0)
    hb.beat("capture", 6_000_000_000)
    assert hb.stale(6_000_000_000) == ["uplink"]


def test_counters_are_prefixed_per_component() -> None:
    merged = collect_counters({"can": lambda: {"frames": 3}, "outbox": lambda: {"evicted": 1}})
    assert merged == {"can.frames": 3, "outbox.evicted": 1}


def test_watchdog_interval_is_half_of_what_systemd_asked() -> None:
    assert watchdog_interval_s("30000000") == 15.0
    assert watchdog_interval_s(None) is None
    assert watchdog_interval_s("garbage") is None
