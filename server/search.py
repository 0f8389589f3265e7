"""Full-text search on card names, per dialect: PostgreSQL tsvector, SQLite FTS5.

Queries are prefix queries per word ("pika cha" finds "Pikachu"), built from word characters only,
so user input can never inject FTS syntax.
"""

from __future__ import annotations

import re

from sqlalchemy import ColumnElement, text
from sqlalchemy.sql import literal_column

_WORD = re.compile(r"\w+", re.UNICODE)
MAX_TERMS = 8


def terms(q: str) -> list[str]:
    return [t.lower() for t in _WORD.findall(q or "")][:MAX_TERMS]


def card_match(dialect: str, q: str, card_id_column=None) -> ColumnElement[bool] | None:
    """A WHERE clause matching cards whose name/artist contain every word of ``q`` as a prefix."""
    words = terms(q)
    if not words:
        return None
    col = card_id_column if card_id_column is not None else literal_column("cards.id")
    if dialect == "postgresql":
        tsq = " & ".join(f"{w}:*" for w in words)
        return text("cards.search_vector @@ to_tsquery('simple', :tsq)").bindparams(tsq=tsq)
    if dialect == "sqlite":
        fts = " ".join('"' + w.replace('"', "") + '"*' for w in words)
        return col.in_(text("SELECT card_id FROM cards_fts WHERE cards_fts MATCH :fts").bindparams(fts=fts)
                       .columns(literal_column("card_id")))
    # Other dialects: a plain case-insensitive LIKE per word.
    from sqlalchemy import and_
    from server.db.models import Card

    return and_(*[Card.name.ilike(f"%{w}%") for w in words])
