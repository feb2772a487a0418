"""A simulated OBD-II ECU on a python-can bus, answering SAE J1979 services 01, 03, 04 and 09.

A hardware stand-in for tests and demos, so it uses python-can directly. Requests arrive on the
functional address 0x7DF or on the ECU's physical address 0x7E0+n; answers leave on 0x7E8+n
through ISO-TP, and a multi-frame answer waits for the tester's flow control on 0x7E0+n before
its consecutive frames (ISO 15765-4). Values come from a mutable ``EcuState``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType

import can

from fleetlink_edge.decode.isotp import (
    PADDING,
    TIMEOUT_S,
    Complete,
    FrameType,
    IsoTpError,
    IsoTpTimeoutError,
    Reassembler,
    Rejected,
    Sender,
    SenderState,
    SendFlowControl,
    frame_type,
)
from fleetlink_edge.sim.route import DriveState
from fleetlink_protocols import obd

FUNCTIONAL_ID = 0x7DF  # ISO 15765-4 legislated-OBD functional request address
PHYSICAL_BASE = 0x7E0  # ECU n listens on 0x7E0+n ...
RESPONSE_OFFSET = 8  # ... and answers on 0x7E8+n
DEFAULT_SUPPORTED = frozenset({0x01, 0x04, 0x05, 0x0C, 0x0D, 0x11, 0x1F, 0x21, 0x2F, 0x5E, 0xA6})
VEHICLE_INFO_SUPPORTED = frozenset({obd.INFOTYPE_VIN})

# Service 01 PID -> EcuState attribute holding its physical value (units as in obd.PIDS).
_PID_FIELDS = {
    0x04: "engine_load_pct",
    0x05: "coolant_c",
    0x0C: "rpm",
    0x0D: "speed_kmh",
    0x11: "throttle_pct",
    0x1F: "run_time_s",
    0x21: "distance_with_mil_km",
    0x2F: "fuel_level_pct",
    0x5E: "fuel_rate_lph",
    0xA6: "odometer_m",
}


@dataclass
class EcuState:
    """What the simulated engine reports; a simulator may change any field at any time."""

    speed_kmh: float = 0.0
    rpm: float = 750.0
    coolant_c: float = 88.0
    engine_load_pct: float = 18.0
    throttle_pct: float = 11.0
    run_time_s: float = 0.0
    distance_with_mil_km: float = 0.0
    fuel_level_pct: float = 62.0
    fuel_rate_lph: float = 0.8
    odometer_km: float = 48_213.4
    dtcs: list[str] = field(default_factory=list)
    vin: str = "1FLTS2AB1NA000042"  # ISO 3779 check digit (position 9) is valid
    ignition_on: bool = True  # False: the ECU is silent, as with the key off
    # A simulated drive stores this DTC once it has run this long (None: never), the way a
    # real fault turns up mid-drive, between two scheduled service 03 reads. P0420: catalyst
    # efficiency below threshold (bank 1), a common fault that needs no immediate stop.
    drive_fault: str = "P0420"
    drive_fault_after_s: float | None = 8.0

    def follow(self, drive: DriveState, *, odometer_start_km: float = 48_213.4) -> None:
        """Agree with the simulated drive that also feeds the simulated GNSS receiver."""
        if self.drive_fault_after_s is not None and drive.t_s >= self.drive_fault_after_s:
            self.drive_fault_after_s = None  # once: a service 04 clear stays cleared
            self.store_dtc(self.drive_fault)
        self.speed_kmh = drive.speed_mps * 3.6  # DriveState is in m/s, J1979 PID 0D in km/h
        self.rpm = drive.engine_rpm
        self.run_time_s = drive.t_s
        self.odometer_km = odometer_start_km + drive.odometer_m / 1000
        self.engine_load_pct = min(90.0, 18.0 + self.speed_kmh * 0.6)
        self.throttle_pct = min(80.0, 11.0 + self.speed_kmh * 0.4)
        self.fuel_rate_lph = 0.8 + self.speed_kmh * 0.08

    def store_dtc(self, code: str) -> None:
        """Store ``code`` (SAE J2012, such as P0300) as a confirmed DTC, as a fault does. The MIL
        lights with it: PID 01 reports the lamp on whenever a code is stored."""
        obd.encode_dtc(code)  # raises ValueError for a code service 03 could not carry
        if code not in self.dtcs:
            self.dtcs.append(code)

    @property
    def odometer_m(self) -> float:
        return self.odometer_km * 1000.0

    def value(self, pid: int) -> float:
        return float(getattr(self, _PID_FIELDS[pid]))


class J1979Responder:
    """The ECU's answers, without any bus: request payload in, response payload (or None) out.

    Functional requests for unsupported PIDs, InfoTypes or services get no answer; physical
    ones get a negative response (7F 01 12 for an unsupported PID), per SAE J1979.
    """

    def __init__(self, state: EcuState, supported: Iterable[int] = DEFAULT_SUPPORTED) -> None:
        pids = frozenset(supported) - set(obd.SUPPORTED_PID_BASES)
        unknown = pids - set(_PID_FIELDS) - {obd.PID_MONITOR_STATUS}
        if unknown:
            raise ValueError(f"the simulator cannot encode PIDs {sorted(unknown)}")
        # Bitmap PID 00 is mandatory; each further bitmap exists when a PID above it does.
        bitmaps = {b for b in obd.SUPPORTED_PID_BASES if b == 0 or any(p > b for p in pids)}
        self.state = state
        self.supported = pids | bitmaps

    def answer(self, request: bytes, *, functional: bool) -> bytes | None:
        if not self.state.ignition_on or not request:
            return None
        service, params = request[0], request[1:]
        if service == obd.SERVICE_CURRENT_DATA:
            return self._current_data(params, functional)
        if service == obd.SERVICE_STORED_DTCS and not params:
            data = obd.encode_stored_dtcs(self.state.dtcs)
            return obd.encode_positive_response(service, data)
        if service == obd.SERVICE_CLEAR_DTCS and not params:
            self.state.dtcs.clear()
            self.state.distance_with_mil_km = 0.0
            return obd.encode_positive_response(service, b"")
        if service == obd.SERVICE_VEHICLE_INFO and len(params) == 1:
            return self._vehicle_info(params[0], functional)
        nrc = obd.NRC_SERVICE_NOT_SUPPORTED
        if service in (obd.SERVICE_STORED_DTCS, obd.SERVICE_CLEAR_DTCS, obd.SERVICE_VEHICLE_INFO):
            nrc = obd.NRC_SUB_FUNCTION_NOT_SUPPORTED  # known service, malformed request
        return None if functional else obd.encode_negative_response(service, nrc)

    def _refuse(self, service: int, functional: bool) -> bytes | None:
        if functional:
            return None
        return obd.encode_negative_response(service, obd.NRC_SUB_FUNCTION_NOT_SUPPORTED)

    def _current_data(self, pids: bytes, functional: bool) -> bytes | None:
        bitmaps = [p for p in pids if obd.is_supported_pid_bitmap(p)]
        # J1979: 1-6 PIDs per request, and bitmap PIDs are never mixed with data PIDs.
        if not 1 <= len(pids) <= obd.MAX_PIDS_PER_REQUEST or 0 < len(bitmaps) < len(pids):
            return self._refuse(obd.SERVICE_CURRENT_DATA, functional)
        answered = [p for p in pids if p in self.supported]
        if not answered:
            return self._refuse(obd.SERVICE_CURRENT_DATA, functional)
        data = b"".join(bytes([p]) + self._encode(p) for p in answered)
        return obd.encode_positive_response(obd.SERVICE_CURRENT_DATA, data)

    def _encode(self, pid: int) -> bytes:
        if obd.is_supported_pid_bitmap(pid):
            return obd.encode_supported_pids(pid, self.supported)
        if pid == obd.PID_MONITOR_STATUS:
            dtcs = self.state.dtcs
            return obd.encode_monitor_status(obd.MonitorStatus(bool(dtcs), len(dtcs)))
        return obd.PIDS[pid].encode(self.state.value(pid))

    def _vehicle_info(self, infotype: int, functional: bool) -> bytes | None:
        service = obd.SERVICE_VEHICLE_INFO
        if infotype == obd.INFOTYPE_SUPPORTED:
            bitmap = obd.encode_supported_pids(0x00, VEHICLE_INFO_SUPPORTED)
            return obd.encode_positive_response(service, bytes([infotype]) + bitmap)
        if infotype == obd.INFOTYPE_VIN:
            return obd.encode_positive_response(service, obd.encode_vin(self.state.vin))
        return self._refuse(service, functional)


class _Inbox(can.Listener):
    """Notifier listener; python-can calls it on the event loop because ``loop=`` is given."""

    def __init__(self, ecu: SimulatedEcu) -> None:
        self._ecu = ecu

    def on_message_received(self, msg: can.Message) -> None:
        self._ecu._offer(msg)


class SimulatedEcu:
    """ECU number ``index`` (0-7) answering on ``bus``; ``async with`` starts and stops it.

    ``pending_delay_s`` > 0 makes every answer start with 7F <SID> 78 (response pending) and
    follow after that delay, as slow ECUs do.
    """

    def __init__(
        self,
        bus: can.BusABC,
        state: EcuState,
        *,
        index: int = 0,
        supported: Iterable[int] = DEFAULT_SUPPORTED,
        padding: int | None = PADDING,
        pending_delay_s: float = 0.0,
        timeout_s: float = TIMEOUT_S,
        queue_size: int = 64,
    ) -> None:
        if not 0 <= index <= 7:
            raise ValueError("ISO 15765-4 allows ECUs 0-7")
        self.responder = J1979Responder(state, supported)
        self.request_id = PHYSICAL_BASE + index
        self.response_id = self.request_id + RESPONSE_OFFSET
        self.pending_delay_s = pending_delay_s
        self._bus = bus
        self._padding = padding
        self._timeout_s = timeout_s
        self._queue: asyncio.Queue[can.Message] = asyncio.Queue(maxsize=queue_size)
        self._notifier: can.Notifier | None = None
        self._task: asyncio.Task[None] | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            ("requests", "responses", "silent", "isotp_errors", "aborted", "ignored", "dropped"), 0
        )

    @property
    def state(self) -> EcuState:
        return self.responder.state

    async def __aenter__(self) -> SimulatedEcu:
        loop = asyncio.get_running_loop()
        self._notifier = can.Notifier(self._bus, [_Inbox(self)], timeout=0.05, loop=loop)
        self._task = asyncio.create_task(self._run(), name=f"sim-ecu-{self.response_id:#x}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._notifier is not None:
            await asyncio.to_thread(self._notifier.stop)  # joins the receive thread

    def _offer(self, msg: can.Message) -> None:
        if msg.is_extended_id or msg.arbitration_id not in (FUNCTIONAL_ID, self.request_id):
            return
        try:
            self._queue.put_nowait(msg)
        except asyncio.QueueFull:
            self.counters["dropped"] += 1

    def _send(self, data: bytes) -> None:
        self._bus.send(
            can.Message(arbitration_id=self.response_id, data=data, is_extended_id=False)
        )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        physical = Reassembler(padding=self._padding, timeout_s=self._timeout_s)
        while True:
            msg = await self._queue.get()
            data = bytes(msg.data)
            functional = msg.arbitration_id == FUNCTIONAL_ID
            if functional and frame_type(data) is not FrameType.SINGLE:
                self.counters["ignored"] += 1  # ISO 15765-4: functional requests are SF only
                continue
            receiver = Reassembler(active=False) if functional else physical
            for event in receiver.feed(data, loop.time()):
                if isinstance(event, Complete):
                    await self._serve(event.payload, functional)
                elif isinstance(event, SendFlowControl):
                    self._send(event.data)
                elif isinstance(event, Rejected):
                    self.counters["isotp_errors"] += 1

    async def _serve(self, request: bytes, functional: bool) -> None:
        self.counters["requests"] += 1
        answer = self.responder.answer(request, functional=functional)
        if answer is None:
            self.counters["silent"] += 1
            return
        if self.pending_delay_s > 0:
            pending = obd.encode_negative_response(request[0], obd.NRC_RESPONSE_PENDING)
            await self._transmit(pending)
            await asyncio.sleep(self.pending_delay_s)
        if await self._transmit(answer):
            self.counters["responses"] += 1

    async def _transmit(self, payload: bytes) -> bool:
        loop = asyncio.get_running_loop()
        sender = Sender(payload, padding=self._padding, timeout_s=self._timeout_s)
        try:
            while not sender.done:
                for data in sender.poll(loop.time()):
                    self._send(data)
                wake_s = sender.wake_s
                if sender.state is SenderState.WAIT_FLOW_CONTROL and wake_s is not None:
                    sender.on_flow_control(await self._flow_control(wake_s), loop.time())
                elif wake_s is not None:
                    await asyncio.sleep(max(0.0, wake_s - loop.time()))
        except IsoTpError:
            self.counters["aborted"] += 1
            return False
        return True

    async def _flow_control(self, deadline_s: float) -> bytes:
        """The next flow control frame from the tester; raises IsoTpTimeoutError at N_Bs."""
        loop = asyncio.get_running_loop()
        while (remaining := deadline_s - loop.time()) > 0:
            try:
                async with asyncio.timeout(remaining):
                    msg = await self._queue.get()
            except TimeoutError:
                break
            data = bytes(msg.data)
            if msg.arbitration_id == self.request_id and frame_type(data) is FrameType.FLOW_CONTROL:
                return data
            self.counters["ignored"] += 1  # a request while busy sending: a real ECU drops it
        raise IsoTpTimeoutError("tester sent no flow control within N_Bs")
