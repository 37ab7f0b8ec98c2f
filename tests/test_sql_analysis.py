"""SQL analysis (gateway/sql): table-driven descriptions checked against the real catalog.

Every case is a statement, its expected kind / command / relations with access / the exact
set of (table, column, usage) / functions. The catalog comes from the embedded PostgreSQL
(``pg`` fixture) plus a few objects created here (``sqla_`` names). Runnable cases are also
executed on the server (each rolled back) so the table only holds real SQL, and the
server's RowDescription (table OID + attribute number per result column) is checked
against the analyzer's output lineage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psycopg
import pytest
from pglast import parser as pg_parser

from gateway.catalog import Catalog, Relation, read_catalog
from gateway.sql import SessionSqlState, SqlParseError, StatementInfo, analyze

if TYPE_CHECKING:
    from tests.conftest import PgBackend

SETUP = r"""
CREATE SCHEMA IF NOT EXISTS sqla_ops;
CREATE TABLE IF NOT EXISTS sqla_ops.cards (id int PRIMARY KEY, pan text, note text);
CREATE TABLE IF NOT EXISTS sqla_ops.ledger (id int, card_id int, amount numeric, memo text);
CREATE OR REPLACE VIEW public.sqla_card_summary AS
    SELECT c.id, c.holder, right(c.pan, 4) AS last4 FROM cards c WHERE c.expiry IS NOT NULL;
CREATE OR REPLACE VIEW sqla_ops.v_ledger AS
    SELECT l.id, l.amount, c.pan FROM sqla_ops.ledger l JOIN public.cards c ON c.id = l.card_id;
CREATE OR REPLACE VIEW public.sqla_nested AS SELECT id, last4 FROM sqla_card_summary;
CREATE MATERIALIZED VIEW IF NOT EXISTS public.sqla_totals AS
    SELECT card_id, sum(amount) AS total FROM transactions GROUP BY card_id;
