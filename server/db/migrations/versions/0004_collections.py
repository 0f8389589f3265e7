"""collections, web page and security: web sessions, review hard examples, lookup indexes

Revision ID: 0004
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0002"
branch_labels = None
depends_on = None

BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSONType = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "web_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_web_sessions_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_web_sessions_token_hash")),
    )
    with op.batch_alter_table("web_sessions") as b:
        b.create_index(b.f("ix_web_sessions_user_id"), ["user_id"], unique=False)

    op.create_table(
        "hard_examples",
        sa.Column("id", BigIntPK, nullable=False),
        sa.Column("scan_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("scan_id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("card_id", sa.String(length=64), nullable=False),
        sa.Column("suggested_card_id", sa.String(length=64), nullable=True),
        sa.Column("candidates", JSONType, nullable=False),
        sa.Column("crop_path", sa.Text(), nullable=True),
        sa.Column("bundle_version", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["scan_pk"], ["scans.id"], name=op.f("fk_hard_examples_scan_pk_scans"), ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_hard_examples_user_id_users"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hard_examples")),
    )
    with op.batch_alter_table("hard_examples") as b:
        b.create_index(b.f("ix_hard_examples_scan_id"), ["scan_id"], unique=False)
        b.create_index(b.f("ix_hard_examples_card_id"), ["card_id"], unique=False)

    # The review queue lists one collection's waiting scans; analytics/valuation read the newest price per card.
    op.create_index("ix_scans_collection_id_status", "scans", ["collection_id", "status"])
    op.create_index("ix_prices_card_id_finish_date", "prices", ["card_id", "finish", "price_date"])
    op.create_index("ix_audit_log_user_id", "audit_log", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_user_id", table_name="audit_log")
    op.drop_index("ix_prices_card_id_finish_date", table_name="prices")
    op.drop_index("ix_scans_collection_id_status", table_name="scans")
    with op.batch_alter_table("hard_examples") as b:
        b.drop_index(b.f("ix_hard_examples_card_id"))
        b.drop_index(b.f("ix_hard_examples_scan_id"))
    op.drop_table("hard_examples")
    with op.batch_alter_table("web_sessions") as b:
        b.drop_index(b.f("ix_web_sessions_user_id"))
    op.drop_table("web_sessions")
