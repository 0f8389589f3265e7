"""Prometheus metrics: one module-level registry of instruments other workstreams import and update.

    from server.metrics import INGEST_SCANS, OUTBOX_DEPTH, RESOLVER_LATENCY
    INGEST_SCANS.labels(decision="accept").inc(n)
    OUTBOX_DEPTH.labels(device_id=dev).set(depth)
    with RESOLVER_LATENCY.labels(outcome="resolved").time(): ...

Instruments live at module level (not per app) because prometheus_client refuses to register a name
twice and tests build many apps in one process. ``/metrics`` serves the default registry.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from server.auth import Principal, current_principal

HTTP_LATENCY = Histogram(
    "scanemon_http_request_duration_seconds", "HTTP request latency by route template.",
    ["method", "route", "status"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
HTTP_RATE_LIMITED = Counter("scanemon_http_rate_limited_total", "Requests answered 429 by the rate limiter.")

# Ingest (MQTT → database): scans stored per decision, and batches committed.
INGEST_SCANS = Counter("scanemon_ingest_scans_total", "Scans stored by ingest workers.", ["decision"])
INGEST_BATCH_SECONDS = Histogram("scanemon_ingest_batch_seconds", "Time to commit one ingest batch.",
                                 buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0))
INGEST_DEAD_LETTERS = Counter("scanemon_ingest_dead_letters_total", "Payloads ingest rejected.", ["reason"])
# Devices: outbox depth (scans not yet acked) and lag (now - captured_at of the newest stored scan).
OUTBOX_DEPTH = Gauge("scanemon_device_outbox_depth", "Scans waiting in a device's outbox (from telemetry).",
                     ["device_id"])
OUTBOX_LAG_SECONDS = Gauge("scanemon_device_outbox_lag_seconds",
                           "Seconds between capture and server storage of a device's newest scan.", ["device_id"])
# Resolver: latency of one ambiguous-scan resolution, by outcome (resolved / needs_review / error).
RESOLVER_LATENCY = Histogram("scanemon_resolver_latency_seconds", "Resolver latency per ambiguous scan.",
                             ["outcome"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
REVIEW_DECISIONS = Counter("scanemon_review_decisions_total", "Review-queue decisions by people.", ["action"])
ITEMS_APPLIED = Counter("scanemon_collection_items_applied_total", "Decided scans added to collections.",
                        ["status"])


class MetricsMiddleware:
    """Pure ASGI: times every HTTP request, labelled by the route template (bounded label cardinality)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        t = time.perf_counter()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"
            HTTP_LATENCY.labels(scope.get("method", ""), template, str(status["code"])).observe(time.perf_counter() - t)


router = APIRouter(tags=["operations"])


def _metrics_access(request: Request) -> None:
    if request.app.state.settings.security.metrics_public:
        return
    principal: Principal = current_principal(request, None) if getattr(request.state, "principal", None) else None
    if principal is None:
        # Bearer path: resolve the token through the normal dependency.
        from fastapi.security.utils import get_authorization_scheme_param
        from fastapi.security import HTTPAuthorizationCredentials

        scheme, cred = get_authorization_scheme_param(request.headers.get("authorization"))
        creds = HTTPAuthorizationCredentials(scheme=scheme, credentials=cred) if cred else None
        principal = current_principal(request, creds)
    if not principal.has("admin"):
        raise HTTPException(403, "metrics need an admin token")


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            dependencies=[Depends(_metrics_access)])
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
