"""Key states, version policy, metadata and scheduled deletion (issue 8).

Adds to ``keys``: description, labels, min_decryption_version, min_available_version,
deletion_allowed, pending_deletion_at, use_attempts_while_pending and last_use_attempt. Every
existing row gets the defaults below, which are the defaults of ``KeyRecord``: the row-MAC
encoding leaves a field at its default out (kms.service.integrity), so the MACs written by the
previous release stay valid and nothing needs the master key. A database still without MACs
(from before 0002) is sealed afterwards by ``kms upgrade`` as before. The ``state`` column exists
since 0001 and holds ``enabled`` for every key.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


#: (name, type, server default) of each new column of ``keys``; NULL-able where the default is None.
COLUMNS = (
    ("description", sa.String(256), ""),
    ("labels", sa.Text(), "{}"),
    ("min_decryption_version", sa.Integer(), "1"),
    ("min_available_version", sa.Integer(), "1"),
    ("deletion_allowed", sa.Boolean(), sa.text("true")),
    ("pending_deletion_at", sa.DateTime(timezone=True), None),
    ("use_attempts_while_pending", sa.Integer(), "0"),
    ("last_use_attempt", sa.Text(), None),
)


def upgrade() -> None:
    # Plain ALTER TABLE ... ADD COLUMN, never batch mode: on SQLite, batch mode rebuilds ``keys``
    # (copy, DROP TABLE, rename) and the DROP deletes every key version through the foreign
    # key's ON DELETE CASCADE. Adding a column with a constant default is native on both SQLite
    # and PostgreSQL and rewrites nothing.
    for name, type_, default in COLUMNS:
        op.add_column(
            "keys",
            sa.Column(name, type_, nullable=default is None, server_default=default),
        )


def downgrade() -> None:
    for name, _, _ in reversed(COLUMNS):
        op.drop_column("keys", name)
