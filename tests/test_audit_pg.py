"""The PostgreSQL audit sink: several gateways, one table, one chain each."""

from __future__ import annotations

import io
import json
import logging
import secrets
import threading
import time
from pathlib import Path

import psycopg
import pytest
from conftest import PgBackend
from psycopg import sql

from gateway import logs
from gateway.audit import (
    AuditContext,
    AuditError,
    AuditWriter,
    Signer,
    WriterOptions,
    generate_keypair,
    load_public_key,
    records,
)
from gateway.audit.pgsink import PgSink
from gateway.audit.reader import RecordFilter, read_records
from gateway.audit.verify import load_anchors, verify_pg


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    generate_keypair(d / "audit.pem", d / "audit.pub")
    return d / "audit.pem", d / "audit.pub"


@pytest.fixture
def table() -> str:
    return f"audit_{secrets.token_hex(4)}"


def pg_writer(pg: PgBackend, table: str, instance: str, key: Path) -> AuditWriter:
    sink = PgSink(pg.dsn(pg.service), instance, table=table, synchronous_commit=False)
    w = AuditWriter(sink, instance=instance, signer=Signer.from_pem_file(key),
                    options=WriterOptions(checkpoint_every=50, checkpoint_seconds=0,
                                          retry_seconds=0.05))
    w.start()
    return w


def run_gateway(pg: PgBackend, table: str, instance: str, key: Path, n: int) -> None:
    w = pg_writer(pg, table, instance, key)
    w.append(records.gateway_start(version="test", pid=1))
    c = AuditContext.build(session=f"{instance}-s", subject="ci-bot", issuer="https://ci")
    w.append(records.session_start(c))
    for i in range(n):
        w.append(records.statement_record(c, decision_seq=None, outcome="allowed", rows=i))
        if i % 50 == 0:
            time.sleep(0.001)  # let the two writers interleave their batches
    w.append(records.gateway_stop(reason="test"))
    assert w.close()


def test_two_gateways_share_one_table_and_both_verify(pg: PgBackend, table: str,
                                                      keys: tuple[Path, Path]) -> None:
    errors: list[BaseException] = []

    def gateway(name: str) -> None:
        try:
            run_gateway(pg, table, name, keys[0], 300)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=gateway, args=(name,)) for name in ("gw-a", "gw-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    report = verify_pg(pg.dsn(pg.service), load_public_key(keys[1]), table=table)
    assert report.ok, report.problem
    assert [s.instance for s in report.instances] == ["gw-a", "gw-b"]
    # segment, gateway.start, session.start, 300 statements, gateway.stop, 6 + 1 checkpoints
    assert all(s.sealed and s.records == 311 for s in report.instances), report.instances
    # A restart resumes each chain where it stopped; both still verify.
    run_gateway(pg, table, "gw-a", keys[0], 10)
    report = verify_pg(pg.dsn(pg.service), load_public_key(keys[1]), table=table)
    assert report.ok, report.problem
    assert report.instances[0].segments == 2
    sessions = {r.record.get("session") for r in read_records(
        dsn=pg.dsn(pg.service), table=table, where=RecordFilter(types=("session.start",)))}
    assert sessions == {"gw-a-s", "gw-b-s"}


def test_one_writer_per_instance(pg: PgBackend, table: str, keys: tuple[Path, Path]) -> None:
    w = pg_writer(pg, table, "gw-x", keys[0])
    other = AuditWriter(PgSink(pg.dsn(pg.service), "gw-x", table=table), instance="gw-x")
    with pytest.raises(AuditError, match="another gateway"):
        other.start()
    assert w.close()


def test_tampering_in_the_table_is_named(pg: PgBackend, table: str,
                                         keys: tuple[Path, Path]) -> None:
    run_gateway(pg, table, "gw-t", keys[0], 20)
    dsn = pg.dsn(pg.service)
    pub = load_public_key(keys[1])
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("UPDATE {} SET record = replace(record, %s, %s) WHERE instance = "
                             "'gw-t' AND record LIKE %s").format(sql.Identifier(table)),
                     ('"rows":7,', '"rows":8,', '%"rows":7,%'))
        p = verify_pg(dsn, pub, table=table).problem
        assert p is not None and p.instance == "gw-t" and "edited" in p.message
        seq = p.seq
        conn.execute(sql.SQL("DELETE FROM {} WHERE instance = 'gw-t' AND seq = %s")
                     .format(sql.Identifier(table)), (seq,))
        p = verify_pg(dsn, pub, table=table).problem
        assert p is not None and p.seq == seq + 1 and "deleted" in p.message


