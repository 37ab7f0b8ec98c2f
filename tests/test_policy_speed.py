"""What makes decisions cheap must not change them: the engine hands regopy the input with
the policy's keys first and without the parts the policy never reads, and it validates
each distinct answer once. (Speed itself is measured by tools/bench.py, never here.)"""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.policy import PolicyEngine, PolicySource, policy_gaps
from gateway.policy import runtime as rt

REPO = Path(__file__).resolve().parents[1]
PCI = REPO / "policies" / "pci"


def compiled(modules: dict[str, str], entrypoints: list[str], **kwargs: Any) -> rt.CompiledPolicy:
    return rt.compile_policy(modules, {}, entrypoints, **kwargs)


# -- which parts of the input a policy can read ------------------------------------------


def test_input_paths_follow_static_references() -> None:
    rego = """package p
import rego.v1
a := input.statement
b if input.identity.groups[_] == "ci"
c := input["approval"].granted
d := object.get(input.session, "id", "")
"""
    assert rt.input_paths({"p.rego": rego}) == {
        "statement": None,
        "identity": {"groups": None},
        "approval": {"granted": None},
        "session": None,
    }


def test_a_shorter_reference_reads_the_whole_subtree() -> None:
    rego = "package p\nimport rego.v1\na := input.identity.groups\nb := input.identity\n"
    assert rt.input_paths({"p.rego": rego}) == {"identity": None}


@pytest.mark.parametrize(
    "expr",
    [
        "json.marshal(input)",
        "count(input)",
        "input[k]",
        "input[0]",
        "[k | some k, _ in input]",
        "object.get(input, \"statement\", {})",
    ],
)
def test_any_other_use_of_input_reads_all_of_it(expr: str) -> None:
    rego = f"package p\nimport rego.v1\nk := \"statement\"\na := {expr}\nb := input.statement\n"
    assert rt.input_paths({"p.rego": rego}) is None


def test_a_field_named_input_and_comments_are_not_the_input() -> None:
    rego = """package p
import rego.v1
# input is everything
a := data.p.input
b := "input"
c := input.statement.kind
"""
    assert rt.input_paths({"p.rego": rego}) == {"statement": {"kind": None}}


def test_prune_input_keeps_only_what_can_be_read() -> None:
    doc = {
        "identity": {"subject": "s", "groups": ["ci"], "claims": {"a": 1}},
        "connection": {"tls": True},
        "statement": {"kind": "read", "columns": []},
        "approval": "not an object",
    }
    shape = {"statement": None, "identity": {"groups": None}, "approval": {"granted": None}}
    assert rt.prune_input(doc, shape) == {
        "statement": {"kind": "read", "columns": []},
        "identity": {"groups": ["ci"]},
        "approval": "not an object",  # not an object: kept as it is
    }
    assert rt.prune_input(doc, None) is doc
    assert doc["identity"]["subject"] == "s"  # never modified in place


@pytest.mark.parametrize(
    "bad",
    [{"x": {1, 2}}, {"x": float("nan")}, {"x": 2**70}, {1: "a"}, {"x": "a\x00b"}, {"a\x00": 1},
     [1, 2**70]],
)
def test_what_is_left_out_still_fails_closed_when_it_is_not_json(bad: Any) -> None:
    shape = {"statement": None}
    with pytest.raises(rt.EvalError):
        rt.prune_input({"statement": {"kind": "read"}, "connection": bad}, shape)
    engine = PolicyEngine.from_path(str(PCI))
    d = engine.decide({"identity": {"groups": ["ci"]}, "connection": bad,
                       "statement": {"kind": "read"}})
    assert d.allow is False and d.error is not None


def test_a_policy_reading_everything_still_sees_everything() -> None:
    rego = "package p\nimport rego.v1\nkeys := object.keys(input)\nconn := input.connection\n"
    policy = compiled({"p.rego": rego}, ["p/keys", "p/conn"])
    doc = {"connection": {"tls": True}, "session": {"id": "x"}}
    assert sorted(policy.evaluate("p/keys", doc)) == ["connection", "session"]
    assert policy.evaluate("p/conn", doc) == {"tls": True}


# -- the order in which keys are handed over ---------------------------------------------


def test_field_order_is_the_order_of_first_mention() -> None:
    rego = 'package p\nimport rego.v1\na := input.b.zeta\nc := object.get(input.b, "alpha", 1)\n'
    order = rt.field_order({"p.rego": rego})
    assert order["b"] < order["zeta"] < order["alpha"]


def test_key_order_puts_mentioned_keys_first_and_keeps_the_rest() -> None:
    order = rt.KeyOrder({"kind": 0, "columns": 1})
    plan = order.plan({"sql": 1, "columns": 2, "limit": 3, "kind": 4})
    assert [k for k, _ in plan] == ["kind", "columns", "sql", "limit"]
    assert order.plan({"sql": 1, "columns": 2, "limit": 3, "kind": 4}) is plan  # remembered
    with pytest.raises(rt.EvalError, match="not a string"):
        order.plan({1: "x"})


