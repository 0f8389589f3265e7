"""CSV import/export of a collection in three column layouts; export → import loses nothing.

- ``generic``: our own columns (card_id, name, set_id, number, quantity, condition, finish, language,
  notes, acquired_at, price_paid).
- ``tcgplayer``: TCGplayer collection-export style (Quantity, Name, Set, Set Code, Card Number, Printing,
  Condition, Language, Rarity, …). Printing/Condition/Language use TCGplayer's words.
- ``moxfield`` (alias ``deckbox``): Count, Tradelist Count, Name, Edition, Condition, Language, Foil, Tags,
  Collector Number, Purchase Price … Those apps only know foil/non-foil, so the exact finish also goes
  into ``Tags`` as ``finish:<finish>`` — they keep tags, and our import reads them back.

Rows are matched to cards by ``card_id`` when present, else by set (id, code or name) + collector number.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from server.collections_service import CONDITIONS, add_to_stack
from server.db.models import Card, CardSet, CollectionItem

FORMATS = ("generic", "tcgplayer", "moxfield", "deckbox")

GENERIC_COLUMNS = ["card_id", "name", "set_id", "number", "quantity", "condition", "finish", "language", "notes",
                   "acquired_at", "price_paid"]
TCGPLAYER_COLUMNS = ["Quantity", "Name", "Simple Name", "Set", "Set Code", "Card Number", "Printing", "Condition",
                     "Language", "Rarity", "Product ID", "SKU", "Notes", "Date Acquired", "Price Paid"]
MOXFIELD_COLUMNS = ["Count", "Tradelist Count", "Name", "Edition", "Condition", "Language", "Foil", "Tags",
                    "Last Modified", "Collector Number", "Alter", "Proxy", "Purchase Price", "Notes", "Date Acquired"]

COND_WORDS = {"NM": "Near Mint", "LP": "Lightly Played", "MP": "Moderately Played", "HP": "Heavily Played",
              "DMG": "Damaged"}
WORD_COND = {v.lower(): k for k, v in COND_WORDS.items()} | {"mint": "NM", "excellent": "LP", "good": "MP",
                                                             "played": "HP", "poor": "DMG", "good (lightly played)": "LP"}
PRINTINGS = {"normal": "Normal", "holo": "Holofoil", "reverse_holo": "Reverse Holofoil",
             "first_edition": "1st Edition", "unlimited": "Unlimited", "foil": "Foil"}
PRINTING_FINISH = {v.lower(): k for k, v in PRINTINGS.items()} | {"1st edition holofoil": "first_edition",
                                                                  "unlimited holofoil": "holo"}
LANGS = {"en": "English", "ja": "Japanese", "fr": "French", "de": "German", "it": "Italian", "es": "Spanish",
         "pt": "Portuguese", "ko": "Korean", "zh-tw": "Chinese (T)", "zh-cn": "Chinese (S)", "ru": "Russian",
         "nl": "Dutch", "pl": "Polish", "th": "Thai", "id": "Indonesian"}
LANG_CODE = {v.lower(): k for k, v in LANGS.items()}


@dataclass
class ImportReport:
    rows: int = 0
    added: int = 0
    copies: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"rows": self.rows, "added": self.added, "copies": self.copies, "errors": self.errors[:100],
                "error_count": len(self.errors)}


def _lang_word(code: str) -> str:
    return LANGS.get(code, code)


def _lang_code(word: str) -> str:
    w = (word or "").strip()
    return LANG_CODE.get(w.lower(), w.lower() or "en")[:8]


def export_csv(session: Session, collection_id: int, fmt: str = "generic") -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    items = session.scalars(select(CollectionItem).where(CollectionItem.collection_id == collection_id)
                            .options(joinedload(CollectionItem.card).joinedload(Card.set))
                            .order_by(CollectionItem.id)).all()
    buf = io.StringIO()
    if fmt == "generic":
        w = csv.DictWriter(buf, GENERIC_COLUMNS, lineterminator="\n")
        w.writeheader()
        for it in items:
            w.writerow({"card_id": it.card_id, "name": it.card.name, "set_id": it.card.set_id,
                        "number": it.card.number, "quantity": it.quantity, "condition": it.condition,
                        "finish": it.finish, "language": it.language, "notes": it.notes,
                        "acquired_at": it.acquired_at.isoformat() if it.acquired_at else "",
                        "price_paid": str(it.price_paid) if it.price_paid is not None else ""})
    elif fmt == "tcgplayer":
        w = csv.DictWriter(buf, TCGPLAYER_COLUMNS, lineterminator="\n")
        w.writeheader()
        for it in items:
            c = it.card
            w.writerow({"Quantity": it.quantity, "Name": c.name, "Simple Name": c.name, "Set": c.set.name,
                        "Set Code": c.set_id, "Card Number": f"{c.number}/{c.printed_total}" if c.printed_total else c.number,
                        "Printing": PRINTINGS.get(it.finish, it.finish), "Condition": COND_WORDS[it.condition],
                        "Language": _lang_word(it.language), "Rarity": c.rarity or "", "Product ID": "", "SKU": "",
                        "Notes": it.notes, "Date Acquired": it.acquired_at.isoformat() if it.acquired_at else "",
                        "Price Paid": str(it.price_paid) if it.price_paid is not None else ""})
    else:
        w = csv.DictWriter(buf, MOXFIELD_COLUMNS, lineterminator="\n")
        w.writeheader()
        for it in items:
            c = it.card
            w.writerow({"Count": it.quantity, "Tradelist Count": 0, "Name": c.name, "Edition": c.set_id,
                        "Condition": COND_WORDS[it.condition], "Language": _lang_word(it.language),
                        "Foil": "" if it.finish == "normal" else "foil",
                        "Tags": "" if it.finish in ("normal",) else f"finish:{it.finish}",
                        "Last Modified": it.updated_at.strftime("%Y-%m-%d %H:%M:%S") if it.updated_at else "",
                        "Collector Number": c.number, "Alter": "False", "Proxy": "False",
                        "Purchase Price": str(it.price_paid) if it.price_paid is not None else "",
                        "Notes": it.notes, "Date Acquired": it.acquired_at.isoformat() if it.acquired_at else ""})
    return buf.getvalue()


class _Resolver:
    """Finds cards by id, or by set (id/code/name) + collector number."""

    def __init__(self, session: Session):
        self.session = session
        self.sets: dict[str, str] = {}
        for sid, name, code in session.execute(select(CardSet.id, CardSet.name, CardSet.code)):
            for k in (code, name, sid):  # id last: it wins over a colliding code or name
                if k:
                    self.sets[k.lower()] = sid

    def card(self, card_id: str | None, set_key: str | None, number: str | None) -> str | None:
        if card_id:
            return card_id if self.session.get(Card, card_id) is not None else None
        sid = self.sets.get((set_key or "").strip().lower())
        num = (number or "").split("/")[0].strip()
        if not sid or not num:
            return None
        for cand in (num, num.lstrip("0") or "0"):
            found = self.session.scalar(select(Card.id).where(Card.set_id == sid, Card.number == cand))
            if found:
                return found
        return None


def _int(v, name) -> int:
    try:
        n = int(str(v).strip())
    except ValueError:
        raise ValueError(f"{name}: not an integer: {v!r}") from None
    if n < 0 or n > 1_000_000:
        raise ValueError(f"{name}: out of range: {n}")
    return n


def _date(v) -> date | None:
    s = (v or "").strip()
    if not s:
        return None
    try:
        return datetime.fromisoformat(s[:10]).date()
    except ValueError:
        raise ValueError(f"date: expected YYYY-MM-DD, got {v!r}") from None


def _price(v) -> Decimal | None:
    s = (v or "").strip().lstrip("$")
    if not s:
        return None
    try:
        d = Decimal(s)
    except InvalidOperation:
        raise ValueError(f"price: not a number: {v!r}") from None
    if not d.is_finite() or d < 0 or d >= Decimal("1e10"):
        raise ValueError(f"price: out of range: {v!r}")
    return d.quantize(Decimal("0.01"))


def _condition(v) -> str:
    s = (v or "NM").strip()
    if s.upper() in CONDITIONS:
        return s.upper()
    c = WORD_COND.get(s.lower())
    if c is None:
        raise ValueError(f"condition: unknown {v!r}")
    return c


def _finish_moxfield(foil: str, tags: str) -> str:
    for tag in (tags or "").replace(";", ",").split(","):
        tag = tag.strip()
        if tag.startswith("finish:"):
            return tag[7:].strip() or "normal"
    f = (foil or "").strip().lower()
    return "holo" if f in ("foil", "etched", "true", "yes") else "normal"


def import_csv(session: Session, collection_id: int, text: str, fmt: str = "generic") -> ImportReport:
    """Add every row to ``collection_id`` (quantities add up on existing stacks). Bad rows are reported."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    report = ImportReport()
    resolver = _Resolver(session)
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    try:
        for r in reader:
            line = reader.line_num
            report.rows += 1
            r = {(k or "").strip(): (v or "") if isinstance(v, str) else "" for k, v in r.items()}
            try:
                if fmt == "generic":
                    card_id = resolver.card(r.get("card_id") or None, r.get("set_id"), r.get("number"))
                    qty = _int(r.get("quantity") or 1, "quantity")
                    cond, finish = _condition(r.get("condition")), (r.get("finish") or "normal").strip()
                    lang = (r.get("language") or "en").strip().lower()[:8]
                    notes, acquired, paid = r.get("notes", ""), _date(r.get("acquired_at")), _price(r.get("price_paid"))
                elif fmt == "tcgplayer":
                    card_id = resolver.card(None, r.get("Set Code") or r.get("Set"), r.get("Card Number"))
                    if card_id is None and r.get("Set Code"):
                        card_id = resolver.card(None, r.get("Set"), r.get("Card Number"))
                    qty = _int(r.get("Quantity") or 1, "Quantity")
                    cond = _condition(r.get("Condition"))
                    printing = (r.get("Printing") or "Normal").strip().lower()
                    finish = PRINTING_FINISH.get(printing)
                    if finish is None:
                        raise ValueError(f"Printing: unknown {r.get('Printing')!r}")
                    lang = _lang_code(r.get("Language"))
                    notes, acquired, paid = r.get("Notes", ""), _date(r.get("Date Acquired")), _price(r.get("Price Paid"))
                else:
                    card_id = resolver.card(None, r.get("Edition"), r.get("Collector Number") or r.get("Card Number"))
                    qty = _int(r.get("Count") or 1, "Count")
                    cond = _condition(r.get("Condition"))
                    finish = _finish_moxfield(r.get("Foil"), r.get("Tags"))
                    lang = _lang_code(r.get("Language"))
                    notes, acquired = r.get("Notes", ""), _date(r.get("Date Acquired"))
                    paid = _price(r.get("Purchase Price") or r.get("My Price"))
                if card_id is None:
                    raise ValueError("card not found in the catalog")
                if qty == 0:
                    continue
                if len(finish) > 32 or len(notes) > 10_000:
                    raise ValueError("finish or notes too long")
            except ValueError as exc:
                report.errors.append(f"line {line}: {exc}")
                continue
            add_to_stack(session, collection_id, card_id, qty, condition=cond, finish=finish, language=lang,
                         notes=notes or None, acquired_at=acquired, price_paid=paid)
            report.added += 1
            report.copies += qty
    except csv.Error as exc:
        report.errors.append(f"line {reader.line_num}: {exc}")
    return report
