"""Catalog snapshot (gateway/catalog): the loader SQL against the real server, name
resolution compared with the server's own, classification tags."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import psycopg
import pytest

from gateway.catalog import (
    CATALOG_QUERIES,
    CATALOG_SQL,
    Catalog,
    CatalogLoadError,
    Relation,
    apply_tags,
    build_catalog,
    format_search_path,
    parse_search_path,
    read_catalog,
)

if TYPE_CHECKING:
    from tests.conftest import PgBackend

SETUP = r"""
CREATE SCHEMA IF NOT EXISTS cat_alt;
CREATE TABLE IF NOT EXISTS cat_alt.cards (id int, pan text, branch text);
CREATE TABLE IF NOT EXISTS cat_alt.cat_only (x int);
CREATE TABLE IF NOT EXISTS public.cat_dropped (a int, b text, c text);
ALTER TABLE public.cat_dropped DROP COLUMN IF EXISTS b;
CREATE TABLE IF NOT EXISTS public."Cat Mixed" ("Col A" int, plain text);
CREATE OR REPLACE VIEW public.cat_card_view AS SELECT id, pan FROM cards WHERE id > 0;
CREATE OR REPLACE VIEW cat_alt.cat_alt_view AS SELECT c.id, c.branch FROM cat_alt.cards c;
CREATE MATERIALIZED VIEW IF NOT EXISTS cat_alt.cat_mv AS SELECT count(*) AS n FROM cards;
CREATE TABLE IF NOT EXISTS public.cat_parted (id int, region text) PARTITION BY LIST (region);
CREATE TABLE IF NOT EXISTS public.cat_parted_eu PARTITION OF public.cat_parted FOR VALUES IN ('eu');
CREATE OR REPLACE FUNCTION cat_alt.upper(int) RETURNS int LANGUAGE sql AS 'select $1';
CREATE OR REPLACE FUNCTION cat_alt.cat_fn() RETURNS int LANGUAGE sql AS 'select 1';
"""


@pytest.fixture(scope="module")
def db(pg: PgBackend) -> PgBackend:
    pg.server.psql(SETUP, dbname="payments", user=pg.service.name)
    return pg


@pytest.fixture
def conn(db: PgBackend) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db.dsn(db.service), autocommit=True) as c:
        yield c


def load(conn: psycopg.Connection) -> Catalog:
    return read_catalog(conn)


@pytest.fixture(scope="module")
def catalog(db: PgBackend) -> Catalog:
    with psycopg.connect(db.dsn(db.service), autocommit=True) as c:
        return load(c)


def server_resolves(conn: psycopg.Connection, name: str, search_path: str) -> str | None:
    """Schema of the relation the server picks for ``name`` under ``search_path``."""
    with conn.transaction(force_rollback=True):
        conn.execute(f"SET LOCAL search_path = {search_path}")
        row = conn.execute(
            "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.oid = to_regclass(%s)", (name,)).fetchone()
    return row[0] if row else None


# -- the loader -------------------------------------------------------------------------------


def test_loader_reads_relations_with_columns_and_oids(catalog: Catalog,
                                                      conn: psycopg.Connection) -> None:
    cards = catalog.relation("public", "cards")
    assert cards is not None
    assert (cards.relkind, cards.columns) == ("table", ("id", "holder", "pan", "cvv", "expiry"))
    assert cards.oid == conn.execute("SELECT 'public.cards'::regclass::oid").fetchone()[0]
    assert cards.attnums == (1, 2, 3, 4, 5)
    assert cards.type_oids[0] == 23 and cards.type_oids[2] == 25  # int4, text
    alt = catalog.relation("cat_alt", "cards")
    assert alt is not None and alt.columns == ("id", "pan", "branch")
    assert catalog.relation("public", "cat_parted").relkind == "partitioned"
    assert catalog.relation("public", "cat_parted_eu").relkind == "table"
    assert catalog.relation("public", "Cat Mixed").columns == ("Col A", "plain")
    assert catalog.relation("public", "cards_id_seq").relkind == "sequence"
    # the catalog's own relations are there too (opaque system views included)
    assert catalog.relation("pg_catalog", "pg_class").relkind == "table"
    pg_roles = catalog.relation("pg_catalog", "pg_roles")
    assert pg_roles.relkind == "view" and pg_roles.view_sql is None
    assert catalog.relation("information_schema", "tables").relkind == "view"
    assert all(not r.schema.startswith(("pg_toast", "pg_temp")) for r in catalog.relations())


def test_dropped_columns_and_attnums(catalog: Catalog) -> None:
    rel = catalog.relation("public", "cat_dropped")
    assert rel.columns == ("a", "c") and rel.attnums == (1, 3)
    assert catalog.column_for_attnum(rel.oid, 3) == ("public", "cat_dropped", "c")
    assert catalog.column_for_attnum(rel.oid, 2) is None
    assert catalog.relation_by_oid(rel.oid) is rel


def test_views_carry_their_definition(catalog: Catalog) -> None:
    view = catalog.relation("public", "cat_card_view")
    assert view.relkind == "view" and view.columns == ("id", "pan")
    assert "FROM cards" in view.view_sql and "WHERE id > 0" in view.view_sql
    alt_view = catalog.relation("cat_alt", "cat_alt_view")
    assert "cat_alt.cards" in alt_view.view_sql  # not on the loader's path: qualified
    mv = catalog.relation("cat_alt", "cat_mv")
    assert mv.relkind == "matview" and "count(*)" in mv.view_sql
    # unqualified names in definitions resolve with the path they were printed with
    assert catalog.view_search_path == ("pg_catalog", "public")


def test_functions_and_settings(catalog: Catalog) -> None:
    assert catalog.function_schemas("upper") >= {"pg_catalog", "cat_alt"}
    assert catalog.function_schemas("cat_fn") == {"cat_alt"}
    assert "pg_catalog" in catalog.function_schemas("query_to_xml")
    assert catalog.default_search_path == ("$user", "public")
    assert (catalog.user, catalog.database) == ("pgwarden_svc", "payments")
    assert {"public", "cat_alt", "pg_catalog", "information_schema"} <= catalog.schemas


def test_catalog_sql_in_one_round_trip(catalog: Catalog, conn: psycopg.Connection) -> None:
    cur = conn.execute(CATALOG_SQL)
    results = []
    while True:
        results.append(cur.fetchall())
        if not cur.nextset():
            break
    assert len(results) == len(CATALOG_QUERIES)
    one = build_catalog(dict(zip(CATALOG_QUERIES, results, strict=True)))
    assert {(r.schema, r.name, r.columns, r.view_sql) for r in one.relations()} == \
        {(r.schema, r.name, r.columns, r.view_sql) for r in catalog.relations()}
    assert one.generation != catalog.generation
    # keyed by SQL text works too
    by_sql = build_catalog({CATALOG_QUERIES[name]: rows
                            for name, rows in zip(CATALOG_QUERIES, results, strict=True)})
    assert by_sql.relation("public", "cards") == catalog.relation("public", "cards")


def test_catalog_sql_runs_with_simple_protocol(db: PgBackend) -> None:
    out = db.server.psql(CATALOG_SQL, dbname="payments", user=db.service.name)
    assert "cat_card_view" in out


def test_build_catalog_rejects_bad_input() -> None:
    with pytest.raises(CatalogLoadError, match="missing"):
        build_catalog({"settings": []})
    with pytest.raises(CatalogLoadError, match="unknown"):
        build_catalog({"SELECT 1": []})
    with pytest.raises(CatalogLoadError):
        build_catalog({"settings": [("u", "u", '"$user"', "not json", "db", "[]")],
                       "relations": [], "functions": []})


def test_refresh_after_ddl_sees_new_objects(conn: psycopg.Connection) -> None:
    before = load(conn)
    conn.execute("DROP TABLE IF EXISTS cat_alt.cat_new; CREATE TABLE cat_alt.cat_new (z int)")
    try:
        after = load(conn)
    finally:
        conn.execute("DROP TABLE cat_alt.cat_new")
    assert before.relation("cat_alt", "cat_new") is None
    assert after.relation("cat_alt", "cat_new").columns == ("z",)
    assert after.generation > before.generation


# -- resolution, compared with the server -----------------------------------------------------


@pytest.mark.parametrize(("name", "search_path"), [
    ("cards", '"$user", public'),
    ("cards", "cat_alt, public"),
    ("cards", "public, cat_alt"),
    ("cat_only", '"$user", public'),
    ("cat_only", "public, cat_alt"),
    ("pg_class", "cat_alt, public"),
    ("pg_class", "public, pg_catalog"),
    ("cat_card_view", "cat_alt"),
    ("cat_card_view", "cat_alt, public"),
    ("cards", "nonexistent, cat_alt"),
    ("Cat Mixed", "public"),
])
def test_resolution_matches_server(catalog: Catalog, conn: psycopg.Connection, name: str,
                                   search_path: str) -> None:
    quoted = '"' + name + '"' if name != name.lower() or " " in name else name
    expected = server_resolves(conn, quoted, search_path)
    rel = catalog.resolve_relation(None, name, parse_search_path(search_path))
    assert (rel.schema if rel else None) == expected


def test_pg_catalog_listed_late_lets_user_tables_shadow_it(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS cat_alt.pg_settings (x int)")
    try:
        cat = load(conn)
        for path in ("cat_alt, pg_catalog", "cat_alt"):
            expected = server_resolves(conn, "pg_settings", path)
            got = cat.resolve_relation(None, "pg_settings", parse_search_path(path))
            assert got.schema == expected
        assert expected == "pg_catalog"  # not listed: pg_catalog first
        assert server_resolves(conn, "pg_settings", "cat_alt, pg_catalog") == "cat_alt"
    finally:
        conn.execute("DROP TABLE cat_alt.pg_settings")


def test_temp_table_shadowing_matches_server(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TEMP TABLE cards (pan text, scratch int)")
    assert server_resolves(conn, "cards", '"$user", public').startswith("pg_temp_")
    cat = load(conn)  # loaded in the very session that owns the temp table
    assert all(not r.temp and not r.schema.startswith("pg_temp") for r in cat.relations())
    temp = Relation("pg_temp", "cards", "table", ("pan", "scratch"), temp=True)
    session = cat.with_temp([temp])
    path = ("$user", "public")
    assert session.resolve_relation(None, "cards", path) is temp
    assert [r.schema for r in session.relation_candidates(None, "cards", path)] == \
        ["pg_temp", "public"]
    assert session.resolve_relation("pg_temp", "cards", path) is temp
    assert session.resolve_relation("public", "cards", path).schema == "public"
    # pg_temp listed explicitly is searched at its position
    assert server_resolves(conn, "cards", "public, pg_temp") == "public"
    assert session.resolve_relation(None, "cards", ("public", "pg_temp")).schema == "public"
    assert session.relation_candidates(None, "cards", ("public", "pg_temp"))[0].schema == \
        "public"
    # the base snapshot is unchanged and shares its caches
    assert cat.resolve_relation(None, "cards", path).schema == "public"
    assert session.cache is cat.cache and session.generation == cat.generation
    assert session.base.temp_relations == {}


def test_dollar_user_resolution() -> None:
    cat = Catalog([Relation("alice", "t", "table", ("a",)), Relation("public", "t", "table",
                                                                    ("b",))],
                  {"f": {"alice", "public"}}, schemas={"alice", "public", "pg_catalog"},
                  user="svc")
    path = ("$user", "public")
    assert cat.resolve_relation(None, "t", path).schema == "public"  # no schema "svc"
    assert cat.resolve_relation(None, "t", path, user="alice").schema == "alice"
    assert cat.resolve_function(None, "f", path, user="alice") == "alice.f"
    assert cat.creation_schema(path, user="alice") == "alice"
    assert cat.creation_schema(path) == "public"


def test_operators_outside_pg_catalog(conn: psycopg.Connection) -> None:
    """The loader lists the operators defined outside pg_catalog; `foreign_operator` says
    whether a name may resolve to one along the paths a session may be on."""
    conn.execute("DROP SCHEMA IF EXISTS cat_ops CASCADE; CREATE SCHEMA cat_ops; "
                 "CREATE OPERATOR cat_ops.=== (LEFTARG = int, RIGHTARG = int, "
                 "FUNCTION = pg_catalog.int4eq); "
                 "CREATE OPERATOR cat_ops.= (LEFTARG = text, RIGHTARG = text, "
                 "FUNCTION = pg_catalog.texteq)")
    try:
        cat = load(conn)
    finally:
        conn.execute("DROP SCHEMA cat_ops CASCADE")
    default = cat.default_search_path
    assert cat.foreign_operators(None, "=", default) == ()  # cat_ops is not on the path
    assert cat.foreign_operators(None, "=", ("public", "cat_ops")) == ("cat_ops.=",)
    assert cat.foreign_operators(None, "===", ("cat_ops",)) == ("cat_ops.===",)
    assert cat.foreign_operators(None, "<", ("cat_ops",)) == ()  # it defines no <
    assert cat.foreign_operators("cat_ops", "<", default) == ("cat_ops.<",)  # named
    assert cat.foreign_operators("pg_catalog", "=", ("cat_ops",)) == ()
    assert cat.with_paths([("cat_ops",)]).foreign_operators(None, "=", default) == (
        "cat_ops.=",)
    assert cat.with_paths([], any_path=True).foreign_operators(None, "=", default) == (
        "cat_ops.=",)
    assert cat.foreign_operators(None, "=", ("pg_temp", "public")) == ()
    # the policy sees them with the statement's functions (an operator is one)
    from gateway.sql import SessionSqlState, analyze
    (info,) = analyze("select 1 where 1 operator(cat_ops.===) 1", cat)
    assert "cat_ops.===" in info.functions
    (info,) = analyze("select 'a' = 'b'", cat,
                      session=SessionSqlState(search_path=("public", "cat_ops")))
    assert "cat_ops.=" in info.functions
    (info,) = analyze("select 'a' = 'b'", cat)
    assert not [f for f in info.functions if f.startswith("cat_ops.")]


def test_ancestors_of_partitions_and_inheritance_children(conn: psycopg.Connection) -> None:
    conn.execute("DROP TABLE IF EXISTS cat_top CASCADE; DROP TABLE IF EXISTS cat_other CASCADE;"
                 "CREATE TABLE cat_top (a int, b text) PARTITION BY RANGE (a);"
                 "CREATE TABLE cat_mid PARTITION OF cat_top FOR VALUES FROM (0) TO (10)"
                 "  PARTITION BY RANGE (a);"
                 "CREATE TABLE cat_leaf PARTITION OF cat_mid FOR VALUES FROM (0) TO (5);"
                 "CREATE TABLE cat_other (c int);"
                 "CREATE TABLE cat_both (d int) INHERITS (cat_other);")
    try:
        cat = load(conn)
    finally:
        conn.execute("DROP TABLE cat_top CASCADE; DROP TABLE cat_other CASCADE")
    assert cat.relation("public", "cat_top").ancestors == ()
    assert cat.relation("public", "cat_mid").ancestors == (("public", "cat_top"),)
    assert cat.relation("public", "cat_leaf").ancestors == (("public", "cat_mid"),
                                                            ("public", "cat_top"))
    assert cat.relation("public", "cat_both").ancestors == (("public", "cat_other"),)
    from gateway.sql import analyze
    (info,) = analyze("select b from cat_leaf", cat)
    assert {(c.schema, c.table, c.name) for c in info.columns} == {
        ("public", "cat_leaf", "b"), ("public", "cat_mid", "b"), ("public", "cat_top", "b")}


def test_function_resolution(catalog: Catalog) -> None:
    default = catalog.default_search_path
    assert catalog.resolve_function(None, "upper", default) == "pg_catalog.upper"
    assert catalog.function_candidates(None, "upper", ("cat_alt", "public")) == \
        ("pg_catalog.upper", "cat_alt.upper")
    assert catalog.function_candidates(None, "upper", ("cat_alt", "pg_catalog")) == \
        ("cat_alt.upper", "pg_catalog.upper")
    assert catalog.resolve_function(None, "cat_fn", default) == "public.cat_fn"  # unknown
    assert catalog.function_candidates(None, "cat_fn", default) == ()
    assert catalog.resolve_function(None, "cat_fn", ("cat_alt",)) == "cat_alt.cat_fn"
    assert catalog.resolve_function("cat_alt", "nope", default) == "cat_alt.nope"
    assert catalog.resolve_function(None, "nope", ("nonexistent",)) == "pg_catalog.nope"
    # temp schemas are never searched for functions
    assert catalog.function_candidates(None, "upper", ("pg_temp", "cat_alt")) == \
        ("pg_catalog.upper", "cat_alt.upper")


def test_function_resolution_matches_server(catalog: Catalog, conn: psycopg.Connection) -> None:
    with conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL search_path = cat_alt, pg_catalog")
        oid = conn.execute("SELECT 'upper(int)'::regprocedure::oid").fetchone()[0]
        schema = conn.execute("SELECT pronamespace::regnamespace::text FROM pg_proc"
                              " WHERE oid = %s", (oid,)).fetchone()[0]
    assert schema == "cat_alt"
    assert catalog.function_candidates(None, "upper", ("cat_alt", "pg_catalog"))[0] == \
        "cat_alt.upper"


# -- search_path text -----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "parsed"), [
    ('"$user", public', ("$user", "public")),
    ("$user,public", ("$user", "public")),
    ('Sales, "Mixed Case", "with ""quote"""', ("sales", "Mixed Case", 'with "quote"')),
    ("  ", ()),
    ("pg_catalog", ("pg_catalog",)),
])
def test_parse_search_path(text: str, parsed: tuple[str, ...]) -> None:
    assert parse_search_path(text) == parsed
    assert parse_search_path(format_search_path(parsed)) == parsed


