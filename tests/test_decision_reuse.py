"""A session gives a repeated statement (the same text, or the same shape with other
literal values) its earlier plain allow without asking the policy again. These tests hold
the reuse to the conditions it depends on: the text when the policy reads it, the session's
name resolution, the catalog, the policy version, and the audit trail's record of each
statement. Each runs a real gateway against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import collections
import copy
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import MemoryTransport, PgBackend, upstreams_for

from gateway.audit import generate_keypair
from gateway.devtools.harness import GatewayProcess

HEAD = """package pgwarden

import rego.v1

"""
DECISION = """
decision := {"allow": count(deny) == 0, "reasons": [r | some r in deny], "mask": {},
             "require_approval": false, "approvers": [], "row_limit": null, "db_role": null}
"""
# Reads the statement's text: two texts of one shape may be decided differently.
BY_TEXT = HEAD + """
deny contains "the number of the beast" if contains(input.statement.sql, "666")
""" + DECISION
# Reads only the analysis: schema, column names.
BY_NAME = HEAD + """
deny contains sprintf("%s is off limits", [r.schema]) if {
    some r in input.statement.relations
    r.schema == "reuse_b"
}

deny contains "secret columns are off limits" if {
    some c in input.statement.columns
    c.name == "secret"
}
""" + DECISION


@pytest.fixture(scope="module")
def schemas(pg: PgBackend) -> Iterator[None]:
    pg.server.psql(
        "create schema reuse_a; create schema reuse_b;"
        " create table reuse_a.t (id int, note text); insert into reuse_a.t values (1, 'a');"
        " create table reuse_b.t (id int, note text); insert into reuse_b.t values (1, 'b');"
        " create table reuse_a.grows (id int);",
        dbname=pg.dbname, user=pg.service.name)
    yield
    pg.server.psql("drop schema reuse_a cascade; drop schema reuse_b cascade;",
                   dbname=pg.dbname, user=pg.service.name)


def gateway(pg: PgBackend, directory: Path, rego: str, extra_yaml: str = "") -> GatewayProcess:
    policy = directory / "policy"
    policy.mkdir(parents=True)
    (policy / "policy.rego").write_text(rego)
    return GatewayProcess(directory / "gw", upstreams_for(pg), policy_dir=policy,
                          extra_yaml=extra_yaml)


def by_id(i: int) -> str:
    """One statement shape, a new literal value each time (pgbench -M simple, ORMs)."""
    return f"select note from reuse_a.t where id = {i}"  # noqa: S608 (an int)


def connect(gw: GatewayProcess) -> psycopg.Connection:
    return psycopg.connect(gw.dsn("payments"), password=gw.token(), autocommit=True)


def audited(pg: PgBackend, directory: Path) -> GatewayProcess:
    """A gateway of the BY_NAME policy with a signed audit trail in `directory`/audit
    (its public key: `directory`/audit.pub)."""
    key = directory / "audit.pem"
    generate_keypair(key, directory / "audit.pub")
    return gateway(pg, directory, BY_NAME, extra_yaml=(
        f"audit:\n  dir: {json.dumps(str(directory / 'audit'))}\n"
        f"  signing_key: {{file: {json.dumps(str(key))}}}\n"))


def records_at_session_end(audit: Path) -> list[dict[str, Any]]:
    """The trail's records once a session.end is among them (or after 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        recs = [json.loads(line) for f in sorted(audit.glob("*.jsonl"))
                for line in f.read_text().splitlines()]
        if any(r["type"] == "session.end" for r in recs) or time.monotonic() > deadline:
            return recs
        time.sleep(0.05)


def assert_verifies(directory: Path) -> None:
    verify = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "verify",
                             str(directory / "audit"), "--key", str(directory / "audit.pub")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_policy_that_reads_the_text_decides_every_text(pg: PgBackend, tmp_path: Path,
                                                         schemas: None) -> None:
    with gateway(pg, tmp_path, BY_TEXT) as gw, connect(gw) as c:
        for i in (1, 2, 3):
            assert c.execute(by_id(i)).fetchall() \
                in ([("a",)], [])
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="the beast"):
            c.execute("select note from reuse_a.t where id = 666")
        assert c.execute("select note from reuse_a.t where id = 1").fetchall() == [("a",)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="the beast"):
            c.execute("select note from reuse_a.t where id = 666")


NO_SORT_BY_ID = HEAD + """
deny contains "no sorting by id" if {
    some c in input.statement.columns
    c.name == "id"
    "sort" in c.usage
}
""" + DECISION


