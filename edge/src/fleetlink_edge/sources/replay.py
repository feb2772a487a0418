"""Captured CAN traffic from files, through python-can's log readers.

Formats follow the file suffix as in ``can.LogReader``: candump ``.log`` (with or without the
trailing ``R``/``T`` direction that python-can writes), Vector ``.asc``, ``.blf``, ``.trc``,
``.csv``, ``.db``, any of them gzipped as ``.<fmt>.gz``; ``.mf4`` only when the optional
``asammdf`` package is installed. Candump lines that cannot be parsed are skipped and counted;
other formats are read whole or end with a ``SourceError``.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import TextIO, cast

import can
from can.io.canutils import CanutilsLogReader

from fleetlink_edge.errors import SourceError
from fleetlink_edge.frames import CanFrame
from fleetlink_edge.sources.can import frame_from_message

log = logging.getLogger(__name__)


class _Lines:
    """The file's lines, shared by successive candump readers so one bad line costs one line."""

    def __init__(self, fh: TextIO) -> None:
        self._it = iter(fh)

    def __iter__(self) -> Iterator[str]:
        return self._it

    def close(self) -> None:  # the reader closes its "file" at the end; we own the real one
        pass


def read_log(path: Path, *, counters: dict[str, int] | None = None) -> Iterator[CanFrame]:
    """Frames of a capture file, in file order, with the file's timestamps.

    ``counters`` (if given) receives ``frames`` and ``bad_lines``. Raises SourceError for a
    missing, unknown or unreadable file (MF4 without asammdf included).
    """
    counts = counters if counters is not None else {}
    counts.setdefault("frames", 0)
    counts.setdefault("bad_lines", 0)
    if not path.is_file():
        raise SourceError(f"no such CAN log: {path}")
    # Checked here, not on first next(): a bad path fails where read_log is called.
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    if suffixes[-1:] == [".log"] or suffixes == [".log", ".gz"]:
        return _read_candump(path, counts)
    return _read_other(_open_reader(path), path, counts)


def _open_text(path: Path) -> TextIO:
    # Binary garbage becomes U+FFFD, which then fails to parse as a line and is counted.
    if path.suffix.lower() == ".gz":
        return gzip.open(path, mode="rt", encoding="ascii", errors="replace")
    return path.open(encoding="ascii", errors="replace")


def _read_candump(path: Path, counts: dict[str, int]) -> Iterator[CanFrame]:
    try:
        fh = _open_text(path)
    except OSError as exc:
        raise SourceError(f"cannot read CAN log {path}: {exc}") from exc
    with fh:
        lines = _Lines(fh)
        while True:
            try:
                for msg in CanutilsLogReader(cast(TextIO, lines)):  # it only iterates
                    counts["frames"] += 1
                    yield frame_from_message(msg)
            except (ValueError, IndexError, OverflowError) as exc:
                counts["bad_lines"] += 1
                log.debug("%s: skipped a bad candump line: %s", path, exc)
                continue
            except (OSError, EOFError) as exc:  # truncated gzip, unreadable disk
                raise SourceError(f"cannot read CAN log {path}: {exc}") from exc
            return


def _open_reader(path: Path) -> can.io.generic.MessageReader:
    try:
        reader: can.io.generic.MessageReader = can.LogReader(path)
    except NotImplementedError as exc:  # can.MF4Reader without asammdf
        raise SourceError(
            f"cannot read {path}: MF4 needs the optional 'asammdf' package ({exc})"
        ) from exc
    except (ValueError, OSError) as exc:  # unknown suffix, unreadable file
        raise SourceError(f"cannot read CAN log {path}: {exc}") from exc
    return reader


def _read_other(
    reader: can.io.generic.MessageReader, path: Path, counts: dict[str, int]
) -> Iterator[CanFrame]:
    with reader:
        try:
            for msg in reader:
                counts["frames"] += 1
                yield frame_from_message(msg)
        except Exception as exc:
            # Each python-can reader fails its own way on a corrupt file (struct.error,
            # zlib.error, ValueError...): one typed error for all of them.
            raise SourceError(
                f"CAN log {path} unreadable after {counts['frames']} frames: {exc}"
            ) from exc


async def paced(frames: Iterable[CanFrame], *, speed: float = 1.0) -> AsyncIterator[CanFrame]:
    """Yield ``frames`` spaced by their recorded times divided by ``speed`` (0: no waiting)."""
    if speed < 0:
        raise ValueError("speed must be >= 0")
    loop = asyncio.get_running_loop()
    start_mono_s = loop.time()
    first_ns: int | None = None
    for frame in frames:
        if speed > 0:
            if first_ns is None:
                first_ns = frame.ts_wall_ns
            due_s = start_mono_s + (frame.ts_wall_ns - first_ns) / 1e9 / speed
            delay_s = due_s - loop.time()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
        yield frame
