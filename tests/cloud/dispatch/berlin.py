"""Places in Berlin and two depots, shared by the planning tests."""

from __future__ import annotations

from fleetlink_cloud.dispatch.model import Depot, Location

PLACES = {
    "charlottenburg": Location(52.5163, 13.3041),
    "lichtenberg": Location(52.5155, 13.4990),
    "spandau": Location(52.5357, 13.1987),
    "westend": Location(52.5180, 13.2680),
    "wilmersdorf": Location(52.4870, 13.3190),
    "moabit": Location(52.5300, 13.3420),
    "alexanderplatz": Location(52.5219, 13.4132),
    "friedrichshain": Location(52.5120, 13.4540),
    "karlshorst": Location(52.4810, 13.5270),
    "marzahn": Location(52.5440, 13.5640),
    "kreuzberg": Location(52.4990, 13.4030),
    "tempelhof": Location(52.4700, 13.3850),
}
WEST = Depot("west", PLACES["charlottenburg"], "Charlottenburg")
EAST = Depot("east", PLACES["lichtenberg"], "Lichtenberg")
