"""FastAPI dependencies shared by routers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Path, Request
from pydantic import Field
from sqlalchemy.orm import Session

from server.config import ServerSettings
from server.db.session import Database


def get_db(request: Request) -> Database:
    return request.app.state.db


def get_settings(request: Request) -> ServerSettings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.db.session() as session:
        yield session


# Database ids are 64-bit; anything outside is a client error (422), never a driver overflow (500).
MAX_DB_ID = 2**63 - 1
DbId = Annotated[int, Field(ge=1, le=MAX_DB_ID, description="Database id.")]
DbIdPath = Annotated[int, Path(ge=1, le=MAX_DB_ID, description="Database id.")]
