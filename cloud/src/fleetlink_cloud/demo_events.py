"""What ``fleetlink-cloud demo`` prints for the dispatch stream: one short line per event.

Pure: :class:`DispatchFeed` reads the stream's JSON events (docs/cloud.md, "Dispatch stream
events") and, where a line needs more than the event holds, what the API says about the job
(``GET /v1/jobs/{id}``: its stops, the assigner's explanation) or the vehicle's route
(``GET /v1/vehicles/{id}/route``: the ETAs). :meth:`DispatchFeed.lookup` names what to fetch;
the caller fetches it. The feed also counts jobs by state for the summary line.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any, Final

STREAM_TYPES: Final = (
    "job.created",
    "job.state_changed",  # job.assigned is one of these, to assigned: not asked for twice
    "job.unassigned",
    "job.updated",
    "job.eta_changed",
    "job.reallocated",
    "vehicle.offline",
    "vehicle.online",
    "dtc.raised",
)
STATE_ORDER: Final = (
    "new",
    "offered",
    "assigned",
    "en_route",
    "arrived",
    "completed",
    "failed",
    "cancelled",
)
_AT_OR_PAST_STOP: Final = frozenset({"arrived", "completed", "failed", "cancelled"})
_ASSIGNER_REASON: Final = "instant_assignment"  # the everyday one goes unsaid
_OFFLINE_REASONS: Final = {"timeout": "no data", "death": "last will"}
_ANSWERED: Final = {
    "driver_arrived": "driver",
    "driver_completed": "driver",
    "geofence_arrival": "geofence",
    "geofence_departure": "geofence",
}

Event = Mapping[str, Any]
Clock = Callable[[object], str]  # Unix seconds -> "12:41"


@dataclass(frozen=True, slots=True)
class Lookup:
    """What a line needs fetched: the job, and/or the route of ``route_of``."""

    job_id: str | None = None
    route_of: str | None = None


@dataclass(frozen=True, slots=True)
class Looked:
    """What was fetched (None: not asked for, or the API did not answer)."""

    job: Mapping[str, Any] | None = None
    route: Mapping[str, Any] | None = None


class DispatchFeed:
    """Lines for dispatch events, and the tally of jobs by state they imply. ``watched_dtcs``:
    the codes the fault rule acts on (other trouble codes are not dispatch news)."""

    def __init__(self, *, watched_dtcs: Iterable[str] = (), tz: tzinfo | None = None) -> None:
        self._watched = {c.upper() for c in watched_dtcs}
        self._tz = tz  # None: the machine's local time
        self.states: dict[str, str] = {}  # job id -> state, as the stream said
        self.reallocations = 0
        self._offline: set[str] = set()

    def lookup(self, event: Event) -> Lookup | None:
        """What :meth:`line` needs beyond the event, or None."""
        data = _data(event)
        job_id = data.get("job_id")
        if not isinstance(job_id, str):
            return None
        if event.get("type") == "job.created":
            return Lookup(job_id=job_id)
        if event.get("type") != "job.state_changed":
            return None
        if data.get("to_state") == "offered":
            return Lookup(job_id=job_id)
        vehicle = data.get("vehicle_id")
        if data.get("to_state") == "assigned" and isinstance(vehicle, str):
            return Lookup(job_id=job_id, route_of=vehicle)
        return None

    def line(self, event: Event, looked: Looked | None = None) -> str | None:
        """The event's line (None: nothing worth a line); counts it in the tally."""
        looked = looked or Looked()
        kind, data = event.get("type"), _data(event)
        job = str(data.get("job_id", "?"))
        if kind == "job.created":
            self.states[job] = "new"
            return f"dispatch job {job} created{_job_text(looked.job, self._clock)}"
        if kind == "job.state_changed":
            self.states[job] = str(data.get("to_state"))
            text = self._transition(data, looked)
            return None if text is None else f"dispatch job {job} {text}"
        if kind == "job.unassigned" and data.get("kind") == "unassigned":
            return f"dispatch job {job} unassigned ({_tally(data.get('unassigned_reasons'))})"
        if kind == "job.reallocated":
            self.reallocations += 1
            return f"dispatch job {job} {_reallocated(data)}"
        if kind == "job.eta_changed":
            return self._eta_changed(job, data)
        if kind == "job.updated":
            return _updated(job, data)
        return self._vehicle(str(event.get("device_id", "?")), kind, data)

    def summary(self) -> str:
        """``dispatch: 15 jobs (new 1, offered 2, assigned 6, ...), 2 reallocated``."""
        by_state = Counter(self.states.values())
        known = [s for s in STATE_ORDER if by_state[s]]
        known += sorted(s for s in by_state if s not in STATE_ORDER)
        parts = ", ".join(f"{s} {by_state[s]}" for s in known)
        return (
            f"dispatch: {len(self.states)} jobs ({parts or 'none yet'}), "
            f"{self.reallocations} reallocated"
        )

    # -- the lines -----------------------------------------------------------------------------

    def _clock(self, unix_s: object) -> str:
        if not isinstance(unix_s, int | float) or isinstance(unix_s, bool):
            return "?"
        return datetime.fromtimestamp(unix_s, self._tz).strftime("%H:%M")

    def _transition(self, data: Mapping[str, Any], looked: Looked) -> str | None:
        to, reason = data.get("to_state"), str(data.get("reason", ""))
        vehicle, before = data.get("vehicle_id"), data.get("vehicle_before")
        evidence = _mapping(data.get("evidence"))
        if to == "offered":
            return f"offered to {vehicle} ({_offer_text(reason, evidence, looked.job)})"
        if to == "assigned":
            why = "" if reason in ("driver_accepted", _ASSIGNER_REASON) else f" ({reason})"
            eta = _eta_text(str(data.get("job_id")), looked, self._clock)
            return f"assigned to {vehicle}{why}{eta}"
        if to == "en_route":
            if reason == "geofence_departure":
                return f"picked up by {vehicle}, on to the delivery"
            speed = evidence.get("speed_mps")
            return f"en route on {vehicle}" + ("" if speed is None else f" ({speed} m/s)")
        if to == "arrived":
            return f"arrived{_at_stop(evidence)} ({_arrival_how(reason, evidence)})"
        if to == "completed":
            return f"completed by {vehicle or before} ({_ANSWERED.get(reason, reason)})"
        if to in ("failed", "cancelled"):
            where = "" if not (vehicle or before) else f" on {vehicle or before}"
            return f"{to}{where} ({reason})"
        if to == "new":
            if reason == "reallocated":
                return None  # its job.reallocated line says so
            if reason == "driver_rejected":
                return f"rejected by {before} (driver)"
            reasons = ", ".join(str(r) for r in evidence.get("unassigned_reasons") or ())
            return f"unassigned from {before} ({reason}{'; ' + reasons if reasons else ''})"
        return f"{data.get('from_state')} -> {to} ({reason})"

    def _eta_changed(self, job: str, data: Mapping[str, Any]) -> str | None:
        delta = data.get("delta_s")
        if not isinstance(delta, int | float):
            return None
        stop = data.get("stop")
        if stop != "delivery" and self.states.get(job) in _AT_OR_PAST_STOP:
            return None  # the vehicle is there (or done): its ETA is no news
        which = f" {stop}" if stop in ("pickup", "delivery") else ""
        late = data.get("lateness_s")
        tail = f", {_minutes(late)} late" if isinstance(late, int | float) and late > 0 else ""
        return (
            f"dispatch job {job}{which} ETA {self._clock(data.get('previous'))} -> "
            f"{self._clock(data.get('eta'))} ({delta / 60:+.0f} min{tail})"
        )

    def _vehicle(self, vehicle: str, kind: object, data: Mapping[str, Any]) -> str | None:
        if kind == "vehicle.offline":
            self._offline.add(vehicle)
            why = _OFFLINE_REASONS.get(str(data.get("reason")), str(data.get("reason")))
            return f"dispatch vehicle {vehicle} offline ({why})"
        if kind == "vehicle.online" and vehicle in self._offline:
            self._offline.discard(vehicle)
            return f"dispatch vehicle {vehicle} back online"
        code = str(data.get("code", "")).upper()
        if kind == "dtc.raised" and code in self._watched:
            about = data.get("description")
            return f"dispatch vehicle {vehicle} fault {code}" + (f" ({about})" if about else "")
        return None


