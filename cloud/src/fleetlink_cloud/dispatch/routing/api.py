"""What an HTTP routing server speaks, without I/O: requests to build, answers to parse.

``osrm`` and ``valhalla`` implement :class:`RouterApi`; ``http.HttpRouter`` sends what they build
and gives them what comes back. The helpers here turn a JSON body into checked number rows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from fleetlink_cloud.dispatch.model import Location
from fleetlink_cloud.dispatch.routing import RouterResponseError

Cells = list[list[float | None]]  # [source][destination]; None: the server found no route


@dataclass(frozen=True, slots=True)
class HttpCall:
    """One request: ``target`` is the path and query, already encoded."""

    method: Literal["GET", "POST"]
    target: str
    json_body: Any = None


class RouterApi(Protocol):
    """A routing server's request format and answer format."""

    @property
    def name(self) -> str: ...

    def call(self, sources: Sequence[Location], destinations: Sequence[Location]) -> HttpCall: ...

    def parse(
        self, status: int, body: bytes, n_sources: int, n_destinations: int
    ) -> tuple[Cells, Cells]:
        """(durations in s, distances in m); raises RouterRefused or RouterResponseError."""
        ...


def json_object(name: str, body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or :class:`RouterResponseError`."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RouterResponseError(f"{name}: the answer is not JSON: {body[:80]!r}") from exc
    if not isinstance(data, dict):
        raise RouterResponseError(f"{name}: the answer is not a JSON object")
    return data


def number(name: str, value: object, scale: float = 1.0) -> float | None:
    """A finite non-negative number times ``scale``, None for null; else RouterResponseError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RouterResponseError(f"{name}: expected a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise RouterResponseError(f"{name}: expected a non-negative number, got {value!r}")
    return float(value) * scale


def rows(name: str, value: object, n: int, m: int, scale: float = 1.0) -> Cells:
    """An ``n`` by ``m`` array of arrays of numbers (or null), checked."""
    if not isinstance(value, list) or len(value) != n:
        raise RouterResponseError(f"{name}: expected {n} rows")
    out: Cells = []
    for row in value:
        if not isinstance(row, list) or len(row) != m:
            raise RouterResponseError(f"{name}: expected rows of {m} values")
        out.append([number(name, v, scale) for v in row])
    return out
