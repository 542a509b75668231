"""What a database already holds, for the commands that make a keystore (``kms init``,
``kms restore``): they write only into a database that holds nothing.

- SQLite: every entry of ``sqlite_master`` (tables, views, indexes, triggers).
- PostgreSQL: every object that lives in a schema, in *any* schema but PostgreSQL's own
  (``pg_catalog``, ``information_schema``, ``pg_toast`` and the temporary schemas): relations
  (tables, partitioned tables, views, materialized views, sequences, foreign tables, composite
  types, indexes), types that stand on their own (enums, domains, ranges, base types; not the row
  type PostgreSQL makes for each relation, nor the array type it makes for each type), routines
  (functions, procedures, aggregates), collations, conversions, operators, operator classes and
  families, text search objects and extended statistics. Objects that an extension installed
  count too. Empty schemas do not: a schema made for kms (``search_path``) may exist beforehand.

So the rule is: no object outside PostgreSQL's own schemas, whoever owns it. kms's tables live in
the first schema of the search path, and a database that also holds another application's
objects, in that schema or another, is not kms's to make: a restore or an init beside them would
mix two owners' data in one database, and its backups and permissions with them.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

#: Each catalog that holds schema-qualified objects: (what its objects are called, the name
#: column, the schema column, the catalog with an optional condition).
_CATALOGS: tuple[tuple[str, str, str, str], ...] = (
    (
        "CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' "
        "WHEN 'S' THEN 'sequence' WHEN 'f' THEN 'foreign table' WHEN 'c' THEN 'type' "
        "WHEN 'i' THEN 'index' WHEN 'I' THEN 'index' ELSE 'table' END",
        "c.relname",
        "c.relnamespace",
        "pg_class c",
    ),
    (
        "'type'",
        "t.typname",
        "t.typnamespace",
        # Not a relation's row type (the relation is listed) nor the array type of another type.
        "pg_type t WHERE t.typrelid = 0 AND NOT EXISTS "
        "(SELECT 1 FROM pg_type e WHERE e.oid = t.typelem AND e.typarray = t.oid)",
    ),
    (
        "CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' ELSE 'function' END",
        "p.proname",
        "p.pronamespace",
        "pg_proc p",
    ),
    ("'collation'", "x.collname", "x.collnamespace", "pg_collation x"),
    ("'conversion'", "x.conname", "x.connamespace", "pg_conversion x"),
    ("'operator'", "x.oprname", "x.oprnamespace", "pg_operator x"),
    ("'operator class'", "x.opcname", "x.opcnamespace", "pg_opclass x"),
    ("'operator family'", "x.opfname", "x.opfnamespace", "pg_opfamily x"),
    ("'text search configuration'", "x.cfgname", "x.cfgnamespace", "pg_ts_config x"),
    ("'text search dictionary'", "x.dictname", "x.dictnamespace", "pg_ts_dict x"),
    ("'text search parser'", "x.prsname", "x.prsnamespace", "pg_ts_parser x"),
    ("'text search template'", "x.tmplname", "x.tmplnamespace", "pg_ts_template x"),
    ("'statistics object'", "x.stxname", "x.stxnamespace", "pg_statistic_ext x"),
)

#: PostgreSQL's own schemas, whose objects every database has.
_NOT_SYSTEM = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'"
)


def _postgres_query() -> str:
    selects = []
    for kind, name, schema, source in _CATALOGS:
        catalog, _, condition = source.partition(" WHERE ")
        extra = f" AND {condition}" if condition else ""
        selects.append(
            f"SELECT {kind} AS kind, n.nspname AS schema, {name} AS name FROM {catalog} "  # noqa: S608 - constants only
            f"JOIN pg_namespace n ON n.oid = {schema} WHERE {_NOT_SYSTEM}{extra}"
        )
    return " UNION ALL ".join(selects) + " ORDER BY schema, kind, name LIMIT :limit"


_POSTGRES_QUERY = _postgres_query()


def foreign_objects(conn: Connection, limit: int = 6) -> list[str]:
    """Up to ``limit`` objects the database holds, each as ``"<kind> <schema>.<name>"``
    (SQLite: ``"<kind> <name>"``), sorted; empty when the database holds nothing."""
    if conn.dialect.name == "postgresql":
        rows = conn.execute(text(_POSTGRES_QUERY), {"limit": limit}).all()
        return [f"{kind} {schema}.{name}" for kind, schema, name in rows]
    rows = conn.execute(
        text(
            "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
            "ORDER BY type <> 'table', type, name LIMIT :limit"
        ),
        {"limit": limit},
    ).all()
    return [f"{kind} {name}" for kind, name in rows]