def test_a_position_is_decided_as_the_column_it_names(pg: PgBackend, tmp_path: Path,
                                                       schemas: None) -> None:
    """ORDER BY 1 and ORDER BY 2 have one shape, and sort by different columns: the
    second was decided (and recorded) with the first's analysis, past a policy on the
    sorted column."""
    with gateway(pg, tmp_path, NO_SORT_BY_ID) as gw, connect(gw) as c:
        cur = psycopg.ClientCursor(c)  # constants inline, as the simple protocol sends them
        for _ in range(2):
            assert cur.execute("select note, id from reuse_a.t order by 1").fetchall() \
                == [("a", 1)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no sorting by id"):
            cur.execute("select note, id from reuse_a.t order by 2")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no sorting by id"):
            cur.execute("select note, id from reuse_a.t order by 2 limit 1")


def test_the_same_text_follows_the_search_path(pg: PgBackend, tmp_path: Path,
                                               schemas: None) -> None:
    with gateway(pg, tmp_path, BY_NAME) as gw, connect(gw) as c:
        c.execute("set search_path = reuse_a")
        for _ in range(3):
            assert c.execute("select note from t where id = 1").fetchall() == [("a",)]
            assert c.execute("select note from t where id = 2").fetchall() == []
        c.execute("set search_path = reuse_b")
        for sql in ("select note from t where id = 1", "select note from t where id = 7"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="off limits"):
                c.execute(sql)
        c.execute("set search_path = reuse_a")
        assert c.execute("select note from t where id = 1").fetchall() == [("a",)]


def test_a_repeat_is_decided_again_after_the_catalog_changes(pg: PgBackend, tmp_path: Path,
                                                             schemas: None) -> None:
    """`select *` names other columns once the table has changed: the repeat is analyzed
    against the refreshed catalog, not given the earlier answer."""
    with gateway(pg, tmp_path, BY_NAME) as gw, connect(gw) as c:
        for _ in range(3):
            assert c.execute("select * from reuse_a.grows where id = 1").fetchall() == []
        c.execute("alter table reuse_a.grows add column secret text")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="secret columns"):
            c.execute("select * from reuse_a.grows where id = 1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="secret columns"):
            c.execute("select * from reuse_a.grows where id = 2")
        c.execute("alter table reuse_a.grows drop column secret")


def test_a_reloaded_policy_decides_the_repeats(pg: PgBackend, tmp_path: Path,
                                               schemas: None) -> None:
    with gateway(pg, tmp_path, BY_NAME) as gw, connect(gw) as c:
        for i in (1, 2, 3):
            c.execute(by_id(i))
        (tmp_path / "policy" / "policy.rego").write_text(
            BY_NAME.replace('r.schema == "reuse_b"', 'r.schema in {"reuse_a", "reuse_b"}'))
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)
        gw.wait_for_log(lambda d: d.get("event") == "bundle.activated"
                        and d.get("trigger") != "startup", 15)
        for i in (1, 4):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="reuse_a is off"):
                c.execute(by_id(i))


def test_every_repeat_has_its_own_statement_record_linked_to_the_kept_decision(
        pg: PgBackend, tmp_path: Path, schemas: None) -> None:
    with audited(pg, tmp_path) as gw:
        with connect(gw) as c:
            for i in range(1, 6):
                c.execute(by_id(i))
            c.execute("select note from reuse_a.t where id = 0 or note = 'secret-literal'")
        recs = records_at_session_end(tmp_path / "audit")
    decisions = [r for r in recs if r["type"] == "decision" and "reuse_a.t" in (r["sql"] or "")]
    # the first was decided in full; the next four were repeats of that decision, which
    # records no new one (as a prepared statement's Executes record none)
    assert [r["sql"] for r in decisions] == [
        "select note from reuse_a.t where id = $1",
        "select note from reuse_a.t where id = $1 or note = $2"]
    done = [r for r in recs if r["type"] == "statement"
            and r["decision_seq"] in {d["seq"] for d in decisions}]
    assert [r["decision_seq"] for r in done] == [decisions[0]["seq"]] * 5 + [decisions[1]["seq"]]
    assert all(r["outcome"] == "allowed" and r["rows"] == (1 if i == 0 else 0)
               for i, r in enumerate(done)), done
    assert "secret-literal" not in "".join(json.dumps(r) for r in recs)
    assert_verifies(tmp_path)


