"""OBD-II poller: SAE J1979 services 01, 03 and 09 over ISO 15765-4, on a CAN port.

Discovery asks the supported-PID bitmaps (PIDs 00, 20, 40, ...) on the functional address and
keeps, per answering ECU (0x7E8-0x7EF), the PIDs it supports. Then the configured PIDs that
some ECU supports are polled every ``poll_interval_s``, stored DTCs (service 03) every
``dtc_interval_s`` and on request (``request_dtc_read``), and the VIN (service 09 InfoType 02)
once. A multi-frame answer gets its flow control on the ECU's physical address 0x7E0+n. A
request ends when every ECU expected to answer has answered, or at its timeout. When the ECUs
fall silent (ignition off), the poller goes back to discovery. ``reconfigure`` changes the PIDs
and the poll interval while running (remote configuration): a cycle with the new ones starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from fleetlink_edge.config import ObdSettings
from fleetlink_edge.decode.isotp import (
    Complete,
    Reassembler,
    Rejected,
    SendFlowControl,
    encode_single,
)
from fleetlink_edge.errors import SourceClosed, SourceError
from fleetlink_edge.frames import CanFrame
from fleetlink_protocols import obd
from fleetlink_protocols.records import Dtc, DtcSource, Record, SignalValue

log = logging.getLogger(__name__)

RESPONSE_IDS = range(0x7E8, 0x7F0)  # ISO 15765-4 table 5: legislated OBD response IDs
PHYSICAL_OFFSET = 8  # ECU n answers on 0x7E8+n and takes flow control on 0x7E0+n
COUNTERS = (
    "requests",
    "responses",
    "timeouts",  # requests that some expected ECU (or, if none was expected, every ECU) ignored
    "negative_responses",
    "response_pending",
    "isotp_errors",
    "decode_errors",
    "unsolicited",  # answers to another request, late answers
    "send_errors",
    "rediscoveries",
    "overruns",  # poll cycles that took longer than their interval
    "dtc_reads_requested",  # service 03 reads asked for out of schedule (request_dtc_read)
)

DtcReading = dict[int, frozenset[str]]
"""ECU response id -> the stored DTCs it reported; empty when no ECU answered."""


class FrameSubscription(Protocol):
    """What the poller needs of ``sources.can.FrameQueue``."""

    dropped: int

    async def get(self) -> CanFrame: ...
    def get_nowait(self) -> CanFrame | None: ...
    def close(self) -> None: ...


class ObdPort(Protocol):
    """What the poller needs of ``sources.can.CanPort``."""

    def listen(
        self, *, maxsize: int, accept: Callable[[CanFrame], bool] | None = None
    ) -> FrameSubscription: ...

    async def send(
        self, arbitration_id: int, data: bytes, *, is_extended: bool = False
    ) -> None: ...


def is_obd_response(frame: CanFrame) -> bool:
    return not frame.is_extended and frame.arbitration_id in RESPONSE_IDS


@dataclass(frozen=True, slots=True)
class EcuAnswer:
    """One ECU's final answer to a request; ``ts_wall_ns`` is when its last frame arrived."""

    ecu_id: int
    response: obd.PositiveResponse | obd.NegativeResponse
    ts_wall_ns: int


