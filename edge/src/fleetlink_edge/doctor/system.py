"""System checks: the clock, disk room for the outbox, and the outbox backlog.

The outbox is read, never written: through SQLite's ``immutable`` read-only open, which
creates no ``-wal``/``-shm`` file beside it (a root-owned one would lock the agent out) and
takes no lock. While the agent runs, the newest records sit in its write-ahead log, which such a
reader does not see; the finding says so. (This module and ``outbox.py`` are the edge's two
sqlite3 users; the agent's ``Outbox`` would migrate or move a file aside, so it is not used.)
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fleetlink_edge
from fleetlink_edge.doctor.findings import Finding, fail, ok, skip, warn
from fleetlink_edge.doctor.gnss import FixSample
from fleetlink_edge.outbox import SCHEMA_VERSION
from fleetlink_protocols.codec import decode_record
from fleetlink_protocols.errors import ProtocolError
from fleetlink_protocols.records import Priority

# No clock is right before this: older than any fleetlink-edge (a floor for builds whose file
# times were zeroed for reproducibility).
RELEASE_FLOOR = datetime(2025, 1, 1, tzinfo=UTC)
CLOCK_SLACK_S = 86_400  # file times and clocks of build machines differ; a wrong clock is years off
OFFSET_WARN_S = 2.0  # NMEA arrives up to a second after its epoch
OFFSET_FAIL_S = 60.0
DISK_RESERVE_BYTES = 64 << 20  # what the system keeps free beside a full outbox, at least
DISK_RESERVE_SHARE = 0.05
BACKLOG_WARN_S = 3600.0
_NS = 1_000_000_000


GPS_WEEK_ROLLOVER_S = 1024 * 7 * 86_400


def _utc(ns: int) -> str:
    return datetime.fromtimestamp(ns / _NS, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def span(seconds: float) -> str:
    """A duration for people: ``+0.4 s``, ``-12 min``, ``+5.3 h``, ``-1177 days``."""
    sign, s = ("-" if seconds < 0 else "+"), abs(seconds)
    if s < 120:
        return f"{sign}{s:.1f} s"
    if s < 7200:
        return f"{sign}{s / 60:.0f} min"
    if s < 3 * 86_400:
        return f"{sign}{s / 3600:.1f} h"
    return f"{sign}{s / 86_400:.0f} days"


# -- clock ----------------------------------------------------------------------------------------


def clock_finding(now_ns: int, build_ns: int, gnss: FixSample | None) -> Finding:
    """The system clock against the build time and, with a GNSS fix, the fix's time (pure)."""
    facts: dict[str, Any] = {"system_time": _utc(now_ns), "build_time": _utc(build_ns)}
    fix_sync = (
        "enable network time (systemd-timesyncd or chrony: `timedatectl`), or let chrony "
        "take the time from gpsd; a Pi has no battery clock and boots at its last saved time"
    )
    if now_ns < build_ns - CLOCK_SLACK_S * _NS:
        summary = f"system clock says {_utc(now_ns)}, before this software was built"
        return fail("clock", summary, fix_sync, **facts)
    if gnss is None:
        return ok("clock", f"system clock {_utc(now_ns)} (no GNSS time to compare)", **facts)
    offset_s = (gnss.system_time_ns - gnss.gnss_time_ns) / _NS
    facts |= {"gnss_time": _utc(gnss.gnss_time_ns), "offset_s": round(offset_s, 3)}
    summary = f"system clock {_utc(now_ns)}, {span(offset_s)} from GNSS time"
    if abs(offset_s) <= OFFSET_WARN_S:
        return ok("clock", summary, **facts)
    rollover = abs(abs(offset_s) - GPS_WEEK_ROLLOVER_S) < 2 * 86_400
    if rollover or gnss.gnss_time_ns < build_ns - CLOCK_SLACK_S * _NS:
        fix = (
            f"the receiver's date ({_utc(gnss.gnss_time_ns)}) is a GPS week-number rollover "
            "(1024 weeks) away: set gnss.serial.rollover_reference to a recent date (gpsd "
            "corrects it itself: update gpsd), or update the receiver's firmware"
        )
    else:
        fix = "the system clock and GNSS disagree; GNSS is usually right: " + fix_sync
    status = fail if abs(offset_s) > OFFSET_FAIL_S else warn
    return status("clock", summary, fix, **facts)


