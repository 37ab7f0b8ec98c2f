"""Upstream TLS modes, against a real TLS server: a second pgwarden acting as the upstream.

The embedded Postgres has no TLS support, so the upstream side of these tests is the
session's gateway (which speaks the Postgres protocol over TLS and asks for a cleartext
password — the JWT — which the first gateway may send only because TLS is on).
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from conftest import PgBackend

from gateway.devtools.certs import write_self_signed
from gateway.devtools.harness import GatewayProcess, UpstreamSpec


def _front(tmp_path: Path, upstream: UpstreamSpec) -> GatewayProcess:
    return GatewayProcess(tmp_path / "front", {"chained": upstream})


def _ask(front: GatewayProcess) -> str:
    with psycopg.connect(front.dsn("chained"), password=front.token()) as c:
        return str(c.execute("select current_user").fetchone()[0])


def test_verify_full_with_the_right_ca(gateway: GatewayProcess, tmp_path: Path) -> None:
    spec = UpstreamSpec("127.0.0.1", gateway.port, "payments", "ci-bot",
                        gateway.token(ttl=600), tls="verify-full", ca_file=gateway.cert_path)
    with _front(tmp_path, spec) as front:
        assert _ask(front) == "pgwarden_svc"
        assert not any(d.get("level") == "error" for d in front.logs)


def test_verify_full_refuses_an_unknown_certificate(gateway: GatewayProcess,
                                                     tmp_path: Path) -> None:
    other_ca = tmp_path / "other.pem"
    write_self_signed(other_ca, tmp_path / "other.key")
    spec = UpstreamSpec("127.0.0.1", gateway.port, "payments", "ci-bot",
                        gateway.token(ttl=600), tls="verify-full", ca_file=other_ca)
    with _front(tmp_path, spec) as front:
        with pytest.raises(psycopg.OperationalError, match=r"unreachable|could not log in"):
            _ask(front)


def test_require_encrypts_without_verifying(gateway: GatewayProcess, tmp_path: Path) -> None:
    spec = UpstreamSpec("127.0.0.1", gateway.port, "payments", "ci-bot",
                        gateway.token(ttl=600), tls="require")
    with _front(tmp_path, spec) as front:
        assert _ask(front) == "pgwarden_svc"


def test_require_refuses_an_upstream_without_tls(pg: PgBackend, tmp_path: Path) -> None:
    spec = UpstreamSpec(pg.server.host, pg.server.port, pg.dbname, pg.service.name,
                        pg.service.password, tls="require")
    with _front(tmp_path, spec) as front:
        with pytest.raises(psycopg.OperationalError, match="could not log in"):
            _ask(front)
        front.wait_for_log(lambda d: d.get("event") == "upstream.login_failed"
                           and "does not support TLS" in d.get("reason", ""))


def test_prefer_falls_back_to_plaintext(pg: PgBackend, tmp_path: Path) -> None:
    spec = UpstreamSpec(pg.server.host, pg.server.port, pg.dbname, pg.service.name,
                        pg.service.password, tls="prefer")
    with _front(tmp_path, spec) as front:
        assert _ask(front) == pg.service.name


def test_cleartext_upstream_password_needs_tls(gateway: GatewayProcess, tmp_path: Path) -> None:
    """The upstream gateway asks for a cleartext password; without TLS we must not send it."""
    spec = UpstreamSpec("127.0.0.1", gateway.port, "payments", "ci-bot",
                        gateway.token(ttl=600), tls="disable")
    with _front(tmp_path, spec) as front:
        with pytest.raises(psycopg.OperationalError, match="could not log in"):
            _ask(front)
        front.wait_for_log(lambda d: "cleartext password without TLS" in d.get("reason", ""))
