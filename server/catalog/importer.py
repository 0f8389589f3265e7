"""Import a catalog source into the database: idempotent upserts, one transaction per set."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import select

from server.catalog.sources import CardRecord, CatalogError, CatalogSource, SetRecord
from server.db.models import Card, CardSet, CatalogMeta, utcnow
from server.db.session import Database

log = logging.getLogger(__name__)

_SET_FIELDS = ("game", "name", "series", "printed_total", "total", "release_date", "code", "symbol_url", "logo_url")
_CARD_FIELDS = (
    "game", "set_id", "name", "number", "printed_total", "rarity", "supertype", "subtypes", "types", "hp",
    "artist", "national_dex", "image_url_small", "image_url_large", "image_path", "illustration_id", "facts",
)


@dataclass
class ImportReport:
    sets: int = 0
    cards: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[str] = field(default_factory=list)
    version: str = ""

    @property
    def changed(self) -> int:
        return self.inserted + self.updated

    def line(self) -> str:
        return (f"sets={self.sets} cards={self.cards} inserted={self.inserted} updated={self.updated} "
                f"unchanged={self.unchanged} errors={len(self.errors)} catalog_version={self.version}")


def _apply(obj, record, fields) -> bool:
    """Copy fields from record to obj; return whether anything differed."""
    changed = False
    for f in fields:
        new = getattr(record, f)
        if getattr(obj, f) != new:
            setattr(obj, f, new)
            changed = True
    return changed


def import_catalog(db: Database, source: CatalogSource, *, fail_fast: bool = False, progress=None) -> ImportReport:
    """Upsert every set and card of ``source``. A broken set is skipped whole and reported; others still land."""
    report = ImportReport()
    try:
        sets = source.sets()
    except CatalogError as exc:
        report.errors.append(str(exc))
        return report
    for s in sets:
        try:
            # Parse the whole set before touching the database, so a bad record never half-applies it.
            cards = source.cards(s.id)
        except CatalogError as exc:
            log.error("%s", exc)
            report.errors.append(str(exc))
            if fail_fast:
                break
            continue
        counts = _import_set(db, s, cards)
        report.sets += 1
        report.cards += len(cards)
        report.inserted += counts[0]
        report.updated += counts[1]
        report.unchanged += counts[2]
        if progress:
            progress(s, len(cards))
    report.version = source.version()
    if not report.errors:
        with db.session() as session:
            meta = session.get(CatalogMeta, source.name) or CatalogMeta(source=source.name)
            if meta.version != report.version or meta.cards != report.cards or meta.sets != report.sets:
                meta.version, meta.sets, meta.cards, meta.imported_at = report.version, report.sets, report.cards, utcnow()
                session.add(meta)
    return report


def _import_set(db: Database, s: SetRecord, cards: list[CardRecord]) -> tuple[int, int, int]:
    inserted = updated = unchanged = 0
    with db.session() as session:  # one transaction per set
        row = session.get(CardSet, s.id)
        if row is None:
            row = CardSet(id=s.id)
            _apply(row, s, _SET_FIELDS)
            session.add(row)
        else:
            _apply(row, s, _SET_FIELDS)
        session.flush()
        existing = {c.id: c for c in session.scalars(select(Card).where(Card.set_id == s.id))}
        seen: set[str] = set()
        for rec in cards:
            if rec.id in seen:
                continue  # the source repeats a record: first one wins, never a duplicate row
            seen.add(rec.id)
            cur = existing.get(rec.id)
            if cur is None:
                cur = session.get(Card, rec.id)  # moved from another set?
            if cur is not None and rec.image_path is None and cur.image_path:
                # An import without --images must not forget images found by an earlier one.
                rec = rec.model_copy(update={"image_path": cur.image_path})
            if cur is None:
                card = Card(id=rec.id)
                _apply(card, rec, _CARD_FIELDS)
                session.add(card)
                inserted += 1
            elif _apply(cur, rec, _CARD_FIELDS):
                updated += 1
            else:
                unchanged += 1
    return inserted, updated, unchanged
