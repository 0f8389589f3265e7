"""FastAPI application factory."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server import __version__
from server.api import cards, health
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
    for module in (health, cards):
        app.include_router(module.router)
    return app
