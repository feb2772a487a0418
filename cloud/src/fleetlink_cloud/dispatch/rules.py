"""Reallocation rules: when a job must leave its vehicle. Declarative settings, pure evaluation.

:func:`evaluate` takes a :class:`Snapshot` (``now``, the vehicles, the jobs with their ETAs and
move history) and returns one :class:`Firing` per (rule, job) that applies, ordered by job id,
then by :data:`RULE_ORDER`. A firing's ``action`` says what the caller does: ``reallocate``
(find the best alternative, move the job, write :func:`audit_record`) or ``hold`` (keep it where
it is); ``hold`` names why, so nothing is dropped silently:

- ``started``: the job is at its stop (ARRIVED) or its goods are on board. Rules never move
  it; only a dispatcher does. The fault rule still reports it, since a dispatcher must know;
  other rules ignore started jobs.
- ``locked``: a dispatcher locked the job; rules never move it.
- ``grace``: the vehicle is offline past ``offline_for_s`` but within ``grace_s`` more; its jobs
  stay in case it comes back.
- ``max_moves`` / ``too_soon``: the anti-thrash limits. Rules in ``AntiThrash.exempt`` ignore
  them (by default the offer rules: a declined or unanswered offer was never taken on).
- ``superseded``: another rule moves the job in this evaluation (one move per job).

Vehicle rules (fault, offline, low fuel) fire once per affected job. A job whose vehicle is
not in the snapshot counts as on a vehicle never seen. Times are Unix seconds (cloud clock).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, TypedDict

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleetlink_cloud.dispatch.model import Evidence, Job, JobState, Shift, StopKind, TimeWindow
from fleetlink_cloud.store.base import DtcState, VehicleState
from fleetlink_protocols.j1939 import Lamps, LampState
from fleetlink_protocols.records import DtcSource

_NS = 1_000_000_000
MIL_PATH = "Vehicle.OBD.Status.IsMILOn"  # SAE J1979 PID 01, byte A bit 7
FUEL_PATHS = (
    "Vehicle.Powertrain.FuelSystem.RelativeLevel",  # VSS, percent
    "Vehicle.OBD.FuelLevel",  # SAE J1979 PID 2F, percent
)
_OBD_CODE = re.compile(r"[PCBU][0-3][0-9A-F]{3}")  # SAE J2012: P0300
_J1939_CODE = re.compile(r"(\d{1,6}):(\d{1,2})")  # SPN:FMI, J1939-73
_MAX_SPN, _MAX_FMI = 0x7FFFE, 31  # 19-bit SPN (all ones: not available), 5-bit FMI


class Rule(enum.StrEnum):
    FAULT = "fault"
    OFFLINE = "offline"
    SHIFT_END = "shift_end"
    LATE = "late"
    LOW_FUEL = "low_fuel"
    OFFER_REJECTED = "offer_rejected"
    OFFER_TIMEOUT = "offer_timeout"


RULE_ORDER: tuple[Rule, ...] = tuple(Rule)  # the first reallocating rule of a job moves it
_VEHICLE_RULES = frozenset({Rule.FAULT, Rule.OFFLINE, Rule.LOW_FUEL})


class Action(enum.StrEnum):
    REALLOCATE = "reallocate"
    HOLD = "hold"


class Hold(enum.StrEnum):
    STARTED = "started"
    LOCKED = "locked"
    GRACE = "grace"
    MAX_MOVES = "max_moves"
    TOO_SOON = "too_soon"
    SUPERSEDED = "superseded"


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True


_Seconds = Annotated[int, Field(ge=0)]


class LateSettings(_Settings):
    late_by_s: _Seconds = 900  # predicted service start after its window's end by more than this


class OfflineSettings(_Settings):
    offline_for_s: _Seconds = 300  # silent this long (since last seen): its jobs are at risk
    grace_s: _Seconds = 600  # ...and they stay this much longer in case it comes back


class FaultSettings(_Settings):
    mil: bool = False  # an emissions MIL can stay on for days; opt in
    red_stop_lamp: bool = True  # J1939-73 SPN 623: stop the vehicle
    dtcs: tuple[str, ...] = ()  # SAE J2012 "P0300" or J1939 "SPN:FMI", e.g. "100:1"

    @field_validator("dtcs")
    @classmethod
    def _codes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_normalise_code(c) for c in v)


class LowFuelSettings(_Settings):
    low_fuel_pct: Annotated[float, Field(ge=0, le=100)] = 10.0


class ShiftEndSettings(_Settings):
    shift_end_margin_s: _Seconds = 900  # the job must finish this long before the shift ends


class OfferSettings(_Settings):
    offer_timeout_s: Annotated[int, Field(gt=0)] = 120  # unanswered this long: offer elsewhere


class AntiThrash(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_seconds_between_moves: _Seconds = 600
    max_moves_per_job: Annotated[int, Field(ge=1)] = 3
    exempt: frozenset[Rule] = frozenset({Rule.OFFER_REJECTED, Rule.OFFER_TIMEOUT})


class RuleSettings(BaseModel):
    """Every reallocation rule and the limits on moves; each rule can be switched off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fault: FaultSettings = FaultSettings()
    offline: OfflineSettings = OfflineSettings()
    shift_end: ShiftEndSettings = ShiftEndSettings()
    late: LateSettings = LateSettings()
    low_fuel: LowFuelSettings = LowFuelSettings()
    offer: OfferSettings = OfferSettings()  # both offer_rejected and offer_timeout
    anti_thrash: AntiThrash = AntiThrash()


