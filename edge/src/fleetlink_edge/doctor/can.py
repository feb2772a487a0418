"""CAN checks: the interface, its bitrate, traffic, errors and drops, OBD-II 01 00.

On SocketCAN the interface's state comes from the kernel (``can_link``). Frames are counted
through the agent's own ``CanPort`` (python-can, the configured kernel filters), on ``virtual``
buses too, and the OBD-II request uses the poller's sans-I/O ``Exchange``. Observations are
plain data; ``can_findings`` judges them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetlink_edge.config import CanSettings
from fleetlink_edge.decode.isotp import encode_single
from fleetlink_edge.doctor.can_link import SYS_CLASS_NET, LinkInfo, kernel_rx, read_link
from fleetlink_edge.doctor.findings import Finding, Status, fail, ok, skip, warn
from fleetlink_edge.errors import SourceError
from fleetlink_edge.frames import CanFrame
from fleetlink_edge.sources.can import CanPort
from fleetlink_edge.sources.obd import Exchange, is_obd_response
from fleetlink_protocols import obd

ENOUGH_FRAMES = 200  # stop listening early once this many arrived
BERR_WARNING = 96  # ISO 11898-1: an error counter at 96 or more is "error warning"
_DROPS = ("rx_dropped", "rx_over_errors", "rx_fifo_errors")
_PID_00 = bytes([obd.SERVICE_CURRENT_DATA, 0x00])


@dataclass(frozen=True, slots=True)
class Traffic:
    """What a listening window on the bus saw, through the agent's CanPort."""

    window_s: float
    open_error: str | None = None
    frames: int = 0
    error_frames: int = 0
    ids: int = 0
    kernel_rx: int | None = None  # rx_packets counted by the kernel meanwhile (SocketCAN)


@dataclass(frozen=True, slots=True)
class ObdResult:
    """Answers to one functional 01 00 request: ECU id -> (supported PIDs 01-20, seconds to the
    answer); ``first_frame_s``: seconds to each ECU's first frame (a "response pending" too)."""

    answers: dict[int, tuple[frozenset[int], float]] = field(default_factory=dict)
    first_frame_s: dict[int, float] = field(default_factory=dict)
    negative: dict[int, str] = field(default_factory=dict)  # ECU id -> NRC name
    send_error: str | None = None
    waited_s: float = 0.0


# -- verdicts (pure) ------------------------------------------------------------------------------


def can_findings(
    s: CanSettings, link: LinkInfo | None, traffic: Traffic | None, result: ObdResult | None
) -> list[Finding]:
    """can.interface, can.bitrate, can.traffic, can.errors, can.obd; ``link`` None: virtual."""
    out = _link_findings(s, link)
    if traffic is None:  # the interface is missing or down: nothing to listen to
        reason = f"not checked: {s.channel} is not usable"
        return [*out, *(skip(c, reason) for c in ("can.traffic", "can.errors", "can.obd"))]
    answered = result is not None and bool(result.answers or result.negative)
    out += [_traffic_finding(s, traffic, answered), _errors_finding(s, link, traffic)]
    if not s.obd.enabled:
        out.append(skip("can.obd", "OBD-II polling is off (can.obd.enabled = false)"))
    elif traffic.open_error is not None or result is None:
        out.append(skip("can.obd", "not checked: the bus did not open"))
    else:
        out.append(_obd_finding(s, result))
    return out


def _link_findings(s: CanSettings, link: LinkInfo | None) -> list[Finding]:
    if link is None:
        why = f"interface 'virtual' (bus {s.channel!r}): no kernel interface; frames via python-can"
        return [skip("can.interface", why), skip("can.bitrate", "not applicable to a virtual bus")]
    interface = _interface_finding(s, link)
    if interface.status is Status.FAIL and link.state != "BUS-OFF":
        return [interface, skip("can.bitrate", f"not checked: {interface.summary}")]
    return [interface, _bitrate_finding(s, link)]


