"""``pgwarden audit verify|show|export|explain|keygen`` and ``pgwarden policy replay``.

Wiring (gateway/cli.py)::

    from gateway.audit import commands as audit_commands
    audit_commands.register(sub)                  # sub: the top-level subparsers
    audit_commands.register_policy_replay(psub)   # psub: the `policy` subparsers
    ...
    if args.command == "audit":
        return audit_commands.run(args)
    if args.command == "policy" and args.action == "replay":
        return audit_commands.run_policy_replay(args)

Exit status (DESIGN §7): 0 success, 1 a failed check (verify found a bad record, explain
found a different decision, replay with --fail-on-change found changes), 2 a usage or
input error with a message that says what to fix.

Where records are read from: ``DIR`` (positional), else ``audit.dir`` of ``-c CONFIG``,
else ``./audit``; ``--pg DSN`` reads a PostgreSQL sink table instead (leave the password
out of the DSN: libpq reads ``PGPASSWORD`` / ``~/.pgpass``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

__all__ = ["register", "register_policy_replay", "run", "run_policy_replay"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _when(text: str) -> float:
    """RFC 3339 (``2025-01-15T09:30:00Z``) or an age (``90s``, ``15m``, ``2h``, ``7d``)."""
    from .canonical import parse_ts

    t = text.strip()
    if t and t[-1] in _UNITS and t[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(t[:-1]) * _UNITS[t[-1]]
    try:
        return parse_ts(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (RFC 3339 like 2025-01-15T09:30:00Z, or an age like 15m)"
        ) from None


def _source_args(p: argparse.ArgumentParser, *, positional: bool = True) -> None:
    if positional:
        p.add_argument("dir", nargs="?", default=None,
                       help="audit directory (default: audit.dir of -c, else ./audit)")
    p.add_argument("-c", "--config", default=None, help="take the audit directory from it")
    p.add_argument("--pg", metavar="DSN", default=None,
                   help="read the PostgreSQL sink table instead of a directory")
    p.add_argument("--table", default="pgwarden_audit", help="PostgreSQL sink table")
    p.add_argument("--instance", default=None, help="only this gateway instance's chain")


def _filter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--session", default=None, help="only this session id")
    p.add_argument("--since", type=_when, default=None, help="RFC 3339 time or age (15m)")
    p.add_argument("--until", type=_when, default=None, help="RFC 3339 time or age")
    p.add_argument("--type", action="append", default=[], dest="types",
                   help="record type or family (decision, approval, session.start; repeatable)")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``audit`` and its actions to the top-level subparsers."""
    a = subparsers.add_parser("audit", help="verify, read and export the audit trail")
    asub = a.add_subparsers(dest="audit_action", required=True)

    v = asub.add_parser("verify", help="check hashes, links, seqs, segments and signatures; "
                        "exit 1 naming the first bad record")
    _source_args(v)
    v.add_argument("--key", required=True, help="the audit signing public key (PEM)")
    v.add_argument("--live", action="store_true",
                   help="accept records after the last checkpoint (a running gateway)")
    v.add_argument("--pruned", action="store_true",
                   help="accept a log whose oldest segments were removed by retention")
    v.add_argument("--accept-crashes", action="store_true",
                   help="accept runs that ended without their final checkpoint (a crash): "
                   "their last records are signed by no checkpoint of their own")
    v.add_argument("--max-unsigned", type=int, default=10_000, metavar="N",
                   help="with --accept-crashes, the most records such a run may leave "
                   "unsigned (default 10000, the default checkpoint_every)")
    v.add_argument("--anchors", action="append", default=[], metavar="FILE",
                   help="gateway log lines (JSON) holding its audit.checkpoint events, kept "
                   "off the gateway's host: the log must hold each anchored record "
                   "(repeatable)")
    v.add_argument("--json", action="store_true", help="print the report as JSON")

    s = asub.add_parser("show", help="a readable timeline (e.g. of one session)")
    _source_args(s)
    _filter_args(s)
    s.add_argument("--json", action="store_true", help="print the matching records as stored")

    e = asub.add_parser("export", help="records for a SIEM: jsonl (as stored) or csv")
    _source_args(e)
    _filter_args(e)
    e.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    e.add_argument("-o", "--output", default="-", help="file (default: stdout)")

    x = asub.add_parser("explain", help="re-evaluate one recorded decision with its bundle")
    x.add_argument("seq", type=int, help="the decision record's seq")
    _source_args(x)
    x.add_argument("--bundle", default=None, help="evaluate with this bundle (file/dir)")
    x.add_argument("--bundles", default=None,
                   help="archived bundles directory: <sha256>.tar.gz, found by the record's hash")

    k = asub.add_parser("keygen", help="write an Ed25519 key pair for audit.signing_key")
    k.add_argument("private", help="private key file to write (PEM, mode 0600)")
    k.add_argument("public", help="public key file to write (PEM), for audit verify --key")
    return a