def _normalise_code(code: str) -> str:
    c = code.strip().upper()
    if _OBD_CODE.fullmatch(c):
        return c
    m = _J1939_CODE.fullmatch(c)
    if m and int(m[1]) <= _MAX_SPN and int(m[2]) <= _MAX_FMI:
        return f"{int(m[1])}:{int(m[2])}"
    raise ValueError(f"{code!r} is neither an SAE J2012 code (P0300) nor a J1939 SPN:FMI")


# -- the snapshot ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VehicleSnapshot:
    """What the rules know of one vehicle. ``dtcs`` are its active codes (J1939 ones carry the
    DM1 lamps); ``shifts`` empty means always on shift."""

    id: str
    online: bool
    last_seen: int | None = None
    mil_on: bool | None = None
    dtcs: tuple[DtcState, ...] = ()
    fuel_pct: float | None = None
    shifts: tuple[Shift, ...] = ()

    @classmethod
    def from_live(cls, state: VehicleState, shifts: tuple[Shift, ...] = ()) -> VehicleSnapshot:
        """From the store's live picture: presence, MIL and fuel signals, active DTCs."""
        seen = state.presence.last_seen_wall_ns
        mil = state.signals.get(MIL_PATH)
        fuel = [state.signals[p] for p in FUEL_PATHS if p in state.signals]
        fuel = [f for f in fuel if _is_number(f.value)]
        newest = max(fuel, key=lambda f: f.ts_wall_ns, default=None)  # first path wins a tie
        return cls(
            id=state.device.id,
            online=state.presence.online,
            last_seen=None if seen is None else seen // _NS,
            mil_on=mil.value if mil is not None and isinstance(mil.value, bool) else None,
            dtcs=tuple(d for d in state.active_dtcs if d.active),
            fuel_pct=None if newest is None else float(newest.value),
            shifts=shifts,
        )


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True, slots=True)
class JobSnapshot:
    """A job and what the rules need beside it. ``eta`` is the predicted service start of each
    remaining stop; ``moves`` counts reallocations so far (the caller keeps it)."""

    job: Job
    eta: Mapping[StopKind, int] = field(default_factory=dict)
    on_board: bool = False  # a shipment's goods are on the vehicle: only it can deliver
    offer_sent: int | None = None
    offer_rejected_at: int | None = None
    last_moved: int | None = None
    moves: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    now: int
    vehicles: tuple[VehicleSnapshot, ...]
    jobs: tuple[JobSnapshot, ...]


@dataclass(frozen=True, slots=True)
class Firing:
    """A rule that applies to a job on ``vehicle_id``; ``hold`` is set when action is hold."""

    rule: Rule
    job_id: str
    vehicle_id: str
    evidence: Evidence
    action: Action
    hold: Hold | None = None


