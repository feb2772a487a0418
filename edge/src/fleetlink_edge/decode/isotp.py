"""ISO 15765-2 (ISO-TP) transport, sans-I/O: segmentation, reassembly, flow control, timeouts.

Written here rather than wrapping the can-isotp library, because:
- can-isotp's ``TransportLayer`` runs its own worker threads around blocking rx/tx callbacks,
  which fights the agent's single asyncio loop; its thread-free ``TransportLayerLogic`` still
  reads ``time.perf_counter`` itself, so timeouts cannot be driven by a replayed log's clock;
- one can-isotp stack serves one address pair, while an OBD-II functional request (0x7DF) is
  answered by up to eight ECUs (0x7E8-0x7EF) at once, each needing its own flow control;
- reading captures needs a passive reassembler that never transmits; can-isotp has none.
Everything here takes frame data and ``now_s`` (seconds on any monotonic or log clock) and
returns what to send; nothing reads a clock or touches a bus. Classic CAN (8-byte frames) with
normal addressing; the 32-bit first-frame length escape is understood.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeAlias

from fleetlink_edge.errors import DecodeError
from fleetlink_edge.frames import CanFrame


class FrameType(enum.IntEnum):
    """ISO 15765-2 protocol control information: the high nibble of byte 0."""

    SINGLE = 0x0
    FIRST = 0x1
    CONSECUTIVE = 0x2
    FLOW_CONTROL = 0x3


FS_CONTINUE = 0x0  # flow status: clear to send
FS_WAIT = 0x1
FS_OVERFLOW = 0x2
CAN_DL = 8
PADDING = 0xCC  # ISO 15765-2:2016 recommends 0xCC for unused bytes when padding
MAX_LENGTH = 4095  # largest payload a 12-bit first-frame length can announce
TIMEOUT_S = 1.0  # N_Bs and N_Cr, ISO 15765-2 table 16 (1000 ms)
MAX_WAIT_FRAMES = 10  # N_WFTmax: how many FC.WAIT a sender tolerates before giving up


class IsoTpError(DecodeError):
    """An ISO-TP transfer failed; ``reason`` is the counter key callers count it under."""

    reason = "isotp_error"


class IsoTpProtocolError(IsoTpError):
    reason = "protocol_error"  # unknown PCI, impossible length, malformed flow control


class IsoTpSequenceError(IsoTpError):
    reason = "sequence_error"  # a CF out of sequence: a frame was lost or repeated


class IsoTpUnexpectedFrameError(IsoTpError):
    reason = "unexpected_frame"  # a CF with no transfer, or an SF/FF cutting one short


class IsoTpTimeoutError(IsoTpError):
    reason = "timeout"  # no CF within N_Cr, or no flow control within N_Bs


class IsoTpOverflowError(IsoTpError):
    reason = "overflow"  # longer than the receiver accepts, or it answered FC.OVFLW


def frame_type(data: bytes) -> FrameType | None:
    """The PCI type of a frame's data, or None for an empty or unknown PCI."""
    if not data or (data[0] >> 4) > FrameType.FLOW_CONTROL:
        return None
    return FrameType(data[0] >> 4)


def _pad(data: bytes, padding: int | None) -> bytes:
    return data if padding is None else data.ljust(CAN_DL, bytes([padding]))


def encode_single(payload: bytes, *, padding: int | None = PADDING) -> bytes:
    if not 1 <= len(payload) <= CAN_DL - 1:
        raise IsoTpOverflowError(f"a single frame carries 1-7 bytes, not {len(payload)}")
    return _pad(bytes([len(payload)]) + payload, padding)


def encode_flow_control(
    status: int = FS_CONTINUE,
    block_size: int = 0,
    st_min: int = 0,
    *,
    padding: int | None = PADDING,
) -> bytes:
    return _pad(bytes([(FrameType.FLOW_CONTROL << 4) | status, block_size, st_min]), padding)


def st_min_s(raw: int) -> float:
    """Separation time from an FC's STmin byte (ISO 15765-2 table 20); reserved -> 127 ms."""
    if raw <= 0x7F:
        return raw / 1000
    if 0xF1 <= raw <= 0xF9:
        return (raw - 0xF0) / 10_000
    return 0x7F / 1000


@dataclass(frozen=True, slots=True)
class Complete:
    """A reassembled payload (without PCI or padding)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class SendFlowControl:
    """The receiver must now send ``data`` as a flow control frame to the sender."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Rejected:
    """A frame or transfer was dropped; ``error`` says why (and ``error.reason`` counts it)."""

    error: IsoTpError


