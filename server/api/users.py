"""Users, API tokens and device binding.

A token can never carry more than its creator holds: a ``read`` token cannot mint a ``write`` token and
only admins mint ``admin`` or ``device`` tokens. Devices belong to a user and feed one target collection.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from server import accounts
from server.api.deps import DbId, DbIdPath, get_session
from server.auth import SCOPES, Principal, current_principal, issue_token, require
from server.collections_service import owned_collection
from server.db.models import ApiToken, Collection, Device, User

router = APIRouter(prefix="/api/v1", tags=["users"])

DB = Annotated[Session, Depends(get_session)]
Anyone = Annotated[Principal, Depends(current_principal)]
Reader = Annotated[Principal, Depends(require("read"))]
Writer = Annotated[Principal, Depends(require("write"))]
Admin = Annotated[Principal, Depends(require("admin"))]

Username = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")]
Password = Annotated[str, Field(min_length=8, max_length=256)]


class MeOut(BaseModel):
    id: int
    username: str
    email: str | None
    is_admin: bool
    scopes: list[str]
    via: str = Field(description="token or session")


class PasswordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    current_password: str = Field(max_length=256)
    new_password: Password


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    scopes: list[Literal["read", "write", "review", "admin", "device"]] = Field(
        min_length=1, max_length=len(SCOPES), description=f"Subset of {', '.join(SCOPES)}.")
    expires_in_days: int | None = Field(None, ge=1, le=3650)


class TokenOut(BaseModel):
    id: int
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


class NewTokenOut(TokenOut):
    token: str = Field(description="The secret; shown once.")


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: Username
    password: Password | None = None
    email: str | None = Field(None, max_length=254)
    is_admin: bool = False


class UserOut(BaseModel):
    id: int
    username: str
    email: str | None
    is_admin: bool
    created_at: datetime


class DeviceOut(BaseModel):
    id: str
    name: str
    collection_id: int | None
    state: str
    last_seen_at: datetime | None
    bundle_version: str | None
    software_version: str | None
    outbox_depth: int
    revoked: bool


class DevicePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=200)
    collection_id: DbId | None = Field(None, description="Target collection for this device's scans (yours).")


class DeviceOwnerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: DbId | None = Field(description="New owner; null unbinds the device.")
    collection_id: DbId | None = Field(None, description="That user's target collection.")


def token_out(t: ApiToken, cls=TokenOut, **extra):
    return cls(id=t.id, name=t.name, prefix=t.prefix, scopes=list(t.scopes or []), created_at=t.created_at,
               last_used_at=t.last_used_at, expires_at=t.expires_at, revoked_at=t.revoked_at, **extra)


def device_out(d: Device) -> DeviceOut:
    return DeviceOut(id=d.id, name=d.name, collection_id=d.collection_id, state=d.state, last_seen_at=d.last_seen_at,
                     bundle_version=d.bundle_version, software_version=d.software_version,
                     outbox_depth=d.outbox_depth or 0, revoked=d.revoked_at is not None)


@router.get("/me", response_model=MeOut, summary="Who am I")
def me(principal: Anyone, session: DB):
    u = session.get(User, principal.user_id)
    return MeOut(id=u.id, username=u.username, email=u.email, is_admin=u.is_admin, scopes=sorted(principal.scopes),
                 via="token" if principal.token_id else "session")


@router.post("/me/password", status_code=204, summary="Change password (ends all web sessions)")
def change_password(body: PasswordIn, principal: Writer, session: DB):
    u = session.get(User, principal.user_id)
    if not accounts.verify_password(u.password_hash, body.current_password):
        raise HTTPException(403, "current password is wrong")
    u.password_hash = accounts.hash_password(body.new_password)
    accounts.end_all_sessions(session, u.id)
    return Response(status_code=204)


@router.get("/me/tokens", response_model=list[TokenOut], summary="My API tokens (never the secrets)")
def list_tokens(principal: Reader, session: DB):
    return [token_out(t) for t in session.scalars(select(ApiToken).where(ApiToken.user_id == principal.user_id)
                                                  .order_by(ApiToken.id))]


@router.post("/me/tokens", response_model=NewTokenOut, status_code=201, summary="Create an API token")
def create_token(body: TokenIn, principal: Writer, session: DB):
    unknown = sorted(set(body.scopes) - set(SCOPES))
    if unknown:
        raise HTTPException(422, f"unknown scopes {unknown}; known: {', '.join(SCOPES)}")
    if not principal.is_admin:
        too_much = sorted(s for s in set(body.scopes) if s not in principal.scopes or s in ("admin", "device"))
        if too_much:
            raise HTTPException(403, f"you cannot grant scopes {too_much}")
    u = session.get(User, principal.user_id)
    exp = datetime.now(timezone.utc) + timedelta(days=body.expires_in_days) if body.expires_in_days else None
    secret = issue_token(session, u, body.name, sorted(set(body.scopes)), exp)
    t = session.scalar(select(ApiToken).where(ApiToken.user_id == u.id).order_by(ApiToken.id.desc()).limit(1))
    return token_out(t, NewTokenOut, token=secret)


@router.delete("/me/tokens/{token_id}", status_code=204, summary="Revoke one of my tokens")
def revoke_token(token_id: DbIdPath, principal: Writer, session: DB):
    t = session.get(ApiToken, token_id)
    if t is None or t.user_id != principal.user_id:
        raise HTTPException(404, f"token {token_id} not found")
    if t.revoked_at is None:
        t.revoked_at = datetime.now(timezone.utc)
    return Response(status_code=204)


@router.get("/me/devices", response_model=list[DeviceOut], tags=["devices"], summary="My scanners")
def my_devices(principal: Reader, session: DB):
    return [device_out(d) for d in session.scalars(select(Device).where(Device.user_id == principal.user_id)
                                                   .order_by(Device.name, Device.id))]


@router.patch("/me/devices/{device_id}", response_model=DeviceOut, tags=["devices"],
              summary="Rename a scanner or point it at another of my collections")
def patch_device(device_id: str, body: DevicePatch, principal: Writer, session: DB):
    d = session.get(Device, device_id)
    if d is None or d.user_id != principal.user_id:
        raise HTTPException(404, f"device {device_id!r} not found")
    if body.name is not None:
        d.name = body.name
    if "collection_id" in body.model_fields_set:
        if body.collection_id is not None:
            owned_collection(session, principal, body.collection_id)
        d.collection_id = body.collection_id
    session.flush()
    return device_out(d)


@router.get("/users", response_model=list[UserOut], tags=["admin"], summary="All users (admin)")
def list_users(principal: Admin, session: DB):
    return [UserOut.model_validate(u, from_attributes=True) for u in session.scalars(select(User).order_by(User.id))]


@router.post("/users", response_model=UserOut, status_code=201, tags=["admin"], summary="Create a user (admin)")
def create_user(body: UserIn, principal: Admin, session: DB):
    try:
        u = accounts.create_user(session, body.username, body.password, email=body.email, is_admin=body.is_admin)
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from None
    return UserOut.model_validate(u, from_attributes=True)


@router.put("/admin/devices/{device_id}/owner", response_model=DeviceOut, tags=["admin"],
            summary="Bind a device to a user and target collection (admin)")
def bind_device(device_id: str, body: DeviceOwnerIn, principal: Admin, session: DB):
    d = session.get(Device, device_id)
    if d is None:
        raise HTTPException(404, f"device {device_id!r} not found")
    if body.user_id is not None and session.get(User, body.user_id) is None:
        raise HTTPException(404, f"user {body.user_id} not found")
    if body.collection_id is not None:
        col = session.get(Collection, body.collection_id)
        if col is None or col.user_id != body.user_id:
            raise HTTPException(422, "collection must belong to the new owner")
    d.user_id = body.user_id
    d.collection_id = body.collection_id
    session.flush()
    return device_out(d)
