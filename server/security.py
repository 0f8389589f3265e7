"""HTTP hardening: rate limiting, body caps, web-session login + CSRF, security headers, audit log, CORS,
and image-upload validation.

Everything request-wide is one pure ASGI middleware (``SecurityMiddleware``) so the order of checks is
explicit and cheap: rate limit → body cap → session cookie → CSRF → app → headers → audit row.

``validate_image_upload(data)`` is the one entry point for image uploads (the identify endpoint and
anything else that decodes user images): it checks size, magic bytes and the pixel count read from the
header *before* decoding, so a 100-byte PNG that claims 50,000 x 50,000 pixels never reaches the decoder.
"""

from __future__ import annotations

import hmac
import json
import logging
import struct
import threading
import time
from collections import OrderedDict
from http.cookies import SimpleCookie

import anyio
import numpy as np
from fastapi import FastAPI, HTTPException
from starlette.middleware.cors import CORSMiddleware

from server import accounts
from server.metrics import HTTP_RATE_LIMITED

log = logging.getLogger(__name__)

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


# --- rate limiting ----------------------------------------------------------------------------------------


class TokenBucketLimiter:
    """In-process token buckets keyed by client. Bounded (LRU) so a flood of addresses cannot exhaust memory.

    Per replica: behind a load balancer with N replicas a client gets up to N times the rate; put a
    shared limiter in the proxy if that matters.
    """

    def __init__(self, rate_per_s: float, burst: int, max_clients: int = 100_000):
        self.rate = float(rate_per_s)
        self.burst = float(burst)
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> float:
        """Spend one token; returns 0 when allowed, else seconds until a token is available."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                wait = 0.0
            else:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return wait


# --- the middleware -------------------------------------------------------------------------------------


def _headers(scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in scope.get("headers") or []:
        out[k.decode("latin-1").lower()] = v.decode("latin-1")
    return out


def client_key(scope, headers: dict[str, str], trust_forwarded_for: bool) -> str:
    # Keyed by address, not by the presented token: a client rotating made-up tokens must not get fresh buckets.
    if trust_forwarded_for and headers.get("x-forwarded-for"):
        return headers["x-forwarded-for"].split(",")[0].strip()[:64]
    client = scope.get("client")
    return (client[0] if client else "unknown")[:64]


async def _send_json(send, status: int, body: dict, extra: list[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": payload})


class _BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than {limit} bytes")


class SecurityMiddleware:
    def __init__(self, app, *, settings, db):
        self.app = app
        self.settings = settings
        self.sec = settings.security
        self.db = db
        self.limiter = TokenBucketLimiter(self.sec.rate_limit_per_s, self.sec.rate_limit_burst)
        self._secret: bytes | None = None
        self.static_headers = [
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            # Share links carry a secret in the URL: never leak it to other sites via Referer.
            (b"referrer-policy", b"no-referrer"),
            (b"cross-origin-opener-policy", b"same-origin"),
            (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
        ]
        self.csp = self.sec.content_security_policy.encode()
        # The interactive API docs load their JS/CSS from a CDN; only those two pages get that allowance.
        self.docs_csp = (b"default-src 'self'; img-src 'self' data: https://fastapi.tiangolo.com; "
                         b"style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
                         b"script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; frame-ancestors 'none'")

    @property
    def secret(self) -> bytes:
        if self._secret is None:
            self._secret = accounts.session_secret(self.settings)
        return self._secret

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path: str = scope.get("path", "")
        method: str = scope.get("method", "GET")
        headers = _headers(scope)
        client = client_key(scope, headers, self.sec.trust_forwarded_for)
        security_headers = self._security_headers(path)

        if self.sec.rate_limit_enabled and not any(path.startswith(p) for p in self.sec.rate_limit_exempt):
            wait = self.limiter.take(client)
            if wait > 0:
                HTTP_RATE_LIMITED.inc()
                retry = str(max(1, int(wait + 0.999))).encode()
                return await _send_json(send, 429, {"detail": "rate limit exceeded"},
                                        [(b"retry-after", retry), *security_headers])

        limit = self.sec.max_body_bytes
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return await _send_json(send, 400, {"detail": "bad Content-Length"}, security_headers)
            if int(length) > limit:
                return await _send_json(send, 413, {"detail": f"request body larger than {limit} bytes"},
                                        security_headers)
        else:
            receive = self._capped_receive(receive, limit)

        state = scope.setdefault("state", {})
        cookie_token = None
        if "authorization" not in headers and "cookie" in headers:
            cookie_token = self._cookie_token(headers["cookie"])
            if cookie_token:
                login = await anyio.to_thread.run_sync(self._lookup_session, cookie_token)
                if login is not None:
                    state["principal"] = login.principal
                    state["web_login"] = login
                    state["session_token"] = cookie_token
                    if method in MUTATING and path.startswith("/api/"):
                        # Cookie-authenticated API writes need the CSRF header (the web forms post a field instead,
                        # checked by their routes); samesite=lax already stops most cross-site posts.
                        sent = headers.get(accounts.CSRF_HEADER, "")
                        if not hmac.compare_digest(sent, login.csrf_token):
                            return await _send_json(send, 403, {"detail": "missing or wrong X-CSRF-Token"},
                                                    security_headers)

        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *security_headers]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if self.sec.audit_mutations and method in MUTATING:
                principal = state.get("principal")
                user_id = getattr(principal, "user_id", None)
                detail = {"token_id": getattr(principal, "token_id", None)} if principal else {}
                if state.get("audit_detail"):
                    detail.update(state["audit_detail"])
                try:
                    await anyio.to_thread.run_sync(self._audit, user_id, method, path, status["code"], client, detail)
                except Exception:  # an audit failure must not turn a done write into an error; it is logged loudly
                    log.exception("audit log write failed for %s %s", method, path)

    def _security_headers(self, path: str) -> list[tuple[bytes, bytes]]:
        csp = self.docs_csp if path in ("/docs", "/redoc") else self.csp
        out = [*self.static_headers, (b"content-security-policy", csp)]
        if path.startswith("/api/"):
            out.append((b"cache-control", b"no-store"))
        return out

    def _capped_receive(self, receive, limit: int):
        seen = {"n": 0}

        async def wrapped():
            message = await receive()
            if message["type"] == "http.request":
                seen["n"] += len(message.get("body", b""))
                if seen["n"] > limit:
                    raise _BodyTooLarge(limit)
            return message

        return wrapped

    def _cookie_token(self, cookie_header: str) -> str | None:
        try:
            jar = SimpleCookie()
            jar.load(cookie_header)
        except Exception:
            return None
        morsel = jar.get(accounts.COOKIE_NAME)
        return accounts.unsign_cookie(self.secret, morsel.value if morsel else None)

    def _lookup_session(self, token: str):
        with self.db.session() as s:
            return accounts.lookup_session(s, token)

    def _audit(self, user_id, method, path, status, client, detail) -> None:
        from server.db.models import AuditLog

        with self.db.session() as s:
            s.add(AuditLog(user_id=user_id, method=method, path=path[:2000], status=status, client=client,
                           detail=detail))


def install(app: FastAPI, settings, db) -> None:
    """Add CORS (outermost, so preflights are answered before rate limiting) and the security middleware."""
    app.add_middleware(SecurityMiddleware, settings=settings, db=db)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "X-CSRF-Token"], max_age=600)


# --- image uploads ---------------------------------------------------------------------------------------


def sniff_image(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) read from the header only; raises HTTPException 415/422."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise HTTPException(422, "truncated PNG header")
        w, h = struct.unpack(">II", data[16:24])
        return "png", w, h
    if data[:3] == b"\xff\xd8\xff":
        return ("jpeg", *_jpeg_size(data))
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ("webp", *_webp_size(data))
    raise HTTPException(415, "unsupported image type: send JPEG, PNG or WebP")


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise HTTPException(422, "corrupt JPEG: bad marker")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        seg = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in _SOF:
            if i + 9 > n:
                break
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        if marker == 0xDA or seg < 2:  # start of scan before any frame header
            break
        i += 2 + seg
    raise HTTPException(422, "corrupt JPEG: no frame header")


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        b = int.from_bytes(data[21:25], "little")
        return (b & 0x3FFF) + 1, ((b >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    raise HTTPException(422, "corrupt WebP header")


def validate_image_upload(data: bytes, *, max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
                          max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Check and decode an uploaded image; returns a BGR ``uint8`` array (H, W, 3).

    413: larger than ``max_bytes`` or more than ``max_pixels`` pixels (decompression bomb);
    415: not JPEG/PNG/WebP by magic bytes; 422: corrupt or undecodable.
    """
    if len(data) > max_bytes:
        raise HTTPException(413, f"image larger than {max_bytes} bytes")
    if len(data) < 16:
        raise HTTPException(422 if data[:3] in (b"\xff\xd8\xff", b"\x89PN", b"RIF") else 415, "not an image")
    fmt, w, h = sniff_image(data)
    if w <= 0 or h <= 0:
        raise HTTPException(422, f"{fmt} header declares an empty image")
    if w * h > max_pixels:
        raise HTTPException(413, f"image has {w}x{h} pixels; at most {max_pixels} allowed")
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise HTTPException(422, f"{fmt} image could not be decoded")
    if img.shape[0] * img.shape[1] > max_pixels:  # header lied; still refuse
        raise HTTPException(413, "image larger than the pixel limit")
    return img


def validate_image_upload_for(settings, data: bytes) -> np.ndarray:
    """``validate_image_upload`` with the limits from ``settings.security``."""
    return validate_image_upload(data, max_bytes=settings.security.max_upload_bytes,
                                 max_pixels=settings.security.max_image_pixels)


# --- structured logs -------------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (+ exc and any ``extra=`` fields)."""

    _STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        out = {"ts": ts, "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        for k, v in vars(record).items():
            if k not in self._STD and not k.startswith("_"):
                out[k] = v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_json_logging(level: int = logging.INFO) -> None:
    """Replace root handlers with one JSON-lines handler on stderr (``log_json: true``)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.access", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
