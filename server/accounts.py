"""Users, passwords and web sessions.

Passwords are hashed with argon2id. A web login is a ``web_sessions`` row: the browser holds
``<token>.<hmac>`` in an httponly, samesite=lax cookie; the server stores only sha256(token), so sessions
are revocable (logout, password change) and a database leak does not leak live sessions. The HMAC lets
the middleware drop forged cookies without a database round trip.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from server.auth import Principal, hash_token
from server.db.models import User, WebSession

COOKIE_NAME = "scanemon_session"
CSRF_HEADER = "x-csrf-token"
# What a browser login may do: everything a person does in the web page. Admin follows the user flag.
SESSION_SCOPES = frozenset({"read", "write", "review"})

_hasher = PasswordHasher()
# Verifying against a dummy hash when the user is unknown keeps login timing the same for both cases.
_DUMMY_HASH = _hasher.hash("scanemon-dummy-password")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


def create_user(session: Session, username: str, password: str | None = None, *, email: str | None = None,
                is_admin: bool = False) -> User:
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise ValueError(f"user {username!r} already exists")
    user = User(username=username, email=email, is_admin=is_admin,
                password_hash=hash_password(password) if password else None)
    session.add(user)
    session.flush()
    return user


def authenticate(session: Session, username: str, password: str) -> User | None:
    user = session.scalar(select(User).where(User.username == username))
    ok = verify_password(user.password_hash if user else None, password)
    return user if ok and user is not None else None


def principal_for(user: User, scopes=SESSION_SCOPES) -> Principal:
    return Principal(user.id, user.username, frozenset(scopes) | ({"admin"} if user.is_admin else set()),
                     user.is_admin, None)


# --- session cookies -------------------------------------------------------------------------------------


def session_secret(settings) -> bytes:
    """The configured HMAC key, or one generated once into data_dir (single-replica default)."""
    if settings.security.session_secret:
        return settings.security.session_secret.encode()
    path = Path(settings.data_dir) / "session_secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return path.read_text().strip().encode()


def _sign(secret: bytes, token: str) -> str:
    return hmac.new(secret, token.encode(), hashlib.sha256).hexdigest()[:32]


def cookie_value(secret: bytes, token: str) -> str:
    return f"{token}.{_sign(secret, token)}"


def unsign_cookie(secret: bytes, value: str | None) -> str | None:
    if not value or "." not in value or len(value) > 200:
        return None
    token, sig = value.rsplit(".", 1)
    return token if hmac.compare_digest(sig, _sign(secret, token)) else None


@dataclass(frozen=True)
class WebLogin:
    principal: Principal
    csrf_token: str
    session_id: int


def create_session(session: Session, user: User, max_age_s: int) -> tuple[str, str]:
    """A new login; returns (cookie token, csrf token)."""
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    now = datetime.now(timezone.utc)
    session.add(WebSession(token_hash=hash_token(token), user_id=user.id, csrf_token=csrf, created_at=now,
                           expires_at=now + timedelta(seconds=max_age_s)))
    # Opportunistic cleanup keeps the table small without a cron job.
    session.execute(delete(WebSession).where(WebSession.expires_at < now))
    session.flush()
    return token, csrf


def lookup_session(session: Session, token: str) -> WebLogin | None:
    row = session.scalar(select(WebSession).where(WebSession.token_hash == hash_token(token)))
    if row is None:
        return None
    now = datetime.now(timezone.utc)
    exp = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=timezone.utc)
    if exp <= now:
        return None
    user = session.get(User, row.user_id)
    if user is None:
        return None
    return WebLogin(principal_for(user), row.csrf_token, row.id)


def end_session(session: Session, token: str) -> None:
    session.execute(delete(WebSession).where(WebSession.token_hash == hash_token(token)))


def end_all_sessions(session: Session, user_id: int) -> None:
    session.execute(delete(WebSession).where(WebSession.user_id == user_id))
