"""The live dispatcher's settings: every dispatch piece's own model, and the run-time knobs.

``[dispatch]`` in the cloud TOML; the sub-sections are the pieces' own models
(``[dispatch.router]``, ``[dispatch.speeds]``, ``[dispatch.assign]``, ``[dispatch.geofence]``,
``[dispatch.rules]``) and the batch planner's (``[dispatch.planning]``). ``offer_timeout_s`` is
what the driver is asked (the offer's ``respond_by``); ``[dispatch.rules.offer]
offer_timeout_s`` is when an unanswered offer moves on.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from fleetlink_cloud.dispatch.geofence import GeofenceSettings
from fleetlink_cloud.dispatch.insertion import AssignSettings
from fleetlink_cloud.dispatch.routing import RouterSettings
from fleetlink_cloud.dispatch.rules import RuleSettings
from fleetlink_cloud.dispatch.speeds import SpeedSettings

_Seconds = Annotated[float, Field(gt=0)]


class PlanSettings(BaseModel):
    """How batch plans search, how much they may move, and what they remember."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    time_limit_s: Annotated[float, Field(gt=0)] = 2.0  # per plan, over all its solves
    max_time_limit_s: Annotated[float, Field(gt=0)] = 30.0  # the most a request may ask for
    exploration_level: Annotated[int, Field(ge=1, le=5)] = 2  # VROOM's: 1 fast .. 5 thorough
    churn_limit: Annotated[int, Field(ge=0)] | None = 10  # jobs that may change vehicle; None: any
    threads: Annotated[int, Field(ge=1)] = 1
    offline_after_s: Annotated[int, Field(ge=0)] = 900  # silent longer: no new work
    keep: Annotated[int, Field(ge=0)] = 20  # recent plans kept for reading back


class DispatchSettings(BaseModel):
    """How the running service assigns, offers, tracks and reallocates jobs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True  # False: jobs wait in state new for a dispatcher (or a planner)
    offers: bool = True  # True: offered to the driver, assigned on accept; False: assigned
    offer_timeout_s: Annotated[int, Field(gt=0)] = 120  # respond_by = offer time + this
    eta_change_threshold_s: Annotated[int, Field(ge=0)] = 120  # job.eta_changed beyond this
    eta_min_interval_s: Annotated[float, Field(ge=0)] = 5.0  # per vehicle recompute throttle
    eta_updates: bool = True  # send update_job with the new ETA to the vehicle
    eta_update_min_interval_s: Annotated[float, Field(ge=0)] = 60.0  # per job, at most this often
    en_route_speed_mps: Annotated[float, Field(gt=0)] | None = 2.0  # accepted next stop and
    # moving faster than this: en_route (None: only the driver or a geofence moves it on)
    rules_interval_s: _Seconds = 10.0  # rules, profile refresh and unassigned retries
    speeds_refresh_s: _Seconds = 300.0  # learned speeds -> the travel model
    retry_unassigned: bool = True  # offer unassigned jobs again on every rules round
    router: RouterSettings = RouterSettings()
    speeds: SpeedSettings = SpeedSettings()
    assign: AssignSettings = AssignSettings()
    geofence: GeofenceSettings = GeofenceSettings()
    rules: RuleSettings = RuleSettings()
    planning: PlanSettings = PlanSettings()  # batch plans (POST /v1/plans)