def direct_gate(pg: PgBackend, directory: Path, audit: Any = None) -> tuple[Any, Any, Any]:
    """A session's StatementGate over the database's catalog and the BY_NAME policy, with
    no relay around it (and `audit`, an AuditWriter, if given): (gate, catalog, catalog
    cache)."""
    from gateway.audit import AuditContext
    from gateway.catalog import read_catalog
    from gateway.enforce import gate as gate_module
    from gateway.enforce.catalog_cache import CatalogCache
    from gateway.enforce.input_doc import SessionFacts
    from gateway.identity.model import Identity
    from gateway.policy.engine import PolicyEngine

    with psycopg.connect(pg.dsn(pg.service)) as conn:
        catalog = read_catalog(conn)
    cache = CatalogCache(fetch=None)  # type: ignore[arg-type]
    cache.put("payments", catalog)
    (directory / "policy.rego").write_text(BY_NAME)
    engine = PolicyEngine.from_path(str(directory))
    facts = SessionFacts.build(
        Identity("ci-bot", "https://issuer", ("ci",), {}, "jwt", None), session_id="s1",
        started_at=time.time(), name="payments", database="payments", user="ci-bot",
        application_name="test", client_addr="127.0.0.1", tls=True, networks={})
    ctx = AuditContext.from_input(facts.input_for({})) if audit is not None else None
    gate = gate_module.StatementGate(facts=facts, connection="payments", catalogs=cache,
                                     policy=lambda: engine, audit=audit, audit_ctx=ctx)
    return gate, catalog, cache


def test_long_texts_are_decided_every_time_and_never_kept(pg: PgBackend, tmp_path: Path,
                                                          schemas: None) -> None:
    """The kept allows and the shared analysis caches are bounded in entries and, through
    a cap on the text's length, in bytes: a client sending many distinct huge statements
    must not make the gateway hold them."""
    from gateway.enforce import gate as gate_module

    gate, catalog, _ = direct_gate(pg, tmp_path)
    short = by_id(1)
    ids = ", ".join(str(i) for i in range(4000))  # ~19 KB
    huge = f"select note from reuse_a.t where id in ({ids})"  # noqa: S608 (ints)
    assert len(huge) > gate_module._CACHED_TEXT_MAX
    for _ in range(2):
        assert gate._decide_sql(short, "simple", catalog).allowed
        assert gate._decide_sql(huge, "simple", catalog).allowed
    kept = {sql for sql, _ in gate._by_text}
    assert short in kept and huge not in kept
    assert not any(huge in key for key in gate_module._ANALYSES)
    assert gate.decisions == 4


class MarkerRelay:
    """What the gate asks of its relay when it refuses a statement (the marker swap)."""

    def __init__(self) -> None:
        self.markers: list[bytes] = []
        self.errors: list[Any] = []
        self.before_release: Any = None  # what the gate leaves to do before answers go on

    def deny_with_marker(self, marker: bytes, error: Any) -> None:
        self.markers.append(marker)
        self.errors.append(error)


def test_the_compiled_repeat_keeps_every_condition_of_reuse(pg: PgBackend, tmp_path: Path,
                                                            schemas: None) -> None:
    """A one-Query batch whose text has a kept allow's shape is answered from the
    message's bytes (`StatementGate._kept_query`) without the full path, and only under
    the conditions `_repeat` keeps: the same policy engine, catalog snapshot and name
    resolution, no debug logging, parsing settings intact."""
    import logging

    from gateway.admin import metrics
    from gateway.enforce import shapes
    from gateway.policy.engine import PolicyEngine
    from gateway.wire.frontend import Query

    gate, catalog, cache = direct_gate(pg, tmp_path)
    relay = MarkerRelay()

    def review(i: int) -> bytes:
        raw = Query(by_id(i)).encode()
        out = gate.review(raw, [(raw[0], raw[5:])], relay)
        assert isinstance(out, bytes)
        return out

    full_path = gate._decide_sql

    def no_full_path(*args: object) -> object:
        raise AssertionError("decided in full")

    assert review(1) == Query(by_id(1)).encode()  # decided in full, then kept
    allows = metrics.STATEMENTS.labels("allow")._c.value
    gate._decide_sql = no_full_path  # type: ignore[method-assign]
    if shapes.kept_by_shape is not None:
        for i in (2, 3):
            assert review(i) == Query(by_id(i)).encode()
        assert gate.decisions == 3
        assert metrics.STATEMENTS.labels("allow")._c.value == allows + 2

    def must_decide_again(change: Any, undo: Any) -> None:
        change()
        with pytest.raises(AssertionError, match="decided in full"):
            review(4)
        undo()
        gate._decide_sql = full_path  # type: ignore[method-assign]
        assert review(5) == Query(by_id(5)).encode()  # kept again under what holds now
        gate._decide_sql = no_full_path  # type: ignore[method-assign]

    engine = gate.policy()
    other = PolicyEngine.from_path(str(tmp_path))  # the same policy, another version
    must_decide_again(lambda: setattr(gate, "policy", lambda: other),
                      lambda: setattr(gate, "policy", lambda: engine))
    snapshot = copy.copy(catalog)  # the same tables, another snapshot
    must_decide_again(lambda: cache.put("payments", snapshot),
                      lambda: cache.put("payments", catalog))
    must_decide_again(lambda: gate.state.parameter_status("search_path", "reuse_a"),
                      lambda: None)
    logger = logging.getLogger("pgwarden")
    level = logger.level
    must_decide_again(lambda: logger.setLevel(logging.DEBUG), lambda: logger.setLevel(level))

    gate.parameter_status("client_encoding", "SJIS")  # the server would read bytes otherwise
    gate._decide_sql = full_path  # type: ignore[method-assign]
    out = review(6)
    assert out != Query(by_id(6)).encode() and relay.markers
    assert relay.markers[-1] in out  # refused: the server gets the marker, not the text