class AuditRecord(TypedDict):
    at: int
    rule: str
    job_id: str
    action: str
    hold: str | None
    old_vehicle_id: str
    new_vehicle_id: str | None  # None: no alternative, the job went back to unassigned
    evidence: Evidence


def audit_record(firing: Firing, new_vehicle_id: str | None, at: int) -> AuditRecord:
    """The audit entry of a firing once the caller has chosen (or failed to find) a vehicle."""
    return AuditRecord(
        at=at,
        rule=firing.rule.value,
        job_id=firing.job_id,
        action=firing.action.value,
        hold=None if firing.hold is None else firing.hold.value,
        old_vehicle_id=firing.vehicle_id,
        new_vehicle_id=new_vehicle_id,
        evidence=dict(firing.evidence),
    )


# -- the rules ---------------------------------------------------------------------------------


def lateness_s(windows: Iterable[TimeWindow], start: int) -> int:
    """Seconds by which a service starting at ``start`` misses every window (0: it fits one,
    or can wait for a later one; no windows: never late)."""
    ws = tuple(windows)
    if not ws or any(start <= w.end for w in ws):
        return 0
    return start - max(w.end for w in ws)


def fault_evidence(v: VehicleSnapshot, s: FaultSettings) -> Evidence | None:
    """The evidence of a critical fault on ``v`` under ``s`` (its ``enabled`` aside), or None."""
    lamps = [(d, Lamps(d.lamps)) for d in v.dtcs if d.lamps is not None]
    mil = v.mil_on is True or any(lp.mil is LampState.ON for _, lp in lamps)
    red = sorted({d.code for d, lp in lamps if lp.red_stop is LampState.ON})
    listed = set(s.dtcs)
    hits = sorted({_code_of(d) for d in v.dtcs} & listed)
    if not ((s.mil and mil) or (s.red_stop_lamp and red) or hits):
        return None
    return {"mil_on": mil, "red_stop_lamp_codes": red, "listed_dtcs": hits}


def _code_of(d: DtcState) -> str:
    if d.source == DtcSource.J1939 and d.spn is not None and d.fmi is not None:
        return f"{d.spn}:{d.fmi}"
    return d.code.upper()


def _offline(v: VehicleSnapshot | None, now: int, s: OfflineSettings) -> Evidence | None:
    if v is not None and v.online:
        return None
    seen = None if v is None else v.last_seen
    if seen is not None and now - seen < s.offline_for_s:
        return None
    ev: Evidence = {"last_seen": seen, "offline_s": None if seen is None else now - seen}
    ev["reallocate_at"] = None if seen is None else seen + s.offline_for_s + s.grace_s
    return ev


def _low_fuel(v: VehicleSnapshot, s: LowFuelSettings) -> Evidence | None:
    if v.fuel_pct is None or v.fuel_pct >= s.low_fuel_pct:
        return None
    return {"fuel_pct": v.fuel_pct, "low_fuel_pct": s.low_fuel_pct}


def _late(js: JobSnapshot, s: LateSettings) -> Evidence | None:
    stops = dict(js.job.stops())
    worst: tuple[int, StopKind, int] | None = None
    for kind, start in sorted(js.eta.items()):
        late = lateness_s(stops[kind].windows, start) if kind in stops else 0
        if worst is None or late > worst[0]:
            worst = (late, kind, start)
    if worst is None or worst[0] <= s.late_by_s:
        return None
    late, kind, start = worst
    return {"late_s": late, "stop": kind.value, "predicted_start": start, "late_by_s": s.late_by_s}


def _shift_end(js: JobSnapshot, v: VehicleSnapshot, s: ShiftEndSettings) -> Evidence | None:
    stops = dict(js.job.stops())
    times = [(t, t + stops[k].service_s) for k, t in js.eta.items() if k in stops]
    if not times or not v.shifts:
        return None
    start = min(a for a, _ in times)
    finish = max(b for _, b in times)
    shift = next((sh for sh in v.shifts if sh.covers(start)), None)
    end = None if shift is None else shift.end
    if end is not None and finish + s.shift_end_margin_s <= end:
        return None
    return {"finish": finish, "shift_end": end, "shift_end_margin_s": s.shift_end_margin_s}


