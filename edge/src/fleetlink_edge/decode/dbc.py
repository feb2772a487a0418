"""DBC-described CAN signals through cantools, mapped to catalog (VSS) paths.

cantools is imported here and nowhere else. A frame is looked up by its exact identifier
(11-bit or 29-bit); for J1939 messages (``match`` "pgn", or "auto" on a DBC that declares
ProtocolType J1939) a frame that has no exact match is matched by PGN, so any priority and any
source address decode. Frames shorter than the DBC says, and any other cantools decode
failure, are counted rejections. Values are converted to the catalog unit when the DBC names a
different, unambiguous unit (mph, degF, m/s...); otherwise they pass through as the DBC scales
them, so a mapping must name signals already in the catalog's unit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cantools
from cantools.database.can import Database, Message

from fleetlink_edge.config import DbcSettings
from fleetlink_edge.decode.j1939 import parse_id
from fleetlink_edge.errors import ConfigError
from fleetlink_edge.frames import CanFrame
from fleetlink_protocols.catalog import BY_PATH
from fleetlink_protocols.records import SignalValue

log = logging.getLogger(__name__)

Match = Literal["auto", "exact", "pgn"]
DbcScalar = float | int | str

_MILE_KM = 1.609344
_GALLON_L = 3.785411784
# (DBC unit lower-cased, catalog unit) -> conversion. Only units that cannot mean anything else.
_CONVERSIONS: dict[tuple[str, str], Callable[[float], float]] = {
    ("mph", "km/h"): lambda v: v * _MILE_KM,
    ("m/s", "km/h"): lambda v: v * 3.6,
    ("degf", "celsius"): lambda v: (v - 32) * 5 / 9,
    ("°f", "celsius"): lambda v: (v - 32) * 5 / 9,
    ("m", "km"): lambda v: v / 1000,
    ("mi", "km"): lambda v: v * _MILE_KM,
    ("miles", "km"): lambda v: v * _MILE_KM,
    ("min", "s"): lambda v: v * 60,
    ("h", "s"): lambda v: v * 3600,
    ("min", "h"): lambda v: v / 60,
    ("s", "h"): lambda v: v / 3600,
    ("gal/h", "l/h"): lambda v: v * _GALLON_L,
}

COUNTER_NAMES = ("frames", "matched", "unmatched", "short_frames", "decode_errors", "signals")


@dataclass(frozen=True, slots=True)
class DbcValue:
    """One decoded DBC signal. ``path`` is its catalog path when the mapping names it."""

    ts_wall_ns: int
    message: str
    signal: str
    value: DbcScalar
    unit: str | None
    can_id: int
    path: str | None


@dataclass(frozen=True, slots=True)
class _Mapped:
    signal: str
    path: str
    unit: str | None  # after conversion
    convert: Callable[[float], float] | None


def load_database(path: Path) -> Database:
    """Load a DBC (or other cantools CAN format); raises ConfigError saying why it cannot."""
    try:
        db = cantools.database.load_file(path, strict=False)
    except (cantools.database.errors.Error, OSError, ValueError) as exc:
        raise ConfigError(f"cannot load CAN database {path}: {exc}") from exc
    if not isinstance(db, Database):
        raise ConfigError(f"{path} is not a CAN signal database")
    return db


def _j1939_pgn(message: Message) -> int | None:
    return parse_id(message.frame_id).pgn if message.is_extended_frame else None


class DbcDecoder:
    """Decodes frames with one CAN database; ``signals`` maps "MESSAGE.SIGNAL" to a path.

    With ``signals=None`` every signal is decoded (for reports) and none becomes a record.
    Raises ConfigError when the mapping names a message or signal the database lacks.
    """

    def __init__(
        self, db: Database, signals: Mapping[str, str] | None, *, match: Match = "auto"
    ) -> None:
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self._decode_all = signals is None
        self._by_id: dict[tuple[int, bool], Message] = {
            (m.frame_id, m.is_extended_frame): m for m in db.messages
        }
        self._by_pgn: dict[int, Message] = {}
        for m in db.messages:
            pgn = _j1939_pgn(m)
            by_pgn = match == "pgn" or (match == "auto" and m.protocol == "j1939")
            if pgn is not None and by_pgn:
                self._by_pgn.setdefault(pgn, m)  # the first wins, as in cantools' own lookup
        self._every = self._map(db, signals or {})
        self._mapped = self._every

    @property
    def paths(self) -> frozenset[str]:
        """The catalog paths the mapping produces (what ``select`` may keep)."""
        return frozenset(m.path for items in self._every.values() for m in items)

    def select(self, paths: frozenset[str] | None) -> None:
        """Produce only mapped signals with these paths from now on (None: every mapped one).

        A message with no kept signal is not decoded at all (counted as unmatched), which
        spares cantools the work on a chatty bus."""
        every = self._every
        if paths is not None:
            kept = {n: tuple(m for m in items if m.path in paths) for n, items in every.items()}
            every = {n: items for n, items in kept.items() if items}
        self._mapped = every

    @classmethod
    def from_settings(cls, settings: DbcSettings) -> DbcDecoder:
        return cls(load_database(settings.file), settings.signals, match=settings.match)

    @staticmethod
    def _map(db: Database, signals: Mapping[str, str]) -> dict[str, tuple[_Mapped, ...]]:
        by_message: dict[str, list[_Mapped]] = {}
        unknown: list[str] = []
        names = {m.name: m for m in db.messages}
        for key, path in signals.items():
            message_name, _, signal_name = key.partition(".")
            message = names.get(message_name)
            signal = None
            if message is not None:
                signal = next((s for s in message.signals if s.name == signal_name), None)
            if message is None or signal is None:
                unknown.append(key)
                continue
            catalog = BY_PATH.get(path)
            target = catalog.unit if catalog else None
            unit = signal.unit or None
            convert = _CONVERSIONS.get(((unit or "").strip().lower(), target or ""))
            if convert is not None:
                log.info("DBC %s in %s is converted to %s for %s", key, unit, target, path)
                unit = target
            by_message.setdefault(message_name, []).append(
                _Mapped(signal_name, path, unit, convert)
            )
        if unknown:
            raise ConfigError(f"DBC mapping names unknown MESSAGE.SIGNAL: {', '.join(unknown)}")
        return {name: tuple(items) for name, items in by_message.items()}

    def lookup(self, frame: CanFrame) -> Message | None:
        """The DBC message for ``frame``: exact identifier first, then J1939 PGN."""
        message = self._by_id.get((frame.arbitration_id, frame.is_extended))
        if message is None and frame.is_extended and self._by_pgn:
            message = self._by_pgn.get(parse_id(frame.arbitration_id).pgn)
        return message

    def decode(self, frame: CanFrame) -> list[DbcValue]:
        """The frame's mapped signals (or all of them, with ``signals=None``)."""
        c = self.counters
        c["frames"] += 1
        message = None if frame.is_error or frame.is_remote else self.lookup(frame)
        mapped = () if message is None else self._mapped.get(message.name, ())
        if message is None or not (mapped or self._decode_all):
            c["unmatched"] += 1
            return []
        c["matched"] += 1
        if len(frame.data) < message.length:
            c["short_frames"] += 1  # cantools: "Wrong data size"; real logs have them
            return []
        try:
            decoded = message.decode(frame.data, decode_choices=self._decode_all)
        except (cantools.database.errors.Error, ValueError, KeyError, IndexError) as exc:
            c["decode_errors"] += 1
            log.debug("DBC %s: cannot decode %s: %s", message.name, frame.data.hex(), exc)
            return []
        if not isinstance(decoded, dict):  # only container messages decode to a list
            c["decode_errors"] += 1
            return []
        out = self._all(frame, message, decoded) if self._decode_all else []
        out += self._mapped_values(frame, message, mapped, decoded)
        c["signals"] += len(out)
        return out

    def feed(self, frame: CanFrame) -> list[SignalValue]:
        """Catalog records for the mapped signals in ``frame``."""
        return [
            SignalValue(v.ts_wall_ns, v.path, v.value)
            for v in self.decode(frame)
            if v.path is not None
        ]

    @staticmethod
    def _all(frame: CanFrame, message: Message, decoded: Mapping[str, object]) -> list[DbcValue]:
        units = {s.name: s.unit or None for s in message.signals}
        return [
            # A value-table entry (cantools NamedSignalValue) reports its name.
            DbcValue(
                frame.ts_wall_ns,
                message.name,
                name,
                raw if isinstance(raw, int | float) else str(raw),
                units.get(name),
                frame.arbitration_id,
                None,
            )
            for name, raw in decoded.items()
        ]

    @staticmethod
    def _mapped_values(
        frame: CanFrame,
        message: Message,
        mapped: tuple[_Mapped, ...],
        decoded: Mapping[str, object],
    ) -> list[DbcValue]:
        out = []
        for m in mapped:
            raw = decoded.get(m.signal)  # absent when another multiplexer value was sent
            if not isinstance(raw, int | float) or isinstance(raw, bool):
                continue
            value = m.convert(float(raw)) if m.convert else raw
            out.append(DbcValue(frame.ts_wall_ns, message.name, m.signal, value, m.unit,
                                frame.arbitration_id, m.path))  # fmt: skip
        return out
