"""A real PostgreSQL server for integration tests: a fresh database per test run.

The server is not started here: the CI machine runs one on 127.0.0.1:5432 with trust auth
(``FLEETLINK_TEST_POSTGRES_URL`` points elsewhere). ``TestDatabase.create()`` makes a uniquely
named database (``fleetlink_test_<pid>_<random>``) so a run never sees state another run left,
hands out one fresh schema per test (``url_for_schema``: migrations start from nothing, at the
cost of a CREATE SCHEMA rather than a CREATE DATABASE), and ``drop()`` removes it all.

A missing driver or server skips the test with a "PEER MISSING" reason (fails under CI=true).
"""

from __future__ import annotations

import os
import secrets
import urllib.parse
from dataclasses import dataclass, field
from typing import NoReturn

import pytest

from tests.peers import IN_CI

ADMIN_URL = os.environ.get(
    "FLEETLINK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
CONNECT_TIMEOUT_S = 5


def _missing(reason: str) -> NoReturn:
    reason = f"PEER MISSING: {reason}"
    if IN_CI:
        pytest.fail(reason + " [CI=true: a missing peer is a failure]", pytrace=False)
    pytest.skip(reason)


def with_database(url: str, database: str, **query: str) -> str:
    """``url`` naming another database, with extra query parameters (libpq URL syntax)."""
    parts = urllib.parse.urlsplit(url)
    params = dict(urllib.parse.parse_qsl(parts.query))
    params.update(query)
    path = "/" + urllib.parse.quote(database)
    return urllib.parse.urlunsplit(parts._replace(path=path, query=urllib.parse.urlencode(params)))


@dataclass
class TestDatabase:
    """One database of this test run on the server at ``admin_url``."""

    __test__ = False  # not a test class, whatever pytest thinks of its name

    admin_url: str
    name: str
    _schemas: int = field(default=0)

    @classmethod
    def create(cls, admin_url: str = ADMIN_URL) -> TestDatabase:
        """Create the run's database; skip (or fail under CI) when there is no server."""
        try:
            import psycopg
        except ImportError as exc:
            _missing(f"the PostgreSQL driver psycopg is not installed ({exc}); run `uv sync`")
        name = f"fleetlink_test_{os.getpid()}_{secrets.token_hex(4)}"
        try:
            with psycopg.connect(
                admin_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
            ) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
        except psycopg.OperationalError as exc:
            why = " ".join(str(exc).split())  # one line: libpq's message spans several
            _missing(
                f"no PostgreSQL server at {admin_url} ({why}); install the Debian package "
                "'postgresql' and allow trust auth for 127.0.0.1, or set "
                "FLEETLINK_TEST_POSTGRES_URL"
            )
        return cls(admin_url, name)

    @property
    def url(self) -> str:
        return with_database(self.admin_url, self.name)

    def url_for_schema(self) -> str:
        """A URL whose connections see only a new, empty schema of the run's database."""
        import psycopg

        self._schemas += 1
        schema = f"t{self._schemas}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        return with_database(self.admin_url, self.name, options=f"-csearch_path={schema}")

    def drop(self) -> None:
        """Drop the database, ending any connection a failed test left open."""
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
