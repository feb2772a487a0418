"""The dispatch backend of ``fleetlink-cloud demo``: it uses the service only through the public
API, as an integrator would (docs/cloud.md, "Dispatch").

It sets the simulated vehicles' dispatch profiles (``PUT /v1/vehicles/{id}/dispatch``), creates
jobs at a steady rate (``POST /v1/jobs`` with an ``Idempotency-Key``, so a retried request makes
no second job), and follows the WebSocket stream (``/v1/stream?type=job....``), printing one line
per dispatch event (``demo_events``). A lost stream reconnects and resumes after the last event
it printed (``?after=``). API failures become :class:`DemoApiError`; the loops print them and go on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Final, TextIO

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from fleetlink_cloud.demo_events import STREAM_TYPES, DispatchFeed, Looked, Lookup
from fleetlink_cloud.demo_jobs import DemoJob, JobGenerator
from fleetlink_cloud.errors import CloudError

log = logging.getLogger(__name__)

TIMEOUT_S: Final = 10.0
RETRIES: Final = 3  # a job POST is repeated this often (same key) before it is given up
RETRY_PAUSE_S: Final = 1.0
RECONNECT_S: Final = 1.0
POLL_S: Final = 1.0


class DemoApiError(CloudError):
    """The demo's own service did not answer a request as documented."""


class DemoBackend:
    """An async context manager holding one HTTP client with the admin token; ``out`` gets the
    lines. Every method runs on the event loop."""

    def __init__(self, api_url: str, token: str, feed: DispatchFeed, out: TextIO) -> None:
        self._api_url = api_url
        self._token = token
        self.feed = feed
        self._out = out
        # The demo's own loopback service: no proxy from the environment applies.
        self._http = httpx.AsyncClient(
            base_url=f"{api_url}/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=TIMEOUT_S,
            trust_env=False,
        )
        self.last_event_id: int | None = None
        self.created = 0

    async def __aenter__(self) -> DemoBackend:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._http.aclose()

    def say(self, line: str) -> None:
        self._out.write(line + "\n")
        self._out.flush()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; raises DemoApiError for a transport failure or a status >= 400."""
        try:
            resp = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise DemoApiError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code >= 400:
            raise DemoApiError(f"{method} {path}: {resp.status_code} {resp.text[:200]}")
        return resp

    async def _get_json(self, path: str) -> Mapping[str, Any] | None:
        """GET a JSON object; None when it failed (logged: a line is printed without it)."""
        try:
            body = (await self._request("GET", path)).json()
        except (DemoApiError, ValueError) as exc:
            log.warning("demo: %s", exc)
            return None
        return body if isinstance(body, Mapping) else None

    # -- setting up ---------------------------------------------------------------------------

    async def put_profiles(self, profiles: Mapping[str, Mapping[str, Any]]) -> None:
        """Each vehicle's dispatch profile. Raises DemoApiError."""
        for vehicle_id, body in profiles.items():
            await self._request("PUT", f"/vehicles/{vehicle_id}/dispatch", json=body)

    async def wait_for_fleet(self, vehicles: int, at_least_s: float, timeout_s: float) -> int:
        """Until every vehicle is online with a position (or ``timeout_s``), and ``at_least_s``
        has passed (the dispatcher reads new profiles once a rules round). Returns how many."""
        start = time.monotonic()
        ready = 0
        while time.monotonic() - start < timeout_s:
            body = await self._get_json("/vehicles")
            items = [] if body is None else body.get("items") or []
            ready = sum(1 for v in items if v.get("position") and v["presence"]["online"])
            if ready >= vehicles and time.monotonic() - start >= at_least_s:
                break
            await asyncio.sleep(POLL_S)
        return ready

    # -- jobs ---------------------------------------------------------------------------------

    async def create(self, job: DemoJob) -> bool:
        """POST the job, repeated with the same Idempotency-Key after a failure (a repeat that
        reached the service answers 200 with the same job). False: it was given up."""
        for attempt in range(1, RETRIES + 1):
            try:
                await self._request(
                    "POST", "/jobs", json=job.body, headers={"Idempotency-Key": job.key}
                )
            except DemoApiError as exc:
                if attempt == RETRIES:
                    self.say(f"dispatch job {job.id} not created: {exc}")
                    return False
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            self.created += 1
            return True
        return False

    async def produce(
        self, jobs: JobGenerator, first: int, every_s: float, now: Callable[[], float] = time.time
    ) -> None:
        """``first`` jobs at once (the work waiting at the start), then one every ``every_s``
        until cancelled."""
        for _ in range(first):
            await self.create(jobs.next(int(now())))
        while True:
            await asyncio.sleep(every_s)
            await self.create(jobs.next(int(now())))

    # -- the stream ---------------------------------------------------------------------------

    def stream_url(self) -> str:
        base = self._api_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        url = f"{base}/v1/stream?type={','.join(STREAM_TYPES)}"
        return url if self.last_event_id is None else f"{url}&after={self.last_event_id}"

    async def follow(self, connected: asyncio.Event) -> None:
        """Print the dispatch stream until cancelled; reconnect (resuming) when it drops."""
        while True:
            try:
                async with connect(
                    self.stream_url(),
                    additional_headers={"Authorization": f"Bearer {self._token}"},
                    proxy=None,
                    open_timeout=TIMEOUT_S,
                ) as ws:
                    connected.set()
                    async for message in ws:
                        await self._on_message(message)
            except (OSError, WebSocketException, TimeoutError) as exc:
                log.warning("demo: the stream dropped (%s); reconnecting", exc)
            await asyncio.sleep(RECONNECT_S)

    async def _on_message(self, message: str | bytes) -> None:
        try:
            event = json.loads(message)
        except ValueError:
            log.warning("demo: a stream message that is not JSON: %.100r", message)
            return
        if not isinstance(event, dict):
            return
        if event.get("type") == "stream.dropped":
            self.say(f"dispatch stream: {event.get('dropped')} events dropped (reading too slowly)")
            return
        if isinstance(event.get("id"), int):
            self.last_event_id = event["id"]
        line = self.feed.line(event, await self._looked(self.feed.lookup(event)))
        if line is not None:
            self.say(line)

    async def _looked(self, lookup: Lookup | None) -> Looked:
        if lookup is None:
            return Looked()
        job = None if lookup.job_id is None else await self._get_json(f"/jobs/{lookup.job_id}")
        route = None
        if lookup.route_of is not None:
            route = await self._get_json(f"/vehicles/{lookup.route_of}/route")
        return Looked(job=job, route=route)
