"""Audit records: canonical form, SQL redaction, the PAN scrub, record builders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import AuditContext, AuditWriter, records
from gateway.audit.canonical import (
    GENESIS,
    Fragment,
    FragmentEncoder,
    canonical_bytes,
    chain_hash,
    format_ts,
    hashed_body,
    parse_ts,
)
from gateway.audit.chain import EXEMPT, Chain
from gateway.audit.filesink import FileSink
from gateway.audit.redact import UNLEXABLE, redact_sql, scrub, scrub_value
from gateway.masking.safety_net import scan
from gateway.policy.decision import Decision

PANS = ["4111111111111111", "5500005555555559", "378282246310005", "6011000990139424"]


def facts() -> dict[str, Any]:
    return {
        "identity": {"subject": "ci-bot", "issuer": "https://ci.example.com", "groups": ["ci"],
                     "claims": {"repo": "payments"}, "method": "jwt"},
        "connection": {"name": "cardholder", "database": "payments", "user": "ci-bot",
                       "application_name": "psql", "client_addr": "10.0.0.5", "tls": True,
                       "networks": ["ci-runners"]},
        "session": {"id": "0123abcd4567ef89", "started_at": "2025-01-15T09:30:00.000000Z"},
    }


def stmt_doc(sql: str, **extra: Any) -> dict[str, Any]:
    doc = {"sql": sql, "fingerprint": "a1b2c3d4e5f60718", "command": "SELECT", "kind": "read",
           "relations": [{"schema": "public", "name": "cards", "access": ["read"]}],
           "columns": [{"schema": "public", "table": "cards", "name": "pan", "tags": ["pan"],
                        "usage": ["output"]}],
           "functions": [], "has_where": True, "limit": None, "index": 0, "count": 1,
           "protocol": "simple", "details": {}}
    doc.update(extra)
    return doc


# -- canonical form --------------------------------------------------------------------------


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical_bytes({"b": 1, "a": [True, None], "é": "ü"}) == \
        '{"a":[true,null],"b":1,"é":"ü"}'.encode()
    with pytest.raises(ValueError):
        canonical_bytes({"x": float("nan")})


def test_fragments_encode_exactly_like_the_plain_value() -> None:
    inner = {"z": [1, 2], "a": {"k": "v"}}
    enc = FragmentEncoder()
    doc = {"m": Fragment(inner), "a": 1, "z": Fragment(["x"]), "k": {"n": Fragment(inner)}}
    plain = {"m": inner, "a": 1, "z": ["x"], "k": {"n": inner}}
    assert enc.encode(doc) == canonical_bytes(plain)
    # A client string that looks like a placeholder is just a string.
    assert enc.encode({"s": "\x00pgwarden-fragment-"}) == canonical_bytes(
        {"s": "\x00pgwarden-fragment-"})


def test_line_layout_and_hash() -> None:
    chain = Chain("gw1")
    sealed = chain.seal({"type": "gateway.start", "ts": "2025-01-15T09:30:00.000000Z"})
    line = sealed.line.rstrip(b"\n")
    body, digest = hashed_body(line)
    assert digest == sealed.hash == chain_hash(GENESIS, body)
    rec = json.loads(line)
    assert rec["seq"] == 1 and rec["prev"] == GENESIS and rec["v"] == 1
    assert list(rec)[-1] == "hash"
    without = {k: v for k, v in rec.items() if k != "hash"}
    assert canonical_bytes(without) == body  # the hashed bytes are the canonical form
    second = chain.seal({"type": "gateway.stop"})
    assert json.loads(second.line)["prev"] == sealed.hash


def test_timestamps_are_rfc3339_utc_microseconds() -> None:
    ts = format_ts(1_736_933_400_123_456_789)
    assert ts == "2025-01-15T09:30:00.123456Z"
    assert parse_ts(ts) == pytest.approx(1_736_933_400.123456)


# -- SQL redaction -------------------------------------------------------------------------


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT * FROM cards WHERE pan = '4111111111111111'",
     "SELECT * FROM cards WHERE pan = $1"),
    ("SELECT 42, 1.5e3, -7, E'a\\'b', $$dollar$$, B'0101', X'ff'",
     "SELECT $1, $2, -$3, $4, $5, $6, $7"),
    ("UPDATE t SET a = $1 WHERE b = 'x' AND c = $2", "UPDATE t SET a = $1 WHERE b = $3 AND c = $2"),
    ("SELECT 1 /* card 4111111111111111 */ -- 5500005555555559\n",
     "SELECT $1 /*?*/ /*?*/\n"),
    ("SELECT 'é' || U&'d\\0061t\\+000061'", "SELECT $1 || $2"),
    ("SELECT DATE '2025-01-15', interval '1 day'", "SELECT DATE $1, interval $2"),
    ("SELECT id FROM cards", "SELECT id FROM cards"),
])
def test_redact_sql_replaces_every_literal(sql: str, expected: str) -> None:
    assert redact_sql(sql) == expected


def test_redact_sql_that_does_not_lex_is_redacted_whole() -> None:
    assert redact_sql("SELECT '4111111111111111") == UNLEXABLE
    assert redact_sql("") == ""


# -- the PAN scrub ---------------------------------------------------------------------------


def test_scrub_masks_pans_in_text() -> None:
    out = scrub("invalid input: 4111 1111 1111 1111 and 5500-0055-5555-5559")
    assert "4111 1111 1111 1111" not in out and "5500-0055-5555-5559" not in out
    assert out.endswith("5559") and len(out) == len(
        "invalid input: 4111 1111 1111 1111 and 5500-0055-5555-5559")
    assert scrub("order 12345") == "order 12345"


def test_scrub_value_covers_keys_numbers_and_control_characters() -> None:
    value = {"4111111111111111": [4111111111111111, 4111111111111111.0, "x\x014111111111111111"],
             "ok": 12, "nan": float("nan")}
    clean, hits = scrub_value(value)
    assert hits == 4
    text = canonical_bytes(clean)
    assert not scan(text) and b"4111111111111111" not in text
    assert clean["nan"] == "nan" and clean["ok"] == 12


def _no_pan(raw: bytes) -> None:
    """No PAN anywhere in a record line, except inside the gateway's own digests."""
    rec = json.loads(raw)
    rest = {k: v for k, v in rec.items() if k not in EXEMPT and k != "hash"}
    assert not scan(canonical_bytes(rest)), raw
    for pan in PANS:
        assert pan.encode() not in raw


