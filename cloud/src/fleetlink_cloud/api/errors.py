"""Error responses: every failure is JSON ``{"detail": ...}`` with a fitting status.

| raised                                   | status | detail                        |
|------------------------------------------|--------|-------------------------------|
| ``AuthFailed``                           | 401/403| what is wrong with the token  |
| ``NotFound``                             | 404    | what was not found            |
| ``BadCursor``                            | 400    | the cursor is not ours        |
| ``AlreadyExists``, ``CommandConflict``   | 409    | what is taken                 |
| ``StaleVersion`` (If-Match)              | 412    | the current version (ETag)    |
| ``ConfigTooLarge``                       | 413    | its size and the limit        |
| ``InvalidCommand``, ``InvalidConfig``    | 422    | what the body got wrong       |
| request validation (FastAPI)             | 422    | a list of field errors        |
| a body over the limit (``bodylimit``)    | 413    | the limit                     |
| ``StoreError`` (database down)           | 503    | "store unavailable"           |

On a WebSocket the same errors become an HTTP denial response before the handshake when the
server supports it (uvicorn does), else a close with code 1008 (policy violation).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError, WebSocketRequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response
from starlette.status import WS_1008_POLICY_VIOLATION
from starlette.types import ExceptionHandler
from starlette.websockets import WebSocket

from fleetlink_cloud.api.auth import AuthFailed
from fleetlink_cloud.commands import CommandConflict, InvalidCommand
from fleetlink_cloud.configs import ConfigTooLarge, InvalidConfig
from fleetlink_cloud.errors import NotFound, StoreError
from fleetlink_cloud.store.base import AlreadyExists, BadCursor, StaleVersion

log = logging.getLogger(__name__)

_WS_DENIAL = "websocket.http.response"

Handler = Callable[[HTTPConnection, Exception], Awaitable[Response | None]]
"""An exception handler serving HTTP requests and WebSockets alike."""


class ErrorOut(BaseModel):
    """The body of every error response."""

    detail: Any


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for error statuses, all with ``ErrorOut`` bodies."""
    text = {
        400: "Bad request: a cursor this server did not issue, or an unreadable body",
        401: "Missing, malformed, unknown or revoked token",
        403: "The token's scope is not enough",
        404: "Not found",
        409: "Conflict: the id is taken",
        412: "If-Match names another version than the current one (its ETag is sent)",
        413: "The request body (or configuration document) is too large",
        422: "Invalid parameters or body",
        428: "If-Match is required to change an existing document",
        503: "The store is unavailable",
    }
    return {c: {"model": ErrorOut, "description": text[c]} for c in codes}


async def _reply(
    conn: HTTPConnection, status: int, detail: Any, headers: Mapping[str, str] | None = None
) -> Response | None:
    """A JSON error response; on a WebSocket without the denial extension, close instead."""
    if isinstance(conn, WebSocket) and _WS_DENIAL not in (conn.scope.get("extensions") or {}):
        reason = detail if isinstance(detail, str) else "invalid request"
        await conn.close(WS_1008_POLICY_VIOLATION, reason[:120])
        return None
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _auth_failed(conn: HTTPConnection, exc: Exception) -> Response | None:
    assert isinstance(exc, AuthFailed)
    return await _reply(conn, exc.status_code, exc.detail, exc.headers)


def _fixed(status: int, detail: str | None = None) -> Handler:
    async def handler(conn: HTTPConnection, exc: Exception) -> Response | None:
        return await _reply(conn, status, detail or str(exc))

    return handler


async def _http_error(conn: HTTPConnection, exc: Exception) -> Response | None:
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return await _reply(conn, exc.status_code, exc.detail, exc.headers)


async def _stale(conn: HTTPConnection, exc: Exception) -> Response | None:
    assert isinstance(exc, StaleVersion)
    headers = {"ETag": f'"{exc.current}"'} if exc.current else None
    return await _reply(conn, 412, str(exc), headers)


async def _store_down(conn: HTTPConnection, exc: Exception) -> Response | None:
    log.error("store error on %s %s: %s", conn.scope.get("method", "WS"), conn.url.path, exc)
    return await _reply(conn, 503, "store unavailable")


async def _validation(conn: HTTPConnection, exc: Exception) -> Response | None:
    assert isinstance(exc, RequestValidationError | WebSocketRequestValidationError)
    return await _reply(conn, 422, jsonable_encoder(exc.errors()))


def install(app: FastAPI) -> None:
    """Register the handlers of the table above on ``app``."""
    table: list[tuple[type[Exception], Handler]] = [
        (HTTPException, _http_error),
        (AuthFailed, _auth_failed),
        (NotFound, _fixed(404)),
        (BadCursor, _fixed(400, "invalid cursor")),
        (AlreadyExists, _fixed(409, "already exists")),
        (CommandConflict, _fixed(409)),
        (InvalidCommand, _fixed(422)),
        (StaleVersion, _stale),
        (ConfigTooLarge, _fixed(413)),
        (InvalidConfig, _fixed(422)),
        (StoreError, _store_down),
        (RequestValidationError, _validation),
        (WebSocketRequestValidationError, _validation),
    ]
    for exc_type, handler in table:
        # Starlette types handlers per connection kind; these serve HTTP and WebSocket alike.
        app.add_exception_handler(exc_type, cast(ExceptionHandler, handler))
