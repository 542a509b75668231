"""Row MACs: keys.mac and key_versions.mac.

The columns are nullable because a migration cannot compute a MAC: that needs the master key.
``kms upgrade`` runs this migration and then, with the passphrase, computes the MAC of every
existing row (kms.upgrade.upgrade_database); until then kms refuses to serve the database.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("keys") as batch:
        batch.add_column(sa.Column("mac", sa.LargeBinary(), nullable=True))
    with op.batch_alter_table("key_versions") as batch:
        batch.add_column(sa.Column("mac", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("key_versions") as batch:
        batch.drop_column("mac")
    with op.batch_alter_table("keys") as batch:
        batch.drop_column("mac")
