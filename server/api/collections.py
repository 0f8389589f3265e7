"""Collections, items, bulk edits, smart folders, analytics, CSV import/export and read-only share links.

Every collection-scoped route loads the collection through ``owned_collection`` (404 for anyone but its
owner), so a guessed id never reveals or touches another user's data; tests/test_security.py checks that
for every route the app has.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, Response, UploadFile
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.api.cards import CardOut, card_out
from server.api.deps import DbId, DbIdPath, get_session
from server.auth import Principal, require
from server.collection_io import FORMATS, export_csv, import_csv
from server.collections_service import (ItemFilter, SortKey, add_to_stack, analytics, items_page, owned_collection)
from server.db.models import Card, Collection, CollectionItem, Condition, SmartFolder

router = APIRouter(prefix="/api/v1", tags=["collections"])

Reader = Annotated[Principal, Depends(require("read"))]
Writer = Annotated[Principal, Depends(require("write"))]
DB = Annotated[Session, Depends(get_session)]

FinishStr = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$", description="normal, holo, reverse_holo, …")]
LangStr = Annotated[str, Field(pattern=r"^[a-z]{2,3}(-[a-z]{2,4})?$", description="Language code, e.g. en, ja, zh-tw.")]
Money = Annotated[Decimal, Field(ge=0, le=Decimal("999999999.99"), max_digits=12, decimal_places=2)]


class CollectionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200, description="Unique per user.")
    description: str = Field("", max_length=2000)


class CollectionPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)


class CollectionOut(BaseModel):
    id: int
    name: str
    description: str
    shared: bool
    created_at: datetime
    stacks: int = 0
    cards: int = 0


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    card_id: str = Field(min_length=1, max_length=64)
    quantity: int = Field(1, ge=1, le=100_000)
    condition: Condition = Condition.NM
    finish: FinishStr = "normal"
    language: LangStr = "en"
    notes: str = Field("", max_length=2000)
    acquired_at: date | None = None
    price_paid: Money | None = None


class ItemPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    quantity: int | None = Field(None, ge=1, le=100_000)
    condition: Condition | None = None
    finish: FinishStr | None = None
    language: LangStr | None = None
    notes: str | None = Field(None, max_length=2000)
    acquired_at: date | None = None
    price_paid: Money | None = None


class ItemOut(BaseModel):
    id: int
    collection_id: int
    card_id: str
    quantity: int
    condition: str
    finish: str
    language: str
    notes: str
    acquired_at: date | None
    price_paid: Decimal | None
    created_at: datetime
    updated_at: datetime
    card: CardOut


class ItemPageOut(BaseModel):
    items: list[ItemOut]
    next_cursor: str | None = Field(None, description="Pass as ?cursor= for the next page; null on the last page.")
    total: int | None = Field(None, description="Matching items (only with with_total=true).")


class BulkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["move", "set_condition", "delete"]
    item_ids: list[DbId] = Field(min_length=1, max_length=5000)
    target_collection_id: DbId | None = Field(None, description="For move: the caller's collection to move into.")
    condition: Condition | None = Field(None, description="For set_condition.")


class BulkOut(BaseModel):
    action: str
    affected: int


class ImportOut(BaseModel):
    rows: int
    added: int
    copies: int
    errors: list[str]
    error_count: int


class ShareOut(BaseModel):
    token: str = Field(description="Shown once; the link is /shared/{token}. Creating a new one revokes the old.")
    url: str
    api_url: str


class SmartFolderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    collection_id: DbId | None = Field(None, description="Restrict to one collection; null = all of the user's.")
    filter: ItemFilter = Field(default_factory=ItemFilter)


class SmartFolderPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=200)
    collection_id: DbId | None = None
    filter: ItemFilter | None = None


class SmartFolderOut(BaseModel):
    id: int
    name: str
    collection_id: int | None
    filter: ItemFilter
    created_at: datetime


def item_out(it: CollectionItem) -> ItemOut:
    return ItemOut(id=it.id, collection_id=it.collection_id, card_id=it.card_id, quantity=it.quantity,
                   condition=it.condition, finish=it.finish, language=it.language, notes=it.notes,
                   acquired_at=it.acquired_at, price_paid=it.price_paid, created_at=it.created_at,
                   updated_at=it.updated_at, card=card_out(it.card))


def collection_out(session: Session, col: Collection) -> CollectionOut:
    stacks, cards = session.execute(select(func.count(CollectionItem.id), func.coalesce(func.sum(CollectionItem.quantity), 0))
                                    .where(CollectionItem.collection_id == col.id)).one()
    return CollectionOut(id=col.id, name=col.name, description=col.description, shared=col.share_token_hash is not None,
                         created_at=col.created_at, stacks=stacks, cards=int(cards))


async def item_filter(
    q: str | None = Query(None, max_length=200, description="Words matched as prefixes against card name and artist."),
    set: str | None = Query(None, max_length=64, description="Set id, e.g. sv1."),
    rarity: str | None = Query(None, max_length=64),
    type: str | None = Query(None, max_length=32, description="Energy type, e.g. Fire."),
    supertype: str | None = Query(None, max_length=32),
    condition: Condition | None = Query(None),
    finish: str | None = Query(None, max_length=32),
    language: str | None = Query(None, max_length=8),
) -> ItemFilter:
    # async: pure computation, so FastAPI runs it inline instead of hopping to the thread pool.
    return ItemFilter(q=q, set=set, rarity=rarity, type=type, supertype=supertype, condition=condition, finish=finish,
                      language=language)


class PageParams(BaseModel):
    sort: SortKey = "added"
    order: Literal["asc", "desc"] = "asc"
    cursor: str | None = None
    limit: int = 50
    with_total: bool = False


async def page_params(
    sort: SortKey = Query("added", description="added (default), name, set, rarity, quantity, condition, updated, acquired, price_paid"),
    order: Literal["asc", "desc"] = Query("asc"),
    cursor: str | None = Query(None, max_length=1000, description="next_cursor of the previous page"),
    limit: int = Query(50, ge=1, le=500),
    with_total: bool = Query(False, description="Also count all matching items (slower on big collections)."),
) -> PageParams:
    return PageParams(sort=sort, order=order, cursor=cursor, limit=limit, with_total=with_total)


def _page(session, scope, flt: ItemFilter, p: PageParams) -> ItemPageOut:
    page = items_page(session, scope, flt, sort=p.sort, order=p.order, cursor=p.cursor, limit=p.limit,
                      with_total=p.with_total)
    return ItemPageOut(items=[item_out(i) for i in page.items], next_cursor=page.next_cursor, total=page.total)


# --- collections -----------------------------------------------------------------------------------------


@router.get("/collections", response_model=list[CollectionOut], summary="The caller's collections")
def list_collections(principal: Reader, session: DB):
    cols = session.scalars(select(Collection).where(Collection.user_id == principal.user_id).order_by(Collection.id))
    return [collection_out(session, c) for c in cols]


@router.post("/collections", response_model=CollectionOut, status_code=201, summary="Create a collection")
def create_collection(body: CollectionIn, principal: Writer, session: DB):
    if session.scalar(select(Collection.id).where(Collection.user_id == principal.user_id, Collection.name == body.name)):
        raise HTTPException(409, f"you already have a collection named {body.name!r}")
    col = Collection(user_id=principal.user_id, name=body.name, description=body.description)
    session.add(col)
    session.flush()
    return collection_out(session, col)


@router.get("/collections/{collection_id}", response_model=CollectionOut, summary="One collection")
def get_collection(collection_id: DbIdPath, principal: Reader, session: DB):
    return collection_out(session, owned_collection(session, principal, collection_id))


@router.patch("/collections/{collection_id}", response_model=CollectionOut, summary="Rename / describe a collection")
def patch_collection(collection_id: DbIdPath, body: CollectionPatch, principal: Writer, session: DB):
    col = owned_collection(session, principal, collection_id)
    if body.name is not None and body.name != col.name:
        if session.scalar(select(Collection.id).where(Collection.user_id == principal.user_id, Collection.name == body.name)):
            raise HTTPException(409, f"you already have a collection named {body.name!r}")
        col.name = body.name
    if body.description is not None:
        col.description = body.description
    session.flush()
    return collection_out(session, col)


@router.delete("/collections/{collection_id}", status_code=204, summary="Delete a collection and its items")
def delete_collection(collection_id: DbIdPath, principal: Writer, session: DB):
    col = owned_collection(session, principal, collection_id)
    session.execute(delete(CollectionItem).where(CollectionItem.collection_id == col.id))
    session.delete(col)
    return Response(status_code=204)


# --- items -----------------------------------------------------------------------------------------------


@router.get("/collections/{collection_id}/items", response_model=ItemPageOut,
            summary="Items: filter, full-text search, sort, keyset pagination")
def list_items(collection_id: DbIdPath, principal: Reader, session: DB, flt: ItemFilter = Depends(item_filter),
               p: PageParams = Depends(page_params)):
    owned_collection(session, principal, collection_id)
    return _page(session, collection_id, flt, p)


@router.post("/collections/{collection_id}/items", response_model=ItemOut, status_code=201,
             summary="Add copies (merged into the matching stack)")
def add_item(collection_id: DbIdPath, body: ItemIn, principal: Writer, session: DB):
    owned_collection(session, principal, collection_id)
    if session.get(Card, body.card_id) is None:
        raise HTTPException(422, f"unknown card {body.card_id!r}")
    item_id = add_to_stack(session, collection_id, body.card_id, body.quantity, condition=body.condition.value,
                           finish=body.finish, language=body.language, notes=body.notes or None,
                           acquired_at=body.acquired_at, price_paid=body.price_paid)
    session.expire_all()
    return item_out(session.get(CollectionItem, item_id))


def _owned_item(session: Session, principal: Principal, collection_id: DbIdPath, item_id: DbIdPath) -> CollectionItem:
    owned_collection(session, principal, collection_id)
    it = session.get(CollectionItem, item_id)
    if it is None or it.collection_id != collection_id:
        raise HTTPException(404, f"item {item_id} not found")
    return it


@router.get("/collections/{collection_id}/items/{item_id}", response_model=ItemOut, summary="One item")
def get_item(collection_id: DbIdPath, item_id: DbIdPath, principal: Reader, session: DB):
    return item_out(_owned_item(session, principal, collection_id, item_id))


def restack(session: Session, it: CollectionItem, *, collection_id: int | None = None, condition: str | None = None,
            finish: str | None = None, language: str | None = None) -> CollectionItem:
    """Change a stack's key; if another stack already has the new key, merge into it (quantities add)."""
    key = dict(collection_id=collection_id or it.collection_id, condition=condition or it.condition,
               finish=finish or it.finish, language=language or it.language)
    if all(getattr(it, k) == v for k, v in key.items()):
        return it
    other = session.scalar(select(CollectionItem).where(
        CollectionItem.card_id == it.card_id, CollectionItem.id != it.id,
        *[getattr(CollectionItem, k) == v for k, v in key.items()]))
    if other is None:
        for k, v in key.items():
            setattr(it, k, v)
        session.flush()
        return it
    other.quantity += it.quantity
    other.notes = other.notes or it.notes
    other.acquired_at = other.acquired_at or it.acquired_at
    other.price_paid = other.price_paid if other.price_paid is not None else it.price_paid
    session.delete(it)
    session.flush()
    return other