def test_no_pan_reaches_any_record_whatever_the_client_sent(tmp_path: Path) -> None:
    """PANs in SQL literals, parameters, identifiers, error text, startup values, claims
    and numbers: none survives into the audit file."""
    f = facts()
    f["connection"]["application_name"] = "etl 4111111111111111"
    f["identity"]["claims"] = {"card": "5500 0055 5555 5559", "n": 6011000990139424}
    ctx = AuditContext.from_input(f)
    writer = AuditWriter(FileSink(tmp_path, "gw1"), instance="gw1")
    writer.start()
    writer.append(records.session_start(ctx))
    sqls = [
        "SELECT * FROM cards WHERE pan = '4111111111111111'",
        "SELECT * FROM cards WHERE pan = 4111111111111111",
        'SELECT "4111111111111111" FROM cards LIMIT 4111111111111111',
        "INSERT INTO cards (pan) VALUES ('5500-0055-5555-5559'), ('378282246310005')",
        "SELECT '4111111111111111",  # does not lex
    ]
    decision = Decision(allow=True, reasons=("card 4111111111111111 looked up",),
                        bundle_revision="r1", bundle_hash="ab" * 32)
    for sql in sqls:
        doc = stmt_doc(sql, limit=4111111111111111,
                       details={"name": "application_name", "value": "'6011000990139424'"})
        writer.append(records.decision_record(
            ctx, decision=decision, input_doc={**f, "statement": doc,
                                               "approval": {"granted": False, "id": None}}))
        writer.append(records.statement_record(
            ctx, decision_seq=None, outcome="error", command="SELECT", sqlstate="22P02",
            error='invalid input syntax for type integer: "4111111111111111"', parameters=2))
    writer.append(records.decision_record(ctx, sql=sqls[0], outcome="denied",
                                          reasons=["audit unavailable"], sqlstate="58030"))
    writer.append(records.auth_failure(reason="bad_signature", client_addr="10.0.0.9",
                                       connection="4111111111111111", db_user="x"))
    writer.append(records.approval_record("denied", approval_id="a1", ctx=ctx,
                                          reason="no: 4111-1111-1111-1111", sql=sqls[0]))
    writer.append({"type": "statement", "note": "x\x004111111111111111", "big": 4111111111111111,
                   "f": 4111111111111111.5})
    assert writer.close()
    data = b"".join(p.read_bytes() for p in sorted(tmp_path.glob("audit-*.jsonl")))
    lines = data.splitlines()
    assert len(lines) > 15
    for line in lines:
        _no_pan(line)
    last = json.loads(lines[-2])
    assert last["scrubbed"] == 3  # the writer's own guard caught what no builder cleaned


# -- builders --------------------------------------------------------------------------------


def test_decision_record_fields() -> None:
    f = facts()
    ctx = AuditContext.from_input(f)
    doc = stmt_doc("SELECT pan FROM cards WHERE id = 7")
    d = Decision(allow=True, reasons=("readers",), mask={"public.cards.pan": "pan_last4"},
                 bundle_revision="r7", bundle_hash="cd" * 32)
    inp = {**f, "statement": doc, "approval": {"granted": False, "id": None}}
    rec = records.decision_record(ctx, decision=d, input_doc=inp, duration_us=12.4,
                                  statement_digest="digest-1")
    body = json.loads(Chain("gw1").seal(rec).line)
    assert body["type"] == "decision" and body["outcome"] == "masked"
    assert body["who"] == {"subject": "ci-bot", "issuer": "https://ci.example.com",
                           "groups": ["ci"]}
    assert body["where"]["client_addr"] == "10.0.0.5"
    assert body["where"]["application_name"] == "psql"
    assert body["sql"] == "SELECT pan FROM cards WHERE id = $1"
    assert "sql" not in body["statement"] and body["statement"]["command"] == "SELECT"
    assert body["decision"]["mask"] == {"public.cards.pan": "pan_last4"}
    assert body["bundle_revision"] == "r7" and body["bundle_hash"] == "cd" * 32
    assert body["duration_us"] == 12 and "session_input" not in body
    # The input it was decided on comes back from the record plus session.start.
    start = json.loads(Chain("gw1").seal(records.session_start(ctx)).line)
    replayed = records.replay_input(body, start["input"])
    assert replayed == {**f, "statement": {**doc, "sql": body["sql"]},
                        "approval": {"granted": False, "id": None}}
    # An input that does not share the session's objects carries them itself.
    own = records.decision_record(ctx, decision=d, input_doc={**json.loads(json.dumps(inp))})
    assert "session_input" in own


