"""Reading a :class:`~gateway.catalog.model.Catalog` from the upstream's pg_catalog.

The gateway runs :data:`CATALOG_SQL` (five SELECTs, simple query protocol, text results)
over its own upstream connection and hands the rows to :func:`build_catalog`:

    results = run_simple_query(CATALOG_SQL)            # five result sets, in order
    catalog = build_catalog(dict(zip(CATALOG_QUERIES, results)))

or runs each of :data:`CATALOG_QUERIES` separately (any protocol; every column is text) and
keys the rows by query name. Every value is text or NULL, so no type knowledge is needed.

Cost: one pass over pg_class/pg_attribute/pg_proc, a few hundred kB of text; view
definitions are only printed for user views (system views stay opaque). Run the queries
on the same connection so that ``view_search_path`` matches how the views were printed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from .model import RELKINDS, SYSTEM_SCHEMAS, Catalog, Relation, parse_search_path

__all__ = ["CATALOG_QUERIES", "CATALOG_SQL", "CatalogLoadError", "build_catalog"]

#: name → SQL. Every column is text (or NULL).
CATALOG_QUERIES: Mapping[str, str] = {
    # current_schemas(true) is the effective path pg_get_viewdef used to decide which names
    # to qualify; the namespace list tells which search_path entries exist.
    "settings": (
        "SELECT pg_catalog.current_user()::text, pg_catalog.session_user()::text,"
        " pg_catalog.current_setting('search_path'),"
        " pg_catalog.array_to_json(pg_catalog.current_schemas(true))::text,"
        " pg_catalog.current_database()::text,"
        " (SELECT pg_catalog.json_agg(nspname) FROM pg_catalog.pg_namespace n"
        "   WHERE n.nspname !~ '^pg_(toast|temp_|toast_temp_)')::text"
    ),
    "relations": (
        "SELECT c.oid::text, n.nspname::text, c.relname::text, c.relkind::text,"
        " (SELECT pg_catalog.json_agg(pg_catalog.json_build_array(a.attnum, a.attname,"
        "                                                         a.atttypid)"
        "                             ORDER BY a.attnum)"
        "    FROM pg_catalog.pg_attribute a"
        "   WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)::text,"
        " CASE WHEN c.relkind IN ('v', 'm')"
        "       AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        "      THEN pg_catalog.pg_get_viewdef(c.oid, true) END,"
        " c.relrowsecurity::text"
        " FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r', 'v', 'm', 'f', 'p', 'S')"
        "  AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'"
    ),
    "functions": (
        "SELECT DISTINCT n.nspname::text, p.proname::text"
        " FROM pg_catalog.pg_proc p"
        " JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname !~ '^pg_(toast|temp_|toast_temp_)'"
    ),
    # A partition's or an INHERITS child's rows are its parents' rows (by OID).
    "inherits": (
        "SELECT i.inhrelid::text, i.inhparent::text FROM pg_catalog.pg_inherits i"
    ),
    # Operators are functions: one outside pg_catalog may do anything with its operands
    # (PostgreSQL never looks up operators in pg_temp).
    "operators": (
        "SELECT DISTINCT n.nspname::text, o.oprname::text"
        " FROM pg_catalog.pg_operator o"
        " JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace"
        " WHERE n.nspname <> 'pg_catalog' AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'"
    ),
}

#: All of :data:`CATALOG_QUERIES` as one simple-query string (one round trip; the result
#: sets come back in the order of ``CATALOG_QUERIES``).
CATALOG_SQL: str = ";\n".join(CATALOG_QUERIES.values()) + ";"

_BY_SQL = {sql: name for name, sql in CATALOG_QUERIES.items()}

Row = Sequence[str | None]


class CatalogLoadError(ValueError):
    """The rows don't look like the answer to CATALOG_QUERIES."""


class _Executes(Protocol):
    def execute(self, query: Any) -> Any: ...  # a cursor with fetchall()


