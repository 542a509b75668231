"""An index on ``keys.key_id`` in binary order, on PostgreSQL: the key listing's order.

A key listing pages by key_id and reaches the keys of the caller's scope by seeking the range of
each glob's literal prefix (kms.store.patterns). That range is exact only where strings sharing a
prefix sort together, which binary order guarantees and a linguistic collation (``en_US``) does
not; and PostgreSQL uses an index for such a range only in the index's own collation. So the
listing orders and compares ``key_id COLLATE "C"``, served by this index whatever the database's
collation. SQLite compares text in binary order already (its primary key's index serves it):
nothing to do there. Building the index reads the table once; no row changes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

INDEX = "ix_keys_key_id_binary"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_index(INDEX, "keys", [sa.text('key_id COLLATE "C"')])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index(INDEX, table_name="keys")