def test_a_restart_deleted_from_the_table_fails_against_its_logged_anchors(
        pg: PgBackend, table: str, keys: tuple[Path, Path], tmp_path: Path) -> None:
    """Rows of a whole run deleted: the chain ends at the run before, sealed; the anchors
    the gateway logged (kept elsewhere) find it, as for files."""
    logger = logging.getLogger("pgwarden")
    saved = logger.handlers[:], logger.level, logger.propagate
    stream = io.StringIO()
    logs.configure("info", stream)
    try:
        run_gateway(pg, table, "gw-r", keys[0], 5)
        with psycopg.connect(pg.dsn(pg.service)) as conn:
            ended = conn.execute(sql.SQL("SELECT max(seq) FROM {}")
                                 .format(sql.Identifier(table))).fetchone()[0]
        run_gateway(pg, table, "gw-r", keys[0], 5)
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved  # type: ignore[misc]
    (tmp_path / "gw.log").write_text(stream.getvalue())
    anchors = load_anchors([tmp_path / "gw.log"])
    dsn, pub = pg.dsn(pg.service), load_public_key(keys[1])
    report = verify_pg(dsn, pub, table=table, anchors=anchors)
    assert report.ok, report.problem
    assert report.instances[0].anchors_matched == len(anchors) == 4  # 2 starts, 2 ends
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DELETE FROM {} WHERE seq > %s").format(sql.Identifier(table)),
                     (ended,))
    assert verify_pg(dsn, pub, table=table).ok
    p = verify_pg(dsn, pub, table=table, anchors=anchors).problem
    assert p is not None and p.instance == "gw-r"
    assert f"ends at seq {ended}, but seq {anchors[-1].seq} is anchored" in p.message


def test_rows_added_or_cut_before_a_restart_are_not_vouched_for_by_it(
        pg: PgBackend, table: str, keys: tuple[Path, Path]) -> None:
    """With INSERT (which the gateway's role has) a row chained after the final
    checkpoint; with DELETE a run's end: the next run chains on what it finds, and
    verify still names the run end that was changed."""
    from gateway.audit.canonical import canonical_bytes, chain_hash

    dsn, pub = pg.dsn(pg.service), load_public_key(keys[1])
    run_gateway(pg, table, "gw-f", keys[0], 5)
    with psycopg.connect(dsn, autocommit=True) as conn:
        seq, line = conn.execute(sql.SQL("SELECT seq, record FROM {} WHERE instance = 'gw-f' "
                                         "ORDER BY seq DESC LIMIT 1")
                                 .format(sql.Identifier(table))).fetchone()
        last = json.loads(line)
        body = {"type": "approval.granted", "approval_id": "apr_forged", "instance": "gw-f",
                "v": 1, "seq": seq + 1, "ts": last["ts"], "prev": last["hash"]}
        raw = canonical_bytes(body)
        forged = raw[:-1] + b',"hash":"' + chain_hash(last["hash"], raw).encode() + b'"}'
        conn.execute(sql.SQL("INSERT INTO {} (instance, seq, ts, type, session, record) "
                             "VALUES ('gw-f', %s, %s, 'approval.granted', NULL, %s)")
                     .format(sql.Identifier(table)), (seq + 1, last["ts"], forged.decode()))
        run_gateway(pg, table, "gw-f", keys[0], 5)
        p = verify_pg(dsn, pub, table=table, accept_crashes=True).problem
        assert p is not None and p.seq == seq + 1 and "follows the final checkpoint" in p.message
        # a row whose record does not hash to its hash stops the start
        fake = json.dumps({"seq": 100000, "prev": last["hash"], "type": "checkpoint",
                           "final": True, "hash": "ab" * 32}, separators=(",", ":"))
        conn.execute(sql.SQL("INSERT INTO {} (instance, seq, ts, type, session, record) VALUES "
                             "('gw-f', 100000, now(), 'checkpoint', NULL, %s)")
                     .format(sql.Identifier(table)), (fake,))
        with pytest.raises(AuditError, match="damaged"):
            pg_writer(pg, table, "gw-f", keys[0])
    run_gateway(pg, table, "gw-g", keys[0], 5)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DELETE FROM {} WHERE instance = 'gw-g' AND seq > 5")
                     .format(sql.Identifier(table)))
    run_gateway(pg, table, "gw-g", keys[0], 5)
    p = verify_pg(dsn, pub, table=table, instances=["gw-g"]).problem
    assert p is not None and "without its final checkpoint" in p.message