async def wait_for(pending: Any) -> Any:
    return await pending


def with_function(i: int) -> str:
    """A repeat that may change something: a function call (any could write)."""
    return f"select upper(note) from reuse_a.t where id = {i}"  # noqa: S608 (an int)


def test_an_audited_repeat_links_to_its_kept_decision_record(pg: PgBackend, tmp_path: Path,
                                                             schemas: None) -> None:
    """With an audit trail, a statement decided in full gets its decision record, written
    before its answers go on (a read) or before it is forwarded (a statement that may
    change something: a function call). A repeat answered by the kept allow, on the
    compiled path or the full one, is no new decision: it appends nothing before it runs,
    and its tag links its statement record to the kept decision record, as a prepared
    statement's Executes link to their Parse's. A repeat is still refused with 58030
    while the trail is failing, when the backlog is full, and once the trail is closed."""
    from gateway.audit import AuditUnavailable, AuditWriter
    from gateway.audit.filesink import FileSink
    from gateway.enforce import shapes
    from gateway.wire.frontend import Parse, Query

    if shapes.kept_by_shape is None:
        pytest.skip("the compiled shape is not built (PGWARDEN_PURE_PYTHON)")
    writer = AuditWriter(FileSink(str(tmp_path / "audit"), "gw1"), instance="gw1")
    writer.start()
    gate, _, _ = direct_gate(pg, tmp_path, audit=writer)
    relay = MarkerRelay()

    def review(sql: str) -> Any:
        raw = Query(sql).encode()
        return gate.review(raw, [(raw[0], raw[5:])], relay)

    def decisions() -> list[dict[str, Any]]:
        lines = [json.loads(line) for f in sorted((tmp_path / "audit").glob("*.jsonl"))
                 for line in f.read_text().splitlines()]
        return [r for r in lines if r["type"] == "decision"]

    def tag() -> Any:
        return gate.take_tags([(0x51, b"")])[1][0][0]

    kept = {}
    for first in (by_id(1), with_function(1)):  # decided in full, then kept
        assert review(first) == Query(first).encode()
        if first == by_id(1):  # a read: written before its answers go on (below)
            assert writer.durable_seq < writer.head[0]
            due, relay.before_release = relay.before_release, None
            assert due is not None and due() is True
        assert writer.durable_seq == writer.head[0] and relay.before_release is None
        kept[first] = tag().decision_seq
    assert kept[by_id(1)] < kept[with_function(1)] == writer.head[0]
    full_path = gate._decide_sql
    gate._decide_sql = lambda *a: pytest.fail("decided in full")  # type: ignore[method-assign]
    try:
        for i in (2, 3):
            before = writer.head[0]
            for sql in (by_id(i), with_function(i)):
                assert review(sql) == Query(sql).encode()  # forwarded as sent
                assert writer.head[0] == writer.durable_seq == before  # nothing appended
                due, relay.before_release = relay.before_release, None
                assert due is None or due() is True
                assert tag().decision_seq == kept[sql.replace(str(i), "1")]
        assert gate.decisions == 6
    finally:
        gate._decide_sql = full_path  # type: ignore[method-assign]
    # the full path's repeat (a Parse: by text) links to its kept decision too
    parse = Parse("", by_id(1), ()).encode()
    assert gate.review(parse, [(parse[0], parse[5:])], relay) == parse
    first_parse = writer.head[0]
    due, relay.before_release = relay.before_release, None
    assert due is not None and due() is True and writer.durable_seq == first_parse
    assert gate.review(parse, [(parse[0], parse[5:])], relay) == parse
    assert writer.head[0] == first_parse
    recs = decisions()
    assert [r["sql"] for r in recs] == [
        "select note from reuse_a.t where id = $1",
        "select upper(note) from reuse_a.t where id = $1",
        "select note from reuse_a.t where id = $1"]
    assert recs[-1]["seq"] == first_parse and recs[-1]["statement"]["protocol"] == "extended"

    writer.ledger.max_backlog = 0  # as full as a backlog gets
    with pytest.raises(AuditUnavailable):
        writer.admit()
    refused = len(relay.markers)
    out = review(by_id(7))  # refused as a decision's append would be
    assert len(relay.markers) == refused + 1 and relay.errors[-1].code == "58030"
    assert isinstance(out, bytes) and relay.markers[-1] in out
    writer.ledger.max_backlog = 100_000
    assert review(by_id(8)) == Query(by_id(8)).encode()

    sink_write = writer.sink.write

    def full_disk(batch: Any) -> None:
        raise OSError(28, "No space left on device")

    writer.sink.write = full_disk  # type: ignore[method-assign]
    # a new statement's decision record, due before its answers: its write fails
    assert isinstance(review(by_id(4) + " and note = 'x'"), bytes)
    due, relay.before_release = relay.before_release, None
    assert due is not None and due() is False and not writer.healthy
    out = review(by_id(5))  # a failing trail: nothing runs, refused at once
    assert len(relay.markers) == refused + 2 and relay.errors[-1].code == "58030"
    assert isinstance(out, bytes) and relay.markers[-1] in out
    writer.sink.write = sink_write  # type: ignore[method-assign]
    deadline = time.monotonic() + 10
    while not writer.healthy:  # the writer thread retries, writes the backlog
        assert time.monotonic() < deadline, "the audit writer did not recover"
        time.sleep(0.05)
    assert review(by_id(6)) == Query(by_id(6)).encode()
    writer.close()
    gate._decide_sql = lambda *a: pytest.fail("decided in full")  # type: ignore[method-assign]
    out = review(by_id(9))  # closed: the compiled path refuses it
    assert isinstance(out, bytes) and relay.markers[-1] in out
    assert relay.errors[-1].code == "58030"