def test_key_order_changes_no_comparison_or_printed_value() -> None:
    rego = """package p
import rego.v1
j := json.marshal(input.s)
eq if input.s == {"a": 1, "b": 2, "z": 3}
keys := object.keys(input.s)
"""
    doc = {"s": {"z": 3, "a": 1, "b": 2}}
    answers = []
    for order_keys in (False, True):
        policy = compiled({"p.rego": rego}, ["p/j", "p/eq", "p/keys"], order_keys=order_keys)
        answers.append([policy.evaluate(ep, doc) for ep in policy.entrypoints])
    assert answers[0] == answers[1] == [json.dumps(doc["s"], sort_keys=True, separators=(",", ":")),
                                         True, ["a", "b", "z"]]


# -- the starter policy: the same decisions with and without the engine's shortcuts ------


def _pci_docs() -> list[dict[str, Any]]:
    """Input documents around the starter policy's rules, with the session facts the
    gateway adds (which the policy never reads)."""
    base = {
        "identity": {"subject": "s", "issuer": "i", "groups": ["ci"], "claims": {"x": 1},
                     "method": "jwt"},
        "connection": {"name": "c", "database": "d", "user": "u", "application_name": "a",
                       "client_addr": "127.0.0.1", "tls": True, "networks": []},
        "session": {"id": "x", "started_at": "2025-01-01T00:00:00Z"},
        "approval": {"granted": False, "id": None},
    }  # fmt: skip
    col = lambda t, n, tags: {"schema": "public", "table": t, "name": n, "tags": tags,  # noqa: E731
                              "usage": ["output"]}
    rel = lambda n, access: {"schema": "public", "name": n, "access": access,  # noqa: E731
                             "relkind": "table", "temp": False}
    statements = [
        ("read", "SELECT", [rel("pgbench_accounts", ["read"])],
         [col("pgbench_accounts", "aid", []), col("pgbench_accounts", "abalance", [])]),
        ("read", "SELECT", [rel("cards", ["read"])], [col("cards", "pan", ["pan"])]),
        ("read", "SELECT", [rel("cards", ["read"])], [col("cards", "pan", [])]),
        ("read", "SELECT", [rel("cards", ["read"])], [col("cards", "cvv", [])]),
        ("read", "SELECT", [rel("cards", ["read"])], [col("cards", "", [])]),
        ("read", "SELECT", [rel("cards", ["read"])], [{"schema": "public", "name": "x"}]),
        ("read", "SELECT", [rel("transactions", ["delete"])], []),
        ("read", "SELECT", [{"schema": "pg_catalog", "name": "pg_stats", "access": ["read"]}], []),
        ("copy_out", "COPY", [rel("cards", ["read"])], [col("cards", "pan", ["pan"])]),
        ("write", "UPDATE", [rel("transactions", ["update"])], [col("transactions", "id", [])]),
        ("write", "MERGE", [rel("cards", ["update"])], [col("cards", "pan", ["pan"])]),
        ("session", "SET", [], []),
        ("utility", "DISCARD ALL", [], []),
        ("ddl", "CREATE INDEX", [rel("transactions", ["ddl"])], []),
    ]  # fmt: skip
    docs = []
    for (kind, command, relations, columns), groups, extra in itertools.product(
        statements,
        (["ci"], ["ci-writers"], ["dba"], ["ci", "dba"], ["marketing"]),
        ({}, {"functions": ["pg_catalog.set_config"], "details": {"set_config": ["jit"]}},
         {"sql_string_functions": True}, {"unresolved": [{"type": "column", "name": "x"}]},
         {"details": {"name": "role"}}, {"has_where": False}),
    ):
        doc = copy.deepcopy(base)
        doc["identity"]["groups"] = groups
        doc["statement"] = {
            "sql": "x", "fingerprint": "f", "command": command, "kind": kind,
            "relations": relations, "columns": columns, "functions": [], "has_where": True,
            "limit": None, "index": 0, "count": 1, "protocol": "simple",
            "sql_string_functions": False, "unresolved": [], "details": {}, **extra,
        }  # fmt: skip
        docs.append(doc)
    return docs


def test_engine_shortcuts_do_not_change_starter_policy_decisions() -> None:
    source = PolicySource.load(str(PCI))
    plain = rt.compile_policy(source.policy_modules, source.data, ["pgwarden/decision"],
                              order_keys=False, prune=False)
    fast = rt.compile_policy(source.policy_modules, source.data, ["pgwarden/decision"])
    assert fast.input_shape is not None  # the starter policy only makes static references
    assert "connection" not in fast.input_shape
    for doc in _pci_docs():
        assert fast.evaluate("pgwarden/decision", doc) == plain.evaluate(
            "pgwarden/decision", doc
        ), doc


def test_answers_are_validated_once_and_stay_correct() -> None:
    engine = PolicyEngine.from_path(str(PCI), cache_size=0)
    docs = _pci_docs()
    first = [engine.decide(doc) for doc in docs]
    again = [engine.decide(doc) for doc in docs]
    assert first == again
    assert any(a is b for a, b in zip(first, again, strict=True))  # the same answers, reused
    allowed = [d for d in first if d.allow]
    assert allowed and all(d.reasons == () and d.grant_ttl is None for d in allowed)


# -- the empty-set literal is not an unknown function ------------------------------------


def test_empty_set_literal_is_not_reported_as_a_function() -> None:
    rego = "package p\nimport rego.v1\nempty if input.x == set()\ns := set()\n"
    assert [w for w in policy_gaps({"p.rego": rego}) if w.code == "unknown-function"] == []
