"""Policy layer: sources, the regopy engine, decision validation, cache, the starter PCI
policy, the `policy test` runner and `policy eval`, and policy_gaps."""

from __future__ import annotations

import copy
import io
import json
import shutil
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from conftest import make_input, rel, statement

from gateway.policy import (
    UNDEFINED,
    Decision,
    DecisionCache,
    PolicyCompileError,
    PolicyEngine,
    PolicyLoadError,
    PolicySource,
    input_digest,
    policy_gaps,
    validate_decision,
)
from gateway.policy import runtime as rt
from gateway.policy.commands import cmd_policy_eval, cmd_policy_test
from gateway.policy.testing import format_results, run_tests

REPO = Path(__file__).resolve().parents[1]
PCI = REPO / "policies" / "pci"

# -- helpers ----------------------------------------------------------------------------

VALID = {
    "allow": True,
    "reasons": [],
    "mask": {"public.cards.pan": "pan_last4"},
    "require_approval": False,
    "approvers": [],
    "row_limit": None,
    "db_role": None,
}


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def engine_for(tmp_path: Path, rego: str, **kwargs: Any) -> PolicyEngine:
    write(tmp_path, {"policy.rego": rego})
    return PolicyEngine(PolicySource.load(tmp_path), **kwargs)


def decision_policy(value: str) -> str:
    return f"package pgwarden\nimport rego.v1\n\ndecision := {value}\n"


def col(table: str, name: str, tags: list[str], usage: list[str]) -> dict[str, Any]:
    return {"schema": "public", "table": table, "name": name, "tags": tags, "usage": usage}



SELECT_CARD = statement(
    "SELECT id, pan, amount_cents FROM cards WHERE id = $1",
    "SELECT",
    "read",
    [rel("cards", ["read"])],
    [
        col("cards", "id", [], ["output", "filter"]),
        col("cards", "pan", ["pan"], ["output"]),
        col("cards", "amount_cents", [], ["output"]),
    ],
)


@pytest.fixture(scope="module")
def pci() -> PolicyEngine:
    return PolicyEngine(PolicySource.load(PCI))


# -- loading ----------------------------------------------------------------------------


def test_hash_is_stable_and_follows_content(tmp_path: Path) -> None:
    a = tmp_path / "a"
    shutil.copytree(PCI, a)
    first = PolicySource.load(a)
    assert PolicySource.load(a).hash == first.hash
    b = tmp_path / "b"
    shutil.copytree(PCI, b)
    assert PolicySource.load(b).hash == first.hash  # independent of where it lives

    (a / "README.md").write_text("not policy")  # ignored files do not count
    assert PolicySource.load(a).hash == first.hash

    data = json.loads((a / "data.json").read_text())
    data["pgwarden"]["groups"]["readers"].append("auditors")
    (a / "data.json").write_text(json.dumps(data))
    changed = PolicySource.load(a)
    assert changed.hash != first.hash

    (a / "extra.rego").write_text("package pgwarden.extra\n\nimport rego.v1\n\nx := 1\n")
    assert PolicySource.load(a).hash not in (first.hash, changed.hash)


def test_revision_from_manifest_or_dev_hash(tmp_path: Path) -> None:
    write(tmp_path, {"p.rego": decision_policy(json.dumps(VALID))})
    src = PolicySource.load(tmp_path)
    assert src.revision == f"dev-{src.hash[:12]}"
    (tmp_path / ".manifest").write_text(json.dumps({"revision": "2025-01-15.1", "roots": [""]}))
    src2 = PolicySource.load(tmp_path)
    assert src2.revision == "2025-01-15.1"
    assert src2.hash != src.hash
    engine = PolicyEngine(src2)
    d = engine.decide(make_input(["ci"], SELECT_CARD))
    assert (d.bundle_revision, d.bundle_hash) == ("2025-01-15.1", src2.hash)


def test_manifest_entrypoint_and_roots(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "p.rego": "package authz\nimport rego.v1\n\nanswer := " + json.dumps(VALID) + "\n",
            ".manifest": json.dumps(
                {"revision": "r1", "roots": ["authz"], "metadata": {"entrypoint": "authz/answer"}}
            ),
        },
    )
    engine = PolicyEngine(PolicySource.load(tmp_path))
    assert engine.entrypoint_ref == "data.authz.answer"
    assert engine.decide({}).allow is True

    (tmp_path / "other.rego").write_text("package elsewhere\n\nx := 1\n")
    with pytest.raises(PolicyLoadError, match=r"other\.rego:1: package elsewhere is outside"):
        PolicySource.load(tmp_path)