CREATE OR REPLACE FUNCTION sqla_ops.upper(int) RETURNS int LANGUAGE sql AS 'select $1';
CREATE OR REPLACE PROCEDURE sqla_ops.touch(int) LANGUAGE sql AS 'select 1';
"""

CLASSIFICATION = {
    "public.cards.pan": ["pan"],
    "public.cards.cvv": ["cvv"],
    "sqla_ops.cards.pan": ["pan"],
}


@pytest.fixture(scope="module")
def catalog(pg: PgBackend) -> Catalog:
    pg.server.psql(SETUP, dbname="payments", user=pg.service.name)
    with psycopg.connect(pg.dsn(pg.service), autocommit=True) as conn:
        return read_catalog(conn)


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    sql: str
    kind: str
    command: str
    relations: str = ""  # "cards=r transactions=rw sqla_ops.cards=w" (schema defaults public)
    columns: str = ""  # "cards.pan=output,filter cards.id= sqla_ops.cards.pan=insert"
    functions: str = ""  # "pg_catalog.count sqla_ops.upper"
    has_where: bool | None = None
    limit: int | str | None = "unchecked"
    unresolved: str = ""  # "relation:nosuch column:x"
    sql_string: bool = False
    runs: bool = True  # valid on the server as the owner, inside a transaction
    lineage: bool = True  # compare output lineage with the server's RowDescription
    extra: dict = field(default_factory=dict)  # details to check (subset)


def _rel_key(name: str) -> str:
    return name if name.count(".") == 1 else f"public.{name}"


def parse_relations(spec: str) -> dict[str, tuple[str, ...]]:
    out = {}
    for token in spec.split():
        name, access = token.split("=")
        out[_rel_key(name)] = tuple(a for a, flag in (("read", "r"), ("write", "w"))
                                    if flag in access)
    return out


def parse_columns(spec: str) -> set[tuple[str, str, str]]:
    out = set()
    for token in spec.split():
        name, usages = token.split("=")
        parts = name.split(".")
        table = ".".join(parts[:-1])
        table = table if table.count(".") == 1 else f"public.{table}"
        for usage in usages.split(",") if usages else [""]:
            out.add((table, parts[-1], usage))
    return out


def actual_relations(info: StatementInfo) -> dict[str, tuple[str, ...]]:
    return {f"{r.schema}.{r.name}": r.access for r in info.relations}


def actual_columns(info: StatementInfo) -> set[tuple[str, str, str]]:
    out = set()
    for c in info.columns:
        for usage in c.usage or ("",):
            out.add((f"{c.schema}.{c.table}", c.name, usage))
    return out


CASES: list[Case] = [
    # -- plain reads ---------------------------------------------------------------------------
    Case("SELECT pan FROM cards WHERE id = 1", "read", "SELECT", "cards=r",
         "cards.pan=output cards.id=filter", has_where=True, limit=None),
    Case("SELECT * FROM cards", "read", "SELECT", "cards=r",
         "cards.id=output cards.holder=output cards.pan=output cards.cvv=output "
         "cards.expiry=output", has_where=False),
    Case("SELECT c.* FROM cards c JOIN transactions t ON t.card_id = c.id", "read", "SELECT",
         "cards=r transactions=r",
         "cards.id=output,filter cards.holder=output cards.pan=output cards.cvv=output "
         "cards.expiry=output transactions.card_id=filter"),
    Case("SELECT c FROM cards c", "read", "SELECT", "cards=r",
         "cards.id=output cards.holder=output cards.pan=output cards.cvv=output "
         "cards.expiry=output"),
    Case("SELECT row_to_json(c) FROM cards c WHERE c.id < 3", "read", "SELECT", "cards=r",
         "cards.id=output,filter cards.holder=output cards.pan=output cards.cvv=output "
         "cards.expiry=output", "pg_catalog.row_to_json"),
    Case("SELECT count(*) FROM cards", "read", "SELECT", "cards=r", "", "pg_catalog.count"),
    Case("SELECT holder FROM cards ORDER BY expiry DESC LIMIT 3", "read", "SELECT", "cards=r",
         "cards.holder=output cards.expiry=sort", limit=3),
    Case("SELECT holder FROM cards FETCH FIRST 2 ROWS ONLY", "read", "SELECT", "cards=r",
         "cards.holder=output", limit=2),
    Case("SELECT card_id, sum(amount) FROM transactions GROUP BY card_id "
         "HAVING sum(amount) > 100", "read", "SELECT", "transactions=r",
         "transactions.card_id=output,group transactions.amount=output,filter",
         "pg_catalog.sum"),
    Case("SELECT holder AS h FROM cards ORDER BY h", "read", "SELECT", "cards=r",
         "cards.holder=output,sort"),
    Case("SELECT holder, expiry FROM cards ORDER BY 2", "read", "SELECT", "cards=r",
         "cards.holder=output cards.expiry=output,sort"),
    Case("SELECT DISTINCT ON (holder) holder, pan FROM cards ORDER BY holder, id", "read",
         "SELECT", "cards=r", "cards.holder=output,group,sort cards.pan=output cards.id=sort"),
    # DISTINCT ON takes output positions and names first, as ORDER BY does
    Case("SELECT DISTINCT ON (2) holder, pan FROM cards ORDER BY 2, 1", "read",
         "SELECT", "cards=r", "cards.holder=output,sort cards.pan=output,group,sort"),
    Case("SELECT DISTINCT ON (h) id, holder AS h FROM cards", "read",
         "SELECT", "cards=r", "cards.id=output cards.holder=output,group"),
    Case("SELECT id, rank() OVER (PARTITION BY holder ORDER BY expiry) FROM cards", "read",
         "SELECT", "cards=r", "cards.id=output cards.holder=window cards.expiry=window",
         "pg_catalog.rank"),
    Case("SELECT sum(amount) OVER w FROM transactions "
         "WINDOW w AS (PARTITION BY card_id ORDER BY created_at)", "read", "SELECT",
         "transactions=r",
         "transactions.amount=output transactions.card_id=window "
         "transactions.created_at=window", "pg_catalog.sum"),
    Case("SELECT 1", "read", "SELECT", lineage=False),
    Case("VALUES (1, 'a'), (2, 'b')", "read", "SELECT"),
    Case("SELECT id FROM cards WHERE id = 1 FOR UPDATE", "read", "SELECT", "cards=r",
         "cards.id=output,filter", extra={"locking": ["FORUPDATE"]}),
    Case("SELECT id FROM cards TABLESAMPLE SYSTEM (50)", "read", "SELECT", "cards=r",
         "cards.id=output"),
    Case("SELECT public.cards.pan FROM public.cards", "read", "SELECT", "cards=r",
         "cards.pan=output"),
    Case("SELECT (c).pan FROM cards c", "read", "SELECT", "cards=r", "cards.pan=output"),
    Case("SELECT upper(holder), length(pan) FROM cards", "read", "SELECT", "cards=r",
         "cards.holder=output cards.pan=output", "pg_catalog.upper pg_catalog.length"),
    Case("SELECT sqla_ops.upper(id) FROM cards", "read", "SELECT", "cards=r",
         "cards.id=output", "sqla_ops.upper"),
    Case("SELECT extract(year FROM created_at) FROM transactions", "read", "SELECT",
         "transactions=r", "transactions.created_at=output", "pg_catalog.extract"),
    Case("SELECT CASE WHEN cvv IS NULL THEN 'none' ELSE 'some' END FROM cards", "read",
         "SELECT", "cards=r", "cards.cvv=output"),
    Case("SELECT string_agg(holder, ',' ORDER BY expiry) FILTER (WHERE cvv <> '') FROM cards",
         "read", "SELECT", "cards=r",
         "cards.holder=output cards.expiry=output cards.cvv=output", "pg_catalog.string_agg"),
    Case("SELECT coalesce(t.amount, 0) + 1, now() FROM transactions t", "read", "SELECT",
         "transactions=r", "transactions.amount=output",
         "pg_catalog.now"),
    # -- subqueries ----------------------------------------------------------------------------
    Case("SELECT s.id FROM (SELECT id, pan FROM cards WHERE cvv = '123') s "
         "WHERE s.pan LIKE '4%'", "read", "SELECT", "cards=r",
         "cards.id=output cards.pan=filter cards.cvv=filter", has_where=True),
    Case("SELECT id FROM (SELECT id, pan FROM cards) s", "read", "SELECT", "cards=r",
         "cards.id=output cards.pan="),
    Case("SELECT (SELECT pan FROM cards WHERE id = t.card_id) FROM transactions t", "read",
         "SELECT", "transactions=r cards=r",
         "cards.pan=output cards.id=filter transactions.card_id=filter"),
    Case("SELECT holder FROM cards c WHERE EXISTS "
         "(SELECT 1 FROM transactions t WHERE t.card_id = c.id)", "read", "SELECT",
         "cards=r transactions=r",
         "cards.holder=output cards.id=filter transactions.card_id=filter"),
    Case("SELECT id FROM transactions WHERE card_id IN "
         "(SELECT id FROM cards WHERE pan LIKE '5%')", "read", "SELECT",
         "transactions=r cards=r",
         "transactions.id=output transactions.card_id=filter cards.id=filter "
         "cards.pan=filter"),
    Case("SELECT ARRAY(SELECT amount FROM transactions t WHERE t.card_id = c.id) FROM cards c",
         "read", "SELECT", "cards=r transactions=r",
         "transactions.amount=output transactions.card_id=filter cards.id=filter"),
    # -- CTEs ----------------------------------------------------------------------------------
    Case("WITH big AS (SELECT card_id, amount FROM transactions WHERE amount > 100) "
         "SELECT c.holder, b.amount FROM big b JOIN cards c ON c.id = b.card_id",
         "read", "SELECT", "transactions=r cards=r",
         "transactions.amount=output,filter transactions.card_id=filter "
         "cards.holder=output cards.id=filter"),
    Case("WITH x AS (SELECT id, pan FROM cards) SELECT id FROM x", "read", "SELECT",
         "cards=r", "cards.id=output cards.pan="),
    Case("WITH x(a, b) AS MATERIALIZED (SELECT id, pan FROM cards) "
         "SELECT b FROM x WHERE a = 1", "read", "SELECT", "cards=r",
         "cards.pan=output cards.id=filter"),
    Case("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) "
         "SELECT n FROM r", "read", "SELECT"),
    Case("WITH RECURSIVE chain(id, card_id, depth) AS ("
         "SELECT id, card_id, 1 FROM transactions WHERE id = 1 "
         "UNION ALL SELECT t.id, t.card_id, depth + 1 FROM transactions t "
         "JOIN chain ON t.card_id = chain.id WHERE depth < 3) SELECT card_id FROM chain",
         "read", "SELECT", "transactions=r",
         "transactions.id=filter transactions.card_id=output,filter"),
    # -- set operations --------------------------------------------------------------------------
    Case("SELECT pan FROM cards UNION SELECT pan FROM sqla_ops.cards", "read", "SELECT",
         "cards=r sqla_ops.cards=r", "cards.pan=output sqla_ops.cards.pan=output"),
    Case("SELECT id FROM cards EXCEPT SELECT card_id FROM transactions ORDER BY 1 LIMIT 2",
         "read", "SELECT", "cards=r transactions=r",
         "cards.id=output,sort transactions.card_id=output,sort", limit=2),
    Case("SELECT holder FROM cards WHERE id = 1 INTERSECT "
         "SELECT holder FROM cards WHERE id = 2", "read", "SELECT", "cards=r",
         "cards.holder=output cards.id=filter", has_where=True),
    # -- LATERAL and functions in FROM ------------------------------------------------------------
    Case("SELECT c.holder, l.amount FROM cards c CROSS JOIN LATERAL "
         "(SELECT amount FROM transactions t WHERE t.card_id = c.id "
         "ORDER BY created_at DESC LIMIT 1) l", "read", "SELECT", "cards=r transactions=r",
         "cards.holder=output transactions.amount=output transactions.card_id=filter "
         "cards.id=filter transactions.created_at=sort"),
    Case("SELECT j.key FROM cards c, LATERAL jsonb_each_text(to_jsonb(c)) j", "read", "SELECT",
         "cards=r",
         "cards.id=output cards.holder=output cards.pan=output cards.cvv=output "
         "cards.expiry=output", "pg_catalog.jsonb_each_text pg_catalog.to_jsonb"),
    Case("SELECT g FROM generate_series(1, 3) g", "read", "SELECT", "", "",
         "pg_catalog.generate_series"),
    Case("SELECT x.a FROM json_to_recordset('[{\"a\": 1}]') AS x(a int, b text)", "read",
         "SELECT", "", "", "pg_catalog.json_to_recordset"),
    Case("SELECT u.v, u.n FROM unnest(ARRAY['a', 'b']) WITH ORDINALITY AS u(v, n)", "read",
         "SELECT", "", "", "pg_catalog.unnest"),
    Case("SELECT c.id, s.n FROM cards c, LATERAL generate_series(1, length(c.holder)) s(n)",
         "read", "SELECT", "cards=r", "cards.id=output cards.holder=output",
         "pg_catalog.generate_series pg_catalog.length"),
    # -- joins ----------------------------------------------------------------------------------
    Case("SELECT id, holder FROM cards JOIN sqla_ops.cards USING (id)", "read", "SELECT",
         "cards=r sqla_ops.cards=r",
         "cards.id=output,filter sqla_ops.cards.id=output,filter cards.holder=output"),
    Case("SELECT * FROM cards NATURAL JOIN sqla_ops.cards", "read", "SELECT",
         "cards=r sqla_ops.cards=r",
         "cards.id=output,filter cards.pan=output,filter cards.holder=output "
         "cards.cvv=output cards.expiry=output sqla_ops.cards.id=output,filter "
         "sqla_ops.cards.pan=output,filter sqla_ops.cards.note=output"),
    Case("SELECT j.x FROM (cards c LEFT JOIN transactions t ON t.card_id = c.id) AS j(x)",
         "read", "SELECT", "cards=r transactions=r",
         "cards.id=output,filter transactions.card_id=filter"),
    Case("SELECT c.holder, t.amount FROM cards c LEFT JOIN transactions t "
         "ON t.card_id = c.id AND t.amount > 10 WHERE c.expiry > '01/27'",
         "read", "SELECT", "cards=r transactions=r",
         "cards.holder=output transactions.amount=output,filter transactions.card_id=filter "
         "cards.id=filter cards.expiry=filter", has_where=True),
    # -- views -------------------------------------------------------------------------------
    Case("SELECT * FROM sqla_card_summary", "read", "SELECT", "sqla_card_summary=r cards=r",
         "cards.id=output cards.holder=output cards.pan=output cards.expiry=filter",
         "pg_catalog.right"),
    Case("SELECT last4 FROM sqla_card_summary WHERE id = 2", "read", "SELECT",
         "sqla_card_summary=r cards=r",
         "cards.pan=output cards.id=filter cards.expiry=filter", "pg_catalog.right"),
    Case("SELECT last4 FROM sqla_nested", "read", "SELECT",
         "sqla_nested=r sqla_card_summary=r cards=r",
         "cards.pan=output cards.expiry=filter", "pg_catalog.right"),
    Case("SELECT pan FROM sqla_ops.v_ledger WHERE amount > 5", "read", "SELECT",
         "sqla_ops.v_ledger=r sqla_ops.ledger=r cards=r",
         "cards.pan=output sqla_ops.ledger.amount=filter sqla_ops.ledger.card_id=filter "
         "cards.id=filter"),
    Case("SELECT total FROM sqla_totals", "read", "SELECT", "sqla_totals=r transactions=r",
         "transactions.amount=output transactions.card_id=group", "pg_catalog.sum"),
    Case("SELECT last_value FROM cards_id_seq", "read", "SELECT", "cards_id_seq=r",
         "cards_id_seq.last_value=output"),
    # -- system catalogs -----------------------------------------------------------------------
    Case("SELECT relname FROM pg_catalog.pg_class WHERE relnamespace = 2200", "read",
         "SELECT", "pg_catalog.pg_class=r",
         "pg_catalog.pg_class.relname=output pg_catalog.pg_class.relnamespace=filter"),
    Case("SELECT usename FROM pg_user", "read", "SELECT", "pg_catalog.pg_user=r",
         "pg_catalog.pg_user.usename=output", lineage=False),
    Case("SELECT column_name FROM information_schema.columns WHERE table_name = 'cards'",
         "read", "SELECT", "information_schema.columns=r",
         "information_schema.columns.column_name=output "
         "information_schema.columns.table_name=filter", lineage=False),
    # -- functions that run SQL from strings ---------------------------------------------------
    Case("SELECT query_to_xml('select pan from cards', true, false, '')", "read", "SELECT",
         functions="pg_catalog.query_to_xml", sql_string=True, runs=False),  # no libxml
    Case("SELECT table_to_xml('cards', true, false, '')", "read", "SELECT",
         functions="pg_catalog.table_to_xml", sql_string=True, runs=False),
    Case("SELECT cursor_to_xml('c1', 10, true, false, '')", "read", "SELECT",
         functions="pg_catalog.cursor_to_xml", sql_string=True, runs=False),
    Case("SELECT * FROM ts_stat('SELECT to_tsvector(holder) FROM cards')", "read", "SELECT",
         functions="pg_catalog.ts_stat", sql_string=True, lineage=False),
    # -- unresolved ------------------------------------------------------------------------------
    Case("SELECT nosuch FROM cards", "read", "SELECT", "cards=r", unresolved="column:nosuch",
         runs=False),
    Case("SELECT * FROM nosuch_table", "read", "SELECT", unresolved="relation:nosuch_table",
         runs=False),
    Case("SELECT no_such_fn(1)", "read", "SELECT", functions="public.no_such_fn",
         unresolved="function:public.no_such_fn", runs=False),
    # -- writes --------------------------------------------------------------------------------
    Case("INSERT INTO transactions (card_id, amount) VALUES (1, 9.99)", "write", "INSERT",
         "transactions=w", "transactions.card_id=insert transactions.amount=insert",
         has_where=False),
    Case("INSERT INTO sqla_ops.cards VALUES (100, 'x', 'y')", "write", "INSERT",
         "sqla_ops.cards=w",
         "sqla_ops.cards.id=insert sqla_ops.cards.pan=insert sqla_ops.cards.note=insert"),
    Case("INSERT INTO sqla_ops.cards (id, pan) SELECT id, pan FROM cards WHERE holder = 'x'",
         "write", "INSERT", "sqla_ops.cards=w cards=r",
         "sqla_ops.cards.id=insert sqla_ops.cards.pan=insert cards.id=output "
         "cards.pan=output cards.holder=filter"),
    Case("INSERT INTO transactions (card_id, amount) VALUES (1, 2) RETURNING id, created_at",
         "write", "INSERT", "transactions=rw",
         "transactions.card_id=insert transactions.amount=insert transactions.id=returning "
         "transactions.created_at=returning"),
    Case("INSERT INTO cards (id, pan) VALUES (1, 'x') ON CONFLICT (id) "
         "DO UPDATE SET pan = EXCLUDED.pan WHERE cards.cvv IS NULL", "write", "INSERT",
         "cards=rw", "cards.id=insert,filter cards.pan=insert,set cards.cvv=filter"),
    Case("INSERT INTO cards (id) VALUES (1) ON CONFLICT DO NOTHING", "write", "INSERT",
         "cards=w", "cards.id=insert"),
    Case("UPDATE cards SET holder = 'x' WHERE id = 1", "write", "UPDATE", "cards=rw",
         "cards.holder=set cards.id=filter", has_where=True),
    Case("UPDATE cards SET cvv = NULL", "write", "UPDATE", "cards=w", "cards.cvv=set",
         has_where=False),
    Case("UPDATE transactions SET amount = amount * 2 WHERE card_id = 1", "write", "UPDATE",
         "transactions=rw", "transactions.amount=set,output transactions.card_id=filter"),
    Case("UPDATE transactions t SET amount = 0 FROM cards c "
         "WHERE c.id = t.card_id AND c.pan LIKE '4%'", "write", "UPDATE",
         "transactions=rw cards=r",
         "transactions.amount=set transactions.card_id=filter cards.id=filter "
         "cards.pan=filter"),
    Case("UPDATE cards SET (holder, expiry) = (SELECT 'a', 'b') WHERE id = 3", "write",
         "UPDATE", "cards=rw", "cards.holder=set cards.expiry=set cards.id=filter"),
    Case("UPDATE cards SET holder = upper(holder) WHERE id = 1 RETURNING pan", "write",
         "UPDATE", "cards=rw", "cards.holder=set,output cards.id=filter cards.pan=returning",
         "pg_catalog.upper"),
    Case("UPDATE transactions t SET amount = 1 FROM cards c WHERE c.id = t.card_id "
         "RETURNING *", "write", "UPDATE", "transactions=rw cards=r",
         "transactions.id=returning transactions.card_id=returning,filter "
         "transactions.amount=returning,set transactions.created_at=returning "
         "cards.id=returning,filter cards.holder=returning cards.pan=returning "
         "cards.cvv=returning cards.expiry=returning"),
    Case("UPDATE sqla_card_summary SET holder = 'x' WHERE id = 1", "write", "UPDATE",
         "sqla_card_summary=rw cards=rw",
         "cards.holder=set cards.id=filter cards.expiry=filter", "pg_catalog.right"),
    Case("UPDATE sqla_card_summary s SET holder = 'y'", "write", "UPDATE",
         "sqla_card_summary=w cards=rw", "cards.holder=set cards.expiry=filter",
         "pg_catalog.right"),
    Case("DELETE FROM sqla_card_summary s WHERE s.last4 = '0000'", "write", "DELETE",
         "sqla_card_summary=rw cards=rw", "cards.pan=filter cards.expiry=filter",
         "pg_catalog.right"),
    Case("DELETE FROM transactions WHERE amount < 1", "write", "DELETE", "transactions=rw",
         "transactions.amount=filter", has_where=True),
    Case("DELETE FROM transactions", "write", "DELETE", "transactions=w", has_where=False),
    Case("DELETE FROM transactions t USING cards c "
         "WHERE c.id = t.card_id AND c.expiry < '01/26'", "write", "DELETE",
         "transactions=rw cards=r",
         "transactions.card_id=filter cards.id=filter cards.expiry=filter"),
    Case("DELETE FROM cards WHERE id = 9 RETURNING *", "write", "DELETE", "cards=rw",
         "cards.id=filter,returning cards.holder=returning cards.pan=returning "
         "cards.cvv=returning cards.expiry=returning"),
    Case("DELETE FROM transactions RETURNING old.amount", "write", "DELETE",
         "transactions=rw", "transactions.amount=returning"),
    Case("MERGE INTO sqla_ops.cards s USING cards c ON s.id = c.id "
         "WHEN MATCHED THEN UPDATE SET pan = c.pan "
         "WHEN NOT MATCHED THEN INSERT (id, pan) VALUES (c.id, c.pan)", "write", "MERGE",
         "sqla_ops.cards=rw cards=r",
         "sqla_ops.cards.id=filter,insert sqla_ops.cards.pan=set,insert "
         "cards.id=filter,output cards.pan=output", has_where=False),
    Case("MERGE INTO transactions t USING cards c ON t.card_id = c.id "
         "WHEN MATCHED AND c.cvv IS NULL THEN DELETE", "write", "MERGE",
         "transactions=rw cards=r",
         "transactions.card_id=filter cards.id=filter cards.cvv=filter"),
    Case("WITH moved AS (DELETE FROM transactions WHERE amount > 1000 "
         "RETURNING card_id, amount) "
         "SELECT c.holder, m.amount FROM moved m JOIN cards c ON c.id = m.card_id",
         "write", "SELECT", "transactions=rw cards=r",
         "transactions.amount=filter,returning,output transactions.card_id=returning,filter "
         "cards.holder=output cards.id=filter"),
    Case("WITH ins AS (INSERT INTO transactions (card_id, amount) VALUES (1, 1)) SELECT 1",
         "write", "SELECT", "transactions=w",
         "transactions.card_id=insert transactions.amount=insert", lineage=False),
    Case("TRUNCATE transactions", "write", "TRUNCATE TABLE", "transactions=w"),
    # -- DDL ---------------------------------------------------------------------------------
    Case("CREATE TABLE sqla_new (a int, b text)", "ddl", "CREATE TABLE", "sqla_new=w"),
    Case("CREATE TABLE sqla_copy AS SELECT id, pan FROM cards", "ddl", "CREATE TABLE AS",
         "cards=r sqla_copy=w", "cards.id=output cards.pan=output"),
    Case("SELECT pan INTO sqla_copy2 FROM cards WHERE id = 1", "ddl", "SELECT INTO",
         "cards=r sqla_copy2=w", "cards.pan=output cards.id=filter", has_where=True),
    Case("CREATE TEMP TABLE sqla_tmp AS SELECT holder FROM cards", "ddl", "CREATE TABLE AS",
         "cards=r pg_temp.sqla_tmp=w", "cards.holder=output"),
    Case("CREATE VIEW sqla_v2 AS SELECT holder FROM cards", "ddl", "CREATE VIEW",
         "cards=r sqla_v2=w", "cards.holder=output"),
    Case("CREATE MATERIALIZED VIEW sqla_mv AS SELECT pan FROM cards", "ddl",
         "CREATE MATERIALIZED VIEW", "cards=r sqla_mv=w", "cards.pan=output"),
    Case("DROP TABLE sqla_ops.ledger CASCADE", "ddl", "DROP TABLE", "sqla_ops.ledger=w"),
    Case("ALTER TABLE cards ADD COLUMN note text", "ddl", "ALTER TABLE", "cards=w"),
    Case("ALTER TABLE sqla_ops.cards RENAME COLUMN note TO memo", "ddl", "ALTER TABLE",
         "sqla_ops.cards=w"),
    Case("CREATE INDEX ON cards (pan)", "ddl", "CREATE INDEX", "cards=w"),
    Case("GRANT SELECT ON cards TO PUBLIC", "ddl", "GRANT", "cards=w",
         extra={"privileges": ["select"], "grantees": ["public"]}),
    Case("REVOKE ALL ON transactions FROM PUBLIC", "ddl", "REVOKE", "transactions=w"),
    Case("GRANT pg_read_all_data TO legacy_svc", "ddl", "GRANT ROLE", runs=False,
         extra={"roles": ["pg_read_all_data"], "grantees": ["legacy_svc"]}),
    Case("CREATE ROLE sqla_role", "ddl", "CREATE ROLE", runs=False),
    Case("CREATE FUNCTION sqla_f() RETURNS int LANGUAGE sql AS 'select 1'", "ddl",
         "CREATE FUNCTION"),
    Case("REFRESH MATERIALIZED VIEW sqla_totals", "ddl", "REFRESH MATERIALIZED VIEW",
         "sqla_totals=w"),
    Case("COMMENT ON TABLE cards IS 'cardholder data'", "ddl", "COMMENT"),
    Case("CREATE SCHEMA sqla_tmp_schema", "ddl", "CREATE SCHEMA"),
    # -- EXPLAIN -----------------------------------------------------------------------------
    Case("EXPLAIN SELECT pan FROM cards", "read", "EXPLAIN", "cards=r", "cards.pan=output",
         extra={"analyze": False, "inner_command": "SELECT"}),
    Case("EXPLAIN ANALYZE DELETE FROM transactions WHERE id = 1", "write", "EXPLAIN",
         "transactions=rw", "transactions.id=filter", has_where=True,
         extra={"analyze": True, "inner_command": "DELETE"}),
    Case("EXPLAIN DELETE FROM transactions", "read", "EXPLAIN", "transactions=w",
         extra={"analyze": False}),
    Case("EXPLAIN (ANALYZE false, VERBOSE) UPDATE cards SET cvv = '1'", "read", "EXPLAIN",
         "cards=w", "cards.cvv=set", extra={"analyze": False}),
    Case("EXPLAIN (ANALYZE, BUFFERS) SELECT count(*) FROM transactions", "read", "EXPLAIN",
         "transactions=r", "", "pg_catalog.count", extra={"analyze": True}),
    # -- COPY ----------------------------------------------------------------------------------
    Case("COPY cards TO STDOUT", "copy_out", "COPY", "cards=r",
         "cards.id=output cards.holder=output cards.pan=output cards.cvv=output "
         "cards.expiry=output", extra={"target": "stdout"}),
    Case("COPY cards (id, pan) TO STDOUT WITH (FORMAT csv)", "copy_out", "COPY", "cards=r",
         "cards.id=output cards.pan=output", extra={"format": "csv"}),
    Case("COPY (SELECT pan FROM cards WHERE id = 1) TO STDOUT", "copy_out", "COPY", "cards=r",
         "cards.pan=output cards.id=filter", has_where=True),
    Case("COPY transactions (card_id, amount) FROM STDIN", "copy_in", "COPY",
         "transactions=w", "transactions.card_id=insert transactions.amount=insert",
         extra={"direction": "from", "target": "stdin"}),
    Case("COPY sqla_ops.cards FROM STDIN WHERE id > 10", "copy_in", "COPY",
         "sqla_ops.cards=rw",
         "sqla_ops.cards.id=insert,filter sqla_ops.cards.pan=insert "
         "sqla_ops.cards.note=insert"),
    Case("COPY cards TO '/tmp/sqla_cards.txt'", "other", "COPY", "cards=r",
         "cards.id=output cards.holder=output cards.pan=output cards.cvv=output "
         "cards.expiry=output", runs=False,
         extra={"target": "file", "filename": "/tmp/sqla_cards.txt"}),
    Case("COPY cards TO PROGRAM 'gzip > /tmp/x.gz'", "other", "COPY", "cards=r",
         "cards.id=output cards.holder=output cards.pan=output cards.cvv=output "
         "cards.expiry=output", runs=False,
         extra={"target": "program", "program": "gzip > /tmp/x.gz"}),
    Case("COPY cards (holder) FROM PROGRAM 'cat /etc/passwd'", "other", "COPY", "cards=w",
         "cards.holder=insert", runs=False),
    Case("COPY (DELETE FROM transactions WHERE id = 1 RETURNING amount) TO STDOUT", "write",
         "COPY", "transactions=rw", "transactions.id=filter transactions.amount=returning,output"),
    # -- session -------------------------------------------------------------------------------
    Case("SET search_path = sqla_ops, public", "session", "SET",
         extra={"name": "search_path", "value": "sqla_ops, public", "local": False}),
    Case("RESET search_path", "session", "RESET", extra={"name": "search_path"}),
    Case("SET LOCAL statement_timeout = '5s'", "session", "SET",
         extra={"name": "statement_timeout", "value": "5s", "local": True}),
    Case("SET ROLE pgwarden_svc", "session", "SET",
         extra={"name": "role", "value": "pgwarden_svc"}),
    Case("RESET ROLE", "session", "RESET", extra={"name": "role"}),
    Case("SET SESSION AUTHORIZATION DEFAULT", "session", "SET",
         extra={"name": "session_authorization"}),
    Case("SET SESSION AUTHORIZATION legacy_svc", "session", "SET", runs=False,
         extra={"name": "session_authorization", "value": "legacy_svc"}),
    Case("RESET ALL", "session", "RESET"),
    Case("SHOW search_path", "session", "SHOW", lineage=False),
    Case("DISCARD ALL", "session", "DISCARD ALL", runs=False),
    Case("DISCARD TEMP", "session", "DISCARD TEMP"),
    Case("LISTEN sqla_channel", "session", "LISTEN", extra={"channel": "sqla_channel"}),
    Case("UNLISTEN *", "session", "UNLISTEN"),
    Case("NOTIFY sqla_channel, 'hello'", "utility", "NOTIFY"),
    Case("DEALLOCATE ALL", "session", "DEALLOCATE ALL"),
    Case("CLOSE ALL", "session", "CLOSE CURSOR ALL"),
    # -- transaction control -------------------------------------------------------------------
    Case("BEGIN", "transaction", "BEGIN", runs=False),
    Case("START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY", "transaction",
         "START TRANSACTION", runs=False),
    Case("COMMIT", "transaction", "COMMIT", runs=False),
    Case("ROLLBACK", "transaction", "ROLLBACK", runs=False),
    Case("SAVEPOINT sqla_sp", "transaction", "SAVEPOINT", extra={"savepoint": "sqla_sp"}),
    Case("RELEASE SAVEPOINT sqla_sp", "transaction", "RELEASE", runs=False),
    Case("ROLLBACK TO SAVEPOINT sqla_sp", "transaction", "ROLLBACK", runs=False),
    Case("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", "transaction", "SET", runs=False),
    Case("SET CONSTRAINTS ALL DEFERRED", "transaction", "SET CONSTRAINTS"),
    Case("PREPARE TRANSACTION 'sqla_gid'", "transaction", "PREPARE TRANSACTION", runs=False),
    # -- utility / other -----------------------------------------------------------------------
    Case("VACUUM cards", "utility", "VACUUM", "cards=w", runs=False),
    Case("ANALYZE transactions", "utility", "ANALYZE", "transactions=r"),
    Case("LOCK TABLE cards IN ACCESS SHARE MODE", "utility", "LOCK TABLE", "cards=r"),
    Case("LOCK TABLE transactions", "utility", "LOCK TABLE", "transactions=w"),
    Case("CHECKPOINT", "utility", "CHECKPOINT", runs=False),
    Case("DO $$ BEGIN PERFORM 1; END $$", "other", "DO", extra={"language": "plpgsql"}),
    Case("CALL sqla_ops.touch(1)", "other", "CALL", functions="sqla_ops.touch"),
    Case("LOAD 'plpgsql'", "other", "LOAD", runs=False),
    Case("ALTER SYSTEM SET work_mem = '8MB'", "other", "ALTER SYSTEM", runs=False),
    # -- prepared statements and cursors (state-free parts) -------------------------------
    Case("PREPARE sqla_p1(int) AS SELECT pan FROM cards WHERE id = $1", "read", "PREPARE",
         "cards=r", "cards.pan=output cards.id=filter", has_where=True,
         extra={"name": "sqla_p1", "inner_command": "SELECT"}),
    Case("PREPARE sqla_p2 AS UPDATE cards SET cvv = '' WHERE id = 1", "write", "PREPARE",
         "cards=rw", "cards.cvv=set cards.id=filter"),
    Case("DECLARE sqla_c1 CURSOR FOR SELECT holder FROM cards WHERE expiry > '01/27'", "read",
         "DECLARE CURSOR", "cards=r", "cards.holder=output cards.expiry=filter",
         extra={"cursor": "sqla_c1", "hold": False}),
    Case("EXECUTE sqla_unknown(1)", "other", "EXECUTE",
         unresolved="prepared_statement:sqla_unknown", runs=False),
    Case("FETCH ALL FROM sqla_unknown", "other", "FETCH", unresolved="cursor:sqla_unknown",
         runs=False),
    Case("DEALLOCATE sqla_unknown", "session", "DEALLOCATE", runs=False),
]


@pytest.mark.parametrize("case", CASES, ids=[c.sql[:70] for c in CASES])
def test_statement(case: Case, catalog: Catalog) -> None:
    infos = analyze(case.sql, catalog, session=SessionSqlState())
    assert len(infos) == 1
    info = infos[0]
    assert (info.kind, info.command) == (case.kind, case.command)
    assert actual_relations(info) == parse_relations(case.relations)
    assert actual_columns(info) == parse_columns(case.columns)
    assert set(info.functions) == set(case.functions.split())
    expected_unresolved = {tuple(u.split(":", 1)) for u in case.unresolved.split()}
    assert set(info.unresolved) >= expected_unresolved
    if not expected_unresolved:
        assert info.unresolved == ()
    assert info.sql_string_functions is case.sql_string
    if case.has_where is not None:
        assert info.has_where is case.has_where
    if case.limit != "unchecked":
        assert info.limit == case.limit
    for key, value in case.extra.items():
        assert info.details.get(key) == value, (key, info.details)
    assert (info.index, info.count, info.protocol) == (0, 1, "simple")
    assert info.sql == case.sql
    assert info.fingerprint == pg_parser.fingerprint(case.sql)


def test_table_size_and_coverage() -> None:
    assert len(CASES) >= 80
    kinds = {c.kind for c in CASES}
    assert kinds == {"read", "write", "ddl", "copy_out", "copy_in", "transaction", "session",
                     "utility", "other"}


def _run(cur: psycopg.Cursor, sql: str) -> None:
    upper = sql.upper()
    if upper.startswith("COPY") and ("STDOUT" in upper or "STDIN" in upper):
        with cur.copy(sql) as copy:
            if "STDOUT" in upper:
                for _ in copy:
                    pass
    else:
        cur.execute(sql)


def test_cases_run_on_the_server_and_lineage_matches(pg: PgBackend, catalog: Catalog) -> None:
    """Every runnable case is real SQL (run, then rolled back), and for each result column
    the server attributes to a table column, the analyzer's lineage names that column."""
    failures = []
    compared = 0
    with psycopg.connect(pg.dsn(pg.service)) as conn, conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL statement_timeout = '10s'")
        for case in CASES:
            if not case.runs:
                continue
            info = analyze(case.sql, catalog)[0]
            try:
                with conn.transaction(force_rollback=True), conn.cursor() as cur:
                    _run(cur, case.sql)
                    result = cur.pgresult
                    if not case.lineage or result is None or not result.nfields:
                        continue
                    if info.command == "EXPLAIN" or info.kind == "ddl":
                        continue
                    if len(info.outputs) != result.nfields:
                        failures.append((case.sql, "output count", len(info.outputs),
                                         result.nfields))
                        continue
                    for i, out in enumerate(info.outputs):
                        table_oid, attnum = result.ftable(i), result.ftablecol(i)
                        rel = catalog.relation_by_oid(table_oid) if table_oid else None
                        if rel is None or rel.is_view or attnum <= 0:
                            continue
                        col = catalog.column_for_attnum(table_oid, attnum)
                        compared += 1
                        if col not in out.sources:
                            failures.append((case.sql, i, col, out.sources))
            except psycopg.Error as exc:
                failures.append((case.sql, type(exc).__name__, str(exc).strip()))
    assert failures == []
    assert compared > 60


