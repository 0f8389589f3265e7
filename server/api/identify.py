"""``POST /api/v1/identify``: a photo (whole scene or one card crop) -> the cards in it, resolved."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Depends, File, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from server.auth import Principal, require

router = APIRouter(prefix="/api/v1", tags=["identify"])
log = logging.getLogger(__name__)


class CandidateOut(BaseModel):
    card_id: str = Field(description="Card (printing) id.")
    score: float = Field(description="Calibrated probability within the shortlist.")


class CardOut(BaseModel):
    card_id: str | None = Field(description="Best card, or null when nothing matched.")
    confidence: float = Field(description="Calibrated confidence of card_id in [0, 1].")
    status: str = Field(description="resolved (confidence >= threshold) | needs_review.")
    candidates: list[CandidateOut] = Field(description="Shortlist, best first.")
    quad: list[list[float]] | None = Field(description="Card corners TL, TR, BR, BL in image pixels.")


class IdentifyOut(BaseModel):
    cards: list[CardOut]
    ms: float = Field(description="Server time for this request, milliseconds.")


def get_resolver(request: Request):
    """The app's resolver (built on first use: loading the persisted index, or building it once)."""
    r = getattr(request.app.state, "resolver", None)
    if r is None:
        from server.resolver.service import resolver_from_settings

        settings = request.app.state.settings
        if not settings.resolver.enabled:
            raise HTTPException(503, "resolver disabled (resolver.enabled = false)")
        try:
            r = resolver_from_settings(settings)
        except FileNotFoundError as exc:
            raise HTTPException(503, f"resolver unavailable: {exc}") from exc
        request.app.state.resolver = r
    return r


@router.post("/identify", response_model=IdentifyOut)
async def identify(request: Request, image: UploadFile = File(description="JPEG/PNG/WebP: a photo or a card crop"),
                   _principal: Principal = Depends(require("read"))):
    t0 = time.perf_counter()
    data = await image.read()
    try:
        from server.security import validate_image_upload_for

        img = validate_image_upload_for(request.app.state.settings, data)
    except ImportError:  # pragma: no cover - security module always ships with the server
        raise HTTPException(500, "image validation unavailable")
    resolver = await run_in_threadpool(get_resolver, request)
    results = await run_in_threadpool(resolver.identify_image, img)
    return {"cards": [{"card_id": r.card_id, "confidence": r.confidence, "status": r.status,
                       "candidates": r.candidates, "quad": r.quad} for r in results],
            "ms": round((time.perf_counter() - t0) * 1000, 1)}
