"""Anti-rollback: every key row carries a ``generation`` under its MAC (keystore format 3).

``keys.generation`` is the keystore epoch of the change that last wrote the row (kms.service.keys
.generations). Existing rows get 1: their format-1 MACs stay valid (1 is the record's default, so
it is left out of the encoding), and ``kms upgrade`` verifies each of them before it writes the
format-2 MACs, the keystore id and the epoch (``kms_metadata``), which need the master key.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN with a constant default, never batch mode (see 0003 and 0004).
    op.add_column(
        "keys", sa.Column("generation", sa.BigInteger(), nullable=False, server_default="1")
    )


def downgrade() -> None:
    op.drop_column("keys", "generation")