# ---------------------------------------------------------------------------------------------
# The input document
# ---------------------------------------------------------------------------------------------


def test_to_input_for_a_point_select(catalog: Catalog) -> None:
    (info,) = analyze("SELECT pan FROM cards WHERE id = 1", catalog)
    assert info.to_input(CLASSIFICATION) == {
        "sql": "SELECT pan FROM cards WHERE id = 1",
        "fingerprint": pg_parser.fingerprint("SELECT pan FROM cards WHERE id = 1"),
        "command": "SELECT",
        "kind": "read",
        "relations": [{"schema": "public", "name": "cards", "access": ["read"],
                       "relkind": "table", "temp": False}],
        "columns": [
            {"schema": "public", "table": "cards", "name": "id", "tags": [],
             "usage": ["filter"]},
            {"schema": "public", "table": "cards", "name": "pan", "tags": ["pan"],
             "usage": ["output"]},
        ],
        "functions": [],
        "has_where": True,
        "limit": None,
        "index": 0,
        "count": 1,
        "protocol": "simple",
        "sql_string_functions": False,
        "unresolved": [],
        "details": {},
    }
    assert [(o.name, o.sources) for o in info.outputs] == [("pan", (("public", "cards", "pan"),))]


def test_to_input_keys_follow_design(catalog: Catalog) -> None:
    design_keys = {"sql", "fingerprint", "command", "kind", "relations", "columns",
                   "functions", "has_where", "limit", "index", "count", "protocol"}
    doc = analyze("SELECT 1", catalog, protocol="extended")[0].to_input()
    assert design_keys <= doc.keys()
    assert doc["protocol"] == "extended"
    (info,) = analyze("UPDATE cards SET cvv = '000'", catalog)
    column = info.to_input(CLASSIFICATION)["columns"][0]
    assert set(column) == {"schema", "table", "name", "tags", "usage"}
    assert column["tags"] == ["cvv"]


