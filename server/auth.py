"""Bearer-token authentication and scopes.

Tokens look like ``smn_<prefix>_<secret>``; only their sha256 is stored, so a database leak does not
leak credentials. Scopes are plain strings: ``read``, ``write``, ``admin``, ``device`` (a scanner
downloading bundles / posting scans over HTTP), ``review``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.db.models import ApiToken, User

SCOPES = ("read", "write", "review", "admin", "device")
LAST_USED_RESOLUTION = timedelta(seconds=60)
TOKEN_PREFIX = "smn"

bearer = HTTPBearer(auto_error=False, description="API token: `Authorization: Bearer smn_…`")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh token and its public prefix (shown in token lists)."""
    prefix = secrets.token_hex(4)
    return f"{TOKEN_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}", prefix


def issue_token(session: Session, user: User, name: str, scopes: list[str],
                expires_at: datetime | None = None) -> str:
    """Create a token row for ``user``; returns the plaintext token (shown once)."""
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise ValueError(f"unknown scopes {bad}; known: {', '.join(SCOPES)}")
    token, prefix = new_token()
    session.add(ApiToken(user=user, name=name, prefix=prefix, token_hash=hash_token(token), scopes=list(scopes),
                         expires_at=expires_at))
    session.flush()
    return token


@dataclass(frozen=True)
class Principal:
    """Who is calling: the user and the scopes of the token (or session) used."""

    user_id: int
    username: str
    scopes: frozenset[str]
    is_admin: bool
    token_id: int | None = None

    def has(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def lookup_token(session: Session, token: str) -> Principal | None:
    if not token or not token.startswith(f"{TOKEN_PREFIX}_"):
        return None
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    now = datetime.now(timezone.utc)
    if row is None or row.revoked_at is not None:
        return None
    if row.expires_at is not None and _aware(row.expires_at) <= now:
        return None
    # Constant-time re-check guards against a hash-index timing oracle.
    if not hmac.compare_digest(row.token_hash, hash_token(token)):
        return None
    # Record use at most once a minute: a write per request would double the cost of every API call.
    if row.last_used_at is None or _aware(row.last_used_at) <= now - LAST_USED_RESOLUTION:
        row.last_used_at = now
    user = row.user
    return Principal(user.id, user.username, frozenset(row.scopes or []), user.is_admin, row.id)


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def current_principal(request: Request,
                      creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
    """The caller, from a bearer token or (web page) a session set by the login middleware."""
    principal = getattr(request.state, "principal", None)
    if principal is not None:
        return principal
    if creds is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing bearer token",
                            headers={"WWW-Authenticate": "Bearer"})
    with request.app.state.db.session() as session:
        principal = lookup_token(session, creds.credentials)
    if principal is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid, expired or revoked token",
                            headers={"WWW-Authenticate": "Bearer"})
    request.state.principal = principal
    return principal


def require(scope: str):
    """Dependency factory: the caller must hold ``scope`` (or admin)."""

    def dep(principal: Principal = Depends(current_principal)) -> Principal:
        if not principal.has(scope):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"token lacks scope {scope!r}")
        return principal

    return dep
