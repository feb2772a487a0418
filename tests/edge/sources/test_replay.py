"""Capture files through python-can's readers: real logs, the format fixtures, broken files."""

from __future__ import annotations

import gzip
import importlib.util
import itertools
from pathlib import Path

import pytest

from fleetlink_edge.errors import SourceError
from fleetlink_edge.frames import CanFrame
from fleetlink_edge.sources.replay import paced, read_log

IDLE = "can/j1939/css_matlab-basics_11111111_00000012_00000001.candump.log"
CAR = "can/passenger_car/eldominio_genesis_mphloggenesis.log"
SAMPLES = "can/format_samples"


def test_candump_with_direction_token(shared_data: Path) -> None:
    counters: dict[str, int] = {}
    frames = list(read_log(shared_data / IDLE, counters=counters))
    assert len(frames) == 57849
    assert counters == {"frames": 57849, "bad_lines": 0}
    # (1635188455.020850) can0 18F00E00#821639C4FFFFFFFF R
    assert frames[0] == CanFrame(
        ts_wall_ns=1635188455020850000,
        arbitration_id=0x18F00E00,
        data=bytes.fromhex("821639C4FFFFFFFF"),
        is_extended=True,
        channel="can0",
    )
    assert {f.channel for f in frames} == {"can0", "can1"}
    assert all(a.ts_wall_ns <= b.ts_wall_ns for a, b in itertools.pairwise(frames[:1000]))


def test_candump_without_direction_token(shared_data: Path) -> None:
    frames = list(read_log(shared_data / CAR))
    assert len(frames) == 7583
    assert not any(f.is_extended for f in frames)
    assert len({f.arbitration_id for f in frames}) == 22


def test_vector_asc_with_error_and_remote_frames(shared_data: Path) -> None:
    frames = list(read_log(shared_data / SAMPLES / "python-can_logfile.asc"))
    assert len(frames) == 20
    assert sum(f.is_error for f in frames) == 4
    assert sum(f.is_remote for f in frames) == 4
    assert max(len(f.data) for f in frames) == 64  # CAN FD frames pass through as they are


@pytest.mark.parametrize(
    "name",
    [
        "python-can_test_CanMessage.blf",
        "python-can_test_CanFdMessage.blf",
        "python-can_test_CanErrorFrameExt.blf",
    ],
)
def test_blf_fixtures(shared_data: Path, name: str) -> None:
    assert len(list(read_log(shared_data / SAMPLES / name))) == 2


@pytest.mark.skipif(
    importlib.util.find_spec("asammdf") is not None, reason="asammdf installed: MF4 is readable"
)
def test_mf4_without_asammdf_says_what_is_missing(shared_data: Path) -> None:
    mf4 = shared_data / "can/j1939/css_data-processing_FCBF0606_00003482_00000001-60B621D9.MF4"
    with pytest.raises(SourceError, match="asammdf"):
        read_log(mf4)


def test_missing_and_unknown_files_fail_at_the_call(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such CAN log"):
        read_log(tmp_path / "absent.log")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SourceError, match="cannot read CAN log"):
        read_log(tmp_path / "notes.txt")
    (tmp_path / "junk.blf").write_bytes(b"garbage" * 20)
    with pytest.raises(SourceError, match="cannot read CAN log"):
        read_log(tmp_path / "junk.blf")


def test_truncated_blf_ends_with_a_source_error(shared_data: Path, tmp_path: Path) -> None:
    whole = (shared_data / SAMPLES / "python-can_test_CanMessage.blf").read_bytes()
    (tmp_path / "cut.blf").write_bytes(whole[:300])
    with pytest.raises(SourceError, match="unreadable after 2 frames"):
        list(read_log(tmp_path / "cut.blf"))


def test_bad_candump_lines_are_skipped_and_counted(shared_data: Path, tmp_path: Path) -> None:
    good = (shared_data / IDLE).read_text().splitlines()[:5]
    hostile = [
        "garbage",
        "(nan) can0 123#00",
        "(1635188455.1) can0 12G#00",
        "(1635188455.1) can0 123#0",  # odd hex digits
        "(1635188455.1) can0 123",
        "\xff\xfe binary \x00 junk",
        "",
    ]
    mixed = [good[0], *hostile[:3], good[1], *hostile[3:], *good[2:]]
    path = tmp_path / "mixed.log"
    path.write_bytes("\n".join(mixed).encode("latin-1") + b"\n\x00\x01\x02\n")
    counters: dict[str, int] = {}
    frames = list(read_log(path, counters=counters))
    assert [f.data for f in frames] == [f.data for f in read_log(shared_data / IDLE)][:5]
    assert counters["frames"] == 5
    assert counters["bad_lines"] >= 6


def test_gzipped_candump(shared_data: Path, tmp_path: Path) -> None:
    lines = (shared_data / IDLE).read_bytes().splitlines(keepends=True)[:100]
    path = tmp_path / "idle.log.gz"
    path.write_bytes(gzip.compress(b"".join(lines)))
    assert len(list(read_log(path))) == 100


async def test_paced_keeps_order_and_yields_everything(shared_data: Path) -> None:
    frames = list(itertools.islice(read_log(shared_data / IDLE), 200))  # 0.2 s of traffic
    assert [f async for f in paced(frames, speed=0)] == frames
    assert [f async for f in paced(frames, speed=50.0)] == frames
    with pytest.raises(ValueError, match="speed"):
        [f async for f in paced(frames, speed=-1)]
