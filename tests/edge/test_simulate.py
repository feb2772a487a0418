"""Fleet simulation helpers: ids and per-vehicle settings (the drive itself is in test_agent)."""

from __future__ import annotations

from pathlib import Path

from fleetlink_edge.config import EdgeSettings
from fleetlink_edge.simulate import fleet_ids, fleet_member


def test_fleet_ids_count_up_from_the_first() -> None:
    assert fleet_ids("veh-sim-001", 3) == ["veh-sim-001", "veh-sim-002", "veh-sim-003"]
    assert fleet_ids("truck-9", 2) == ["truck-9", "truck-10"]
    assert fleet_ids("bus", 2) == ["bus-001", "bus-002"]
    assert fleet_ids("veh-sim-098", 3)[-1] == "veh-sim-100"


def test_fleet_members_have_their_own_id_and_outbox(tmp_path: Path) -> None:
    base = EdgeSettings()
    a, b = (fleet_member(base, i, tmp_path) for i in fleet_ids("veh-a-1", 2))
    assert (a.device.id, b.device.id) == ("veh-a-1", "veh-a-2")
    assert a.outbox.path == tmp_path / "veh-a-1.outbox.sqlite3"
    assert a.outbox.path != b.outbox.path
    assert a.uplink == b.uplink == base.uplink
