"""Dispatch: plan vehicle routes.

``solomon`` parses Solomon-format VRPTW instances and evaluates route sets (pure);
``vroom_solver`` plans routes with VROOM (imported only when a plan is asked for, so the rest of
the cloud does not load pyvroom). Nothing here reads files or the environment.

Instant dispatch, all pure but the HTTP routers: ``routing`` (travel times: the builtin
great-circle model, OSRM, Valhalla), ``speeds`` (speeds learned from the fleet's fixes),
``slack`` (a live route walked once), ``insertion`` (where a job fits into one route, with
bounds), ``assignment`` (the best vehicle and the explanation) and ``eta`` (live ETAs).
"""

from __future__ import annotations

from fleetlink_cloud.dispatch.solomon import (
    Evaluation,
    Instance,
    InstanceFormatError,
    Node,
    evaluate,
    parse,
    route_distance,
)

__all__ = [
    "Evaluation",
    "Instance",
    "InstanceFormatError",
    "Node",
    "evaluate",
    "parse",
    "route_distance",
]
