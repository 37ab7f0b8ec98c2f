"""Protocol messages the gateway refuses without asking the policy (a FunctionCall, a
Bind or Describe of a statement the protocol may not use, a Parse of a SQL PREPARE'd
name, an Execute of a SQL cursor) are refused attempts all the same: each leaves a
decision record, outcome denied, with what the client was told, durable before the
client is told it (PCI DSS 10.2). A real gateway, raw protocol: drivers never send
these. Found by an adversarial probe."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PgBackend, audit_yaml, upstreams_for
from rawclient import Message, RawClient
from test_db_role import POLICY, ROLE_SETUP

from gateway.devtools.harness import GatewayProcess
from gateway.wire import frontend as fe

PAN = "4111111111111111"
SYNC = fe.Sync().encode()


def q(sql: str) -> bytes:
    return fe.Query(sql).encode()


def bind(statement: str, *params: bytes, portal: str = "") -> bytes:
    return fe.Bind(portal, statement, (), params, ()).encode()


def execute(portal: str = "") -> bytes:
    return fe.Execute(portal, 0).encode()


@pytest.fixture(scope="module")
def audited(pg: PgBackend, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[GatewayProcess, Path]]:
    """An audited gateway whose policy allows everything, reports as a db_role (see
    test_db_role): what is refused here, the gateway refused."""
    pg.server.psql(ROLE_SETUP, dbname="payments")
    d = tmp_path_factory.mktemp("refusals")
    with GatewayProcess(d / "gw", upstreams_for(pg), policy_dir=POLICY,
                        extra_yaml=audit_yaml(d)) as gw:
        yield gw, d / "audit"


def trail(audit_dir: Path) -> str:
    return "".join(f.read_text() for f in sorted(audit_dir.glob("*.jsonl")))


# (setup runs, each answered before the next; the refused run; what the refusal says;
# the record's command and sql). The setup's own errors (a Describe of no statement)
# are the server's, not refusals.
CASES: dict[str, tuple[list[bytes], bytes, str, str, str]] = {
    # a card number as the argument: a FunctionCall is refused whatever it carries
    "function-call": ([], fe.FunctionCall(1299, (0,), (PAN.encode(),), 0).encode(),
                      "function calls by OID are not allowed",
                      "FunctionCall", "FunctionCall of function oid 1299 (arguments: 1)"),
    "bind-of-sql-prepared": ([q("prepare rp(text) as select $1")],
                             bind("rp", PAN.encode()) + execute() + SYNC,
                             "not one prepared over the protocol",
                             "Bind", 'Bind of statement "rp" to portal ""'),
    "describe-of-sql-prepared": ([q("prepare rd as select 1")],
                                 fe.Describe("S", "rd").encode() + SYNC,
                                 "not one prepared over the protocol",
                                 "Describe", 'Describe of statement "rd"'),
    "bind-under-another-search-path": (
        [fe.Parse("sp", "select 1", ()).encode() + SYNC, q("set search_path = pg_catalog")],
        bind("sp", portal="pp") + execute("pp") + SYNC,
        "decided under another search_path", "Bind", 'Bind of statement "sp" to portal "pp"'),
    # (test_db_role: the server skips the Parse that gave "" a db_role, so the gateway
    # no longer knows what "" runs as)
    "bind-of-a-lost-db-role": (
        [fe.Parse("", "select $1::int", ()).encode() + SYNC,
         fe.Describe("S", "nosuch").encode()
         + fe.Parse("", "select total from reports", ()).encode() + SYNC],
        bind("", b"1") + execute() + SYNC,
        "not the one the gateway decided", "Bind", 'Bind of statement "" to portal ""'),
    "parse-of-a-sql-prepared-name": ([q("prepare rq as select 1")],
                                     fe.Parse("rq", f"select '{PAN}'", ()).encode() + SYNC,
                                     '"rq" already exists', "Parse", "select $1"),
    "execute-of-a-sql-cursor": ([q("begin"), q("declare rc cursor for select 1")],
                                execute("rc") + SYNC, "is a SQL cursor",
                                "Execute", 'Execute of portal "rc"'),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_refused_protocol_message_is_a_durable_decision_record(
        audited: tuple[GatewayProcess, Path], case: str) -> None:
    gw, audit_dir = audited
    setup, attempt, why, command, sql = CASES[case]
    subject = f"refusal-{case}"
    with RawClient(gw) as client:
        client.login(gw.token(subject=subject))
        for run in setup:
            client.send(run)
            assert client.read_until(b"Z")[-1].type == b"Z"
        client.send(attempt)
        answer: list[Message] = client.read_until(b"Z")
        errors = [m.fields() for m in answer if m.type == b"E"]
        assert len(errors) == 1, [m.type for m in answer]
        assert why in errors[0]["M"], errors
        # read at once, the session still open: the record was written before the error
        # reached the client
        records = [json.loads(line) for line in trail(audit_dir).splitlines()]
        mine = [r for r in records if (r.get("who") or {}).get("subject") == subject]
        denied = [r for r in mine if r["type"] == "decision" and r["outcome"] == "denied"]
        assert len(denied) == 1, [(r["type"], r.get("outcome")) for r in mine]
        (rec,) = denied
        start = next(r for r in mine if r["type"] == "session.start")
        assert rec["session"] == start["session"] and rec["where"] == start["where"]
        assert (rec["sqlstate"], rec["reasons"]) == (errors[0]["C"], [errors[0]["M"]])
        assert (rec["command"], rec["sql"]) == (command, sql)
        assert rec["decision"] is None  # the policy never saw it
        # the session goes on
        client.send(q("rollback"))
        assert client.read_until(b"Z")[-1].type == b"Z"
    assert PAN not in trail(audit_dir)