def test_view_columns_carry_base_tags(catalog: Catalog) -> None:
    (info,) = analyze("SELECT last4 FROM sqla_card_summary", catalog)
    doc = info.to_input(CLASSIFICATION)
    pan = [c for c in doc["columns"] if c["name"] == "pan"]
    assert pan == [{"schema": "public", "table": "cards", "name": "pan", "tags": ["pan"],
                    "usage": ["output"]}]


# ---------------------------------------------------------------------------------------------
# Parse errors and multi-statement strings
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sql", [
    "SELEC 1",
    "SELECT 1; SELECT FROM WHERE x",
    "SELECT 'unterminated",
    "SELECT 'é' FROM cards WHERE",
    "SELECT 'é' FROM cards WHERE  \n ",
    "SELECT (1",
])
def test_parse_error_carries_pglast_message_and_server_position(
        sql: str, catalog: Catalog, pg: PgBackend) -> None:
    with pytest.raises(pg_parser.ParseError) as pglast_error:
        pg_parser.parse_sql_json(sql)
    with pytest.raises(SqlParseError) as error:
        analyze(sql, catalog)
    assert error.value.message == pglast_error.value.args[0] == str(error.value)
    assert error.value.sqlstate == "42601"
    # The server says the same thing at the same (1-based) position.
    with psycopg.connect(pg.dsn(pg.service), autocommit=True) as conn, \
            pytest.raises(psycopg.errors.SyntaxError) as server_error:
        conn.execute(sql, prepare=False)
    diag = server_error.value.diag
    assert diag.message_primary == error.value.message
    assert int(diag.statement_position) == error.value.cursor_position


