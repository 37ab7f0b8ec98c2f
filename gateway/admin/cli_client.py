"""``pgwarden approvals ...``: the approver's side of the admin API (DESIGN §7).

    pgwarden approvals list    [--json] [--all | --status S]   --admin HOST:PORT --token FILE
    pgwarden approvals approve ID [--reason TEXT]               --admin HOST:PORT --token FILE
    pgwarden approvals deny    ID [--reason TEXT]               --admin HOST:PORT --token FILE
    pgwarden approvals grants  [--json] [--all]                 --admin HOST:PORT --token FILE
    pgwarden approvals revoke  GRANT_ID [--reason TEXT]         --admin HOST:PORT --token FILE

``--token FILE`` holds the approver's JWT (``-`` reads it from stdin); ``--tls-ca FILE``
(or ``--tls`` for the system roots) connects with TLS. ``--admin`` and ``--token``
default to ``$PGWARDEN_ADMIN`` and ``$PGWARDEN_TOKEN_FILE``.

Exit status: 0 done; 1 the server refused (not an approver, own request, no longer
pending, bad token, ...) with its message; 2 a usage or connection problem.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from gateway.audit.display import visible

__all__ = ["register", "run"]

_CONNECTION_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNIMPLEMENTED")


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("admin API")
    g.add_argument("--admin", default=os.environ.get("PGWARDEN_ADMIN"), metavar="HOST:PORT",
                   help="the gateway's admin gRPC address (default: $PGWARDEN_ADMIN)")
    g.add_argument("--token", default=os.environ.get("PGWARDEN_TOKEN_FILE"), metavar="FILE",
                   help="file holding your JWT, '-' for stdin (default: $PGWARDEN_TOKEN_FILE)")
    g.add_argument("--tls-ca", metavar="FILE", help="CA certificate(s) to verify the server "
                   "with (implies --tls)")
    g.add_argument("--tls", action="store_true", help="use TLS with the system CA roots")
    g.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="per call (default: 10)")


def register(sub: Any) -> argparse.ArgumentParser:
    """Add the ``approvals`` command group to ``sub`` (an argparse subparsers object)."""
    a = sub.add_parser("approvals", help="list, approve and deny held statements")
    asub = a.add_subparsers(dest="approvals_action", required=True)

    ls = asub.add_parser("list", help="approval requests you may decide (pending by default)")
    ls.add_argument("--json", action="store_true", help="a JSON array")
    which = ls.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="every status, not only pending")
    which.add_argument("--status", choices=["pending", "approved", "denied", "expired",
                                            "withdrawn"])
    _common(ls)

    for action, verb in (("approve", "approve"), ("deny", "deny")):
        p = asub.add_parser(action, help=f"{verb} a held statement")
        p.add_argument("id", help="the approval id (apr_...)")
        p.add_argument("--reason", "-m", help="your justification (required by default)")
        _common(p)

    gr = asub.add_parser("grants", help="open grant windows")
    gr.add_argument("--json", action="store_true")
    gr.add_argument("--all", action="store_true", help="expired and revoked ones too")
    _common(gr)

    rv = asub.add_parser("revoke", help="close a grant window now (admin groups only)")
    rv.add_argument("id", help="the grant id (grt_...)")
    rv.add_argument("--reason", "-m")
    _common(rv)

    a.set_defaults(handler=run)
    return a


class _Usage(Exception):
    pass


def _read_token(path: str | None, stdin: TextIO) -> str:
    if not path:
        raise _Usage("--token FILE is required (a file holding your JWT)")
    try:
        text = stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    except OSError as exc:
        raise _Usage(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    token = text.strip()
    if not token:
        raise _Usage(f"the token file {path} is empty")
    return token


def _channel(args: argparse.Namespace) -> Any:
    import grpc

    target = args.admin
    if not target:
        raise _Usage("--admin HOST:PORT is required (the gateway's admin.grpc address)")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise _Usage(f"--admin wants HOST:PORT, got {target!r}")
    if args.tls_ca or args.tls:
        root = None
        if args.tls_ca:
            try:
                with open(args.tls_ca, "rb") as fh:
                    root = fh.read()
            except OSError as exc:
                raise _Usage(f"cannot read --tls-ca {args.tls_ca}: "
                             f"{exc.strerror or exc}") from None
        return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=root))
    return grpc.insecure_channel(target)


def run(args: argparse.Namespace, *, stdout: TextIO | None = None,
        stderr: TextIO | None = None, stdin: TextIO | None = None) -> int:
    import grpc

    from . import admin_pb2 as pb
    from . import admin_pb2_grpc

    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        token = _read_token(args.token, stdin or sys.stdin)
        channel = _channel(args)
    except _Usage as exc:
        print(f"pgwarden approvals: {exc}", file=err)
        return 2
    metadata = (("authorization", f"Bearer {token}"),)
    action = args.approvals_action
    try:
        with channel:
            stub = admin_pb2_grpc.AdminStub(channel)
            kw = {"metadata": metadata, "timeout": args.timeout}
            if action == "list":
                status = "" if args.all else (args.status or "pending")
                resp = stub.ListApprovals(pb.ListApprovalsRequest(status=status), **kw)
                _print_approvals(resp.approvals, args.json, out)
            elif action in ("approve", "deny"):
                call = stub.Approve if action == "approve" else stub.Deny
                resp = call(pb.DecideRequest(id=args.id, reason=args.reason or ""), **kw)
                _print_decided(action, resp, out)
            elif action == "grants":
                resp = stub.ListGrants(pb.ListGrantsRequest(include_inactive=args.all), **kw)
                _print_grants(resp.grants, args.json, out)
            elif action == "revoke":
                resp = stub.RevokeGrant(pb.RevokeGrantRequest(id=args.id,
                                                              reason=args.reason or ""), **kw)
                print(f"revoked {resp.grant.id} (was open until {resp.grant.expires_at})",
                      file=out)
            else:  # pragma: no cover - argparse restricts the choices
                return 2
    except grpc.RpcError as exc:
        code = exc.code()
        name = code.name if code is not None else "UNKNOWN"
        detail = exc.details() or name
        if name in _CONNECTION_CODES:
            print(f"pgwarden approvals: cannot reach the admin API at {args.admin}: {detail}",
                  file=err)
            return 2
        print(f"pgwarden approvals: refused ({name.lower()}): {detail}", file=err)
        return 1
    return 0


def _approval_dict(a: Any) -> dict[str, Any]:
    return {
        "id": a.id, "status": a.status, "subject": a.subject, "issuer": a.issuer,
        "connection": a.connection, "session_id": a.session_id or None, "sql": a.sql,
        "fingerprint": a.fingerprint, "approvers": list(a.approvers),
        "min_approvals": a.min_approvals, "approvals": a.approvals,
        "grant_ttl": a.grant_ttl or None, "requested_at": a.requested_at,
        "expires_at": a.expires_at, "resolved_at": a.resolved_at or None,
        "resolved_by": a.resolved_by or None, "reason": a.reason or None,
        "grant_id": a.grant_id or None,
        "votes": [{"subject": v.subject, "issuer": v.issuer, "decision": v.decision,
                   "reason": v.reason or None, "at": v.at} for v in a.votes],
    }


def _grant_dict(g: Any) -> dict[str, Any]:
    return {
        "id": g.id, "request_id": g.request_id, "subject": g.subject, "issuer": g.issuer,
        "connection": g.connection, "fingerprint": g.fingerprint,
        "granted_by": list(g.granted_by), "created_at": g.created_at,
        "expires_at": g.expires_at, "revoked_at": g.revoked_at or None,
        "revoked_by": g.revoked_by or None, "uses": g.uses,
    }


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    # A request's SQL is the requester's text (a quoted identifier holds any character):
    # escape sequences would act on the approver's terminal, and line breaks, bidi
    # controls and invisible characters would show them another statement than the one
    # they approve.
    rows = [[visible(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(),
              file=out)


def _print_approvals(approvals: Sequence[Any], as_json: bool, out: TextIO) -> None:
    if as_json:
        json.dump([_approval_dict(a) for a in approvals], out, indent=2)
        out.write("\n")
        return
    if not approvals:
        print("no approval requests", file=out)
        return
    rows = [("ID", "STATUS", "REQUESTED", "SUBJECT", "CONNECTION", "APPROVERS", "VOTES",
             "EXPIRES", "SQL")]
    for a in approvals:
        rows.append((a.id, a.status, a.requested_at, a.subject, a.connection,
                     ",".join(a.approvers), f"{a.approvals}/{a.min_approvals}", a.expires_at,
                     _short(a.sql, 60)))
    _table(rows, out)


def _print_grants(grants: Sequence[Any], as_json: bool, out: TextIO) -> None:
    if as_json:
        json.dump([_grant_dict(g) for g in grants], out, indent=2)
        out.write("\n")
        return
    if not grants:
        print("no grants", file=out)
        return
    rows = [("ID", "SUBJECT", "CONNECTION", "FINGERPRINT", "GRANTED BY", "EXPIRES", "USES",
             "REVOKED")]
    for g in grants:
        rows.append((g.id, g.subject, g.connection, _short(g.fingerprint, 20),
                     ",".join(g.granted_by), g.expires_at, str(g.uses), g.revoked_at or "-"))
    _table(rows, out)


def _print_decided(action: str, resp: Any, out: TextIO) -> None:
    a = resp.approval
    if action == "deny":
        print(f"denied {a.id}", file=out)
        return
    if not resp.resolved:
        print(f"approved {a.id}: {a.approvals}/{a.min_approvals} approvals, waiting for more",
              file=out)
        return
    line = f"approved {a.id}"
    if resp.HasField("grant"):
        line += f"; grant {resp.grant.id} open until {resp.grant.expires_at}"
    print(line, file=out)