def _data(event: Event) -> Mapping[str, Any]:
    return _mapping(event.get("data"))


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _minutes(seconds: float) -> str:
    return f"{round(seconds / 60)} min"


def _tally(reasons: object) -> str:
    """``[{"reason": "too_far", "vehicles": 4}, ...]`` as ``too_far 4, ...``."""
    items = [_mapping(r) for r in reasons] if isinstance(reasons, list) else []
    return ", ".join(f"{r.get('reason')} {r.get('vehicles')}" for r in items) or "no reason given"


def _job_text(job: Mapping[str, Any] | None, clock: Clock) -> str:
    """``: pickup 12:50-13:30, delivery 13:20-14:05, 4 min, demand 2, needs refrigerated``."""
    if job is None:
        return ""

    def window(stop: object) -> str:
        ws = [_mapping(w) for w in _mapping(stop).get("windows") or ()]
        if not ws:
            return "any time"
        return ", ".join(f"{clock(w.get('start_unix_s'))}-{clock(w.get('end_unix_s'))}" for w in ws)

    stop = _mapping(job.get("stop"))
    if job.get("pickup"):
        parts = [f"pickup {window(job['pickup'])}", f"delivery {window(stop)}"]
    else:
        parts = [f"stop {window(stop)}", f"{_minutes(float(stop.get('service_s') or 0))} service"]
    demand = job.get("demand") or []
    if demand:
        parts.append("demand " + "/".join(str(d) for d in demand))
    if job.get("skills"):
        parts.append("needs " + ", ".join(str(s) for s in job["skills"]))
    return ": " + ", ".join(parts)