@dataclass(slots=True)
class Exchange:
    """One functional request's answers, sans-I/O: feed response frames, send what it returns.

    Reassembles each ECU's ISO-TP answer, checks that it answers this request (a late answer
    to an earlier request is counted as unsolicited), and waits longer on 7F xx 78.
    """

    request: bytes
    deadline_s: float
    settings: ObdSettings
    counters: dict[str, int]
    answers: dict[int, EcuAnswer] = field(default_factory=dict)
    _streams: dict[int, Reassembler] = field(default_factory=dict)
    _pending: dict[int, float] = field(default_factory=dict)  # ECU -> P2* deadline after 78

    def wait_until_s(self) -> float:
        """The request's deadline, pushed back while an ECU is mid-answer or said "pending"."""
        busy = [r.deadline_s for r in self._streams.values() if r.deadline_s is not None]
        pending = [t for ecu, t in self._pending.items() if ecu not in self.answers]
        return max([self.deadline_s, *busy, *pending])

    def feed(self, frame: CanFrame, now_s: float) -> list[tuple[int, bytes]]:
        """Process one response frame; returns (CAN id, data) flow control frames to send."""
        ecu = frame.arbitration_id
        stream = self._streams.get(ecu)
        if stream is None:
            stream = Reassembler(
                padding=self.settings.padding_byte, timeout_s=self.settings.isotp_timeout_s
            )
            self._streams[ecu] = stream
        out: list[tuple[int, bytes]] = []
        for event in stream.feed(frame.data, now_s):
            if isinstance(event, SendFlowControl):
                out.append((ecu - PHYSICAL_OFFSET, event.data))
            elif isinstance(event, Rejected):
                self._count("isotp_errors")
                log.debug("ISO-TP from %#x: %s", ecu, event.error)
            elif isinstance(event, Complete):
                self._on_payload(ecu, event.payload, frame.ts_wall_ns, now_s)
        return out

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    def _on_payload(self, ecu: int, payload: bytes, ts_wall_ns: int, now_s: float) -> None:
        try:
            response = obd.parse_response(payload)
        except obd.ObdDecodeError:
            self._count("decode_errors")
            return
        if not self._answers_request(response):
            self._count("unsolicited")
        elif isinstance(response, obd.NegativeResponse):
            if response.nrc == obd.NRC_RESPONSE_PENDING:
                self._count("response_pending")
                self._pending[ecu] = now_s + self.settings.response_pending_timeout_s
                return
            self._count("negative_responses")
            self.answers[ecu] = EcuAnswer(ecu, response, ts_wall_ns)
        else:
            self._count("responses")
            self.answers[ecu] = EcuAnswer(ecu, response, ts_wall_ns)

    def _answers_request(self, response: obd.PositiveResponse | obd.NegativeResponse) -> bool:
        if response.service != self.request[0]:
            return False
        if isinstance(response, obd.NegativeResponse) or len(self.request) == 1:
            return True
        # Services 01 and 09 echo the PID / InfoType asked for.
        return bool(response.data) and response.data[0] in self.request[1:]


