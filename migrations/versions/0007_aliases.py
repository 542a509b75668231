"""Named aliases: AWS KMS's ``alias/<name>``, each naming one key, under a MAC of its own.

A new table; no existing row changes, so a database of the previous release upgrades in place
and every existing MAC stays valid. On PostgreSQL the listing orders alias names in binary order
(``COLLATE "C"``), served by an index, as the key listing is (0005).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BINARY_ALIAS_NAME = "ix_aliases_alias_name_binary"


def upgrade() -> None:
    op.create_table(
        "aliases",
        sa.Column("alias_name", sa.String(256), nullable=False),
        sa.Column("key_id", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("mac", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("alias_name", name="pk_aliases"),
    )
    op.create_index("ix_aliases_key_id", "aliases", ["key_id"])
    if op.get_bind().dialect.name == "postgresql":
        op.create_index(BINARY_ALIAS_NAME, "aliases", [sa.text('alias_name COLLATE "C"')])


def downgrade() -> None:
    op.drop_table("aliases")
