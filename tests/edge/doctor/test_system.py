"""Clock, disk and outbox checks: the pure verdicts, and real outbox files in tmp_path read
without a single byte of them changing."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

import pytest

from fleetlink_edge.config import OutboxSettings
from fleetlink_edge.doctor import system
from fleetlink_edge.doctor.findings import Status
from fleetlink_edge.doctor.gnss import FixSample
from fleetlink_edge.doctor.system import Backlog, DiskObservation
from fleetlink_edge.outbox import Outbox
from fleetlink_protocols.records import FixMode, Health, Position

S = 1_000_000_000
NOW = 1_796_000_000 * S  # 2026-11-30
BUILD = NOW - 30 * 86_400 * S
MIB = 1 << 20


def fix_at(gnss_ns: int, system_ns: int = NOW) -> FixSample:
    return FixSample(gnss_ns, system_ns, 3, 52.5, 13.4, 9)


# -- clock ----------------------------------------------------------------------------------------


def test_clock_before_the_build_fails() -> None:
    clock = system.clock_finding(0, BUILD, None)
    assert clock.status is Status.FAIL
    assert "1970-01-01" in clock.summary
    assert "timedatectl" in (clock.fix or "")


def test_clock_without_gnss_is_ok() -> None:
    clock = system.clock_finding(NOW, BUILD, None)
    assert clock.status is Status.OK
    assert "no GNSS time" in clock.summary


@pytest.mark.parametrize(
    ("offset_s", "status"),
    [(0.4, Status.OK), (-1.5, Status.OK), (30.0, Status.WARN), (-3600.0, Status.FAIL)],
)
def test_clock_against_gnss_time(offset_s: float, status: Status) -> None:
    clock = system.clock_finding(NOW, BUILD, fix_at(NOW - int(offset_s * S)))
    assert clock.status is status
    assert clock.detail["offset_s"] == pytest.approx(offset_s)


def test_gnss_date_before_the_build_is_a_week_rollover() -> None:
    rolled = NOW - 1024 * 7 * 86_400 * S
    clock = system.clock_finding(NOW, BUILD, fix_at(rolled))
    assert clock.status is Status.FAIL
    assert "rollover_reference" in (clock.fix or "")


def test_gnss_exactly_1024_weeks_off_is_a_week_rollover() -> None:
    # A receiver whose date the rollover correction moved one epoch too far: after the build.
    ahead = NOW + system.GPS_WEEK_ROLLOVER_S * S + 3 * S
    clock = system.clock_finding(NOW, BUILD, fix_at(ahead))
    assert clock.status is Status.FAIL
    assert "rollover" in (clock.fix or "")
    assert "-7168 days" in clock.summary


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.42, "+0.4 s"),
        (-90.0, "-90.0 s"),
        (720.0, "+12 min"),
        (-19_080.0, "-5.3 h"),
        (864_000.0, "+10 days"),
    ],
)
def test_spans_read_like_people_write_them(seconds: float, text: str) -> None:
    assert system.span(seconds) == text


def test_build_time_is_not_in_the_future() -> None:
    assert system.build_time_ns() <= time.time_ns()
    assert system.build_time_ns() >= int(system.RELEASE_FLOOR.timestamp()) * S


# -- disk -----------------------------------------------------------------------------------------


def disk(
    free: int, total: int = 32_000 * MIB, used: int = 0, writable: bool = True
) -> DiskObservation:
    return DiskObservation(
        Path("/var/lib/x/outbox.sqlite3"), Path("/var/lib/x"), free, total, used, writable
    )


def test_disk_with_room() -> None:
    assert system.disk_finding(disk(10_000 * MIB), 256 * MIB).status is Status.OK


def test_disk_too_small_for_max_bytes() -> None:
    found = system.disk_finding(disk(100 * MIB, used=50 * MIB), 256 * MIB)
    assert found.status is Status.FAIL
    assert "outbox.max_bytes" in (found.fix or "")


def test_disk_full_outbox_leaves_no_reserve() -> None:
    found = system.disk_finding(disk(300 * MIB), 256 * MIB)
    assert found.status is Status.WARN


def test_disk_not_writable() -> None:
    found = system.disk_finding(disk(10_000 * MIB, writable=False), 256 * MIB)
    assert found.status is Status.FAIL
    assert "StateDirectory" in (found.fix or "")


def test_observe_disk_uses_the_nearest_existing_folder(tmp_path: Path) -> None:
    obs = system.observe_disk(tmp_path / "not" / "yet" / "outbox.sqlite3")
    assert obs.filesystem == tmp_path
    assert obs.outbox_bytes == 0
    assert obs.free_bytes > 0


# -- outbox ---------------------------------------------------------------------------------------


async def fill(path: Path, records: list[Position | Health]) -> None:
    async with Outbox(OutboxSettings(path=path), boot_id=7) as outbox:
        await outbox.append(records)


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.iterdir())
    }


def position(ts_ns: int) -> Position:
    return Position(ts_ns, 52.5, 13.4, mode=FixMode.FIX_3D)


async def test_backlog_is_read_without_touching_the_file(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    old = (time.time_ns() // 10**6 - 7_200_000) * 10**6  # two hours ago; records keep ms
    await fill(path, [position(old), position(old + S), Health(old + 2 * S)])
    before = snapshot(tmp_path)
    backlog = system.read_backlog(path, 5.0)
    assert snapshot(tmp_path) == before  # no -wal, no -shm, nothing rewritten
    assert backlog.pending == {"position": 2, "health": 1}
    assert backlog.oldest_ns == old
    found = system.outbox_finding(backlog, time.time_ns())
    assert found.status is Status.WARN  # two hours old: not draining
    assert "3 records pending" in found.summary
    assert "broker" in (found.fix or "")


async def test_fresh_backlog_and_empty_outbox_are_ok(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    await fill(path, [position(time.time_ns() - 5 * S)])
    assert system.outbox_finding(system.read_backlog(path, 5.0), time.time_ns()).status is Status.OK
    empty = tmp_path / "empty.sqlite3"
    await fill(empty, [])
    found = system.outbox_finding(system.read_backlog(empty, 5.0), time.time_ns())
    assert found.status is Status.OK
    assert "empty" in found.summary


async def test_evictions_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    await fill(path, [position(time.time_ns())])
    db = sqlite3.connect(path)
    with db:  # as the outbox records an eviction
        db.execute("INSERT INTO evictions VALUES (7, 1, 40)")
    db.close()  # the last connection checkpoints the write-ahead log into the file
    found = system.outbox_finding(system.read_backlog(path, 5.0), time.time_ns())
    assert found.status is Status.WARN
    assert "40 records were evicted" in found.summary


async def test_outbox_open_by_the_agent(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    async with Outbox(OutboxSettings(path=path), boot_id=1) as outbox:
        await outbox.append([position(time.time_ns())])
        before = snapshot(tmp_path)
        backlog = system.read_backlog(path, 5.0)
        assert snapshot(tmp_path) == before
        assert backlog.in_use
        found = system.outbox_finding(backlog, time.time_ns())
        assert found.status in (Status.OK, Status.SKIP)
        assert "agent" in found.summary
        await outbox.append([position(time.time_ns())])  # the agent is not disturbed


def test_missing_and_broken_outbox(tmp_path: Path) -> None:
    missing = system.outbox_finding(system.read_backlog(tmp_path / "none", 1.0), NOW)
    assert missing.status is Status.SKIP
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"not a database at all" * 100)
    broken = system.outbox_finding(system.read_backlog(junk, 1.0), NOW)
    assert broken.status is Status.FAIL
    assert "on_corrupt" in (broken.fix or "")


def test_other_schema_fails() -> None:
    found = system.outbox_finding(Backlog(Path("/x"), True, schema=9), NOW)
    assert found.status is Status.FAIL
    assert "schema 9" in found.summary


async def test_check_storage_together(tmp_path: Path) -> None:
    path = tmp_path / "state" / "outbox.sqlite3"
    findings = await system.check_storage(path, 1 * MIB, 1.0)
    assert [(f.check, f.status) for f in findings] == [
        ("disk", Status.OK),
        ("outbox", Status.SKIP),
    ]
