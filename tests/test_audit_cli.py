"""`pgwarden audit verify|show|export|explain|keygen` and `pgwarden policy replay`."""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import (
    AuditContext,
    AuditWriter,
    Signer,
    WriterOptions,
    commands,
    generate_keypair,
    records,
)
from gateway.audit.filesink import FileSink
from gateway.policy.engine import PolicyEngine
from gateway.policy.source import PolicySource

PCI = Path(__file__).resolve().parents[1] / "policies" / "pci"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgwarden")
    sub = p.add_subparsers(dest="command", required=True)
    commands.register(sub)
    pol = sub.add_parser("policy")
    psub = pol.add_subparsers(dest="action", required=True)
    commands.register_policy_replay(psub)
    return p


def cli(*argv: str) -> tuple[int, str, str]:
    args = parser().parse_args([str(a) for a in argv])
    out, err = io.StringIO(), io.StringIO()
    if args.command == "audit":
        code = commands.run(args, out, err)
    else:
        code = commands.run_policy_replay(args, out, err)
    return code, out.getvalue(), err.getvalue()


def tarball(src: Path, dest_dir: Path, edit: dict[str, Any] | None = None) -> Path:
    """A bundle tarball of `src` (data.json edited), stored as <sha256>.tar.gz."""
    work = dest_dir / "src"
    shutil.copytree(src, work, dirs_exist_ok=True)
    if edit is not None:
        data = json.loads((work / "data.json").read_text())
        data["pgwarden"].update(edit)
        (work / "data.json").write_text(json.dumps(data))
    tmp = dest_dir / "bundle.tar.gz"
    with tarfile.open(tmp, "w:gz") as tar:
        for f in sorted(work.iterdir()):
            tar.add(f, arcname=f.name)
    shutil.rmtree(work)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    final = dest_dir / f"{digest}.tar.gz"
    tmp.rename(final)
    return final


def stmt(sql: str, command: str, kind: str, table: str, cols: list[tuple[str, list[str]]],
         access: str = "read") -> dict[str, Any]:
    return {"sql": sql, "fingerprint": "f" * 16, "command": command, "kind": kind,
            "relations": [{"schema": "public", "name": table, "access": [access]}],
            "columns": [{"schema": "public", "table": table, "name": c, "tags": tags,
                         "usage": ["output"]} for c, tags in cols],
            "functions": [], "has_where": True, "limit": None, "index": 0, "count": 1,
            "protocol": "simple"}