def _offer(js: JobSnapshot, now: int, s: OfferSettings) -> tuple[Rule, Evidence] | None:
    if js.job.state is not JobState.OFFERED:
        return None
    if js.offer_rejected_at is not None:
        ev: Evidence = {"offer_sent": js.offer_sent, "rejected_at": js.offer_rejected_at}
        return Rule.OFFER_REJECTED, ev
    if js.offer_sent is None or now - js.offer_sent < s.offer_timeout_s:
        return None
    return Rule.OFFER_TIMEOUT, {"offer_sent": js.offer_sent, "waited_s": now - js.offer_sent}


def _detect(
    js: JobSnapshot, v: VehicleSnapshot | None, now: int, s: RuleSettings
) -> list[tuple[Rule, Evidence]]:
    """Every enabled rule that applies to the job, in :data:`RULE_ORDER`."""
    found: list[tuple[Rule, Evidence | None]] = []
    if v is not None and s.fault.enabled:
        found.append((Rule.FAULT, fault_evidence(v, s.fault)))
    if s.offline.enabled:
        found.append((Rule.OFFLINE, _offline(v, now, s.offline)))
    if v is not None and s.shift_end.enabled:
        found.append((Rule.SHIFT_END, _shift_end(js, v, s.shift_end)))
    if s.late.enabled:
        found.append((Rule.LATE, _late(js, s.late)))
    if v is not None and s.low_fuel.enabled:
        found.append((Rule.LOW_FUEL, _low_fuel(v, s.low_fuel)))
    offer = _offer(js, now, s.offer) if s.offer.enabled else None
    if offer is not None:
        found.append(offer)
    return [(rule, ev) for rule, ev in found if ev is not None]


def _hold(
    rule: Rule, ev: Evidence, js: JobSnapshot, now: int, s: RuleSettings
) -> tuple[Hold | None, Evidence]:
    """Why this firing must not move the job (None: it may), with the evidence for it."""
    job, limits = js.job, s.anti_thrash
    if job.state.started or js.on_board:
        return Hold.STARTED, ev
    if job.locked_vehicle_id is not None:
        return Hold.LOCKED, {**ev, "locked_vehicle_id": job.locked_vehicle_id}
    if rule is Rule.OFFLINE and isinstance(ev["reallocate_at"], int) and now < ev["reallocate_at"]:
        return Hold.GRACE, ev
    if rule in limits.exempt:
        return None, ev
    if js.moves >= limits.max_moves_per_job:
        return Hold.MAX_MOVES, {**ev, "moves": js.moves}
    if js.last_moved is not None and now - js.last_moved < limits.min_seconds_between_moves:
        next_at = js.last_moved + limits.min_seconds_between_moves
        return Hold.TOO_SOON, {**ev, "last_moved": js.last_moved, "next_move_at": next_at}
    return None, ev


def _job_firings(
    js: JobSnapshot, v: VehicleSnapshot | None, now: int, s: RuleSettings
) -> list[Firing]:
    job = js.job
    assert job.vehicle_id is not None
    started = job.state.started or js.on_board
    out: list[Firing] = []
    mover: Rule | None = None
    for rule, ev in _detect(js, v, now, s):
        if started and rule is not Rule.FAULT:
            continue
        hold, ev = _hold(rule, ev, js, now, s)
        if hold is None and mover is not None:
            hold, ev = Hold.SUPERSEDED, {**ev, "moved_by": mover.value}
        elif hold is None:
            mover = rule
        action = Action.REALLOCATE if hold is None else Action.HOLD
        out.append(Firing(rule, job.id, job.vehicle_id, ev, action, hold))
    return out


def evaluate(snapshot: Snapshot, settings: RuleSettings) -> list[Firing]:
    """Every rule firing for the jobs on a vehicle, ordered by job id, then rule order."""
    vehicles = {v.id: v for v in snapshot.vehicles}
    firings: list[Firing] = []
    for js in sorted(snapshot.jobs, key=lambda j: j.job.id):
        job = js.job
        if not job.state.with_vehicle or job.vehicle_id is None:
            continue
        firings += _job_firings(js, vehicles.get(job.vehicle_id), snapshot.now, settings)
    return firings
