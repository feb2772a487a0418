"""The driver's local interface: JSON lines on a Unix domain socket, and a client for it.

The agent serves ``jobs.socket`` (default beside the outbox: ``outbox.driver.sock``) with mode
0660, so members of the agent's group may use it. Each request is one JSON object on one line
and gets one line back::

    {"op": "list"}                      -> {"ok": true, "jobs": [JOB, ...]}
    {"op": "show", "job_id": ID}        -> {"ok": true, "job": JOB}
    {"op": "answer", "job_id": ID, "answer": "accept", "reason": R?, "delay_s": N?}
                                        -> {"ok": true, "job": JOB, "event": EVENT}
    refused                             -> {"ok": false, "error": CODE, "message": TEXT}

An answer's reply comes once its Event is in the outbox. docs/driver.md has JOB, EVENT and the
error codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from fleetlink_edge.config import EdgeSettings
from fleetlink_edge.errors import EdgeError
from fleetlink_edge.job_rules import Answer, AnswerKind, Job
from fleetlink_edge.jobs import JobBoard
from fleetlink_edge.offers import JobNotStored, JobRefused, UnknownJob, stop_args
from fleetlink_protocols.records import Event

log = logging.getLogger(__name__)

SOCKET_MODE: Final = 0o660
MAX_REQUEST_BYTES: Final = 64 * 1024
MAX_RESPONSE_BYTES: Final = 8 << 20  # a full board of 1000 two-stop jobs with long notes fits
MAX_CLIENTS: Final = 8
IDLE_TIMEOUT_S: Final = 60.0
ERRORS: Final = ("bad_request", "unknown_job", "refused", "not_stored", "busy")


class DriverSocketError(EdgeError):
    """The driver socket cannot be served (path taken, too long, not writable)."""


class DriverUnavailable(EdgeError):
    """The agent's driver socket cannot be reached: not running, no permission, no answer."""


class _BadRequest(Exception):
    pass


def socket_path(settings: EdgeSettings) -> Path:
    """``jobs.socket``, else beside the outbox (``outbox.driver.sock``)."""
    return settings.jobs.socket or settings.outbox.path.with_suffix(".driver.sock")


def job_view(job: Job, now_wall_ns: int) -> dict[str, Any]:
    """A job as the driver interface shows it (JSON)."""
    offer = job.offer
    return {
        "job_id": offer.job_id,
        "kind": offer.kind,
        "version": offer.version,
        "state": job.state.value,
        "respond_by": offer.respond_by_s,
        "late": job.late(now_wall_ns),
        "customer_ref": offer.customer_ref,
        "stops": [stop_args(s) for s in offer.stops],
        "stops_arrived": job.stops_arrived,
        "reason": job.reason,
        "delay_s": job.delay_s,
        "eta": job.eta_s,
        "note": job.note,
        "received_wall_ns": job.received_wall_ns,
        "changed_wall_ns": job.changed_wall_ns,
    }


def event_view(event: Event) -> dict[str, Any]:
    return {"kind": event.kind, "ts_wall_ns": event.ts_wall_ns, "data": dict(event.data)}


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": code, "message": message}


class DriverSocket:
    """Serves ``board`` on ``path`` while entered; built by the composition root.

    Entering raises DriverSocketError when the path cannot be served (another live agent on it
    included); a socket file left by a dead agent is replaced.
    """

    def __init__(
        self,
        board: JobBoard,
        path: Path,
        *,
        max_clients: int = MAX_CLIENTS,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        self._board = board
        self.path = path
        self._max_clients = max_clients
        self._idle_timeout_s = idle_timeout_s
        self._server: asyncio.Server | None = None
        self._inode: int | None = None
        self._clients: set[asyncio.Task[Any]] = set()
        # Few on purpose: they ride in every Health record (at most 128 counters).
        self.counters: dict[str, int] = dict.fromkeys(("requests", "bad_requests", "busy"), 0)

    async def __aenter__(self) -> DriverSocket:
        sock = await self._bind()
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, sock=sock, limit=MAX_REQUEST_BYTES
            )
        except OSError as exc:
            sock.close()
            raise DriverSocketError(f"cannot serve {self.path}: {exc}") from exc
        log.info("driver interface on %s", self.path)
        return self

    async def _bind(self) -> socket.socket:
        path = self.path
        if await asyncio.to_thread(path.is_socket) and await _answers(path):
            raise DriverSocketError(f"another process serves {path}")
        try:
            sock, self._inode = await asyncio.to_thread(_bound, path)
        except OSError as exc:
            raise DriverSocketError(f"cannot serve {path}: {exc}") from exc
        return sock

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.to_thread(self._remove)

    def _remove(self) -> None:
        with contextlib.suppress(OSError):
            if self.path.stat().st_ino == self._inode:  # ours, not a successor's
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            if len(self._clients) > self._max_clients:
                self.counters["busy"] += 1
                await _send(writer, _error("busy", f"more than {self._max_clients} clients"))
                return
            await self._converse(reader, writer)
        except (ConnectionError, OSError):
            pass  # the client went away
        finally:
            self._clients.discard(task)
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                async with asyncio.timeout(self._idle_timeout_s):
                    line = await reader.readline()
            except TimeoutError:
                return
            except ValueError:  # readline's way of saying the line is over the limit
                self.counters["bad_requests"] += 1
                await _send(writer, _error("bad_request", f"over {MAX_REQUEST_BYTES} bytes"))
                return
            if not line:
                return
            if line.strip():
                await _send(writer, await self.respond(line))

    async def respond(self, line: bytes) -> dict[str, Any]:
        """The response to one request line."""
        self.counters["requests"] += 1
        board, now = self._board, self._board.now_wall_ns()
        try:
            request = _request(line)
            op = request.get("op")
            if op == "list":
                return {"ok": True, "jobs": [job_view(j, now) for j in board.jobs()]}
            if op == "show":
                return {"ok": True, "job": job_view(board.job(_job_id(request)), now)}
            if op == "answer":
                job, event = await board.answer(_answer(request))
                view = job_view(job, board.now_wall_ns())
                return {"ok": True, "job": view, "event": event_view(event)}
            raise _BadRequest(f"unknown op {op!r}: list, show or answer")
        except _BadRequest as exc:
            self.counters["bad_requests"] += 1
            return _error("bad_request", str(exc))
        except UnknownJob as exc:
            return _error("unknown_job", str(exc))
        except JobRefused as exc:
            return _error("refused", str(exc))
        except JobNotStored as exc:
            log.error("a driver's answer could not be kept: %s", exc)
            return _error("not_stored", str(exc))