def test_rows_whose_columns_lie_or_that_nest_too_deep_are_named(
        pg: PgBackend, table: str, keys: tuple[Path, Path]) -> None:
    """ts, type and session repeat record fields so that queries can use them: a row
    whose columns were edited would make those queries find the wrong records."""
    dsn, pub = pg.dsn(pg.service), load_public_key(keys[1])
    changes = {"gw-c1": "session = NULL", "gw-c2": "type = 'gateway.stop'",
               "gw-c3": "ts = ts + interval '1 microsecond'"}
    for instance in changes:
        run_gateway(pg, table, instance, keys[0], 3)
    assert verify_pg(dsn, pub, table=table).ok
    with psycopg.connect(dsn, autocommit=True) as conn:
        for instance, change in changes.items():
            conn.execute(sql.SQL("UPDATE {} SET " + change + " WHERE instance = %s "  # noqa: S608
                                 "AND type = 'statement' AND record LIKE %s")
                         .format(sql.Identifier(table)), (instance, '%"rows":1,%'))
            p = verify_pg(dsn, pub, table=table, instances=[instance]).problem
            assert p is not None and "column" in p.message, change
        nested = '{"type":"segment","x":' + "[" * 100000 + "]" * 100000 + "}"
        run_gateway(pg, table, "gw-n", keys[0], 3)
        conn.execute(sql.SQL("INSERT INTO {} (instance, seq, ts, type, session, record) VALUES "
                             "('gw-n', 1000, now(), 'segment', NULL, %s)")
                     .format(sql.Identifier(table)), (nested,))
        p = verify_pg(dsn, pub, table=table, instances=["gw-n"]).problem
        assert p is not None and "not an audit record line" in p.message


def test_a_null_record_is_named_not_a_crash(pg: PgBackend, table: str,
                                            keys: tuple[Path, Path]) -> None:
    """The gateway creates the table, so its role owns it and can drop a NOT NULL."""
    dsn, pub = pg.dsn(pg.service), load_public_key(keys[1])
    run_gateway(pg, table, "gw-z", keys[0], 3)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN record DROP NOT NULL")
                     .format(sql.Identifier(table)))
        conn.execute(sql.SQL("UPDATE {} SET record = NULL WHERE seq = 3")
                     .format(sql.Identifier(table)))
    p = verify_pg(dsn, pub, table=table).problem
    assert p is not None and p.line == 3 and "not an audit record line" in p.message


