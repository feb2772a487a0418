"""Jobs: create (idempotently), list, read with the latest explanation, the event log, cancel,
lock to a vehicle, and drivers' answers.

Every change goes through ``JobService``, which logs it as a job event with its reason and
streams it (``job.*`` events on the WebSocket and to webhooks). A job's version is its ETag;
changes take ``If-Match`` to refuse acting on a job someone else changed meanwhile (412).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated, Final

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Path, Query, Request, Response
from starlette.requests import HTTPConnection

from fleetlink_cloud.api.auth import Dispatcher, Reader
from fleetlink_cloud.api.deps import Ctx
from fleetlink_cloud.api.errors import error_responses
from fleetlink_cloud.api.params import MAX_CURSOR_LEN, AfterId, Limit, clamp
from fleetlink_cloud.api.schemas_jobs import (
    JOB_ID_PATTERN,
    AnnounceIn,
    AnswerIn,
    CancelIn,
    JobEventList,
    JobIn,
    JobOut,
    JobPage,
    LockIn,
    job_event_out,
    job_of,
    job_out,
)
from fleetlink_cloud.dispatch.model import InvalidTransition, JobState
from fleetlink_cloud.errors import NotFound
from fleetlink_cloud.jobs import AnswerRefused, InvalidJob, JobConflict, JobService, new_job_id
from fleetlink_cloud.store.base import InUse, JobRow, StaleJob
from fleetlink_protocols.topics import DEVICE_ID_PATTERN

router = APIRouter(tags=["jobs"], responses=error_responses(401, 403, 422))

JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, max_length=64, description="The job id")]
IF_MATCH_HELP: Final = 'The job version this change is meant for, as in the ETag (`"3"` or `3`).'
IfMatch = Annotated[str | None, Header(alias="If-Match", description=IF_MATCH_HELP)]
_CHANGE_ERRORS: Final = error_responses(400, 404, 409, 412, 413)


def job_service(conn: HTTPConnection) -> JobService:
    """The app's job service (``create_app`` makes one without an assigner if none is given)."""
    service: JobService = conn.app.state.jobs
    return service


Jobs = Annotated[JobService, Depends(job_service)]


@contextlib.contextmanager
def dispatch_errors() -> Iterator[None]:
    """Map the dispatch errors the shared handlers do not know to HTTP errors."""
    try:
        yield
    except (InvalidTransition, AnswerRefused, JobConflict, InUse) as exc:
        raise HTTPException(409, str(exc)) from None
    except InvalidJob as exc:
        raise HTTPException(422, str(exc)) from None
    except StaleJob as exc:
        raise HTTPException(412, str(exc), {"ETag": etag(exc.current)}) from None


def etag(version: int) -> str:
    return f'"{version}"'


def if_match_version(value: str | None) -> int | None:
    """The version ``If-Match`` names (None: absent or ``*``); 400 when it is not one version."""
    if value is None or value.strip() == "*":
        return None
    tag = value.strip()
    number = tag[1:-1] if len(tag) >= 2 and tag[0] == tag[-1] == '"' else tag
    if not (number.isascii() and number.isdigit() and len(number) <= 18):
        raise HTTPException(400, 'If-Match: expected one job version such as "3", or *')
    return int(number)


def _answer(row: JobRow, response: Response) -> JobOut:
    response.headers["ETag"] = etag(row.version)
    return job_out(row)


@router.post(
    "/jobs",
    status_code=201,
    responses={
        **error_responses(400, 404, 409, 413),
        200: {"model": JobOut, "description": "A repeated request: the existing job"},
    },
    description=(
        "Create a job (state `new`): one stop, or a `pickup` and its delivery (`stop`). "
        "Idempotent with an `Idempotency-Key` header or a client-chosen `id`: a repeat with the "
        "same content answers 200 with the existing job, other content is a 409. A "
        "`locked_vehicle_id` must name a registered vehicle (404 otherwise)."
    ),
)
async def create_job(
    principal: Dispatcher,
    body: JobIn,
    request: Request,
    response: Response,
    jobs: Jobs,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="Repeating a request with the same key returns the same job",
        ),
    ] = None,
) -> JobOut:
    """Create a job (see the route's description)."""
    with dispatch_errors():
        result = await jobs.create(
            job_of(body, body.id or new_job_id()),
            idempotency_key=idempotency_key,
            actor="dispatcher",
            actor_id=principal.token_id,
        )
    request.state.audit_detail = f"job {result.row.job.id}" + (
        "" if result.created else " (repeat)"
    )
    if not result.created:
        response.status_code = 200
    return _answer(result.row, response)


@router.get("/jobs", responses=error_responses(400))
async def list_jobs(
    principal: Reader,
    ctx: Ctx,
    state: Annotated[
        list[JobState] | None, Query(description="Only jobs in these states (repeatable)")
    ] = None,
    vehicle_id: Annotated[
        str | None,
        Query(description="Only jobs on this vehicle", pattern=DEVICE_ID_PATTERN.pattern),
    ] = None,
    customer_ref: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    limit: Limit = 100,
    cursor: Annotated[
        str | None,
        Query(description="`next_cursor` of the previous page.", max_length=MAX_CURSOR_LEN),
    ] = None,
) -> JobPage:
    """Jobs, oldest first (by creation), paged; filters combine."""
    page = await ctx.store.list_jobs(
        states=state,
        vehicle_id=vehicle_id,
        customer_ref=customer_ref,
        limit=clamp(ctx, limit),
        cursor=cursor,
    )
    return JobPage(items=[job_out(r) for r in page.items], next_cursor=page.next_cursor)