Event: TypeAlias = Complete | SendFlowControl | Rejected


@dataclass(slots=True)
class _Transfer:
    length: int
    buffer: bytearray
    next_seq: int = 1
    block_count: int = 0
    last_s: float = 0.0


class Reassembler:
    """Receives one sender's messages. Active mode asks for flow control; passive only listens.

    ``feed`` never raises: malformed or out-of-order frames come back as ``Rejected`` events, so
    hostile input is counted, never fatal. Call ``expire(now_s)`` to notice a silent sender.
    """

    def __init__(
        self,
        *,
        active: bool = True,
        block_size: int = 0,
        st_min: int = 0,
        timeout_s: float = TIMEOUT_S,
        max_length: int = MAX_LENGTH,
        padding: int | None = PADDING,
    ) -> None:
        self.active = active
        self.block_size = block_size
        self.st_min = st_min
        self.timeout_s = timeout_s
        self.max_length = max_length
        self.padding = padding
        self._transfer: _Transfer | None = None

    @property
    def busy(self) -> bool:
        return self._transfer is not None

    @property
    def deadline_s(self) -> float | None:
        """When the transfer in progress times out (N_Cr), or None when idle."""
        return None if self._transfer is None else self._transfer.last_s + self.timeout_s

    def expire(self, now_s: float) -> Rejected | None:
        deadline = self.deadline_s
        if deadline is None or now_s <= deadline:
            return None
        self._transfer = None
        return Rejected(IsoTpTimeoutError("no consecutive frame within N_Cr"))

    def feed(self, data: bytes, now_s: float) -> list[Event]:
        """Process one frame's data bytes received at ``now_s``."""
        events: list[Event] = []
        timed_out = self.expire(now_s)
        if timed_out is not None:
            events.append(timed_out)
        kind = frame_type(data)
        if kind in (FrameType.SINGLE, FrameType.FIRST) and self._transfer is not None:
            # ISO 15765-2 9.8.3: a new SF/FF ends the reception in progress (N_UNEXP_PDU).
            self._transfer = None
            events.append(Rejected(IsoTpUnexpectedFrameError("new message interrupted a transfer")))
        try:
            event = self._dispatch(kind, data, now_s)
        except IsoTpOverflowError as exc:
            events.append(Rejected(exc))
            if self.active:  # ISO 15765-2 9.6.5.2: tell the sender to stop, FC.OVFLW
                events.append(
                    SendFlowControl(encode_flow_control(FS_OVERFLOW, padding=self.padding))
                )
            return events
        except IsoTpError as exc:
            event = Rejected(exc)
        if event is not None:
            events.append(event)
        return events

    def _dispatch(self, kind: FrameType | None, data: bytes, now_s: float) -> Event | None:
        if kind is FrameType.SINGLE:
            return self._single(data)
        if kind is FrameType.FIRST:
            return self._first(data, now_s)
        if kind is FrameType.CONSECUTIVE:
            return self._consecutive(data, now_s)
        if kind is FrameType.FLOW_CONTROL:
            # A flow control travels the other way; seeing one here means crossed addresses.
            raise IsoTpUnexpectedFrameError("flow control frame received by a reassembler")
        raise IsoTpProtocolError(f"unknown PCI in {data[:1].hex() or 'empty frame'}")

    def _single(self, data: bytes) -> Complete:
        length = data[0] & 0x0F
        if length == 0 or length > len(data) - 1:
            raise IsoTpProtocolError(f"single frame length {length} in {len(data)}-byte frame")
        return Complete(bytes(data[1 : 1 + length]))

    def _first(self, data: bytes, now_s: float) -> SendFlowControl | None:
        if len(data) < CAN_DL:
            raise IsoTpProtocolError(f"first frame of {len(data)} bytes; ISO-TP requires 8")
        length, start = ((data[0] & 0x0F) << 8) | data[1], 2
        if length == 0:  # ISO 15765-2:2016 escape: a 32-bit length follows
            length, start = int.from_bytes(data[2:6], "big"), 6
        if length < CAN_DL:
            raise IsoTpProtocolError(f"first frame announces {length} bytes; use a single frame")
        if length > self.max_length:
            raise IsoTpOverflowError(f"message of {length} bytes exceeds {self.max_length}")
        self._transfer = _Transfer(length, bytearray(data[start:]), last_s=now_s)
        if not self.active:
            return None
        return SendFlowControl(
            encode_flow_control(FS_CONTINUE, self.block_size, self.st_min, padding=self.padding)
        )

    def _consecutive(self, data: bytes, now_s: float) -> Event | None:
        transfer = self._transfer
        if transfer is None:
            raise IsoTpUnexpectedFrameError("consecutive frame without a first frame")
        seq = data[0] & 0x0F
        if seq != transfer.next_seq:
            self._transfer = None
            raise IsoTpSequenceError(f"sequence number {seq}, expected {transfer.next_seq}")
        needed = min(CAN_DL - 1, transfer.length - len(transfer.buffer))
        if len(data) - 1 < needed:  # ISO 15765-2 9.6.4: only the last CF may be short
            self._transfer = None
            raise IsoTpProtocolError(f"consecutive frame of {len(data)} bytes, need {needed + 1}")
        transfer.buffer += data[1 : 1 + needed]
        transfer.next_seq = (seq + 1) & 0x0F
        transfer.last_s = now_s
        if len(transfer.buffer) >= transfer.length:
            self._transfer = None
            return Complete(bytes(transfer.buffer))
        transfer.block_count += 1
        if self.active and self.block_size and transfer.block_count == self.block_size:
            transfer.block_count = 0
            return SendFlowControl(
                encode_flow_control(FS_CONTINUE, self.block_size, self.st_min, padding=self.padding)
            )
        return None


