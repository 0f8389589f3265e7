"""Collection logic shared by the API, the web page, the review queue and the resolver.

The one function other workstreams call is ``apply_scan``: put a decided scan (accepted by the device,
resolved by the resolver, confirmed or corrected by a person) into its collection, exactly once.

    from server.collections_service import apply_scan
    apply_scan(session, scan, card_id, status="resolved")

Stacks (same card, condition, finish, language) are upserted with INSERT … ON CONFLICT so concurrent
writers (several ingest workers, a person in the review page) never lose a count or hit the unique key.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable, Literal

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, contains_eager

from server.db.models import (Card, CardSet, Collection, CollectionItem, Condition, Device, HardExample, Price, Scan,
                              ScanStatus, utcnow)
from server.metrics import ITEMS_APPLIED
from server.search import card_match

log = logging.getLogger(__name__)

CONDITIONS = tuple(c.value for c in Condition)
DECIDED = (ScanStatus.accepted.value, ScanStatus.resolved.value, ScanStatus.confirmed.value,
           ScanStatus.corrected.value)


# --- stacks ----------------------------------------------------------------------------------------------


def add_to_stack(session: Session, collection_id: int, card_id: str, quantity: int = 1, *, condition: str = "NM",
                 finish: str = "normal", language: str = "en", notes: str | None = None,
                 acquired_at: date | None = None, price_paid: Decimal | None = None) -> int:
    """Add ``quantity`` copies to the matching stack (created if missing); returns the item id."""
    t = CollectionItem.__table__
    now = utcnow()
    values = dict(collection_id=collection_id, card_id=card_id, quantity=quantity, condition=condition,
                  finish=finish, language=language, notes=notes or "", acquired_at=acquired_at,
                  price_paid=price_paid, created_at=now, updated_at=now)
    dialect = session.get_bind().dialect.name
    ins = (postgresql.insert(t) if dialect == "postgresql" else sqlite.insert(t)).values(**values)
    set_ = {"quantity": t.c.quantity + ins.excluded.quantity, "updated_at": now}
    # Fill details only where the stack has none yet: a later scan must not wipe what a person typed.
    if notes:
        set_["notes"] = func.coalesce(func.nullif(t.c.notes, ""), ins.excluded.notes)
    if acquired_at is not None:
        set_["acquired_at"] = func.coalesce(t.c.acquired_at, ins.excluded.acquired_at)
    if price_paid is not None:
        set_["price_paid"] = func.coalesce(t.c.price_paid, ins.excluded.price_paid)
    stmt = ins.on_conflict_do_update(index_elements=["collection_id", "card_id", "condition", "finish", "language"],
                                     set_=set_).returning(t.c.id)
    return session.execute(stmt).scalar_one()


def target_collection_id(session: Session, scan: Scan) -> int | None:
    if scan.collection_id is not None:
        return scan.collection_id
    dev = session.get(Device, scan.device_id)
    return dev.collection_id if dev is not None else None


def apply_scan(session: Session, scan: Scan, card_id: str | None = None, *, status: str,
               user_id: int | None = None, condition: str = "NM", finish: str = "normal",
               language: str = "en") -> int | None:
    """Record the decision on ``scan`` and add one copy to its collection, at most once per scan.

    ``status`` is the scan's new status (accepted / resolved / confirmed / corrected). ``card_id`` defaults
    to the scan's current answer. Returns the collection item id, or None when nothing was added (already
    applied, or the scan's device has no target collection). Runs in the caller's transaction.
    """
    if status not in DECIDED:
        raise ValueError(f"status {status!r} is not a decision; expected one of {DECIDED}")
    card_id = card_id or scan.resolved_card_id or scan.card_id
    if not card_id:
        raise ValueError(f"scan {scan.scan_id} has no card to apply")
    if session.get(Card, card_id) is None:
        raise ValueError(f"unknown card {card_id!r}")
    collection_id = target_collection_id(session, scan)
    scan.status = status
    scan.resolved_card_id = card_id
    scan.resolved_at = utcnow()
    if user_id is not None:
        scan.reviewed_by = user_id
    if collection_id is None:
        session.flush()
        return None
    scan.collection_id = collection_id
    session.flush()
    # The guarded UPDATE is the once-only latch: of two concurrent appliers exactly one sees rowcount 1.
    res = session.execute(update(Scan).where(Scan.id == scan.id, Scan.applied.is_(False)).values(applied=True)
                          .execution_options(synchronize_session=False))
    if res.rowcount != 1:
        return None
    scan.applied = True
    item_id = add_to_stack(session, collection_id, card_id, 1, condition=condition, finish=finish, language=language)
    ITEMS_APPLIED.labels(status=status).inc()
    return item_id


def record_hard_example(session: Session, scan: Scan, card_id: str, *, user_id: int | None,
                        data_dir: Path) -> HardExample:
    """Keep a corrected scan as a labelled hard example: crop under data_dir/hard_examples/<card>/ + a row."""
    crop_rel = None
    if scan.crop:
        folder = Path(data_dir) / "hard_examples" / _safe(card_id)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{_safe(scan.device_id)}_{_safe(scan.scan_id)}"
        (folder / f"{name}.jpg").write_bytes(scan.crop)
        (folder / f"{name}.json").write_text(json.dumps({
            "scan_id": scan.scan_id, "device_id": scan.device_id, "card_id": card_id,
            "suggested_card_id": scan.resolved_card_id or scan.card_id, "candidates": scan.candidates,
            "bundle_version": scan.bundle_version, "captured_at": scan.captured_at.isoformat() if scan.captured_at else None,
        }, indent=1))
        crop_rel = str(Path("hard_examples") / _safe(card_id) / f"{name}.jpg")
    ex = HardExample(scan_pk=scan.id, scan_id=scan.scan_id, device_id=scan.device_id, card_id=card_id,
                     suggested_card_id=scan.resolved_card_id or scan.card_id, candidates=list(scan.candidates or []),
                     crop_path=crop_rel, bundle_version=scan.bundle_version or "", user_id=user_id)
    session.add(ex)
    session.flush()
    return ex


def _safe(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s)[:100]


def suggested_card(scan: Scan) -> str | None:
    """What the review page proposes: the resolver's answer, else the device's, else the top candidate."""
    if scan.resolved_card_id:
        return scan.resolved_card_id
    if scan.card_id:
        return scan.card_id
    for c in scan.candidates or []:
        cid = c.get("card_id") if isinstance(c, dict) else (c[0] if isinstance(c, (list, tuple)) and c else None)
        if cid:
            return str(cid)
    return None


# --- ownership -------------------------------------------------------------------------------------------


def owned_collection(session: Session, principal, collection_id: int) -> Collection:
    """The caller's collection, or 404 (not 403: do not reveal that another user's id exists)."""
    col = session.get(Collection, collection_id) if 0 < collection_id < 2**63 else None
    if col is None or col.user_id != principal.user_id:
        raise HTTPException(404, f"collection {collection_id} not found")
    return col


# --- filtering, search, sort, keyset pagination ----------------------------------------------------------


class ItemFilter(BaseModel):
    """The filter of an item list and of a smart folder (saved as JSON, evaluated live)."""

    model_config = ConfigDict(extra="forbid")
    q: str | None = Field(None, max_length=200, description="Words matched as prefixes against card name and artist.")
    set: str | None = Field(None, max_length=64, description="Set id, e.g. sv1.")
    rarity: str | None = Field(None, max_length=64, description="Rarity, e.g. 'Rare Holo'.")
    type: str | None = Field(None, max_length=32, description="Energy type, e.g. Fire.")
    supertype: str | None = Field(None, max_length=32, description="Pokémon / Trainer / Energy.")
    condition: Condition | None = Field(None, description="NM, LP, MP, HP or DMG.")
    finish: str | None = Field(None, max_length=32, description="normal, holo, reverse_holo, …")
    language: str | None = Field(None, max_length=8, description="Language code, e.g. en.")

    def conditions(self, dialect: str) -> list:
        return [*self.card_conditions(dialect), *self.item_conditions()]

    def item_conditions(self) -> list:
        conds = []
        if self.condition:
            conds.append(CollectionItem.condition == self.condition.value)
        if self.finish:
            conds.append(CollectionItem.finish == self.finish)
        if self.language:
            conds.append(CollectionItem.language == self.language)
        return conds

    def card_conditions(self, dialect: str) -> list:
        conds = []
        if self.q:
            m = card_match(dialect, self.q)
            if m is not None:
                conds.append(m)
        if self.set:
            conds.append(Card.set_id == self.set)
        if self.rarity:
            conds.append(Card.rarity == self.rarity)
        if self.supertype:
            conds.append(Card.supertype == self.supertype)
        if self.type:
            conds.append(func.json_extract(Card.types, "$").like(f'%"{_like_safe(self.type)}"%')
                         if dialect == "sqlite" else Card.types.op("@>")(func.jsonb_build_array(self.type)))
        return conds


def _like_safe(s: str) -> str:
    return "".join(ch for ch in s if ch.isalnum() or ch in " -_")


LIST_CARD_COLUMNS = (Card.id, Card.game, Card.set_id, Card.name, Card.number, Card.printed_total, Card.rarity,
                     Card.supertype, Card.subtypes, Card.types, Card.hp, Card.artist, Card.national_dex,
                     Card.illustration_id, Card.image_url_small, Card.image_url_large, Card.image_path)

SortKey = Literal["added", "name", "set", "rarity", "quantity", "condition", "updated", "acquired", "price_paid"]

_EPOCH = date(1, 1, 1)


def _sort_columns(sort: str):
    """Columns (with non-null stand-ins, so keyset comparisons are total) and value parsers."""
    if sort == "added":
        return []
    if sort == "name":
        return [(Card.name, str)]
    if sort == "set":
        return [(Card.set_id, str), (Card.number, str)]
    if sort == "rarity":
        return [(func.coalesce(Card.rarity, ""), str)]
    if sort == "quantity":
        return [(CollectionItem.quantity, int)]
    if sort == "condition":
        return [(CollectionItem.condition, str)]
    if sort == "updated":
        return [(CollectionItem.updated_at, datetime.fromisoformat)]
    if sort == "acquired":
        return [(func.coalesce(CollectionItem.acquired_at, _EPOCH), date.fromisoformat)]
    if sort == "price_paid":
        return [(func.coalesce(CollectionItem.price_paid, 0), Decimal)]
    raise HTTPException(422, f"unknown sort {sort!r}")


def _jsonable(v):
    if isinstance(v, (datetime, date)):
        return v.isoformat()
    if isinstance(v, Decimal):
        return str(v)
    return v


def encode_cursor(sort: str, order: str, values: list, item_id: int) -> str:
    raw = json.dumps({"s": sort, "o": order, "v": [_jsonable(v) for v in values], "id": item_id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str, order: str) -> tuple[list, int]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if raw["s"] != sort or raw["o"] != order:
            raise ValueError("cursor belongs to another sort order")
        parsers = [p for _, p in _sort_columns(sort)]
        values = raw["v"]
        if not isinstance(values, list) or len(values) != len(parsers):
            raise ValueError("cursor shape")
        parsed = [p(v) for p, v in zip(parsers, values)]
        item_id = int(raw["id"])
        return parsed, item_id
    except (ValueError, KeyError, TypeError, binascii.Error, json.JSONDecodeError, ArithmeticError) as exc:
        raise HTTPException(400, f"invalid cursor: {exc}") from None


def _keyset(cols: list, values: list, item_id: int, desc: bool):
    """(k1, k2, …, id) strictly after/before (v1, v2, …, item_id), expanded for portability."""
    keys = [*cols, CollectionItem.id]
    vals = [*values, item_id]
    ors = []
    for i, (k, v) in enumerate(zip(keys, vals)):
        eqs = [keys[j] == vals[j] for j in range(i)]
        ors.append(and_(*eqs, k < v if desc else k > v))
    return or_(*ors)


@dataclass
class ItemPage:
    items: list[CollectionItem]
    next_cursor: str | None
    total: int | None = None


def items_page(session: Session, collection_ids, flt: ItemFilter, *, sort: str = "added",
               order: Literal["asc", "desc"] = "asc", cursor: str | None = None, limit: int = 50,
               with_total: bool = False) -> ItemPage:
    """One page of items with their cards. ``collection_ids``: one id, a list, or a scalar subquery."""
    dialect = session.get_bind().dialect.name
    if isinstance(collection_ids, int):
        scope = CollectionItem.collection_id == collection_ids
    else:
        scope = CollectionItem.collection_id.in_(collection_ids)
    card_conds, item_conds = flt.card_conditions(dialect), flt.item_conditions()
    conds = [scope, *item_conds]
    base = select(CollectionItem).join(CollectionItem.card)
    if card_conds and (flt.set or flt.q):
        # Selective card filters (a set, a search) first, as their own materialised set of card ids: otherwise
        # the planner walks the whole collection in id order probing cards one by one, hoping for an early
        # LIMIT (30+ ms at 50k items for a 1% filter). From the few matching cards, the (collection_id,
        # card_id) index finds the items directly. Broad filters (a type, a rarity) keep the plain join,
        # where walking in sort order and stopping early is the better plan.
        matching = select(Card.id.label("id")).where(*card_conds).cte("matching_cards")
        if dialect == "postgresql":
            matching = matching.prefix_with("MATERIALIZED")
        base = base.join(matching, matching.c.id == CollectionItem.card_id)
    else:
        conds += card_conds
    base = base.where(*conds)
    cols = [c for c, _ in _sort_columns(sort)]
    desc = order == "desc"
    # The list never shows a card's facts (attacks, rules: big JSON); not loading them halves hydration time.
    stmt = base.options(contains_eager(CollectionItem.card).load_only(*LIST_CARD_COLUMNS))
    if cursor:
        values, after_id = decode_cursor(cursor, sort, order)
        stmt = stmt.where(_keyset(cols, values, after_id, desc))
    ordering = [*cols, CollectionItem.id]
    stmt = stmt.order_by(*[c.desc() if desc else c.asc() for c in ordering]).limit(limit + 1)
    rows = list(session.scalars(stmt).unique())
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = encode_cursor(sort, order, _row_values(sort, last), last.id)
    total = None
    if with_total:
        total = session.scalar(select(func.count()).select_from(
            select(CollectionItem.id).join(CollectionItem.card).where(scope, *item_conds, *card_conds).subquery()))
    return ItemPage(rows, next_cursor, total)


def _row_values(sort: str, it: CollectionItem) -> list:
    c = it.card
    return {
        "added": [], "name": [c.name], "set": [c.set_id, c.number], "rarity": [c.rarity or ""],
        "quantity": [it.quantity], "condition": [it.condition], "updated": [it.updated_at],
        "acquired": [it.acquired_at or _EPOCH], "price_paid": [it.price_paid if it.price_paid is not None else Decimal(0)],
    }[sort]


# --- prices, analytics and valuation ---------------------------------------------------------------------


def latest_prices(session: Session, pairs_subquery):
    """Newest price row per (card_id, finish) among ``pairs_subquery`` (columns card_id, finish)."""
    rn = func.row_number().over(partition_by=(Price.card_id, Price.finish),
                                order_by=(Price.price_date.desc(), Price.id.desc())).label("rn")
    ranked = (select(Price.card_id, Price.finish, Price.low, Price.mid, Price.market, Price.price_date,
                     Price.currency, rn)
              .where(Price.card_id.in_(select(pairs_subquery.c.card_id))).subquery())
    return select(ranked).where(ranked.c.rn == 1).subquery()


def _money(v) -> float:
    return float(round(Decimal(v or 0), 2))


def analytics(session: Session, collection_id: int) -> dict[str, Any]:
    I, C = CollectionItem, Card
    scope = I.collection_id == collection_id
    qty = func.coalesce(func.sum(I.quantity), 0)
    total, stacks, distinct = session.execute(
        select(qty, func.count(I.id), func.count(func.distinct(I.card_id))).where(scope)).one()

    def grouped(col):
        return {k if k is not None else "": int(v) for k, v in
                session.execute(select(col, qty).join(C, C.id == I.card_id).where(scope).group_by(col).order_by(col))}

    owned = (select(C.set_id.label("set_id"), func.count(func.distinct(I.card_id)).label("owned"),
                    func.sum(I.quantity).label("copies"))
             .join(C, C.id == I.card_id).where(scope).group_by(C.set_id).subquery())
    in_set = (select(C.set_id.label("set_id"), func.count(C.id).label("n")).where(C.set_id.in_(select(owned.c.set_id)))
              .group_by(C.set_id).subquery())
    sets = []
    for sid, name, printed, owned_n, copies, n in session.execute(
            select(owned.c.set_id, CardSet.name, CardSet.printed_total, owned.c.owned, owned.c.copies, in_set.c.n)
            .join(CardSet, CardSet.id == owned.c.set_id).join(in_set, in_set.c.set_id == owned.c.set_id)
            .order_by(CardSet.release_date, owned.c.set_id)):
        sets.append({"set_id": sid, "name": name, "owned": int(owned_n), "copies": int(copies), "cards_in_set": int(n),
                     "printed_total": printed, "completion_pct": round(100.0 * owned_n / n, 1) if n else 0.0})
    value = valuation(session, collection_id)
    by_set_value = {row["set_id"]: row["value"] for row in value["by_set"]}
    for s in sets:
        s["value"] = by_set_value.get(s["set_id"], 0.0)
    return {
        "collection_id": collection_id, "cards": int(total), "stacks": int(stacks), "distinct_cards": int(distinct),
        "by_condition": grouped(I.condition), "by_finish": grouped(I.finish), "by_rarity": grouped(C.rarity),
        "by_supertype": grouped(C.supertype), "by_language": grouped(I.language), "sets": sets,
        "value": {k: value[k] for k in ("currency", "market", "low", "mid", "priced_cards", "unpriced_cards", "paid")},
    }


def valuation(session: Session, collection_id: int) -> dict[str, Any]:
    """Current value at the newest price of each (card, finish); unpriced stacks are counted, not guessed."""
    I, C = CollectionItem, Card
    pairs = select(I.card_id, I.finish).where(I.collection_id == collection_id).distinct().subquery()
    lp = latest_prices(session, pairs)
    rows = session.execute(
        select(C.set_id, I.quantity, I.price_paid, lp.c.low, lp.c.mid, lp.c.market, lp.c.currency)
        .join(C, C.id == I.card_id)
        .outerjoin(lp, and_(lp.c.card_id == I.card_id, lp.c.finish == I.finish))
        .where(I.collection_id == collection_id)).all()
    out = {"market": Decimal(0), "low": Decimal(0), "mid": Decimal(0), "paid": Decimal(0)}
    by_set: dict[str, Decimal] = {}
    priced = unpriced = 0
    currency = "USD"
    for set_id, q, paid, low, mid, market, cur in rows:
        if paid is not None:
            out["paid"] += Decimal(paid) * q
        if market is None and mid is None and low is None:
            unpriced += q
            continue
        priced += q
        currency = cur or currency
        out["low"] += Decimal(low or 0) * q
        out["mid"] += Decimal(mid or 0) * q
        m = Decimal(market if market is not None else (mid or low or 0)) * q
        out["market"] += m
        by_set[set_id] = by_set.get(set_id, Decimal(0)) + m
    return {"collection_id": collection_id, "currency": currency, **{k: _money(v) for k, v in out.items()},
            "priced_cards": priced, "unpriced_cards": unpriced,
            "by_set": [{"set_id": k, "value": _money(v)} for k, v in sorted(by_set.items(), key=lambda kv: -kv[1])]}


def value_history(session: Session, collection_id: int, days: int = 365) -> list[dict[str, Any]]:
    """Market value of today's holdings on each price date in the window (last known price carried forward).

    Holdings are not versioned, so this answers "what were these cards worth then", which is what a
    collector's value chart shows; quantities added later are not back-dated out.
    """
    I = CollectionItem
    since = date.today() - timedelta(days=days)
    held: dict[tuple[str, str], int] = {}
    for cid, fin, q in session.execute(select(I.card_id, I.finish, func.sum(I.quantity))
                                       .where(I.collection_id == collection_id).group_by(I.card_id, I.finish)):
        held[(cid, fin)] = int(q)
    if not held:
        return []
    pairs = select(I.card_id).where(I.collection_id == collection_id).distinct()
    points = session.execute(
        select(Price.card_id, Price.finish, Price.price_date, Price.market, Price.mid, Price.low)
        .where(Price.card_id.in_(pairs)).order_by(Price.price_date)).all()
    # Last price before the window seeds the carry-forward so the first day is not artificially low.
    current: dict[tuple[str, str], Decimal] = {}
    by_date: dict[date, list] = {}
    for cid, fin, d, market, mid, low in points:
        if (cid, fin) not in held:
            continue
        v = market if market is not None else (mid if mid is not None else low)
        if v is None:
            continue
        if d < since:
            current[(cid, fin)] = Decimal(v)
        else:
            by_date.setdefault(d, []).append(((cid, fin), Decimal(v)))
    out = []
    for d in sorted(by_date):
        for key, v in by_date[d]:
            current[key] = v
        out.append({"date": d.isoformat(), "market": _money(sum(current[k] * held[k] for k in current))})
    return out
