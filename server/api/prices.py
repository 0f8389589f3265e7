"""Prices: feed import (admin), per-card history, collection valuation and value over time."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, UploadFile
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.api.deps import DbIdPath, get_session
from server.auth import Principal, require
from server.collections_service import owned_collection, valuation, value_history
from server.db.models import Card, Price
from server.prices import ADAPTERS, import_prices

router = APIRouter(prefix="/api/v1", tags=["prices"])

DB = Annotated[Session, Depends(get_session)]
Reader = Annotated[Principal, Depends(require("read"))]
Admin = Annotated[Principal, Depends(require("admin"))]


class PriceOut(BaseModel):
    card_id: str
    finish: str
    currency: str
    low: Decimal | None
    mid: Decimal | None
    market: Decimal | None
    price_date: date
    source: str


class PriceImportOut(BaseModel):
    rows: int
    stored: int
    unknown_cards: int
    errors: list[str]
    error_count: int


class ValuePoint(BaseModel):
    date: date
    market: float


class SetValue(BaseModel):
    set_id: str
    value: float


class ValuationOut(BaseModel):
    collection_id: int
    currency: str
    market: float
    low: float
    mid: float
    paid: float
    priced_cards: int
    unpriced_cards: int
    by_set: list[SetValue]
    history: list[ValuePoint] = Field(description="Value of the current holdings on each price date.")


@router.post("/prices/import", response_model=PriceImportOut, summary="Import a price feed (admin)")
async def import_feed(request: Request, principal: Admin, file: UploadFile = File(..., description="CSV or JSON feed"),
                      format: Literal["csv", "json"] = Query("csv"),
                      adapter: Literal["generic", "tcgplayer"] = Query("generic", description=f"One of {', '.join(ADAPTERS)}"),
                      source: str = Query("import", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")):
    limit = request.app.state.settings.security.max_body_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"feed larger than {limit} bytes; use `scanemon-server collection import-prices`")
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise HTTPException(422, "feed must be UTF-8") from None
    with request.app.state.db.session() as session:
        report = import_prices(session, data, fmt=format, adapter=adapter, source=source)
    return report.as_dict()


@router.get("/prices/{card_id}", response_model=list[PriceOut], summary="Price history of one card")
def card_prices(card_id: str, principal: Reader, session: DB,
                finish: str | None = Query(None, max_length=32), limit: int = Query(365, ge=1, le=5000)):
    if session.get(Card, card_id) is None:
        raise HTTPException(404, f"unknown card {card_id!r}")
    stmt = select(Price).where(Price.card_id == card_id)
    if finish:
        stmt = stmt.where(Price.finish == finish)
    rows = session.scalars(stmt.order_by(Price.price_date.desc(), Price.finish).limit(limit))
    return [PriceOut.model_validate(p, from_attributes=True) for p in rows]


@router.get("/collections/{collection_id}/value", response_model=ValuationOut,
            summary="Collection value now (newest price per card and finish) and over time")
def collection_value(collection_id: DbIdPath, principal: Reader, session: DB, days: int = Query(365, ge=1, le=3650)):
    owned_collection(session, principal, collection_id)
    v = valuation(session, collection_id)
    return ValuationOut(**v, history=value_history(session, collection_id, days))