def test_a_new_application_name_is_archived_before_anything_is_decided_under_it(
        pg: PgBackend, tmp_path: Path, schemas: None) -> None:
    """The server's report of a new application_name gives the gate new facts: kept
    allows are dropped, the session is told its new audit context, and a session.update
    record archives the facts. When that record cannot be appended (a full backlog),
    nothing is decided under the new name until it is: each statement is refused with
    58030, and none is answered from a kept allow meanwhile."""
    from gateway.audit import AuditWriter
    from gateway.audit.filesink import FileSink
    from gateway.wire.frontend import Query

    writer = AuditWriter(FileSink(str(tmp_path / "audit"), "gw1"), instance="gw1")
    writer.start()
    gate, _, _ = direct_gate(pg, tmp_path, audit=writer)
    relay = MarkerRelay()
    told: list[tuple[Any, str]] = []
    gate.on_renamed = lambda ctx, name: told.append((ctx, name))

    def review(sql: str) -> Any:
        raw = Query(sql).encode()
        out = gate.review(raw, [(raw[0], raw[5:])], relay)
        due, relay.before_release = relay.before_release, None
        assert due is None or due() is True
        return out

    try:
        for i in (1, 2):
            assert review(by_id(i)) == Query(by_id(i)).encode()
        assert gate._by_text or gate._by_shape  # kept
        gate.parameter_status("application_name", "test")  # the same name: nothing to do
        assert not told
        writer.ledger.max_backlog = 0  # the trail refuses every append
        gate.parameter_status("application_name", "nightly\x07job")
        assert gate.facts.connection["application_name"] == "nightly?job"
        assert [name for _, name in told] == ["nightly?job"]
        assert told[0][0] is gate.audit_ctx and gate.audit_ctx.where["application_name"] \
            == "nightly?job"
        for i in (3, 3):  # refused, not answered from the allow kept under the old name
            refused = len(relay.markers)
            out = review(by_id(i))
            assert len(relay.markers) == refused + 1 and relay.errors[-1].code == "58030"
            assert relay.markers[-1] in out
        writer.ledger.max_backlog = 100_000  # recovered: the record goes first
        assert review(by_id(4)) == Query(by_id(4)).encode()
    finally:
        writer.close()
    lines = [json.loads(line) for f in sorted((tmp_path / "audit").glob("*.jsonl"))
             for line in f.read_text().splitlines()]
    mine = [r for r in lines if r["type"] in ("decision", "session.update")]
    # (the second statement was a repeat of the first's decision: no record of its own)
    assert [(r["type"], r["where"]["application_name"]) for r in mine] == [
        ("decision", "test"), ("session.update", "nightly?job"), ("decision", "nightly?job")]
    assert mine[1]["input"]["connection"]["application_name"] == "nightly?job"
    assert mine[2]["sql"] == "select note from reuse_a.t where id = $1"