def test_multi_statement_index_count_and_slices(catalog: Catalog) -> None:
    sql = ("SELECT 'é' AS x;\n  UPDATE cards SET cvv = '' WHERE id = 1 ;"
           "SELECT pan FROM cards -- trailing comment\n")
    infos = analyze(sql, catalog)
    assert [(i.index, i.count) for i in infos] == [(0, 3), (1, 3), (2, 3)]
    assert [i.kind for i in infos] == ["read", "write", "read"]
    assert [i.sql for i in infos] == [
        "SELECT 'é' AS x",
        "UPDATE cards SET cvv = '' WHERE id = 1",
        "SELECT pan FROM cards -- trailing comment",
    ]
    assert [i.fingerprint for i in infos] == [pg_parser.fingerprint(i.sql) for i in infos]
    assert infos[0].fingerprint != infos[2].fingerprint
    # literals don't change the fingerprint
    assert analyze("SELECT pan FROM cards WHERE id = 2", catalog)[0].fingerprint == \
        analyze("select pan from cards where id = 7", catalog)[0].fingerprint


def test_empty_query_string(catalog: Catalog) -> None:
    assert analyze("", catalog) == []
    assert analyze(" ; -- nothing\n", catalog) == []


# ---------------------------------------------------------------------------------------------
# Specific constructs called out by the issue
# ---------------------------------------------------------------------------------------------


def test_explain_analyze_of_a_delete_is_a_write(catalog: Catalog) -> None:
    (info,) = analyze("EXPLAIN ANALYZE DELETE FROM cards WHERE id = 1", catalog)
    assert (info.command, info.kind) == ("EXPLAIN", "write")
    assert actual_relations(info) == {"public.cards": ("read", "write")}
    (plain,) = analyze("EXPLAIN DELETE FROM cards WHERE id = 1", catalog)
    assert plain.kind == "read"
    (ctas,) = analyze("EXPLAIN ANALYZE CREATE TABLE sqla_x AS SELECT 1", catalog)
    assert ctas.kind == "ddl" and ctas.catalog_changed


def test_data_modifying_cte_is_a_write(catalog: Catalog) -> None:
    (info,) = analyze("WITH gone AS (DELETE FROM cards RETURNING id) SELECT count(*) FROM gone",
                      catalog)
    assert (info.command, info.kind) == ("SELECT", "write")
    assert actual_relations(info) == {"public.cards": ("read", "write")}
    assert info.has_where is False


def test_copy_to_program_is_other(catalog: Catalog) -> None:
    (info,) = analyze("COPY (SELECT pan FROM cards) TO PROGRAM 'nc evil 9'", catalog)
    assert (info.command, info.kind) == ("COPY", "other")
    assert info.details["program"] == "nc evil 9"
    assert actual_columns(info) == {("public.cards", "pan", "output")}


