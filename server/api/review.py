"""The review queue: scans the resolver could not decide, confirmed or corrected by a person.

A correction is kept as a labelled hard example (crop + right card) for training and resolver evaluation;
both decisions go through ``collections_service.apply_scan``, the same function the resolver uses.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from server.api.cards import CardOut, card_out
from server.api.collections import FinishStr, LangStr
from server.api.deps import get_session
from server.auth import Principal, require
from server.collections_service import apply_scan, record_hard_example, suggested_card
from server.db.models import Card, Collection, Condition, Device, Scan, ScanStatus
from server.metrics import REVIEW_DECISIONS

router = APIRouter(prefix="/api/v1/review", tags=["review"])

Reviewer = Annotated[Principal, Depends(require("review"))]
DB = Annotated[Session, Depends(get_session)]
ScanId = Annotated[str, Path(min_length=1, max_length=64, description="The scan's scan_id (UUIDv7).")]

REVIEWABLE = (ScanStatus.needs_review.value, ScanStatus.pending.value)


class Candidate(BaseModel):
    card_id: str
    score: float | None = None
    card: CardOut | None = None


class ReviewItem(BaseModel):
    scan_id: str
    device_id: str
    seq: int
    captured_at: datetime
    status: str
    decision: str
    collection_id: int | None
    suggested_card_id: str | None
    suggested_card: CardOut | None
    confidence: float | None
    candidates: list[Candidate]
    has_crop: bool
    crop_url: str | None
    quality_flag: str | None = Field(None, description="Why the device did not trust the card: a soft quality-gate "
                                     "failure (glare, too_blurry, partially_out_of_view: the crop may be poor) or "
                                     "low_score (nothing in the catalog matched on the device: maybe not a catalog "
                                     "card at all) or pieces (read from the outline of pieces the device's detector "
                                     "cut the card into, or from part of one outline around several cards: its ends, "
                                     "its equal parts, or inside it, or carried on past a piece of the card: its "
                                     "corners may be off) or touching (a reprint verdict read off a card lying "
                                     "against another: the neighbour's edge may have "
                                     "pulled its corners) or disputed (the device accepted different printings in the "
                                     "frames the card lay still on a stack).")
    device_confidence: float | None = Field(None, description="The device's calibrated confidence in its top "
                                            "candidate (None: an older device or bundle).")


class ReviewPage(BaseModel):
    items: list[ReviewItem]
    next_cursor: int | None


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    condition: Condition = Condition.NM
    finish: FinishStr = "normal"
    language: LangStr = "en"


class Correction(Decision):
    card_id: str = Field(min_length=1, max_length=64, description="The right card.")


class DecisionOut(BaseModel):
    scan_id: str
    status: str
    card_id: str
    collection_id: int | None
    item_id: int | None = Field(description="The collection item the copy went to (null: no target collection).")
    hard_example_id: int | None = None


def _mine(principal: Principal):
    """Scans that belong to the caller: in one of their collections, or from one of their devices."""
    return or_(Scan.collection_id.in_(select(Collection.id).where(Collection.user_id == principal.user_id)),
               Scan.device_id.in_(select(Device.id).where(Device.user_id == principal.user_id)))


def owned_scan(session: Session, principal: Principal, scan_id: str) -> Scan:
    scan = session.scalar(select(Scan).where(Scan.scan_id == scan_id, _mine(principal)).order_by(Scan.id).limit(1))
    if scan is None:
        raise HTTPException(404, f"scan {scan_id!r} not found")
    return scan


def _candidate_ids(scan: Scan) -> list[tuple[str, float | None]]:
    out = []
    for c in scan.candidates or []:
        if isinstance(c, dict) and c.get("card_id"):
            out.append((str(c["card_id"]), c.get("score")))
        elif isinstance(c, (list, tuple)) and c:
            out.append((str(c[0]), c[1] if len(c) > 1 else None))
    return out


def review_item(session: Session, scan: Scan) -> ReviewItem:
    cands = _candidate_ids(scan)
    sug = suggested_card(scan)
    cards = {c.id: c for c in session.scalars(select(Card).where(Card.id.in_([cid for cid, _ in cands] + [sug or ""])))}
    return ReviewItem(
        scan_id=scan.scan_id, device_id=scan.device_id, seq=scan.seq, captured_at=scan.captured_at, status=scan.status,
        decision=scan.decision, collection_id=scan.collection_id, suggested_card_id=sug,
        suggested_card=card_out(cards[sug]) if sug in cards else None, confidence=scan.confidence,
        candidates=[Candidate(card_id=cid, score=float(s) if isinstance(s, (int, float)) else None,
                              card=card_out(cards[cid]) if cid in cards else None) for cid, s in cands],
        has_crop=bool(scan.crop), crop_url=f"/api/v1/review/{scan.scan_id}/crop" if scan.crop else None,
        quality_flag=scan.quality_flag, device_confidence=scan.device_confidence)


def review_queue(session: Session, principal: Principal, *, status: str = "needs_review", after: int | None = None,
                 limit: int = 50) -> tuple[list[Scan], int | None]:
    stmt = select(Scan).where(Scan.status == status, _mine(principal))
    if after:
        stmt = stmt.where(Scan.id > after)
    rows = list(session.scalars(stmt.order_by(Scan.id).limit(limit + 1)))
    nxt = rows[limit - 1].id if len(rows) > limit else None
    return rows[:limit], nxt


@router.get("", response_model=ReviewPage, summary="Scans waiting for a person (oldest first)")
def list_review(principal: Reviewer, session: DB,
                status: Literal["needs_review", "pending"] = Query("needs_review"),
                cursor: int | None = Query(None, ge=0, le=2**62, description="next_cursor of the previous page"),
                limit: int = Query(50, ge=1, le=200)):
    rows, nxt = review_queue(session, principal, status=status, after=cursor, limit=limit)
    return ReviewPage(items=[review_item(session, s) for s in rows], next_cursor=nxt)


@router.get("/{scan_id}", response_model=ReviewItem, summary="One scan of the queue")
def get_review(scan_id: ScanId, principal: Reviewer, session: DB):
    return review_item(session, owned_scan(session, principal, scan_id))


@router.get("/{scan_id}/crop", summary="The scan's crop (JPEG)", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}})
def get_crop(scan_id: ScanId, principal: Reviewer, session: DB):
    scan = owned_scan(session, principal, scan_id)
    if not scan.crop:
        raise HTTPException(404, "this scan has no crop")
    return Response(scan.crop, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


def _decidable(scan: Scan) -> None:
    if scan.status not in REVIEWABLE:
        raise HTTPException(409, f"scan {scan.scan_id} is already {scan.status}")


@router.post("/{scan_id}/confirm", response_model=DecisionOut, summary="Accept the suggested card")
def confirm(scan_id: ScanId, principal: Reviewer, session: DB, body: Decision | None = Body(None)):
    body = body or Decision()
    scan = owned_scan(session, principal, scan_id)
    _decidable(scan)
    card_id = suggested_card(scan)
    if not card_id or session.get(Card, card_id) is None:
        raise HTTPException(409, "this scan has no suggestion to confirm; correct it instead")
    item_id = apply_scan(session, scan, card_id, status=ScanStatus.confirmed.value, user_id=principal.user_id,
                         condition=body.condition.value, finish=body.finish, language=body.language)
    REVIEW_DECISIONS.labels(action="confirm").inc()
    return DecisionOut(scan_id=scan.scan_id, status=scan.status, card_id=card_id, collection_id=scan.collection_id,
                       item_id=item_id)


@router.post("/{scan_id}/correct", response_model=DecisionOut,
             summary="Choose the right card (kept as a labelled hard example)")
def correct(scan_id: ScanId, body: Correction, request: Request, principal: Reviewer, session: DB):
    scan = owned_scan(session, principal, scan_id)
    _decidable(scan)
    if session.get(Card, body.card_id) is None:
        raise HTTPException(422, f"unknown card {body.card_id!r}")
    ex = record_hard_example(session, scan, body.card_id, user_id=principal.user_id,
                             data_dir=request.app.state.settings.data_dir)
    item_id = apply_scan(session, scan, body.card_id, status=ScanStatus.corrected.value, user_id=principal.user_id,
                         condition=body.condition.value, finish=body.finish, language=body.language)
    REVIEW_DECISIONS.labels(action="correct").inc()
    return DecisionOut(scan_id=scan.scan_id, status=scan.status, card_id=body.card_id, collection_id=scan.collection_id,
                       item_id=item_id, hard_example_id=ex.id)


@router.post("/{scan_id}/reject", response_model=dict[str, Any], summary="Not a card / discard the scan")
def reject(scan_id: ScanId, principal: Reviewer, session: DB):
    scan = owned_scan(session, principal, scan_id)
    _decidable(scan)
    scan.status = ScanStatus.rejected.value
    scan.reviewed_by = principal.user_id
    REVIEW_DECISIONS.labels(action="reject").inc()
    return {"scan_id": scan.scan_id, "status": scan.status}
