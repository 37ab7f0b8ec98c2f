"""Reusing an analysis across texts that differ only in constants' values."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.catalog.model import Catalog, Relation
from gateway.enforce.shapes import restate, reusable, shape_of
from gateway.sql import SessionSqlState, StatementInfo, analyze

CATALOG = Catalog(
    relations=(
        Relation("public", "cards", "table", ("id", "holder", "pan", "cvv", "expiry"), oid=1),
        Relation("public", "transactions", "table", ("id", "card_id", "amount"), oid=2),
    ),
    schemas=("public",),
    user="svc",
)

TEMPLATES = [
    "SELECT holder FROM cards WHERE id = {i}",
    "SELECT holder, pan FROM cards WHERE holder = {s} AND id > {i};",
    "UPDATE transactions SET amount = {f} WHERE id = {i}",
    "INSERT INTO transactions (card_id, amount) VALUES ({i}, {f})",
    "DELETE FROM transactions WHERE amount < {f} AND card_id IN ({i}, {i})",
    "SELECT t.amount FROM transactions t JOIN cards c ON c.id = t.card_id WHERE c.holder <> {s}",
]


def fill(template: str, i: int, f: float, s: str) -> str:
    return template.format(i=i, f=f"{abs(f):.2f}", s="'" + s.replace("'", "''") + "'")


def test_same_shape_for_other_values_only() -> None:
    a = shape_of("SELECT holder FROM cards WHERE id = 1")
    b = shape_of("SELECT holder FROM cards WHERE id = 99;")
    assert a is not None and b is not None and a.key == b.key
    assert shape_of("SELECT pan FROM cards WHERE id = 1").key != a.key  # other column
    assert shape_of("SELECT holder FROM cards WHERE id = 1.5").key != a.key  # other type
    assert shape_of("SELECT holder FROM cards WHERE id = $1").key != a.key
    assert shape_of("SELECT holder FROM cards WHERE id = '1'").key != a.key
    assert shape_of("SELECT 1; SELECT 2") is None


@pytest.mark.parametrize("sql", [
    "SELECT holder FROM cards LIMIT 5",  # LIMIT is a fact taken from a constant
    # a position names a column: ORDER BY 2 sorts by another column than ORDER BY 1
    "SELECT holder, pan FROM cards ORDER BY 1",
    "SELECT holder, pan FROM cards GROUP BY 1, 2",
    "SELECT DISTINCT ON (1) holder, pan FROM cards",
    "SELECT t.amount FROM (SELECT amount, card_id FROM transactions ORDER BY 2) t",
    "SET search_path TO public",  # session statements carry their values as details
    "COPY cards TO STDOUT",
])
def test_facts_from_constants_are_never_reused(sql: str) -> None:
    (info,) = analyze(sql, CATALOG, session=SessionSqlState())
    shape = shape_of(sql)
    assert shape is not None and not reusable(info, sql, shape)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(TEMPLATES), st.integers(-10**9, 10**9), st.floats(0, 1e6),
       st.text(max_size=20).filter(lambda t: "\0" not in t),
       st.integers(-10**9, 10**9), st.floats(0, 1e6), st.text(max_size=20).filter(
           lambda t: "\0" not in t))
def test_restated_analysis_equals_a_fresh_one(template: str, i1: int, f1: float, s1: str,
                                              i2: int, f2: float, s2: str) -> None:
    first, second = fill(template, i1, f1, s1), fill(template, i2, f2, s2)
    shape1, shape2 = shape_of(first), shape_of(second)
    assert shape1 is not None and shape2 is not None
    if shape1.key != shape2.key:  # e.g. a negative number lexes as an operator + constant
        return
    (info1,) = analyze(first, CATALOG, session=SessionSqlState())
    (info2,) = analyze(second, CATALOG, session=SessionSqlState())
    assert reusable(info1, first, shape1)
    assert restate(info1, second, shape2).to_input() == info2.to_input()
    assert restate(info1, second, shape2) == info2  # with_sql copies every other field


REDACTION_CASES = [
    "SELECT holder FROM cards WHERE id = 4111111111111111",
    "/* lead */ SELECT 'a''b', E'\\\\x', B'101', X'ff', U&'d', 1.5e3, $2 -- tail\n;",
    "SELECT $$dollar 4111111111111111$$ /* inner */ FROM cards WHERE holder = $tag$x$tag$",
    "UPDATE cards SET pan = '5500005555555559' WHERE id = $1",
    "SELECT 1",
    "  SELECT\n\tholder  FROM cards  ",
]


@pytest.mark.parametrize("sql", REDACTION_CASES)
def test_the_shape_redacts_like_the_audit_trail(sql: str) -> None:
    from gateway.audit.redact import redact_sql

    shape = shape_of(sql)
    assert shape is not None
    own = sql[shape.span[0] : shape.span[1]]
    assert shape.redacted == redact_sql(own)
    assert "4111" not in shape.redacted and "5500" not in shape.redacted


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(TEMPLATES), st.integers(-10**9, 10**9), st.floats(0, 1e6),
       st.text(max_size=20).filter(lambda t: "\0" not in t))
def test_shape_redaction_matches_redact_sql(template: str, i: int, f: float, s: str) -> None:
    from gateway.audit.redact import redact_sql

    sql = fill(template, i, f, s)
    shape = shape_of(sql)
    assert shape is not None
    assert shape.redacted == redact_sql(sql[shape.span[0] : shape.span[1]])


def test_with_sql_copies_every_field_but_the_text() -> None:
    from dataclasses import fields

    # a distinct object in every field: a slot left out or crossed would show
    values = {f.name: object() for f in fields(StatementInfo)}
    info = StatementInfo(**values)
    other = info.with_sql("SELECT 2")
    assert other.sql == "SELECT 2" and info.sql is values["sql"]
    for f in fields(StatementInfo):
        if f.name != "sql":
            assert getattr(other, f.name) is values[f.name], f.name