@router.get("/jobs/{job_id}", responses=error_responses(404))
async def get_job(principal: Reader, job_id: JobId, ctx: Ctx, response: Response) -> JobOut:
    """One job with the assigner's latest explanation (ETag: its version)."""
    row = await ctx.store.get_job(job_id)
    if row is None:
        raise NotFound(f"no job {job_id!r}")
    return _answer(row, response)


@router.get("/jobs/{job_id}/events", responses=error_responses(404))
async def list_job_events(
    principal: Reader, job_id: JobId, ctx: Ctx, after_id: AfterId = 0, limit: Limit = 100
) -> JobEventList:
    """The job's log, oldest first: every transition with its reason, actor and vehicles.
    Page with `after_id` = the last id seen."""
    if await ctx.store.get_job(job_id) is None:
        raise NotFound(f"no job {job_id!r}")
    rows = await ctx.store.job_events(job_id, after_id=after_id, limit=clamp(ctx, limit))
    return JobEventList(items=[job_event_out(e) for e in rows])


@router.post("/jobs/{job_id}/cancel", responses=_CHANGE_ERRORS)
async def cancel_job(
    principal: Dispatcher,
    job_id: JobId,
    request: Request,
    response: Response,
    jobs: Jobs,
    body: Annotated[CancelIn | None, Body()] = None,
    if_match: IfMatch = None,
) -> JobOut:
    """Cancel a job (409 once work has begun at the stop or it is finished)."""
    given = body or CancelIn()
    with dispatch_errors():
        row = await jobs.cancel(
            job_id,
            reason=given.reason,
            reason_text=given.reason_text,
            actor_id=principal.token_id,
            expected_version=if_match_version(if_match),
        )
    request.state.audit_detail = f"job {job_id} cancelled ({given.reason})"
    return _answer(row, response)


@router.put("/jobs/{job_id}/lock", responses=_CHANGE_ERRORS)
async def lock_job(
    principal: Dispatcher,
    job_id: JobId,
    body: LockIn,
    request: Request,
    response: Response,
    jobs: Jobs,
    if_match: IfMatch = None,
) -> JobOut:
    """Lock a job to a vehicle: from now on only that vehicle may be offered or assigned it."""
    with dispatch_errors():
        row = await jobs.set_lock(
            job_id,
            body.vehicle_id,
            reason_text=body.reason_text,
            actor_id=principal.token_id,
            expected_version=if_match_version(if_match),
        )
    request.state.audit_detail = f"job {job_id} locked to {body.vehicle_id}"
    return _answer(row, response)


@router.delete("/jobs/{job_id}/lock", responses=_CHANGE_ERRORS)
async def unlock_job(
    principal: Dispatcher,
    job_id: JobId,
    request: Request,
    response: Response,
    jobs: Jobs,
    if_match: IfMatch = None,
) -> JobOut:
    """Lift a job's lock (nothing changes when it has none)."""
    with dispatch_errors():
        row = await jobs.set_lock(
            job_id, None, actor_id=principal.token_id, expected_version=if_match_version(if_match)
        )
    request.state.audit_detail = f"job {job_id} unlocked"
    return _answer(row, response)


@router.post("/jobs/{job_id}/announce", responses=_CHANGE_ERRORS)
async def announce_job(
    principal: Dispatcher,
    job_id: JobId,
    request: Request,
    response: Response,
    jobs: Jobs,
    body: Annotated[AnnounceIn | None, Body()] = None,
    if_match: IfMatch = None,
) -> JobOut:
    """Record that the job's ETA was given to the customer: re-plans then keep its stop on its
    vehicle and in its place (409 when the job is on no vehicle or finished)."""
    given = body or AnnounceIn()
    with dispatch_errors():
        row = await jobs.announce(
            job_id,
            eta=given.eta_unix_s,
            reason_text=given.reason_text,
            actor_id=principal.token_id,
            expected_version=if_match_version(if_match),
        )
    request.state.audit_detail = f"job {job_id} announced"
    return _answer(row, response)


@router.post(
    "/jobs/{job_id}/answers",
    responses=_CHANGE_ERRORS,
    description=(
        "A driver's answer, for a driver app: `accept` (offered -> assigned), `reject` "
        "(offered -> new, reason `driver_rejected`; the job is assigned again), `arrived`, "
        "`completed`, `failed`, or `delayed` (no state change; `delay_s` and a `reason`). An "
        "answer the job's state does not take is a 409 naming the state. Needs the `dispatch` "
        "scope for now."
    ),
)
async def answer_job(
    principal: Dispatcher,
    job_id: JobId,
    body: AnswerIn,
    request: Request,
    response: Response,
    jobs: Jobs,
    if_match: IfMatch = None,
) -> JobOut:
    """Apply a driver's answer (see the route's description)."""
    with dispatch_errors():
        row = await jobs.answer(
            job_id,
            body.answer,
            reason_text=body.reason,
            delay_s=body.delay_s,
            vehicle_id=body.vehicle_id,
            actor_id=principal.token_id,
            expected_version=if_match_version(if_match),
        )
    request.state.audit_detail = f"job {job_id} driver answer {body.answer}"
    return _answer(row, response)