def build_time_ns() -> int:
    """When this fleetlink-edge was built or installed: its newest module file time (blocking)."""
    package = Path(fleetlink_edge.__file__).parent
    newest = max((p.stat().st_mtime_ns for p in package.glob("*.py")), default=0)
    return max(newest, int(RELEASE_FLOOR.timestamp()) * _NS)


async def check_clock(gnss: FixSample | None) -> Finding:
    build_ns = await asyncio.to_thread(build_time_ns)
    return clock_finding(time.time_ns(), build_ns, gnss)


# -- disk -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DiskObservation:
    outbox: Path
    filesystem: Path  # the outbox's folder, or its nearest existing parent
    free_bytes: int
    total_bytes: int
    outbox_bytes: int  # the outbox's files as they are now (0: not created yet)
    writable: bool


def disk_finding(d: DiskObservation, max_bytes: int) -> Finding:
    """Room for the outbox to grow to ``max_bytes`` and leave the system a reserve (pure)."""
    room = d.free_bytes + d.outbox_bytes
    reserve = max(DISK_RESERVE_BYTES, int(d.total_bytes * DISK_RESERVE_SHARE))
    facts = {
        "filesystem": str(d.filesystem),
        "free_bytes": d.free_bytes,
        "outbox_bytes": d.outbox_bytes,
        "max_bytes": max_bytes,
    }
    if not d.writable:
        fix = (
            f"the agent's user must be able to write {d.filesystem} (the unit's "
            "StateDirectory= creates /var/lib/fleetlink-edge): run the doctor as that user"
        )
        return fail("disk", f"{d.filesystem} is not writable", fix, **facts)
    summary = (
        f"{_mib(d.free_bytes)} free on {d.filesystem}; the outbox uses {_mib(d.outbox_bytes)} "
        f"of {_mib(max_bytes)} (outbox.max_bytes)"
    )
    if room < max_bytes:
        fix = f"free space, or lower outbox.max_bytes to at most {_mib(room - reserve)}"
        return fail("disk", summary + ": it cannot grow that far", fix, **facts)
    if room - max_bytes < reserve:
        fix = (
            f"a full outbox would leave under {_mib(reserve)} for the system (logs, updates): "
            f"lower outbox.max_bytes to {_mib(room - reserve)} or free space"
        )
        return warn("disk", summary, fix, **facts)
    return ok("disk", summary, **facts)


def _mib(n: int) -> str:
    return f"{max(n, 0) / (1 << 20):.1f} MiB"


def observe_disk(outbox: Path) -> DiskObservation:
    """Blocking: statvfs of the outbox's filesystem and the size of its files."""
    folder = outbox.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    usage = shutil.disk_usage(folder)
    size = sum(_size(Path(f"{outbox}{suffix}")) for suffix in ("", "-wal", "-shm", "-journal"))
    return DiskObservation(
        outbox, folder, usage.free, usage.total, size, os.access(folder, os.W_OK | os.X_OK)
    )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# -- outbox backlog -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backlog:
    """What the outbox file holds; ``in_use``: a write-ahead log exists (the agent has it open)."""

    path: Path
    exists: bool
    in_use: bool = False
    error: str | None = None
    schema: int | None = None
    pending: dict[str, int] = field(default_factory=dict)  # priority name -> records
    oldest_ns: int | None = None  # ts_wall_ns of the oldest record appended
    evicted: int = 0