@pytest.mark.parametrize("sql", [
    "SELECT query_to_xml('select pan from cards', true, false, '')",
    "SELECT pg_catalog.query_to_xml($1, true, false, '')",
    "SELECT * FROM cards WHERE holder = (SELECT table_to_xml('cards', true, false, '')::text)",
    "SELECT dblink('dbname=x', 'select 1')",
    "SELECT ts_rewrite('a'::tsquery, 'SELECT t, s FROM aliases')",
])
def test_sql_string_functions_are_flagged(sql: str, catalog: Catalog) -> None:
    (info,) = analyze(sql, catalog)
    assert info.sql_string_functions is True
    assert info.to_input()["sql_string_functions"] is True


def test_ordinary_functions_are_not_flagged(catalog: Catalog) -> None:
    (info,) = analyze("SELECT ts_rewrite('a'::tsquery, 'a'::tsquery, 'b'::tsquery)", catalog)
    assert info.sql_string_functions is False


def test_execute_is_described_by_its_prepare(catalog: Catalog) -> None:
    state = SessionSqlState()
    (prep,) = analyze("PREPARE getpan(int) AS SELECT pan FROM cards WHERE id = $1", catalog,
                      session=state)
    assert state.prepared == {}  # analyze() never changes the session
    state.observe(prep)
    (info,) = analyze("EXECUTE getpan(1)", catalog, session=state)
    assert (info.command, info.kind) == ("EXECUTE", "read")
    assert actual_relations(info) == {"public.cards": ("read",)}
    assert actual_columns(info) == {("public.cards", "pan", "output"),
                                    ("public.cards", "id", "filter")}
    assert info.details == {"name": "getpan", "inner_command": "SELECT"}
    assert info.sql == "EXECUTE getpan(1)" and info.cacheable is False
    assert [o.name for o in info.outputs] == ["pan"]
    # EXECUTE resolves names with the session's current search_path (as the server replans)
    (set_path,) = analyze("SET search_path = sqla_ops, public", catalog, session=state)
    state.observe(set_path)
    # until the server says the SET ran, `cards` may still mean the one it meant before
    (unsure,) = analyze("EXECUTE getpan(1)", catalog, session=state)
    assert actual_relations(unsure) == {"sqla_ops.cards": ("read",),
                                        "public.cards": ("read",)}
    state.parameter_status("search_path", "sqla_ops, public")
    state.ready_for_query("I", lambda: True)
    (again,) = analyze("EXECUTE getpan(1)", catalog, session=state)
    assert actual_relations(again) == {"sqla_ops.cards": ("read",)}
    (dealloc,) = analyze("DEALLOCATE getpan", catalog, session=state)
    state.observe(dealloc)
    (gone,) = analyze("EXECUTE getpan(1)", catalog, session=state)
    assert (gone.kind, gone.unresolved) == ("other", (("prepared_statement", "getpan"),))


def test_execute_of_a_protocol_level_statement_and_params(catalog: Catalog) -> None:
    state = SessionSqlState()
    state.register_parse("s1", "UPDATE cards SET holder = $1 WHERE id = $2")
    (info,) = analyze("EXECUTE s1((SELECT cvv FROM cards WHERE id = 2), 1)", catalog,
                      session=state)
    assert (info.command, info.kind) == ("EXECUTE", "write")
    assert ("public.cards", "cvv", "output") in actual_columns(info)
    assert ("public.cards", "holder", "set") in actual_columns(info)
    state.close_statement("s1")
    assert analyze("EXECUTE s1('x', 1)", catalog, session=state)[0].kind == "other"


def test_prepare_then_execute_in_one_string(catalog: Catalog) -> None:
    infos = analyze("PREPARE q AS DELETE FROM transactions WHERE id = 3; EXECUTE q", catalog)
    assert [(i.command, i.kind) for i in infos] == [("PREPARE", "write"), ("EXECUTE", "write")]


def test_fetch_is_described_by_its_declare(catalog: Catalog) -> None:
    state = SessionSqlState()
    (decl,) = analyze("DECLARE cur CURSOR FOR SELECT cvv, holder FROM cards WHERE id > 1",
                      catalog, session=state)
    state.observe(decl)
    (fetch,) = analyze("FETCH 10 FROM cur", catalog, session=state)
    assert (fetch.command, fetch.kind, fetch.limit) == ("FETCH", "read", 10)
    assert actual_relations(fetch) == {"public.cards": ("read",)}
    assert actual_columns(fetch) == {("public.cards", "cvv", "output"),
                                     ("public.cards", "holder", "output"),
                                     ("public.cards", "id", "filter")}
    assert fetch.sql == "FETCH 10 FROM cur" and fetch.has_where is True
    assert fetch.fingerprint == pg_parser.fingerprint("FETCH 10 FROM cur")
    assert analyze("FETCH ALL IN cur", catalog, session=state)[0].limit is None
    assert analyze("FETCH NEXT FROM cur", catalog, session=state)[0].limit == 1
    assert analyze("MOVE 5 IN cur", catalog, session=state)[0].command == "MOVE"
    # a cursor without HOLD ends with its transaction
    state.ready_for_query("T")
    assert "cur" in state.cursors
    state.ready_for_query("I")
    (gone,) = analyze("FETCH cur", catalog, session=state)
    assert (gone.kind, gone.unresolved) == ("other", (("cursor", "cur"),))


def test_holdable_cursor_survives_commit_and_close_ends_it(catalog: Catalog) -> None:
    state = SessionSqlState()
    for sql in ("BEGIN", "DECLARE h CURSOR WITH HOLD FOR SELECT pan FROM cards", "COMMIT"):
        for info in analyze(sql, catalog, session=state):
            state.observe(info)
    state.ready_for_query("I")
    assert analyze("FETCH h", catalog, session=state)[0].kind == "read"
    state.observe(analyze("CLOSE h", catalog, session=state)[0])
    assert "h" not in state.cursors
    # the CLOSE may not have run (an error ahead of it): a FETCH h is still described by
    # the query h had (if the CLOSE ran, the server fails the FETCH)
    (after,) = analyze("FETCH h", catalog, session=state)
    assert after.kind == "read" and actual_columns(after) == {("public.cards", "pan", "output")}
    (declare,) = analyze("DECLARE h CURSOR WITH HOLD FOR SELECT id FROM cards", catalog,
                         session=state)
    state.observe(declare)
    (either,) = analyze("FETCH h", catalog, session=state)  # this one, or the first
    assert actual_columns(either) == {("public.cards", "id", "output"),
                                      ("public.cards", "pan", "output")}
    assert [set(o.sources) for o in either.outputs] == [
        {("public", "cards", "id"), ("public", "cards", "pan")}]
    state.ready_for_query("I")  # WITH HOLD: both outlive their transaction
    assert len(state.cursor_candidates("h")) == 2


def test_what_a_session_keeps_of_reused_names_is_bounded(catalog: Catalog) -> None:
    """Earlier cursors and texts of a name are kept while the server may still have them
    (a CLOSE or DEALLOCATE may not have run). A loop over one name grew them without
    bound (and each cycle cost more): one of each description is kept, two texts."""
    from gateway.sql.session_state import MAX_CURSOR_HISTORY

    state = SessionSqlState()

    def run(sql: str) -> None:
        for info in analyze(sql, catalog, session=state):
            state.observe(info)

    for i in range(300):  # the same query, other constants: one description
        run(f"DECLARE h CURSOR WITH HOLD FOR SELECT holder FROM cards WHERE id = {i}")  # noqa: S608
        run("CLOSE h")
        run(f"PREPARE p AS SELECT holder FROM cards WHERE id = {i}")  # noqa: S608
        run("DEALLOCATE p")
    assert len(state.cursor_candidates("h")) == 1 and not state.cursor_overflow
    assert len(state.sql_texts["p"]) == 2  # (two make an EXECUTE of p ambiguous)
    for i in range(MAX_CURSOR_HISTORY + 1):  # other descriptions: kept up to the bound
        run(f"DECLARE h CURSOR WITH HOLD FOR SELECT holder AS n{i} FROM cards")  # noqa: S608
        run("CLOSE h")
    assert len(state.cursor_history["h"]) == MAX_CURSOR_HISTORY
    assert state.cursor_overflow == {"h"}  # and then the name is refused (the gate)


def test_past_so_many_remembered_names_a_new_one_is_refused(catalog: Catalog) -> None:
    from gateway.enforce.gate import _statement_names
    from gateway.sql.session_state import MAX_NAMES

    state = SessionSqlState()
    state.sql_texts = {f"p{i}": {b"x"} for i in range(MAX_NAMES)}
    state.cursor_history = {f"c{i}": () for i in range(MAX_NAMES)}
    for sql in ("PREPARE fresh AS SELECT 1", "DECLARE fresh CURSOR WITH HOLD FOR SELECT 1"):
        verdict = _statement_names(analyze(sql, catalog, session=state), state, True)
        assert verdict is not None and verdict.error is not None
        assert verdict.error.code == "54000" and "reconnect" in verdict.error.message
    for sql in ("PREPARE p1 AS SELECT 2", "DECLARE c1 CURSOR WITH HOLD FOR SELECT 1"):
        assert _statement_names(analyze(sql, catalog, session=state), state, False) is None


def test_declare_and_fetch_in_one_string(catalog: Catalog) -> None:
    infos = analyze("BEGIN; DECLARE c2 CURSOR FOR SELECT pan FROM cards; FETCH 2 FROM c2; "
                    "COMMIT", catalog)
    assert [i.kind for i in infos] == ["transaction", "read", "read", "transaction"]
    assert actual_columns(infos[2]) == {("public.cards", "pan", "output")}


