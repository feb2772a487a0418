"""``fleetlink-cloud tokens``: create, list and revoke API bearer tokens.

A token is printed once at creation; the store keeps only its SHA-256. Every create and revoke
is written to the audit log with the actor ``cli``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from fleetlink_cloud import tokens
from fleetlink_cloud.cli_store import add_store_options, audit_cli, run_with_store
from fleetlink_cloud.config import CloudSettings
from fleetlink_cloud.errors import NotFound
from fleetlink_cloud.store import Store
from fleetlink_cloud.store.base import SCOPES, Scope, TokenRow


def register(subparsers: Any) -> None:
    """Add the ``tokens`` command group to the top-level parser."""
    group = subparsers.add_parser("tokens", help="create, list and revoke API tokens")
    sub = group.add_subparsers(dest="tokens_command", required=True)

    create = sub.add_parser("create", help="create a token and print it once")
    create.add_argument("name", help="who or what the token is for (shown in the audit log)")
    create.add_argument("--scope", required=True, choices=SCOPES, help="what the token may do")
    create.add_argument("--json", action="store_true", help="print the token as JSON")
    add_store_options(create)
    create.set_defaults(func=_cmd_create)

    lst = sub.add_parser("list", help="list tokens (never their secrets)")
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    add_store_options(lst)
    lst.set_defaults(func=_cmd_list)

    revoke = sub.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("token_id", help="the 12 hex digits after flk_ (or the whole token)")
    add_store_options(revoke)
    revoke.set_defaults(func=_cmd_revoke)


async def create_token(store: Store, name: str, scope: Scope, now_wall_ns: int) -> str:
    """Create a token, audit it, and return it (the only time it exists in clear)."""
    new = tokens.generate()
    await store.create_token(
        new.token_id,
        name=name,
        scope=scope,
        token_hash=new.secret_hash,
        created_wall_ns=now_wall_ns,
    )
    detail = f"token {new.token_id} ({name}, scope {scope})"
    await audit_cli(store, "tokens create", detail, now_wall_ns=now_wall_ns, status=201)
    return new.token


def _row(t: TokenRow) -> dict[str, Any]:
    return {
        "token_id": t.token_id,
        "name": t.name,
        "scope": t.scope,
        "created_wall_ns": t.created_wall_ns,
        "revoked_wall_ns": t.revoked_wall_ns,
        "active": t.active,
    }


def _cmd_create(args: argparse.Namespace) -> int:
    async def work(store: Store, settings: CloudSettings) -> int:
        token = await create_token(store, args.name, args.scope, time.time_ns())
        if args.json:
            print(json.dumps({"token": token, "name": args.name, "scope": args.scope}))
        else:
            print(f"token for {args.name} (scope {args.scope}), shown once:\n{token}")
        return 0

    return run_with_store(args, work)


def _cmd_list(args: argparse.Namespace) -> int:
    async def work(store: Store, settings: CloudSettings) -> int:
        for t in await store.list_tokens():
            if args.json:
                print(json.dumps(_row(t)))
            else:
                state = "active" if t.active else "revoked"
                print(f"{t.token_id}\t{t.scope}\t{state}\t{t.name}")
        return 0

    return run_with_store(args, work)


def _cmd_revoke(args: argparse.Namespace) -> int:
    parsed = tokens.parse(args.token_id)
    token_id = parsed[0] if parsed is not None else args.token_id

    async def work(store: Store, settings: CloudSettings) -> int:
        now = time.time_ns()
        try:
            row = await store.revoke_token(token_id, revoked_wall_ns=now)
        except NotFound:
            print(f"fleetlink-cloud: no token {token_id}", file=sys.stderr)
            return 1
        detail = f"token {row.token_id} ({row.name})"
        await audit_cli(store, "tokens revoke", detail, now_wall_ns=now, status=200)
        print(f"token {row.token_id} ({row.name}) revoked")
        return 0

    return run_with_store(args, work)
