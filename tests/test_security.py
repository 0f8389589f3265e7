"""Security: every route of the app (enumerated, so new endpoints are covered) refuses anonymous callers and
never lets one user read or change another user's data; rate limits, headers, CORS, body caps, web-session
login with CSRF, image-upload validation, audit log, metrics and JSON logs."""

from __future__ import annotations

import json
import logging
import re
import struct
import zlib

import numpy as np
import pytest
from fastapi import HTTPException
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy import select

from server.db.models import ApiToken, Collection, CollectionItem, Device, Scan, SmartFolder
from server.security import JsonFormatter, TokenBucketLimiter, validate_image_upload
from tests.collection_fixtures import *  # noqa: F401,F403 - fixtures
from tests.collection_fixtures import add_scan, build_env

MARKER = "alice-secret-7f3a"

# Routes anyone may call: health, catalog (public data), docs, share links (the link is the capability),
# card images, login and static files. Everything else must refuse anonymous callers.
PUBLIC = {
    ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"), ("GET", "/redoc"), ("GET", "/api/v1/sets"), ("GET", "/api/v1/cards"),
    ("GET", "/api/v1/cards/{card_id}"), ("GET", "/api/v1/shared/{token}"), ("GET", "/api/v1/shared/{token}/items"),
    ("GET", "/shared/{token}"), ("GET", "/images/cards/{card_id}"), ("GET", "/login"), ("POST", "/login"),
}


def all_routes(app):
    """(method, path, route) for every endpoint, including routers other workstreams add later."""
    out = []
    for rc in iter_route_contexts(app.routes):
        for m in sorted(getattr(rc, "methods", None) or []):
            if m != "HEAD":
                out.append((m, rc.path, rc.original_route))
    return out


@pytest.fixture
def world(env):
    """Alice owns one of everything; Bob is a second ordinary user with a web session."""
    e, a = env, env.alice
    with e.db.session() as s:
        s.get(Collection, a.collection_id).name = f"{MARKER} binder"
        s.add(Device(id="pi-alice", name=f"{MARKER} desk", user_id=a.user_id, collection_id=a.collection_id))
    r = e.client.post(f"/api/v1/collections/{a.collection_id}/items", headers=a.headers,
                      json={"card_id": "base1-4", "quantity": 2, "notes": MARKER, "price_paid": "5.00"})
    item_id = r.json()["id"]
    folder_id = e.client.post("/api/v1/smart-folders", json={"name": f"{MARKER} folder", "filter": {"set": "base1"}},
                              headers=a.headers).json()["id"]
    token_id = e.client.post("/api/v1/me/tokens", json={"name": MARKER, "scopes": ["read"]}, headers=a.headers).json()["id"]
    share = e.client.post(f"/api/v1/collections/{a.collection_id}/share", headers=a.headers).json()["token"]
    scan_id = add_scan(e.db, device_id="pi-alice", collection_id=a.collection_id, card_id="base1-4",
                       candidates=[{"card_id": "base1-4", "score": 0.5}])
    ids = {"collection_id": a.collection_id, "item_id": item_id, "folder_id": folder_id, "token_id": token_id,
           "device_id": "pi-alice", "scan_id": scan_id, "token": share, "card_id": "base1-4", "version": "1.0.0",
           "user_id": a.user_id}
    return e, ids


def alice_state(e, ids):
    with e.db.session() as s:
        col = s.get(Collection, ids["collection_id"])
        items = sorted((i.card_id, i.quantity, i.condition, i.notes) for i in
                       s.scalars(select(CollectionItem).where(CollectionItem.collection_id == col.id)))
        return {
            "collection": (col.name, col.description, col.share_token_hash),
            "items": items,
            "folder": s.get(SmartFolder, ids["folder_id"]) is not None,
            "token_revoked": s.get(ApiToken, ids["token_id"]).revoked_at,
            "device": (lambda d: (d.user_id, d.collection_id, d.name))(s.get(Device, "pi-alice")),
            "scan": s.scalar(select(Scan.status).where(Scan.scan_id == ids["scan_id"])),
        }


