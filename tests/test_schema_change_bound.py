"""A session's schema changes, as far as a prepared statement's Bind is checked against
them: bounded however much DDL the session runs, and never forgetting one into a fresh
verdict."""

from __future__ import annotations

from gateway.catalog.model import Catalog, Relation
from gateway.sql import SessionSqlState, analyze
from gateway.sql.session_state import MAX_SCHEMA_WRITES

CATALOG = Catalog(
    relations=(
        Relation("public", "cards", "table", ("id", "holder", "pan"), oid=1),
        Relation("public", "notes", "table", ("id", "body"), oid=2),
    ),
    schemas=("public",),
    user="svc",
)
READ_CARDS = "SELECT holder FROM cards WHERE id = $1"


def _run(state: SessionSqlState, sql: str) -> None:
    """`sql` analyzed and allowed in the session (its effects applied)."""
    for info in analyze(sql, CATALOG, session=state):
        state.observe(info)


def _prepare(state: SessionSqlState, name: str) -> None:
    state.register_parse(name, READ_CARDS, reads=frozenset({"cards"}))


def test_ddl_without_end_keeps_the_session_bounded() -> None:
    state = SessionSqlState()
    _prepare(state, "early")
    for n in range(3 * MAX_SCHEMA_WRITES + 7):  # a staging table per job, on one connection
        _run(state, f"CREATE TABLE staging_{n} (id int)")
        assert len(state.schema_writes) <= MAX_SCHEMA_WRITES
    # Decided before changes the gateway no longer tells apart: stale, never fresh, though
    # none of them touched `cards`.
    why = state.stale("early")
    assert why is not None and "no longer tells apart" in why


def test_statements_decided_after_a_fold_are_checked_as_before() -> None:
    state = SessionSqlState()
    for n in range(MAX_SCHEMA_WRITES + 1):  # just past the bound: folded
        _run(state, f"CREATE TABLE staging_{n} (id int)")
    assert state.schema_writes == []
    _prepare(state, "late")
    _run(state, "CREATE TABLE staging_other (id int)")
    assert state.stale("late") is None  # a change elsewhere leaves it alone
    _run(state, "ALTER TABLE cards RENAME TO cards_old")
    why = state.stale("late")
    assert why is not None and "reads a relation a schema change" in why


def test_a_statement_prepared_just_before_the_fold_is_stale() -> None:
    state = SessionSqlState()
    for n in range(MAX_SCHEMA_WRITES):
        _run(state, f"CREATE TABLE staging_{n} (id int)")
    _prepare(state, "edge")
    _run(state, "ALTER TABLE cards ADD COLUMN cvv text")  # touches what it reads, and folds
    assert state.schema_writes == []
    assert state.stale("edge") is not None
    _prepare(state, "after")
    assert state.stale("after") is None
