"""scans.crop_margin: the frame border a device's ambiguous-scan crop keeps around the card's quad, so the
resolver can find a card edge the detector drew short (0 for older scans: the crop is exactly the quad)

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scans") as batch:
        batch.add_column(sa.Column("crop_margin", sa.Float(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("scans") as batch:
        batch.drop_column("crop_margin")
