"""Encryptions made, beside encryptions reserved: ``key_versions.encryptions_used``.

``key_versions.encryptions`` counts what processes reserved against a version's limit, in blocks
(``kms.encryption_block``, 1,000 by default): one encryption shows as a whole block there.
``encryptions_used`` counts the encryptions made, flushed by each process with its decryptions
(kms.service.keys.limits), for /metrics. Bookkeeping like the other counters, not MAC'd. Existing
rows start at 0: the encryptions made before the upgrade are not known.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN with a constant default, never batch mode (see 0003 and 0004).
    op.add_column(
        "key_versions",
        sa.Column("encryptions_used", sa.BigInteger(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_column("key_versions", "encryptions_used")
