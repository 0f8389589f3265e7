"""Fleet API: device list for the devices page, current bundle, and bundle downloads for devices.

- ``GET /api/v1/fleet/devices`` (scope read): every device the caller may see (admins: all; others: their
  own) with online/offline, last seen, bundle version, outbox depth and scans today.
- ``GET /api/v1/fleet/devices/{device_id}``: one device, with its latest telemetry.
- ``GET /api/v1/bundles/current`` (scope device or read): the bundle every device should run.
- ``GET /api/v1/bundles/{version}/archive`` (scope device): the signed tar; HTTP Range supported so an
  interrupted download resumes. Device tokens are revoked with the device (``scanemon-provision device
  revoke``), which cuts off downloads as well as MQTT.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.api.deps import get_session
from server.auth import Principal, current_principal, require
from server.bundles import BundleInfo, BundleStore
from server.db.models import Device, Scan

router = APIRouter(prefix="/api/v1", tags=["fleet"])

#: A device that said "online" but has not been heard of for this long is shown offline (stale).
DEFAULT_STALE_S = 180


class DeviceView(BaseModel):
    device_id: str = Field(description="Device id (= MQTT username).")
    name: str = Field(description="Human name.")
    user_id: int | None = Field(description="Owner.")
    collection_id: int | None = Field(description="Collection its scans go to.")
    online: bool = Field(description="Said online (retained status) and heard of within stale_after_s.")
    state: str = Field(description="online | offline | stale | revoked.")
    last_seen_at: datetime | None = Field(description="Last status/telemetry/scan received.")
    bundle_version: str | None = Field(description="Bundle the device reports serving.")
    update_error: str | None = Field(None, description="Why the device's last bundle update failed, if it did.")
    bundle_current: bool | None = Field(description="Whether that is the fleet's current bundle (None: no bundle).")
    software_version: str | None = Field(description="Device software version.")
    outbox_depth: int = Field(description="Scans waiting on the device for an ack (from telemetry).")
    scans_today: int = Field(description="Scans captured today (in tz) stored on the server.")
    revoked_at: datetime | None = Field(description="When the device was revoked.")
    telemetry: dict[str, Any] | None = Field(None, description="Latest telemetry (single-device view only).")


class FleetView(BaseModel):
    devices: list[DeviceView]
    summary: dict[str, Any] = Field(description="total, online, offline, revoked, outdated, scans_today.")
    current_bundle: BundleInfo | None = Field(description="The bundle every device should run.")
    generated_at: datetime


def _store(request: Request) -> BundleStore:
    return BundleStore(request.app.state.settings.data_dir / "bundles")


def _aware(dt: datetime | None) -> datetime | None:
    return dt.replace(tzinfo=timezone.utc) if dt is not None and dt.tzinfo is None else dt


def _day_start(tz: str) -> datetime:
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # OSError: a key no file name can be (too long)
        raise HTTPException(422, f"unknown time zone {tz!r}") from exc
    today = datetime.now(zone).date()
    return datetime.combine(today, time.min, tzinfo=zone).astimezone(timezone.utc)


def _views(session: Session, principal: Principal, current: BundleInfo | None, tz: str, stale_after_s: int,
           device_id: str | None = None) -> list[DeviceView]:
    q = select(Device).order_by(Device.name, Device.id)
    if not principal.is_admin and "admin" not in principal.scopes:
        q = q.where(Device.user_id == principal.user_id)
    if device_id is not None:
        q = q.where(Device.id == device_id)
    devices = session.scalars(q).all()
    since = _day_start(tz)
    counts: dict[str, int] = {}
    if devices:
        rows = session.execute(
            select(Scan.device_id, func.count()).where(Scan.captured_at >= since,
                                                       Scan.device_id.in_([d.id for d in devices]))
            .group_by(Scan.device_id))
        counts = {d: n for d, n in rows}
    now = datetime.now(timezone.utc)
    out = []
    for d in devices:
        last = _aware(d.last_seen_at)
        fresh = last is not None and (now - last) <= timedelta(seconds=stale_after_s)
        if d.revoked_at is not None:
            state, online = "revoked", False
        elif d.state == "online" and fresh:
            state, online = "online", True
        elif d.state == "online":
            state, online = "stale", False
        else:
            state, online = "offline", False
        out.append(DeviceView(
            device_id=d.id, name=d.name, user_id=d.user_id, collection_id=d.collection_id, online=online,
            state=state, last_seen_at=last, bundle_version=d.bundle_version, update_error=d.update_error,
            bundle_current=(d.bundle_version == current.version) if current and d.bundle_version else None,
            software_version=d.software_version, outbox_depth=d.outbox_depth or 0,
            scans_today=counts.get(d.id, 0), revoked_at=_aware(d.revoked_at),
            telemetry=(d.telemetry or {}) if device_id is not None else None))
    return out


@router.get("/fleet/devices", response_model=FleetView, summary="Devices with health and today's scans")
def list_devices(request: Request,
                 tz: str = Query("UTC", max_length=64, description="Time zone that defines 'today'."),
                 stale_after_s: int = Query(DEFAULT_STALE_S, ge=10, description="Silence after which online → stale."),
                 principal: Principal = Depends(require("read")),
                 session: Session = Depends(get_session)) -> FleetView:
    current = _store(request).current()
    views = _views(session, principal, current, tz, stale_after_s)
    summary = {
        "total": len(views),
        "online": sum(v.online for v in views),
        "offline": sum(v.state in ("offline", "stale") for v in views),
        "revoked": sum(v.state == "revoked" for v in views),
        "outdated": sum(v.bundle_current is False for v in views if v.state != "revoked"),
        "scans_today": sum(v.scans_today for v in views),
        "outbox_depth": sum(v.outbox_depth for v in views if v.state != "revoked"),
    }
    return FleetView(devices=views, summary=summary, current_bundle=current, generated_at=datetime.now(timezone.utc))


@router.get("/fleet/devices/{device_id}", response_model=DeviceView, summary="One device, with its telemetry")
def get_device(device_id: str, request: Request,
               tz: str = Query("UTC", max_length=64, description="Time zone that defines 'today'."),
               stale_after_s: int = Query(DEFAULT_STALE_S, ge=10),
               principal: Principal = Depends(require("read")),
               session: Session = Depends(get_session)) -> DeviceView:
    views = _views(session, principal, _store(request).current(), tz, stale_after_s, device_id=device_id)
    if not views:
        raise HTTPException(404, f"no device {device_id!r}")
    return views[0]


def _device_or_reader(principal: Principal = Depends(current_principal)) -> Principal:
    if not (principal.has("device") or principal.has("read")):
        raise HTTPException(403, "token lacks scope 'device' or 'read'")
    return principal


@router.get("/bundles/current", response_model=BundleInfo, summary="The bundle every device should run")
def current_bundle(request: Request, _p: Principal = Depends(_device_or_reader)) -> BundleInfo:
    cur = _store(request).current()
    if cur is None:
        raise HTTPException(404, "no bundle published yet")
    return cur


@router.get("/bundles/{version}/archive", summary="Download a signed bundle archive (device token)",
            response_class=FileResponse)
def bundle_archive(version: str, request: Request, _p: Principal = Depends(require("device"))) -> FileResponse:
    store = _store(request)
    try:
        info = store.get(version)
    except ValueError as exc:
        raise HTTPException(404, str(exc)) from exc
    path = store.archive(version)
    if info is None or not path.is_file():
        raise HTTPException(404, f"no bundle {version!r}")
    # FileResponse answers Range requests with 206 (resume) and sets ETag/Last-Modified.
    return FileResponse(path, media_type="application/x-tar", filename=f"scanemon-bundle-{version}.tar",
                        headers={"X-Bundle-Sha256": info.sha256, "Cache-Control": "private, no-transform"})
