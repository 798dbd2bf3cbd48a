"""Chain cursor: the last block the event watcher has read.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chain_cursor",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("block", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("chain_cursor")