def path_for(path: str, ids: dict) -> str:
    def sub(m):
        name = m.group(1).split(":")[0]
        assert name in ids, (f"route {path} has path parameter {name!r} that tests/test_security.py does not know: "
                             f"add an id owned by Alice for it to the `world` fixture")
        return str(ids[name])

    return re.sub(r"\{([^}]+)\}", sub, path)


def example(schema, spec, ids, name=""):
    """A plausible request body from an OpenAPI schema, with ids pointing at Alice's things."""
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            opts = [o for o in schema[key] if o.get("type") != "null"]
            return example(opts[0], spec, ids, name) if opts else None
    if name in ("item_ids",):
        return [ids["item_id"]]
    if name in ("collection_id", "target_collection_id"):
        return ids["collection_id"]
    if name == "card_id":
        return "sv1-1"
    if name == "user_id":
        return ids["user_id"]
    if "enum" in schema:
        return schema["enum"][0]
    t = schema.get("type")
    if t == "object" or "properties" in schema:
        return {k: example(v, spec, ids, k) for k, v in schema.get("properties", {}).items()}
    if t == "array":
        return [example(schema.get("items", {}), spec, ids, name)]
    if t == "integer":
        return max(1, schema.get("minimum", 1))
    if t == "number":
        return 1
    if t == "boolean":
        return False
    if schema.get("format") == "date":
        return "2024-01-01"
    return {"finish": "normal", "language": "en", "username": "mallory", "password": "long-password-1",
            "new_password": "long-password-2", "current_password": "not-the-password", "name": "hijack",
            "scopes": "read"}.get(name, "x" * max(1, schema.get("minLength", 1)))


def call(client, method, url, route, spec, ids, headers, csrf=None):
    op = spec["paths"].get(route.path, {}).get(method.lower()) if isinstance(route, APIRoute) else None
    kw = {"headers": dict(headers)}
    if method in ("POST", "PUT", "PATCH", "DELETE"):
        if op is not None and "requestBody" in op:
            content = op["requestBody"]["content"]
            if "multipart/form-data" in content:
                kw["files"] = {"file": ("x.csv", b"card_id,quantity\nsv1-1,1\n", "text/csv")}
            else:
                kw["json"] = example(content["application/json"]["schema"], spec, ids)
        elif op is None:  # web form routes
            kw["data"] = {"csrf_token": csrf or "", "name": "hijack", "quantity": "0", "condition": "NM",
                          "action": "confirm", "card_id": "sv1-1", "collection_id": str(ids["collection_id"]),
                          "finish": "normal"}
    return client.request(method, url, follow_redirects=False, **kw)


