"""Indexes for the key listing: key_id in binary order, and state with key_id.

A key listing pages by key_id and reaches the keys of the caller's scope by seeking the range of
each glob's literal prefix (kms.store.patterns). That range is exact only where strings sharing a
prefix sort together, which binary order guarantees and a linguistic collation (``en_US``) does
not; and PostgreSQL uses an index for such a range only in the index's own collation. So the
listing orders and compares ``key_id COLLATE "C"``, served by this index whatever the database's
collation. SQLite compares text in binary order already: its primary key's index serves it.

A listing filtered by state (``?state=pending_deletion``) seeks ``(state, key_id)`` the same way,
on both databases, instead of reading every key of the scope to find the few in that state.
Building the indexes reads the table once; no row changes.

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

BINARY_KEY_ID = "ix_keys_key_id_binary"
STATE_KEY_ID = "ix_keys_state_key_id"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_index(BINARY_KEY_ID, "keys", [sa.text('key_id COLLATE "C"')])
        op.create_index(STATE_KEY_ID, "keys", [sa.text("state"), sa.text('key_id COLLATE "C"')])
    else:
        op.create_index(STATE_KEY_ID, "keys", ["state", "key_id"])


def downgrade() -> None:
    op.drop_index(STATE_KEY_ID, table_name="keys")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index(BINARY_KEY_ID, table_name="keys")