@router.patch("/collections/{collection_id}/items/{item_id}", response_model=ItemOut,
              summary="Edit an item (a new condition/finish/language that matches another stack merges into it)")
def patch_item(collection_id: DbIdPath, item_id: DbIdPath, body: ItemPatch, principal: Writer, session: DB):
    it = _owned_item(session, principal, collection_id, item_id)
    fields = body.model_fields_set
    if "quantity" in fields and body.quantity is not None:
        it.quantity = body.quantity
    if "notes" in fields and body.notes is not None:
        it.notes = body.notes
    if "acquired_at" in fields:
        it.acquired_at = body.acquired_at
    if "price_paid" in fields:
        it.price_paid = body.price_paid
    it = restack(session, it, condition=body.condition.value if body.condition else None, finish=body.finish,
                 language=body.language)
    session.flush()
    session.refresh(it)
    return item_out(it)


@router.delete("/collections/{collection_id}/items/{item_id}", status_code=204, summary="Remove a stack")
def delete_item(collection_id: DbIdPath, item_id: DbIdPath, principal: Writer, session: DB):
    session.delete(_owned_item(session, principal, collection_id, item_id))
    return Response(status_code=204)


@router.post("/collections/{collection_id}/items/bulk", response_model=BulkOut,
             summary="Move, set condition or delete many items in one transaction (all or nothing)")