def web_login(client, acct) -> str:
    """Log in through the form; returns the session's CSRF token."""
    page = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = client.post("/login", data={"username": acct.username, "password": acct.password, "csrf_token": csrf,
                                    "next": "/collections"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/collections", r.text
    page = client.get("/collections")
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)


def test_every_route_refuses_anonymous_callers(world):
    e, ids = world
    spec = e.app.openapi()
    before = alice_state(e, ids)
    checked = 0
    e.client.cookies.clear()
    for method, path, route in all_routes(e.app):
        if (method, path) in PUBLIC or path.startswith("/static"):
            continue
        r = call(e.client, method, path_for(path, ids), route, spec, ids, {})
        checked += 1
        if path.startswith("/api/"):
            assert r.status_code == 401, (method, path, r.status_code, r.text[:200])
        else:
            assert r.status_code == 303 and r.headers["location"].startswith("/login"), (method, path, r.status_code)
        assert MARKER not in r.text
    assert checked >= 40
    assert alice_state(e, ids) == before


def test_no_route_lets_bob_touch_alice_data(world):
    """IDOR sweep: Bob calls every endpoint with Alice's ids, by token (API) and by web session (pages)."""
    e, ids = world
    spec = e.app.openapi()
    before = alice_state(e, ids)
    csrf = web_login(e.client, e.bob)
    checked = 0
    for method, path, route in all_routes(e.app):
        if (method, path) in PUBLIC or path.startswith("/static") or path == "/logout":
            continue
        url = path_for(path, ids)
        if path.startswith("/api/"):
            # Token and session (with its CSRF header) must both be refused.
            cookies = dict(e.client.cookies)
            e.client.cookies.clear()
            r = call(e.client, method, url, route, spec, ids, e.bob.headers)
            for k, v in cookies.items():
                e.client.cookies.set(k, v)
            r2 = call(e.client, method, url, route, spec, ids, {"X-CSRF-Token": csrf})
            responses = [r, r2]
        else:
            responses = [call(e.client, method, url, route, spec, ids, {}, csrf=csrf)]
        for resp in responses:
            checked += 1
            assert MARKER not in resp.text, (method, path, resp.status_code)
            has_alice_param = any(f"{{{p}" in path for p in ("collection_id", "item_id", "folder_id", "token_id",
                                                              "device_id", "scan_id"))
            if has_alice_param:
                assert resp.status_code in (403, 404, 409, 422), (method, path, resp.status_code, resp.text[:300])
            if method != "GET" and not path.startswith("/api/"):
                # Web forms answer with a redirect on success; for Alice's things they must fail instead.
                if has_alice_param:
                    assert resp.status_code != 303, (method, path)
    assert checked >= 60
    assert alice_state(e, ids) == before
    # And Alice still sees her things (the sweep did not break them).
    assert e.client.get(f"/api/v1/shared/{ids['token']}").status_code == 200


def test_web_login_session_and_csrf(env):
    c = env.client
    assert c.get("/collections", follow_redirects=False).headers["location"].startswith("/login")
    # Login needs the form's CSRF token.
    c.get("/login")
    r = c.post("/login", data={"username": "alice", "password": env.alice.password, "csrf_token": "nope"},
               follow_redirects=False)
    assert r.status_code == 403
    page = c.get("/login?next=//evil.example/x")
    tok = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    assert 'value="/collections"' in page.text  # open redirect neutralised
    r = c.post("/login", data={"username": "alice", "password": "wrong", "csrf_token": tok}, follow_redirects=False)
    assert r.status_code == 303 and "error=1" in r.headers["location"]
    r = c.post("/login", data={"username": "alice", "password": env.alice.password, "csrf_token": tok},
               follow_redirects=False)
    cookie = r.headers["set-cookie"]
    assert "scanemon_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/collections").text).group(1)
    assert c.get("/api/v1/me").json()["via"] == "session"
    # Cookie-authenticated API writes need the CSRF header.
    assert c.post("/api/v1/collections", json={"name": "s1"}).status_code == 403
    assert c.post("/api/v1/collections", json={"name": "s1"}, headers={"X-CSRF-Token": csrf}).status_code == 201
    # Forms need the field.
    assert c.post("/collections", data={"name": "s2", "csrf_token": "bad"}, follow_redirects=False).status_code == 403
    assert c.post("/collections", data={"name": "s2", "csrf_token": csrf}, follow_redirects=False).status_code == 303
    # A forged cookie is ignored; logout ends the session server-side.
    stolen = c.cookies.get("scanemon_session")
    c.post("/logout", data={"csrf_token": csrf}, follow_redirects=False)
    c.cookies.set("scanemon_session", stolen)
    assert c.get("/api/v1/me").status_code == 401
    c.cookies.set("scanemon_session", stolen.split(".")[0] + ".forged")
    assert c.get("/api/v1/me").status_code == 401


def test_rate_limit_token_bucket(catalog_url, tmp_path):
    e = build_env(catalog_url, tmp_path, rate_limit_enabled=True, rate_limit_per_s=0.5, rate_limit_burst=5)
    with e.client as c:
        codes = [c.get("/api/v1/sets").status_code for _ in range(6)]
        assert codes[:5] == [200] * 5 and codes[5] == 429
        r = c.get("/api/v1/sets")
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 2
        assert r.headers["x-content-type-options"] == "nosniff"
        assert all(c.get("/healthz").status_code == 200 for _ in range(10))  # probes are exempt
    e.db.dispose()