class ObdPoller:
    """Polls one vehicle's OBD-II ECUs through ``port``; iterate ``records()`` to run it."""

    def __init__(self, port: ObdPort, settings: ObdSettings) -> None:
        self._port = port
        self.support: dict[int, frozenset[int]] = {}  # ECU response id -> supported PIDs
        self.vin: str | None = None
        self._dtcs: dict[int, frozenset[str]] = {}
        self._queue: FrameSubscription | None = None
        self._counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._dtc_waiters: list[asyncio.Future[DtcReading]] = []
        self._wake = asyncio.Event()
        self._replan = False  # reconfigured while polling: the next cycle is due now
        self._settings = settings
        self._pids: list[int] = []
        self.reconfigure(settings)

    def reconfigure(self, settings: ObdSettings) -> None:
        """Poll ``settings.pids`` every ``settings.poll_interval_s``, the first cycle at once
        (remote configuration); discovery already knows which of them each ECU supports."""
        pids = [p for p in dict.fromkeys(settings.pids) if p in obd.PIDS]
        if skipped := sorted(set(settings.pids) - set(pids)):
            log.warning("OBD PIDs without a signal decoder are not polled: %s", skipped)
        before, self._settings = self._settings, settings
        changed = pids != self._pids or settings.poll_interval_s != before.poll_interval_s
        self._pids = pids
        if changed and self.support:
            log.info("OBD PIDs now %s; polling %s", pids, self.polled_pids)
            self._replan = True
            self._wake.set()

    @property
    def counters(self) -> dict[str, int]:
        """Requests, responses, timeouts, negative responses, ISO-TP errors, queue drops..."""
        dropped = 0 if self._queue is None else self._queue.dropped
        return {**self._counters, "dropped": dropped}

    @property
    def polled_pids(self) -> list[int]:
        """The configured PIDs at least one ECU announced (empty before discovery)."""
        supported = frozenset().union(*self.support.values())
        return [p for p in self._pids if p in supported]

    async def records(self) -> AsyncIterator[Record]:
        """Discover, then poll forever, yielding SignalValue and Dtc records as they come.

        Ends with the port's SourceClosed/SourceError when the CAN port closes or fails.
        """
        s = self._settings
        self._queue = self._port.listen(maxsize=s.queue_size, accept=is_obd_response)
        loop = asyncio.get_running_loop()
        try:
            while True:
                for record in await self._discover():
                    yield record
                if not self.support:
                    self._answer_dtc_waiters({})  # nobody on the bus to ask
                    await asyncio.sleep(s.discovery_retry_s)
                    continue
                next_poll = next_dtc = loop.time()
                silent_cycles = 0
                while silent_cycles < s.rediscover_after_silent_cycles:
                    if self._replan:
                        self._replan, next_poll = False, loop.time()
                    batch: list[Record] = []
                    answered = False
                    due = loop.time() >= next_dtc
                    if due or self._dtc_waiters:
                        answered |= await self._poll_dtcs(batch)
                    if due:
                        next_dtc = self._next_tick(next_dtc, s.dtc_interval_s, loop.time())
                    if loop.time() >= next_poll:
                        answered |= await self._poll_pids(batch)
                        interval_s = self._settings.poll_interval_s  # may change live
                        next_poll = self._next_tick(next_poll, interval_s, loop.time())
                    silent_cycles = 0 if answered else silent_cycles + 1
                    for record in batch:
                        yield record
                    await self._nap(max(0.0, min(next_poll, next_dtc) - loop.time()))
                log.info("OBD ECUs went silent; rediscovering")
                self._count("rediscoveries")
                self.support = {}
        finally:
            self._queue.close()
            self._answer_dtc_waiters(None)  # stopped

    def request_dtc_read(self) -> asyncio.Future[DtcReading]:
        """A service 03 read at the poll loop's next turn (the ``read_dtcs`` command).

        The future gets each answering ECU's stored codes ({} if none answered), or
        SourceClosed if the poller stops first; cancelling it is harmless. The read's Dtc
        records come out of ``records()``, every stored code (the sampler drops repeats).
        """
        waiter: asyncio.Future[DtcReading] = asyncio.get_running_loop().create_future()
        self._dtc_waiters.append(waiter)
        self._count("dtc_reads_requested")
        self._wake.set()
        return waiter

    async def _nap(self, delay_s: float) -> None:
        """Sleep until the next poll is due, or until a DTC read or a reconfigure comes."""
        if self._dtc_waiters or self._replan:
            return
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await self._wake.wait()

    def _answer_dtc_waiters(self, reading: DtcReading | None, count: int | None = None) -> None:
        """Resolve the first ``count`` waiters (all when None), those asked before the read;
        ``reading`` None: the poller stopped."""
        n = len(self._dtc_waiters) if count is None else count
        answered, self._dtc_waiters = self._dtc_waiters[:n], self._dtc_waiters[n:]
        for waiter in (w for w in answered if not w.done()):
            if reading is None:
                waiter.set_exception(SourceClosed("the OBD poller stopped"))
            else:
                waiter.set_result(dict(reading))

    def _count(self, key: str, n: int = 1) -> None:
        self._counters[key] = self._counters.get(key, 0) + n

    def _next_tick(self, tick_s: float, interval_s: float, now_s: float) -> float:
        tick_s += interval_s
        if tick_s < now_s:  # a cycle took longer than the interval: skip, do not burst
            self._count("overruns")
            tick_s = now_s + interval_s
        return tick_s

    async def request(
        self, payload: bytes, *, expect: Iterable[int] | None = None
    ) -> dict[int, EcuAnswer]:
        """Send ``payload`` to 0x7DF; collect answers until ``expect`` answered or timeout."""
        queue = self._queue
        if queue is None:
            raise SourceError("the OBD poller is not running (iterate records() first)")
        while (stale := queue.get_nowait()) is not None:
            self._count("unsolicited")  # an answer that came after its request timed out
            log.debug("stale OBD frame %#x %s", stale.arbitration_id, stale.data.hex())
        loop = asyncio.get_running_loop()
        s = self._settings
        exchange = Exchange(payload, loop.time() + s.response_timeout_s, s, self._counters)
        self._count("requests")
        if not await self._send(s.request_id, encode_single(payload, padding=s.padding_byte)):
            return {}
        wanted = None if expect is None else frozenset(expect)
        while wanted is None or not wanted <= exchange.answers.keys():
            remaining = exchange.wait_until_s() - loop.time()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    frame = await queue.get()
            except TimeoutError:
                break
            for can_id, data in exchange.feed(frame, loop.time()):
                await self._send(can_id, data)  # flow control; if lost, the ECU times out
        if not exchange.answers or (wanted is not None and not wanted <= exchange.answers.keys()):
            self._count("timeouts")
        return exchange.answers

    async def _send(self, can_id: int, data: bytes) -> bool:
        try:
            await self._port.send(can_id, data)
        except SourceClosed:
            raise  # the port is gone: this source ends too
        except SourceError as exc:
            self._count("send_errors")
            log.warning("OBD frame %#x %s not sent: %s", can_id, data.hex(), exc)
            return False
        return True

    @staticmethod
    def _positives(answers: dict[int, EcuAnswer]) -> list[tuple[EcuAnswer, bytes]]:
        """Positive answers with their data, lowest ECU id (the engine ECU, 0x7E8) first."""
        return [
            (a, a.response.data)
            for _, a in sorted(answers.items())
            if isinstance(a.response, obd.PositiveResponse)
        ]

    async def _discover(self) -> list[Record]:
        """Read the supported-PID bitmaps, then the VIN if it is not known yet."""
        support: dict[int, set[int]] = {}
        base: int | None = 0x00
        while base is not None:
            asked = base
            expect = None if asked == 0 else [e for e, p in support.items() if asked in p]
            answers = await self.request(bytes([obd.SERVICE_CURRENT_DATA, asked]), expect=expect)
            for answer, data in self._positives(answers):
                try:
                    items = obd.split_current_data(data)
                    bitmap = obd.decode_supported_pids(asked, dict(items)[asked])
                except (obd.ObdDecodeError, KeyError):
                    self._count("decode_errors")
                    continue
                support.setdefault(answer.ecu_id, set()).update(bitmap)
            following = asked + 0x20
            announced = any(following in p for p in support.values())
            base = following if announced and following < 0x100 else None
        self.support = {ecu: frozenset(p) for ecu, p in support.items()}
        if self.support:
            log.info(
                "OBD ECUs %s; polling PIDs %s", [hex(e) for e in self.support], self.polled_pids
            )
        if self.support and self.vin is None:
            return await self._read_vin()
        return []

    async def _read_vin(self) -> list[Record]:
        request = bytes([obd.SERVICE_VEHICLE_INFO, obd.INFOTYPE_VIN])
        for answer, data in self._positives(await self.request(request)):
            try:
                self.vin = obd.decode_vin(data)
            except obd.ObdDecodeError:
                self._count("decode_errors")
                continue
            return [SignalValue(answer.ts_wall_ns, obd.PATH_VIN, self.vin)]
        return []

    async def _poll_pids(self, out: list[Record]) -> bool:
        """Poll every supported configured PID once; True if any ECU answered."""
        pids = self.polled_pids
        size = self._settings.pids_per_request
        answered = False
        for chunk in (pids[i : i + size] for i in range(0, len(pids), size)):
            expect = [e for e, p in self.support.items() if p.intersection(chunk)]
            answers = await self.request(bytes([obd.SERVICE_CURRENT_DATA, *chunk]), expect=expect)
            answered |= bool(answers)
            seen: set[int] = set()
            for answer, data in self._positives(answers):
                try:
                    items = obd.split_current_data(data)
                    values = [(pid, obd.decode_pid(pid, raw)) for pid, raw in items]
                except obd.ObdDecodeError:
                    self._count("decode_errors")
                    continue
                for pid, (path, value) in values:
                    if pid in chunk and pid not in seen:  # one value per PID: lowest ECU wins
                        seen.add(pid)
                        out.append(SignalValue(answer.ts_wall_ns, path, value))
        return answered

    async def _poll_dtcs(self, out: list[Record]) -> bool:
        """Service 03; emits a Dtc when a code appears (every stored code on a requested read),
        and active=False when it clears."""
        asked = len(self._dtc_waiters)
        answers = await self.request(bytes([obd.SERVICE_STORED_DTCS]), expect=self.support)
        reading: DtcReading = {}
        for answer, data in self._positives(answers):
            try:
                codes = frozenset(obd.decode_stored_dtcs(data))
            except obd.ObdDecodeError:
                self._count("decode_errors")
                continue
            before = self._dtcs.get(answer.ecu_id, frozenset())
            ts, ecu = answer.ts_wall_ns, answer.ecu_id
            shown = codes if asked else codes - before
            out.extend(Dtc(ts, DtcSource.OBD, c, ecu=ecu) for c in sorted(shown))
            out.extend(
                Dtc(ts, DtcSource.OBD, c, ecu=ecu, active=False) for c in sorted(before - codes)
            )
            self._dtcs[answer.ecu_id] = codes
            reading[ecu] = codes
        self._answer_dtc_waiters(reading, asked)
        return bool(answers)
