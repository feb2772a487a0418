"""Bearer-token authentication and scope checks, as FastAPI dependencies.

A route names what it needs by taking a ``Principal`` through one of the aliases below
(``Reader``, ``Dispatcher``, ``Admin``, ...). ``create_app`` reads the same declaration back
(``required_scopes``) to print the scope in every operation's OpenAPI description, and the
tests walk ``app.routes`` with it, so a route cannot be added without saying what it needs.

| alias         | the token's scope must grant          |
|---------------|---------------------------------------|
| ``Reader``    | read (every scope does)               |
| ``Dispatcher``| dispatch (dispatch, admin)            |
| ``Commander`` | dispatch or maintenance (and admin)   |
| ``Admin``     | admin                                 |

A token comes in ``Authorization: Bearer <token>``; a WebSocket may pass ``?token=<token>``
instead, because browsers cannot set headers on one. Failures raise ``AuthFailed``, which the
error handlers turn into 401 (missing, malformed, unknown or revoked token) or 403 (valid token,
scope not enough), counted in ``ApiContext.counters``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Depends
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.routing import APIRoute
from fastapi.security.base import SecurityBase
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute

from fleetlink_cloud import tokens
from fleetlink_cloud.api.deps import ApiContext, Principal, context
from fleetlink_cloud.errors import AuthError
from fleetlink_cloud.store.base import Scope

SCHEME_NAME = "bearerAuth"


class AuthFailed(AuthError):
    """401 or 403, with the ``WWW-Authenticate`` challenge to send (RFC 6750)."""

    def __init__(self, status_code: int, detail: str, challenge: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.headers = {"WWW-Authenticate": challenge}


def _presented_token(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization")
    if header is not None:
        kind, _, value = header.partition(" ")
        return value.strip() if kind.lower() == "bearer" else ""
    if conn.scope["type"] == "websocket":
        return conn.query_params.get("token")
    return None


async def authenticate(conn: HTTPConnection, ctx: ApiContext) -> Principal:
    """The caller of ``conn``; raise AuthFailed (401) without a valid, unrevoked token."""
    presented = _presented_token(conn)
    if presented is None:
        ctx.counters.unauthenticated += 1
        raise AuthFailed(401, "missing bearer token", "Bearer")
    parsed = tokens.parse(presented)
    row = None if parsed is None else await ctx.store.token_by_hash(tokens.hash_secret(parsed[1]))
    if parsed is None or row is None or row.token_id != parsed[0] or not row.active:
        ctx.counters.unauthenticated += 1
        raise AuthFailed(401, "invalid or revoked token", 'Bearer error="invalid_token"')
    return Principal(row.token_id, row.name, row.scope)


class Authorize(SecurityBase):
    """Dependency: authenticate, then require a token granting any of ``scopes``.

    A ``SecurityBase``, so FastAPI lists the bearer scheme in the OpenAPI document.
    """

    def __init__(self, *scopes: Scope) -> None:
        self.scopes = scopes
        self.scheme_name = SCHEME_NAME
        self.model = HTTPBearerModel(
            bearerFormat="flk_<id>_<secret>",
            description="An API token, minted by an operator (POST /v1/tokens needs admin).",
        )

    async def __call__(self, conn: HTTPConnection) -> Principal:
        ctx = context(conn)
        principal = await authenticate(conn, ctx)
        conn.state.principal = principal  # for the audit log
        if not any(tokens.allows(principal.scope, s) for s in self.scopes):
            ctx.counters.forbidden += 1
            needed = " or ".join(self.scopes)
            raise AuthFailed(
                403,
                f"token scope {principal.scope!r} is not enough: this needs {needed}",
                f'Bearer error="insufficient_scope", scope="{" ".join(self.scopes)}"',
            )
        return principal


READ = Authorize("read")
DISPATCH = Authorize("dispatch")
COMMAND = Authorize("dispatch", "maintenance")
ADMIN = Authorize("admin")

Reader = Annotated[Principal, Depends(READ)]
Dispatcher = Annotated[Principal, Depends(DISPATCH)]
Commander = Annotated[Principal, Depends(COMMAND)]
Admin = Annotated[Principal, Depends(ADMIN)]


def _authorizers(dependant: Any) -> list[Authorize]:
    found: list[Authorize] = []
    if isinstance(dependant.call, Authorize):
        found.append(dependant.call)
    for sub in dependant.dependencies:
        found.extend(_authorizers(sub))
    return found


def required_scopes(route: Any) -> tuple[Scope, ...] | None:
    """The scopes a route accepts (any of them), or None for a public route.

    ``route`` is anything with FastAPI's ``dependant`` (a route, or the route contexts that
    ``fastapi.routing.iter_route_contexts`` yields for included routers).
    """
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return None
    found = _authorizers(dependant)
    if not found:
        return None
    if len({a.scopes for a in found}) > 1:
        raise RuntimeError(f"route {route.path} declares two different scope requirements")
    return found[0].scopes


def scope_note(scopes: tuple[Scope, ...] | None) -> str:
    """The line that opens an operation's OpenAPI description."""
    if scopes is None:
        return "**Public**: no token needed."
    return "**Required scope**: " + " or ".join(f"`{s}`" for s in scopes) + "."


def document_scopes(routes: Sequence[BaseRoute]) -> None:
    """Open each operation's description with the scope it needs; idempotent.

    Called by ``create_app`` on every router before including it, so no route can go
    undocumented.
    """
    for route in routes:
        if not isinstance(route, APIRoute):
            continue
        scopes = required_scopes(route)
        note = scope_note(scopes)
        if not route.description.startswith(note):
            route.description = f"{note}\n\n{route.description}".strip()
        route.openapi_extra = {
            **(route.openapi_extra or {}),
            "x-required-scopes": list(scopes or ()),
        }