def test_data_files_are_placed_by_directory(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "p.rego": "package x\n\nv := 1\n",
            "data.json": json.dumps({"top": 1, "roles": {"admin": ["alice"]}}),
            "roles/ops/data.json": json.dumps(["bob"]),
            "a/b/data.yaml": "limit: 5\n",
        },
    )
    src = PolicySource.load(tmp_path)
    assert src.data == {
        "top": 1,
        "roles": {"admin": ["alice"], "ops": ["bob"]},
        "a": {"b": {"limit": 5}},
    }


def test_conflicting_data_names_both_files(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "p.rego": "package x\n\nv := 1\n",
            "data.json": json.dumps({"roles": {"ops": ["alice"]}}),
            "roles/ops/data.json": json.dumps(["bob"]),
        },
    )
    with pytest.raises(PolicyLoadError) as exc:
        PolicySource.load(tmp_path)
    msg = str(exc.value)
    assert "data.roles.ops" in msg and "data.json" in msg


def test_bad_data_json_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, {"p.rego": "package x\n\nv := 1\n", "data.json": '{\n  "a": 1,\n  "b": \n}\n'})
    with pytest.raises(PolicyLoadError, match=r"data\.json:4:1: invalid JSON"):
        PolicySource.load(tmp_path)


def test_top_level_data_must_be_an_object(tmp_path: Path) -> None:
    write(tmp_path, {"p.rego": "package x\n\nv := 1\n", "data.json": "[1, 2]"})
    with pytest.raises(PolicyLoadError, match="must hold an object"):
        PolicySource.load(tmp_path)


def test_missing_path_and_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError, match="no such file"):
        PolicySource.load(tmp_path / "nope")
    with pytest.raises(PolicyLoadError, match=r"no \.rego files"):
        PolicySource.load(tmp_path)


def test_tarball_has_the_same_content_hash(tmp_path: Path) -> None:
    tgz = tmp_path / "bundle.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        for path in sorted(PCI.rglob("*")):
            tar.add(path, arcname="/" + path.relative_to(PCI).as_posix())  # like opa build
    from_dir = PolicySource.load(PCI)
    from_tar = PolicySource.load(tgz)
    assert from_tar.hash == from_dir.hash
    assert from_tar.archive_sha256 is not None
    assert PolicyEngine(from_tar).bundle_hash == from_tar.archive_sha256


def test_tarball_with_parent_path_is_refused(tmp_path: Path) -> None:
    tgz = tmp_path / "evil.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        body = b"package x\n\nv := 1\n"
        info = tarfile.TarInfo("../evil.rego")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    with pytest.raises(PolicyLoadError, match="unsafe file name"):
        PolicySource.load(tgz)


# -- compiling --------------------------------------------------------------------------


def test_compile_error_names_file_and_line(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "ok.rego": decision_policy(json.dumps(VALID)),
            "sub/bad.rego": "package pgwarden.bad\n\nallow if {\n  input.x ==\n}\n",
        },
    )
    with pytest.raises(PolicyCompileError) as exc:
        PolicyEngine(PolicySource.load(tmp_path))
    assert exc.value.file is not None and exc.value.file.endswith("sub/bad.rego")
    assert (exc.value.line, exc.value.col) == (4, 11)
    assert "bad.rego:4:11:" in str(exc.value)


def test_rule_and_data_on_the_same_path_is_a_compile_error(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "p.rego": decision_policy(json.dumps(VALID)) + "\ngroups := {}\n",
            "data.json": json.dumps({"pgwarden": {"groups": {"readers": ["ci"]}}}),
        },
    )
    with pytest.raises(PolicyCompileError, match=r"p\.rego:6:1: rule data\.pgwarden\.groups"):
        PolicyEngine(PolicySource.load(tmp_path))


def test_undefined_entrypoint_is_a_compile_error(tmp_path: Path) -> None:
    write(tmp_path, {"p.rego": "package pgwarden\n\nimport rego.v1\n\nallow := true\n"})
    with pytest.raises(PolicyCompileError, match=r"data\.pgwarden\.decision is not defined"):
        PolicyEngine(PolicySource.load(tmp_path))
    assert PolicyEngine(PolicySource.load(tmp_path), "data.pgwarden.allow").entrypoint == (
        "pgwarden/allow"
    )


def test_with_input_as_is_refused_before_it_can_abort_the_process(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "p.rego": decision_policy(json.dumps(VALID)),
            "p_test.rego": (
                "package pgwarden_test\n\nimport rego.v1\n\n"
                "test_x if {\n\td := data.pgwarden.decision with input as {}\n\td.allow\n}\n"
            ),
        },
    )
    with pytest.raises(PolicyCompileError, match=r"p_test\.rego:6:.*with input as"):
        run_tests([str(tmp_path)])


