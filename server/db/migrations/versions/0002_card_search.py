"""full-text search on cards: PostgreSQL tsvector + GIN, SQLite FTS5 kept in sync by triggers

Revision ID: 0002
Revises: 0001
"""
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# 'simple' config: card names are proper nouns, English stemming would only hurt ("Pikachu" ≠ "Pikach").
PG_UP = [
    "ALTER TABLE cards ADD COLUMN search_vector tsvector GENERATED ALWAYS AS "
    "(setweight(to_tsvector('simple', coalesce(name, '')), 'A') || "
    " setweight(to_tsvector('simple', coalesce(artist, '')), 'C')) STORED",
    "CREATE INDEX ix_cards_search_vector ON cards USING gin (search_vector)",
]
PG_DOWN = ["DROP INDEX IF EXISTS ix_cards_search_vector", "ALTER TABLE cards DROP COLUMN IF EXISTS search_vector"]

SQLITE_UP = [
    "CREATE VIRTUAL TABLE cards_fts USING fts5(card_id UNINDEXED, name, artist, "
    "tokenize = 'unicode61 remove_diacritics 2')",
    "CREATE TRIGGER cards_fts_ai AFTER INSERT ON cards BEGIN "
    "INSERT INTO cards_fts(card_id, name, artist) VALUES (new.id, new.name, coalesce(new.artist, '')); END",
    "CREATE TRIGGER cards_fts_ad AFTER DELETE ON cards BEGIN "
    "DELETE FROM cards_fts WHERE card_id = old.id; END",
    "CREATE TRIGGER cards_fts_au AFTER UPDATE OF name, artist ON cards BEGIN "
    "DELETE FROM cards_fts WHERE card_id = old.id; "
    "INSERT INTO cards_fts(card_id, name, artist) VALUES (new.id, new.name, coalesce(new.artist, '')); END",
    "INSERT INTO cards_fts(card_id, name, artist) SELECT id, name, coalesce(artist, '') FROM cards",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS cards_fts_au", "DROP TRIGGER IF EXISTS cards_fts_ad",
    "DROP TRIGGER IF EXISTS cards_fts_ai", "DROP TABLE IF EXISTS cards_fts",
]


def _run(statements: list[str]) -> None:
    for sql in statements:
        op.execute(sql)


def upgrade() -> None:
    name = op.get_bind().dialect.name
    if name == "postgresql":
        _run(PG_UP)
    elif name == "sqlite":
        _run(SQLITE_UP)


def downgrade() -> None:
    name = op.get_bind().dialect.name
    if name == "postgresql":
        _run(PG_DOWN)
    elif name == "sqlite":
        _run(SQLITE_DOWN)
