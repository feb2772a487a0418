"""A SocketCAN interface as the kernel reports it: sysfs and ``ip -details -statistics``.

``/sys/class/net/<if>/`` gives the type (280: CAN), the flags (IFF_UP) and the receive
statistics; ``ip -j -details -statistics link show dev <if>`` adds what only netlink knows: the
controller state (ERROR-ACTIVE ... BUS-OFF), the bitrate, the error counters and how often the
controller went error-passive or bus-off. Both are read without python-can, so an interface
that is down or missing is described rather than failing to open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SYS_CLASS_NET = Path("/sys/class/net")
ARPHRD_CAN = 280  # include/uapi/linux/if_arp.h
IFF_UP = 0x1
_RX_STATS = ("rx_packets", "rx_dropped", "rx_errors", "rx_over_errors", "rx_fifo_errors")


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """A SocketCAN interface as the kernel reports it; None where it could not be read."""

    ifname: str
    exists: bool | None  # None: no /sys/class/net here (not Linux)
    is_can: bool | None = None
    up: bool | None = None
    state: str | None = None  # ERROR-ACTIVE, ERROR-WARNING, ERROR-PASSIVE, BUS-OFF, STOPPED...
    bitrate: int | None = None
    berr: tuple[int, int] | None = None  # (tx, rx) error counters
    can_stats: dict[str, int] = field(default_factory=dict)  # bus_off, error_passive, restarts...
    rx: dict[str, int] = field(default_factory=dict)  # rx_packets, rx_dropped, rx_over_errors...
    ip_note: str | None = None  # why ``ip`` gave no CAN details


async def read_link(
    ifname: str, sys_root: Path, ip_command: Sequence[str], timeout_s: float
) -> LinkInfo:
    sysfs = await asyncio.to_thread(read_sysfs, sys_root, ifname)
    if sysfs.get("exists") is not True:
        return LinkInfo(ifname, sysfs.get("exists"))
    details, note = await ip_details(ip_command, ifname, timeout_s)
    rx = {k: v for k, v in sysfs.items() if k in _RX_STATS and isinstance(v, int)}
    up = sysfs.get("up")
    return LinkInfo(
        ifname,
        True,
        is_can=sysfs.get("is_can"),
        up=up if isinstance(up, bool) else details.get("up"),
        state=details.get("state"),
        bitrate=details.get("bitrate"),
        berr=details.get("berr"),
        can_stats=details.get("can_stats", {}),
        rx=rx or details.get("rx", {}),
        ip_note=note,
    )


def read_sysfs(sys_root: Path, ifname: str) -> dict[str, Any]:
    """exists, is_can, up and the rx_* statistics of ``sys_root/ifname``; blocking."""
    if not sys_root.is_dir():
        return {"exists": None}
    base = sys_root / ifname
    if not base.exists():
        return {"exists": False}
    out: dict[str, Any] = {"exists": True}
    if (kind := read_int(base / "type")) is not None:
        out["is_can"] = kind == ARPHRD_CAN
    if (flags := read_int(base / "flags")) is not None:
        out["up"] = bool(flags & IFF_UP)
    for name in _RX_STATS:
        if (value := read_int(base / "statistics" / name)) is not None:
            out[name] = value
    return out


def read_int(path: Path) -> int | None:
    """A sysfs number (decimal or 0x hex), None when absent or unreadable."""
    try:
        return int(path.read_text().strip(), 0)
    except (OSError, ValueError):
        return None


async def ip_details(
    ip_command: Sequence[str], ifname: str, timeout_s: float
) -> tuple[dict[str, Any], str | None]:
    """``parse_ip_link`` of ``ip -j -details -statistics link show dev IF``, or a note why not."""
    argv = [*ip_command, "-j", "-details", "-statistics", "link", "show", "dev", ifname]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except OSError as exc:
        return {}, f"cannot run {ip_command[0]}: {exc.strerror or exc}"
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return {}, f"`{' '.join(argv)}` did not finish in {timeout_s:g} s"
    if proc.returncode != 0:
        return {}, f"`ip` failed: {err.decode(errors='replace').strip()}"
    try:
        return parse_ip_link(out.decode(errors="replace"), ifname), None
    except ValueError as exc:
        return {}, f"`ip` output not understood: {exc}"


def parse_ip_link(text: str, ifname: str) -> dict[str, Any]:
    """up, state, bitrate, berr, can_stats and rx from iproute2's JSON; ValueError if unusable."""
    links = json.loads(text)
    link = next((x for x in links if isinstance(x, dict) and x.get("ifname") == ifname), None)
    if link is None:
        raise ValueError(f"no entry for {ifname}")
    info = link.get("linkinfo") or {}
    if info.get("info_kind") != "can":
        raise ValueError(f"{ifname} has no CAN link details (kind {info.get('info_kind')!r})")
    data = info.get("info_data") or {}
    xstats = info.get("info_xstats") or {}
    xstats = xstats.get("can_stats", xstats)
    berr = data.get("berr_counter")
    rx = (link.get("stats64") or {}).get("rx") or {}
    return {
        "up": "UP" in link.get("flags", []),
        "state": data.get("state"),
        "bitrate": (data.get("bittiming") or {}).get("bitrate") or data.get("bittiming_bitrate"),
        "berr": (int(berr["tx"]), int(berr["rx"])) if isinstance(berr, dict) else None,
        "can_stats": {k: int(v) for k, v in xstats.items() if isinstance(v, int)},
        "rx": {f"rx_{k}": int(v) for k, v in rx.items() if isinstance(v, int)},
    }


async def kernel_rx(link: LinkInfo | None, root: Path) -> int | None:
    """The kernel's rx_packets count of ``link`` now, None without one."""
    if link is None or not link.exists:
        return None
    return await asyncio.to_thread(read_int, root / link.ifname / "statistics" / "rx_packets")
