"""One CAN bus through python-can, fanned out to bounded asyncio subscriber queues.

This module and ``sources/replay.py`` are the only ones that import python-can. A python-can
``Notifier`` reads the bus (its own thread, or the loop's reader for socketcan) and hands every
message to the event loop; there each frame is offered to every subscriber's ``FrameQueue``.
A full queue drops the NEWEST frame and counts it, so a slow consumer never stalls the bus
reader nor grows memory. Error frames are counted and not delivered.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from types import TracebackType

import can
from can.typechecking import CanFilter

from fleetlink_edge.config import CanSettings
from fleetlink_edge.errors import SourceClosed, SourceError
from fleetlink_edge.frames import CanFrame

log = logging.getLogger(__name__)

_MAX_STD_ID = 0x7FF
_MAX_EXT_ID = 0x1FFFFFFF
_MAX_CLASSIC_DLC = 8


def frame_from_message(msg: can.Message) -> CanFrame:
    """Convert a python-can message; its float epoch seconds are rounded to microseconds."""
    # A float holds an epoch time to about 0.2 us: round to the us every capture format has.
    ts_wall_ns = round(msg.timestamp * 1_000_000) * 1000
    channel = None if msg.channel is None else str(msg.channel)
    return CanFrame(
        ts_wall_ns=ts_wall_ns,
        arbitration_id=msg.arbitration_id,
        data=bytes(msg.data),
        is_extended=msg.is_extended_id,
        is_error=msg.is_error_frame,
        is_remote=msg.is_remote_frame,
        channel=channel,
    )


class FrameQueue:
    """A bounded subscriber queue; when full the newest frame is dropped and counted.

    Created by ``CanPort.listen``; read it with ``await get()``. After ``close()`` (or when the
    port closes) ``get()`` returns what is left, then raises ``SourceClosed`` (or the
    ``SourceError`` that ended the bus).
    """

    def __init__(
        self,
        maxsize: int,
        accept: Callable[[CanFrame], bool] | None,
        on_close: Callable[[FrameQueue], None],
    ) -> None:
        if maxsize <= 0:
            raise ValueError("maxsize must be positive")
        self.maxsize = maxsize
        self.dropped = 0
        self.delivered = 0
        self._accept = accept
        self._on_close = on_close
        self._items: deque[CanFrame] = deque()
        self._ready = asyncio.Event()
        self._end: SourceError | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._end is not None

    def offer(self, frame: CanFrame) -> None:
        """Enqueue ``frame`` if accepted and there is room; called on the event loop."""
        if self._end is not None or (self._accept is not None and not self._accept(frame)):
            return
        if len(self._items) >= self.maxsize:
            self.dropped += 1
            return
        self._items.append(frame)
        self.delivered += 1
        self._ready.set()

    async def get(self) -> CanFrame:
        """The oldest queued frame; raises SourceClosed/SourceError once closed and empty."""
        while not self._items:
            if self._end is not None:
                raise self._end
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def get_nowait(self) -> CanFrame | None:
        """The oldest queued frame, or None when empty (never raises)."""
        return self._items.popleft() if self._items else None

    def close(self) -> None:
        """Stop receiving; frames already queued can still be read."""
        self._finish(SourceClosed("frame queue closed"))
        self._on_close(self)

    def _finish(self, end: SourceError) -> None:
        if self._end is None:
            self._end = end
            self._ready.set()


class _LoopBridge(can.Listener):
    """The Notifier's listener; python-can calls it on the event loop (``loop=`` given)."""

    def __init__(self, port: CanPort) -> None:
        self._port = port

    def on_message_received(self, msg: can.Message) -> None:
        self._port._dispatch(msg)

    def on_error(self, exc: Exception) -> None:
        self._port._fail(exc)


