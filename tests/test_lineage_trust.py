"""The analyzer must find the columns PostgreSQL finds. Where it took a name for another
column than PostgreSQL does, a masked column's value went out as something harmless:
a function in FROM whose result columns it guessed, a subquery column it named otherwise
than PostgreSQL (COLLATE, NULLIF, CASE, a scalar subquery over a set operation or
VALUES), a WITH RECURSIVE item reading one defined after it, the call f(rel) written
rel.f, the columns SEARCH and CYCLE add. Found by adversarial probes. Against a policy
that allows everything and masks cards.holder (a name: the PAN safety net would not
catch it): every statement is masked or refused, never raw."""

from __future__ import annotations

import psycopg
import pytest
from test_prepared_names import gw  # noqa: F401  (the masking gateway)

from gateway.devtools.harness import GatewayProcess

HOLDERS = ("Alice Martin", "Bob Chen", "Carol Diaz", "Dan Okafor", "Eve Novak")


def past_decoy(name: str, inner: str) -> str:
    """Column `name` of subquery `inner`, read where an outer decoy has that name too."""
    return (f"select x.v from (select 'decoy'::text as {name}) o, "  # noqa: S608
            f"lateral (select {name} as v from ({inner}) y) x")


STATEMENTS = {
    # a function in FROM: jsonb_each has the columns key and value, not one named
    # after its alias; `holder` is the outer cards.holder
    "function alias, scalar subquery":
        "select (select holder from jsonb_each('{\"a\":1}') holder) from cards",
    "function alias, lateral":
        "select x.h from cards, lateral (select holder as h from jsonb_each('{\"a\":1}') "
        "as holder) x",
    "function alias, computed in EXISTS":
        "select id from cards where exists (select 1 from jsonb_each('{\"a\":1}') holder "
        "where holder::int = 1)",
    "function alias, pg_control_system":
        "select (select holder from pg_control_system() holder) from cards",
    "function alias, COPY":
        "copy (select (select holder from jsonb_each('{\"a\":1}') holder) from cards) to stdout",
    # subquery columns PostgreSQL names otherwise than a guess would
    "COLLATE keeps the name":
        past_decoy("holder", 'select c.holder collate "C" from cards c'),
    "COLLATE, scalar subquery":
        "select (select holder from (select c.holder collate \"C\" from cards c "
        "where c.id = 1) y) from (select 'decoy'::text as holder) o",
    "NULLIF is named nullif":
        past_decoy("nullif", "select nullif(c.holder, '') from cards c"),
    "CASE is named case":
        past_decoy('"case"', "select case when c.id > 0 then c.holder else 'x'::text end "
                             "from cards c"),
    "a scalar subquery over UNION":
        past_decoy("holder", "select (select c.holder union all select 'q' limit 1) "
                             "from cards c"),
    "a scalar subquery over VALUES":
        past_decoy("column1", "select (values (c.holder)) from cards c"),
    "a scalar subquery over *":
        past_decoy("holder", "select (select * from (select c.holder) s) from cards c"),
    # WITH RECURSIVE: every item sees every other, a later one too
    "RECURSIVE, a later item named like a table":
        "with recursive a as (select * from transactions), transactions as (select holder "
        "collate \"C\" as w, 1 as x, 2 as y, 3 as z from cards) select * from a",
    "RECURSIVE, a later item, no COLLATE":
        "with recursive a as (select * from transactions), transactions as (select holder "
        "as w, 1 as x, 2 as y, 3 as z from cards union all select null, 1, 2, 3 where false) "
        "select * from a",
    # rel.f where rel has no column f is the call f(rel): the whole row
    "rel.to_json": "select c.to_json from cards c where id = 1",
    "rel.row_to_json": "select c.row_to_json from cards c where id = 1",
    "schema.rel.to_jsonb": "select public.cards.to_jsonb from cards where id = 1",
    "rel.concat": "select c.concat from cards c where id = 1",
    "rel.to_json, lateral": "select x.j from cards c, lateral (select c.to_jsonb as j) x",
    "rel.to_json, COPY": "copy (select c.to_json from cards c) to stdout",
    # the columns SEARCH and CYCLE add, reached past an outer decoy of the same name
    "CYCLE path": "with recursive t(a, n) as (select c.holder, 1 from cards c where c.id = 1 "
                  "union all select a, n + 1 from t where n < 2) cycle a set is_cycle using "
                  "path select (select path from t limit 1) from (select 'decoy'::text as "
                  "path) o",
    "SEARCH sequence": "with recursive t(a, n) as (select c.holder, 1 from cards c where "
                       "c.id = 1 union all select a, n + 1 from t where n < 2) search "
                       "breadth first by a set ord select (select ord from t limit 1) from "
                       "(select 'decoy'::text as ord) o",
    # (x).f is a field of x or the call f(x): (holder).int4 casts, and its error quotes
    "(col).int4 in WHERE": "select id from cards where (holder).int4 = 1",
    "(rel).col.int4 in WHERE": "select id from cards c where (c).holder.int4 = 1",
    "(col).numeric in GROUP BY": "select count(*) from cards group by (holder).numeric",
    "(col).json in WHERE": "select id from cards where (holder).json is null",
    # (x).* is as many columns as x has: counted as one, it moved the masked position
    "(x).* before the masked column":
        "select (t0).*, u.h, (t2).* from (select holder as h from cards union all "
        "select 'x' where false) u, (select) t0, (select 1 as a, 2 as b) t2",
    "(x).* in COPY": "copy (select (t0).*, c.holder, (t2).* from cards c, (select) t0, "
                     "(select 1 as a, 2 as b) t2) to stdout",
    # a recursive item that moves a column one place each round: five rounds to settle
    "RECURSIVE, rotating columns":
        "with recursive r(a, b, c, d, e, f, n) as (select holder, 'x', 'x', 'x', 'x', 'x', 0 "
        "from cards union all select f, a, b, c, d, e, n + 1 from r where n < 6) "
        "select f from r",
}


@pytest.mark.parametrize("case", list(STATEMENTS))
def test_a_masked_column_is_never_taken_for_another(gw: GatewayProcess,  # noqa: F811
                                                    case: str) -> None:
    sql = STATEMENTS[case]
    with psycopg.connect(gw.dsn("payments"), password=gw.token(), autocommit=True) as c:
        try:
            if sql.startswith("copy"):
                with c.cursor().copy(sql) as copy:
                    got = repr([bytes(b) for b in copy])
            else:
                got = repr(c.execute(sql).fetchall())
        except psycopg.errors.InsufficientPrivilege as e:
            got = str(e)
            assert "refused" in got or "denied" in got, got
        except psycopg.Error as e:  # anything else the server says must hold no value
            got = f"{type(e).__name__}: {e} {e.diag.message_detail}"
            assert not isinstance(e, psycopg.errors.InvalidTextRepresentation), got
    assert not any(h in got for h in HOLDERS), got