@pytest.mark.parametrize("text", ['"open', "a,,b", "a b", ",a", '""'])
def test_parse_search_path_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        parse_search_path(text)


def test_server_search_path_round_trip(conn: psycopg.Connection) -> None:
    with conn.transaction(force_rollback=True):
        conn.execute("""SET LOCAL search_path = "Mixed Case", cat_alt, "$user" """)
        shown = conn.execute("SHOW search_path").fetchone()[0]
    assert parse_search_path(shown) == ("Mixed Case", "cat_alt", "$user")


# -- classification -----------------------------------------------------------------------------


def test_apply_tags() -> None:
    classification = {"public.cards.pan": ["pan", "pci"], "public.cards.cvv": ["cvv"],
                      "other.cards.pan": ["x"]}
    columns = [
        {"schema": "public", "table": "cards", "name": "pan", "usage": ["output"]},
        {"schema": "public", "table": "cards", "name": "holder", "usage": ["filter"]},
        {"schema": "billing", "table": "cards", "name": "pan", "usage": []},
    ]
    tagged = apply_tags(columns, classification)
    assert [c["tags"] for c in tagged] == [["pan", "pci"], [], []]
    assert tagged[0]["usage"] == ["output"] and "tags" not in columns[0]
    assert [c["tags"] for c in apply_tags(columns, {})] == [[], [], []]
    assert apply_tags(columns[:1], {"public.cards.pan": "pan"})[0]["tags"] == ["pan"]


