"""Job offers as the cloud sends them: the args of ``offer_job``, ``withdraw_job`` and
``update_job`` (downlink commands, docs/protocol.md "Job offers"), checked and made values. Pure.

Times are integer Unix seconds (the cloud's dispatch resolution); positions WGS-84 degrees. Keys
this agent does not know are ignored, so a newer cloud may add fields (protocol v1: maps may gain
keys); a known key with a wrong value refuses the whole command.

JobError (EdgeError)
├── JobRefused      not done: bad arguments, an answer its job's state does not allow
│   └── UnknownJob  no job of that id on the board
└── JobNotStored    could not be kept: board full, disk or outbox failure
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from fleetlink_edge.errors import EdgeError
from fleetlink_protocols.limits import MAX_TEXT_LEN

# Stop kinds per job kind, in route order (the cloud's dispatch model: a single stop, or a
# pickup and its delivery).
STOP_KINDS: Final[Mapping[str, tuple[str, ...]]] = {
    "single": ("single",),
    "shipment": ("pickup", "delivery"),
}
MAX_WINDOWS: Final = 16
MAX_SERVICE_S: Final = 24 * 3600
MAX_JOB_ID_LEN: Final = 64
_JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]*")


class JobError(EdgeError):
    """Base of the job board's errors."""


class JobRefused(JobError):
    pass


class UnknownJob(JobRefused):
    pass


class JobNotStored(JobError):
    pass


@dataclass(frozen=True, slots=True)
class Stop:
    """Where and when: service may start within one of ``windows`` (none: any time)."""

    kind: str
    lat_deg: float
    lon_deg: float
    windows: tuple[tuple[int, int], ...] = ()  # (start, end), Unix s, inclusive
    service_s: int = 0
    address: str | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Offer:
    """One version of a job offered to this vehicle's driver."""

    job_id: str
    kind: str
    stops: tuple[Stop, ...]
    respond_by_s: int  # Unix s: the cloud wants the driver's answer by then
    version: int
    customer_ref: str | None = None


@dataclass(frozen=True, slots=True)
class Withdrawal:
    job_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class JobUpdate:
    """New ``eta_s`` (Unix s) and/or ``note`` for a job; ``fields`` names those given (None
    given clears it)."""

    job_id: str
    fields: frozenset[str]
    eta_s: int | None = None
    note: str | None = None


def check_job_id(value: object) -> str:
    """A plain identifier of at most 64 characters, such as a UUID; raises JobRefused."""
    if not isinstance(value, str) or not value:
        raise JobRefused("job_id must be a non-empty string")
    if len(value) > MAX_JOB_ID_LEN or not _JOB_ID_RE.fullmatch(value):
        raise JobRefused(f"job_id {value[:80]!r} is not a plain identifier (at most 64 characters)")
    return value


def parse_offer(args: Mapping[str, Any]) -> Offer:
    """The ``offer_job`` args (also the form the board keeps); raises JobRefused."""
    job_id = check_job_id(args.get("job_id"))
    kind = args.get("kind")
    if not isinstance(kind, str) or kind not in STOP_KINDS:
        raise JobRefused(f"kind must be one of {', '.join(STOP_KINDS)}, not {kind!r}")
    raw_stops = args.get("stops")
    wanted = STOP_KINDS[kind]
    if not isinstance(raw_stops, list) or len(raw_stops) != len(wanted):
        raise JobRefused(f"a {kind} job has {len(wanted)} stop(s): {', '.join(wanted)}")
    stops = tuple(_stop(s, i, w) for i, (s, w) in enumerate(zip(raw_stops, wanted, strict=True)))
    return Offer(
        job_id,
        kind,
        stops,
        _int(args.get("respond_by"), "respond_by"),
        _int(args.get("version"), "version"),
        _opt_text(args.get("customer_ref"), "customer_ref"),
    )


def parse_withdrawal(args: Mapping[str, Any]) -> Withdrawal:
    """The ``withdraw_job`` args; raises JobRefused."""
    return Withdrawal(
        check_job_id(args.get("job_id")), _opt_text(args.get("reason"), "reason") or ""
    )


def parse_update(args: Mapping[str, Any]) -> JobUpdate:
    """The ``update_job`` args; raises JobRefused when it changes nothing this agent knows."""
    job_id = check_job_id(args.get("job_id"))
    fields = frozenset(args) & {"eta", "note"}
    if not fields:
        raise JobRefused("update_job changes eta and/or note; neither was given")
    eta = args.get("eta")
    return JobUpdate(
        job_id,
        fields,
        None if eta is None else _int(eta, "eta"),
        _opt_text(args.get("note"), "note"),
    )


def offer_args(offer: Offer) -> dict[str, Any]:
    """``offer`` in the ``offer_job`` args form (what ``parse_offer`` reads)."""
    out: dict[str, Any] = {
        "job_id": offer.job_id,
        "kind": offer.kind,
        "stops": [stop_args(s) for s in offer.stops],
        "respond_by": offer.respond_by_s,
        "version": offer.version,
    }
    if offer.customer_ref is not None:
        out["customer_ref"] = offer.customer_ref
    return out


def stop_args(stop: Stop) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": stop.kind,
        "lat": stop.lat_deg,
        "lon": stop.lon_deg,
        "windows": [list(w) for w in stop.windows],
        "service_s": stop.service_s,
    }
    for key in ("address", "note"):
        if getattr(stop, key) is not None:
            out[key] = getattr(stop, key)
    return out


def _stop(raw: object, index: int, kind: str) -> Stop:
    what = f"stops[{index}]"
    if not isinstance(raw, Mapping):
        raise JobRefused(f"{what} must be a map")
    if raw.get("kind") != kind:
        raise JobRefused(f"{what}.kind must be {kind!r}, not {raw.get('kind')!r}")
    lat = _degrees(raw.get("lat"), f"{what}.lat", 90.0)
    lon = _degrees(raw.get("lon"), f"{what}.lon", 180.0)
    windows = raw.get("windows", [])
    if not isinstance(windows, list) or len(windows) > MAX_WINDOWS:
        raise JobRefused(f"{what}.windows must be a list of at most {MAX_WINDOWS} windows")
    service_s = _int(raw.get("service_s", 0), f"{what}.service_s")
    if service_s > MAX_SERVICE_S:
        raise JobRefused(f"{what}.service_s must be at most {MAX_SERVICE_S}")
    return Stop(
        kind,
        lat,
        lon,
        tuple(_window(w, f"{what}.windows[{i}]") for i, w in enumerate(windows)),
        service_s,
        _opt_text(raw.get("address"), f"{what}.address"),
        _opt_text(raw.get("note"), f"{what}.note"),
    )


def _window(raw: object, what: str) -> tuple[int, int]:
    if not isinstance(raw, Sequence) or isinstance(raw, str) or len(raw) != 2:
        raise JobRefused(f"{what} must be [start, end] in Unix seconds")
    start, end = _int(raw[0], f"{what} start"), _int(raw[1], f"{what} end")
    if end < start:
        raise JobRefused(f"{what} ends ({end}) before it starts ({start})")
    return start, end


def _int(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        raise JobRefused(f"{what} must be an unsigned integer, not {value!r}")
    return value


def _degrees(value: object, what: str, limit: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JobRefused(f"{what} must be a number of degrees, not {value!r}")
    if not math.isfinite(value) or abs(value) > limit:
        raise JobRefused(f"{what} must be within ±{limit:g} degrees, not {value!r}")
    return float(value)


def _opt_text(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT_LEN:
        raise JobRefused(f"{what} must be a string of at most {MAX_TEXT_LEN} characters")
    return value
