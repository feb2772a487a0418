"""What goes wrong in ``fleetlink-cloud demo``, and the dispatch settings that react to it while
you watch: the simulator's ``--silence``/``--fault`` flags (docs/driver.md, "Failures for
dispatch to handle") and the demo's ``[dispatch]`` overrides. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from fleetlink_cloud.errors import ConfigError
from fleetlink_protocols import obd

DEFAULT_SILENCE: Final = "veh-sim-002@60"
DEFAULT_FAULT: Final = "veh-sim-003@40"
DEFAULT_FAULT_CODE: Final = "P0300"  # SAE J2012: random/multiple cylinder misfire detected
OFFLINE_FOR_S: Final = 30  # with ingest's 30 s heartbeat timeout: at risk once seen offline
GRACE_S: Final = 15  # ...and moved this much later (a real fleet waits minutes)
IDLE_COST: Final = -900.0  # as if an idle vehicle were 15 min nearer: the whole fleet works


@dataclass(frozen=True, slots=True)
class Failures:
    """``VEHICLE@SECONDS`` values for the simulator's ``--silence`` and ``--fault``."""

    silences: tuple[str, ...] = ()
    faults: tuple[str, ...] = ()
    fault_code: str = DEFAULT_FAULT_CODE

    def simulate_args(self) -> list[str]:
        """The simulator's flags for these failures."""
        out: list[str] = []
        for flag, values in (("--silence", self.silences), ("--fault", self.faults)):
            for value in values:
                out += [flag, value]
        return out + (["--fault-code", self.fault_code] if self.faults else [])

    def describe(self) -> str:
        """``veh-sim-002 silent at 60 s, veh-sim-003 P0300 at 40 s`` (or ``none``)."""
        said = [f"{v} silent at {s:g} s" for v, s in map(_at, self.silences)]
        said += [f"{v} {self.fault_code} at {s:g} s" for v, s in map(_at, self.faults)]
        return ", ".join(said) or "none"


def choose(
    silence: Sequence[str] | None,
    fault: Sequence[str] | None,
    fault_code: str,
    vehicle_ids: Sequence[str],
    *,
    enabled: bool = True,
) -> Failures:
    """The failures given, else the defaults that name a simulated vehicle (none when not
    ``enabled``). Raises ConfigError for a value that is not VEHICLE@SECONDS of the fleet, or a
    fault code that is not SAE J2012."""
    code = fault_code.strip().upper()
    try:
        obd.encode_dtc(code)
    except obd.ObdDecodeError:
        raise ConfigError(f"--fault-code {fault_code!r} is not an SAE J2012 DTC (P0300)") from None
    if not enabled:
        return Failures(fault_code=code)
    if silence is None and fault is None:
        silence = [DEFAULT_SILENCE] if _at(DEFAULT_SILENCE)[0] in vehicle_ids else []
        fault = [DEFAULT_FAULT] if _at(DEFAULT_FAULT)[0] in vehicle_ids else []
    for text in [*(silence or ()), *(fault or ())]:
        vehicle, seconds = _at(text)
        if vehicle not in vehicle_ids or seconds is None:
            fleet = f"{vehicle_ids[0]}..{vehicle_ids[-1]}"
            raise ConfigError(f"{text!r}: expected VEHICLE@SECONDS, VEHICLE one of {fleet}")
    return Failures(tuple(silence or ()), tuple(fault or ()), code)


def _at(text: str) -> tuple[str, float | None]:
    """``veh-sim-002@60`` -> (``veh-sim-002``, 60.0); the seconds None when they are not."""
    vehicle, _, seconds = text.rpartition("@")
    try:
        value = float(seconds)
    except ValueError:
        return vehicle, None
    return vehicle, value if value >= 0 else None


def dispatch_overrides(failures: Failures) -> dict[str, Any]:
    """The demo's ``[dispatch]`` section: the offline rule fires within a minute of a vehicle
    falling silent, the fault rule acts on the injected code, idle vehicles go first."""
    rules: dict[str, Any] = {"offline": {"offline_for_s": OFFLINE_FOR_S, "grace_s": GRACE_S}}
    if failures.faults:
        rules["fault"] = {"dtcs": [failures.fault_code]}
    return {
        "rules": rules,
        "assign": {"idle_cost": IDLE_COST},
        "speeds_refresh_s": 60.0,  # learned speeds (and so ETA ranges) within the first minutes
    }