def test_probe_reports_an_abort_instead_of_dying(monkeypatch: pytest.MonkeyPatch) -> None:
    # The probe script, minus the static guard: the child really aborts.
    monkeypatch.setattr(
        rt,
        "_PROBE",
        "import json, sys\nfrom regopy import Interpreter\njob = json.load(sys.stdin)\n"
        "r = Interpreter()\n"
        "[r.add_module(k, v) for k, v in job['modules'].items()]\n"
        "r.build(None, job['entrypoints'])\n",
    )
    modules = {
        "p.rego": 'package p\nimport rego.v1\nkind := upper("x")\n',
        "t.rego": "package t\nimport rego.v1\ntest_a if {\n\tdata.p.kind with input as {}\n}\n",
    }
    msg = rt.probe_compile(modules, None, ["t/test_a"])
    assert msg is not None and "aborted" in msg


def test_test_modules_are_not_compiled_into_the_engine(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "p.rego": decision_policy(json.dumps(VALID)),
            "p_test.rego": "package pgwarden_test\n\nimport rego.v1\n\nt := time.now_ns()\n",
        },
    )
    engine = PolicyEngine(PolicySource.load(tmp_path))
    assert engine.deterministic  # the test module's clock does not count


# -- decision validation ----------------------------------------------------------------


def _with(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(VALID)
    for key, value in changes.items():
        if value is KeyError:
            doc.pop(key)
        else:
            doc[key] = value
    return doc


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (UNDEFINED, "data.pgwarden.decision is undefined"),
        (None, "is not an object (got null)"),
        ([VALID], "is not an object (got array)"),
        (True, "is not an object (got boolean)"),
        (_with(allow=KeyError), "decision.allow is missing"),
        (_with(mask=KeyError, db_role=KeyError), "decision.mask, decision.db_role are missing"),
        (_with(allow="yes"), "decision.allow is not a boolean"),
        (_with(allow=1), "decision.allow is not a boolean"),
        (_with(reasons="no"), "decision.reasons is not an array"),
        (_with(reasons=["ok", 3]), "decision.reasons[1] is not a string"),
        (_with(mask=[]), "decision.mask is not an object"),
        (_with(mask={"cards.pan": "redact"}), "is not schema.table.column"),
        (_with(mask={"public.cards.pan": "rot13"}), "unknown mask method 'rot13'"),
        (_with(mask={"public.cards.pan": 4}), "is not a string"),
        (_with(require_approval="true"), "decision.require_approval is not a boolean"),
        (_with(approvers="dba-oncall"), "decision.approvers is not an array"),
        (_with(approvers=[""]), "decision.approvers[0] is an empty string"),
        (_with(allow=False, require_approval=True), "approvers is empty"),
        (_with(row_limit=-1), "decision.row_limit is negative"),
        (_with(row_limit="10"), "decision.row_limit is not null or an integer"),
        (_with(row_limit=True), "decision.row_limit is not null or an integer"),
        (_with(row_limit=2.5), "decision.row_limit is not an integer"),
        (_with(db_role=""), "decision.db_role is an empty"),
        (_with(db_role=7), "decision.db_role is not null or a string"),
        (_with(db_role="r" * 64), "longer than 63 bytes"),
        (_with(grant_ttl=0), "decision.grant_ttl must be a positive"),
        (_with(grant_ttl="1h"), "decision.grant_ttl is not null or a number"),
    ],
)
def test_malformed_decisions_deny_with_an_error(value: Any, why: str) -> None:
    d = validate_decision(value, bundle_revision="r", bundle_hash="h")
    assert d.allow is False
    assert d.require_approval is False
    assert d.error is not None and why in d.error
    assert d.reasons == (f"policy error: {d.error}",)
    assert d.mask == {}
    assert (d.bundle_revision, d.bundle_hash) == ("r", "h")
    assert d.outcome == "deny"


def test_valid_decision_keeps_every_field() -> None:
    d = validate_decision(
        _with(row_limit=100.0, db_role="ci_reader", grant_ttl=60, reasons=["fine"], extra=1)
    )
    assert d.error is None and d.allow is True and d.outcome == "allow"
    assert d.mask == {"public.cards.pan": "pan_last4"}
    assert (d.row_limit, d.db_role, d.grant_ttl, d.reasons) == (100, "ci_reader", 60.0, ("fine",))
    as_json = json.loads(d.to_json())
    assert as_json["mask"] == {"public.cards.pan": "pan_last4"}
    assert set(as_json) >= set(VALID) | {"bundle_revision", "bundle_hash", "error", "grant_ttl"}


