"""Price feeds: parse a file into ``PricePoint``s through an adapter, then upsert them.

Adapter point: a feed format is a ``PriceFeedAdapter`` subclass registered in ``ADAPTERS``. It turns
the raw bytes into ``PricePoint``s (card id, finish, low/mid/market, date). ``generic`` reads our own
CSV/JSON layout; ``tcgplayer`` reads a TCGplayer-style price export (``Set Name``/``Number``/``Printing``/
``TCG Low Price``/``TCG Market Price``…) and maps rows to catalog cards by set and collector number.
To support another vendor, subclass, implement ``parse``, add it to ``ADAPTERS``.

Generic CSV columns: ``card_id,finish,low,mid,market,date[,currency]``.
Generic JSON: a list of objects with the same keys (or ``{"prices": [...]}``).
"""

from __future__ import annotations

import abc
import csv
import io
import json
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Iterator

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from server.db.models import Card, CardSet, Price


@dataclass(frozen=True)
class PricePoint:
    card_id: str
    finish: str
    price_date: date
    low: Decimal | None = None
    mid: Decimal | None = None
    market: Decimal | None = None
    currency: str = "USD"


class FeedError(ValueError):
    def __init__(self, line: int | str, message: str):
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass
class PriceImportReport:
    rows: int = 0
    stored: int = 0
    unknown_cards: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"rows": self.rows, "stored": self.stored, "unknown_cards": self.unknown_cards,
                "errors": self.errors[:100], "error_count": len(self.errors)}


def _money(v, line, name) -> Decimal | None:
    if v is None or (isinstance(v, str) and v.strip() in ("", "-", "null", "None")):
        return None
    try:
        d = Decimal(str(v).strip().lstrip("$").replace(",", ""))
    except InvalidOperation:
        raise FeedError(line, f"{name}: not a number: {v!r}") from None
    if not d.is_finite() or d < 0 or d >= Decimal("1e10"):
        raise FeedError(line, f"{name}: out of range: {v!r}")
    return d.quantize(Decimal("0.01"))


def _date(v, line) -> date:
    if isinstance(v, date):
        return v
    s = str(v or "").strip()
    for fmt in ("%Y-%m-%d", "%Y/%m/%d", "%m/%d/%Y"):
        try:
            return datetime.strptime(s[:10], fmt).date()
        except ValueError:
            continue
    raise FeedError(line, f"date: expected YYYY-MM-DD, got {v!r}")


def _rows(data: bytes, fmt: str) -> Iterator[tuple[int, dict]]:
    text = data.decode("utf-8-sig")
    if fmt == "json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FeedError(exc.lineno, f"invalid JSON: {exc.msg}") from None
        if isinstance(raw, dict):
            raw = raw.get("prices", raw.get("data"))
        if not isinstance(raw, list):
            raise FeedError(1, "expected a JSON list of price objects")
        for i, r in enumerate(raw, 1):
            if not isinstance(r, dict):
                raise FeedError(f"item {i}", "not an object")
            yield i, r
        return
    reader = csv.DictReader(io.StringIO(text))
    for r in reader:
        yield reader.line_num, {(k or "").strip(): (v or "").strip() if isinstance(v, str) else v for k, v in r.items()}


class PriceFeedAdapter(abc.ABC):
    name: str = ""

    @abc.abstractmethod
    def parse(self, session: Session, data: bytes, fmt: str) -> Iterator[PricePoint | FeedError]:
        """Yield points, or FeedError for a bad row (the import goes on and reports it)."""


class GenericAdapter(PriceFeedAdapter):
    name = "generic"

    def parse(self, session, data, fmt):
        for line, r in _rows(data, fmt):
            try:
                card_id = str(r.get("card_id") or "").strip()
                if not card_id:
                    raise FeedError(line, "card_id missing")
                yield PricePoint(card_id=card_id, finish=str(r.get("finish") or "normal").strip(),
                                 price_date=_date(r.get("date") or r.get("price_date"), line),
                                 low=_money(r.get("low"), line, "low"), mid=_money(r.get("mid"), line, "mid"),
                                 market=_money(r.get("market"), line, "market"),
                                 currency=str(r.get("currency") or "USD").strip().upper()[:3])
            except FeedError as exc:
                yield exc


