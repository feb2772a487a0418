"""API bearer tokens, pure: generation, parsing, hashing and the scope rules.

A token reads ``flk_<id>_<secret>``: ``id`` (12 hex digits) names the stored row, ``secret``
(43 base64url characters, 256 bits) is never stored, only its SHA-256. Every token holds one
scope; a route names the scope it needs, and a scope grants the routes of the scopes it implies:

| token scope   | may use routes that need                 | meant for                     |
|---------------|------------------------------------------|-------------------------------|
| `read`        | read                                     | dashboards, reporting         |
| `dispatch`    | read, dispatch                           | dispatch backends             |
| `maintenance` | read, maintenance                        | maintenance teams and tools   |
| `admin`       | read, dispatch, maintenance, admin       | operators                     |

What each route needs is listed in ``fleetlink_cloud.api.auth`` and in the OpenAPI description.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Final

from fleetlink_cloud.store.base import SCOPES, Scope

IMPLIES: Final[dict[Scope, frozenset[Scope]]] = {
    "read": frozenset({"read"}),
    "dispatch": frozenset({"read", "dispatch"}),
    "maintenance": frozenset({"read", "maintenance"}),
    "admin": frozenset(SCOPES),
}

PREFIX: Final = "flk"
_ID_HEX_DIGITS: Final = 12
_SECRET_BYTES: Final = 32
# The secret is base64url and may itself contain "_": split at most twice.
_TOKEN_RE: Final = re.compile(r"^flk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True, slots=True)
class NewToken:
    """A new token: show ``token`` once, store only ``token_id`` and ``secret_hash``."""

    token_id: str
    token: str
    secret_hash: str


def generate() -> NewToken:
    """A new random token (``secrets``: 48-bit id, 256-bit secret)."""
    token_id = secrets.token_hex(_ID_HEX_DIGITS // 2)
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    return NewToken(token_id, f"{PREFIX}_{token_id}_{secret}", hash_secret(secret))


def parse(token: str) -> tuple[str, str] | None:
    """``(token_id, secret)`` of a well-formed token, or None for anything else."""
    m = _TOKEN_RE.fullmatch(token)
    if m is None:
        return None
    return m.group(1), m.group(2)


def hash_secret(secret: str) -> str:
    """SHA-256 of the secret, hex; a 256-bit random secret needs no salt or slow hash."""
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def verify(secret: str, secret_hash: str) -> bool:
    """True when ``secret`` hashes to ``secret_hash``; constant-time comparison."""
    return hmac.compare_digest(hash_secret(secret), secret_hash)


def parse_scope(value: str) -> Scope:
    """Validate a scope name; raise ValueError naming the known ones."""
    for scope in SCOPES:
        if value == scope:
            return scope
    raise ValueError(f"unknown scope {value!r}; known: {', '.join(SCOPES)}")


def allows(granted: Scope, needed: Scope) -> bool:
    """True when a token of scope ``granted`` may use a route that needs ``needed``."""
    return needed in IMPLIES[granted]


def refused_scopes(needed: Scope) -> tuple[Scope, ...]:
    """The scopes that may NOT use a route needing ``needed`` (for tests and documentation)."""
    return tuple(s for s in SCOPES if not allows(s, needed))


def scopes_allowed(needed: Scope) -> tuple[Scope, ...]:
    """The scopes that may use a route needing ``needed``."""
    return tuple(s for s in SCOPES if allows(s, needed))