def read_catalog(conn: _Executes) -> Catalog:
    """The snapshot read over a connection whose ``execute(sql).fetchall()`` gives text
    rows (psycopg's): for tools and tests. The gateway reads it over its own upstream
    link, in one round trip (:data:`CATALOG_SQL`)."""
    return build_catalog({name: conn.execute(sql).fetchall()
                          for name, sql in CATALOG_QUERIES.items()})


def build_catalog(rows_by_query: Mapping[str, Sequence[Row]]) -> Catalog:
    """Build a snapshot from the text rows of :data:`CATALOG_QUERIES`.

    Keys are query names (``settings``, ``relations``, ``functions``, ``inherits``,
    ``operators``) or the queries' SQL.
    """
    rows: dict[str, Sequence[Row]] = {}
    for key, value in rows_by_query.items():
        name = key if key in CATALOG_QUERIES else _BY_SQL.get(key)
        if name is None:
            raise CatalogLoadError(f"unknown catalog query {key[:60]!r}")
        rows[name] = value
    missing = [name for name in CATALOG_QUERIES if name not in rows]
    if missing:
        raise CatalogLoadError(f"missing catalog rows for {', '.join(missing)}")
    try:
        return _build(rows)
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        if isinstance(exc, CatalogLoadError):
            raise
        raise CatalogLoadError(f"malformed catalog rows: {exc}") from exc


def _ancestors(oid: int, parents: Mapping[int, list[int]],
               names: Mapping[int, tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Every relation `oid` inherits from, nearest first (breadth first; once each)."""
    out: dict[int, None] = {}
    frontier = parents.get(oid, [])
    while frontier:
        nxt: list[int] = []
        for p in frontier:
            if p not in out and p != oid:
                out[p] = None
                nxt += parents.get(p, [])
        frontier = nxt
    return tuple(names[p] for p in out if p in names)


def _build(rows: Mapping[str, Sequence[Row]]) -> Catalog:
    settings = rows["settings"]
    if len(settings) != 1:
        raise CatalogLoadError("settings query must return exactly one row")
    current_user, _session_user, search_path, schemas_json, database, namespaces = settings[0]
    default_path = parse_search_path(search_path or "")
    effective = [s for s in json.loads(schemas_json or "[]")
                 if not s.startswith("pg_temp_")]
    schemas = json.loads(namespaces or "[]")

    parents: dict[int, list[int]] = {}
    for child, parent in rows["inherits"]:
        if child is not None and parent is not None:
            parents.setdefault(int(child), []).append(int(parent))
    named: dict[int, tuple[str, str]] = {
        int(oid): (schema, name) for oid, schema, name, *_ in rows["relations"]
        if oid is not None and schema is not None and name is not None}

    relations = []
    for oid, schema, name, relkind, columns_json, view_sql, rls in rows["relations"]:
        kind = RELKINDS.get(relkind or "")
        if kind is None or schema is None or name is None:
            continue
        attnums, names, types = [], [], []
        for attnum, attname, typid in json.loads(columns_json or "[]") or ():
            attnums.append(int(attnum))
            names.append(attname)
            types.append(int(typid))
        if schema in SYSTEM_SCHEMAS:
            view_sql = None
        relations.append(Relation(
            schema=schema, name=name, relkind=kind, columns=tuple(names), oid=int(oid or 0),
            view_sql=view_sql, attnums=tuple(attnums), type_oids=tuple(types),
            ancestors=_ancestors(int(oid or 0), parents, named),
            row_security=rls in ("true", "t"),
        ))

    functions: dict[str, set[str]] = {}
    for schema, name in rows["functions"]:
        if schema is not None and name is not None:
            functions.setdefault(name, set()).add(schema)

    operators: dict[str, set[str]] = {}
    for schema, name in rows["operators"]:
        if schema is not None and name is not None:
            operators.setdefault(name, set()).add(schema)

    return Catalog(
        relations,
        functions,
        operators=operators,
        schemas=schemas,
        default_search_path=default_path,
        view_search_path=effective,
        user=current_user,
        database=database,
    )