def test_hold_request_keeps_allow_and_require_approval_as_given() -> None:
    d = validate_decision(
        _with(allow=False, require_approval=True, approvers=["dba-oncall"], reasons=["hold"])
    )
    assert d.error is None
    assert (d.allow, d.require_approval, d.approvers) == (False, True, ("dba-oncall",))
    assert d.outcome == "hold"


def test_decision_is_frozen_hashable_and_picklable() -> None:
    import pickle

    d = validate_decision(VALID)
    with pytest.raises(AttributeError):
        d.allow = False  # type: ignore[misc]
    again = pickle.loads(pickle.dumps(d))  # noqa: S301 - our own bytes
    assert again == d and hash(again) == hash(d)


@pytest.mark.parametrize(
    ("rego", "why"),
    [
        (decision_policy(json.dumps(_with(allow="yes"))), "decision.allow is not a boolean"),
        (decision_policy(json.dumps(_with(mask={"public.cards.pan": "md5"}))), "'md5'"),
        (
            'package pgwarden\nimport rego.v1\n\ndecision := {"allow": true} if input.nope\n',
            "data.pgwarden.decision is undefined",
        ),
        (
            "package pgwarden\nimport rego.v1\n\n"
            "d := 1 if input.identity\nd := 2 if input.session\n"
            "decision := object.union(" + json.dumps(VALID) + ', {"row_limit": d})\n',
            "evaluation failed: complete rules must not produce multiple outputs",
        ),
        (
            "package pgwarden\nimport rego.v1\n\ndecision := "
            + json.dumps(VALID)
            + ' if net.cidr_contains("10.0.0.0/8", input.connection.client_addr)\n',
            "evaluation failed: Networking builtins are not supported",
        ),
        (
            "package pgwarden\nimport rego.v1\n\ndecision := "
            + json.dumps(VALID)
            + ' if regex.match("(?i)^select", input.statement.sql)\n',
            "evaluation failed: error parsing regexp",
        ),
    ],
)
def test_engine_turns_policy_mistakes_into_denials(tmp_path: Path, rego: str, why: str) -> None:
    engine = engine_for(tmp_path, rego)
    d = engine.decide(make_input(["ci"], SELECT_CARD))
    assert d.allow is False and d.error is not None and why in d.error, d
    assert d.reasons[0].startswith("policy error: ")
    assert d.bundle_revision == engine.revision


def test_decide_never_raises_on_bad_input(pci: PolicyEngine) -> None:
    for bad in ({"x": {1, 2}}, {"x": float("nan")}, {"x": 2**70}, {1: "a"}, {"x": "a\x00b"}):
        d = pci.decide(bad)  # type: ignore[arg-type]
        assert d.allow is False and d.error is not None


def test_strings_with_quotes_and_backslashes_reach_the_policy_intact(tmp_path: Path) -> None:
    # regopy's own Input hands such strings over unquoted: they never equal the literal
    # and come back as invalid JSON. The engine quotes them.
    sql = "SELECT \"pan\" FROM cards WHERE note = 'a\\b'\n"
    rego = (
        "package pgwarden\nimport rego.v1\n\n"
        f"decision := object.union({json.dumps(VALID)}, "
        '{"reasons": [input.statement.sql]}) if input.statement.sql == ' + json.dumps(sql) + "\n"
    )
    engine = engine_for(tmp_path, rego)
    d = engine.decide(make_input(["ci"], statement(sql, "SELECT", "read")))
    assert d.error is None and d.allow is True
    assert d.reasons == (sql,)


# -- cache ------------------------------------------------------------------------------


def test_cache_hits_ignore_volatile_fields(pci: PolicyEngine) -> None:
    engine = PolicyEngine(pci.source)
    doc = make_input(["ci"], SELECT_CARD)
    first = engine.decide(doc)
    assert engine.cache_info().misses == 1 and engine.cache_info().hits == 0

    other_session = copy.deepcopy(doc)
    other_session["session"] = {"id": "session-2", "started_at": "2025-01-16T00:00:00Z"}
    other_session["connection"]["client_addr"] = "10.20.0.8"
    assert engine.decide(other_session) is first
    assert engine.cache_info().hits == 1

    other_statement = make_input(["ci"], statement("SELECT 1", "SELECT", "read"))
    assert engine.decide(other_statement) is not first
    assert engine.cache_info().misses == 2

    assert engine.decide(doc, cache_key="ci|fp") == first
    assert engine.decide({"garbage": True}, cache_key="ci|fp") == first  # caller's key wins
    assert engine.cache_info().hits == 2