def test_with_fsync_durability_a_read_waits_for_its_record_before_it_goes(
        pg: PgBackend, tmp_path: Path, schemas: None) -> None:
    """`durability: fsync`: the writer thread syncs, so nothing is left for the relay to
    write when answers come: a read is forwarded once its record is on disk, and a repeat
    of it at once (the decision it repeats is on disk already)."""
    from gateway.audit import AuditWriter, WriterOptions
    from gateway.audit.filesink import FileSink
    from gateway.wire.frontend import Query

    writer = AuditWriter(FileSink(str(tmp_path / "audit"), "gw1", fsync=True), instance="gw1",
                         options=WriterOptions(durability="fsync"))
    writer.start()
    gate, _, _ = direct_gate(pg, tmp_path, audit=writer)
    relay = MarkerRelay()
    try:
        for i in (1, 2, 3):  # decided in full, then kept
            raw = Query(by_id(i)).encode()
            out = gate.review(raw, [(raw[0], raw[5:])], relay)
            assert relay.before_release is None
            if i == 1:
                assert not isinstance(out, bytes)
                out = asyncio.run(wait_for(out))
            assert out == raw and writer.durable_seq == writer.head[0] == 2  # (1: a header)
    finally:
        writer.close()


def test_an_extended_batch_of_reads_is_written_before_its_answers_go_on(
        pg: PgBackend, tmp_path: Path, schemas: None) -> None:
    """Parse/Bind/Execute/Sync: a batch whose decided statements are all reads that change
    nothing is forwarded before its records are written (the relay's before_release
    writes them); one with a write, or a read calling a function, is written first. Their
    repeats have nothing to write."""
    from gateway.audit import AuditWriter
    from gateway.audit.filesink import FileSink
    from gateway.wire.frontend import Bind, Execute, Parse, Sync

    writer = AuditWriter(FileSink(str(tmp_path / "audit"), "gw1"), instance="gw1")
    writer.start()
    gate, _, _ = direct_gate(pg, tmp_path, audit=writer)
    relay = MarkerRelay()

    def review(sql: str) -> Any:
        msgs = [Parse("", sql, ()).encode(), Bind("", "", (), (), ()).encode(),
                Execute("", 0).encode(), Sync().encode()]
        out = gate.review(b"".join(msgs), [(m[0], m[5:]) for m in msgs], relay)
        assert out == b"".join(msgs)
        gate.take_tags([(m[0], m[5:]) for m in msgs])

    try:
        for i in (1, 2):
            before = writer.head[0]
            review(by_id(i))
            if i == 1:
                assert writer.head[0] == before + 1 and writer.durable_seq == before
                due, relay.before_release = relay.before_release, None
                assert due is not None and due() is True and writer.durable_seq == before + 1
            else:  # a repeat of the first: no record before it runs, nothing to write
                assert writer.head[0] == writer.durable_seq == before
                assert relay.before_release is None
            for changes in (f"insert into reuse_a.grows values ({i})",  # noqa: S608 (an int)
                            with_function(i)):
                review(changes)
                assert writer.durable_seq == writer.head[0] and relay.before_release is None
        assert writer.head[0] == before  # the second round: repeats, nothing before they ran
    finally:
        writer.close()


