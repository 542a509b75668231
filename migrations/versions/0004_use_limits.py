"""Rotation by use and by time: per-key limits, per-version use counters.

``keys.rotation_period`` (seconds) and ``keys.max_encryptions_per_version`` are NULL in existing
rows: NULL is their default in ``KeyRecord``, and a field at its default is left out of the row
MAC's encoding, so every existing MAC stays valid without the master key.
``key_versions.encryptions`` counts encryptions reserved against the version's limit (a block a
process reserved and did not use counts as used), ``decryptions`` and ``last_used_at`` are
bookkeeping. The counters are not MAC'd (README, Threat model).

Revision ID: 0004
Revises: 0002 (the lead re-chains it onto 0003 at merge)
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("keys") as batch:
        batch.add_column(sa.Column("rotation_period", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_encryptions_per_version", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("key_versions") as batch:
        batch.add_column(
            sa.Column("encryptions", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("decryptions", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("key_versions") as batch:
        batch.drop_column("last_used_at")
        batch.drop_column("decryptions")
        batch.drop_column("encryptions")
    with op.batch_alter_table("keys") as batch:
        batch.drop_column("max_encryptions_per_version")
        batch.drop_column("rotation_period")
