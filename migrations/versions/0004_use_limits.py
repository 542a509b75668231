"""Rotation by use and by time: per-key limits, per-version use counters (issue 11).

``keys.rotation_period`` (seconds) and ``keys.max_encryptions_per_version`` are NULL in existing
rows: NULL is their default in ``KeyRecord``, and a field at its default is left out of the row
MAC's encoding, so every existing MAC stays valid without the master key.
``key_versions.encryptions`` counts encryptions reserved against the version's limit (a block a
process reserved and did not use counts as used), ``decryptions`` and ``last_used_at`` are
bookkeeping. The counters are not MAC'd (docs/security.md, Threat model).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: (table, name, type, server default) of each new column; NULL-able where the default is None.
COLUMNS = (
    ("keys", "rotation_period", sa.Integer(), None),
    ("keys", "max_encryptions_per_version", sa.BigInteger(), None),
    ("key_versions", "encryptions", sa.BigInteger(), "0"),
    ("key_versions", "decryptions", sa.BigInteger(), "0"),
    ("key_versions", "last_used_at", sa.DateTime(timezone=True), None),
)


def upgrade() -> None:
    # Plain ALTER TABLE ... ADD COLUMN, never batch mode (see 0003): on SQLite, batch mode
    # rebuilds the table (copy, DROP TABLE, rename), and dropping ``keys`` deletes every key
    # version through the foreign key's ON DELETE CASCADE. Adding a column with a constant (or
    # no) default is native on SQLite and PostgreSQL and rewrites nothing.
    for table, name, type_, default in COLUMNS:
        op.add_column(
            table, sa.Column(name, type_, nullable=default is None, server_default=default)
        )


def downgrade() -> None:
    for table, name, _, _ in reversed(COLUMNS):
        op.drop_column(table, name)
