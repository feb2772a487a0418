"""Parsing real Solomon and Gehring & Homberger files; evaluating hand-built route sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetlink_cloud.dispatch.solomon import (
    InstanceFormatError,
    Node,
    evaluate,
    parse,
    route_distance,
)


def instance_text(rows: list[tuple[int, ...]], vehicles: int = 2, capacity: int = 10) -> str:
    """A tiny instance in the file format, CRLF line endings like most of the real files."""
    lines = ["TINY", "", "VEHICLE", "NUMBER     CAPACITY", f"  {vehicles}  {capacity}", ""]
    lines += ["CUSTOMER", "CUST NO.  XCOORD.  YCOORD.  DEMAND  READY TIME  DUE DATE  SERVICE TIME"]
    lines += [" "]
    lines += ["  ".join(str(v) for v in row) for row in rows]
    return "\r\n".join(lines) + "\r\n"


# Depot at the origin, horizon [0, 100]; customer 1 five units away, customer 2 ten.
TINY = instance_text([(0, 0, 0, 0, 0, 100, 0), (1, 3, 4, 4, 0, 10, 1), (2, 6, 8, 5, 0, 20, 1)])


def test_parse_c101(shared_data: Path) -> None:
    inst = parse((shared_data / "solomon" / "C101.txt").read_text())
    assert (inst.name, inst.vehicles, inst.capacity) == ("C101", 25, 200)
    assert len(inst.customers) == 100
    assert inst.depot == Node(0, 40, 50, 0, 0, 1236, 0)
    assert inst.nodes[5] == Node(5, 42, 65, 10, 15, 67, 90)
    assert sum(c.demand for c in inst.customers) == 1810


def test_parse_r101_mixed_line_endings(shared_data: Path) -> None:
    inst = parse((shared_data / "solomon" / "R101.txt").read_text())
    assert (inst.name, inst.vehicles, len(inst.customers)) == ("R101", 25, 100)
    assert inst.depot == Node(0, 35, 35, 0, 0, 230, 0)
    assert inst.nodes[2] == Node(2, 35, 17, 7, 50, 60, 10)


def test_parse_homberger(shared_data: Path) -> None:
    inst = parse((shared_data / "homberger" / "c1_2_1.txt").read_text())
    assert (inst.name, inst.vehicles, inst.capacity, len(inst.customers)) == (
        "c1_2_1",
        50,
        200,
        200,
    )
    assert inst.nodes[1] == Node(1, 33, 78, 20, 750, 809, 90)


def test_parse_every_shared_file(shared_data: Path) -> None:
    files = sorted((shared_data / "solomon").glob("*.txt"))
    assert len(files) == 56
    for path in files:
        inst = parse(path.read_text())
        assert inst.name == path.stem
        assert len(inst.customers) == 100


@pytest.mark.parametrize(
    "text",
    [
        "",
        "C101\nVEHICLE\nNUMBER CAPACITY\n25\n",
        TINY.replace("  0  0  0  0  100  0", "  0  0  0  0  100"),  # a row one number short
        TINY.replace("2  6  8", "7  6  8"),  # ids must count 0, 1, 2...
        TINY.replace("  2  10", "  0  10"),  # no vehicles
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(InstanceFormatError):
        parse(text)


def test_evaluate_feasible() -> None:
    inst = parse(TINY)
    both = evaluate(inst, [[1, 2]])
    assert both.feasible, both.problems
    assert both.vehicles == 1
    assert both.distance == pytest.approx(20.0)
    split = evaluate(inst, [[1], [], [2]])  # empty routes are not vehicles
    assert split.feasible
    assert (split.vehicles, split.distance) == (2, pytest.approx(30.0))
    assert route_distance(inst, []) == 0.0


def test_evaluate_time_window_capacity_cover() -> None:
    inst = parse(TINY)
    # 2 first: served at 10, leaves at 11, reaches 1 at 16 > its due time 10.
    late = evaluate(inst, [[2, 1]])
    assert not late.feasible
    assert any("customer 1 served at 16.00" in p for p in late.problems)
    small = parse(TINY.replace("  2  10", "  2  8"))
    assert any("carries 9 > capacity 8" in p for p in evaluate(small, [[1, 2]]).problems)
    missed = evaluate(inst, [[1]])
    assert missed.problems == ("1 customers not served, e.g. [2]",)
    twice = evaluate(inst, [[1, 2], [2]])
    assert any("served more than once" in p for p in twice.problems)
    one_vehicle = parse(TINY.replace("  2  10", "  1  10"))
    assert any("2 routes for 1 vehicles" in p for p in evaluate(one_vehicle, [[1], [2]]).problems)


def test_evaluate_horizon_and_strangers() -> None:
    inst = parse(TINY.replace("0  0  0  0  100  0", "0  0  0  0  18  0"))
    # Served at 5 and 11, one unit of service each, back at 22.
    assert any("returns at 22.00 > horizon 18" in p for p in evaluate(inst, [[1, 2]]).problems)
    with pytest.raises(ValueError, match="not customer ids"):
        evaluate(inst, [[1, 3]])