def test_volatile_field_the_policy_reads_stays_in_the_key(tmp_path: Path) -> None:
    rego = (
        "package pgwarden\nimport rego.v1\n\n"
        f"decision := object.union({json.dumps(VALID)}, "
        '{"allow": startswith(input.connection.client_addr, "10.")})\n'
    )
    engine = engine_for(tmp_path, rego)
    assert ("connection", "client_addr") not in engine.volatile_fields
    doc = make_input(["ci"], SELECT_CARD)
    assert engine.decide(doc).allow is True
    doc["connection"]["client_addr"] = "192.0.2.1"
    assert engine.decide(doc).allow is False


def test_nondeterministic_policy_bypasses_the_cache(tmp_path: Path) -> None:
    rego = (
        "package pgwarden\nimport rego.v1\n\n"
        f"decision := object.union({json.dumps(VALID)}, "
        '{"allow": time.now_ns() > 0})\n'
    )
    engine = engine_for(tmp_path, rego)
    assert engine.deterministic is False
    assert [w.code for w in engine.nondeterministic] == ["nondeterministic"]
    doc = make_input(["ci"], SELECT_CARD)
    for _ in range(3):
        assert engine.decide(doc).allow is True
    info = engine.cache_info()
    assert (info.hits, info.misses, info.bypassed, info.size) == (0, 0, 3, 0)


def test_error_decisions_are_not_cached(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, decision_policy('{"allow": "yes"}'))
    engine.decide({"a": 1})
    engine.decide({"a": 1})
    assert engine.cache_info().size == 0


def test_lru_is_bounded() -> None:
    cache = DecisionCache(maxsize=2)
    d = Decision(allow=True)
    cache.put(("h", "e", "1"), d)
    cache.put(("h", "e", "2"), d)
    assert cache.get(("h", "e", "1")) is d  # 1 is now the most recent
    cache.put(("h", "e", "3"), d)
    assert cache.get(("h", "e", "2")) is None
    assert cache.get(("h", "e", "1")) is d and len(cache) == 2


def test_input_digest_is_canonical() -> None:
    a = {"b": 1, "a": {"y": [1, 2], "x": "é"}, "session": {"id": "1"}}
    b = {"session": {"id": "2"}, "a": {"x": "é", "y": [1, 2]}, "b": 1}
    assert input_digest(a) == input_digest(b)
    assert input_digest(a, ()) != input_digest(b, ())
    assert a["session"] == {"id": "1"}  # not mutated


# -- the starter PCI policy -------------------------------------------------------------

INSERT_TXN = statement(
    "INSERT INTO transactions (card_id, amount_cents) VALUES ($1, $2)",
    "INSERT",
    "write",
    [rel("transactions", ["insert"])],
    [col("transactions", "card_id", [], ["target"])],
)
COPY_CARDS = statement(
    "COPY (SELECT id, pan FROM cards) TO STDOUT",
    "COPY",
    "copy_out",
    [rel("cards", ["read"])],
    [col("cards", "id", [], ["output"]), col("cards", "pan", ["pan"], ["output"])],
)
PAN_MASK = {"public.cards.pan": "pan_last4"}