def _offer_text(reason: str, evidence: Mapping[str, Any], job: Mapping[str, Any] | None) -> str:
    """``+312 s driving, 7 candidates, 2 excluded: skills 1, capacity 1``."""
    parts = [] if reason == _ASSIGNER_REASON else [reason]
    added = evidence.get("added_travel_s")
    if isinstance(added, int | float):
        parts.append(f"{added:+.0f} s driving")
    candidates = evidence.get("candidates")
    if isinstance(candidates, int):
        parts.append(f"{candidates} candidate{'' if candidates == 1 else 's'}")
    explanation = _mapping(None if job is None else job.get("explanation"))
    excluded = [_mapping(e) for e in explanation.get("excluded") or ()]
    if excluded:
        why = Counter(str(e.get("reason")) for e in excluded)
        listed = ", ".join(f"{r} {n}" for r, n in sorted(why.items(), key=lambda x: (-x[1], x[0])))
        parts.append(f"{len(excluded)} excluded: {listed}")
    return ", ".join(parts) or reason


def _eta_text(job_id: str, looked: Looked, clock: Clock) -> str:
    """``, ETA 12:41 (12:38-12:46)`` of the job's next stop: from the vehicle's stored route,
    else from the assigner's explanation (empty when neither has it)."""
    found: list[tuple[str, object, object, object]] = []  # kind, eta, early, late
    for s in (_mapping(s) for s in _mapping(looked.route).get("stops") or ()):
        if s.get("job_id") == job_id and s.get("eta_unix_s") is not None:
            found.append(
                (str(s.get("kind")), s["eta_unix_s"], s.get("early_unix_s"), s.get("late_unix_s"))
            )
    if not found:
        explanation = _mapping(None if looked.job is None else looked.job.get("explanation"))
        for s in (_mapping(s) for s in _mapping(explanation.get("eta")).get("stops") or ()):
            if s.get("job_id") == job_id and s.get("arrival") is not None:
                found.append((str(s.get("kind")), s["arrival"], s.get("early"), s.get("late")))
    if not found:
        return ""
    kind, eta, early, late = found[0]
    which = f"{kind} " if kind in ("pickup", "delivery") else ""
    span = "" if early is None or late is None else f" ({clock(early)}-{clock(late)})"
    return f", {which}ETA {clock(eta)}{span}"


def _at_stop(evidence: Mapping[str, Any]) -> str:
    stop = evidence.get("stop")
    return f" at {stop}" if stop in ("pickup", "delivery") else ""


def _arrival_how(reason: str, evidence: Mapping[str, Any]) -> str:
    dwell = evidence.get("dwell_s")
    if reason == "geofence_arrival" and isinstance(dwell, int | float):
        return f"geofence, dwell {dwell:.0f} s"
    return _ANSWERED.get(reason, reason)


def _reallocated(data: Mapping[str, Any]) -> str:
    """``reallocated veh-1 -> veh-2 (rule offline: silent 95 s)``."""
    rule, ev = str(data.get("rule")), _mapping(data.get("evidence"))
    new = data.get("new_vehicle_id") or "nobody (unassigned)"
    detail = ""
    if rule == "offline" and isinstance(ev.get("offline_s"), int | float):
        detail = f": silent {ev['offline_s']:.0f} s"
    elif rule == "fault":
        codes = [*(ev.get("listed_dtcs") or ()), *(ev.get("red_stop_lamp_codes") or ())]
        detail = ": " + (", ".join(str(c) for c in codes) if codes else "MIL on")
    elif rule == "offer_timeout" and isinstance(ev.get("waited_s"), int | float):
        detail = f": unanswered {ev['waited_s']:.0f} s"
    elif rule == "late" and isinstance(ev.get("late_s"), int | float):
        detail = f": {_minutes(ev['late_s'])} late"
    elif rule == "low_fuel" and ev.get("fuel_pct") is not None:
        detail = f": fuel {ev['fuel_pct']} %"
    return f"reallocated {data.get('old_vehicle_id')} -> {new} (rule {rule}{detail})"


def _updated(job: str, data: Mapping[str, Any]) -> str | None:
    kind, ev = data.get("kind"), _mapping(data.get("evidence"))
    if kind == "delayed" and isinstance(ev.get("delay_s"), int | float):
        why = data.get("reason_text") or ""
        return f"dispatch job {job} delayed {_minutes(ev['delay_s'])}" + (
            f" ({why})" if why else ""
        )
    if kind == "locked":
        return f"dispatch job {job} locked to {ev.get('vehicle_id')}"
    if kind == "unlocked":
        return f"dispatch job {job} unlocked"
    return None
