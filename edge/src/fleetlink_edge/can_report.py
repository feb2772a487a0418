"""``fleetlink-edge decode can FILE [--dbc DBC]``: every decoded value of a capture, as JSON lines.

J1939 decoding is always on for 29-bit frames (every DM1 and VIN is printed, not only changes);
``--dbc`` adds every signal of every frame the DBC describes. One object per value, keys in
this order (stable; new keys are only ever appended):

    ts        capture time, epoch seconds (float, microsecond resolution)
    channel   interface name from the log ("can0"), or null
    source    "j1939" or "dbc"
    id        CAN identifier as candump writes it: 3 hex digits (11-bit) or 8 (29-bit)
    sa        J1939 source address, null for 11-bit frames
    pgn       J1939 PGN (of the reassembled group for transported ones), null for 11-bit
    name      catalog path (J1939 signals), "DM1" (J1939 DTCs), or "MESSAGE.SIGNAL" (DBC)
    value     number, text (VIN, DBC value-table entries) or "SPN-FMI" for a DTC
    unit      catalog unit (J1939), the DBC's unit, or null

J1939 rows add ``spn``; DTC rows add ``fmi``, ``occurrences`` (null: not available),
``lamps`` ({"mil", "red_stop", "amber_warning", "protect"}: "off", "on", "error",
"not_available"), ``spn_name``, ``fmi_text`` and ``active``. A summary of the decoders'
counters (frames, rejections by reason) is logged at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fleetlink_edge.decode.dbc import DbcDecoder, DbcValue, load_database
from fleetlink_edge.decode.j1939 import Decoded, J1939Decoder, parse_id
from fleetlink_edge.frames import CanFrame
from fleetlink_edge.sources.replay import read_log
from fleetlink_protocols import j1939 as std
from fleetlink_protocols.records import Dtc

log = logging.getLogger(__name__)


def can_id_text(can_id: int, is_extended: bool) -> str:
    return f"{can_id:08X}" if is_extended else f"{can_id:03X}"


def _head(frame: CanFrame, source: str, can_id: int, name: str) -> dict[str, Any]:
    ident = parse_id(can_id) if frame.is_extended else None
    return {
        "ts": round(frame.ts_wall_ns / 1e9, 6),
        "channel": frame.channel,
        "source": source,
        "id": can_id_text(can_id, frame.is_extended),
        "sa": None if ident is None else ident.sa,
        "pgn": None if ident is None else ident.pgn,
        "name": name,
    }


def j1939_row(frame: CanFrame, d: Decoded) -> dict[str, Any]:
    """One output object for a J1939 record (``frame`` completed its parameter group)."""
    r = d.record
    if isinstance(r, Dtc):
        row = _head(frame, "j1939", d.message.can_id, "DM1")
        row["pgn"] = d.message.pgn
        spn, fmi = d.spn or 0, r.fmi or 0  # always set on J1939 DTCs
        row.update(
            value=r.code, unit=None, spn=spn, fmi=fmi, occurrences=r.occurrences,
            lamps=d.lamps.as_dict() if d.lamps else None, spn_name=std.spn_name(spn),
            fmi_text=std.fmi_description(fmi), active=r.active,
        )  # fmt: skip
        return row
    row = _head(frame, "j1939", d.message.can_id, r.path)
    row["pgn"] = d.message.pgn
    row.update(value=r.value, unit=d.unit, spn=d.spn)
    return row


def dbc_row(frame: CanFrame, v: DbcValue) -> dict[str, Any]:
    row = _head(frame, "dbc", v.can_id, f"{v.message}.{v.signal}")
    row.update(value=v.value, unit=v.unit)
    return row


def decoded_lines(path: Path, dbc: Path | None) -> Iterator[dict[str, Any]]:
    """Decode the capture at ``path``; raises SourceError (log) or ConfigError (DBC)."""
    dbc_decoder = None if dbc is None else DbcDecoder(load_database(dbc), None)
    j1939 = J1939Decoder(changes_only=False)
    replay: dict[str, int] = {}
    for frame in read_log(path, counters=replay):
        if frame.is_extended:
            for d in j1939.decode(frame):
                yield j1939_row(frame, d)
        if dbc_decoder is not None:
            for v in dbc_decoder.decode(frame):
                yield dbc_row(frame, v)
    _summary(path, replay, j1939, dbc_decoder)


def _summary(
    path: Path, replay: dict[str, int], j1939: J1939Decoder, dbc: DbcDecoder | None
) -> None:
    def nonzero(counters: dict[str, int]) -> str:
        return " ".join(f"{k}={v}" for k, v in counters.items() if v) or "none"

    log.info("%s: log %s", path.name, nonzero(replay))
    log.info("%s: j1939 %s", path.name, nonzero(j1939.counters))
    if dbc is not None:
        log.info("%s: dbc %s", path.name, nonzero(dbc.counters))