def bulk_items(collection_id: DbIdPath, body: BulkIn, principal: Writer, session: DB):
    owned_collection(session, principal, collection_id)
    ids = sorted(set(body.item_ids))
    items = list(session.scalars(select(CollectionItem).where(CollectionItem.id.in_(ids),
                                                              CollectionItem.collection_id == collection_id)))
    if len(items) != len(ids):
        missing = sorted(set(ids) - {i.id for i in items})[:20]
        raise HTTPException(404, f"items not in this collection: {missing}")
    if body.action == "delete":
        session.execute(delete(CollectionItem).where(CollectionItem.id.in_(ids)))
    elif body.action == "set_condition":
        if body.condition is None:
            raise HTTPException(422, "set_condition needs condition")
        for it in items:
            if it in session:
                restack(session, it, condition=body.condition.value)
    else:
        if body.target_collection_id is None:
            raise HTTPException(422, "move needs target_collection_id")
        target = owned_collection(session, principal, body.target_collection_id)
        for it in items:
            if it in session:
                restack(session, it, collection_id=target.id)
    session.flush()
    return BulkOut(action=body.action, affected=len(items))


@router.get("/collections/{collection_id}/analytics", summary="Counts, set completion % and value by set")
def collection_analytics(collection_id: DbIdPath, principal: Reader, session: DB) -> dict:
    owned_collection(session, principal, collection_id)
    return analytics(session, collection_id)