def test_a_lost_connection_is_survived_without_duplicates(pg: PgBackend, table: str,
                                                          keys: tuple[Path, Path]) -> None:
    w = pg_writer(pg, table, "gw-r", keys[0])
    c = AuditContext.build(session="s", subject="ci-bot", issuer="https://ci")
    for i in range(20):
        w.append(records.statement_record(c, decision_seq=None, outcome="allowed", rows=i))
    w.flush(timeout=10)
    with psycopg.connect(pg.server.dsn(dbname=pg.dbname), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name = 'pgwarden-audit-gw-r'")
    for i in range(20):
        w.append(records.statement_record(c, decision_seq=None, outcome="allowed", rows=i))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            w.flush(timeout=1)
            break
        except Exception:
            time.sleep(0.05)
    assert w.healthy
    assert w.close()
    report = verify_pg(pg.dsn(pg.service), load_public_key(keys[1]), table=table)
    assert report.ok, report.problem
    assert report.instances[0].records == 1 + 40 + 1  # segment, statements, checkpoint


def test_a_row_written_ahead_of_the_gateway_stops_it_rather_than_take_its_place(
        pg: PgBackend, table: str, keys: tuple[Path, Path]) -> None:
    """With INSERT, anyone can add the row at the running gateway's next seq. Its COPY
    then fails, and the retry finds that seq stored: taking it for its own lost commit
    would drop the gateway's record. The writer fails closed and names the row."""
    from gateway.audit.canonical import canonical_bytes, chain_hash

    w = pg_writer(pg, table, "gw-ahead", keys[0])
    c = AuditContext.build(session="s", subject="ci-bot", issuer="https://ci")
    try:
        w.append(records.statement_record(c, decision_seq=None, outcome="allowed", rows=1))
        w.flush(timeout=10)
        seq, head = w.head
        body = {"type": "approval.granted", "approval_id": "apr_x", "instance": "gw-ahead",
                "v": 1, "seq": seq + 1, "ts": "2026-01-01T00:00:00.000000Z", "prev": head}
        raw = canonical_bytes(body)
        forged = raw[:-1] + b',"hash":"' + chain_hash(head, raw).encode() + b'"}'
        with psycopg.connect(pg.dsn(pg.service), autocommit=True) as conn:
            conn.execute(sql.SQL("INSERT INTO {} (instance, seq, ts, type, session, record) "
                                 "VALUES ('gw-ahead', %s, %s, 'approval.granted', NULL, %s)")
                         .format(sql.Identifier(table)),
                         (seq + 1, body["ts"], forged.decode()))
        w.append(records.statement_record(c, decision_seq=None, outcome="allowed", rows=2))
        deadline = time.monotonic() + 10
        while w.healthy or "did not write" not in (w.error or ""):
            assert time.monotonic() < deadline, w.error
            time.sleep(0.05)
        assert w.durable_seq == seq  # its own record is not taken as written
    finally:
        w.close(timeout=1)


def test_a_table_restates_its_open_sessions_every_segment_age(pg: PgBackend, table: str,
                                                              keys: tuple[Path, Path]) -> None:
    """Rows go by age, and a table has no segments to restate open sessions at: the
    writer restates them every segment_seconds instead, so that a table pruned by age
    still holds the facts of every session open across the cut."""
    sink = PgSink(pg.dsn(pg.service), "gw-r", table=table, synchronous_commit=False)
    w = AuditWriter(sink, instance="gw-r", signer=Signer.from_pem_file(keys[0]),
                    options=WriterOptions(checkpoint_every=0, checkpoint_seconds=0,
                                          segment_seconds=0.3))
    w.start()
    kept = AuditContext.build(session="kept", subject="ci-bot", issuer="https://ci")
    gone = AuditContext.build(session="gone", subject="ci-bot", issuer="https://ci")
    w.append(records.session_start(kept))
    w.append(records.session_start(gone))
    w.append(records.session_end(gone, reason="client", totals={}))
    time.sleep(2.5)  # the writer's timers run at least once a second
    w.append(records.statement_record(kept, decision_seq=None, outcome="allowed", rows=1))
    assert w.close()
    report = verify_pg(pg.dsn(pg.service), load_public_key(keys[1]), table=table)
    assert report.ok, report.problem
    updates = [r.record for r in read_records(
        dsn=pg.dsn(pg.service), table=table, where=RecordFilter(types=("session.update",)))]
    assert updates and {u["session"] for u in updates} == {"kept"}
    assert all(u["restated"] == "interval" and u["changed"] == [] for u in updates)
    assert updates[0]["who"] == records.session_start(kept)["who"].value
