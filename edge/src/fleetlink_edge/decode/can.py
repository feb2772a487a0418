"""One entry point for CAN frames: J1939 for 29-bit traffic plus any configured DBCs.

``CanDecoder.feed(frame)`` returns the records a frame yields; error and remote frames are
counted here and go no further. ``select`` narrows the signals kept (``can.signals``).
``counters`` merges every decoder's counters under a prefix ("j1939.tp_timeouts",
"dbc0.short_frames") for the health record.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from fleetlink_edge.config import CanSettings
from fleetlink_edge.decode.dbc import DbcDecoder
from fleetlink_edge.decode.j1939 import J1939Decoder
from fleetlink_edge.errors import ConfigError
from fleetlink_edge.frames import CanFrame
from fleetlink_edge.signal_lists import signal_problems
from fleetlink_protocols.records import Dtc, SignalValue


class CanDecoder:
    """Routes frames: 29-bit to J1939 (if enabled) and every frame to each DBC decoder."""

    def __init__(
        self, *, j1939: J1939Decoder | None = None, dbc: Sequence[DbcDecoder] = ()
    ) -> None:
        self.j1939 = j1939
        self.dbc = tuple(dbc)
        self._own = {"frames": 0, "error_frames": 0, "remote_frames": 0, "records": 0}

    @classmethod
    def from_settings(cls, settings: CanSettings) -> CanDecoder:
        """Build from the agent's CAN section, keeping ``settings.signals``; loads the DBC files.

        Raises ConfigError if a file fails or ``signals`` names a path no decoder produces."""
        if problems := signal_problems(settings):
            raise ConfigError("; ".join(problems))
        j1939 = J1939Decoder.from_settings(settings.j1939) if settings.j1939.enabled else None
        decoder = cls(j1939=j1939, dbc=[DbcDecoder.from_settings(d) for d in settings.dbc])
        decoder.select(settings.signals)
        return decoder

    def select(self, signals: Iterable[str] | None) -> None:
        """Keep only signals with these catalog paths from the next frame on (None: all).

        DTCs always pass. Remote configuration calls it with a checked ``can.signals``."""
        paths = None if signals is None else frozenset(signals)
        if self.j1939 is not None:
            self.j1939.select(paths)
        for decoder in self.dbc:
            decoder.select(paths)

    @property
    def counters(self) -> dict[str, int]:
        merged = dict(self._own)
        if self.j1939 is not None:
            merged.update({f"j1939.{k}": v for k, v in self.j1939.counters.items()})
        for i, decoder in enumerate(self.dbc):
            merged.update({f"dbc{i}.{k}": v for k, v in decoder.counters.items()})
        return merged

    def feed(self, frame: CanFrame) -> list[SignalValue | Dtc]:
        """The records decoded from ``frame``, J1939 first, then each DBC in order."""
        own = self._own
        own["frames"] += 1
        if frame.is_error:
            own["error_frames"] += 1
            return []
        if frame.is_remote:
            own["remote_frames"] += 1
            return []
        out: list[SignalValue | Dtc] = []
        if frame.is_extended and self.j1939 is not None:
            out.extend(self.j1939.feed(frame))
        for decoder in self.dbc:
            out.extend(decoder.feed(frame))
        own["records"] += len(out)
        return out