STATEMENTS = [
    stmt("SELECT id, pan FROM cards WHERE id = 7", "SELECT", "read", "cards",
         [("id", []), ("pan", ["pan"])]),
    stmt("SELECT cvv FROM cards WHERE pan = '4111111111111111'", "SELECT", "read", "cards",
         [("cvv", ["cvv"])]),
    stmt("INSERT INTO transactions (amount_cents) VALUES (500)", "INSERT", "write",
         "transactions", [("amount_cents", [])], access="insert"),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("auditcli")
    generate_keypair(root / "audit.pem", root / "audit.pub")
    bundles = root / "bundles"
    bundles.mkdir()
    old = tarball(PCI, bundles)
    newdir = root / "new"
    newdir.mkdir()
    new = tarball(PCI, newdir, edit={"groups": {"readers": ["ci-readers"], "writers": [],
                                                "dba": ["dba"]}})
    write_log(root / "audit", root / "audit.pem", PolicyEngine(PolicySource.load(old)))
    return {"root": root, "audit": root / "audit", "pub": root / "audit.pub",
            "bundles": bundles, "old": old, "new": new}


FACTS = {
    "identity": {"subject": "repo:acme/payments", "issuer": "https://ci.example.com",
                 "groups": ["ci"], "claims": {"repository": "acme/payments"},
                 "method": "jwt"},
    "connection": {"name": "cardholder", "database": "payments", "user": "ci-bot",
                   "application_name": "=HYPERLINK(1)", "client_addr": "10.20.0.7",
                   "tls": True, "networks": []},
    "session": {"id": "5e55105e55105e55", "started_at": "2025-01-15T09:30:00.000000Z"},
}


def write_log(audit: Path, key: Path, engine: PolicyEngine,
              options: WriterOptions | None = None, filler: int = 0) -> None:
    """A session of the three STATEMENTS decided by `engine`; `filler` records without a
    session between its start and its first decision."""
    ctx = AuditContext.from_input(FACTS)
    w = AuditWriter(FileSink(audit, "gw1"), instance="gw1", signer=Signer.from_pem_file(key),
                    options=options)
    w.start()
    w.append(records.gateway_start(version="test", pid=1, bundle_revision=engine.revision,
                                   bundle_hash=engine.bundle_hash))
    w.append(records.session_start(ctx))
    for _ in range(filler):
        w.append(records.auth_failure(reason="expired", client_addr="10.9.9.9", db_user="bot"))
    for doc in STATEMENTS:
        inp = {**FACTS, "statement": doc, "approval": {"granted": False, "id": None}}
        d = engine.decide(inp)
        seq = w.append(records.decision_record(ctx, decision=d, input_doc=inp,
                                               entrypoint=engine.entrypoint, duration_us=40))
        outcome = records.decision_outcome(d)
        w.append(records.statement_record(
            ctx, decision_seq=seq, outcome=outcome, command=doc["command"],
            sqlstate=None if d.allow else "42501", rows=1 if d.allow else None,
            error=None if d.allow else "; ".join(d.reasons)))
    w.append(records.auth_failure(reason="expired", client_addr="10.9.9.9", db_user="bot"))
    w.append(records.session_end(ctx, reason="client", totals={"statements": 3}))
    w.append(records.gateway_stop(reason="test"))
    assert w.close()


def decision_seqs(audit: Path) -> list[int]:
    return [json.loads(x)["seq"] for f in sorted(audit.glob("*.jsonl"))
            for x in f.read_text().splitlines() if json.loads(x)["type"] == "decision"]


def test_verify_exit_status(setup: dict[str, Path], tmp_path: Path) -> None:
    code, out, _ = cli("audit", "verify", setup["audit"], "--key", setup["pub"])
    assert code == 0 and "audit verify: OK" in out and "sealed by the final checkpoint" in out
    code, out, _ = cli("audit", "verify", setup["audit"], "--key", setup["pub"], "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    broken = tmp_path / "audit"
    shutil.copytree(setup["audit"], broken)
    seg = next(broken.glob("*.jsonl"))
    lines = seg.read_text().splitlines(keepends=True)
    lines[3] = lines[3].replace('"duration_us":40', '"duration_us":41')
    seg.write_text("".join(lines))
    code, out, _ = cli("audit", "verify", broken, "--key", setup["pub"])
    assert code == 1
    assert f"FAILED: {seg.name} line 4 (instance gw1, seq 4)" in out
    code, _, err = cli("audit", "verify", broken, "--key", tmp_path / "missing.pub")
    assert code == 2 and "cannot read the key" in err
    code, _, err = cli("audit", "verify", tmp_path / "nowhere", "--key", setup["pub"])
    assert code == 2 and "no such audit directory" in err


def test_verify_shows_the_values_it_quotes_from_a_crafted_log_escaped(
        setup: dict[str, Path], tmp_path: Path) -> None:
    """A problem quotes the log (a segment header's number, a record's instance): a log
    anyone can write must not send escape sequences to the auditor's terminal."""
    from gateway.audit.canonical import canonical_bytes, chain_hash

    broken = tmp_path / "audit"
    shutil.copytree(setup["audit"], broken)
    seg = next(broken.glob("*.jsonl"))
    lines = seg.read_text().splitlines(keepends=True)
    rec = json.loads(lines[0])  # the segment header
    body = {k: v for k, v in rec.items() if k != "hash"}
    body["segment"] = "\x1b]52;c;cGF5bG9hZA==\x07\x1b[2J"
    raw = canonical_bytes(body)
    lines[0] = (raw[:-1] + b',"hash":"' + chain_hash(rec["prev"], raw).encode()
                + b'"}\n').decode()
    seg.write_text("".join(lines))
    code, out, _ = cli("audit", "verify", broken, "--key", setup["pub"])
    assert code == 1 and "the file holds segment" in out
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b]52" in out  # shown, as an escape


def test_show_renders_a_session_timeline(setup: dict[str, Path]) -> None:
    code, out, _ = cli("audit", "show", setup["audit"], "--session", "5e55105e55105e55")
    assert code == 0
    assert out.startswith("session 5e55105e55105e55: repo:acme/payments (https://ci.example.com)")
    assert "MASKED SELECT  SELECT id, pan FROM cards WHERE id = $1" in out
    assert "DENIED SELECT  SELECT cvv FROM cards WHERE pan = $1" in out
    assert "reasons: card verification codes may never be read" in out
    assert "4111111111111111" not in out
    assert "auth.failure" not in out  # not in this session
    code, out, _ = cli("audit", "show", setup["audit"], "--type", "decision", "--json")
    recs = [json.loads(x) for x in out.splitlines()]
    assert code == 0 and len(recs) == 3 and {r["type"] for r in recs} == {"decision"}
    code, out, _ = cli("audit", "show", setup["audit"], "--type", "auth")
    assert "expired from 10.9.9.9" in out
    code, out, _ = cli("audit", "show", setup["audit"], "--since", "2999-01-01T00:00:00Z")
    assert code == 0 and "no matching audit records" in out
    code, out, _ = cli("audit", "show", setup["audit"], "--since", "1h", "--type", "session")
    assert out.count("session.") == 2


def test_export_jsonl_is_the_stored_lines_and_csv_is_flat(setup: dict[str, Path],
                                                          tmp_path: Path) -> None:
    stored = b"".join(f.read_bytes() for f in sorted(setup["audit"].glob("*.jsonl")))
    code, _, _ = cli("audit", "export", setup["audit"], "--format", "jsonl", "-o",
                     tmp_path / "out.jsonl")
    assert code == 0 and (tmp_path / "out.jsonl").read_bytes() == stored
    code, out, _ = cli("audit", "export", setup["audit"], "--format", "csv", "--type",
                       "decision")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == 3
    first = rows[0]
    assert first["subject"] == "repo:acme/payments" and first["outcome"] == "masked"
    assert first["relations"] == '["public.cards"]' and first["kind"] == "read"
    assert first["application_name"] == "'=HYPERLINK(1)"  # no formula for a spreadsheet
    assert first["sql"] == "SELECT id, pan FROM cards WHERE id = $1"


def test_explain_re_evaluates_with_the_archived_bundle(setup: dict[str, Path]) -> None:
    first, second, _ = decision_seqs(setup["audit"])
    code, out, err = cli("audit", "explain", str(first), setup["audit"], "--bundles",
                         setup["bundles"])
    assert code == 0, err
    assert "recorded:  masked" in out and "now:       masked" in out
    assert "the same decision" in out
    code, out, _ = cli("audit", "explain", str(second), setup["audit"], "--bundle",
                       setup["new"])
    assert code == 0 and "denied" in out  # still denied (cvv), with another bundle
    assert "is not the recorded bundle" in out
    code, out, _ = cli("audit", "explain", str(first), setup["audit"], "--bundle",
                       setup["new"])
    assert code == 1 and "a DIFFERENT decision" in out
    code, _, err = cli("audit", "explain", "1", setup["audit"], "--bundles", setup["bundles"])
    assert code == 2 and "not a decision" in err
    code, _, err = cli("audit", "explain", str(first), setup["audit"], "--bundles",
                       setup["root"])
    assert code == 2 and "not archived" in err


def test_explain_names_what_a_damaged_decision_record_lacks(setup: dict[str, Path],
                                                            tmp_path: Path) -> None:
    first, _, _ = decision_seqs(setup["audit"])
    cut = tmp_path / "cut"
    cut.mkdir()
    for f in sorted(setup["audit"].iterdir()):
        recs = [json.loads(x) for x in f.read_text().splitlines()]
        for r in recs:
            if r["seq"] == first:
                del r["statement"]
        (cut / f.name).write_text("".join(json.dumps(r) + "\n" for r in recs))
    code, _, err = cli("audit", "explain", str(first), cut, "--bundles", setup["bundles"])
    assert code == 2 and "holds no statement document" in err, err
    assert "session.start" not in err


def test_policy_replay_lists_the_decisions_that_would_change(setup: dict[str, Path]) -> None:
    code, out, _ = cli("policy", "replay", "--audit", setup["audit"], "--bundle", setup["new"])
    assert code == 0
    changed = [x for x in out.splitlines() if " -> " in x]
    assert len(changed) == 1 and "masked -> denied" in changed[0]
    assert "3 decision(s) replayed" in out and "1 would change" in out
    assert "(1 recorded execution(s) ran under them)" in out
    code, out, err = cli("policy", "replay", "--audit", setup["audit"], "--bundle",
                         setup["new"], "--json", "--fail-on-change")
    assert code == 1
    (item,) = [json.loads(x) for x in out.splitlines()]
    assert item["before"] == "masked" and item["after"] == "denied"
    assert item["sql"] == "SELECT id, pan FROM cards WHERE id = $1"
    assert "1 would change" in err
    code, out, _ = cli("policy", "replay", "--audit", setup["audit"], "--bundle", setup["old"])
    assert code == 0 and "0 would change" in out


def with_repeats(audit: Path, to: Path) -> Path:
    """A copy of the log in which the first decision's statement ran three times and the
    others twice, as a session's repeats of a kept allow would (their statement records
    link to the one decision). Replay and show read it; it does not verify."""
    first, _, _ = decision_seqs(audit)
    to.mkdir()
    for f in sorted(audit.iterdir()):
        lines = []
        for line in f.read_text().splitlines():
            lines.append(line)
            rec = json.loads(line)
            if rec["type"] == "statement" and rec["decision_seq"] == first:
                lines += [line, line]
            elif rec["type"] == "statement":
                lines.append(line)
        (to / f.name).write_text("".join(x + "\n" for x in lines))
    return to


def test_show_gives_a_later_execution_the_sql_of_its_decision(
        setup: dict[str, Path], tmp_path: Path) -> None:
    repeated = with_repeats(setup["audit"], tmp_path / "repeated")
    first, second, third = decision_seqs(setup["audit"])
    code, out, _ = cli("audit", "show", repeated, "--session", "5e55105e55105e55")
    assert code == 0
    lines = out.splitlines()
    statements = [i for i, x in enumerate(lines) if "  statement  " in x]
    assert len(statements) == 7

    def note(i: int) -> str:  # the statement's own indented lines: an error, the note
        j = i + 1
        while j < len(lines) and lines[j].startswith("    "):
            if lines[j].startswith("    again"):
                return lines[j]
            j += 1
        return ""

    notes = [note(i) for i in statements]
    # the first execution follows its decision: no note; each later one names it
    assert [n.startswith("    again under decision") for n in notes] == [
        False, True, True, False, True, False, True]
    masked, denied = STATEMENTS[0]["sql"][:-1] + "$1", STATEMENTS[1]["sql"].split("'")[0] + "$1"
    assert notes[1] == notes[2] == f"    again under decision #{first}: " + masked
    assert notes[4] == f"    again under decision #{second}: " + denied
    assert notes[6].startswith(f"    again under decision #{third}: INSERT INTO")
    # Decisions a filter leaves out are read all the same, not shown: every execution
    # names its decision's SQL, the first one too (nothing above it says what it ran).
    code, out, _ = cli("audit", "show", repeated, "--type", "statement")
    assert code == 0 and "  decision  " not in out
    notes = [x for x in out.splitlines() if "under decision" in x]
    insert = notes[5].split(": ", 1)[1]
    assert insert.startswith("INSERT INTO")
    assert notes == [
        f"    under decision #{first}: " + masked,
        f"    again under decision #{first}: " + masked,
        f"    again under decision #{first}: " + masked,
        f"    under decision #{second}: " + denied,
        f"    again under decision #{second}: " + denied,
        f"    under decision #{third}: " + insert,
        f"    again under decision #{third}: " + insert]
    # --since after the decision (the most common reading: the last hour of a long
    # session): its executions since then are still told what they ran
    executions = [json.loads(x) for f in sorted(repeated.iterdir())
                  for x in f.read_text().splitlines()]
    since = next(r["ts"] for r in executions
                 if r["type"] == "statement" and r["decision_seq"] == first)
    code, out, _ = cli("audit", "show", repeated, "--session", "5e55105e55105e55",
                       "--since", since)
    assert code == 0 and "  decision  " not in out.split(f"#{second}")[0]
    assert out.count(f"under decision #{first}: " + masked) == 3


def test_policy_replay_counts_the_executions_a_changed_decision_stood_for(
        setup: dict[str, Path], tmp_path: Path) -> None:
    """A session's repeats of a kept allow have no decision record of their own: their
    statement records link to the one decision, which the summary counts them under."""
    repeated = with_repeats(setup["audit"], tmp_path / "repeated")
    code, out, _ = cli("policy", "replay", "--audit", repeated, "--bundle", setup["new"])
    assert code == 0 and "3 decision(s) replayed" in out and "1 would change" in out
    assert "(3 recorded execution(s) ran under them)" in out, out
    first, _, third = decision_seqs(setup["audit"])
    assert out.endswith("most executed of the decisions that would change:\n"
                        f"  gw1#{first}: 3 execution(s)\n"), out
    code, out, _ = cli("policy", "replay", "--audit", repeated, "--bundle", setup["old"])
    assert code == 0 and "0 would change" in out and "execution" not in out
    # Two would change (card numbers masked another way, ci may write): ranked by what
    # they stood for, so that the read, run three times, comes before the write, twice.
    (tmp_path / "b").mkdir()
    swapped = tarball(PCI, tmp_path / "b", edit={
        "masking": {"pan": "redact"},
        "groups": {"readers": ["ci"], "writers": ["ci"], "dba": ["dba"]}})
    code, out, _ = cli("policy", "replay", "--audit", repeated, "--bundle", swapped)
    assert code == 0 and "2 would change (5 recorded execution(s)" in out, out
    assert out.split("most executed of the decisions that would change:\n")[1] == (
        f"  gw1#{first}: 3 execution(s)\n  gw1#{third}: 2 execution(s)\n")
    # In JSON each change carries its count: printed once its session has ended, or
    # once the records have (a log whose session.end is missing: a gateway that died)
    code, out, err = cli("policy", "replay", "--audit", repeated, "--bundle", swapped,
                         "--json")
    assert code == 0 and "most executed" not in out + err
    changes = [json.loads(x) for x in out.splitlines()]
    assert [(c["seq"], c["executions"]) for c in changes] == [(first, 3), (third, 2)]
    assert any(json.loads(x)["type"] == "session.end"
               for f in repeated.iterdir() for x in f.read_text().splitlines())
    unended = tmp_path / "unended"
    unended.mkdir()
    for f in repeated.iterdir():
        (unended / f.name).write_text("".join(
            x + "\n" for x in f.read_text().splitlines()
            if json.loads(x)["type"] != "session.end"))
    code, out, _ = cli("policy", "replay", "--audit", unended, "--bundle", swapped, "--json")
    assert code == 0 and [json.loads(x) for x in out.splitlines()] == changes


def test_keygen(tmp_path: Path) -> None:
    code, out, _ = cli("audit", "keygen", tmp_path / "k.pem", tmp_path / "k.pub")
    assert code == 0 and "key id" in out
    assert (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600
    code, _, err = cli("audit", "keygen", tmp_path / "k.pem", tmp_path / "k2.pub")
    assert code == 2 and "not overwriting" in err
    # as the README has it, in a directory with no keys/ yet
    keys = tmp_path / "fresh" / "keys"
    code, out, err = cli("audit", "keygen", keys / "audit-signing.pem", keys / "audit-signing.pub")
    assert code == 0, err
    assert (keys / "audit-signing.pem").stat().st_mode & 0o777 == 0o600


def test_policy_replay_tags_the_columns_as_the_candidate_classifies_them(
        setup: dict[str, Path], tmp_path: Path) -> None:
    """Column tags are the bundle's classification, and a record keeps those of the
    bundle that decided it: a candidate that classifies a column anew (the usual way to
    start protecting it), or no longer, is replayed with its own tags, as it would decide
    live."""
    pci = json.loads((PCI / "data.json").read_text())["pgwarden"]["classification"]
    more = tarball(PCI, tmp_path, edit={"classification": {**pci, "public.cards.id": ["cvv"]}})
    code, out, err = cli("policy", "replay", "--audit", setup["audit"], "--bundle", more,
                         "--json")
    assert code == 0, err
    changed = [json.loads(x) for x in out.splitlines()]
    assert [(x["sql"], x["before"], x["after"]) for x in changed] == [
        ("SELECT id, pan FROM cards WHERE id = $1", "masked", "denied")], out
    (tmp_path / "less").mkdir()
    less = tarball(PCI, tmp_path / "less",
                   edit={"classification": {"public.cards.cvv": ["cvv"]}})
    code, out, err = cli("policy", "replay", "--audit", setup["audit"], "--bundle", less,
                         "--json")
    changed = [json.loads(x) for x in out.splitlines()]
    assert [(x["before"], x["after"]) for x in changed] == [("masked", "allowed")], out + err


def test_policy_replay_counts_what_it_could_not_replay(setup: dict[str, Path],
                                                       tmp_path: Path) -> None:
    """A log whose session.start is gone (pruned, a file missing): its decisions cannot
    be re-decided. They were counted as refused before the policy ran, and
    --fail-on-change passed an analysis that had looked at nothing."""
    cut = tmp_path / "cut"
    cut.mkdir()
    for f in sorted(setup["audit"].iterdir()):
        lines = [x for x in f.read_text().splitlines(keepends=True)
                 if json.loads(x)["type"] != "session.start"]
        (cut / f.name).write_text("".join(lines))
    code, out, err = cli("policy", "replay", "--audit", cut, "--bundle", setup["old"])
    assert code == 0, err
    assert "0 decision(s) replayed" in out and "3 NOT replayed" in out, out
    assert "skipped" not in out
    code, out, err = cli("policy", "replay", "--audit", cut, "--bundle", setup["old"],
                         "--fail-on-change")
    assert code == 1 and "3 NOT replayed" in out, out + err


def test_a_pruned_log_still_replays_the_sessions_its_segments_restate(
        setup: dict[str, Path], tmp_path: Path) -> None:
    """Retention removes old segments whole. A session that outlives its session.start's
    segment (a pooled connection runs for weeks) is restated at the start of each new
    segment, so that its later decisions can still be replayed and explained."""
    audit = tmp_path / "audit"
    engine = PolicyEngine(PolicySource.load(setup["old"]))
    write_log(audit, setup["root"] / "audit.pem", engine,
              WriterOptions(segment_bytes=4096, checkpoint_every=0, checkpoint_seconds=0),
              filler=20)  # ~300 bytes each: the decisions start in a later segment
    segments = sorted(audit.glob("audit-gw1-*.jsonl"))
    assert len(segments) >= 3
    first = [json.loads(x) for x in segments[0].read_text().splitlines()]
    start = next(r for r in first if r["type"] == "session.start")
    for later in segments[1:]:
        head, restated, *_ = [json.loads(x) for x in later.read_text().splitlines()]
        assert head["type"] == "segment" and restated["type"] == "session.update"
        assert restated["restated"] == "segment" and restated["changed"] == []
        for k in ("session", "who", "where", "input"):
            assert restated[k] == start[k], k
    segments[0].unlink()  # retention
    code, out, err = cli("audit", "verify", audit, "--key", setup["pub"], "--pruned")
    assert code == 0, out + err
    code, out, err = cli("policy", "replay", "--audit", audit, "--bundle", setup["new"])
    assert code == 0 and "3 decision(s) replayed" in out and "NOT replayed" not in out, out
    assert "1 would change" in out, out
    seq = next(json.loads(x)["seq"] for f in sorted(audit.glob("audit-gw1-*.jsonl"))
               for x in f.read_text().splitlines() if json.loads(x)["type"] == "decision")
    code, out, err = cli("audit", "explain", str(seq), audit, "--bundles", setup["bundles"])
    assert code == 0 and "same" in out.lower(), out + err
    code, out, err = cli("audit", "show", audit, "--session", "5e55105e55105e55")
    assert code == 0 and "restated at a new segment: repo:acme/payments" in out, out + err


def test_the_directory_comes_from_the_config(setup: dict[str, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "ci-jwks.json").write_text('{"keys": []}\n')
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(
        "listen:\n  address: 127.0.0.1:6432\n  allow_plaintext: true\n"
        "identity:\n  providers:\n    - issuer: https://ci.example.com\n"
        "      audience: pgwarden\n      jwks: {file: keys/ci-jwks.json}\n"
        "connections:\n  cardholder:\n    host: 127.0.0.1\n    user: svc\n"
        "    password: {env: CARDHOLDER_PASSWORD}\n"
        f"audit:\n  dir: {setup['audit']}\n")
    # An auditor's shell has none of the gateway's secrets (here the upstream password,
    # and a JWKS file only the gateway's host has): the audit section is all it reads.
    monkeypatch.delenv("CARDHOLDER_PASSWORD", raising=False)
    (tmp_path / "keys" / "ci-jwks.json").unlink()
    code, out, err = cli("audit", "show", "-c", cfg, "--type", "gateway")
    assert code == 0, err
    assert "gateway.start" in out and "gateway.stop" in out
    code, out, err = cli("audit", "verify", "-c", cfg, "--key", setup["audit"].parent / "audit.pub")
    assert code == 0 and "OK" in out, err
    code, _, err = cli("audit", "show", "-c", tmp_path / "missing.yaml")
    assert code == 2 and "cannot read" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"audit:\n  dir: {setup['audit']}\n  durability: never\n")
    code, _, err = cli("audit", "show", "-c", bad)
    assert code == 2 and "durability" in err, err