def test_token_bucket_refills():
    b = TokenBucketLimiter(rate_per_s=2, burst=2)
    assert b.take("k", now=0) == 0 and b.take("k", now=0) == 0
    assert b.take("k", now=0) == pytest.approx(0.5)
    assert b.take("k", now=0.5) == 0  # one token back after 0.5 s
    assert b.take("other", now=0.5) == 0  # buckets are per client


def test_security_headers_cors_and_body_cap(catalog_url, tmp_path):
    e = build_env(catalog_url, tmp_path, max_body_bytes=2048)
    e.settings.cors_origins = ["https://app.example"]
    from fastapi.testclient import TestClient
    from server.app import create_app

    with TestClient(create_app(e.settings, e.db)) as c:
        r = c.get("/api/v1/sets")
        h = r.headers
        assert "frame-ancestors 'none'" in h["content-security-policy"]
        assert h["x-content-type-options"] == "nosniff" and h["x-frame-options"] == "DENY"
        assert h["referrer-policy"] == "no-referrer" and h["cache-control"] == "no-store"
        assert "content-security-policy" in c.get("/login").headers
        ok = c.options("/api/v1/sets", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"})
        assert ok.headers.get("access-control-allow-origin") == "https://app.example"
        bad = c.options("/api/v1/sets", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
        assert "access-control-allow-origin" not in bad.headers
        big = c.post("/api/v1/collections", content=b"x" * 4096, headers={**e.alice.headers, "Content-Type": "application/json"})
        assert big.status_code == 413
    e.db.dispose()


def _png(w, h, body=True) -> bytes:
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    raw = b"".join(b"\x00" + b"\x80" * (w * 3) for _ in range(h)) if body else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_validate_image_upload():
    import cv2

    img = validate_image_upload(_png(8, 6))
    assert img.shape == (6, 8, 3) and img.dtype == np.uint8
    ok, jpg = cv2.imencode(".jpg", np.full((20, 30, 3), 128, np.uint8))
    assert validate_image_upload(jpg.tobytes()).shape == (20, 30, 3)
    ok, webp = cv2.imencode(".webp", np.full((20, 30, 3), 128, np.uint8))
    assert validate_image_upload(webp.tobytes()).shape == (20, 30, 3)

    def status(data, **kw):
        with pytest.raises(HTTPException) as exc:
            validate_image_upload(data, **kw)
        return exc.value.status_code

    assert status(_png(8, 6), max_bytes=50) == 413
    # Decompression bomb: a tiny file that declares 50,000 x 50,000 pixels is refused before decoding.
    assert status(_png(50_000, 50_000, body=False)) == 413
    assert status(b"GIF89a" + b"\x00" * 100) == 415
    assert status(b"hello, this is not an image at all") == 415
    assert status(jpg.tobytes()[:40]) == 422
    assert status(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40) == 422
    assert status(_png(8, 6)[:40] + b"garbage" * 10) == 422


def test_metrics_and_json_logs(env):
    env.client.get("/api/v1/collections", headers=env.alice.headers)
    body = env.client.get("/metrics").text
    assert 'scanemon_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/api/v1/collections",status="200"}' in body \
        or re.search(r'scanemon_http_request_duration_seconds_count\{method="GET",route="/api/v1/collections",status="200"\}', body)
    for name in ("scanemon_ingest_scans_total", "scanemon_device_outbox_depth", "scanemon_resolver_latency_seconds"):
        assert name in body
    rec = logging.LogRecord("scanemon.test", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    rec.device_id = "pi-1"
    out = json.loads(JsonFormatter().format(rec))
    assert out["msg"] == "hello world" and out["level"] == "INFO" and out["device_id"] == "pi-1"
