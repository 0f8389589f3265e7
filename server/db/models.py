"""SQLAlchemy 2 models. SQLite is the embedded default; PostgreSQL is selected by URL.

Column names follow the shared vocabulary (docs/CONVENTIONS.md): a ``card`` is one printing, a
``scan`` is one card seen by a device, and so on. Dialect-specific full-text search lives in the
migration (PostgreSQL tsvector column / SQLite FTS5 table), not here.
"""

from __future__ import annotations

import enum
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# JSONB on PostgreSQL (indexable, compact), plain JSON text elsewhere.
JSONType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments INTEGER PRIMARY KEY; BigInteger elsewhere for high-volume tables.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSONType, list[Any]: JSONType}


class Condition(str, enum.Enum):
    NM = "NM"
    LP = "LP"
    MP = "MP"
    HP = "HP"
    DMG = "DMG"


class Finish(str, enum.Enum):
    normal = "normal"
    holo = "holo"
    reverse_holo = "reverse_holo"
    first_edition = "first_edition"
    unlimited = "unlimited"
    foil = "foil"


class ScanStatus(str, enum.Enum):
    """Server-side life of a scan."""

    accepted = "accepted"  # device accepted; applied to the collection
    pending = "pending"  # ambiguous; waiting for the resolver
    resolved = "resolved"  # resolver decided; applied to the collection
    needs_review = "needs_review"  # resolver unsure; waits for a person
    confirmed = "confirmed"  # a person confirmed the suggestion
    corrected = "corrected"  # a person chose another card
    rejected = "rejected"  # a person said: not a card / discard
    no_card = "no_card"  # device saw no identifiable card (kept for statistics)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str | None] = mapped_column(String(254))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    tokens: Mapped[list["ApiToken"]] = relationship(back_populates="user", cascade="all, delete-orphan")


