"""The audit log: one ``store.add_audit`` row for every write request of an authenticated caller.

A pure ASGI middleware around the routes. For POST, PUT, PATCH and DELETE under ``/v1`` it
writes who (the token id), what (method, path, final status, and the handler's
``request.state.audit_detail`` if it set one) and when (the API clock), just before the
response starts, so a client that saw the response can find its row. Refused writes (403, 404,
409, 422) are audited too: an attempt is worth knowing. Requests without a valid token are
only counted (``counters.unauthenticated``), so anonymous noise cannot flood the log. A failing
audit write is logged and counted; it never turns a completed write into an error.
"""

from __future__ import annotations

import logging
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetlink_cloud.api.deps import ApiContext, Principal
from fleetlink_cloud.errors import CloudError

log = logging.getLogger(__name__)

WRITE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
AUDITED_PREFIX: Final = "/v1/"
MAX_DETAIL: Final = 500


class AuditMiddleware:
    def __init__(self, app: ASGIApp, ctx: ApiContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in WRITE_METHODS
            or not scope["path"].startswith(AUDITED_PREFIX)
        ):
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})  # the dict handlers' request.state writes into
        started = False

        async def audited_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                started = True
                await self._record(scope, int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, audited_send)
        except Exception:
            if not started:  # the server answers 500; the attempt is still on record
                await self._record(scope, 500)
            raise

    async def _record(self, scope: Scope, status: int) -> None:
        state = scope.get("state") or {}
        principal = state.get("principal")
        if not isinstance(principal, Principal):
            return
        detail = str(state.get("audit_detail", ""))[:MAX_DETAIL]
        try:
            await self.ctx.store.add_audit(
                ts_wall_ns=self.ctx.clock(),
                actor=principal.token_id,
                method=scope["method"],
                path=scope["path"],
                status=status,
                detail=detail,
            )
        except CloudError as exc:
            self.ctx.counters.audit_failures += 1
            log.error("audit row for %s %s not stored: %s", scope["method"], scope["path"], exc)