def _interface_finding(s: CanSettings, link: LinkInfo) -> Finding:
    name, facts = link.ifname, {"state": link.state, "up": link.up}
    up_cmd = f"ip link set {name} up type can bitrate {s.bitrate}"
    if link.exists is None:
        return skip("can.interface", "no /sys/class/net on this system: interface not checked")
    if not link.exists:
        fix = (
            "the CAN HAT overlay is not loaded (dtoverlay=mcp2515-can0,... in "
            "/boot/firmware/config.txt, then reboot) or the USB adapter is unplugged; "
            "`ip link show` lists the interfaces; or correct can.channel"
        )
        return fail("can.interface", f"network interface {name} does not exist", fix)
    if link.is_can is False:
        fix = f"can.channel ({name}) must name a CAN interface"
        return fail("can.interface", f"{name} is not a CAN interface", fix)
    if link.up is False or link.state == "STOPPED":
        fix = f"bring it up: `{up_cmd}` (at boot the can0 .network file of systemd-networkd does)"
        return fail("can.interface", f"{name} is down", fix, **facts)
    if link.state == "BUS-OFF":
        fix = (
            "the controller left the bus after too many errors: a wrong bitrate, CAN-H and CAN-L "
            "swapped, missing 120 ohm termination, or no other node to acknowledge frames; "
            f"`ip link set {name} type can restart-ms 100` lets it recover by itself"
        )
        return fail("can.interface", f"{name} is bus-off", fix, **facts)
    if link.state in ("ERROR-PASSIVE", "ERROR-WARNING"):
        fix = "the controller counts many bus errors: check bitrate, wiring and termination"
        return warn("can.interface", f"{name} is up, {link.state}", fix, **facts)
    state = link.state or f"controller state unknown: {link.ip_note}"
    return ok("can.interface", f"{name} is up, {state}", **facts)


def _bitrate_finding(s: CanSettings, link: LinkInfo) -> Finding:
    if link.bitrate is None:
        return skip("can.bitrate", f"bitrate not readable ({link.ip_note or 'no CAN details'})")
    facts = {"interface_bitrate": link.bitrate, "configured_bitrate": s.bitrate}
    if link.bitrate != s.bitrate:
        fix = (
            "the vehicle bus decides (passenger-car OBD-II: 500000; J1939 trucks: 250000 or "
            f"500000): set it on the interface (`ip link set {link.ifname} down; ip link set "
            f"{link.ifname} up type can bitrate N`, or the .network file) and can.bitrate alike"
        )
        summary = f"{link.ifname} runs at {link.bitrate} bit/s, can.bitrate says {s.bitrate}"
        return fail("can.bitrate", summary, fix, **facts)
    return ok("can.bitrate", f"{link.bitrate} bit/s, as configured", **facts)


def _traffic_finding(s: CanSettings, t: Traffic, obd_answered: bool) -> Finding:
    facts: dict[str, Any] = {"frames": t.frames, "ids": t.ids, "window_s": round(t.window_s, 2)}
    facts["kernel_rx"] = t.kernel_rx
    if t.open_error is not None:
        fix = (
            "the interface must exist and be up, and the agent's user may open CAN sockets "
            "(the unit's RestrictAddressFamilies lists AF_CAN)"
        )
        return fail("can.traffic", f"cannot open the bus: {t.open_error}", fix)
    if t.frames:
        summary = f"{t.frames} frames from {t.ids} ids in {t.window_s:.1f} s"
        return ok("can.traffic", summary, **facts)
    if t.kernel_rx:
        fix = "can.filters let none of the bus's frames through: check their ids and masks"
        summary = f"the kernel received {t.kernel_rx} frames, the agent's filters passed none"
        return warn("can.traffic", summary, fix, **facts)
    if obd_answered:
        summary = "no broadcast traffic; the bus answers OBD-II requests (a gateway, normal)"
        return ok("can.traffic", summary, **facts)
    fix = (
        "switch the ignition on; check the wiring (OBD connector pin 6 CAN-H, pin 14 CAN-L), the "
        "bitrate and the termination; many cars keep the OBD port silent behind a gateway "
        "until asked (then only can.obd counts)"
    )
    return warn("can.traffic", f"no frames in {t.window_s:.1f} s", fix, **facts)


