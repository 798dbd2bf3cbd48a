"""Reorganisations: the block hash of each posting, our finalize transaction
(re-sent when dropped), reposts, and the block hashes the coordinator follows.

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = (
    ("block_hash", sa.LargeBinary(32)),
    ("finalize_nonce", sa.Integer()),
    ("finalize_tx_hash", sa.LargeBinary(32)),
    ("finalize_raw_tx", sa.LargeBinary()),
    ("finalize_block", sa.Integer()),
    ("finalize_block_hash", sa.LargeBinary(32)),
)


def upgrade() -> None:
    with op.batch_alter_table("batches") as b:
        for name, kind in COLUMNS:
            b.add_column(sa.Column(name, kind, nullable=True))
        b.add_column(sa.Column("reposts", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "chain_blocks",
        sa.Column("number", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("chain_blocks")
    with op.batch_alter_table("batches") as b:
        b.drop_column("reposts")
        for name, _ in reversed(COLUMNS):
            b.drop_column(name)