TCGPLAYER_PRINTING = {"normal": "normal", "holofoil": "holo", "reverse holofoil": "reverse_holo",
                      "1st edition": "first_edition", "1st edition normal": "first_edition",
                      "1st edition holofoil": "first_edition", "unlimited": "unlimited",
                      "unlimited holofoil": "holo", "foil": "foil"}


class TCGplayerAdapter(PriceFeedAdapter):
    """TCGplayer-style price export: one row per product and printing, matched by set name/code + number."""

    name = "tcgplayer"

    def parse(self, session, data, fmt):
        sets_by_key: dict[str, str] = {}
        for sid, name, code in session.execute(select(CardSet.id, CardSet.name, CardSet.code)):
            for k in (sid, name, code):
                if k:
                    sets_by_key.setdefault(k.lower(), sid)
        for line, r in _rows(data, fmt):
            try:
                set_key = (r.get("Set Code") or r.get("Set Name") or r.get("Set") or "").strip().lower()
                set_id = sets_by_key.get(set_key) or sets_by_key.get((r.get("Set Name") or "").strip().lower())
                number = str(r.get("Number") or r.get("Card Number") or "").split("/")[0].strip().lstrip("0") or "0"
                if not set_id:
                    raise FeedError(line, f"unknown set {set_key!r}")
                printing = (r.get("Printing") or "Normal").strip().lower()
                finish = TCGPLAYER_PRINTING.get(printing)
                if finish is None:
                    raise FeedError(line, f"unknown printing {printing!r}")
                yield PricePoint(card_id=f"{set_id}-{number}", finish=finish,
                                 price_date=_date(r.get("Date") or r.get("date") or date.today().isoformat(), line),
                                 low=_money(r.get("TCG Low Price") or r.get("Low Price"), line, "low"),
                                 mid=_money(r.get("TCG Mid Price") or r.get("Mid Price"), line, "mid"),
                                 market=_money(r.get("TCG Market Price") or r.get("Market Price"), line, "market"))
            except FeedError as exc:
                yield exc


ADAPTERS: dict[str, type[PriceFeedAdapter]] = {GenericAdapter.name: GenericAdapter,
                                              TCGplayerAdapter.name: TCGplayerAdapter}


def import_prices(session: Session, data: bytes, *, fmt: str = "csv", adapter: str = "generic",
                  source: str = "import", batch: int = 1000) -> PriceImportReport:
    """Parse ``data`` with ``adapter`` and upsert each (card, finish, date, source) point."""
    if adapter not in ADAPTERS:
        raise ValueError(f"unknown price adapter {adapter!r}; known: {', '.join(ADAPTERS)}")
    if fmt not in ("csv", "json"):
        raise ValueError("format must be csv or json")
    report = PriceImportReport()
    known: set[str] = set()
    pending: dict[tuple, dict] = {}
    t = Price.__table__
    dialect = session.get_bind().dialect.name

    def flush():
        if not pending:
            return
        ids = {p["card_id"] for p in pending.values()} - known
        if ids:
            known.update(session.scalars(select(Card.id).where(Card.id.in_(ids))))
        rows = [p for p in pending.values() if p["card_id"] in known]
        report.unknown_cards += len(pending) - len(rows)
        pending.clear()
        if not rows:
            return
        ins = (postgresql.insert(t) if dialect == "postgresql" else sqlite.insert(t)).values(rows)
        session.execute(ins.on_conflict_do_update(
            index_elements=["card_id", "finish", "price_date", "source"],
            set_={c: ins.excluded[c] for c in ("low", "mid", "market", "currency")}))
        report.stored += len(rows)

    try:
        for p in ADAPTERS[adapter]().parse(session, data, fmt):
            report.rows += 1
            if isinstance(p, FeedError):
                report.errors.append(str(p))
                continue
            # Last row wins for duplicates inside one file (one statement cannot upsert a key twice).
            pending[(p.card_id, p.finish, p.price_date)] = dict(
                card_id=p.card_id, finish=p.finish, price_date=p.price_date, low=p.low, mid=p.mid, market=p.market,
                currency=p.currency, source=source)
            if len(pending) >= batch:
                flush()
        flush()
    except (FeedError, UnicodeDecodeError, csv.Error) as exc:
        report.errors.append(str(exc))
    return report