def test_search_path_changes_resolution(catalog: Catalog) -> None:
    state = SessionSqlState()
    infos = analyze("SET search_path = sqla_ops, public; SELECT pan, note FROM cards", catalog,
                    session=state)
    assert actual_relations(infos[1]) == {"sqla_ops.cards": ("read",)}
    assert state.search_path is None  # untouched until observed
    state.observe(infos[0])
    assert state.search_path == ("sqla_ops", "public")
    (info,) = analyze("SELECT pan FROM cards", catalog, session=state)
    # the SET may not have run (an error ahead of it): the old path's table too, first
    # the one the SET would give
    assert actual_relations(info) == {"sqla_ops.cards": ("read",), "public.cards": ("read",)}
    assert info.relations[0].schema == "sqla_ops"
    # what the server reports wins (PostgreSQL 18 reports search_path); once nothing is
    # outstanding, it is all there is
    state.parameter_status("search_path", '"$user", public')
    state.ready_for_query("I", lambda: True)
    assert actual_relations(analyze("SELECT pan FROM cards", catalog, session=state)[0]) == \
        {"public.cards": ("read",)}
    state.observe(analyze("SET search_path TO sqla_ops", catalog, session=state)[0])
    state.observe(analyze("RESET search_path", catalog, session=state)[0])
    assert state.effective_search_path(catalog) == catalog.default_search_path
    # the server also qualifies through pg_catalog first
    (info,) = analyze("SET search_path = sqla_ops; SELECT upper(1)", catalog)[1:]
    assert info.functions == ("pg_catalog.upper", "sqla_ops.upper")


def test_an_unsettled_search_path_settles_only_on_what_the_server_reported(
        catalog: Catalog) -> None:
    state = SessionSqlState()
    state.parameter_status("search_path", '"$user", public')

    def busy() -> bool:
        raise AssertionError("asked although nothing is unsettled")

    state.ready_for_query("I", busy)  # nothing unsettled: the relay is not asked
    state.observe(analyze("SET search_path TO sqla_ops", catalog, session=state)[0])
    state.ready_for_query("I", lambda: False)  # something still outstanding: no change
    assert state.other_paths == (("$user", "public"),)
    state.ready_for_query("I", lambda: True)  # no report came: the SET did not run
    assert state.search_path == ("$user", "public") and not state.other_paths
    # a path the gateway cannot read: names resolve in every schema, also once settled
    state.parameter_status("search_path", '"unterminated')
    state.ready_for_query("I", lambda: True)
    (info,) = analyze("SELECT pan FROM cards", catalog, session=state)
    assert {"public.cards", "sqla_ops.cards"} <= set(actual_relations(info))
    state.parameter_status("search_path", "public")
    state.ready_for_query("I", lambda: True)
    assert actual_relations(analyze("SELECT pan FROM cards", catalog, session=state)[0]) == \
        {"public.cards": ("read",)}


def test_temp_table_shadowing(catalog: Catalog) -> None:
    state = SessionSqlState()
    (create,) = analyze("CREATE TEMP TABLE cards (pan text, scratch int)", catalog,
                        session=state)
    assert (create.kind, create.command) == ("ddl", "CREATE TABLE")
    assert actual_relations(create) == {"pg_temp.cards": ("write",)}
    assert not create.catalog_changed  # temp tables aren't in the snapshot
    state.observe(create)
    (info,) = analyze("SELECT pan, scratch FROM cards", catalog, session=state)
    # the temp table wins, but the permanent one it shadows is reported too (fail closed)
    assert actual_relations(info) == {"pg_temp.cards": ("read",), "public.cards": ("read",)}
    assert actual_columns(info) == {("pg_temp.cards", "pan", "output"),
                                    ("pg_temp.cards", "scratch", "output"),
                                    ("public.cards", "pan", "output")}
    assert info.to_input()["relations"][0]["temp"] is True
    (explicit,) = analyze("SELECT pan FROM pg_temp.cards", catalog, session=state)
    assert actual_relations(explicit) == {"pg_temp.cards": ("read",)}
    (public,) = analyze("SELECT pan FROM public.cards", catalog, session=state)
    assert actual_relations(public) == {"public.cards": ("read",)}
    state.observe(analyze("ALTER TABLE cards ADD COLUMN extra int", catalog, session=state)[0])
    assert state.temp_relations["cards"].columns == ("pan", "scratch", "extra")
    state.observe(analyze("DROP TABLE cards", catalog, session=state)[0])
    assert state.temp_relations == {}
    (after,) = analyze("SELECT pan FROM cards", catalog, session=state)
    assert actual_relations(after) == {"public.cards": ("read",)}


def test_temp_table_from_select_into_and_discard(catalog: Catalog) -> None:
    state = SessionSqlState()
    infos = analyze("SELECT id, pan AS p INTO TEMP sqla_t FROM cards; SELECT p FROM sqla_t",
                    catalog, session=state)
    assert actual_columns(infos[1]) == {("pg_temp.sqla_t", "p", "output")}
    for info in infos:
        state.observe(info)
    assert "sqla_t" in state.temp_relations
    state.observe(analyze("DISCARD TEMP", catalog, session=state)[0])
    assert analyze("SELECT p FROM sqla_t", catalog, session=state)[0].unresolved


def test_temp_view_keeps_lineage(catalog: Catalog) -> None:
    infos = analyze("CREATE TEMP VIEW tv AS SELECT pan AS p FROM cards; SELECT p FROM tv",
                    catalog)
    assert actual_relations(infos[1]) == {"pg_temp.tv": ("read",), "public.cards": ("read",)}
    assert actual_columns(infos[1]) == {("public.cards", "pan", "output")}


def test_set_role_and_user_schema(catalog: Catalog) -> None:
    state = SessionSqlState(user="alice")
    (info,) = analyze("SET ROLE sqla_ops", catalog, session=state)
    assert info.details["value"] == "sqla_ops"
    state.observe(info)
    assert state.current_user == "sqla_ops"
    # "$user" now names the sqla_ops schema (it exists), so it comes first
    (q,) = analyze("SELECT pan FROM cards", catalog, session=state)
    assert actual_relations(q) == {"sqla_ops.cards": ("read",)}
    state.observe(analyze("RESET ROLE", catalog, session=state)[0])
    assert state.current_user == "alice"
    state.observe(analyze("SET SESSION AUTHORIZATION bob", catalog, session=state)[0])
    assert state.current_user == "bob"
    state.observe(analyze("SET SESSION AUTHORIZATION DEFAULT", catalog, session=state)[0])
    assert state.current_user == "alice"


def test_acting_as_a_role_resolves_user_schema_names_as_the_role(catalog: Catalog) -> None:
    """A db_role statement runs after SET ROLE: `acting_as` resolves it as the server
    will, and `user_schema_differs` says when that can differ from the session user's."""
    state = SessionSqlState(user="alice")  # no schema named alice
    assert state.user_schema_differs("sqla_ops", catalog)  # sqla_ops has one
    assert not state.user_schema_differs("nobody_has_this", catalog)
    assert not state.user_schema_differs("alice", catalog)
    with state.acting_as("sqla_ops"):
        (q,) = analyze("SELECT pan FROM cards", catalog, session=state)
    assert actual_relations(q) == {"sqla_ops.cards": ("read",)}
    assert state.current_user == "alice"
    (q,) = analyze("SELECT pan FROM cards", catalog, session=state)
    assert actual_relations(q) == {"public.cards": ("read",)}
    state.search_path = "public"  # no "$user" on the path: the role's schema is not searched
    assert not state.user_schema_differs("sqla_ops", catalog)
    as_ops = SessionSqlState(user="sqla_ops")  # the user's own schema, not the role's
    assert as_ops.user_schema_differs("nobody_has_this", catalog)


def test_effects_and_catalog_changed(catalog: Catalog) -> None:
    (ddl,) = analyze("CREATE TABLE sqla_z (a int)", catalog)
    assert ddl.catalog_changed
    (read,) = analyze("SELECT 1", catalog)
    assert not read.catalog_changed and read.effects == () and read.cacheable
    infos = analyze("CREATE TABLE sqla_z2 (a int, b text); INSERT INTO sqla_z2 VALUES (1, 'x')",
                    catalog)
    # the table created earlier in the same string resolves for the INSERT
    assert actual_columns(infos[1]) == {("public.sqla_z2", "a", "insert"),
                                        ("public.sqla_z2", "b", "insert")}
    assert infos[1].unresolved == ()


def test_do_block_and_call_are_other(catalog: Catalog) -> None:
    (do,) = analyze("DO LANGUAGE plpgsql $$ BEGIN DELETE FROM cards; END $$", catalog)
    assert (do.kind, do.command, do.details) == ("other", "DO", {"language": "plpgsql"})
    (call,) = analyze("CALL sqla_ops.touch((SELECT id FROM cards LIMIT 1))", catalog)
    assert call.kind == "other"
    assert ("public.cards", "id", "output") in actual_columns(call)


def test_listen_notify_details(catalog: Catalog) -> None:
    infos = analyze("LISTEN jobs; NOTIFY jobs, 'x'; UNLISTEN jobs", catalog)
    assert [(i.command, i.kind, i.details.get("channel")) for i in infos] == [
        ("LISTEN", "session", "jobs"), ("NOTIFY", "utility", "jobs"),
        ("UNLISTEN", "session", "jobs")]


