"""The `pgwarden` command line (DESIGN §7).

Exit status: 0 success, 1 a failed check, 2 a usage or input error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 15m, 1h)") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgwarden", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("-c", "--config", required=True, help="gateway.yaml")

    d = sub.add_parser("demo", help="zero-config demo: embedded Postgres, gateway, a CI job")
    d.add_argument("--serve", action="store_true", help="keep the gateway running afterwards")
    d.add_argument("--dir", default=None, help="where to keep the demo's files (default: temp)")

    pol = sub.add_parser("policy", help="test and evaluate Rego policies")
    psub = pol.add_subparsers(dest="action", required=True)
    pt = psub.add_parser("test", help="run test_ rules, like `opa test`; exit 1 on failure")
    pt.add_argument("paths", nargs="*", default=["policies"])
    pt.add_argument("--format", default="pretty", choices=["pretty", "json", "junit"])
    pt.add_argument("--run", "-r", default=None, help="only tests whose name matches REGEX")
    pe = psub.add_parser("eval", help="evaluate the decision for one input document")
    pe.add_argument("--bundle", "-b", required=True, help="policy directory (or bundle)")
    pe.add_argument("--input", "-i", required=True, help="input.json ('-' for stdin)")
    pe.add_argument("--entrypoint", default="pgwarden/decision")
    from gateway.bundle import commands as bundle_commands

    bundle_commands.register_policy_check(psub)
    bundle_commands.register(sub)
    from gateway.audit import commands as audit_commands

    audit_commands.register_policy_replay(psub)
    audit_commands.register(sub)
    from gateway.admin import cli_client as approvals_cli

    approvals_cli.register(sub)

    c = sub.add_parser("dev-cert", help="write a self-signed TLS certificate (development only)")
    c.add_argument("dir")
    c.add_argument("--name", action="append", default=[],
                   help="DNS name or IP for the certificate (repeatable; default localhost)")

    t = sub.add_parser("token", help="a development token issuer")
    tsub = t.add_subparsers(dest="action", required=True)
    ti = tsub.add_parser("init", help="create a dev issuer (key pair + JWKS) in DIR")
    ti.add_argument("dir")
    ti.add_argument("--issuer", default="https://pgwarden.dev/issuer")
    ti.add_argument("--alg", default="ES256", choices=["ES256", "RS256", "EdDSA"])
    tm = tsub.add_parser("mint", help="print a signed JWT from the dev issuer in --issuer-dir")
    tm.add_argument("--issuer-dir", required=True)
    tm.add_argument("--subject", "--sub", required=True)
    tm.add_argument("--audience", "--aud", default="pgwarden")
    tm.add_argument("--group", "-g", action="append", default=[], help="repeatable")
    tm.add_argument("--ttl", type=_duration, default=900.0, help="lifetime, e.g. 15m")
    tm.add_argument("--claim", action="append", default=[], metavar="KEY=VALUE",
                    help="extra string claim (repeatable)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "handler", None):
        return args.handler(args)
    if args.command == "serve":
        import signal

        # Until the gateway has its handlers, these wait rather than kill it (a config
        # manager's reload right after a start): the worker takes them once it can.
        signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
        from gateway.serve import run

        return run(args.config)
    if args.command == "demo":
        from gateway.demo.run import run_demo

        return run_demo(keep_serving=args.serve, directory=args.dir)
    if args.command == "token":
        return _token(args)
    if args.command == "audit":
        from gateway.audit import commands as audit_commands

        return audit_commands.run(args)
    if args.command == "policy" and args.action == "replay":
        from gateway.audit import commands as audit_commands

        return audit_commands.run_policy_replay(args)
    if args.command == "policy":
        from gateway.policy import commands

        if args.action == "test":
            return commands.cmd_policy_test(args.paths, args.format, args.run)
        return commands.cmd_policy_eval(args.bundle, args.input, args.entrypoint)
    if args.command == "dev-cert":
        from pathlib import Path

        from gateway.devtools.certs import write_self_signed

        out = Path(args.dir)
        names = tuple(args.name) or ("localhost", "127.0.0.1", "::1")
        write_self_signed(out / "gateway.pem", out / "gateway.key", names)
        print(f"wrote {out / 'gateway.pem'} and {out / 'gateway.key'} for {', '.join(names)}")
        return 0
    return 2


def _token(args: argparse.Namespace) -> int:
    from gateway.identity.devissuer import DevIssuer, generate_issuer

    if args.action == "init":
        issuer = generate_issuer(args.dir, issuer=args.issuer, alg=args.alg)
        print(f"issuer {issuer.issuer} (kid {issuer.kid}); JWKS at {issuer.jwks_path}")
        return 0
    try:
        issuer = DevIssuer.load(args.issuer_dir)
    except (OSError, ValueError, KeyError) as e:
        print(f"pgwarden: cannot load the dev issuer in {args.issuer_dir}: {e}", file=sys.stderr)
        return 2
    extra = {}
    for item in args.claim:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"pgwarden: --claim wants KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        extra[key] = value
    print(issuer.mint(args.subject, audience=args.audience, groups=args.group, ttl=args.ttl,
                      extra_claims=extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
