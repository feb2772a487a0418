"""CAN checks on SocketCAN as the kernel describes it: a sysfs tree and the JSON of
``ip -j -details -statistics link show`` in tmp_path (no SocketCAN on the test machines)."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from fleetlink_edge.config import CanSettings
from fleetlink_edge.doctor import can as can_check
from fleetlink_edge.doctor import can_link
from fleetlink_edge.doctor.findings import Status
from tests.edge.doctor.harness import by_check

IFNAME = "fltest0"  # no real interface has this name

# The shape iproute2 prints for `ip -j -details -statistics link show dev can0` on an MCP2515
# HAT, following its JSON printer (ip/iplink_can.c, ip/ipaddress.c); built, not captured.
IP_LINK: dict[str, Any] = {
    "ifindex": 3,
    "ifname": IFNAME,
    "flags": ["NOARP", "UP", "LOWER_UP", "ECHO"],
    "mtu": 16,
    "operstate": "UP",
    "link_type": "can",
    "linkinfo": {
        "info_kind": "can",
        "info_data": {
            "ctrlmode": [],
            "state": "ERROR-ACTIVE",
            "berr_counter": {"tx": 0, "rx": 0},
            "restart_ms": 100,
            "bittiming": {
                "bitrate": 500000,
                "sample_point": 0.875,
                "tq": 125,
                "prop_seg": 6,
                "phase_seg1": 7,
                "phase_seg2": 2,
                "sjw": 1,
            },
            "bittiming_const": {"name": "mcp251x", "tseg1": {"min": 3, "max": 16}},
            "clock": 8000000,
        },
        "info_xstats": {
            "restarts": 0,
            "bus_error": 0,
            "arbitration_lost": 0,
            "error_warning": 0,
            "error_passive": 0,
            "bus_off": 0,
        },
    },
    "stats64": {
        "rx": {"bytes": 8000, "packets": 1000, "errors": 0, "dropped": 0, "over_errors": 0},
        "tx": {"bytes": 0, "packets": 0, "errors": 0, "dropped": 0},
    },
}


def sysfs(root: Path, *, flags: int = 0x40C1, kind: int = 280, **stats: int) -> Path:
    base = root / IFNAME
    (base / "statistics").mkdir(parents=True)
    (base / "type").write_text(f"{kind}\n")
    (base / "flags").write_text(f"{flags:#x}\n")
    (base / "operstate").write_text("up\n")
    for name in ("rx_packets", "rx_dropped", "rx_errors", "rx_over_errors", "rx_fifo_errors"):
        (base / "statistics" / name).write_text(f"{stats.get(name, 0)}\n")
    return root


def fake_ip(tmp: Path, links: list[dict[str, Any]]) -> tuple[str, ...]:
    """An `ip` that prints ``links`` as JSON, whatever it is asked."""
    out = tmp / "ip.json"
    out.write_text(json.dumps(links))
    script = tmp / "ip"
    script.write_text(f"#!/bin/sh\ncat {out}\n")
    script.chmod(0o755)
    return (str(script),)


def link_with(**data: Any) -> dict[str, Any]:
    link = copy.deepcopy(IP_LINK)
    link["linkinfo"]["info_data"].update(data)
    return link


@pytest.fixture
def net(tmp_path: Path) -> Path:
    return tmp_path / "net"


def socketcan(bitrate: int = 500_000) -> CanSettings:
    return CanSettings.model_validate(
        {"enabled": True, "channel": IFNAME, "bitrate": bitrate, "obd": {"enabled": True}}
    )


async def test_socketcan_healthy_link(tmp_path: Path, net: Path) -> None:
    ip = fake_ip(tmp_path, [IP_LINK])
    found = by_check(await can_check.check(socketcan(), 0.3, sys_root=sysfs(net), ip_command=ip))
    assert found["can.interface"].status is Status.OK
    assert "ERROR-ACTIVE" in found["can.interface"].summary
    assert found["can.bitrate"].status is Status.OK
    assert found["can.errors"].status is Status.OK
    # No such kernel interface really exists here, so python-can cannot open it.
    assert found["can.traffic"].status is Status.FAIL
    assert found["can.obd"].status is Status.SKIP


async def test_socketcan_bitrate_mismatch(tmp_path: Path, net: Path) -> None:
    ip = fake_ip(tmp_path, [link_with(bittiming={"bitrate": 250000})])
    found = by_check(await can_check.check(socketcan(), 0.3, sys_root=sysfs(net), ip_command=ip))
    bitrate = found["can.bitrate"]
    assert bitrate.status is Status.FAIL
    assert bitrate.detail == {"interface_bitrate": 250000, "configured_bitrate": 500000}
    assert "bitrate" in (bitrate.fix or "")


async def test_socketcan_bus_off_and_error_history(tmp_path: Path, net: Path) -> None:
    link = link_with(state="BUS-OFF", berr_counter={"tx": 255, "rx": 0})
    link["linkinfo"]["info_xstats"].update(bus_off=3, error_passive=5)
    ip = fake_ip(tmp_path, [link])
    root = sysfs(net, rx_dropped=7, rx_over_errors=2)
    found = by_check(await can_check.check(socketcan(), 0.3, sys_root=root, ip_command=ip))
    assert found["can.interface"].status is Status.FAIL
    assert "bus-off" in found["can.interface"].summary
    assert "termination" in (found["can.interface"].fix or "")
    errors = found["can.errors"]
    assert errors.status is Status.WARN
    assert "bus-off 3x" in errors.summary
    assert "dropped 9 frames" in errors.summary


async def test_socketcan_interface_down(tmp_path: Path, net: Path) -> None:
    ip = fake_ip(tmp_path, [IP_LINK])
    root = sysfs(net, flags=0x1080)  # NOARP|ECHO, not UP
    found = by_check(await can_check.check(socketcan(), 0.3, sys_root=root, ip_command=ip))
    interface = found["can.interface"]
    assert interface.status is Status.FAIL
    assert "is down" in interface.summary
    assert "ip link set fltest0 up type can bitrate 500000" in (interface.fix or "")
    for check in ("can.bitrate", "can.traffic", "can.errors", "can.obd"):
        assert found[check].status is Status.SKIP


async def test_socketcan_interface_missing(tmp_path: Path, net: Path) -> None:
    await asyncio.to_thread(net.mkdir)
    found = by_check(await can_check.check(socketcan(), 0.3, sys_root=net, ip_command=("ip",)))
    assert found["can.interface"].status is Status.FAIL
    assert "does not exist" in found["can.interface"].summary
    assert "dtoverlay" in (found["can.interface"].fix or "")


async def test_socketcan_not_a_can_interface(tmp_path: Path, net: Path) -> None:
    root = sysfs(net, kind=1)  # ARPHRD_ETHER
    found = by_check(await can_check.check(socketcan(), 0.3, sys_root=root, ip_command=("ip",)))
    assert found["can.interface"].status is Status.FAIL
    assert "not a CAN interface" in found["can.interface"].summary


async def test_without_ip_the_bitrate_is_unknown(tmp_path: Path, net: Path) -> None:
    missing = (str(tmp_path / "no-ip-here"),)
    found = by_check(
        await can_check.check(socketcan(), 0.3, sys_root=sysfs(net), ip_command=missing)
    )
    assert found["can.interface"].status is Status.OK  # sysfs says up
    assert found["can.bitrate"].status is Status.SKIP
    assert "cannot run" in found["can.bitrate"].summary


def test_parse_ip_link_fixed_bitrate_controllers() -> None:
    link = copy.deepcopy(IP_LINK)
    data = link["linkinfo"]["info_data"]
    del data["bittiming"]
    data |= {"bittiming_bitrate": 250000, "bitrate_const": [125000, 250000, 500000]}
    parsed = can_link.parse_ip_link(json.dumps([link]), IFNAME)
    assert parsed["bitrate"] == 250000
    assert parsed["state"] == "ERROR-ACTIVE"
    assert parsed["berr"] == (0, 0)
    assert parsed["rx"]["rx_packets"] == 1000


def test_parse_ip_link_rejects_other_links() -> None:
    eth = {"ifname": IFNAME, "flags": ["UP"], "linkinfo": {"info_kind": "veth"}}
    with pytest.raises(ValueError, match="no CAN link details"):
        can_link.parse_ip_link(json.dumps([eth]), IFNAME)
    with pytest.raises(ValueError, match="no entry"):
        can_link.parse_ip_link(json.dumps([IP_LINK]), "can9")