def register_policy_replay(policy_subparsers: Any) -> argparse.ArgumentParser:
    """Add ``replay`` to the ``policy`` subparsers."""
    r = policy_subparsers.add_parser(
        "replay", help="re-decide recorded decisions with a new bundle; list what would change")
    r.add_argument("--audit", required=False, default=None, dest="dir",
                   help="audit directory (default: audit.dir of -c, else ./audit)")
    _source_args(r, positional=False)
    _filter_args(r)
    r.add_argument("--bundle", "-b", required=True, help="the new bundle (file or directory)")
    r.add_argument("--entrypoint", default=None)
    r.add_argument("--json", action="store_true", help="one JSON object per changed decision")
    r.add_argument("--fail-on-change", action="store_true",
                   help="exit 1 if anything changes, or a decision cannot be replayed")
    return r


# -- running -------------------------------------------------------------------------------


class _Usage(Exception):
    pass


def _directory(args: argparse.Namespace) -> str:
    if args.dir:
        return str(args.dir)
    if args.config:
        from gateway.config.loader import load_audit_config

        try:
            audit = load_audit_config(args.config)
        except Exception as exc:
            raise _Usage(f"cannot read {args.config}: {exc}") from None
        if audit is None:
            raise _Usage(f"{args.config} has no audit section; give the directory")
        return str(audit.dir)
    return "audit"


def _check_dir(path: str) -> None:
    if not Path(path).is_dir():
        raise _Usage(f"{path}: no such audit directory")


def _filter(args: argparse.Namespace, **extra: Any) -> Any:
    from .reader import RecordFilter

    return RecordFilter(session=getattr(args, "session", None),
                        since=getattr(args, "since", None), until=getattr(args, "until", None),
                        types=tuple(getattr(args, "types", ()) or ()),
                        instance=args.instance, **extra)


def _records(args: argparse.Namespace, *, filtered: bool = True, **extra: Any) -> Any:
    from .reader import RecordFilter, read_records

    where = _filter(args, **extra) if filtered else RecordFilter(instance=args.instance)
    if args.pg:
        return read_records(dsn=args.pg, table=args.table, where=where)
    directory = _directory(args)
    _check_dir(directory)
    return read_records(directory=directory, where=where)


def _shown(value: object) -> str:
    """An error or a problem for the terminal: it may quote a record's (a client's) text,
    and a log may be crafted."""
    from .display import visible

    return visible(str(value))


def _input_errors() -> tuple[type[BaseException], ...]:
    """What a command reports as a usage/input error (exit 2) rather than a traceback."""
    import psycopg

    from gateway.policy.errors import PolicyError

    from .checkpoint import AuditKeyError
    from .replay import ReplayError

    return (_Usage, AuditKeyError, ReplayError, PolicyError, OSError, ValueError,
            psycopg.Error)


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    action = args.audit_action
    try:
        if action == "verify":
            return _verify(args, out)
        if action == "show":
            return _show(args, out)
        if action == "export":
            return _export(args, out)
        if action == "explain":
            return _explain(args, out)
        if action == "keygen":
            return _keygen(args, out)
    except _input_errors() as exc:
        print(f"audit {action}: {_shown(exc)}", file=err)
        return 2
    print(f"audit: unknown action {action!r}", file=err)
    return 2


