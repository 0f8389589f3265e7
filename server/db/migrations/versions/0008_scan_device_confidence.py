"""scans.device_confidence: the device's calibrated confidence in its top candidate (protocol
Scan.device_confidence), so a reviewer sees how sure the device was (NULL for older scans)

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scans") as batch:
        batch.add_column(sa.Column("device_confidence", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scans") as batch:
        batch.drop_column("device_confidence")