class SenderState(enum.Enum):
    IDLE = "idle"
    WAIT_FLOW_CONTROL = "wait_flow_control"
    SENDING = "sending"
    DONE = "done"


class Sender:
    """Segments one payload into SF or FF + CFs, paced by the receiver's flow control.

    Call ``poll(now_s)`` for frames due now (the first call yields the SF or FF), pass every
    flow control frame to ``on_flow_control``, and call ``poll`` again at ``wake_s``.
    Raises IsoTpTimeoutError (no FC within N_Bs), IsoTpOverflowError, or IsoTpProtocolError.
    """

    def __init__(
        self,
        payload: bytes,
        *,
        padding: int | None = PADDING,
        timeout_s: float = TIMEOUT_S,
        max_wait_frames: int = MAX_WAIT_FRAMES,
    ) -> None:
        if not payload or len(payload) > MAX_LENGTH:
            raise IsoTpOverflowError(f"cannot send a payload of {len(payload)} bytes")
        self.padding = padding
        self.timeout_s = timeout_s
        self.max_wait_frames = max_wait_frames
        self.state = SenderState.IDLE
        self.ignored_frames = 0  # FC frames that came when none was awaited (ISO: ignore)
        self._payload = payload
        self._offset = 0
        self._seq = 1
        self._block_size = 0
        self._block_sent = 0
        self._st_min_s = 0.0
        self._waits = 0
        self._fc_deadline_s = 0.0
        self._next_cf_s = 0.0

    @property
    def done(self) -> bool:
        return self.state is SenderState.DONE

    @property
    def wake_s(self) -> float | None:
        """When ``poll`` should next be called: the next CF slot or the FC deadline."""
        if self.state is SenderState.SENDING:
            return self._next_cf_s
        if self.state is SenderState.WAIT_FLOW_CONTROL:
            return self._fc_deadline_s
        return None

    def poll(self, now_s: float) -> list[bytes]:
        if self.state is SenderState.IDLE:
            return [self._start(now_s)]
        if self.state is SenderState.WAIT_FLOW_CONTROL:
            if now_s > self._fc_deadline_s:
                self.state = SenderState.DONE
                raise IsoTpTimeoutError("no flow control within N_Bs")
            return []
        frames: list[bytes] = []
        while self.state is SenderState.SENDING and now_s >= self._next_cf_s:
            frames.append(self._next_consecutive(now_s))
            if self._st_min_s > 0:
                break  # one frame per STmin slot; the caller comes back at wake_s
        return frames

    def _start(self, now_s: float) -> bytes:
        if len(self._payload) <= CAN_DL - 1:
            self.state = SenderState.DONE
            return encode_single(self._payload, padding=self.padding)
        self._offset = CAN_DL - 2
        self._await_flow_control(now_s)
        length = len(self._payload)
        return bytes([(FrameType.FIRST << 4) | (length >> 8), length & 0xFF]) + self._payload[:6]

    def _await_flow_control(self, now_s: float) -> None:
        self.state = SenderState.WAIT_FLOW_CONTROL
        self._fc_deadline_s = now_s + self.timeout_s

    def _next_consecutive(self, now_s: float) -> bytes:
        chunk = self._payload[self._offset : self._offset + CAN_DL - 1]
        frame = _pad(bytes([(FrameType.CONSECUTIVE << 4) | self._seq]) + chunk, self.padding)
        self._offset += len(chunk)
        self._seq = (self._seq + 1) & 0x0F
        self._block_sent += 1
        self._next_cf_s = now_s + self._st_min_s
        if self._offset >= len(self._payload):
            self.state = SenderState.DONE
        elif self._block_size and self._block_sent >= self._block_size:
            self._await_flow_control(now_s)
        return frame

    def on_flow_control(self, data: bytes, now_s: float) -> None:
        if self.state is not SenderState.WAIT_FLOW_CONTROL:
            self.ignored_frames += 1
            return
        if frame_type(data) is not FrameType.FLOW_CONTROL or len(data) < 3:
            self.state = SenderState.DONE
            raise IsoTpProtocolError(f"expected flow control, got {data.hex()}")
        status = data[0] & 0x0F
        if status == FS_CONTINUE:
            self.state = SenderState.SENDING
            self._block_size, self._block_sent, self._waits = data[1], 0, 0
            self._st_min_s = st_min_s(data[2])
            self._next_cf_s = now_s
            return
        if status == FS_WAIT and self._waits < self.max_wait_frames:
            self._waits += 1
            self._await_flow_control(now_s)
            return
        self.state = SenderState.DONE
        if status == FS_OVERFLOW:
            raise IsoTpOverflowError("receiver answered FC.OVFLW")
        if status == FS_WAIT:
            raise IsoTpTimeoutError(f"more than {self.max_wait_frames} FC.WAIT frames")
        raise IsoTpProtocolError(f"flow status {status} is reserved")


