"""FastAPI application factory."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

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
    # Web page (server-rendered) + static files + catalog images.
    from server.web import routes as web

    web.install(app)
    # Middleware: added last runs first. Metrics wrap everything so 429s and 413s are timed too.
    security.install(app, settings, db)
    app.add_middleware(metrics.MetricsMiddleware)
    if settings.log_json:
        security.configure_json_logging()
    return app
