"""Passive J1939 decoding (sans-I/O): frames in, SignalValue and Dtc records out.

Parameter groups are matched by PGN whatever their source address. Multi-packet groups are
reassembled from the transport protocol (J1939-21): broadcast (TP.CM_BAM) and, when seen on the
bus, connection mode (TP.CM_RTS/CTS), both with strict sequence checking. Time is the frames'
own ``ts_wall_ns``: sessions time out by it, never by a clock, so a replay decodes like the
drive. Every rejected frame or value is counted under a reason in ``counters``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from fleetlink_edge.config import J1939Settings
from fleetlink_edge.frames import CanFrame
from fleetlink_protocols import j1939 as std
from fleetlink_protocols.records import Dtc, DtcSource, SignalValue

log = logging.getLogger(__name__)

VIN_PATH = "Vehicle.VehicleIdentification.VIN"
_MAX_FRAME_BYTES = 8  # classic CAN; J1939 does not use CAN FD frames here
_NS_PER_MS = 1_000_000

# Every catalog path this decoder can produce (what ``select`` may keep).
SIGNAL_PATHS = frozenset({s.path for spns in std.SIGNAL_SPNS.values() for s in spns} | {VIN_PATH})

COUNTER_NAMES = (
    "frames",
    "messages",
    "signals",
    "dtcs",
    "ignored_pgns",
    "rejected_not_extended",
    "rejected_error_frame",
    "rejected_remote",
    "rejected_too_long",
    "short_frames",
    "values_not_available",
    "values_error",
    "values_reserved",
    "tp_sessions",
    "tp_completed",
    "tp_timeouts",
    "tp_sequence_errors",
    "tp_orphan_dt",
    "tp_bad_announce",
    "tp_sessions_full",
    "tp_replaced",
    "tp_aborted",
    "tp_short",
    "dm1_short",
    "dm1_not_available",
    "dm1_legacy_cm",
    "vin_invalid",
)


@dataclass(frozen=True, slots=True)
class J1939Id:
    """The fields of a 29-bit J1939 identifier (J1939-21)."""

    priority: int
    pgn: int
    sa: int
    da: int  # destination (PDU1) or GLOBAL_ADDRESS (PDU2, broadcast)


def parse_id(can_id: int) -> J1939Id:
    """Split a 29-bit identifier: PDU1 (PF < 240) carries a destination in PS, PDU2 a PGN byte."""
    priority = (can_id >> 26) & 0x7
    edp_dp = (can_id >> 24) & 0x3
    pf = (can_id >> 16) & 0xFF
    ps = (can_id >> 8) & 0xFF
    sa = can_id & 0xFF
    if pf < std.PDU2_MIN_PF:
        return J1939Id(priority, (edp_dp << 16) | (pf << 8), sa, ps)
    return J1939Id(priority, (edp_dp << 16) | (pf << 8) | ps, sa, std.GLOBAL_ADDRESS)


@dataclass(frozen=True, slots=True)
class J1939Message:
    """One whole parameter group: a single frame, or a reassembled transport session."""

    ts_wall_ns: int
    pgn: int
    sa: int
    da: int
    data: bytes
    can_id: int  # the frame that completed it (the last TP.DT for a transported group)
    channel: str | None
    transported: bool = False


@dataclass(frozen=True, slots=True)
class Decoded:
    """A record with where it came from, for reports (``fleetlink-edge decode can``)."""

    message: J1939Message
    record: SignalValue | Dtc
    spn: int | None = None
    unit: str | None = None
    lamps: std.Lamps | None = None


_Key = tuple[str | None, int, int]  # channel, sender, destination


@dataclass(slots=True)
class _Session:
    pgn: int
    size: int
    packets: int
    bam: bool
    deadline_ns: int
    next_seq: int = 1
    window_end: int = 0  # last packet the latest CTS allowed (connection mode)
    buf: bytearray = field(default_factory=bytearray)


class TransportReassembler:
    """Reassembles J1939-21 BAM and RTS/CTS sessions; bounded, timed out by frame time."""

    def __init__(
        self,
        *,
        bam_timeout_ns: int,
        cmdt_timeout_ns: int,
        max_sessions: int,
        counters: dict[str, int],
    ) -> None:
        self._bam_timeout_ns = bam_timeout_ns
        self._cmdt_timeout_ns = cmdt_timeout_ns
        self._max_sessions = max_sessions
        self._sessions: dict[_Key, _Session] = {}
        self._counters = counters

    def __len__(self) -> int:
        return len(self._sessions)

    def expire(self, now_ns: int) -> None:
        """Drop sessions whose next packet is overdue at ``now_ns`` (counted as timeouts)."""
        for key in [k for k, s in self._sessions.items() if now_ns > s.deadline_ns]:
            del self._sessions[key]
            self._counters["tp_timeouts"] += 1

    def feed(self, ident: J1939Id, frame: CanFrame) -> J1939Message | None:
        """Take a TP.CM or TP.DT frame; return the group it completes, if any."""
        self.expire(frame.ts_wall_ns)
        if len(frame.data) < _MAX_FRAME_BYTES and ident.pgn == std.PGN_TP_CM:
            self._counters["tp_short"] += 1
            return None
        if ident.pgn == std.PGN_TP_CM:
            self._control(ident, frame)
            return None
        return self._data(ident, frame)

    def _control(self, ident: J1939Id, frame: CanFrame) -> None:
        d = frame.data
        code = d[0]
        pgn = int.from_bytes(d[5:8], "little")
        if code in (std.TP_BAM, std.TP_RTS):
            bam = code == std.TP_BAM
            if bam and ident.da != std.GLOBAL_ADDRESS:
                self._counters["tp_bad_announce"] += 1
                return
            self._announce((frame.channel, ident.sa, ident.da), pgn, d, bam, frame.ts_wall_ns)
        elif code == std.TP_CTS:
            # Sent by the receiver: the session is keyed by its destination, the data sender.
            s = self._sessions.get((frame.channel, ident.da, ident.sa))
            if s is not None and not s.bam and s.pgn == pgn and d[1] > 0:
                s.next_seq, s.window_end = d[2], d[2] + d[1] - 1
                s.deadline_ns = frame.ts_wall_ns + self._cmdt_timeout_ns
        elif code == std.TP_ABORT:
            for key in ((frame.channel, ident.sa, ident.da), (frame.channel, ident.da, ident.sa)):
                s = self._sessions.get(key)
                if s is not None and not s.bam and s.pgn == pgn:
                    del self._sessions[key]
                    self._counters["tp_aborted"] += 1
        # TP_EOM_ACK needs nothing: the group was complete at its last TP.DT.

    def _announce(self, key: _Key, pgn: int, d: bytes, bam: bool, now_ns: int) -> None:
        size = int.from_bytes(d[1:3], "little")
        packets = d[3]
        expected = -(-size // std.TP_BYTES_PER_PACKET)
        if not std.TP_MIN_BYTES <= size <= std.TP_MAX_BYTES or packets != expected:
            self._counters["tp_bad_announce"] += 1
            log.debug("TP announce rejected: %d bytes in %d packets", size, packets)
            return
        if key in self._sessions:
            self._counters["tp_replaced"] += 1  # J1939-21: a new announce ends the old one
        elif len(self._sessions) >= self._max_sessions:
            self._counters["tp_sessions_full"] += 1
            return
        timeout = self._bam_timeout_ns if bam else self._cmdt_timeout_ns
        self._sessions[key] = _Session(pgn, size, packets, bam, now_ns + timeout)
        self._sessions[key].window_end = packets if bam else 0
        self._counters["tp_sessions"] += 1

    def _data(self, ident: J1939Id, frame: CanFrame) -> J1939Message | None:
        key = (frame.channel, ident.sa, ident.da)
        s = self._sessions.get(key)
        if s is None:
            self._counters["tp_orphan_dt"] += 1
            return None
        seq = frame.data[0] if frame.data else 0
        in_window = s.bam or seq <= s.window_end or s.window_end == 0
        if seq != s.next_seq or not in_window:
            # A lost or repeated packet: byte counting alone would build a wrong payload.
            del self._sessions[key]
            self._counters["tp_sequence_errors"] += 1
            return None
        offset = (seq - 1) * std.TP_BYTES_PER_PACKET
        del s.buf[offset:]
        s.buf += frame.data[1:]
        s.next_seq += 1
        s.deadline_ns = frame.ts_wall_ns + (
            self._bam_timeout_ns if s.bam else self._cmdt_timeout_ns
        )
        if s.next_seq <= s.packets:
            return None
        del self._sessions[key]
        if len(s.buf) < s.size:
            self._counters["tp_short"] += 1
            return None
        self._counters["tp_completed"] += 1
        return J1939Message(
            frame.ts_wall_ns, s.pgn, ident.sa, ident.da, bytes(s.buf[: s.size]),
            frame.arbitration_id, frame.channel, transported=True,
        )  # fmt: skip


class J1939Decoder:
    """Frames -> records for the PGNs in ``fleetlink_protocols.j1939`` plus DM1 and the VIN.

    With ``changes_only`` (the agent's setting) a DM1 or VIN is reported when it differs from
    the sender's previous one, and DTCs that disappear are reported with ``active=False``;
    without it (reports) every DM1 and VIN is reported as received.
    """

    def __init__(
        self,
        *,
        session_timeout_s: float = std.TP_T1_MS / 1000,
        max_sessions: int = 32,
        changes_only: bool = True,
        legacy_spn_version: std.SpnVersion = std.SpnVersion.V4,
    ) -> None:
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        bam_timeout_ns = round(session_timeout_s * 1e9)
        self._transport = TransportReassembler(
            bam_timeout_ns=bam_timeout_ns,
            cmdt_timeout_ns=max(bam_timeout_ns, std.TP_T2_MS * _NS_PER_MS),
            max_sessions=max_sessions,
            counters=self.counters,
        )
        self._changes_only = changes_only
        self._legacy_version = legacy_spn_version
        self._last_dm1: dict[tuple[str | None, int], dict[tuple[int, int], std.Dm1Dtc]] = {}
        self._last_lamps: dict[tuple[str | None, int], int] = {}
        self._last_vin: dict[tuple[str | None, int], str] = {}
        self._keep: frozenset[str] | None = None

    def select(self, paths: frozenset[str] | None) -> None:
        """Produce only signals with these catalog paths from now on (None: all); DTCs pass."""
        self._keep = paths

    @classmethod
    def from_settings(cls, settings: J1939Settings) -> J1939Decoder:
        return cls(session_timeout_s=settings.session_timeout_s, max_sessions=settings.max_sessions)

    @property
    def open_sessions(self) -> int:
        return len(self._transport)

    def feed(self, frame: CanFrame) -> list[SignalValue | Dtc]:
        """Records decoded from ``frame`` (most frames give one or none)."""
        return [d.record for d in self.decode(frame)]

    def decode(self, frame: CanFrame) -> list[Decoded]:
        """Like ``feed``, with each record's PGN, source address, SPN and unit."""
        message = self.message(frame)
        return [] if message is None else self.decode_message(message)

    def message(self, frame: CanFrame) -> J1939Message | None:
        """The whole parameter group ``frame`` carries or completes, if any."""
        c = self.counters
        c["frames"] += 1
        if frame.is_error:
            c["rejected_error_frame"] += 1
            return None
        if frame.is_remote:
            c["rejected_remote"] += 1
            return None
        if not frame.is_extended:
            c["rejected_not_extended"] += 1
            return None
        if len(frame.data) > _MAX_FRAME_BYTES:
            c["rejected_too_long"] += 1
            return None
        ident = parse_id(frame.arbitration_id)
        if ident.pgn in (std.PGN_TP_CM, std.PGN_TP_DT):
            return self._transport.feed(ident, frame)
        self._transport.expire(frame.ts_wall_ns)
        return J1939Message(
            frame.ts_wall_ns, ident.pgn, ident.sa, ident.da, frame.data,
            frame.arbitration_id, frame.channel,
        )  # fmt: skip

    def decode_message(self, m: J1939Message) -> list[Decoded]:
        """Records from one whole parameter group."""
        self.counters["messages"] += 1
        if m.pgn == std.PGN_DM1:
            return self._dm1(m)
        if m.pgn == std.PGN_VI:
            return self._vin(m)
        spns = std.SIGNAL_SPNS.get(m.pgn)
        if spns is None:
            self.counters["ignored_pgns"] += 1
            return []
        out: list[Decoded] = []
        keep = self._keep
        for spn in spns:
            if keep is not None and spn.path not in keep:
                continue
            value = self._value(spn, m.data)
            if value is not None:
                record = SignalValue(m.ts_wall_ns, spn.path, value)
                out.append(Decoded(m, record, spn=spn.spn, unit=spn.unit))
        self.counters["signals"] += len(out)
        return out

    def _value(self, spn: std.SpnDef, data: bytes) -> float | None:
        raw = spn.raw(data)
        if raw is None:
            self.counters["short_frames"] += 1
            return None
        state = std.validity(raw, spn.length_bits)
        if state is std.Validity.VALID:
            return spn.scale(raw)
        key = {
            std.Validity.NOT_AVAILABLE: "values_not_available",
            std.Validity.ERROR: "values_error",
        }.get(state, "values_reserved")
        self.counters[key] += 1
        return None

    def _dm1(self, m: J1939Message) -> list[Decoded]:
        try:
            dm1 = std.decode_dm1(m.data, legacy_version=self._legacy_version)
        except std.Dm1Error:
            self.counters["dm1_short"] += 1
            return []
        self.counters["dm1_not_available"] += dm1.not_available
        self.counters["dm1_legacy_cm"] += sum(1 for d in dm1.dtcs if d.legacy_cm)
        sender = (m.channel, m.sa)
        current = {(d.spn, d.fmi): d for d in dm1.dtcs}
        previous = self._last_dm1.get(sender, {})
        lamps_changed = self._last_lamps.get(sender) != dm1.lamps.word
        self._last_dm1[sender] = current
        self._last_lamps[sender] = dm1.lamps.word
        if self._changes_only and not lamps_changed and current == previous:
            return []
        out = [self._dtc(m, d, dm1.lamps, active=True) for d in dm1.dtcs]
        if self._changes_only:
            gone = [d for k, d in previous.items() if k not in current]
            out += [self._dtc(m, d, dm1.lamps, active=False) for d in gone]
        self.counters["dtcs"] += len(out)
        return out

    @staticmethod
    def _dtc(m: J1939Message, d: std.Dm1Dtc, lamps: std.Lamps, *, active: bool) -> Decoded:
        record = Dtc(
            ts_wall_ns=m.ts_wall_ns, source=DtcSource.J1939, code=d.code, ecu=m.sa,
            active=active, spn=d.spn, fmi=d.fmi, occurrences=d.occurrences, lamps=lamps.word,
        )  # fmt: skip
        return Decoded(m, record, spn=d.spn, lamps=lamps)

    def _vin(self, m: J1939Message) -> list[Decoded]:
        if self._keep is not None and VIN_PATH not in self._keep:
            return []
        vin = std.decode_vin(m.data)
        if vin is None:
            self.counters["vin_invalid"] += 1
            return []
        sender = (m.channel, m.sa)
        if self._changes_only and self._last_vin.get(sender) == vin:
            return []
        self._last_vin[sender] = vin
        self.counters["signals"] += 1
        return [Decoded(m, SignalValue(m.ts_wall_ns, VIN_PATH, vin), spn=237)]