def _request(line: bytes) -> dict[str, Any]:
    try:
        request = json.loads(line)
    except ValueError:  # UnicodeDecodeError is one
        raise _BadRequest("a request is one JSON object per line") from None
    if not isinstance(request, dict):
        raise _BadRequest("a request is one JSON object per line")
    return request


def _job_id(request: Mapping[str, Any]) -> str:
    job_id = request.get("job_id")
    if not isinstance(job_id, str):
        raise _BadRequest("job_id must be a string")
    return job_id


def _answer(request: Mapping[str, Any]) -> Answer:
    try:
        kind = AnswerKind(str(request.get("answer")))
    except ValueError:
        known = ", ".join(AnswerKind)
        raise _BadRequest(f"answer must be one of {known}, not {request.get('answer')!r}") from None
    reason, delay_s = request.get("reason", ""), request.get("delay_s")
    if not isinstance(reason, str):
        raise _BadRequest("reason must be a string")
    if delay_s is not None and type(delay_s) is not int:
        raise _BadRequest("delay_s must be an integer number of seconds")
    return Answer(_job_id(request), kind, reason, delay_s)


async def _send(writer: asyncio.StreamWriter, response: Mapping[str, Any]) -> None:
    writer.write(json.dumps(response, separators=(",", ":")).encode() + b"\n")
    await writer.drain()


def _bound(path: Path) -> tuple[socket.socket, int]:
    """A socket bound to ``path`` with SOCKET_MODE, not yet listening, and its inode. A socket
    file already there is replaced: the caller found nobody serving it."""
    if path.is_socket():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(path))
        # Before listen(): nobody can connect until the mode holds.
        os.chmod(path, SOCKET_MODE)
        return sock, path.stat().st_ino
    except BaseException:
        sock.close()
        raise


async def _answers(path: Path) -> bool:
    """Does a live process accept connections on ``path``?"""
    try:
        async with asyncio.timeout(1.0):
            _, writer = await asyncio.open_unix_connection(os.fspath(path))
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def request(
    path: Path, message: Mapping[str, Any], *, timeout_s: float = 10.0
) -> dict[str, Any]:
    """Send one request to the agent and return its response. Raises DriverUnavailable."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_unix_connection(
                os.fspath(path), limit=MAX_RESPONSE_BYTES
            )
            try:
                await _send(writer, message)
                line = await reader.readline()
            finally:
                writer.close()
    except FileNotFoundError:
        raise DriverUnavailable(f"the agent is not running: no driver socket {path}") from None
    except ConnectionRefusedError:
        raise DriverUnavailable(f"the agent is not running: nobody serves {path}") from None
    except PermissionError:
        raise DriverUnavailable(
            f"no permission to use {path}: this user must be in the agent's group"
        ) from None
    except TimeoutError:
        raise DriverUnavailable(f"the agent did not answer within {timeout_s:g} s") from None
    except (OSError, ValueError) as exc:
        raise DriverUnavailable(f"cannot talk to the agent on {path}: {exc}") from None
    try:
        response = json.loads(line) if line else None
    except ValueError:
        response = None
    if not isinstance(response, dict):
        raise DriverUnavailable("the agent's answer is not a JSON object")
    return response