# --- import / export -------------------------------------------------------------------------------------


@router.get("/collections/{collection_id}/export", summary="CSV export (generic, tcgplayer, moxfield/deckbox)",
            response_class=Response, responses={200: {"content": {"text/csv": {}}}})
def export_collection(collection_id: DbIdPath, principal: Reader, session: DB,
                      format: Literal["generic", "tcgplayer", "moxfield", "deckbox"] = Query("generic")):
    col = owned_collection(session, principal, collection_id)
    body = export_csv(session, col.id, format)
    safe = "".join(ch if ch.isalnum() else "_" for ch in col.name)[:50] or "collection"
    return Response(body, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{safe}-{format}.csv"'})


@router.post("/collections/{collection_id}/import", response_model=ImportOut,
             summary="CSV import in any export layout; quantities add to existing stacks")
async def import_collection(collection_id: DbIdPath, request: Request, principal: Writer,
                            file: UploadFile = File(..., description="CSV file"),
                            format: Literal["generic", "tcgplayer", "moxfield", "deckbox"] = Query("generic")):
    limit = request.app.state.settings.security.max_upload_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"file larger than {limit} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise HTTPException(422, "CSV must be UTF-8") from None
    with request.app.state.db.session() as session:
        owned_collection(session, principal, collection_id)
        report = import_csv(session, collection_id, text, format)
    return report.as_dict()


# --- sharing ---------------------------------------------------------------------------------------------


def share_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@router.post("/collections/{collection_id}/share", response_model=ShareOut, status_code=201,
             summary="Create a read-only share link (replaces and revokes any earlier link)")
def share_collection(collection_id: DbIdPath, principal: Writer, session: DB):
    col = owned_collection(session, principal, collection_id)
    token = secrets.token_urlsafe(24)
    col.share_token_hash = share_hash(token)
    return ShareOut(token=token, url=f"/shared/{token}", api_url=f"/api/v1/shared/{token}/items")


@router.delete("/collections/{collection_id}/share", status_code=204, summary="Revoke the share link")
def unshare_collection(collection_id: DbIdPath, principal: Writer, session: DB):
    owned_collection(session, principal, collection_id).share_token_hash = None
    return Response(status_code=204)


def shared_collection(session: Session, token: str) -> Collection:
    if not (8 <= len(token) <= 100):
        raise HTTPException(404, "unknown or revoked share link")
    col = session.scalar(select(Collection).where(Collection.share_token_hash == share_hash(token)))
    if col is None:
        raise HTTPException(404, "unknown or revoked share link")
    return col


class SharedOut(BaseModel):
    name: str
    description: str
    stacks: int
    cards: int


@router.get("/shared/{token}", response_model=SharedOut, tags=["sharing"], summary="A shared collection (no login)")
def get_shared(token: str, session: DB):
    col = shared_collection(session, token)
    out = collection_out(session, col)
    return SharedOut(name=out.name, description=out.description, stacks=out.stacks, cards=out.cards)


@router.get("/shared/{token}/items", response_model=ItemPageOut, tags=["sharing"],
            summary="Items of a shared collection (read-only, no login)")
def shared_items(token: str, session: DB, flt: ItemFilter = Depends(item_filter), p: PageParams = Depends(page_params)):
    col = shared_collection(session, token)
    out = _page(session, col.id, flt, p)
    for it in out.items:  # purchase details are the owner's business
        it.price_paid = None
        it.notes = ""
    return out


# --- smart folders ---------------------------------------------------------------------------------------


def _owned_folder(session: Session, principal: Principal, folder_id: DbIdPath) -> SmartFolder:
    f = session.get(SmartFolder, folder_id)
    if f is None or f.user_id != principal.user_id:
        raise HTTPException(404, f"smart folder {folder_id} not found")
    return f


def folder_out(f: SmartFolder) -> SmartFolderOut:
    return SmartFolderOut(id=f.id, name=f.name, collection_id=f.collection_id,
                          filter=ItemFilter.model_validate(f.filter or {}), created_at=f.created_at)


@router.get("/smart-folders", response_model=list[SmartFolderOut], tags=["smart folders"], summary="The caller's smart folders")
def list_folders(principal: Reader, session: DB):
    return [folder_out(f) for f in session.scalars(select(SmartFolder).where(SmartFolder.user_id == principal.user_id)
                                                   .order_by(SmartFolder.name, SmartFolder.id))]


@router.post("/smart-folders", response_model=SmartFolderOut, status_code=201, tags=["smart folders"],
             summary="Save a filter as a smart folder")
def create_folder(body: SmartFolderIn, principal: Writer, session: DB):
    if body.collection_id is not None:
        owned_collection(session, principal, body.collection_id)
    f = SmartFolder(user_id=principal.user_id, collection_id=body.collection_id, name=body.name,
                    filter=body.filter.model_dump(mode="json", exclude_none=True))
    session.add(f)
    session.flush()
    return folder_out(f)


@router.get("/smart-folders/{folder_id}", response_model=SmartFolderOut, tags=["smart folders"], summary="One smart folder")
def get_folder(folder_id: DbIdPath, principal: Reader, session: DB):
    return folder_out(_owned_folder(session, principal, folder_id))


@router.patch("/smart-folders/{folder_id}", response_model=SmartFolderOut, tags=["smart folders"], summary="Edit a smart folder")
def patch_folder(folder_id: DbIdPath, body: SmartFolderPatch, principal: Writer, session: DB):
    f = _owned_folder(session, principal, folder_id)
    if body.name is not None:
        f.name = body.name
    if "collection_id" in body.model_fields_set:
        if body.collection_id is not None:
            owned_collection(session, principal, body.collection_id)
        f.collection_id = body.collection_id
    if body.filter is not None:
        f.filter = body.filter.model_dump(mode="json", exclude_none=True)
    session.flush()
    return folder_out(f)


@router.delete("/smart-folders/{folder_id}", status_code=204, tags=["smart folders"], summary="Delete a smart folder")
def delete_folder(folder_id: DbIdPath, principal: Writer, session: DB):
    session.delete(_owned_folder(session, principal, folder_id))
    return Response(status_code=204)


def folder_scope(principal: Principal, f: SmartFolder):
    if f.collection_id is not None:
        return f.collection_id
    return select(Collection.id).where(Collection.user_id == principal.user_id)


@router.get("/smart-folders/{folder_id}/items", response_model=ItemPageOut, tags=["smart folders"],
            summary="Evaluate a smart folder now")
def folder_items(folder_id: DbIdPath, principal: Reader, session: DB, p: PageParams = Depends(page_params)):
    f = _owned_folder(session, principal, folder_id)
    return _page(session, folder_scope(principal, f), ItemFilter.model_validate(f.filter or {}), p)
