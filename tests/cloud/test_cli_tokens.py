"""``fleetlink-cloud tokens``: create prints the token once, list never shows it, revoke ends it;
every write lands in the audit log."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from pathlib import Path

import pytest

from fleetlink_cloud import cli, tokens
from fleetlink_cloud.store import open_store


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_create_list_revoke_and_audit(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'cloud.sqlite3'}"
    code, out, _ = run("tokens", "create", "dispatch-backend", "--scope", "dispatch",
                       "--database", db, "--json")  # fmt: skip
    assert code == 0
    created = json.loads(out)
    parsed = tokens.parse(created["token"])
    assert parsed is not None
    assert created["scope"] == "dispatch"
    token_id, secret = parsed

    code, out, _ = run("tokens", "list", "--database", db, "--json")
    assert code == 0
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert (row["token_id"], row["scope"], row["active"]) == (token_id, "dispatch", True)
    assert secret not in out
    assert created["token"] not in out

    code, out, _ = run("tokens", "revoke", created["token"], "--database", db)
    assert (code, out.strip()) == (0, f"token {token_id} (dispatch-backend) revoked")
    code, _, err = run("tokens", "revoke", "0123456789ab", "--database", db)
    assert (code, err.strip()) == (1, "fleetlink-cloud: no token 0123456789ab")

    async def check() -> None:
        async with open_store(db) as store:
            stored = await store.token_by_hash(tokens.hash_secret(secret))
            assert stored is not None
            assert not stored.active
            audit = await store.list_audit()
            assert [(a.actor, a.path, a.status) for a in audit] == [
                ("cli", "tokens create", 201),
                ("cli", "tokens revoke", 200),
            ]

    asyncio.run(check())


def test_unknown_scope_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc, contextlib.redirect_stderr(io.StringIO()):
        cli.main(["tokens", "create", "x", "--scope", "root", "--database", "sqlite:///x.db"])
    assert exc.value.code == 2