def test_set_values_are_redacted_in_the_archived_statement() -> None:
    ctx = AuditContext.from_input(facts())
    doc = stmt_doc("SET application_name = 'secret'", command="SET", kind="session",
                   details={"name": "application_name", "value": "'secret'", "local": False})
    rec = records.decision_record(ctx, statement=doc,
                                  decision=Decision(allow=True, bundle_hash="ab" * 32))
    assert rec["statement"]["details"] == {"name": "application_name", "value": "?",
                                           "local": False}
    assert rec["sql"] == "SET application_name = $1"


def test_session_totals_and_rows_from_tag() -> None:
    t = records.SessionTotals()
    t.count("allowed", rows=5)
    t.count("masked", rows=2, masked_values=2)
    t.count("denied")
    t.count("error", safety_net_hits=1)
    t.count("skipped")
    t.count("unfinished")
    t.count("limited", rows=3)
    assert t.to_dict() == {"statements": 7, "allowed": 1, "denied": 1, "masked": 1, "held": 0,
                           "errors": 1, "skipped": 1, "unfinished": 1, "limited": 1,
                           "rows": 10, "masked_values": 2, "safety_net_hits": 1}
    assert records.rows_from_tag("SELECT 5") == 5
    assert records.rows_from_tag("INSERT 0 3") == 3
    assert records.rows_from_tag("BEGIN") is None


@pytest.mark.parametrize("body", [b"SELECT 5\0", b"INSERT 0 3\0", b"BEGIN\0", b"\0", b"",
                                  b"COPY 7", b"SELECT \xff1\0", b"UPDATE\x1c2\0",
                                  b"SELECT 1\0\0", b"FETCH 12345678901234567890\0"])
def test_rows_from_a_commandcomplete_body_are_rows_from_its_tag(body: bytes) -> None:
    """Asked twice (the second answer is the memo's) and after the memo was refilled."""
    expected = records.rows_from_tag(body.rstrip(b"\0").decode("ascii", "replace"))
    assert records.rows_from_complete(body) == expected
    assert records.rows_from_complete(body) == expected
    for i in range(records._ROWS_SEEN_MAX + 1):  # more tags than it keeps: it starts afresh
        records.rows_from_complete(b"SELECT %d\0" % i)
    assert len(records._ROWS_SEEN) <= records._ROWS_SEEN_MAX
    assert records.rows_from_complete(body) == expected


def test_every_type_has_a_builder() -> None:
    ctx = AuditContext.from_input(facts())
    built = [
        records.gateway_start(version="0.1.0", pid=1), records.gateway_stop(reason="sigterm"),
        records.session_start(ctx),
        records.session_update(ctx, changed=["application_name"]),
        records.session_end(ctx, reason="client", totals=records.SessionTotals()),
        records.auth_failure(reason="expired"),
        records.decision_record(ctx, sql="SELECT 1", reasons=["x"]),
        records.statement_record(ctx, decision_seq=1, outcome="allowed"),
        *(records.approval_record(e, approval_id="a") for e in records.APPROVAL_EVENTS),
        records.bundle_activated(revision="r", bundle_hash="ab" * 32, source="file"),
        records.bundle_rejected(source="http://b", reason="bad signature"),
        records.admin_action("session_terminated", by_subject="root", by_issuer="i",
                             target="s1", reason="stuck"),
        records.admin_action("bundle_reload", by_subject="root", by_issuer="i"),
    ]
    types = {r["type"] for r in built}
    assert types == set(records.TYPES) - {"checkpoint", "segment"}


def test_session_totals_count_each_outcome_once() -> None:
    totals = records.SessionTotals()
    for outcome in ("allowed", "masked", "denied", "held", "error", "skipped", "unfinished",
                    "limited", "allowed"):
        totals.count(outcome, rows=2 if outcome == "allowed" else None, masked_values=1)
    totals.count("something else")  # counted as a statement, in no outcome
    assert totals.to_dict() == {
        "statements": 10, "allowed": 2, "denied": 1, "masked": 1, "held": 1, "errors": 1,
        "skipped": 1, "unfinished": 1, "limited": 1, "rows": 4, "masked_values": 9,
        "safety_net_hits": 0}