class ApiToken(Base):
    """Bearer tokens are stored hashed (sha256); ``prefix`` lets a person recognise one in a list."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    user: Mapped[User] = relationship(back_populates="tokens")


class CardSet(Base):
    __tablename__ = "sets"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    game: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(200))
    series: Mapped[str] = mapped_column(String(200), default="")
    printed_total: Mapped[int | None] = mapped_column(Integer)
    total: Mapped[int | None] = mapped_column(Integer)
    release_date: Mapped[date | None] = mapped_column(Date)
    code: Mapped[str | None] = mapped_column(String(32))
    symbol_url: Mapped[str | None] = mapped_column(Text)
    logo_url: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    cards: Mapped[list["Card"]] = relationship(back_populates="set")


class Card(Base):
    """One printing."""

    __tablename__ = "cards"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    game: Mapped[str] = mapped_column(String(32), index=True)
    set_id: Mapped[str] = mapped_column(ForeignKey("sets.id"), index=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    number: Mapped[str] = mapped_column(String(32))
    printed_total: Mapped[int | None] = mapped_column(Integer)
    rarity: Mapped[str | None] = mapped_column(String(64), index=True)
    supertype: Mapped[str | None] = mapped_column(String(32), index=True)
    subtypes: Mapped[list[Any]] = mapped_column(default=list)
    types: Mapped[list[Any]] = mapped_column(default=list)
    hp: Mapped[int | None] = mapped_column(Integer)
    artist: Mapped[str | None] = mapped_column(String(200))
    national_dex: Mapped[list[Any]] = mapped_column(default=list)
    image_url_small: Mapped[str | None] = mapped_column(Text)
    image_url_large: Mapped[str | None] = mapped_column(Text)
    image_path: Mapped[str | None] = mapped_column(Text)
    illustration_id: Mapped[str] = mapped_column(String(64), index=True)
    facts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    set: Mapped[CardSet] = relationship(back_populates="cards")


class CatalogMeta(Base):
    """Which catalog version is loaded, per source (bundles and indexes compare against it)."""

    __tablename__ = "catalog_meta"
    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[str] = mapped_column(String(64))
    sets: Mapped[int] = mapped_column(Integer, default=0)
    cards: Mapped[int] = mapped_column(Integer, default=0)
    imported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Collection(Base):
    __tablename__ = "collections"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    share_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("user_id", "name"),)


class CollectionItem(Base):
    """A stack of identical cards in a collection: same printing, condition, finish and language."""

    __tablename__ = "collection_items"
    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"))
    card_id: Mapped[str] = mapped_column(ForeignKey("cards.id"), index=True)
    quantity: Mapped[int] = mapped_column(Integer, default=1)
    condition: Mapped[str] = mapped_column(String(8), default=Condition.NM.value)
    finish: Mapped[str] = mapped_column(String(32), default=Finish.normal.value)
    language: Mapped[str] = mapped_column(String(8), default="en")
    notes: Mapped[str] = mapped_column(Text, default="")
    acquired_at: Mapped[date | None] = mapped_column(Date)
    price_paid: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    card: Mapped[Card] = relationship()

    __table_args__ = (
        UniqueConstraint("collection_id", "card_id", "condition", "finish", "language", name="uq_collection_items_stack"),
        Index("ix_collection_items_collection_id_id", "collection_id", "id"),
    )


class Device(Base):
    __tablename__ = "devices"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the device_id
    name: Mapped[str] = mapped_column(String(200))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    collection_id: Mapped[int | None] = mapped_column(ForeignKey("collections.id", ondelete="SET NULL"))
    mqtt_username: Mapped[str | None] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(16), default="offline")
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    bundle_version: Mapped[str | None] = mapped_column(String(64))
    software_version: Mapped[str | None] = mapped_column(String(64))
    update_error: Mapped[str | None] = mapped_column(Text)  # last failed OTA attempt, as the device reported it
    outbox_depth: Mapped[int] = mapped_column(Integer, default=0)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    telemetry: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Scan(Base):
    __tablename__ = "scans"
    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    scan_id: Mapped[str] = mapped_column(String(36))
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    captured_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    decision: Mapped[str] = mapped_column(String(16))
    card_id: Mapped[str | None] = mapped_column(String(64))  # the device's answer
    score: Mapped[float] = mapped_column(Float, default=0.0)
    margin: Mapped[float] = mapped_column(Float, default=0.0)
    candidates: Mapped[list[Any]] = mapped_column(default=list)
    quad: Mapped[list[Any] | None] = mapped_column(JSONType)
    crop: Mapped[bytes | None] = mapped_column(LargeBinary)
    # the frame border the crop keeps around the quad (protocol Scan.crop_margin); 0 = exactly the quad
    crop_margin: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    # why the device did not trust the card (protocol Scan.quality_flag): a soft quality-gate failure (glare,
    # too_blurry, partially_out_of_view) or low_score (nothing matched on the device); always ambiguous
    quality_flag: Mapped[str | None] = mapped_column(String(32))
    # the device's calibrated confidence in its top candidate (protocol Scan.device_confidence); None from older
    # devices and bundles. Not ``confidence``, which is the final answer's (resolver or person)
    device_confidence: Mapped[float | None] = mapped_column(Float)
    bundle_version: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(16), index=True)
    resolved_card_id: Mapped[str | None] = mapped_column(String(64))  # the final answer (resolver or person)
    confidence: Mapped[float | None] = mapped_column(Float)
    collection_id: Mapped[int | None] = mapped_column(ForeignKey("collections.id", ondelete="SET NULL"))
    applied: Mapped[bool] = mapped_column(Boolean, default=False)  # counted into the collection
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reviewed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))

    __table_args__ = (
        UniqueConstraint("device_id", "scan_id", name="uq_scans_device_scan"),
        Index("ix_scans_device_id_seq", "device_id", "seq"),
    )


class DeadLetter(Base):
    """A payload ingest could not accept, with the reason. Ingest never stalls on bad input."""

    __tablename__ = "dead_letters"
    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    topic: Mapped[str] = mapped_column(Text)
    device_id: Mapped[str | None] = mapped_column(String(64), index=True)
    reason: Mapped[str] = mapped_column(Text)
    payload: Mapped[bytes] = mapped_column(LargeBinary)  # truncated to a bounded size


class Price(Base):
    __tablename__ = "prices"
    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    card_id: Mapped[str] = mapped_column(ForeignKey("cards.id"), index=True)
    finish: Mapped[str] = mapped_column(String(32), default=Finish.normal.value)
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    low: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    mid: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    market: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    price_date: Mapped[date] = mapped_column(Date)
    source: Mapped[str] = mapped_column(String(64), default="import")

    __table_args__ = (UniqueConstraint("card_id", "finish", "price_date", "source", name="uq_prices_point"),)


class SmartFolder(Base):
    """A saved filter, evaluated live."""

    __tablename__ = "smart_folders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    collection_id: Mapped[int | None] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    filter: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditLog(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    user_id: Mapped[int | None] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[int] = mapped_column(Integer)
    client: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


# --- web sessions and review hard examples (migration 0004_collections) ---


class WebSession(Base):
    """A browser login. The cookie carries a signed random token; only its sha256 is stored (revocable)."""

    __tablename__ = "web_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class HardExample(Base):
    """A scan a person had to correct: a labelled hard example for training and resolver evaluation."""

    __tablename__ = "hard_examples"
    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    scan_pk: Mapped[int | None] = mapped_column(ForeignKey("scans.id", ondelete="SET NULL"))
    scan_id: Mapped[str] = mapped_column(String(36), index=True)
    device_id: Mapped[str] = mapped_column(String(64))
    card_id: Mapped[str] = mapped_column(String(64), index=True)  # the right answer
    suggested_card_id: Mapped[str | None] = mapped_column(String(64))  # what the device/resolver thought
    candidates: Mapped[list[Any]] = mapped_column(default=list)
    crop_path: Mapped[str | None] = mapped_column(Text)  # relative to data_dir
    bundle_version: Mapped[str] = mapped_column(String(64), default="")
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# Lookup indexes added by 0004_collections (declared here so metadata and migrations agree).
Index("ix_scans_collection_id_status", Scan.collection_id, Scan.status)
Index("ix_prices_card_id_finish_date", Price.card_id, Price.finish, Price.price_date)
Index("ix_audit_log_user_id", AuditLog.user_id)
