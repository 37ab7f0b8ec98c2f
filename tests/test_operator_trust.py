"""Comparing a masked column (=, <, LIKE...) is an oracle, not a copy: the gateway lets
it through for the policy to judge. That holds for PostgreSQL's own operators only. An
operator is a function: one defined outside pg_catalog can do anything with the value
it is given (raise it in a notice or an error, store it), and PostgreSQL picks it over
the built-in one when it is named by schema, when its schema comes before pg_catalog in
the search_path, or when its argument types fit better. Raw protocol, against a policy
that masks cards.holder (a name: the PAN safety net would not catch it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import PgBackend
from rawclient import RawClient
from test_prepared_names import RAW, gw  # noqa: F401  (the masking gateway)

from gateway.devtools.harness import GatewayProcess
from gateway.wire import frontend as fe

# A DBA's (or an extension's) operators: each tells what it compares.
SETUP = """
DROP SCHEMA IF EXISTS spo CASCADE;
CREATE SCHEMA spo;
CREATE FUNCTION spo.tell(a text, b text) RETURNS bool LANGUAGE plpgsql AS
  $$ BEGIN RAISE NOTICE 'compared %', a; RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE FUNCTION spo.tell_int(a text, b int) RETURNS bool LANGUAGE plpgsql AS
  $$ BEGIN RAISE NOTICE 'compared %', a; RETURN false; END $$;
CREATE OPERATOR spo.= (LEFTARG = text, RIGHTARG = text, FUNCTION = spo.tell);
CREATE OPERATOR spo.< (LEFTARG = text, RIGHTARG = int, FUNCTION = spo.tell_int);
GRANT USAGE ON SCHEMA spo TO PUBLIC;
"""


@pytest.fixture(scope="module")
def operators(gw: GatewayProcess, pg: PgBackend) -> Iterator[None]:  # noqa: F811
    pg.server.psql(SETUP, dbname="payments")
    with RawClient(gw) as client:  # DDL through the gateway refreshes its catalog
        client.login(gw.token())
        client.send(fe.Query("create temp table spo_refresh (x int)").encode())
        client.read_until(b"Z")
    yield
    pg.server.psql("DROP SCHEMA IF EXISTS spo CASCADE", dbname="payments")


CASES = {
    "named by schema": (None, "select id from cards where holder operator(spo.=) 'x'"),
    "its schema first": ("set search_path = spo, pg_catalog, public",
                         "select id from cards where holder = 'x'"),
    "in the path, types fit": ("set search_path = public, spo",
                               "select id from cards where holder < 1"),
    "in the path, in a subquery": ("set search_path = public, spo",
                                   "select count(*) from (select id from cards "
                                   "where holder < 1) s"),
}
# Every construct that compares with an operator PostgreSQL looks up by name.
FIRST = "set search_path = spo, pg_catalog, public"
for name, where in {
    "IN": "holder in ('x', 'y')",
    "= ANY (array)": "holder = any (array['x'])",
    "= ANY (subquery)": "holder = any (select 'x')",
    "IS DISTINCT FROM": "holder is distinct from 'x'",
    "NULLIF": "nullif(holder, 'x') is null",
    "CASE x WHEN": "case holder when 'x' then true else false end",
    "NOT BETWEEN": "holder not between 'a' and 'b'",
    "a row": "(holder, id) = ('x', 1)",
    "in the subquery's output": "'x' = any (select holder from cards)",
}.items():
    CASES[name] = (FIRST, "select id from cards where " + where)  # noqa: S608
CASES["JOIN USING"] = (FIRST, "select c.id from cards c join cards d using (holder)")
CASES["NATURAL JOIN"] = (FIRST, "select id from cards natural join (select holder from cards) h")
CASES["ORDER BY USING"] = (None, "select id from cards order by holder using operator(spo.<)")
CASES["window ORDER BY USING"] = (
    None, "select id, row_number() over (order by holder using operator(spo.<)) from cards")


@pytest.mark.parametrize("case", list(CASES))
def test_a_masked_column_never_reaches_an_operator_outside_pg_catalog(
        gw: GatewayProcess, operators: None, case: str) -> None:  # noqa: F811
    setup, sql = CASES[case]
    with RawClient(gw) as client:
        client.login(gw.token())
        if setup is not None:
            client.send(fe.Query(setup).encode())
            assert client.read_until(b"Z")[-1].type == b"Z"
        client.send(fe.Query(sql).encode())
        got = client.read_until(b"Z")
        assert got and got[-1].type == b"Z", got
        everything = b"".join(m.body for m in got)
        assert RAW not in everything, got
        assert [m.type for m in got] == [b"E", b"Z"], got
        assert got[0].fields()["C"] == "42501", got[0].fields()
        client.send(fe.Query("select 1").encode())  # the session goes on
        assert client.read_until(b"Z")[-1].type == b"Z"


def test_pg_catalog_operators_still_compare_a_masked_column(
        gw: GatewayProcess, operators: None) -> None:  # noqa: F811
    """With the user's operators off the path (and none of theirs named), or none of
    the name compared with, a comparison is PostgreSQL's own: the policy's call, and
    this one allows it."""
    with RawClient(gw) as client:
        client.login(gw.token())
        client.send(fe.Query("select id from cards where holder = 'nobody'").encode())
        assert [m.type for m in client.read_until(b"Z")] == [b"T", b"C", b"Z"]
        client.send(fe.Query(
            "select id from cards where holder operator(pg_catalog.=) 'nobody'").encode())
        assert [m.type for m in client.read_until(b"Z")] == [b"T", b"C", b"Z"]
        # spo defines no <> nor <= and >=: NOT IN and BETWEEN compare with pg_catalog's,
        # wherever spo is
        client.send(fe.Query(FIRST).encode())
        client.read_until(b"Z")
        for where in ("holder not in ('x')", "holder between 'A' and 'z'"):
            client.send(fe.Query("select id from cards where " + where).encode())  # noqa: S608
            got = client.read_until(b"Z")
            assert [m.type for m in got][:2] == [b"T", b"D"] and got[-1].type == b"Z", got
            assert RAW not in b"".join(m.body for m in got)
