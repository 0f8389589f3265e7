"""Liveness and readiness."""

from __future__ import annotations

import socket
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict:
    return {"status": "ok"}


def _broker_reachable(host: str, port: int, timeout: float = 1.0) -> tuple[bool, str]:
    """Send a real MQTT 3.1.1 CONNECT and wait for CONNACK: an open port alone proves little."""
    client_id = b"scanemon-readyz"
    var = b"\x00\x04MQTT\x04\x02\x00\x0a"  # protocol name, level 4, clean session, keepalive 10
    payload = len(client_id).to_bytes(2, "big") + client_id
    packet = b"\x10" + bytes([len(var) + len(payload)]) + var + payload
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(packet)
            resp = s.recv(4)
            s.sendall(b"\xe0\x00")  # DISCONNECT
    except OSError as exc:
        return False, f"{host}:{port}: {exc}"
    if len(resp) >= 4 and resp[0] == 0x20:
        # 0 = accepted; 4/5 = bad credentials / not authorised still prove a live broker.
        return True, f"{host}:{port}: connack rc={resp[3]}"
    return False, f"{host}:{port}: unexpected reply {resp!r}"


@router.get("/readyz", summary="Readiness: database and broker reachable")
def readyz(request: Request) -> JSONResponse:
    settings = request.app.state.settings
    checks: dict[str, dict] = {}
    t = time.perf_counter()
    try:
        with request.app.state.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = {"ok": True, "dialect": request.app.state.db.dialect}
    except Exception as exc:  # any driver error means not ready
        checks["database"] = {"ok": False, "error": str(exc).splitlines()[0]}
    if settings.readyz_check_broker:
        ok, detail = _broker_reachable(settings.mqtt.host, settings.mqtt.port)
        checks["broker"] = {"ok": ok, "detail": detail}
    ready = all(c["ok"] for c in checks.values())
    body = {"status": "ready" if ready else "not_ready", "checks": checks, "ms": round((time.perf_counter() - t) * 1000, 1)}
    return JSONResponse(body, status_code=200 if ready else 503)
