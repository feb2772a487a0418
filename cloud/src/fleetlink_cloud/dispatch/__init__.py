"""Dispatch: plan vehicle routes.

``solomon`` parses Solomon-format VRPTW instances and evaluates route sets (pure);
``vroom_solver`` plans routes with VROOM (imported only when a plan is asked for, so the rest of
the cloud does not load pyvroom). Nothing here reads files or the environment.
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
