"""Record templates: the same bytes as the ordinary path, and nothing they cannot hold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import AuditContext, AuditWriter, Signer, generate_keypair, records
from gateway.audit.canonical import hashed_body
from gateway.audit.chain import Chain
from gateway.audit.checkpoint import load_public_key
from gateway.audit.filesink import FileSink
from gateway.audit.template import TemplateCache, TemplateMismatch
from gateway.audit.verify import verify_dir
from gateway.policy.decision import Decision

STATEMENT_HOLES = ("decision_seq", "rows", "masked_values", "duration_us")
TS = "2026-11-29T15:00:00.123456Z"


def ctx(**kw: Any) -> AuditContext:
    args: dict[str, Any] = {"session": "0123abcd4567ef89", "subject": "ci-bot",
                            "issuer": "https://ci", "groups": ["ci"],
                            "client_addr": "10.0.0.5", "application_name": "psql"}
    args.update(kw)
    return AuditContext.build(**args)


def statement(c: AuditContext, seq: int | None, rows: int | None, values: int,
              duration: int | None, **kw: Any) -> dict[str, Any]:
    return records.statement_record(c, decision_seq=seq, outcome=kw.pop("outcome", "allowed"),
                                    command="SELECT", rows=rows, masked_values=values,
                                    duration_us=duration, **kw)


def twin_chains(seq: int = 41) -> tuple[Chain, Chain]:
    head = "ab" * 32
    return Chain("gw1", seq, head), Chain("gw1", seq, head)


@pytest.mark.parametrize("values", [
    (7, 1, 0, 120), (7, None, 0, 0), (0, 999_999_999_999, 3, 1), (None, 5, 0, None),
])
def test_a_statement_template_writes_the_ordinary_bytes(values: tuple[Any, ...]) -> None:
    c = ctx()
    plain, templated = twin_chains()
    tpl = templated.template(statement(c, 1, 1, 0, 1), STATEMENT_HOLES)
    assert tpl is not None
    expected = plain.seal({**statement(c, *values), "ts": TS})
    got = templated.seal_template(tpl, values, ts=TS)
    assert got == expected
    assert (plain.seq, plain.head) == (templated.seq, templated.head)
    body, digest = hashed_body(got.line.rstrip(b"\n"))  # type: ignore[misc]
    assert json.loads(body)["rows"] == values[1] and digest == got.hash


def test_a_decision_template_with_fragments_and_unicode() -> None:
    c = ctx(application_name="psql — café")
    decision = Decision(allow=True, reasons=("ci may read",), bundle_revision="r1",
                        bundle_hash="f" * 64)
    doc = {"statement": {"sql": "SELECT holder FROM cards WHERE id = 5", "command": "SELECT",
                         "columns": [{"name": "holder", "tags": []}]},
           "approval": {"granted": False, "id": None}}
    rec = records.decision_record(c, decision=decision, input_doc=doc, statement_digest="d1",
                                  redacted_sql="SELECT holder FROM cards WHERE id = $1")
    plain, templated = twin_chains()
    tpl = templated.template(rec)
    assert tpl is not None
    for _ in range(3):
        assert templated.seal_template(tpl, ts=TS) == plain.seal({**rec, "ts": TS})


@pytest.mark.parametrize("bad", [-1, 10**12, 4111111111111111, 1.5, "4111111111111111", [1]])
def test_values_a_hole_cannot_hold_leave_the_chain_unchanged(bad: Any) -> None:
    c = ctx()
    chain = Chain("gw1", 3, "cd" * 32)
    tpl = chain.template(statement(c, 1, 1, 0, 1), STATEMENT_HOLES)
    assert tpl is not None
    with pytest.raises(TemplateMismatch):
        chain.seal_template(tpl, (1, bad, 0, 1))
    with pytest.raises(TemplateMismatch):
        chain.seal_template(tpl, (1, 1))  # too few values
    assert (chain.seq, chain.head) == (3, "cd" * 32)


def test_records_the_scan_would_touch_get_no_template() -> None:
    chain = Chain("gw1")
    c = ctx()
    # a PAN in static text: the ordinary path masks it, so no template may freeze it
    leaky = ctx(client_addr="4111 1111 1111 1111")
    assert chain.template(statement(leaky, 1, 1, 0, 1), STATEMENT_HOLES) is None
    assert b"4111 1111 1111 1111" not in Chain("gw1").seal(statement(leaky, 1, 1, 0, 1)).line
    # a control character needs a \u escape, whose hex digits the scan cannot read
    assert chain.template(statement(ctx(client_addr="bell\x07"), 1, 1, 0, 1),
                          STATEMENT_HOLES) is None
    # a template of another instance is refused
    tpl = Chain("gw2").template(statement(c, 1, 1, 0, 1), STATEMENT_HOLES)
    assert tpl is not None
    with pytest.raises(ValueError):
        chain.seal_template(tpl, (1, 1, 0, 1))


def test_the_hole_markers_cannot_be_forged_by_content() -> None:
    # record content that looks like a hole placeholder stays content
    chain, plain = twin_chains()
    c = ctx(application_name='%s"%d"\\')
    tpl = chain.template(statement(c, 1, 1, 0, 1), STATEMENT_HOLES)
    assert tpl is not None
    assert chain.seal_template(tpl, (2, 3, 0, 4), ts=TS) == plain.seal(
        {**statement(c, 2, 3, 0, 4), "ts": TS})


def test_a_log_of_templated_records_verifies(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    d = tmp_path / "audit"
    w = AuditWriter(FileSink(d, "gw1"), instance="gw1",
                    signer=Signer.from_pem_file(tmp_path / "k.pem"))
    w.start()
    cache = TemplateCache(w, max_size=2)
    c = ctx()
    pins = [object(), object(), object()]
    for i in range(30):
        pin = pins[i % 3]  # three shapes in a cache of two: entries are evicted and rebuilt
        values = (i, i * 2, 0, 10 + i)
        cache.append(("s", id(pin)), lambda v=values: statement(c, *v), STATEMENT_HOLES,
                     values, pin=pin)
    # a value no template can hold goes the ordinary way
    cache.append(("s", id(pins[0])), lambda: statement(c, 1, -5, 0, 1), STATEMENT_HOLES,
                 (1, -5, 0, 1), pin=pins[0])
    w.close()
    report = verify_dir(d, load_public_key(tmp_path / "k.pub"))
    assert report.ok, report.problem
    lines = [json.loads(x) for f in sorted(d.glob("*.jsonl")) for x in f.read_text().splitlines()]
    stmts = [x for x in lines if x["type"] == "statement"]
    assert [x["rows"] for x in stmts] == [i * 2 for i in range(30)] + [-5]
    assert [x["duration_us"] for x in stmts[:30]] == [10 + i for i in range(30)]


def test_fill_appends_only_what_a_template_it_holds_can_take(tmp_path: Path) -> None:
    w = AuditWriter(FileSink(tmp_path / "audit", "gw1"), instance="gw1")
    w.start()
    cache = TemplateCache(w)
    c = ctx()
    pin, other = object(), object()
    key = ("s", id(pin))
    assert cache.fill(key, (1, 2, 0, 3), pin=pin) is None  # no template yet
    first = cache.append(key, lambda: statement(c, 1, 2, 0, 3), STATEMENT_HOLES,
                         (1, 2, 0, 3), pin=pin)
    seq = w.status()["seq"]
    assert cache.fill(key, (1, 2, 0, 3), pin=other) is None  # another object's entry
    assert cache.fill(key, (1, -1, 0, 3), pin=pin) is None  # a value no hole can hold
    assert cache.fill(key, (1, 2, 0), pin=pin) is None  # not one value per hole
    assert w.status()["seq"] == seq  # none of those appended anything
    assert cache.fill(key, (4, 5, 0, 6), pin=pin) == first + 1
    # a shape with no template (its text needs a \u escape): never filled
    odd = ("o", id(pin))
    cache.append(odd, lambda: statement(c, 1, 1, 0, 1, error="bell \x07"),
                 STATEMENT_HOLES, (1, 1, 0, 1), pin=pin)
    assert cache._templates[odd][1] is None
    assert cache.fill(odd, (1, 1, 0, 1), pin=pin) is None
    w.close()
    lines = [json.loads(x) for x in (tmp_path / "audit").glob("*.jsonl").__next__()
             .read_text().splitlines()]
    stmts = [x for x in lines if x["type"] == "statement"]
    assert [(x["decision_seq"], x["rows"], x["duration_us"]) for x in stmts[:2]] == \
        [(1, 2, 3), (4, 5, 6)]