def _errors_finding(s: CanSettings, link: LinkInfo | None, t: Traffic) -> Finding:
    problems: list[str] = []
    fixes: list[str] = []
    facts: dict[str, Any] = {"error_frames": t.error_frames}
    if link is not None:
        facts |= {"berr": list(link.berr) if link.berr else None, **link.can_stats, **link.rx}
        if link.berr is not None and max(link.berr) >= BERR_WARNING:
            problems.append(f"error counters tx {link.berr[0]} rx {link.berr[1]}")
            fixes.append("high error counters: check bitrate, wiring and termination")
        went = {k: link.can_stats.get(k, 0) for k in ("bus_off", "error_passive")}
        if any(went.values()):
            problems.append(f"bus-off {went['bus_off']}x, error-passive {went['error_passive']}x")
            fixes.append("the controller had error bursts since it came up (wiring, bitrate)")
        if drops := sum(link.rx.get(k, 0) for k in _DROPS):
            problems.append(f"the kernel dropped {drops} frames")
            fixes.append(
                "frames are read too slowly: set can.filters to the ids the agent decodes; "
                "rx_over_errors are controller overruns (MCP2515 at high load: raise the SPI "
                "clock or use a USB adapter)"
            )
    if t.error_frames:
        problems.append(f"{t.error_frames} error frames in {t.window_s:.1f} s")
        fixes.append("error frames: a node on the bus disagrees on bitrate or wiring is poor")
    if problems:
        return warn("can.errors", "; ".join(problems), "; ".join(fixes), **facts)
    return ok("can.errors", "no bus errors or drops", **facts)


def _obd_finding(s: CanSettings, r: ObdResult) -> Finding:
    o = s.obd
    if r.send_error is not None:
        fix = "a bus-off or listen-only controller cannot send: see can.interface"
        return fail("can.obd", f"the OBD-II request could not be sent: {r.send_error}", fix)
    if not r.answers and not r.negative:
        fix = (
            "switch the ignition on (ECUs are silent with the key off); check that this is the "
            "OBD bus (pins 6 and 14) at the right bitrate; J1939 trucks have no OBD-II: set "
            "can.obd.enabled = false and can.j1939.enabled = true"
        )
        summary = f"no ECU answered 01 00 (sent to 0x{o.request_id:03X}) in {r.waited_s:.1f} s"
        return fail("can.obd", summary, fix, request_id=o.request_id)
    ecus = {f"0x{e:03X}": sorted(p) for e, (p, _) in r.answers.items()}
    facts = {"ecus": ecus, "negative": {f"0x{e:03X}": n for e, n in r.negative.items()}}
    if not r.answers:
        fix = "an ECU answers but refuses 01 00, which J1979 makes mandatory: not an OBD-II ECU?"
        return warn("can.obd", f"ECUs refused 01 00: {facts['negative']}", fix, **facts)
    ecu, (pids, latency_s) = min(r.answers.items())
    unsupported = sorted(p for p in o.pids if p <= 0x20 and p not in pids)
    facts |= {"latency_s": round(latency_s, 3), "unsupported_configured": unsupported}
    summary = (
        f"{len(r.answers)} ECU(s) answered 01 00; 0x{ecu:03X} in {latency_s * 1000:.0f} ms, "
        f"{len(pids - {0x20})} of PIDs 01-1F supported"
    )
    if unsupported:
        summary += f" (configured, not supported: {', '.join(f'0x{p:02X}' for p in unsupported)})"
    # The poller waits response_timeout_s for an ECU's first frame; a "response pending" (7F 01
    # 78) in time buys it response_pending_timeout_s more, so only the first frame counts here.
    slowest = max(r.first_frame_s.values(), default=0.0)
    if slowest > o.response_timeout_s:
        fix = f"raise can.obd.response_timeout_s above {slowest:.2f} s, or the poller times out"
        summary += (
            f"; an ECU took {slowest:.2f} s, can.obd.response_timeout_s is {o.response_timeout_s:g}"
        )
        return warn("can.obd", summary, fix, **facts)
    return ok("can.obd", summary, **facts)


# -- probes (I/O) ---------------------------------------------------------------------------------


