from __future__ import annotations

import socket
from pathlib import Path

from fleetlink_edge.health import (
    OMITTED_COUNTER,
    Heartbeats,
    SystemdNotifier,
    collect_counters,
    watchdog_interval_s,
)
from fleetlink_protocols.codec import encode_record
from fleetlink_protocols.limits import MAX_HEALTH_COUNTERS
from fleetlink_protocols.records import Health


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


def test_too_many_counters_still_make_an_encodable_health_record() -> None:
    many = {f"c{i:03d}": (i % 3) for i in range(200)}  # 133 non-zero, 67 zero
    merged = collect_counters({"x": lambda: many})
    assert len(merged) == MAX_HEALTH_COUNTERS
    assert merged[OMITTED_COUNTER] == 200 - (MAX_HEALTH_COUNTERS - 1)
    assert all(v != 0 for k, v in merged.items())  # zeros went first
    encode_record(Health(ts_wall_ns=1, counters=merged))  # the protocol limit holds
    few_nonzero = {f"c{i:03d}": int(i < 5) for i in range(200)}
    merged = collect_counters({"x": lambda: few_nonzero})
    assert merged == {**{f"x.c{i:03d}": 1 for i in range(5)}, OMITTED_COUNTER: 195}


def test_watchdog_interval_is_half_of_what_systemd_asked() -> None:
    assert watchdog_interval_s("30000000") == 15.0
    assert watchdog_interval_s(None) is None
    assert watchdog_interval_s("garbage") is None
