"""The audit trail's per-statement promise (docs/audit.md): every statement the gateway
forwarded has its records, and a session's totals are its statements'. A real
PostgreSQL, a real gateway with an audit trail, real clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import PgBackend, app_session, audit_yaml, upstreams_for
from rawclient import RawClient

from gateway.devtools.harness import GatewayProcess

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "policies" / "pci"





@pytest.fixture(scope="module")
def audited(pg: PgBackend, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[GatewayProcess, Path]]:
    d = tmp_path_factory.mktemp("audit-statements")
    with GatewayProcess(d / "gw", upstreams_for(pg), policy_dir=POLICY,
                        extra_yaml=audit_yaml(d)) as gw:
        yield gw, d / "audit"


def _query(sql: str) -> bytes:
    body = sql.encode() + b"\0"
    return b"Q" + (len(body) + 4).to_bytes(4, "big") + body


@pytest.mark.parametrize("sql", ["", " ", "-- only a comment", ";"])
def test_an_empty_query_is_not_refused_as_an_audit_outage(
        audited: tuple[GatewayProcess, Path], sql: str) -> None:
    """An empty query string runs nothing (PostgreSQL answers EmptyQueryResponse; pgJDBC's
    Connection.isValid() sends one). With the audit trail healthy the gateway must not
    refuse it with 58030 "the audit trail cannot be written" (docs/audit.md: 58030 is
    for a trail that cannot be written) and leave no record of the refusal."""
    gw, audit_dir = audited
    app = f"empty-{len(sql)}"
    with RawClient(gw, tls=True) as c:
        c.startup({"user": "ci-bot", "database": "payments", "application_name": app})
        first = c.read_until(b"R", b"E")
        assert first[-1].type == b"R"
        c.password(gw.token(groups=("ci",)))
        assert c.read_until(b"Z", b"E")[-1].type == b"Z"
        c.send(_query(sql))
        answer = c.read_until(b"Z")
        c.send(_query("select 1 as after_empty"))
        after = c.read_until(b"Z")
        c.send(b"X\0\0\0\4")
    assert [m.type for m in after][-3:] == [b"D", b"C", b"Z"]
    errors = [m.fields() for m in answer if m.type == b"E"]
    assert not errors, errors
    assert [m.type for m in answer] == [b"I", b"Z"]
    mine = app_session(audit_dir, app)
    assert not any(r["type"] == "decision" and r["outcome"] == "denied" for r in mine)


def test_session_end_totals_count_the_denied_statements(
        audited: tuple[GatewayProcess, Path]) -> None:
    """session.end's totals have a `denied` counter (docs/audit.md, record types; `audit
    show` prints it as "N denied"): a session whose statements the policy refused must
    not say 0 denied."""
    gw, audit_dir = audited
    with psycopg.connect(gw.dsn("payments"), password=gw.token(groups=("ci",)),
                         application_name="denied", autocommit=True) as c:
        assert c.execute("select 1 as ok_first").fetchone() == (1,)
        for _ in range(2):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("select cvv from cards")
    mine = app_session(audit_dir, "denied")
    denied = [r for r in mine if r["type"] == "decision" and r["outcome"] == "denied"]
    assert len(denied) == 2
    (end,) = [r for r in mine if r["type"] == "session.end"]
    assert end["totals"]["allowed"] == 1
    assert end["totals"]["denied"] == len(denied), end["totals"]


def _hits(mine: list[dict]) -> dict[str, int]:
    """safety_net_hits of each statement record, by its decision's redacted SQL."""
    sql = {r["seq"]: r["sql"] for r in mine if r["type"] == "decision"}
    return {sql[r["decision_seq"]]: r["safety_net_hits"] for r in mine
            if r["type"] == "statement"}


def test_a_card_number_in_a_servers_report_is_not_counted_in_the_next_statement(
        audited: tuple[GatewayProcess, Path]) -> None:
    """PostgreSQL (14+) reports a changed application_name (ParameterStatus) after the
    SET's CommandComplete, just before ReadyForQuery. A card number in it is masked by the
    safety net. docs/audit.md: a statement record's `safety_net_hits` counts the card
    numbers masked "in this statement's result or error text"; the next statement, a
    constant with no card number anywhere, must not be charged with it."""
    gw, audit_dir = audited
    with psycopg.connect(gw.dsn("payments"), password=gw.token(groups=("ci",)),
                         application_name="hits", autocommit=True) as c:
        c.execute("select 1 as before_set").fetchone()
        c.execute("set application_name = 'card 4111111111111111'")
        assert c.execute("select 2 as after_set").fetchone() == (2,)
    mine = app_session(audit_dir, "hits")
    hits = _hits(mine)
    assert hits["select $1 as after_set"] == 0, hits


def test_session_safety_net_total_agrees_with_its_statement_records(
        audited: tuple[GatewayProcess, Path]) -> None:
    """The same report as the session's last statement: session.end's totals counted a
    safety-net hit that no statement record had (the SET's report was carried to a next
    statement that never came)."""
    gw, audit_dir = audited
    with psycopg.connect(gw.dsn("payments"), password=gw.token(groups=("ci",)),
                         application_name="hits-last", autocommit=True) as c:
        c.execute("select 1 as before_set").fetchone()
        c.execute("set application_name = 'card 5555555555554444'")
    mine = app_session(audit_dir, "hits-last")
    (end,) = [r for r in mine if r["type"] == "session.end"]
    per_statement = sum(r["safety_net_hits"] for r in mine if r["type"] == "statement")
    assert end["totals"]["safety_net_hits"] == per_statement, (end["totals"], _hits(mine))
