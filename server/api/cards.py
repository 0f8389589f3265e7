"""Catalog browsing: sets and cards (printings), with full-text search on names."""

from __future__ import annotations

from datetime import date
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.api.deps import get_session
from server.db.models import Card, CardSet
from server.search import card_match

router = APIRouter(prefix="/api/v1", tags=["catalog"])


class SetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    game: str
    name: str
    series: str
    printed_total: int | None
    total: int | None
    release_date: date | None
    code: str | None
    symbol_url: str | None = None


class CardOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    game: str
    set_id: str
    name: str
    number: str
    printed_total: int | None
    rarity: str | None
    supertype: str | None
    subtypes: list[str]
    types: list[str]
    hp: int | None
    artist: str | None
    national_dex: list[int]
    illustration_id: str
    image_url_small: str | None
    image_url_large: str | None
    has_local_image: bool = False


class CardDetail(CardOut):
    facts: dict[str, Any] = Field(default_factory=dict)
    set: SetOut


class CardPage(BaseModel):
    items: list[CardOut]
    total: int
    page: int
    page_size: int


def card_out(c: Card, cls=CardOut):
    out = cls.model_validate(c)
    out.has_local_image = bool(c.image_path)
    return out


@router.get("/sets", response_model=list[SetOut], summary="All sets in release order")
def list_sets(game: str | None = Query(None, max_length=32), session: Session = Depends(get_session)):
    stmt = select(CardSet).order_by(CardSet.release_date, CardSet.id)
    if game:
        stmt = stmt.where(CardSet.game == game)
    return list(session.scalars(stmt))


@router.get("/cards", response_model=CardPage, summary="Search cards (printings)")
def list_cards(
    q: str | None = Query(None, max_length=200, description="Words matched as prefixes against name and artist."),
    set: str | None = Query(None, max_length=64, description="Set id, e.g. sv1."),
    rarity: str | None = Query(None, max_length=64),
    supertype: str | None = Query(None, max_length=32),
    type: str | None = Query(None, max_length=32, description="Energy type, e.g. Fire."),
    illustration_id: str | None = Query(None, max_length=64),
    page: int = Query(1, ge=1, le=100000),
    page_size: int = Query(50, ge=1, le=200),
    session: Session = Depends(get_session),
):
    conds = []
    if q:
        m = card_match(session.get_bind().dialect.name, q)
        if m is not None:
            conds.append(m)
    if set:
        conds.append(Card.set_id == set)
    if rarity:
        conds.append(Card.rarity == rarity)
    if supertype:
        conds.append(Card.supertype == supertype)
    if illustration_id:
        conds.append(Card.illustration_id == illustration_id)
    stmt = select(Card).where(*conds)
    if type:
        # JSON list membership, portable: rows are few after the other filters or the type is selective.
        stmt = stmt.where(func.json_extract(Card.types, "$").like(f'%"{type}"%') if session.get_bind().dialect.name == "sqlite"
                          else Card.types.op("@>")(func.jsonb_build_array(type)))
    total = session.scalar(select(func.count()).select_from(stmt.subquery()))
    rows = session.scalars(stmt.order_by(Card.name, Card.set_id, Card.id).offset((page - 1) * page_size).limit(page_size))
    return CardPage(items=[card_out(c) for c in rows], total=total or 0, page=page, page_size=page_size)


@router.get("/cards/{card_id}", response_model=CardDetail, summary="One card with its set and facts")
def get_card(card_id: str, session: Session = Depends(get_session)):
    c = session.get(Card, card_id)
    if c is None:
        raise HTTPException(404, f"unknown card {card_id!r}")
    out = CardDetail.model_validate(c)
    out.has_local_image = bool(c.image_path)
    return out