def _verify(args: argparse.Namespace, out: TextIO) -> int:
    from .checkpoint import load_public_key
    from .verify import load_anchors, verify_dir, verify_pg

    key = load_public_key(args.key)
    instances = [args.instance] if args.instance else None
    anchors = load_anchors(args.anchors) if args.anchors else []
    if args.pg:
        report = verify_pg(args.pg, key, table=args.table, live=args.live, pruned=args.pruned,
                           instances=instances, anchors=anchors,
                           accept_crashes=args.accept_crashes, max_unsigned=args.max_unsigned)
        where = f"table {args.table}"  # never echo the DSN: it may hold a password
    else:
        directory = _directory(args)
        _check_dir(directory)
        report = verify_dir(directory, key, live=args.live, pruned=args.pruned,
                            instances=instances, anchors=anchors,
                            accept_crashes=args.accept_crashes, max_unsigned=args.max_unsigned)
        where = directory
    if args.json:
        p = report.problem
        json.dump({
            "ok": report.ok,
            "problem": None if p is None else {"instance": p.instance, "location": p.location,
                                               "line": p.line, "seq": p.seq,
                                               "message": p.message},
            "instances": [vars(s) for s in report.instances],
            "notes": report.notes,
        }, out, indent=2)
        out.write("\n")
        return 0 if report.ok else 1
    if report.problem is not None:
        out.write(f"audit verify: FAILED: {_shown(report.problem)}\n")
        return 1
    out.write(f"audit verify: OK ({where})\n")
    for s in report.instances:
        seal = ("sealed by the final checkpoint" if s.sealed
                else f"{s.unsealed} record(s) after the last checkpoint")
        held = f"; {s.anchors_matched} anchor(s) held" if anchors else ""
        out.write(f"  {_shown(s.instance)}: {s.records} records (seq {s.first_seq}.."
                  f"{s.last_seq}), {s.segments} segment(s), {s.checkpoints} checkpoint(s) "
                  f"signed by {s.key_id}; {seal}{held}\n")
    for note in report.notes:
        out.write(f"  note: {_shown(note)}\n")
    return 0


def _show(args: argparse.Namespace, out: TextIO) -> int:
    from .show import render_timeline

    if args.json:
        for loc in _records(args):
            out.write(loc.raw.decode("utf-8") + "\n")
        return 0
    # A later execution's decision may be older than --since, or of a type --type leaves
    # out: the session's decisions are read too, to give their SQL, but not shown.
    render_timeline(_records(args, context=("decision",)), out, session=args.session,
                    shown=_filter(args).predicate())
    return 0


def _export(args: argparse.Namespace, out: TextIO) -> int:
    from .export import export_csv, export_jsonl

    records = _records(args)
    if args.output == "-":
        if args.format == "csv":
            export_csv(records, out)
        else:
            buf = getattr(out, "buffer", None)
            if buf is not None:
                out.flush()
                export_jsonl(records, buf)
                buf.flush()
            else:
                for loc in records:
                    out.write(loc.raw.decode("utf-8") + "\n")
        return 0
    if args.format == "csv":
        with open(args.output, "w", encoding="utf-8", newline="") as f:
            export_csv(records, f)
    else:
        with open(args.output, "wb") as fb:
            export_jsonl(records, fb)
    return 0


