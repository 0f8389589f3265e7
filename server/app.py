"""FastAPI application factory."""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError, StatementError

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

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError):
        # FastAPI's own handler, except that the body is ASCII: its errors echo the input, and a lone surrogate
        # there (a valid JSON escape, "\ud863", that no UTF-8 can carry) turned the 422 into a 500.
        body = json.dumps({"detail": jsonable_encoder(exc.errors())}, ensure_ascii=True)
        return Response(body, status_code=422, media_type="application/json")

    @app.exception_handler(DataError)
    async def _database_rejected_value(request: Request, exc: DataError):
        # PostgreSQL refuses values SQLite stores: "\u0000" or a lone surrogate inside JSONB (a smart folder's
        # filter), a number out of its column's range. The request's data is at fault: a 422 that says what.
        first = str(exc.orig).strip().splitlines()[:2]
        return JSONResponse({"detail": "a value was rejected by the database: " + " ".join(first)}, status_code=422)
    # Web page (server-rendered) + static files + catalog images.
    from server.web import routes as web

    web.install(app)
    # Middleware: added last runs first. Metrics wrap everything so 429s and 413s are timed too.
    security.install(app, settings, db)
    app.add_middleware(metrics.MetricsMiddleware)
    if settings.log_json:
        security.configure_json_logging()
    return app