@dataclass(frozen=True, slots=True)
class IsoTpMessage:
    """A reassembled message seen on ``arbitration_id``; ``ts_wall_ns`` of its last frame."""

    arbitration_id: int
    payload: bytes
    ts_wall_ns: int


@dataclass(slots=True)
class CaptureReassembler:
    """Passive reassembly of a recorded or sniffed bus, one Reassembler per arbitration ID.

    ``ids`` limits which IDs are followed (None: any, up to ``max_streams``, for a bounded
    memory); flow control frames are counted and skipped. Timeouts use the frames' timestamps.
    """

    ids: Iterable[int] | None = None
    timeout_s: float = TIMEOUT_S
    max_streams: int = 64
    counters: dict[str, int] = field(default_factory=dict)
    counters_by_id: dict[int, dict[str, int]] = field(default_factory=dict)
    _streams: dict[int, Reassembler] = field(default_factory=dict)
    _allowed: frozenset[int] | None = None

    def __post_init__(self) -> None:
        self._allowed = None if self.ids is None else frozenset(self.ids)

    def _count(self, arbitration_id: int, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1
        per_id = self.counters_by_id.setdefault(arbitration_id, {})
        per_id[key] = per_id.get(key, 0) + 1

    def feed(self, frame: CanFrame) -> IsoTpMessage | None:
        """Process one frame; returns a message when ``frame`` completes one."""
        if frame.is_error or frame.is_remote:
            return None
        if self._allowed is not None and frame.arbitration_id not in self._allowed:
            return None
        stream = self._stream(frame.arbitration_id)
        if stream is None:
            self._count(frame.arbitration_id, "too_many_streams")
            return None
        if frame_type(frame.data) is FrameType.FLOW_CONTROL:
            self._count(frame.arbitration_id, "flow_control")
            return None
        self._count(frame.arbitration_id, "frames")
        message: IsoTpMessage | None = None
        for event in stream.feed(frame.data, frame.ts_wall_ns / 1e9):
            if isinstance(event, Complete):
                self._count(frame.arbitration_id, "completed")
                message = IsoTpMessage(frame.arbitration_id, event.payload, frame.ts_wall_ns)
            elif isinstance(event, Rejected):
                self._count(frame.arbitration_id, event.error.reason)
        return message

    def _stream(self, arbitration_id: int) -> Reassembler | None:
        stream = self._streams.get(arbitration_id)
        if stream is None and len(self._streams) < self.max_streams:
            stream = Reassembler(active=False, timeout_s=self.timeout_s)
            self._streams[arbitration_id] = stream
        return stream
