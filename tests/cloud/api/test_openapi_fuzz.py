"""Schemathesis fuzzes every operation of the OpenAPI document: no input may cause a 5xx, and
every response must match the document (status, media type, schema)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import requests.adapters
import schemathesis
import urllib3
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fleetlink_cloud.api import ApiContext, create_app
from fleetlink_cloud.bus import EventBus
from fleetlink_cloud.config import ApiSettings
from fleetlink_cloud.store import open_store
from tests.cloud.api.harness import Served, served

BASE_URL = "http://test"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


class _ToTestClient(requests.adapters.HTTPAdapter):
    """A requests transport that hands each request to the app's TestClient (same loop)."""

    def __init__(self, world: Served) -> None:
        super().__init__()
        self.world = world

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        body = request.body.encode() if isinstance(request.body, str) else request.body
        answer = self.world.client.request(
            str(request.method), str(request.url), headers=dict(request.headers), content=body
        )
        raw = urllib3.HTTPResponse(
            body=io.BytesIO(answer.content),
            headers=urllib3.HTTPHeaderDict(answer.headers.multi_items()),
            status=answer.status_code,
            preload_content=False,
            version=11,
        )
        return self.build_response(request, raw)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    path: Path = tmp_path_factory.mktemp("fuzz")
    with served(path) as w:
        yield w


@pytest.fixture(scope="module")
def session(world: Served) -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.mount(BASE_URL, _ToTestClient(world))
        s.headers["Authorization"] = f"Bearer {world.api.tokens['admin']}"
        yield s


def _document() -> dict[str, Any]:
    """The OpenAPI document; it does not depend on the store, which is never opened here."""
    ctx = ApiContext(open_store("sqlite:///:memory:"), EventBus(), ApiSettings())
    return create_app(ctx).openapi()


schema = schemathesis.openapi.from_dict(_document())


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_no_input_breaks_the_api(case: schemathesis.Case[Any], session: requests.Session) -> None:
    case.call_and_validate(session=session, base_url=BASE_URL, checks=CHECKS)