CASES = [
    # (id, groups, statement, granted, outcome, reasons (None: any), mask (None: any))
    ("ci reads cards, PAN masked", ["ci"], SELECT_CARD, False, "allow", [], PAN_MASK),
    ("ci-readers read too", ["ci-readers"], SELECT_CARD, False, "allow", [], PAN_MASK),
    (
        "PAN classified by the bundle only",
        ["ci"],
        statement("SELECT pan FROM cards", "SELECT", "read", [rel("cards", ["read"])],
                  [col("cards", "pan", [], ["output"])]),
        False, "allow", [], PAN_MASK,
    ),
    (
        "unknown group",
        ["marketing"], SELECT_CARD, False, "deny",
        ["reading needs one of the groups ci, ci-readers, ci-writers"], None,
    ),
    (
        "cvv",
        ["ci"],
        statement("SELECT cvv FROM cards", "SELECT", "read", [rel("cards", ["read"])],
                  [col("cards", "cvv", [], ["output"])]),
        False, "deny",
        ["card verification codes may never be read or written (public.cards.cvv)"], None,
    ),
    ("writer inserts a transaction", ["ci-writers"], INSERT_TXN, False, "allow", [], {}),
    (
        "reader cannot write", ["ci"], INSERT_TXN, False, "deny",
        ["writing needs one of the groups ci-writers"], None,
    ),
    (
        "update without where",
        ["ci-writers"],
        statement("UPDATE transactions SET status = 'void'", "UPDATE", "write",
                  [rel("transactions", ["update"])]),
        False, "deny", ["UPDATE without a WHERE clause would change every row"], None,
    ),
    (
        "write to cards",
        ["ci-writers"],
        statement("DELETE FROM cards WHERE id = 1", "DELETE", "write", [rel("cards", ["delete"])]),
        False, "deny", ["writes are only allowed to public.transactions, not public.cards"], None,
    ),
    (
        "ddl by ci", ["ci"],
        statement("ALTER TABLE cards ADD COLUMN x int", "ALTER TABLE", "ddl",
                  [rel("cards", ["ddl"])]),
        False, "deny", ["schema changes (DDL) are reserved for the dba group"], None,
    ),
    (
        "ddl by dba", ["dba"],
        statement("CREATE INDEX ON transactions (created_at)", "CREATE INDEX", "ddl",
                  [rel("transactions", ["ddl"])]),
        False, "allow", [], {},
    ),
    (
        "set role", ["dba"], statement("SET ROLE postgres", "SET", "session",
                                         details={"name": "role"}), False, "deny",
        ["changing the session role or authorization is not allowed"], None,
    ),
    (
        "set session authorization", ["ci"],
        statement("SET SESSION AUTHORIZATION postgres", "SET", "session",
                  details={"name": "session_authorization"}), False, "deny",
        ["changing the session role or authorization is not allowed"], None,
    ),
    (
        "set search_path", ["ci"], statement("SET search_path TO public", "SET", "session",
                                         details={"name": "search_path"}),
        False, "allow", [], {},
    ),
    ("begin", ["ci"], statement("BEGIN", "BEGIN", "transaction"), False, "allow", [], {}),
    (
        "copy out PAN is held", ["ci"], COPY_CARDS, False, "hold",
        ["exporting card numbers (public.cards.pan) needs approval from dba-oncall"], PAN_MASK,
    ),
    ("copy out PAN once approved", ["ci"], COPY_CARDS, True, "allow", [], PAN_MASK),
    (
        "sql from strings", ["ci"],
        statement("SELECT query_to_xml('select pan from cards', true, true, '')", "SELECT",
                  "read", sql_string_functions=True),
        False, "deny",
        ["cannot verify what this statement reads: it runs SQL built from strings"], None,
    ),
    (
        "unresolved", ["ci"],
        statement("SELECT x FROM v", "SELECT", "read", unresolved=["v.x"]), False, "deny",
        ["cannot verify what this statement reads: some columns or tables are unresolved"], None,
    ),
    (
        "kind other", ["dba"], statement("LOAD 'x'", "LOAD", "other"), False, "deny",
        ["the gateway could not classify this statement"], None,
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("groups", "stmt", "granted", "outcome", "reasons", "mask"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_starter_policy_decisions(
    pci: PolicyEngine,
    groups: list[str],
    stmt: dict[str, Any],
    granted: bool,
    outcome: str,
    reasons: list[str] | None,
    mask: dict[str, str] | None,
) -> None:
    d = pci.decide(make_input(groups, stmt, granted))
    assert d.error is None, d
    assert d.outcome == outcome, d
    if reasons is not None:
        assert list(d.reasons) == reasons
    if mask is not None:
        assert dict(d.mask) == mask
    if outcome == "hold":
        assert d.approvers == ("dba-oncall",) and d.grant_ttl == 900.0 and d.allow is False


def test_starter_policy_is_deterministic_and_clean(pci: PolicyEngine) -> None:
    assert pci.deterministic
    assert pci.entrypoint == "pgwarden/decision"
    assert [w for w in policy_gaps(pci.source) if w.severity == "warning"] == []


# -- policy test ------------------------------------------------------------------------


def test_runner_passes_the_starter_policy_tests(capsys: pytest.CaptureFixture[str]) -> None:
    results = run_tests([str(PCI)])
    assert len(results) >= 50
    assert {r.status for r in results} == {"pass"}
    assert all(r.file.endswith("_test.rego") and r.line > 0 for r in results)
    assert cmd_policy_test([str(PCI)], "pretty", None, probe=False) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"PASS: {len(results)}/{len(results)}"


def test_runner_filter(capsys: pytest.CaptureFixture[str]) -> None:
    results = run_tests([str(PCI)], run=r"test_set_role")
    assert [r.name for r in results] == [
        "test_set_role_is_denied",
        "test_set_role_is_denied_even_for_dba",
    ]
    assert cmd_policy_test([str(PCI)], "pretty", "no_such_test", probe=False) == 2
    assert "no test_ rules matching" in capsys.readouterr().err


FAILING_SUITE = {
    "policy.rego": "package demo\n\nimport rego.v1\n\nlimit := 3\n\nf(x) := x * 2\n",
    "demo_test.rego": (
        "package demo_test\n\nimport rego.v1\n\n"
        "test_passes if {\n\tdata.demo.limit == 3\n}\n\n"
        'test_fails if {\n\tprint("limit is", data.demo.limit)\n\tdata.demo.limit == 4\n}\n\n'
        'test_errors if {\n\tx := to_number("three")\n\tx == 3\n}\n\n'
        "todo_test_later if {\n\tfalse\n}\n"
    ),
}


def test_failing_suite_exits_1_and_junit_parses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, FAILING_SUITE)
    results = {r.name: r for r in run_tests([str(tmp_path)])}
    assert {n: r.status for n, r in results.items()} == {
        "test_passes": "pass",
        "test_fails": "fail",
        "test_errors": "error",
        "todo_test_later": "skip",
    }
    assert results["test_fails"].message == "evaluated to undefined"
    assert results["test_fails"].output == "limit is 3\n"
    assert results["test_fails"].line == 9

    assert cmd_policy_test([str(tmp_path)], "pretty", None, probe=False) == 1
    pretty = capsys.readouterr().out
    assert "FAIL: data.demo_test.test_fails" in pretty
    assert "ERROR: data.demo_test.test_errors" in pretty
    assert "PASS: 1/4" in pretty and "FAIL: 1/4" in pretty and "SKIPPED: 1/4" in pretty
    assert "  limit is 3" in pretty

    assert cmd_policy_test([str(tmp_path)], "junit", None, probe=False) == 1
    root = ET.fromstring(capsys.readouterr().out)  # noqa: S314 - our own output
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == (
        "4",
        "1",
        "1",
        "1",
    )
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert cases["test_fails"].find("failure") is not None
    assert cases["test_errors"].find("error") is not None
    assert cases["todo_test_later"].find("skipped") is not None
    assert cases["test_passes"].get("classname") == "data.demo_test"

    assert cmd_policy_test([str(tmp_path)], "json", None, probe=False) == 1
    items = {i["name"]: i for i in json.loads(capsys.readouterr().out)}
    assert items["test_fails"]["fail"] is True
    assert "error" in items["test_errors"] and items["todo_test_later"]["skip"] is True
    assert items["test_passes"]["location"]["row"] == 5
    assert isinstance(items["test_passes"]["duration"], int)


def test_policy_test_with_the_default_probe(tmp_path: Path) -> None:
    write(tmp_path, {k: v for k, v in FAILING_SUITE.items() if k == "policy.rego"})
    write(tmp_path, {"ok_test.rego": "package ok_test\n\nimport rego.v1\n\ntest_ok if true\n"})
    out = io.StringIO()
    assert cmd_policy_test([str(tmp_path)], out=out) == 0
    assert out.getvalue() == "PASS: 1/1\n"


@pytest.mark.parametrize(
    ("files", "args", "message"),
    [
        (None, {"fmt": "pretty"}, "no such file"),
        ({"bad.rego": "package x\n\nallow if {\n  input.x ==\n}\n"}, {}, "bad.rego:4:11"),
        ({"p.rego": "package x\n\nv := 1\n"}, {}, "no test_ rules found"),
        ({"p.rego": "package x\n\nv := 1\n"}, {"fmt": "xml"}, "unknown format"),
        ({"p.rego": "package x\n\nv := 1\n"}, {"run": "(["}, "invalid --run pattern"),
    ],
)
def test_policy_test_usage_errors_exit_2(
    tmp_path: Path, files: dict[str, str] | None, args: dict[str, Any], message: str
) -> None:
    if files is None:
        path = tmp_path / "missing"
    else:
        path = write(tmp_path, files)
    err = io.StringIO()
    assert cmd_policy_test([str(path)], probe=False, out=io.StringIO(), err=err, **args) == 2
    assert message in err.getvalue()


def test_format_results_rejects_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        format_results([], "tap")


# -- policy eval ------------------------------------------------------------------------


def test_policy_eval_prints_the_validated_decision(tmp_path: Path) -> None:
    inp = tmp_path / "input.json"
    inp.write_text(json.dumps(make_input(["ci"], SELECT_CARD)))
    out, err = io.StringIO(), io.StringIO()
    assert cmd_policy_eval(str(PCI), str(inp), None, probe=False, out=out, err=err) == 0
    d = json.loads(out.getvalue())
    assert d["allow"] is True and d["mask"] == PAN_MASK and d["error"] is None
    assert d["bundle_revision"] == PolicySource.load(PCI).revision


def test_policy_eval_keeps_stdout_clean_of_policy_prints(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    rego = (
        "package pgwarden\n\nimport rego.v1\n\n"
        'noise if print("from the policy")\n\n'
        f"decision := {json.dumps(VALID)} if noise\n"
    )
    policy = write(tmp_path / "p", {"p.rego": rego})
    inp = write(tmp_path, {"in.json": "{}"}) / "in.json"
    assert cmd_policy_eval(str(policy), str(inp), probe=False) == 0
    captured = capfd.readouterr()
    assert json.loads(captured.out)["allow"] is True
    assert "from the policy" in captured.err
    assert "print() writes" in captured.err  # the gap warning


def test_policy_eval_exit_codes(tmp_path: Path) -> None:
    good = write(tmp_path, {"in.json": json.dumps(make_input(["ci"], SELECT_CARD))}) / "in.json"
    cases = [
        (str(PCI), str(tmp_path / "missing.json"), None, 2, "cannot read"),
        (
            str(PCI),
            str(write(tmp_path, {"bad.json": '{"a": '}) / "bad.json"),
            None,
            2,
            "bad.json:1",
        ),
        (str(PCI), str(write(tmp_path, {"arr.json": "[]"}) / "arr.json"), None, 2, "JSON object"),
        (str(tmp_path / "nope"), str(good), None, 2, "no such file"),
        (str(PCI), str(good), "data.pgwarden.nothing", 2, "is not defined"),
    ]
    for bundle, input_path, entrypoint, code, message in cases:
        err = io.StringIO()
        assert (
            cmd_policy_eval(bundle, input_path, entrypoint, probe=False, out=io.StringIO(), err=err)
            == code
        ), message
        assert message in err.getvalue()

    broken = write(tmp_path / "broken", {"p.rego": decision_policy(json.dumps(_with(allow="yes")))})
    out = io.StringIO()
    assert cmd_policy_eval(str(broken), str(good), probe=False, out=out, err=io.StringIO()) == 1
    assert json.loads(out.getvalue())["error"] == "decision.allow is not a boolean (got string)"


# -- policy_gaps ------------------------------------------------------------------------

GAPPY = """package pgwarden

import rego.v1

internal if {
\tnet.cidr_contains("10.0.0.0/8", input.connection.client_addr)
}

select if regex.match(`(?i)^select`, input.statement.sql)

deny[msg] {
\tmsg := sprintf("bad %q", [input.x])
}

masked := {k: v | some k, v in masking}

decision := {"allow": internal, "at": time.now_ns()}
"""


def test_policy_gaps_find_missing_builtins_and_regex_flags_with_lines() -> None:
    found = {(w.code, w.line) for w in policy_gaps({"gappy.rego": GAPPY})}
    assert ("unsupported-builtin", 6) in found
    assert ("regex-flags", 9) in found
    assert ("v0-syntax", 11) in found
    assert ("sprintf-verb", 12) in found
    assert ("unsafe-var", 15) in found
    assert ("nondeterministic", 17) in found
    net = next(w for w in policy_gaps({"gappy.rego": GAPPY}) if w.code == "unsupported-builtin")
    assert str(net).startswith("gappy.rego:6:2: warning: unsupported-builtin: net.cidr_contains")
    assert net.to_dict()["col"] == 2


UNIFYING = """package p
import rego.v1
kind := input.k
label = "x" if { true }
allow if { kind = "read" }
swapped if { "read" = kind }
local if { k := input.k; k = "read" }
by_ref if { input.k = "read" }
compared if { kind == "read" }
"""


def test_unification_with_a_bound_name_is_flagged_because_regopy_makes_it_true() -> None:
    # What regopy does (and why the warning exists): OPA gives undefined for "write".
    policy = rt.compile_policy({"u.rego": UNIFYING}, {},
                               ["p/allow", "p/swapped", "p/local", "p/by_ref", "p/compared"])
    got = {ep: policy.evaluate(ep, {"k": "write"}) for ep in policy.entrypoints}
    assert got["p/allow"] is True and got["p/swapped"] is True and got["p/local"] is True
    assert got["p/by_ref"] is rt.UNDEFINED and got["p/compared"] is rt.UNDEFINED
    found = [(w.line, w.code, w.severity) for w in policy_gaps({"u.rego": UNIFYING})
             if w.code == "unification"]
    assert found == [(5, "unification", "warning"), (6, "unification", "warning"),
                     (7, "unification", "warning")]  # not the head, the ref or ==
