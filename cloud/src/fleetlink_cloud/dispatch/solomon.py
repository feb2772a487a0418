"""Solomon-format VRPTW instances: parse the text, evaluate a set of routes. No I/O, no solver.

The format (Solomon 1987; Gehring & Homberger use the same): the instance name, a ``VEHICLE``
block (number of identical vehicles, their capacity), then a ``CUSTOMER`` block of rows
``id x y demand ready_time due_time service_time``. Row 0 is the depot; its window is the
planning horizon. The literature's conventions, which :func:`evaluate` applies:

* travel distance = travel time = the Euclidean distance, not rounded;
* service must *start* within ``[ready, due]``; arriving early means waiting; service may end
  after ``due``;
* every route leaves the depot at or after its ready time and is back by its due time, and the
  demand it serves does not exceed the capacity;
* every customer is served exactly once.

Times, demands and coordinates are in the instance's own units (the benchmark has none).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from fleetlink_cloud.errors import CloudError

_FIELDS = 7  # id x y demand ready due service
# Float slack for comparisons of sums of square roots against integer windows.
_EPS = 1e-6


class InstanceFormatError(CloudError, ValueError):
    """The text is not a Solomon-format instance (raised by :func:`parse`)."""


@dataclass(frozen=True, slots=True)
class Node:
    """One row of the ``CUSTOMER`` block: the depot (id 0) or a customer."""

    id: int
    x: float
    y: float
    demand: int
    ready: int
    due: int
    service: int


@dataclass(frozen=True, slots=True)
class Instance:
    """A parsed instance. ``nodes[0]`` is the depot, ``nodes[i]`` the customer with id ``i``."""

    name: str
    vehicles: int
    capacity: int
    nodes: tuple[Node, ...]

    @property
    def depot(self) -> Node:
        return self.nodes[0]

    @property
    def customers(self) -> tuple[Node, ...]:
        return self.nodes[1:]

    def distance(self, a: int, b: int) -> float:
        """Euclidean distance (= travel time) between the nodes with ids ``a`` and ``b``."""
        na, nb = self.nodes[a], self.nodes[b]
        return math.hypot(na.x - nb.x, na.y - nb.y)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What :func:`evaluate` found: ``feasible`` is true when ``problems`` is empty."""

    vehicles: int
    distance: float
    problems: tuple[str, ...]

    @property
    def feasible(self) -> bool:
        return not self.problems


def parse(text: str) -> Instance:
    """Parse the text of an instance file; raises :class:`InstanceFormatError`.

    Splits on whitespace, so CRLF, LF and mixed line endings and blank lines are all fine.
    """
    tokens = text.split()
    if not tokens:
        raise InstanceFormatError("empty instance")
    try:
        capacity_at = tokens.index("CAPACITY")
        vehicles, capacity = int(tokens[capacity_at + 1]), int(tokens[capacity_at + 2])
        header_end = tokens.index("TIME", tokens.index("SERVICE")) + 1
        values = [int(t) for t in tokens[header_end:]]
    except (ValueError, IndexError) as exc:
        raise InstanceFormatError("no well-formed VEHICLE and CUSTOMER blocks") from exc
    if not values or len(values) % _FIELDS:
        raise InstanceFormatError(f"customer rows need {_FIELDS} integers each")
    rows = [values[i : i + _FIELDS] for i in range(0, len(values), _FIELDS)]
    nodes = tuple(Node(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows)
    for index, node in enumerate(nodes):
        if node.id != index:
            raise InstanceFormatError(f"row {index} has id {node.id}: ids must be 0, 1, 2...")
    if vehicles < 1 or capacity < 1:
        raise InstanceFormatError("the fleet needs at least one vehicle with some capacity")
    return Instance(tokens[0], vehicles, capacity, nodes)


def route_distance(instance: Instance, route: Sequence[int]) -> float:
    """Length of depot → ``route`` (customer ids) → depot."""
    stops = [0, *route, 0]
    return sum(instance.distance(a, b) for a, b in itertools.pairwise(stops))


def route_problems(instance: Instance, route: Sequence[int]) -> list[str]:
    """Capacity and time-window violations of one route, as readable sentences."""
    problems = []
    load = sum(instance.nodes[c].demand for c in route)
    if load > instance.capacity:
        problems.append(f"route {list(route)} carries {load} > capacity {instance.capacity}")
    depot = instance.depot
    time, previous = float(depot.ready), 0
    for c in route:
        node = instance.nodes[c]
        time = max(time + instance.distance(previous, c), float(node.ready))
        if time > node.due + _EPS:
            problems.append(f"customer {c} served at {time:.2f}, after its due time {node.due}")
        time += node.service
        previous = c
    back = time + instance.distance(previous, 0)
    if back > depot.due + _EPS:
        problems.append(f"route {list(route)} returns at {back:.2f} > horizon {depot.due}")
    return problems


def evaluate(instance: Instance, routes: Sequence[Sequence[int]]) -> Evaluation:
    """Check ``routes`` (lists of customer ids, depot implied at both ends) and measure them.

    Empty routes are ignored. Problems found: customers missed or served twice, routes over
    capacity, service starting after a due time, returns after the horizon, more routes than
    vehicles. Raises ``ValueError`` if a route names an id that is not a customer's.
    """
    used = [list(r) for r in routes if r]
    strangers = [c for r in used for c in r if not 1 <= c < len(instance.nodes)]
    if strangers:
        raise ValueError(f"not customer ids of {instance.name}: {strangers[:10]}")
    problems: list[str] = []
    served = Counter(c for r in used for c in r)
    missed = [c.id for c in instance.customers if c.id not in served]
    twice = sorted(c for c, n in served.items() if n > 1)
    if missed:
        problems.append(f"{len(missed)} customers not served, e.g. {missed[:10]}")
    if twice:
        problems.append(f"{len(twice)} customers served more than once, e.g. {twice[:10]}")
    if len(used) > instance.vehicles:
        problems.append(f"{len(used)} routes for {instance.vehicles} vehicles")
    for route in used:
        problems.extend(route_problems(instance, route))
    distance = sum(route_distance(instance, r) for r in used)
    return Evaluation(len(used), distance, tuple(problems))
