"""Table definitions. Alembic's env.py imports ``metadata`` from here and nothing else."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData(
    naming_convention={
        "pk": "pk_%(table_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

#: One row per key. ``latest_version`` is bumped with an atomic UPDATE on rotation, so concurrent
#: rotations serialise on this row and never hand out the same version twice. ``incarnation``
#: changes when a key is recreated, so cached material of the old key can never be mistaken for
#: the new key's. ``mac`` authenticates the row's security-relevant fields (kms.service.integrity);
#: NULL only in a database not yet upgraded with ``kms upgrade``.
#:
#: Key states and version policy (migration 0003): ``state`` is enabled, disabled or
#: pending_deletion; versions below ``min_available_version`` were destroyed (trim), versions below
#: ``min_decryption_version`` are fenced; ``pending_deletion_at`` is when a pending key becomes due
#: for destruction. ``labels`` is canonical JSON (sorted keys). Every one of these is under the
#: MAC. ``use_attempts_while_pending`` and ``last_use_attempt`` (JSON) are bookkeeping for the
#: operator, written without the MAC (kms.service.integrity.NOT_AUTHENTICATED). The server
#: defaults are what existing rows get, and equal the record's defaults, so their MACs stay valid.
keys = Table(
    "keys",
    metadata,
    Column("key_id", String(128), primary_key=True),
    Column("purpose", String(16), nullable=False),
    Column("algorithm", String(32), nullable=False),
    Column("state", String(16), nullable=False),
    Column("latest_version", Integer, nullable=False),
    Column("incarnation", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("mac", LargeBinary, nullable=True),
    Column("description", String(256), nullable=False, server_default=""),
    Column("labels", Text, nullable=False, server_default="{}"),
    Column("min_decryption_version", Integer, nullable=False, server_default="1"),
    Column("min_available_version", Integer, nullable=False, server_default="1"),
    Column("deletion_allowed", Boolean, nullable=False, server_default=text("true")),
    Column("pending_deletion_at", DateTime(timezone=True), nullable=True),
    Column("use_attempts_while_pending", Integer, nullable=False, server_default="0"),
    Column("last_use_attempt", Text, nullable=True),
    # Seconds; NULL: no rotation by time. Covered by ``mac``.
    Column("rotation_period", Integer, nullable=True),
    # NULL: the configured default (kms.max_encryptions_per_version). Covered by ``mac``.
    Column("max_encryptions_per_version", BigInteger, nullable=True),
    # The keystore epoch of the change that last wrote the row (migration 0006). Covered by
    # ``mac``: a node refuses a row older than one it has seen (kms.service.keys.generations).
    Column("generation", BigInteger, nullable=False, server_default="1"),
)

#: The key listing's indexes (migration 0005): its order on PostgreSQL, binary whatever the
#: database's collation (SQLite's primary key index is in binary order already), and a state
#: filter's seek on both.
BINARY = {"key_id": 'COLLATE "C"'}
Index("ix_keys_key_id_binary", keys.c.key_id, postgresql_ops=BINARY).ddl_if(dialect="postgresql")
Index("ix_keys_state_key_id", keys.c.state, keys.c.key_id, postgresql_ops=BINARY)

#: One row per key version: the secret wrapped under the master key (AAD-bound to key_id,
#: version, purpose, algorithm and incarnation) and, for signing keys, the public key as DER.
#: ``mac`` binds the wrapped key and the public key to key_id, version, incarnation and algorithm.
key_versions = Table(
    "key_versions",
    metadata,
    Column(
        "key_id",
        String(128),
        ForeignKey("keys.key_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("version", Integer, primary_key=True),
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("public_key", LargeBinary, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("mac", LargeBinary, nullable=True),
    # Use counters: bookkeeping, not covered by ``mac`` (docs/security.md, Threat model).
    # ``encryptions`` counts what processes reserved against the limit, used or not
    # (kms.service.keys.limits); ``encryptions_used`` the encryptions made (migration 0008).
    Column("encryptions", BigInteger, nullable=False, server_default="0"),
    Column("decryptions", BigInteger, nullable=False, server_default="0"),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
    Column("encryptions_used", BigInteger, nullable=False, server_default="0"),
)

#: Named aliases (migration 0007): AWS KMS's ``alias/<name>``, each naming one key. ``mac``
#: binds the name to the key (and to the row's ``generation``, the keystore epoch of the change
#: that wrote it), so a row re-pointed, renamed or replayed behind kms's back is refused
#: (kms.service.keys.aliases). ``key_id`` has no foreign key: destroying a key deletes its aliases
#: in the same transaction (kms.store.aliases), on SQLite too, whose foreign keys are not enforced.
aliases = Table(
    "aliases",
    metadata,
    Column("alias_name", String(256), primary_key=True),
    Column("key_id", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("generation", BigInteger, nullable=False),
    Column("mac", LargeBinary, nullable=False),
)
#: A key's aliases (ListAliases with KeyId, destroying a key), and on PostgreSQL the listing's
#: binary order, as for ``keys`` (migration 0005).
Index("ix_aliases_key_id", aliases.c.key_id)
Index(
    "ix_aliases_alias_name_binary",
    aliases.c.alias_name,
    postgresql_ops={"alias_name": 'COLLATE "C"'},
).ddl_if(dialect="postgresql")

#: Keystore-wide values: the KDF parameters (with salt), the init marker, the keystore id and the
#: keystore epoch (kms.store.records names them).
kms_metadata = Table(
    "kms_metadata",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", LargeBinary, nullable=False),
)
