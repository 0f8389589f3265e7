"""scans.quality_flag: the soft quality-gate failure (glare, slight blur, a sliver out of view) a device
identified the card despite; such scans are always ambiguous and the resolver decides them

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scans") as batch:
        batch.add_column(sa.Column("quality_flag", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scans") as batch:
        batch.drop_column("quality_flag")