def _explain(args: argparse.Namespace, out: TextIO) -> int:
    from .replay import ReplayError, explain_record

    if not args.bundle and not args.bundles:
        raise _Usage("give --bundle PATH, or --bundles DIR to find the recorded bundle by hash")
    found = list(_records(args, seq=args.seq))
    if not found:
        raise _Usage(f"no record with seq {args.seq}")
    if len(found) > 1:
        names = ", ".join(sorted(loc.instance for loc in found))
        raise _Usage(f"seq {args.seq} exists in several instances ({names}): use --instance")
    target = found[0]
    session_input = None
    if target.record.get("session") and "session_input" not in target.record:
        # the session's facts as they were at the decision: its session.start's, or the
        # last session.update's before it
        args.instance, seq = target.instance, target.record.get("seq")
        for loc in _records(args, filtered=False):
            rec = loc.record
            if isinstance(rec.get("seq"), int) and rec["seq"] >= seq:
                break
            if rec.get("type") in ("session.start", "session.update") \
                    and rec.get("session") == target.record.get("session"):
                session_input = rec.get("input")
    try:
        explanation = explain_record(target, session_input=session_input, bundle=args.bundle,
                                     bundles_dir=args.bundles)
    except ReplayError as exc:
        raise _Usage(str(exc)) from None
    explanation.render(out)
    return 0 if explanation.same else 1


def _keygen(args: argparse.Namespace, out: TextIO) -> int:
    from .checkpoint import generate_keypair

    for path in (args.private, args.public):
        if Path(path).exists():
            raise _Usage(f"{path} exists; not overwriting a key")
    kid = generate_keypair(args.private, args.public)
    out.write(f"wrote {args.private} (private, for audit.signing_key) and {args.public} "
              f"(public, for audit verify --key); key id {kid}\n")
    return 0


#: how many of the changed decisions `policy replay` names by their executions
_MOST_EXECUTED = 10


def run_policy_replay(args: argparse.Namespace, out: TextIO | None = None,
                      err: TextIO | None = None) -> int:
    from .display import safe_json, visible
    from .replay import ReplayStats, load_engine, replay_records

    out = out or sys.stdout
    err = err or sys.stderr
    try:
        engine = load_engine(args.bundle, args.entrypoint)
    except Exception as exc:
        print(f"policy replay: cannot load {args.bundle}: {_shown(exc)}", file=err)
        return 2
    try:
        # Every record is read (decisions need their session.start); the filters apply
        # to the decisions replayed.
        keep = _filter(args).predicate()
        records = _records(args, filtered=False)
        stats = ReplayStats()
        for change in replay_records(records, engine, stats, keep, settled=args.json):
            if args.json:
                out.write(safe_json(change.to_json()) + "\n")
                continue
            for line in _change_lines(change):
                out.write(visible(line) + "\n")
    except _input_errors() as exc:
        print(f"policy replay: {_shown(exc)}", file=err)
        return 2
    summary = (f"{stats.replayed} decision(s) replayed with {engine.revision} "
               f"({engine.bundle_hash[:12]}): {stats.changed} would change")
    if stats.changed:
        summary += f" ({stats.executions} recorded execution(s) ran under them)"
    if stats.skipped:
        summary += f"; {stats.skipped} skipped (refused before the policy ran)"
    if stats.unknown:
        summary += (f"; {stats.unknown} NOT replayed (neither their session's "
                    "session.start nor a session.update before them is in the records "
                    "read: its part of the input is unknown)")
    print(summary, file=err if args.json else out)
    most = stats.most_executed(_MOST_EXECUTED)
    if most and not args.json:  # (in JSON, each change carries its executions)
        # One decision may stand for thousands of executions (a job's repeats): the
        # changes listed in the chain's order do not show which ones a rollout hits most.
        out.write("most executed of the decisions that would change:\n")
        for (instance, seq), n in most:
            out.write(visible(f"  {instance}#{seq}: {n} execution(s)") + "\n")
    # (an impact analysis that could not look at every decision fails closed)
    return 1 if args.fail_on_change and (stats.changed or stats.unknown) else 0


def _change_lines(change: Any) -> list[str]:
    """A replayed decision that would change, as text lines (still to be made visible)."""
    from .display import text_of
    from .reader import flatten

    rec = flatten(change.located.record)
    lines = [f"{text_of(rec.get('ts'))}  {change.located.instance}#{text_of(rec.get('seq'))}  "
             f"{text_of(rec.get('subject'))}  {change.before} -> {change.after}  "
             f"{text_of(rec.get('command'))}  {text_of(rec.get('sql'))}"]
    if change.decision.reasons:
        lines.append(f"    now: {'; '.join(change.decision.reasons)}")
    return lines
