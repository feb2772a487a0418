"""Failures injected into simulated vehicles for dispatch to react to: a vehicle whose uplink goes
dark (``relay.LinkRelay``), or whose ECU stores a DTC and so lights its MIL. Each is given as
``VEHICLE@SECONDS``: which vehicle, and how long after the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from fleetlink_edge.config import EdgeSettings
from fleetlink_edge.errors import ConfigError
from fleetlink_edge.sim.ecu import EcuState
from fleetlink_edge.sim.relay import LinkRelay
from fleetlink_protocols import obd

DEFAULT_FAULT_CODE = "P0300"  # SAE J2012: random/multiple cylinder misfire detected


@dataclass(frozen=True)
class Failures:
    """Device id -> seconds after the start: its uplink goes dark / its ECU stores fault_code."""

    silences: Mapping[str, float] = field(default_factory=dict)
    faults: Mapping[str, float] = field(default_factory=dict)
    fault_code: str = DEFAULT_FAULT_CODE

    def __post_init__(self) -> None:
        try:
            obd.encode_dtc(self.fault_code)
        except ValueError:
            raise ConfigError(f"{self.fault_code!r} is not an SAE J2012 DTC (P0300)") from None


def parse_at(text: str) -> tuple[str, float]:
    """``VEHICLE@SECONDS`` (``veh-sim-002@120``) -> (device id, seconds). Raises ConfigError."""
    device_id, at, seconds = text.rpartition("@")
    try:
        value = float(seconds)
    except ValueError:
        value = math.nan
    if not at or not device_id or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{text!r} is not VEHICLE@SECONDS (such as veh-sim-002@120)")
    return device_id, value


def injections(texts: Sequence[str], device_ids: Sequence[str]) -> dict[str, float]:
    """Each ``VEHICLE@SECONDS`` of a failure flag, naming a simulated vehicle. Raises
    ConfigError."""
    out: dict[str, float] = {}
    for text in texts:
        device_id, seconds = parse_at(text)
        if device_id not in device_ids:
            simulated = ", ".join(device_ids)
            raise ConfigError(f"{text!r}: {device_id} is not simulated here ({simulated})")
        out[device_id] = seconds
    return out


async def relayed(
    settings: EdgeSettings, failures: Failures, stack: contextlib.AsyncExitStack
) -> tuple[EdgeSettings, LinkRelay | None]:
    """The settings with the uplink through a relay (entered on ``stack``) when this vehicle is
    to fall silent. Raises ConfigError for a TLS uplink: its certificate names the broker."""
    if settings.device.id not in failures.silences:
        return settings, None
    uplink = settings.uplink
    if uplink.tls is not None and not uplink.tls.insecure:
        raise ConfigError("--silence relays the uplink through 127.0.0.1: use it without TLS")
    relay = await stack.enter_async_context(LinkRelay(uplink.host, uplink.port))
    update = {"host": "127.0.0.1", "port": relay.port}
    return settings.model_copy(update={"uplink": uplink.model_copy(update=update)}), relay


def schedule(
    failures: Failures, device_id: str, ecu: EcuState, relay: LinkRelay | None, out: TextIO
) -> list[asyncio.TimerHandle]:
    """Timers for this vehicle's failures, counted from now; each says on ``out`` when it hits."""
    loop = asyncio.get_running_loop()
    handles = []

    def announce(text: str) -> None:
        out.write(f"{device_id}: {text}\n")
        out.flush()

    fault_s = failures.faults.get(device_id)
    if fault_s is not None:

        def fault() -> None:
            ecu.store_dtc(failures.fault_code)
            announce(f"ECU stores {failures.fault_code}, MIL on (--fault)")

        handles.append(loop.call_later(fault_s, fault))
    silence_s = failures.silences.get(device_id)
    if relay is not None and silence_s is not None:

        def silence() -> None:
            relay.go_dark()
            announce("uplink cut, silent from now on (--silence)")

        handles.append(loop.call_later(silence_s, silence))
    return handles