class RecordingWire(MemoryTransport):
    """A client transport that notes, at each write, the decision seqs already written."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory
        self.written_before: list[set[int]] = []

    def write(self, data: bytes) -> None:
        seqs = {json.loads(line)["seq"] for f in self.directory.glob("*.jsonl")
                for line in f.read_text().splitlines() if '"type":"decision"' in line}
        self.written_before.append(seqs)
        super().write(data)


def test_the_relay_releases_no_answer_before_its_decision_record_is_written(
        pg: PgBackend, tmp_path: Path, schemas: None) -> None:
    """The relay around a real gate and audit trail: the answer to a read forwarded before
    its record was written reaches the client only after the record is in the file (and
    a repeat's after the decision it repeats is); when the record cannot be written, the
    client gets 58030 and none of the answer."""
    from gateway.audit import AuditWriter
    from gateway.audit.filesink import FileSink
    from gateway.enforce import shapes
    from gateway.masking.results import ResultMasker
    from gateway.proxy.endpoint import Endpoint
    from gateway.proxy.relay import Relay
    from gateway.wire import backend as be
    from gateway.wire.frontend import Query

    if shapes.kept_by_shape is None:
        pytest.skip("the compiled shape is not built (PGWARDEN_PURE_PYTHON)")
    audit_dir = tmp_path / "audit"
    writer = AuditWriter(FileSink(str(audit_dir), "gw1"), instance="gw1")
    writer.start()
    gate, _, _ = direct_gate(pg, tmp_path, audit=writer)
    answer = be.CommandComplete("SELECT 0").encode() + be.ReadyForQuery("I").encode()
    ended: list[tuple[int | None, int]] = []

    async def run() -> tuple[RecordingWire, Relay]:
        client, upstream = Endpoint(), Endpoint()
        wire = RecordingWire(audit_dir)
        client.transport, upstream.transport = wire, RecordingWire(audit_dir)  # type: ignore
        relay = Relay("s1", client, upstream, 1 << 20, gate, safety_net="off",
                      results=ResultMasker(lambda o, a: None),
                      on_result=lambda tag, t, b, c, h, s: ended.append((tag.decision_seq, t)))
        relay.start()
        for i in (1, 2, 3):
            relay.from_client(Query(by_id(i)).encode())
            if i == 1:
                seq = writer.head[0]
                assert writer.durable_seq < seq  # decided in full: not written yet
            else:
                assert writer.head[0] == writer.durable_seq == seq  # a repeat: nothing new
            relay.from_upstream(answer)
            assert seq in wire.written_before[-1]  # in the file before the answer went
        assert bytes(wire.out) == answer * 3 and ended == [(seq, 0x43)] * 3
        writer.sink.write = lambda batch: (_ for _ in ()).throw(  # type: ignore[method-assign]
            OSError(28, "No space left on device"))
        relay.from_client(Query(by_id(4) + " and note = 'x'").encode())  # forwarded: a read
        relay.from_upstream(answer)
        return wire, relay

    try:
        wire, relay = asyncio.run(run())
    finally:
        writer.close(timeout=0)
    tail = bytes(wire.out)[len(answer) * 3:]
    assert answer not in tail  # withheld
    error = be.decode_backend(tail[0], tail[5:])
    assert getattr(error, "code", None) == "58030" and relay.done.done()


@pytest.fixture(scope="module")
def side_effects(pg: PgBackend) -> Iterator[Any]:
    """A catalog with reads that run code: a function that writes, a view whose body
    locks rows, a domain whose CHECK calls the function, a table under row level
    security whose policy calls it, a function taking a row of defer_probe.t."""
    from gateway.catalog import read_catalog

    pg.server.psql(
        "drop schema if exists defer_probe cascade; create schema defer_probe;"
        " create table defer_probe.t (id int); create table defer_probe.log (x int);"
        " create view defer_probe.locked as select id from defer_probe.t for update;"
        " create function defer_probe.log_it(v int) returns boolean language sql as"
        " $$ insert into defer_probe.log values (v) returning true $$;"
        " create domain defer_probe.checked as int check (defer_probe.log_it(value));"
        " create table defer_probe.guarded (id int);"
        " alter table defer_probe.guarded enable row level security;"
        " create policy p on defer_probe.guarded using (defer_probe.log_it(id));"
        " create function public.defer_probe_attr(r defer_probe.t) returns boolean"
        " language sql as $$ select defer_probe.log_it(r.id) $$;"
        " create type defer_probe.mood as enum ('a', 'b');"
        " create function defer_probe.mood_text(m defer_probe.mood) returns text"
        " language sql as $$ select m::text || defer_probe.log_it(1)::text $$;"
        " create cast (defer_probe.mood as text) with function defer_probe.mood_text"
        " as implicit;"
        " create domain defer_probe.word as text check (defer_probe.log_it(1));"
        " create table defer_probe.typed (id int, m defer_probe.mood, note text,"
        " words defer_probe.word[]);",
        dbname=pg.dbname, user=pg.service.name)
    pg.server.psql(  # (a wrapper needs a superuser; reading the table is not analysed)
        "create foreign data wrapper defer_probe_fdw;"
        " create server defer_probe_srv foreign data wrapper defer_probe_fdw;"
        " create foreign table defer_probe.ft (id int) server defer_probe_srv;",
        dbname=pg.dbname)
    try:
        with psycopg.connect(pg.dsn(pg.service), autocommit=True) as conn:
            yield read_catalog(conn)
    finally:  # (the function on public goes with the type it takes)
        pg.server.psql("drop schema defer_probe cascade;"
                       " drop server defer_probe_srv; drop foreign data wrapper defer_probe_fdw;",
                       dbname=pg.dbname)


@pytest.mark.parametrize("sql", [
    "select * from defer_probe.locked",  # a view whose body locks rows
    "select id from (select id from defer_probe.t for update) s",  # a subquery's row lock
    "with l as (select id from defer_probe.t for share) select * from l",
    "select 5::defer_probe.checked",  # a domain whose CHECK calls a function (that writes)
    "select id from defer_probe.t where id = '5'::defer_probe.checked",
    "select id from defer_probe.guarded",  # row level security: its policy calls log_it
    "select (r).defer_probe_attr from defer_probe.t r",  # the call defer_probe_attr(r)
    "select (t.*).defer_probe_attr from defer_probe.t t",
    "select id from defer_probe.typed where m = note",  # an implicit cast the server picks
    "select id from defer_probe.typed where words = '{x}'",  # a literal read as word[]
    "select json_value('{\"a\": \"x\"}', '$.a' returning defer_probe.word)",
    "select id from defer_probe.ft",  # a foreign data wrapper's code
])
def test_a_read_that_may_change_something_is_not_released_before_its_record(
        side_effects: Any, sql: str) -> None:
    """Reads that change nothing are forwarded before their decision record is written
    (and answered only after it is). A read that takes row locks, or runs a function
    (a domain's CHECK, a row security policy, a call written as a field), is not one of
    them: it is written first."""
    from gateway.enforce.gate import _changes_nothing
    from gateway.sql import analyze

    (info,) = analyze(sql, side_effects)
    assert info.kind == "read" and not _changes_nothing(info)
    if "attr" in sql:  # a call the policy is shown, as for r.defer_probe_attr
        assert "public.defer_probe_attr" in info.functions
    (plain,) = analyze("select id from defer_probe.t where id = 5", side_effects)
    assert _changes_nothing(plain)  # (what is deferred)


def test_a_parse_declaring_a_defined_type_is_written_before_it_goes() -> None:
    """A Parse may name its parameters' types: binding a value to a domain runs its
    CHECK, which the statement's text does not show."""
    from gateway.enforce.gate import _declares_defined_types
    from gateway.wire.frontend import Parse

    def body(types: tuple[int, ...]) -> bytes:
        return Parse("s", "select $1", types).encode()[5:]

    assert _declares_defined_types(body((23, 16385)))
    assert not _declares_defined_types(body((23, 25)))
    assert not _declares_defined_types(body(()))
    assert not _declares_defined_types(b"s\0select 1")  # (cut short: the server's to refuse)


def test_a_transactions_begin_and_end_are_kept_and_each_recorded(
        pg: PgBackend, tmp_path: Path, schemas: None) -> None:
    """BEGIN, COMMIT and ROLLBACK, each alone in its string, are kept allows like any
    plain read: decided (and given a decision record) once per session, every execution
    recorded and linked to it. A transaction's end inside a string with more statements
    after it ends what those see: decided in full each time."""
    with audited(pg, tmp_path) as gw:
        with psycopg.connect(gw.dsn("payments"), password=gw.token()) as c:
            for i in range(1, 5):  # psycopg: BEGIN, the select, COMMIT
                assert c.execute(by_id(i)).fetchall() == ([("a",)] if i == 1 else [])
                c.commit()
            for _ in range(2):
                c.execute(by_id(1))
                c.rollback()
            c.autocommit = True
            for _ in range(3):
                c.execute("commit; begin")  # (the second ends at the next one's commit)
            c.execute("commit")
            # a cursor declared in a transaction ends with it, kept COMMIT or not
            c.execute("begin")
            c.execute("declare cur cursor for select id from reuse_a.t")
            assert c.execute("fetch 1 from cur").fetchall() == [(1,)]
            c.execute("commit")
            with pytest.raises(psycopg.errors.InvalidCursorName):
                c.execute("fetch 1 from cur")
        recs = records_at_session_end(tmp_path / "audit")
    decisions = collections.Counter(r["sql"] for r in recs if r["type"] == "decision")
    assert decisions["BEGIN"] == decisions["COMMIT"] == decisions["ROLLBACK"] == 1
    assert decisions["commit"] == 3 + 1  # in a string with more: each time; alone: once
    by_seq = {r["seq"]: r["sql"] for r in recs if r["type"] == "decision"}
    done = collections.Counter(by_seq.get(r["decision_seq"]) for r in recs
                               if r["type"] == "statement" and r["outcome"] == "allowed")
    assert (done["BEGIN"], done["COMMIT"], done["ROLLBACK"]) == (6, 4, 2)
    assert_verifies(tmp_path)