def test_unknown_statement_types_fail_closed(catalog: Catalog) -> None:
    (info,) = analyze("CREATE PUBLICATION sqla_pub FOR TABLE cards", catalog)
    assert info.kind == "ddl"
    (imp,) = analyze("IMPORT FOREIGN SCHEMA s FROM SERVER x INTO public", catalog)
    assert (imp.kind, imp.command) == ("ddl", "IMPORT FOREIGN SCHEMA")


def test_outputs_exactness(catalog: Catalog) -> None:
    (exact,) = analyze("SELECT * FROM cards c JOIN transactions t USING (id)", catalog)
    assert exact.outputs_exact and len(exact.outputs) == 8
    (inexact,) = analyze("SELECT * FROM cards c, jsonb_each(to_jsonb(c)) j", catalog)
    assert not inexact.outputs_exact
    (aliased,) = analyze("SELECT x.* FROM (cards c CROSS JOIN jsonb_each('{}') j) AS x",
                         catalog)
    assert not aliased.outputs_exact
    (coldef,) = analyze("SELECT * FROM json_to_record('{}') AS r(a int, b text)", catalog)
    assert coldef.outputs_exact and [o.name for o in coldef.outputs] == ["a", "b"]
    assert not analyze("SHOW search_path", catalog)[0].outputs_exact


def test_resolution_key_separates_session_states(catalog: Catalog) -> None:
    a, b = SessionSqlState(), SessionSqlState()
    assert a.resolution_key(catalog) == b.resolution_key(catalog)
    a.observe(analyze("CREATE TEMP TABLE t1 (x int)", catalog, session=a)[0])
    b.observe(analyze("CREATE TEMP TABLE t2 (y int)", catalog, session=b)[0])
    assert a.resolution_key(catalog) != b.resolution_key(catalog)
    c = SessionSqlState()
    c.observe(analyze("CREATE TEMP TABLE t1 (x int)", catalog, session=c)[0])
    assert c.resolution_key(catalog) == a.resolution_key(catalog)
    c.observe(analyze("SET search_path = sqla_ops", catalog, session=c)[0])
    assert c.resolution_key(catalog) != a.resolution_key(catalog)


def test_reset_all_keeps_the_role(catalog: Catalog) -> None:
    state = SessionSqlState(user="svc")
    for sql in ("SET ROLE sqla_ops", "SET search_path = sqla_ops", "RESET ALL"):
        state.observe(analyze(sql, catalog, session=state)[0])
    assert state.current_user == "sqla_ops" and state.search_path is None
    state.observe(analyze("DISCARD ALL", catalog, session=state)[0])
    assert state.current_user == "svc"


def test_view_without_definition_is_unresolved() -> None:
    cat = Catalog([Relation("public", "v", "view", ("a",)),
                   Relation("pg_catalog", "pg_roles", "view", ("rolname",))])
    (info,) = analyze("SELECT a FROM v", cat)
    assert ("view", "public.v") in info.unresolved
    (system,) = analyze("SELECT rolname FROM pg_roles", cat)  # system views are opaque
    assert system.unresolved == ()
    assert actual_columns(system) == {("pg_catalog.pg_roles", "rolname", "output")}


def test_system_columns_resolve(catalog: Catalog) -> None:
    (info,) = analyze("SELECT ctid, tableoid, pan FROM cards WHERE xmin::text <> ''", catalog)
    assert info.unresolved == ()
    assert actual_columns(info) == {("public.cards", "pan", "output")}


def test_analysis_is_deterministic(catalog: Catalog) -> None:
    sql = ("SELECT c, t.* FROM cards c JOIN transactions t ON t.card_id = c.id "
           "WHERE c.pan LIKE '4%' ORDER BY t.amount")
    first = analyze(sql, catalog)[0].to_input(CLASSIFICATION)
    assert [c["name"] for c in first["columns"]] == [
        "id", "holder", "pan", "cvv", "expiry", "id", "card_id", "amount", "created_at"]
    assert analyze(sql, catalog)[0].to_input(CLASSIFICATION) == first


# ---------------------------------------------------------------------------------------------
# Plain vs derived lineage (what masking can rewrite in place, and what it must refuse)
# ---------------------------------------------------------------------------------------------

PAN = ("public", "cards", "pan")

PLAIN_PAN = [
    "SELECT pan FROM cards",
    "SELECT pan AS x FROM cards",
    "SELECT c.pan FROM cards c",
    "SELECT (c).pan FROM cards c",
    "SELECT public.cards.pan FROM cards",
    "SELECT x FROM (SELECT pan AS x FROM cards) s",
    "WITH t AS (SELECT pan FROM cards) SELECT pan FROM t",
    "WITH t(y) AS (SELECT pan FROM cards) SELECT y FROM t",
    "SELECT pan FROM cards UNION SELECT 'x'",
    "SELECT holder FROM cards UNION ALL SELECT pan FROM cards",
    "SELECT * FROM cards",
    "SELECT c.* FROM cards c",
    "SELECT s.* FROM (SELECT pan FROM cards) s",
    "SELECT pan FROM sqla_ops.v_ledger",
    "SELECT v.pan FROM cards c, LATERAL (SELECT c.pan) v",
    "SELECT DISTINCT pan FROM cards",
    "SELECT pan FROM cards ORDER BY pan",
    "SELECT pan FROM cards GROUP BY pan",
    "VALUES ((SELECT 1))",  # no pan at all: checked below as neither
]

DERIVED_PAN = [
    "SELECT upper(pan) FROM cards",
    "SELECT pan::bigint FROM cards",
    "SELECT CAST(pan AS varchar(40)) FROM cards",
    "SELECT pan || '' FROM cards",
    "SELECT substr(pan, 1, 8) FROM cards",
    "SELECT reverse(pan) FROM cards",
    "SELECT encode(pan::bytea, 'base64') FROM cards",
    "SELECT md5(pan) FROM cards",
    "SELECT string_agg(pan, ',') FROM cards",
    "SELECT max(pan) FROM cards",
    "SELECT array_agg(pan) FROM cards",
    "SELECT ARRAY[pan] FROM cards",
    "SELECT ROW(pan) FROM cards",
    "SELECT c FROM cards c",
    "SELECT row_to_json(c) FROM cards c",
    "SELECT to_json(c.*) FROM cards c",
    "SELECT json_build_object('p', pan) FROM cards",
    "SELECT xmlelement(name p, pan) FROM cards",
    "SELECT CASE WHEN pan LIKE '4%' THEN 'visa' END FROM cards",
    "SELECT coalesce(pan, 'none') FROM cards",
    "SELECT (SELECT pan FROM cards LIMIT 1)",
    "SELECT x FROM (SELECT lower(pan) AS x FROM cards) s",
    "WITH t AS (SELECT translate(pan, '0123456789', 'abcdefghij') p FROM cards) SELECT p FROM t",
    "SELECT u FROM cards, LATERAL upper(pan) u",
    "SELECT * FROM cards, unnest(ARRAY[pan]) AS u",
    "SELECT pan COLLATE \"C\" FROM cards",
    "SELECT format('%s', pan) FROM cards",
    "SELECT last4 FROM sqla_card_summary",
]


@pytest.mark.parametrize("sql", PLAIN_PAN[:-1])
def test_plain_references_keep_plain_lineage(sql: str, catalog: Catalog) -> None:
    (info,) = analyze(sql, catalog)
    plain = [o for o in info.outputs if PAN in o.sources]
    assert plain, info.outputs
    assert all(PAN not in o.derived for o in info.outputs), info.outputs


@pytest.mark.parametrize("sql", DERIVED_PAN)
def test_expressions_over_a_column_are_derived(sql: str, catalog: Catalog) -> None:
    (info,) = analyze(sql, catalog)
    assert any(PAN in o.derived for o in info.outputs), info.outputs
    # nothing computed from pan is presented as pan's plain value
    assert all(PAN not in o.sources for o in info.outputs
               if o.name not in ("pan",)), info.outputs


def test_derived_lineage_does_not_leak_into_column_keys(catalog: Catalog) -> None:
    (info,) = analyze("SELECT upper(pan) FROM cards WHERE lower(holder) = 'x'", catalog)
    assert {(c.table, c.name): c.usage for c in info.columns} == {
        ("cards", "holder"): ("filter",), ("cards", "pan"): ("output",)}


def test_the_parse_cache_is_bounded_by_what_its_trees_weigh() -> None:
    """A 14 KB text of 7000 constants is a 4 MB tree: the cache counts its trees' weight
    (their JSON's length), not only their number. Found by a probe of leaks and limits:
    100 such texts pinned 560 MB."""
    import importlib

    parse_module = importlib.import_module("gateway.sql.parse")
    parse_module.parse_cache_clear()
    try:
        heavy = "select 1 where 1 in (" + ",".join(["1"] * 7000) + ")"
        assert len(heavy) <= parse_module.CACHE_MAX_TEXT
        parse_module.parse(heavy)
        assert heavy not in parse_module._cache  # one entry past the per-entry weight
        light = [f"select {i} where 1 in (" + ",".join(["1"] * 600) + ")" for i in range(400)]
        for sql in light:
            assert parse_module.parse(sql) is parse_module.parse(sql)  # cached
        assert parse_module._cache_weight <= parse_module.CACHE_MAX_WEIGHT
        assert len(parse_module._cache) < len(light)  # the oldest went
        assert light[-1] in parse_module._cache and light[0] not in parse_module._cache
        assert parse_module._cache_weight == sum(w for _, w in parse_module._cache.values())
    finally:
        parse_module.parse_cache_clear()
