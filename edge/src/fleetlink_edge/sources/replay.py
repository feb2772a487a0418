"""Captured CAN traffic from files, through python-can's log readers.

Formats follow the file suffix as in ``can.LogReader``: candump ``.log`` (with or without the
trailing ``R``/``T`` direction that python-can writes), Vector ``.asc`` and ``.blf``, PCAN
``.trc``, python-can ``.csv``, any of them gzipped as ``.<fmt>.gz``; ``.mf4`` only when the
optional ``asammdf`` package is installed. Candump lines that cannot be parsed are skipped and
counted; other formats are read whole or end with a ``SourceError``.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TextIO, cast

import can
from can.io.canutils import CanutilsLogReader

from fleetlink_edge.errors import SourceError
from fleetlink_edge.frames import CanFrame
from fleetlink_edge.sources.can import frame_from_message

log = logging.getLogger(__name__)


class _Lines:
    """The file's lines, shared by successive candump readers so one bad line costs one line."""

    def __init__(self, fh: Iterable[str]) -> None:
        self._it = iter(fh)

    def __iter__(self) -> Iterator[str]:
        return self._it

    def close(self) -> None:  # the reader closes its "file" at the end; we own the real one
        pass


# Suffix -> python-can reader, and whether it reads text. Readers get a file this module
# opened, so a file that fails to parse is closed here, not leaked by the reader.
_READERS: dict[str, tuple[Callable[[Any], can.io.generic.MessageReader], bool]] = {
    ".asc": (can.ASCReader, True),
    ".csv": (can.CSVReader, True),
    ".trc": (can.TRCReader, True),
    ".blf": (can.BLFReader, False),
    ".mf4": (can.MF4Reader, False),
}


def read_log(path: Path, *, counters: dict[str, int] | None = None) -> Iterator[CanFrame]:
    """Frames of a capture file, in file order, with the file's timestamps.

    ``counters`` (if given) receives ``frames`` and ``bad_lines``. Raises SourceError here for
    a missing, unknown or unreadable file (MF4 without asammdf included), and during iteration
    when a binary file turns out corrupt.
    """
    counts = counters if counters is not None else {}
    counts.setdefault("frames", 0)
    counts.setdefault("bad_lines", 0)
    if not path.is_file():
        raise SourceError(f"no such CAN log: {path}")
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    gz = suffixes[-1:] == [".gz"]
    fmt = (suffixes[0] if len(suffixes) == 2 else "") if gz else (suffixes or [""])[-1]
    if fmt == ".log":
        return _read_candump(path, gz, counts)
    if fmt not in _READERS:
        raise SourceError(f"cannot read CAN log {path}: unknown format {''.join(suffixes)!r}")
    return _read_other(_open_reader(path, fmt, gz), path, counts)


def _open_text(path: Path, gz: bool) -> TextIO:
    # Binary garbage in a text log becomes U+FFFD, which then fails to parse and is counted.
    if gz:
        return gzip.open(path, mode="rt", encoding="ascii", errors="replace")
    return path.open(encoding="ascii", errors="replace")


def _open_binary(path: Path, gz: bool) -> BinaryIO:
    return cast(BinaryIO, gzip.open(path, mode="rb")) if gz else path.open("rb")


def _read_candump(path: Path, gz: bool, counts: dict[str, int]) -> Iterator[CanFrame]:
    try:
        fh = _open_text(path, gz)
    except OSError as exc:
        raise SourceError(f"cannot read CAN log {path}: {exc}") from exc
    with fh:
        lines = _Lines(fh)
        while True:
            try:
                for msg in CanutilsLogReader(cast(TextIO, lines)):  # it only iterates
                    if not _plausible(msg):
                        raise ValueError(f"implausible frame {msg}")
                    frame = frame_from_message(msg)
                    counts["frames"] += 1
                    yield frame
            except (ValueError, IndexError, OverflowError) as exc:
                counts["bad_lines"] += 1
                log.debug("%s: skipped a bad candump line: %s", path, exc)
                continue
            except (OSError, EOFError) as exc:  # truncated gzip, unreadable disk
                raise SourceError(f"cannot read CAN log {path}: {exc}") from exc
            return


def _plausible(msg: can.Message) -> bool:
    """python-can reads "123#0" or "FFF#" without complaint: check what it built."""
    max_id = 0x1FFFFFFF if msg.is_extended_id else 0x7FF
    whole_bytes = msg.is_remote_frame or msg.is_error_frame or msg.dlc == len(msg.data)
    return msg.arbitration_id <= max_id and whole_bytes and len(msg.data) <= 64


def _open_reader(path: Path, fmt: str, gz: bool) -> can.io.generic.MessageReader:
    reader_cls, text = _READERS[fmt]
    try:
        fh: TextIO | BinaryIO = _open_text(path, gz) if text else _open_binary(path, gz)
    except OSError as exc:
        raise SourceError(f"cannot read CAN log {path}: {exc}") from exc
    try:
        return reader_cls(fh)
    except NotImplementedError as exc:  # can.MF4Reader without asammdf
        fh.close()
        raise SourceError(
            f"cannot read {path}: MF4 needs the optional 'asammdf' package ({exc})"
        ) from exc
    except Exception as exc:
        fh.close()
        # A header that does not parse (struct.error, BLFParseError...): one typed error.
        raise SourceError(f"cannot read CAN log {path}: {exc}") from exc


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
