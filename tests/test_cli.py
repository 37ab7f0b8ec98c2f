"""The `pgwarden` command line: demo, serve (config errors, drain on SIGTERM), token, dev-cert."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from conftest import PgBackend, upstreams_for

from gateway.devtools.harness import GatewayProcess
from gateway.identity.devissuer import DevIssuer

PGWARDEN = [sys.executable, "-m", "gateway"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PGWARDEN, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_demo_runs_the_ci_job_end_to_end() -> None:
    out = run("demo", timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "upstream role is 'pgwarden_svc'" in out.stdout
    assert "refused: " in out.stdout and "token expired" in out.stdout
    assert "ERROR 42501: SELECT denied by policy: card verification codes" in out.stdout
    assert "the policy let through" not in out.stdout
    assert "every step behaved as expected" in out.stdout


def test_serve_with_a_bad_config_names_file_line_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text("listen:\n  address: 127.0.0.1:6432\n  alow_plaintext: true\n")
    out = run("serve", "-c", str(cfg))
    assert out.returncode == 2
    assert f"{cfg}:3: listen.alow_plaintext:" in out.stderr
    assert "Traceback" not in out.stderr


def test_token_init_and_mint(tmp_path: Path) -> None:
    assert run("token", "init", str(tmp_path / "iss")).returncode == 0
    out = run("token", "mint", "--issuer-dir", str(tmp_path / "iss"), "--subject", "deploy-bot",
              "-g", "ci", "-g", "deploy", "--ttl", "5m", "--claim", "repo=payments-api")
    assert out.returncode == 0, out.stderr
    import jwt

    issuer = DevIssuer.load(tmp_path / "iss")
    claims = jwt.decode(out.stdout.strip(), issuer.private_key.public_key(),
                        algorithms=[issuer.alg], audience="pgwarden")
    assert claims["sub"] == "deploy-bot" and claims["groups"] == ["ci", "deploy"]
    assert claims["repo"] == "payments-api" and 290 <= claims["exp"] - claims["iat"] <= 300
    bad = run("token", "mint", "--issuer-dir", str(tmp_path / "nope"), "--subject", "x")
    assert bad.returncode == 2 and "cannot load the dev issuer" in bad.stderr


def test_dev_cert(tmp_path: Path) -> None:
    out = run("dev-cert", str(tmp_path), "--name", "gateway.internal")
    assert out.returncode == 0
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((tmp_path / "gateway.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gateway.internal"]
    assert (tmp_path / "gateway.key").stat().st_mode & 0o077 == 0


def test_sigterm_drains_open_sessions_then_exits_zero(pg: PgBackend, tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, upstreams_for(pg)).start()
    try:
        token = gw.token()
        conn = psycopg.connect(gw.dsn("payments"), password=token, autocommit=True)
        conn.execute("select 1")
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        # Draining: the open session keeps working, new connections are refused.
        assert conn.execute("select 2").fetchone() == (2,)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(gw.dsn("payments"), password=token, connect_timeout=3)
        assert gw.proc.poll() is None
        conn.close()
        assert gw.proc.wait(15) == 0
    finally:
        gw.stop()


POLICY = Path(__file__).resolve().parents[1] / "policies" / "pci"


def test_policy_test_and_eval_on_the_starter_policy(tmp_path: Path) -> None:
    out = run("policy", "test", str(POLICY))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PASS:" in out.stdout and "FAIL" not in out.stdout
    junit = run("policy", "test", str(POLICY), "--format", "junit")
    import xml.etree.ElementTree as ET

    suites = ET.fromstring(junit.stdout)  # noqa: S314 - our own output
    assert int(suites.get("tests") or suites[0].get("tests")) >= 50
    doc = {
        "identity": {"subject": "ci-bot", "issuer": "https://i", "groups": ["ci"],
                     "claims": {}, "method": "jwt"},
        "connection": {"name": "payments", "database": "payments", "user": "ci-bot",
                       "application_name": "", "client_addr": "127.0.0.1", "tls": True,
                       "networks": []},
        "session": {"id": "s", "started_at": "2026-01-01T00:00:00Z"},
        "statement": {"sql": "DROP TABLE cards", "fingerprint": "x", "command": "DROP TABLE",
                      "kind": "ddl", "relations": [{"schema": "public", "name": "cards",
                                                    "access": ["ddl"]}],
                      "columns": [], "functions": [], "has_where": False, "limit": None,
                      "index": 0, "count": 1, "protocol": "simple"},
        "approval": {"granted": False, "id": None},
    }
    (tmp_path / "input.json").write_text(json.dumps(doc))
    ev = run("policy", "eval", "--bundle", str(POLICY), "--input", str(tmp_path / "input.json"))
    assert ev.returncode == 0, ev.stderr
    decision = json.loads(ev.stdout)
    assert decision["allow"] is False
    assert decision["reasons"] == ["schema changes (DDL) are reserved for the dba group"]


def test_policy_test_fails_on_a_failing_rule(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text(
        "package t\n\nimport rego.v1\n\ntest_ok if true\n\ntest_broken if 1 == 2\n")
    out = run("policy", "test", str(tmp_path))
    assert out.returncode == 1
    assert "test_broken" in out.stdout