class CanPort:
    """One CAN bus (python-can; interface 'socketcan' on the vehicle, 'virtual' in tests).

    ``async with CanPort(settings) as port`` opens the bus, applies ``settings.filters`` (in the
    kernel on socketcan), and starts the Notifier. A ``bus`` passed in is used as is (filters
    are applied to it) and stays open on exit: its creator owns it.
    """

    def __init__(self, settings: CanSettings, *, bus: can.BusABC | None = None) -> None:
        self._settings = settings
        self._bus: can.BusABC | None = bus
        self._owns_bus = bus is None
        self._notifier: can.Notifier | None = None
        self._queues: list[FrameQueue] = []
        self._dropped_closed = 0
        self._closed = False
        self.counters: dict[str, int] = {
            "frames": 0,
            "error_frames": 0,
            "remote_frames": 0,
            "dropped": 0,
            "sent": 0,
            "send_errors": 0,
            "bus_errors": 0,
        }

    @property
    def queues(self) -> tuple[FrameQueue, ...]:
        return tuple(self._queues)

    async def __aenter__(self) -> CanPort:
        filters = self._filters()
        if self._bus is None:
            self._bus = self._open_bus(filters)
        elif filters:
            self._bus.set_filters(filters)
        loop = asyncio.get_running_loop()
        try:
            self._notifier = can.Notifier(
                self._bus,
                [_LoopBridge(self)],
                timeout=self._settings.receive_timeout_s,
                loop=loop,
            )
        except ValueError as exc:  # the bus already feeds another active Notifier
            await self._close_bus()
            raise SourceError(f"CAN bus {self._settings.channel}: {exc}") from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        notifier, self._notifier = self._notifier, None
        if notifier is not None:
            # Joining the receive thread takes up to receive_timeout_s: not on the loop.
            await asyncio.to_thread(notifier.stop, self._settings.receive_timeout_s * 5 + 1)
        for q in list(self._queues):
            q._finish(SourceClosed("CAN port closed"))
        await self._close_bus()

    def listen(
        self, *, maxsize: int, accept: Callable[[CanFrame], bool] | None = None
    ) -> FrameQueue:
        """A new subscriber queue of at most ``maxsize`` frames, filtered by ``accept``."""
        q = FrameQueue(maxsize, accept, self._unsubscribe)
        if self._closed:
            q._finish(SourceClosed("CAN port closed"))
        self._queues.append(q)
        return q

    async def send(self, arbitration_id: int, data: bytes, *, is_extended: bool = False) -> None:
        """Transmit one classic CAN frame; raises SourceError when the bus refuses it.

        Raises ValueError for an id or length that no CAN frame can carry.
        """
        if not 0 <= arbitration_id <= (_MAX_EXT_ID if is_extended else _MAX_STD_ID):
            raise ValueError(f"CAN id {arbitration_id:#x} out of range")
        if len(data) > _MAX_CLASSIC_DLC:
            raise ValueError(f"CAN frame data longer than 8 bytes: {len(data)}")
        bus = self._bus
        if bus is None or self._notifier is None:
            raise SourceClosed("CAN port is not open")
        msg = can.Message(arbitration_id=arbitration_id, data=data, is_extended_id=is_extended)
        try:
            # socketcan send() may block while the kernel's tx queue is full.
            await asyncio.to_thread(bus.send, msg, self._settings.send_timeout_s)
        except can.CanError as exc:
            self.counters["send_errors"] += 1
            raise SourceError(f"CAN send {arbitration_id:#x} failed: {exc}") from exc
        self.counters["sent"] += 1

    def _filters(self) -> list[CanFilter] | None:
        out: list[CanFilter] = []
        for f in self._settings.filters:
            one = CanFilter(can_id=f.can_id, can_mask=f.can_mask)
            if f.extended is not None:
                one["extended"] = f.extended
            out.append(one)
        return out or None

    def _open_bus(self, filters: list[CanFilter] | None) -> can.BusABC:
        s = self._settings
        try:
            bus: can.BusABC = can.Bus(
                interface=s.interface, channel=s.channel, bitrate=s.bitrate, can_filters=filters
            )
        except (can.CanError, OSError, ImportError) as exc:
            raise SourceError(f"cannot open CAN {s.interface} {s.channel}: {exc}") from exc
        return bus

    async def _close_bus(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None and self._owns_bus:
            await asyncio.to_thread(bus.shutdown)

    def _unsubscribe(self, q: FrameQueue) -> None:
        if q in self._queues:
            self._queues.remove(q)
            self._dropped_closed += q.dropped

    def _dispatch(self, msg: can.Message) -> None:
        frame = frame_from_message(msg)
        if frame.is_error:
            self.counters["error_frames"] += 1
            return
        self.counters["frames"] += 1
        if frame.is_remote:
            self.counters["remote_frames"] += 1
        for q in self._queues:
            q.offer(frame)
        self.counters["dropped"] = self._dropped_closed + sum(q.dropped for q in self._queues)

    def _fail(self, exc: Exception) -> None:
        """The receive side died (adapter unplugged, interface down): end every queue."""
        self.counters["bus_errors"] += 1
        log.error("CAN bus %s receive failed: %s", self._settings.channel, exc)
        end = SourceError(f"CAN bus {self._settings.channel} receive failed: {exc}")
        for q in self._queues:
            q._finish(end)
