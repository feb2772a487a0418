"""The work ``fleetlink-cloud demo`` gives its fleet: seeded random jobs around the fleet's centre
and the simulated vehicles' dispatch profiles, as the JSON bodies of the public API.

Pure: the caller gives the time (Unix seconds) and does the requests. Jobs look like a city's
deliveries: a stop within ``radius_m`` of the centre, a window opening 10 to 90 minutes ahead and
20 to 60 minutes wide, 2 to 5 minutes of service, one demand dimension (parcels). About one in
five is a pickup and its delivery; a few need a skill only one vehicle has, a few are bulky
enough that only a van can take them. Vehicles alternate between vans and cars.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

SKILL: Final = "refrigerated"
VAN_CAPACITY: Final = (14,)  # parcels
CAR_CAPACITY: Final = (8,)
M_PER_DEG_LAT: Final = 111_320.0  # spherical Earth: near enough for points a few km apart
SHIFT_BEFORE_S: Final = 600  # the shifts began a little before the demo
SHIFT_AFTER_S: Final = 4 * 3600  # ...and last past its end, beyond the last job's windows
OPEN_ENDED_SHIFT_S: Final = 12 * 3600  # a demo without --duration


@dataclass(frozen=True, slots=True)
class JobMix:
    """What the generated jobs look like (seconds, metres, shares between 0 and 1)."""

    radius_m: float = 3000.0
    lead_s: tuple[int, int] = (600, 5400)  # the first window opens this far ahead
    width_s: tuple[int, int] = (1200, 3600)
    service_s: tuple[int, int] = (120, 300)
    delivery_after_s: tuple[int, int] = (900, 2400)  # a delivery window opens after its pickup's
    shipment_share: float = 0.2
    skill_share: float = 0.1
    bulky_share: float = 0.1
    demand: tuple[int, int] = (1, 3)
    bulky_demand: tuple[int, int] = (9, 12)  # more than a car holds


@dataclass(frozen=True, slots=True)
class DemoJob:
    """One job to create: ``POST /v1/jobs`` with ``body`` and the ``Idempotency-Key`` ``key``."""

    key: str
    body: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.body["id"])


class JobGenerator:
    """Jobs one after the other from ``seed``: the same seed, centre and times give the same jobs.
    Ids are ``prefix`` and a counter (``j3fa2-0007``), so runs sharing a database stay apart."""

    def __init__(
        self,
        lat_deg: float,
        lon_deg: float,
        *,
        seed: int,
        prefix: str = "j",
        mix: JobMix | None = None,
        skills: bool = True,
    ) -> None:
        self._lat, self._lon = lat_deg, lon_deg
        self._rng = random.Random(seed)
        self._prefix = prefix
        self.mix = mix or JobMix()
        self._skills = skills  # False: no vehicle has SKILL, so no job asks for it
        self.made = 0

    def next(self, now_s: int) -> DemoJob:
        """The next job, its windows counted from ``now_s``."""
        mix, rng = self.mix, self._rng
        self.made += 1
        job_id = f"{self._prefix}{self.made:04d}"
        first = self._window(now_s + rng.randint(*mix.lead_s))
        body: dict[str, Any] = {"id": job_id}
        if rng.random() < mix.shipment_share:
            body["pickup"] = self._stop(first)
            opens = first["start_unix_s"] + rng.randint(*mix.delivery_after_s)
            body["stop"] = self._stop(self._window(opens))
        else:
            body["stop"] = self._stop(first)
        bulky = rng.random() < mix.bulky_share
        body["demand"] = [rng.randint(*(mix.bulky_demand if bulky else mix.demand))]
        if self._skills and rng.random() < mix.skill_share:
            body["skills"] = [SKILL]
        return DemoJob(f"fleetlink-demo:{job_id}", body)

    def _window(self, start_s: int) -> dict[str, int]:
        return {
            "start_unix_s": start_s,
            "end_unix_s": start_s + self._rng.randint(*self.mix.width_s),
        }

    def _stop(self, window: dict[str, int]) -> dict[str, Any]:
        lat, lon = self._point()
        return {
            "location": {"lat_deg": lat, "lon_deg": lon},
            "windows": [window],
            "service_s": self._rng.randint(*self.mix.service_s),
        }

    def _point(self) -> tuple[float, float]:
        """Uniform over the disc of ``radius_m`` around the centre (sqrt: equal area per ring)."""
        r = self.mix.radius_m * math.sqrt(self._rng.random())
        theta = 2 * math.pi * self._rng.random()
        dlat = r * math.cos(theta) / M_PER_DEG_LAT
        dlon = r * math.sin(theta) / (M_PER_DEG_LAT * math.cos(math.radians(self._lat)))
        return round(self._lat + dlat, 6), round(self._lon + dlon, 6)


def fleet_profiles(
    vehicle_ids: Sequence[str],
    now_s: int,
    duration_s: float | None,
    *,
    skilled: str | None,
) -> dict[str, dict[str, Any]]:
    """``PUT /v1/vehicles/{id}/dispatch`` bodies: vans and cars in turn (the first a van), SKILL
    on ``skilled`` only, one shift covering the demo and the windows of the jobs it creates."""
    length_s = OPEN_ENDED_SHIFT_S if duration_s is None else math.ceil(duration_s) + SHIFT_AFTER_S
    shift = {"start_unix_s": now_s - SHIFT_BEFORE_S, "end_unix_s": now_s + length_s}
    return {
        vid: {
            "skills": [SKILL] if vid == skilled else [],
            "capacity": list(VAN_CAPACITY if i % 2 == 0 else CAR_CAPACITY),
            "shifts": [shift],
        }
        for i, vid in enumerate(vehicle_ids)
    }


def spacing_s(jobs_per_minute: float) -> float:
    """Seconds between two jobs at a steady ``jobs_per_minute`` (> 0)."""
    if not jobs_per_minute > 0:
        raise ValueError("jobs_per_minute must be positive")
    return 60.0 / jobs_per_minute
