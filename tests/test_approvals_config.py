"""The approvals:/admin: config keys feed ApprovalService, the webhook and AdminServer.

Skipped until gateway/config carries the keys (approvals.store ..., admin.tls ...)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from gateway.admin.server import AdminServer
from gateway.approvals import ApprovalService, PostgresStore, SqliteStore, open_store
from gateway.config.loader import ConfigError, load_config
from gateway.config.model import AdminConfig, ApprovalsConfig, GatewayConfig
from gateway.devtools.certs import write_self_signed

pytestmark = pytest.mark.skipif(
    "store" not in {f.name for f in dataclasses.fields(ApprovalsConfig)}
    or "admin_groups" not in {f.name for f in dataclasses.fields(AdminConfig)},
    reason="gateway/config does not have the approvals/admin keys yet")

BASE = """\
listen: {address: "127.0.0.1:0", allow_plaintext: true}
identity:
  providers:
    - issuer: https://ci.example.com
      audience: pgwarden
      jwks: {file: jwks.json}
connections:
  payments: {host: 127.0.0.1, port: 5432, database: payments, user: svc}
"""


def load(tmp_path: Path, extra: str, env: dict[str, str] | None = None) -> GatewayConfig:
    (tmp_path / "jwks.json").write_text('{"keys": []}')
    (tmp_path / "gateway.yaml").write_text(BASE + extra)
    return load_config(tmp_path / "gateway.yaml", env=env or {})


def test_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, "")
    assert cfg.approvals.store == "sqlite" and cfg.approvals.path is None
    assert cfg.approvals.require_reason is True and cfg.approvals.webhook is None
    assert cfg.admin.tls is None and cfg.admin.admin_groups == ()
    store = open_store(cfg.approvals, base_dir=cfg.source.parent)
    assert isinstance(store, SqliteStore)
    assert store.path == tmp_path / "state" / "approvals.db"


def test_full_sections(tmp_path: Path) -> None:
    write_self_signed(tmp_path / "admin.pem", tmp_path / "admin.key")
    cfg = load(tmp_path, """\
approvals:
  timeout: 2m
  store: postgres
  dsn: {env: APPROVALS_DSN}
  table_prefix: gw_
  require_reason: false
  webhook: {url: "https://hooks.example.com/pgwarden", secret: {env: HOOK_KEY}, retries: 5}
admin:
  grpc: 127.0.0.1:6433
  http: 127.0.0.1:6480
  tls: {cert: admin.pem, key: admin.key}
  admin_groups: [pgwarden-admins, sre]
""", env={"APPROVALS_DSN": "host=db dbname=gw", "HOOK_KEY": "k" * 32})
    a = cfg.approvals
    assert (a.timeout, a.store, a.table_prefix, a.require_reason) == (120, "postgres", "gw_",
                                                                      False)
    assert a.dsn.reveal() == "host=db dbname=gw" and "host=db" not in repr(a)
    assert a.webhook.url == "https://hooks.example.com/pgwarden" and a.webhook.retries == 5
    store = open_store(a)
    assert isinstance(store, PostgresStore) and store.requests_table == "gw_approvals"
    assert cfg.admin.admin_groups == ("pgwarden-admins", "sre")
    assert cfg.admin.tls.cert == tmp_path / "admin.pem"

    async def build() -> None:
        svc = ApprovalService.from_config(a)
        assert svc.require_reason is False and svc.default_timeout == 120
        assert svc.webhook is not None and svc.webhook.retries == 5
        srv = AdminServer.from_config(cfg.admin, verifier=None, approvals=svc, backend=None)
        assert (srv.host, srv.port) == ("127.0.0.1", 6433)
        assert srv.servicer.admin_groups == ("pgwarden-admins", "sre")

    asyncio.run(build())


@pytest.mark.parametrize(("yaml", "key", "message"), [
    ("approvals: {store: redis}", "approvals.store", "expected one of sqlite, postgres"),
    ("approvals: {store: postgres}", "approvals.dsn", "needs dsn"),
    ("approvals: {dsn: {env: X}}", "approvals.dsn", "only used with store: postgres"),
    ("approvals: {store: postgres, dsn: {env: X}, path: a.db}", "approvals.path", "only used"),
    ("approvals: {dsn: 'host=x'}", "approvals.dsn", "inline secrets"),
    ("approvals: {table_prefix: 'a-b'}", "approvals.table_prefix", "lowercase"),
    ("approvals: {require_reason: maybe}", "approvals.require_reason", "true or false"),
    ("approvals: {webhook: {url: 'ftp://x'}}", "approvals.webhook.url", "http"),
    ("approvals: {webhook: {url: 'https://x', secret: inline}}", "approvals.webhook.secret",
     "inline secrets"),
    ("admin: {admin_groups: []}", "admin.admin_groups", "non-empty list"),
    ("admin: {tls: {cert: missing.pem, key: missing.key}}", "admin.tls.cert", "not found"),
    ("admin: {admin_group: [x]}", "admin.admin_group", "did you mean 'admin_groups'"),
])
def test_errors_name_the_key(tmp_path: Path, yaml: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, yaml + "\n", env={"X": "host=x"})
    assert info.value.key == key and message in info.value.message, str(info.value)
