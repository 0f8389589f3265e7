"""FastAPI application factory."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import StatementError

from server import __version__
from server import metrics, security
from server.api import cards, collections, fleet, health, identify, prices, review, users
from server.config import ServerSettings
from server.db.session import Database

log = logging.getLogger(__name__)


def create_app(settings: ServerSettings | None = None, db: Database | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    db = db or Database(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        db.dispose()

    app = FastAPI(
        title="Scanemon",
        version=__version__,
        summary="Trading-card scanning: catalog, collections, ingest and fleet.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.db = db
    for module in (health, cards, collections, users, review, prices, identify, fleet, metrics):
        app.include_router(module.router)

    @app.exception_handler(ValueError)
    async def _driver_rejected_value(request: Request, exc: ValueError):
        # psycopg2 refuses NUL characters in text (SQLite stores them): a client error, never a 500.
        orig = exc.orig if isinstance(exc, StatementError) else exc
        if "NUL (0x00)" in str(orig):
            return JSONResponse({"detail": "text fields must not contain NUL (0x00) characters"}, status_code=422)
        raise exc
    # Web page (server-rendered) + static files + catalog images.
    from server.web import routes as web

    web.install(app)
    # Middleware: added last runs first. Metrics wrap everything so 429s and 413s are timed too.
    security.install(app, settings, db)
    app.add_middleware(metrics.MetricsMiddleware)
    if settings.log_json:
        security.configure_json_logging()
    return app
