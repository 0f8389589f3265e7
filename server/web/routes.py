"""Web page routes (HTML). Login by form → session cookie (signed, httponly, samesite=lax).

Every form carries the session's CSRF token in a hidden ``csrf_token`` field, checked here; the API
checks the ``X-CSRF-Token`` header instead (server/security.py). The pages call the same service
functions as the JSON API, so behaviour cannot drift between them.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, select

from server.api.deps import DbIdPath
from server import accounts
from server.api.collections import (PageParams, folder_scope, restack, share_hash, shared_collection,
                                    _owned_folder)
from server.api.review import owned_scan, review_item, review_queue
from server.collections_service import (ItemFilter, analytics, apply_scan, items_page, owned_collection,
                                        record_hard_example, suggested_card)
from server.db.models import (Card, CardSet, Collection, CollectionItem, Condition, Device, Price, ScanStatus,
                              SmartFolder)

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
PUBLIC_PAGES = ("/login", "/shared/", "/images/")


class LoginRequired(Exception):
    pass


def _login_first(request: Request) -> None:
    # A router-wide dependency runs before form/path validation: anonymous callers get the login page,
    # never a validation error that hints at what a form expects.
    if not request.url.path.startswith(PUBLIC_PAGES) and getattr(request.state, "web_login", None) is None:
        raise LoginRequired()


router = APIRouter(include_in_schema=False, dependencies=[Depends(_login_first)])

LOGIN_CSRF_COOKIE = "scanemon_login_csrf"
IMAGE_SUFFIXES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.exception_handler(LoginRequired)
    async def _to_login(request: Request, exc: LoginRequired):
        nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(nxt)}", status_code=303)


def _principal(request: Request):
    login = getattr(request.state, "web_login", None)
    if login is None:
        raise LoginRequired()
    return login.principal


def _check_csrf(request: Request, token: str) -> None:
    login = getattr(request.state, "web_login", None)
    if login is None:
        raise LoginRequired()
    if not hmac.compare_digest(token or "", login.csrf_token):
        raise HTTPException(403, "CSRF token missing or wrong; reload the page")


def _render(request: Request, name: str, status_code: int = 200, **ctx) -> HTMLResponse:
    login = getattr(request.state, "web_login", None)
    ctx.setdefault("user", login.principal if login else None)
    ctx.setdefault("csrf_token", login.csrf_token if login else "")
    return templates.TemplateResponse(request, name, ctx, status_code=status_code)


def _safe_next(nxt: str | None) -> str:
    # Only same-site paths: "//evil.example" or "https://…" would turn login into an open redirect.
    if not nxt or not nxt.startswith("/") or nxt.startswith("//") or "\\" in nxt:
        return "/collections"
    return nxt


# --- login -----------------------------------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request, next: str | None = None, error: str | None = None):
    token = secrets.token_urlsafe(24)
    resp = _render(request, "login.html", login_csrf=token, next=_safe_next(next), error=error, user=None)
    resp.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, httponly=True, samesite="strict",
                    secure=request.app.state.settings.security.cookie_secure)
    return resp


@router.post("/login")
def login(request: Request, username: str = Form(..., max_length=64), password: str = Form(..., max_length=256),
          csrf_token: str = Form("", max_length=100), next: str = Form("/collections", max_length=500)):
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not hmac.compare_digest(cookie, csrf_token):
        raise HTTPException(403, "login form expired; reload the page")
    settings = request.app.state.settings
    with request.app.state.db.session() as s:
        user = accounts.authenticate(s, username, password)
        if user is None:
            request.state.audit_detail = {"login": "failed", "username": username[:64]}
            return RedirectResponse(f"/login?error=1&next={quote(_safe_next(next))}", status_code=303)
        token, _ = accounts.create_session(s, user, settings.security.session_max_age_s)
        request.state.audit_detail = {"login": "ok", "user_id": user.id}
    secret = accounts.session_secret(settings)
    resp = RedirectResponse(_safe_next(next), status_code=303)
    resp.set_cookie(accounts.COOKIE_NAME, accounts.cookie_value(secret, token), max_age=settings.security.session_max_age_s,
                    httponly=True, samesite="lax", secure=settings.security.cookie_secure, path="/")
    resp.delete_cookie(LOGIN_CSRF_COOKIE)
    return resp


@router.post("/logout")
def logout(request: Request, csrf_token: str = Form("", max_length=100)):
    _check_csrf(request, csrf_token)
    with request.app.state.db.session() as s:
        accounts.end_session(s, request.state.session_token)
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(accounts.COOKIE_NAME, path="/")
    return resp


# --- collections -----------------------------------------------------------------------------------------


@router.get("/")
def home(request: Request):
    _principal(request)
    return RedirectResponse("/collections", status_code=303)


@router.get("/collections")
def collections_page(request: Request):
    p = _principal(request)
    with request.app.state.db.session() as s:
        rows = s.execute(select(Collection, func.count(CollectionItem.id), func.coalesce(func.sum(CollectionItem.quantity), 0))
                         .outerjoin(CollectionItem, CollectionItem.collection_id == Collection.id)
                         .where(Collection.user_id == p.user_id).group_by(Collection.id).order_by(Collection.id)).all()
    return _render(request, "collections.html", collections=[(c, n, int(q)) for c, n, q in rows])


@router.post("/collections")
def create_collection_form(request: Request, name: str = Form(..., min_length=1, max_length=200),
                           csrf_token: str = Form("", max_length=100)):
    p = _principal(request)
    _check_csrf(request, csrf_token)
    with request.app.state.db.session() as s:
        if s.scalar(select(Collection.id).where(Collection.user_id == p.user_id, Collection.name == name)) is None:
            s.add(Collection(user_id=p.user_id, name=name))
    return RedirectResponse("/collections", status_code=303)


def _filter_options(s, scope_ids) -> dict:
    sets = s.execute(select(CardSet.id, CardSet.name).where(CardSet.id.in_(
        select(Card.set_id).join(CollectionItem, CollectionItem.card_id == Card.id)
        .where(CollectionItem.collection_id.in_(scope_ids)).distinct())).order_by(CardSet.release_date)).all()
    rarities = [r for (r,) in s.execute(select(Card.rarity).join(CollectionItem, CollectionItem.card_id == Card.id)
                                        .where(CollectionItem.collection_id.in_(scope_ids), Card.rarity.is_not(None))
                                        .distinct().order_by(Card.rarity))]
    return {"sets": sets, "rarities": rarities, "conditions": [c.value for c in Condition],
            "finishes": ["normal", "holo", "reverse_holo", "first_edition", "unlimited", "foil"],
            "types": ["Grass", "Fire", "Water", "Lightning", "Psychic", "Fighting", "Darkness", "Metal", "Fairy",
                      "Dragon", "Colorless"]}


def _grid_args(request: Request):
    qp = request.query_params
    try:
        flt = ItemFilter(q=qp.get("q") or None, set=qp.get("set") or None, rarity=qp.get("rarity") or None,
                          type=qp.get("type") or None, supertype=qp.get("supertype") or None,
                          condition=Condition(qp["condition"]) if qp.get("condition") else None,
                          finish=qp.get("finish") or None, language=qp.get("language") or None)
        sort = qp.get("sort") or "added"
        order = qp.get("order") if qp.get("order") in ("asc", "desc") else "asc"
        page = PageParams(sort=sort, order=order, cursor=qp.get("cursor") or None, limit=60, with_total=True)
    except (ValueError, TypeError) as exc:
        raise HTTPException(422, f"bad filter: {exc}") from None
    return flt, page


def _next_url(request: Request, cursor: str | None) -> str | None:
    if not cursor:
        return None
    params = {k: v for k, v in request.query_params.items() if k != "cursor" and v}
    params["cursor"] = cursor
    return f"{request.url.path}?{urlencode(params)}"


@router.get("/collections/{collection_id}")
def collection_page(request: Request, collection_id: DbIdPath):
    p = _principal(request)
    flt, page = _grid_args(request)
    with request.app.state.db.session() as s:
        col = owned_collection(s, p, collection_id)
        res = items_page(s, collection_id, flt, sort=page.sort, order=page.order, cursor=page.cursor, limit=page.limit,
                         with_total=True)
        stats = analytics(s, collection_id)
        opts = _filter_options(s, [collection_id])
    return _render(request, "collection.html", collection=col, items=res.items, total=res.total, stats=stats,
                   flt=flt, sort=page.sort, order=page.order, opts=opts, next_url=_next_url(request, res.next_cursor),
                   share_url=None)


@router.post("/collections/{collection_id}/share")
def share_form(request: Request, collection_id: DbIdPath, csrf_token: str = Form("", max_length=100),
               action: str = Form("create", max_length=10)):
    p = _principal(request)
    _check_csrf(request, csrf_token)
    with request.app.state.db.session() as s:
        col = owned_collection(s, p, collection_id)
        if action == "revoke":
            col.share_token_hash = None
            return RedirectResponse(f"/collections/{collection_id}", status_code=303)
        token = secrets.token_urlsafe(24)
        col.share_token_hash = share_hash(token)
        stats = analytics(s, collection_id)
        opts = _filter_options(s, [collection_id])
        res = items_page(s, collection_id, ItemFilter(), limit=60, with_total=True)
    return _render(request, "collection.html", collection=col, items=res.items, total=res.total, stats=stats,
                   flt=ItemFilter(), sort="added", order="asc", opts=opts,
                   next_url=_next_url(request, res.next_cursor), share_url=f"/shared/{token}")


@router.post("/collections/{collection_id}/items/{item_id}")
def edit_item_form(request: Request, collection_id: DbIdPath, item_id: DbIdPath, csrf_token: str = Form("", max_length=100),
                   quantity: int = Form(..., ge=0, le=100_000), condition: Condition = Form(...)):
    p = _principal(request)
    _check_csrf(request, csrf_token)
    with request.app.state.db.session() as s:
        owned_collection(s, p, collection_id)
        it = s.get(CollectionItem, item_id)
        if it is None or it.collection_id != collection_id:
            raise HTTPException(404, "item not found")
        card_id = it.card_id
        if quantity == 0:
            s.delete(it)
        else:
            it.quantity = quantity
            restack(s, it, condition=condition.value)
    return RedirectResponse(f"/cards/{quote(card_id)}", status_code=303)


@router.get("/cards/{card_id}")
def card_page(request: Request, card_id: str):
    p = _principal(request)
    with request.app.state.db.session() as s:
        card = s.get(Card, card_id)
        if card is None:
            raise HTTPException(404, f"unknown card {card_id!r}")
        cset = s.get(CardSet, card.set_id)
        mine = s.execute(select(CollectionItem, Collection.name).join(Collection, Collection.id == CollectionItem.collection_id)
                         .where(Collection.user_id == p.user_id, CollectionItem.card_id == card_id)
                         .order_by(CollectionItem.id)).all()
        prices = list(s.scalars(select(Price).where(Price.card_id == card_id)
                                .order_by(Price.price_date.desc(), Price.finish).limit(30)))
    return _render(request, "card.html", card=card, cset=cset, mine=mine, prices=prices,
                   conditions=[c.value for c in Condition])


# --- smart folders ---------------------------------------------------------------------------------------


@router.get("/smart-folders")
def folders_page(request: Request):
    p = _principal(request)
    with request.app.state.db.session() as s:
        folders = list(s.scalars(select(SmartFolder).where(SmartFolder.user_id == p.user_id).order_by(SmartFolder.name)))
        cols = list(s.scalars(select(Collection).where(Collection.user_id == p.user_id).order_by(Collection.id)))
        opts = _filter_options(s, [c.id for c in cols])
    return _render(request, "folders.html", folders=folders, collections=cols, opts=opts)


@router.post("/smart-folders")
def create_folder_form(request: Request, csrf_token: str = Form("", max_length=100),
                       name: str = Form(..., min_length=1, max_length=200), collection_id: str = Form("", max_length=20),
                       q: str = Form("", max_length=200), set: str = Form("", max_length=64),
                       rarity: str = Form("", max_length=64), type: str = Form("", max_length=32),
                       condition: str = Form("", max_length=8), finish: str = Form("", max_length=32)):
    p = _principal(request)
    _check_csrf(request, csrf_token)
    try:
        flt = ItemFilter(q=q or None, set=set or None, rarity=rarity or None, type=type or None,
                         condition=condition or None, finish=finish or None)
        cid = int(collection_id) if collection_id else None
    except ValueError as exc:
        raise HTTPException(422, f"bad filter: {exc}") from None
    with request.app.state.db.session() as s:
        if cid is not None:
            owned_collection(s, p, cid)
        f = SmartFolder(user_id=p.user_id, collection_id=cid, name=name, filter=flt.model_dump(mode="json", exclude_none=True))
        s.add(f)
        s.flush()
        fid = f.id
    return RedirectResponse(f"/smart-folders/{fid}", status_code=303)


@router.get("/smart-folders/{folder_id}")
def folder_page(request: Request, folder_id: DbIdPath):
    p = _principal(request)
    qp = request.query_params
    with request.app.state.db.session() as s:
        f = _owned_folder(s, p, folder_id)
        flt = ItemFilter.model_validate(f.filter or {})
        res = items_page(s, folder_scope(p, f), flt, cursor=qp.get("cursor") or None, limit=60, with_total=True)
    return _render(request, "folder.html", folder=f, flt=flt, items=res.items, total=res.total,
                   next_url=_next_url(request, res.next_cursor))


@router.post("/smart-folders/{folder_id}/delete")
def delete_folder_form(request: Request, folder_id: DbIdPath, csrf_token: str = Form("", max_length=100)):
    p = _principal(request)
    _check_csrf(request, csrf_token)
    with request.app.state.db.session() as s:
        s.delete(_owned_folder(s, p, folder_id))
    return RedirectResponse("/smart-folders", status_code=303)


# --- review queue ----------------------------------------------------------------------------------------


@router.get("/review")
def review_page(request: Request):
    p = _principal(request)
    if not p.has("review"):
        raise HTTPException(403, "you cannot review scans")
    with request.app.state.db.session() as s:
        rows, _ = review_queue(s, p, limit=50)
        items = [review_item(s, scan) for scan in rows]
        waiting = len(items)
    return _render(request, "review.html", items=items, waiting=waiting, done=request.query_params.get("done"),
                   conditions=[c.value for c in Condition])


@router.post("/review/{scan_id}")
def review_decide(request: Request, scan_id: str, csrf_token: str = Form("", max_length=100),
                  action: str = Form(..., max_length=10), card_id: str = Form("", max_length=64),
                  condition: Condition = Form(Condition.NM), finish: str = Form("normal", max_length=32,
                                                                                 pattern=r"^[a-z][a-z0-9_]{0,31}$")):
    p = _principal(request)
    _check_csrf(request, csrf_token)
    if not p.has("review"):
        raise HTTPException(403, "you cannot review scans")
    with request.app.state.db.session() as s:
        scan = owned_scan(s, p, scan_id)
        if scan.status not in (ScanStatus.needs_review.value, ScanStatus.pending.value):
            return RedirectResponse("/review?done=already", status_code=303)
        if action == "reject":
            scan.status = ScanStatus.rejected.value
            scan.reviewed_by = p.user_id
        elif action == "confirm":
            sug = suggested_card(scan)
            if not sug or s.get(Card, sug) is None:
                raise HTTPException(409, "nothing to confirm; choose a card")
            apply_scan(s, scan, sug, status=ScanStatus.confirmed.value, user_id=p.user_id, condition=condition.value,
                       finish=finish)
        elif action == "correct":
            card_id = card_id.strip()
            if s.get(Card, card_id) is None:
                raise HTTPException(422, f"unknown card {card_id!r}")
            record_hard_example(s, scan, card_id, user_id=p.user_id, data_dir=request.app.state.settings.data_dir)
            apply_scan(s, scan, card_id, status=ScanStatus.corrected.value, user_id=p.user_id,
                       condition=condition.value, finish=finish)
        else:
            raise HTTPException(422, "action must be confirm, correct or reject")
    return RedirectResponse(f"/review?done={quote(action)}", status_code=303)


# --- devices ---------------------------------------------------------------------------------------------


@router.get("/devices")
def devices_page(request: Request):
    p = _principal(request)
    with request.app.state.db.session() as s:
        devices = list(s.scalars(select(Device).where(Device.user_id == p.user_id).order_by(Device.name)))
        cols = list(s.scalars(select(Collection).where(Collection.user_id == p.user_id).order_by(Collection.id)))
    return _render(request, "devices.html", devices=devices, collections=cols)


@router.post("/devices/{device_id}")
def device_form(request: Request, device_id: str, csrf_token: str = Form("", max_length=100),
                collection_id: str = Form("", max_length=20)):
    p = _principal(request)
    _check_csrf(request, csrf_token)
    with request.app.state.db.session() as s:
        d = s.get(Device, device_id)
        if d is None or d.user_id != p.user_id:
            raise HTTPException(404, "device not found")
        if collection_id:
            try:
                cid = int(collection_id)
            except ValueError:
                raise HTTPException(422, "bad collection id") from None
            owned_collection(s, p, cid)
            d.collection_id = cid
        else:
            d.collection_id = None
    return RedirectResponse("/devices", status_code=303)


# --- public: shared collections and catalog images --------------------------------------------------------


@router.get("/shared/{token}")
def shared_page(request: Request, token: str):
    flt, page = _grid_args(request)
    with request.app.state.db.session() as s:
        col = shared_collection(s, token)
        res = items_page(s, col.id, flt, sort=page.sort, order=page.order, cursor=page.cursor, limit=page.limit,
                         with_total=True)
        opts = _filter_options(s, [col.id])
    return _render(request, "shared.html", collection=col, items=res.items, total=res.total, flt=flt, opts=opts,
                   sort=page.sort, order=page.order, next_url=_next_url(request, res.next_cursor))


@router.get("/images/cards/{card_id}")
def card_image(request: Request, card_id: str):
    """The local catalog image of a card (public catalog data), or a placeholder."""
    path = None
    if len(card_id) <= 64:
        with request.app.state.db.session() as s:
            card = s.get(Card, card_id)
            if card is not None and card.image_path:
                path = Path(card.image_path)
        imgs = request.app.state.settings.catalog_images
        if (path is None or not path.is_file()) and imgs and card is not None:
            for cand in (Path(imgs) / card.id / f"{card.id}.png", Path(imgs) / f"{card.id}.png", Path(imgs) / f"{card.id}.jpg"):
                if cand.is_file():
                    path = cand
                    break
    if path is not None and path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return FileResponse(path, media_type=IMAGE_SUFFIXES[path.suffix.lower()],
                            headers={"Cache-Control": "public, max-age=86400"})
    return FileResponse(HERE / "static" / "placeholder.svg", media_type="image/svg+xml",
                        headers={"Cache-Control": "public, max-age=3600"})