async def check(
    s: CanSettings,
    timeout_s: float,
    *,
    sys_root: Path = SYS_CLASS_NET,
    ip_command: Sequence[str] = ("ip",),
) -> list[Finding]:
    """The CAN checks for the configured bus; ``sys_root``/``ip_command`` stand in for tests."""
    if not s.enabled:
        return [skip("can", "CAN is off (can.enabled = false)")]
    link: LinkInfo | None = None
    if s.interface == "socketcan":
        link = await read_link(s.channel, sys_root, ip_command, timeout_s)
        if link.exists is False or link.is_can is False or link.up is False:
            return can_findings(s, link, None, None)
    traffic, result = await observe_bus(s, timeout_s, link, sys_root)
    return can_findings(s, link, traffic, result)


async def observe_bus(
    s: CanSettings, timeout_s: float, link: LinkInfo | None, sys_root: Path
) -> tuple[Traffic, ObdResult | None]:
    """Listen for up to ``timeout_s``, then ask 01 00 if OBD is on; one CanPort for both."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            port = await stack.enter_async_context(CanPort(s))
        except SourceError as exc:
            return Traffic(0.0, open_error=str(exc)), None
        traffic = await _listen(port, timeout_s, link, sys_root)
        result = await _ask_pid_00(port, s, timeout_s) if s.obd.enabled else None
    return traffic, result


async def _listen(port: CanPort, timeout_s: float, link: LinkInfo | None, root: Path) -> Traffic:
    loop = asyncio.get_running_loop()
    ids: set[int] = set()
    enough = asyncio.Event()

    def seen(frame: CanFrame) -> bool:  # called on the loop for every frame that is no error
        if len(ids) < 4096:
            ids.add(frame.arbitration_id)
        if port.counters["frames"] >= ENOUGH_FRAMES:
            enough.set()
        return False  # counted, never queued

    queue = port.listen(maxsize=1, accept=seen)
    before = await kernel_rx(link, root)
    start_s = loop.time()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await enough.wait()
    window_s = loop.time() - start_s
    queue.close()
    after = await kernel_rx(link, root)
    kernel = after - before if before is not None and after is not None else None
    c = port.counters
    return Traffic(window_s, None, c["frames"], c["error_frames"], len(ids), kernel)


async def _ask_pid_00(port: CanPort, s: CanSettings, timeout_s: float) -> ObdResult:
    """Send 01 00 to the functional address; wait for the first answer plus the agent's
    response timeout (other ECUs), or ``timeout_s``."""
    loop = asyncio.get_running_loop()
    o = s.obd
    queue = port.listen(maxsize=64, accept=is_obd_response)
    sent_s = loop.time()
    deadline_s = sent_s + timeout_s
    exchange = Exchange(_PID_00, deadline_s, o, {})
    latency: dict[int, float] = {}
    first_frame: dict[int, float] = {}
    try:
        await port.send(o.request_id, encode_single(_PID_00, padding=o.padding_byte))
        while (remaining := deadline_s - loop.time()) > 0:
            try:
                async with asyncio.timeout(remaining):
                    frame = await queue.get()
            except TimeoutError:
                break
            first_frame.setdefault(frame.arbitration_id, loop.time() - sent_s)
            for can_id, data in exchange.feed(frame, loop.time()):
                await port.send(can_id, data)  # flow control of a multi-frame answer
            for ecu in exchange.answers:
                if ecu not in latency:
                    latency[ecu] = loop.time() - sent_s
                    deadline_s = min(deadline_s, loop.time() + o.response_timeout_s)
    except SourceError as exc:
        return ObdResult(send_error=str(exc), waited_s=loop.time() - sent_s)
    finally:
        queue.close()
    return _obd_result(exchange, latency, first_frame, loop.time() - sent_s)


def _obd_result(
    exchange: Exchange, latency: dict[int, float], first_frame: dict[int, float], waited_s: float
) -> ObdResult:
    answers: dict[int, tuple[frozenset[int], float]] = {}
    negative: dict[int, str] = {}
    for ecu, answer in exchange.answers.items():
        response = answer.response
        if isinstance(response, obd.NegativeResponse):
            negative[ecu] = response.name
            continue
        try:
            bitmap = dict(obd.split_current_data(response.data))[0x00]
            answers[ecu] = (obd.decode_supported_pids(0x00, bitmap), latency[ecu])
        except (obd.ObdDecodeError, KeyError):
            negative[ecu] = "undecodable answer"
    return ObdResult(answers, first_frame, negative, None, waited_s)