def test_classification_fills_analyzer_input(catalog: Catalog) -> None:
    from gateway.sql import analyze

    (info,) = analyze("SELECT pan, branch FROM cat_alt.cards", catalog)
    doc = info.to_input({"cat_alt.cards.pan": ["pan"]})
    assert [(c["name"], c["tags"]) for c in doc["columns"]] == [("pan", ["pan"]),
                                                                 ("branch", [])]
    assert apply_tags(doc["columns"], {"cat_alt.cards.branch": ["internal"]})[1]["tags"] == \
        ["internal"]


def test_a_catalog_load_that_fails_is_said_once_and_awaited_loads_raise_58000() -> None:
    """A background refresh (a stale snapshot serving meanwhile) that fails was a task
    whose exception nobody retrieved: asyncio's plain-text traceback at some later
    garbage collection. It is logged as catalog.load_failed; a statement that waits for
    a snapshot gets CatalogUnavailable (58000). Found by a probe of failure handling."""
    import asyncio
    import gc
    import io
    import json

    from gateway import logs
    from gateway.catalog.model import Catalog
    from gateway.enforce.catalog_cache import CatalogCache, CatalogUnavailable

    class Down(OSError):
        pass

    async def fetch(connection: str, queries: object) -> dict[str, list[tuple[str]]]:
        raise Down("connection refused")

    async def scenario() -> None:
        cache = CatalogCache(fetch, ttl=0.0)
        cache.put("payments", Catalog())
        assert cache.current("payments") is not None  # stale: a refresh starts
        await asyncio.sleep(0.01)
        cache.invalidate("payments")
        with pytest.raises(CatalogUnavailable) as info:
            await cache.get("payments")
        assert info.value.sqlstate == "58000" and '"payments"' in str(info.value)

    stream = io.StringIO()
    logs.configure("info", stream)
    asyncio.run(scenario())
    gc.collect()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    failed = [d for d in lines if d["event"] == "catalog.load_failed"]
    assert len(failed) == 2 and all(d["error"] == "Down" for d in failed), lines
