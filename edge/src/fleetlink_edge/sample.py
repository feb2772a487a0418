"""Sampling rules: which decoded values are worth a record. Pure; time comes from the records.

Positions: at most one per ``position_interval_s``, but a change of fix mode always passes.
Signals: per path, at most one per ``signal_interval_s`` and only when the value changed; an
unchanged value is repeated after ``signal_max_silence_s`` so "no record" never means "no data".
DTCs: the first sighting passes, repeats are dropped. A J1939 DM1 code not broadcast again for
``dtc_clear_after_s`` is reported once more with ``active=False`` (``tick``): DM1 repeats every
second while a code is active (J1939-73). OBD-II codes are never cleared by silence: the poller
reads service 03 only every ``dtc_interval_s`` and reports a clear itself when a code is gone.
Events and health records always pass.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fleetlink_edge.config import SamplingSettings
from fleetlink_protocols.records import (
    Dtc,
    DtcSource,
    Event,
    Health,
    Position,
    Record,
    SignalValue,
)

_NS = 1_000_000_000


@dataclass(slots=True)
class _Last:
    ts_wall_ns: int
    value: object


class Sampler:
    """Stateful filter between the decoders and the outbox; one per agent."""

    def __init__(self, settings: SamplingSettings) -> None:
        self.reconfigure(settings)
        self._last_pos: Position | None = None
        self._signals: dict[str, _Last] = {}
        self._dtcs: dict[tuple[int, int, str], Dtc] = {}
        self._dtc_seen_ns: dict[tuple[int, int, str], int] = {}
        self.counters: dict[str, int] = {"offered": 0, "kept": 0, "sampled_away": 0}

    def reconfigure(self, settings: SamplingSettings) -> None:
        """Take new intervals at once (remote configuration), keeping what was seen: the last
        fix, each signal's last value and the known DTCs. The next record is judged by the new
        rules against them, so a longer interval takes effect from the last kept record."""
        self._pos_interval_ns = int(settings.position_interval_s * _NS)
        self._sig_interval_ns = int(settings.signal_interval_s * _NS)
        self._silence_ns = int(settings.signal_max_silence_s * _NS)
        self._dtc_clear_ns = int(settings.dtc_clear_after_s * _NS)

    def offer(self, record: Record) -> Record | None:
        """Return the record if it should be stored, else None."""
        self.counters["offered"] += 1
        kept = self._decide(record)
        self.counters["kept" if kept is not None else "sampled_away"] += 1
        return kept

    def _decide(self, record: Record) -> Record | None:
        if isinstance(record, Position):
            return self._position(record)
        if isinstance(record, SignalValue):
            return self._signal(record)
        if isinstance(record, Dtc):
            return self._dtc(record)
        assert isinstance(record, Event | Health)
        return record

    def _position(self, fix: Position) -> Position | None:
        last = self._last_pos
        due = last is None or fix.ts_wall_ns - last.ts_wall_ns >= self._pos_interval_ns
        # A receiver replaying an old fix (time going backwards) is not a new position.
        if last is not None and fix.ts_wall_ns <= last.ts_wall_ns:
            return None
        if due or (last is not None and fix.mode != last.mode):
            self._last_pos = fix
            return fix
        return None

    def _signal(self, sample: SignalValue) -> SignalValue | None:
        last = self._signals.get(sample.path)
        if last is not None:
            age = sample.ts_wall_ns - last.ts_wall_ns
            if age < 0:
                return None
            changed = sample.value != last.value
            if not (changed and age >= self._sig_interval_ns) and age < self._silence_ns:
                return None
        self._signals[sample.path] = _Last(sample.ts_wall_ns, sample.value)
        return sample

    def _dtc(self, dtc: Dtc) -> Dtc | None:
        key = (int(dtc.source), dtc.ecu, dtc.code)
        if not dtc.active:
            known = self._dtcs.pop(key, None)
            self._dtc_seen_ns.pop(key, None)
            return dtc if known is not None else None
        if dtc.source == DtcSource.J1939:
            self._dtc_seen_ns[key] = dtc.ts_wall_ns
        known = self._dtcs.get(key)
        if known is not None and known.occurrences == dtc.occurrences and known.lamps == dtc.lamps:
            return None
        self._dtcs[key] = dtc
        return dtc

    def tick(self, now_wall_ns: int) -> list[Record]:
        """Report DTCs that stopped being reported as cleared (inactive)."""
        cleared: list[Record] = []
        for key, seen_ns in list(self._dtc_seen_ns.items()):
            if now_wall_ns - seen_ns >= self._dtc_clear_ns:
                dtc = self._dtcs.pop(key)
                del self._dtc_seen_ns[key]
                cleared.append(replace(dtc, ts_wall_ns=now_wall_ns, active=False))
        return cleared
