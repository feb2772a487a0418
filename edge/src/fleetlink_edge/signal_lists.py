"""The signal lists a vehicle may be told to change: OBD-II PIDs polled, CAN signals kept.

The settings model checks their types and lengths; these rules check them against what this
agent decodes. ``remote_config`` refuses a desired document whose lists break them (``RULES``,
by key) and ``CanDecoder.from_settings`` a local ``can.signals`` that does. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final, TypeVar

from fleetlink_edge.config import CanSettings, EdgeSettings
from fleetlink_edge.decode.j1939 import SIGNAL_PATHS as J1939_PATHS
from fleetlink_protocols import obd

T = TypeVar("T")


def broadcast_paths(can: CanSettings) -> frozenset[str]:
    """Catalog paths the J1939 decoder (when on) and the DBC mappings produce under ``can``."""
    paths = set(J1939_PATHS) if can.j1939.enabled else set()
    for dbc in can.dbc:
        paths.update(dbc.signals.values())
    return frozenset(paths)


def pid_problems(pids: Sequence[int]) -> list[str]:
    """Why ``pids`` cannot be polled: empty, not decoded (SAE J1979 table in ``obd.PIDS``), or
    repeated. Empty when they can."""
    if not pids:
        return ["can.obd.pids: name at least one PID (an empty list would poll nothing)"]
    problems = []
    if unknown := [p for p in dict.fromkeys(pids) if p not in obd.PIDS]:
        problems.append(
            f"can.obd.pids: {_hex(unknown)} not among the SAE J1979 PIDs this agent decodes"
            f" ({_hex(sorted(obd.PIDS))})"
        )
    if twice := _repeated(pids):
        problems.append(f"can.obd.pids: {_hex(twice)} listed more than once")
    return problems


def signal_problems(can: CanSettings) -> list[str]:
    """Why ``can.signals`` names paths no configured CAN decoder produces, or one twice."""
    if can.signals is None:
        return []
    known = broadcast_paths(can)
    problems = []
    if unknown := [p for p in dict.fromkeys(can.signals) if p not in known]:
        problems.append(
            f"can.signals: {', '.join(unknown)}: produced by neither J1939"
            f"{'' if can.j1939.enabled else ' (off)'} nor a DBC mapping of this vehicle"
        )
    if twice := _repeated(can.signals):
        problems.append(f"can.signals: {', '.join(twice)} listed more than once")
    return problems


def _signals_rule(settings: EdgeSettings) -> list[str]:
    if settings.can.signals is not None and not settings.can.enabled:
        return ["can.signals: CAN is off on this vehicle (can.enabled = false)"]
    return signal_problems(settings.can)


RULES: Final[Mapping[str, Callable[[EdgeSettings], list[str]]]] = {
    "can.obd.pids": lambda s: pid_problems(s.can.obd.pids),
    "can.signals": _signals_rule,
}
"""Remote key -> its problems in the settings a desired document gives (beyond the model)."""


def _repeated(items: Sequence[T]) -> list[T]:
    return [item for item in dict.fromkeys(items) if items.count(item) > 1]


def _hex(pids: Iterable[int]) -> str:
    return ", ".join(f"0x{p:02X}" for p in pids)