def outbox_finding(b: Backlog, now_ns: int) -> Finding:
    """Pending records, their age and evictions (pure)."""
    where = str(b.path)
    if not b.exists:
        return skip("outbox", f"no outbox at {where} yet (the agent creates it on start)")
    partial = " (the agent has it open: its newest records are not counted)" if b.in_use else ""
    if b.error is not None or (b.in_use and b.schema == 0):
        if b.in_use:
            return skip("outbox", f"{where} is open by the agent and not readable yet")
        fix = "a damaged file is moved aside by the agent at start (outbox.on_corrupt)"
        return fail("outbox", f"cannot read {where}: {b.error}", fix, path=where)
    if b.schema != SCHEMA_VERSION:
        fix = "this agent does not know that layout: install the matching fleetlink-edge"
        return fail("outbox", f"{where} has schema {b.schema}, not {SCHEMA_VERSION}", fix)
    total = sum(b.pending.values())
    facts: dict[str, Any] = {"path": where, "pending": dict(b.pending), "evicted": b.evicted}
    facts["in_use"] = b.in_use
    if total == 0:
        return ok("outbox", f"{where} is empty: everything was delivered{partial}", **facts)
    age_s = (now_ns - b.oldest_ns) / _NS if b.oldest_ns is not None else 0.0
    facts |= {"oldest": _utc(b.oldest_ns) if b.oldest_ns else None, "oldest_age_s": round(age_s)}
    summary = f"{total} records pending, the oldest from {facts['oldest']}"
    summary += f" ({span(age_s)[1:]} ago){partial}" if b.oldest_ns else partial
    problems = []
    if age_s > BACKLOG_WARN_S:
        problems.append(
            "the backlog is not draining: see the broker checks; is the agent running "
            "(systemctl status fleetlink-edge)?"
        )
    if b.evicted:
        summary += f"; {b.evicted} records were evicted (outbox full)"
        problems.append("records were lost to a full outbox: raise outbox.max_bytes if disk allows")
    if problems:
        return warn("outbox", summary, " ".join(problems), **facts)
    return ok("outbox", summary, **facts)


def read_backlog(path: Path, timeout_s: float) -> Backlog:
    """Blocking: read ``path`` without writing anything; stops after ``timeout_s``."""
    if not path.is_file():
        return Backlog(path, exists=False)
    in_use = _size(Path(f"{path}-wal")) > 0
    deadline = time.monotonic() + timeout_s
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error as exc:
        return Backlog(path, True, in_use, str(exc))
    try:
        db.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        return _query(db, path, in_use)
    except sqlite3.Error as exc:
        text = f"gave up after {timeout_s:g} s" if time.monotonic() > deadline else str(exc)
        return Backlog(path, True, in_use, text)
    finally:
        db.close()


def _query(db: sqlite3.Connection, path: Path, in_use: bool) -> Backlog:
    schema = int(db.execute("PRAGMA user_version").fetchone()[0])
    if schema != SCHEMA_VERSION:
        return Backlog(path, True, in_use, schema=schema)
    rows = db.execute("SELECT priority, count(*) FROM records GROUP BY priority").fetchall()
    names = {int(p): p.name.lower() for p in Priority}
    pending = {names.get(int(p), str(p)): int(n) for p, n in rows}
    oldest: tuple[int, bytes] | None = None
    for priority, _ in rows:  # the head of each priority's range, by the primary key
        row = db.execute(
            "SELECT id, body FROM records WHERE priority = ? ORDER BY id LIMIT 1", (priority,)
        ).fetchone()
        if row is not None and (oldest is None or row[0] < oldest[0]):
            oldest = (int(row[0]), bytes(row[1]))
    evicted = int(db.execute("SELECT coalesce(sum(n), 0) FROM evictions").fetchone()[0])
    oldest_ns = None
    if oldest is not None:
        try:
            oldest_ns = decode_record(oldest[1]).ts_wall_ns
        except ProtocolError:
            oldest_ns = None
    return Backlog(path, True, in_use, None, schema, pending, oldest_ns, evicted)


async def check_storage(outbox: Path, max_bytes: int, timeout_s: float) -> list[Finding]:
    disk = await asyncio.to_thread(observe_disk, outbox)
    backlog = await asyncio.to_thread(read_backlog, outbox, timeout_s)
    return [disk_finding(disk, max_bytes), outbox_finding(backlog, time.time_ns())]
