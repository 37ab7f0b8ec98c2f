"""Configuration loading: real YAML files on disk, errors located by file, line and key."""

from __future__ import annotations

import ipaddress
import pickle
import textwrap
from pathlib import Path

import pytest

from gateway.config.loader import ConfigError, load_config
from gateway.config.model import MIB, GatewayConfig, Secret
from gateway.devtools.certs import write_self_signed

FULL = """\
listen:
  address: 127.0.0.1:6432
  tls: {cert: certs/gateway.pem, key: certs/gateway.key}
  allow_plaintext: false          # true only for loopback development
identity:
  providers:
    - issuer: https://ci.example.com
      audience: pgwarden
      jwks: {file: keys/ci-jwks.json}   # or {url: ...}
      groups_claim: groups
    - issuer: https://sso.example.com/realms/ops
      audience: [pgwarden, account]
      jwks: {url: "https://sso.example.com/realms/ops/protocol/openid-connect/certs"}
      groups_claim: realm_access.roles
      leeway: 500ms
      algorithms: [RS256, ES256]
      groups_prefix: "ops:"
      required_claims:
        azp: pgwarden-ci
        realm_access.roles: [deployer, "release manager"]
        email_verified: true
        tier: 2
connections:
  cardholder:                     # what clients put in dbname
    host: 127.0.0.1
    port: 5432
    database: payments
    user: pgwarden_svc
    password: {env: CARDHOLDER_PASSWORD}
    tls: prefer                   # disable | prefer | require | verify-full
  reporting:
    host: db.internal
    user: reporter
    password: {file: secrets/reporting.pw}
    tls: verify-full
    ca: {file: certs/db-ca.pem}
    connect_timeout: 3s
policy:
  bundle: bundles/pci.tar.gz      # a file, a directory, or an http(s) URL
  verification_key: {file: keys/bundle-signing.pub}
audit:
  dir: audit/
  signing_key: {file: keys/audit-signing.pem}
approvals:
  timeout: 5m
admin:
  grpc: 127.0.0.1:6433
  http: 127.0.0.1:6480            # health and metrics
networks:
  ci-runners: [10.20.0.0/16, "fd00::/8"]
log:
  level: debug
"""

# The smallest valid config; the mistake cases below each change one thing in it.
BASE = """\
listen:
  address: 127.0.0.1:6432
  allow_plaintext: true
identity:
  providers:
    - issuer: https://ci.example.com
      audience: pgwarden
      jwks: {file: keys/ci-jwks.json}
connections:
  cardholder:
    host: 127.0.0.1
    user: pgwarden_svc
    password: {env: CARDHOLDER_PASSWORD}
"""

ENV = {"CARDHOLDER_PASSWORD": "s3cret-from-env", "OTHER": "another-s3cret"}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A config directory holding the files the configs above refer to."""
    write_self_signed(tmp_path / "certs/gateway.pem", tmp_path / "certs/gateway.key")
    for name, text in {
        "keys/ci-jwks.json": '{"keys": []}\n',
        "keys/bundle-signing.pub": "PUB\n",
        "secrets/reporting.pw": "file-s3cret\n",
    }.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def write(directory: Path, text: str) -> Path:
    path = directory / "gateway.yaml"
    path.write_text(text)
    return path


def line_of(text: str, marker: str) -> int:
    """1-based line of the only line containing ``marker``."""
    hits = [n for n, line in enumerate(text.splitlines(), 1) if marker in line]
    assert len(hits) == 1, (marker, hits)
    return hits[0]


def load_error(path: Path, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV if env is None else env)
    return info.value


def test_full_config_loads(workdir: Path) -> None:
    path = write(workdir, FULL)
    config = load_config(path, env=ENV)

    assert isinstance(config, GatewayConfig)
    assert config.source == path
    listen = config.listen
    assert (listen.host, listen.port, listen.allow_plaintext) == ("127.0.0.1", 6432, False)
    assert listen.tls is not None
    assert listen.tls.cert == workdir / "certs/gateway.pem"
    assert listen.tls.key == workdir / "certs/gateway.key"
    assert (listen.workers, listen.max_connections, listen.max_message_size) == (1, 1000, 64 * MIB)

    ci, sso = config.identity.providers
    assert ci.issuer == "https://ci.example.com"
    assert ci.audiences == ("pgwarden",)
    assert ci.jwks_file == workdir / "keys/ci-jwks.json"
    assert ci.jwks_url is None
    assert (ci.groups_claim, ci.subject_claim, ci.leeway, ci.algorithms) == (
        "groups",
        "sub",
        30,
        None,
    )
    assert sso.audiences == ("pgwarden", "account")
    assert sso.jwks_file is None
    assert sso.jwks_url == "https://sso.example.com/realms/ops/protocol/openid-connect/certs"
    assert sso.groups_claim == "realm_access.roles"
    assert sso.leeway == 0.5
    assert sso.algorithms == ("RS256", "ES256")
    assert sso.groups_prefix == "ops:" and ci.groups_prefix == ""
    assert ci.required_claims == ()
    assert sso.required_claims == (("azp", ("pgwarden-ci",)),
                                   ("realm_access.roles", ("deployer", "release manager")),
                                   ("email_verified", (True,)), ("tier", (2,)))
    assert type(sso.required_claims[2][1][0]) is bool

    cardholder = config.connections["cardholder"]
    assert (cardholder.host, cardholder.port, cardholder.database) == (
        "127.0.0.1",
        5432,
        "payments",
    )
    assert cardholder.user == "pgwarden_svc"
    assert cardholder.password == Secret("s3cret-from-env")
    assert (cardholder.tls, cardholder.ca_file, cardholder.connect_timeout) == ("prefer", None, 10)
    reporting = config.connections["reporting"]
    assert (reporting.port, reporting.database) == (5432, "reporting")  # defaults
    assert reporting.password is not None
    assert reporting.password.reveal() == "file-s3cret"  # one trailing newline stripped
    assert (reporting.tls, reporting.ca_file) == ("verify-full", workdir / "certs/db-ca.pem")
    assert reporting.connect_timeout == 3

    assert config.policy is not None
    assert config.policy.bundle == str(workdir / "bundles/pci.tar.gz")
    assert config.policy.verification_key == workdir / "keys/bundle-signing.pub"
    assert config.policy.allow_unsigned is False
    assert config.policy.max_statement_size == 4 * MIB
    assert config.audit is not None
    assert config.audit.dir == workdir / "audit"
    assert config.audit.signing_key == workdir / "keys/audit-signing.pem"
    assert config.approvals.timeout == 300
    assert config.admin.grpc == ("127.0.0.1", 6433)
    assert config.admin.http == ("127.0.0.1", 6480)
    assert config.networks == {
        "ci-runners": (ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("fd00::/8"))
    }
    assert config.log.level == "debug"


def test_minimal_config_defaults(workdir: Path) -> None:
    config = load_config(write(workdir, BASE), env=ENV)
    assert config.policy is None
    assert config.audit is None
    assert config.approvals.timeout == 300
    assert (config.admin.grpc, config.admin.http) == (None, None)
    assert config.networks == {}
    assert config.log.level == "info"
    assert config.connections["cardholder"].database == "cardholder"


def test_relative_config_path_resolves_against_config_dir(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(workdir, BASE)
    monkeypatch.chdir(workdir.parent)
    config = load_config(Path(workdir.name) / "gateway.yaml", env=ENV)
    assert config.source == workdir / "gateway.yaml"
    assert config.identity.providers[0].jwks_file == workdir / "keys/ci-jwks.json"


def test_secrets_never_show_in_repr(workdir: Path) -> None:
    secret = Secret("hunter2")
    assert repr(secret) == str(secret) == f"{secret}" == "Secret('***')"
    assert secret.reveal() == "hunter2"
    config = load_config(write(workdir, FULL), env=ENV)
    text = repr(config)
    assert "s3cret-from-env" not in text
    assert "file-s3cret" not in text
    assert "Secret('***')" in text


def test_secret_file_keeps_inner_whitespace(workdir: Path) -> None:
    (workdir / "pw").write_text("two\nlines\n\n")
    path = write(workdir, BASE.replace("{env: CARDHOLDER_PASSWORD}", "{file: pw}"))
    password = load_config(path, env={}).connections["cardholder"].password
    assert password is not None
    assert password.reveal() == "two\nlines\n"


def test_plaintext_ipv6_loopback_and_https_bundle(workdir: Path) -> None:
    text = BASE.replace("127.0.0.1:6432", "'[::1]:6432'") + textwrap.dedent("""\
        policy:
          bundle: https://bundles.example.com/pci.tar.gz
          allow_unsigned: true
    """)
    config = load_config(write(workdir, text), env=ENV)
    assert (config.listen.host, config.listen.port) == ("::1", 6432)
    assert config.policy is not None
    assert config.policy.bundle == "https://bundles.example.com/pci.tar.gz"
    assert config.policy.verification_key is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h", 3600), ("2.5", 2.5), ("90", 90)],
)
def test_durations(workdir: Path, text: str, seconds: float) -> None:
    path = write(workdir, BASE + f"approvals:\n  timeout: {text}\n")
    assert load_config(path, env=ENV).approvals.timeout == seconds


def mutate(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new)


# (id, config text, dotted key, marker identifying the reported line, words in the message)
MISTAKES = [
    (
        "unknown-key-typo",
        mutate("  address:", "  adress:"),
        "listen.adress",
        "adress:",
        ["unknown key", "did you mean 'address'", "allow_plaintext"],
    ),
    (
        "unknown-top-level-key",
        BASE + "polcy:\n  bundle: x\n",
        "polcy",
        "polcy:",
        ["did you mean 'policy'"],
    ),
    (
        "wrong-type",
        mutate("  allow_plaintext: true\n", "  allow_plaintext: true\n  workers: many\n"),
        "listen.workers",
        "workers:",
        ["expected an integer", "'many'"],
    ),
    (
        "boolean-is-not-a-number",
        mutate("  allow_plaintext: true\n", "  allow_plaintext: true\n  workers: true\n"),
        "listen.workers",
        "workers:",
        ["expected an integer"],
    ),
    (
        "bad-port",
        mutate("    host: 127.0.0.1\n", "    host: 127.0.0.1\n    port: 70000\n"),
        "connections.cardholder.port",
        "port: 70000",
        ["1 to 65535"],
    ),
    (
        "bad-listen-address",
        mutate("127.0.0.1:6432", "::1:6432"),
        "listen.address",
        "address:",
        ["brackets"],
    ),
    (
        "missing-required-key",
        mutate("    host: 127.0.0.1\n", ""),
        "connections.cardholder.host",
        "cardholder:",
        ["missing required key 'host'"],
    ),
    (
        "missing-jwks-file",
        mutate("keys/ci-jwks.json", "keys/nope.json"),
        "identity.providers[0].jwks.file",
        "jwks:",
        ["file not found", "nope.json"],
    ),
    (
        "missing-secret-file",
        mutate("{env: CARDHOLDER_PASSWORD}", "{file: secrets/none.pw}"),
        "connections.cardholder.password.file",
        "password:",
        ["file not found"],
    ),
    (
        "bad-tls-mode",
        mutate("    user: pgwarden_svc\n", "    user: pgwarden_svc\n    tls: verify\n"),
        "connections.cardholder.tls",
        "tls: verify",
        ["verify-full", "'verify'"],
    ),
    (
        "ca-without-verify-full",
        mutate("    user: pgwarden_svc\n", "    user: pgwarden_svc\n    ca: {file: ca.pem}\n"),
        "connections.cardholder.ca",
        "ca:",
        ["verify-full"],
    ),
    (
        "bad-duration",
        mutate("      audience: pgwarden\n", "      audience: pgwarden\n      leeway: 5 minutes\n"),
        "identity.providers[0].leeway",
        "leeway:",
        ["expected a duration", "'5 minutes'"],
    ),
    (
        "hs256-algorithm",
        mutate(
            "      audience: pgwarden\n",
            "      audience: pgwarden\n      algorithms:\n        - RS256\n        - HS256\n",
        ),
        "identity.providers[0].algorithms[1]",
        "- HS256",
        ["HMAC", "not allowed"],
    ),
    (
        "none-algorithm",
        mutate(
            "      audience: pgwarden\n", "      audience: pgwarden\n      algorithms: [none]\n"
        ),
        "identity.providers[0].algorithms[0]",
        "algorithms:",
        ["unsigned", "never allowed"],
    ),
    (
        "missing-identity",
        BASE.split("identity:")[0] + "connections:" + BASE.split("connections:")[1],
        "identity",
        "listen:",
        ["missing required key 'identity'"],
    ),
    (
        "duplicate-issuer",
        mutate(
            "connections:",
            "    - audience: other\n"
            '      issuer: "https://ci.example.com"\n'
            "      jwks: {url: https://ci.example.com/jwks}\n"
            "connections:",
        ),
        "identity.providers[1].issuer",
        '"https://ci.example.com"',
        ["configured twice"],
    ),
    (
        "required-claim-float",
        mutate("      audience: pgwarden\n",
               "      audience: pgwarden\n      required_claims:\n        tier: 1.5\n"),
        "identity.providers[0].required_claims.tier",
        "tier: 1.5",
        ["string, integer or boolean", "1.5"],
    ),
    (
        "required-claim-mapping",
        mutate("      audience: pgwarden\n",
               "      audience: pgwarden\n      required_claims:\n        org: {a: 1}\n"),
        "identity.providers[0].required_claims.org",
        "org: {a: 1}",
        ["string, integer or boolean", "a mapping"],
    ),
    (
        "required-claim-null-in-list",
        mutate("      audience: pgwarden\n",
               "      audience: pgwarden\n      required_claims:\n        org: [acme, null]\n"),
        "identity.providers[0].required_claims.org[1]",
        "org: [acme, null]",
        ["string, integer or boolean"],
    ),
    (
        "required-claim-empty-list",
        mutate("      audience: pgwarden\n",
               "      audience: pgwarden\n      required_claims:\n        org: []\n"),
        "identity.providers[0].required_claims.org",
        "org: []",
        ["non-empty list"],
    ),
    (
        "required-claim-bad-path",
        mutate("      audience: pgwarden\n",
               "      audience: pgwarden\n      required_claims:\n        a..b: x\n"),
        "identity.providers[0].required_claims.a..b",
        "a..b: x",
        ["dotted path"],
    ),
    (
        "required-claims-not-a-mapping",
        mutate("      audience: pgwarden\n",
               "      audience: pgwarden\n      required_claims: [org]\n"),
        "identity.providers[0].required_claims",
        "required_claims: [org]",
        ["a mapping"],
    ),
    (
        "groups-prefix-control-character",
        mutate("      audience: pgwarden\n",
               '      audience: pgwarden\n      groups_prefix: "gh\\n"\n'),
        "identity.providers[0].groups_prefix",
        "groups_prefix:",
        ["printable"],
    ),
    (
        "too-many-workers",  # (a cancel key names its worker in one byte: 0..126)
        mutate("  allow_plaintext: true\n", "  allow_plaintext: true\n  workers: 128\n"),
        "listen.workers",
        "workers: 128",
        ["from 1 to 127"],
    ),
    (
        "plain-http-jwks",
        mutate("{file: keys/ci-jwks.json}", "{url: http://ci.example.com/jwks}"),
        "identity.providers[0].jwks.url",
        "jwks:",
        ["https"],
    ),
    (
        "yaml-syntax-error",
        mutate("    user: pgwarden_svc\n", "    user: pgwarden_svc\n     port: 1\n"),
        "",
        "     port: 1",
        ["YAML syntax error"],
    ),
    (
        "duplicate-key",
        mutate("    user: pgwarden_svc\n", "    user: pgwarden_svc\n    host: other\n"),
        "",
        "host: other",
        ["duplicate key 'host'"],
    ),
    (
        "plaintext-without-tls",
        mutate("  allow_plaintext: true\n", ""),
        "listen.tls",
        "listen:",
        ["no TLS configured"],
    ),
    (
        "plaintext-on-public-address",
        mutate("127.0.0.1:6432", "0.0.0.0:6432"),
        "listen.allow_plaintext",
        "allow_plaintext:",
        ["loopback", "allow_plaintext_non_loopback"],
    ),
    (
        "bad-cidr",
        BASE + "networks:\n  ci:\n    - 10.0.0.0/8\n    - 10.1.0.0/33\n",
        "networks.ci[1]",
        "10.1.0.0/33",
        ["invalid CIDR"],
    ),
    (
        "unsigned-bundle",
        BASE + "policy:\n  bundle: bundles/pci.tar.gz\n",
        "policy.verification_key",
        "policy:",
        ["allow_unsigned"],
    ),
    (
        "statement-size",
        BASE + "policy:\n  bundle: b.tar.gz\n  allow_unsigned: true\n  max_statement_size: 12\n",
        "policy.max_statement_size",
        "max_statement_size:",
        ["1024"],
    ),
    (
        "no-connections",
        BASE.split("connections:")[0] + "connections: {}\n",
        "connections",
        "connections:",
        ["at least one connection"],
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "marker", "words"),
    [case[1:] for case in MISTAKES],
    ids=[case[0] for case in MISTAKES],
)
def test_mistakes_are_located(
    workdir: Path, text: str, key: str, marker: str, words: list[str]
) -> None:
    path = write(workdir, text)
    err = load_error(path)
    assert (err.file, err.line, err.key) == (str(path), line_of(text, marker), key), str(err)
    for word in words:
        assert word in err.message, str(err)
    prefix = f"{path}:{err.line}: {key}: " if key else f"{path}:{err.line}: "
    assert str(err) == prefix + err.message


def test_inline_password_is_rejected_without_echoing_it(workdir: Path) -> None:
    text = mutate("{env: CARDHOLDER_PASSWORD}", "hunter2-inline")
    err = load_error(write(workdir, text))
    assert (err.line, err.key) == (line_of(text, "password:"), "connections.cardholder.password")
    assert "{env: NAME} or {file: PATH}" in err.message
    assert "hunter2" not in str(err)


def test_unset_env_var_names_it_without_values(workdir: Path) -> None:
    text = mutate("CARDHOLDER_PASSWORD", "MISSING_PW")
    env = {"CARDHOLDER_PASSWORD": "s3cret-from-env", "MISSING_PW_OLD": "old-s3cret"}
    err = load_error(write(workdir, text), env=env)
    assert (err.line, err.key) == (
        line_of(text, "password:"),
        "connections.cardholder.password.env",
    )
    assert "MISSING_PW" in err.message and "not set" in err.message
    for value in env.values():
        assert value not in str(err)


def test_empty_env_var_is_rejected(workdir: Path) -> None:
    err = load_error(write(workdir, BASE), env={"CARDHOLDER_PASSWORD": ""})
    assert err.key == "connections.cardholder.password"
    assert "empty" in err.message


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    err = load_error(path)
    assert (err.file, err.line, err.key) == (str(path), None, "")
    assert str(err) == f"{path}: config file not found"


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    err = load_error(write(tmp_path, "- just\n- a list\n"))
    assert err.line == 1
    assert "mapping" in err.message


def test_config_error_pickles() -> None:
    err = ConfigError("a.yaml", 3, "listen.port", "bad")
    copy = pickle.loads(pickle.dumps(err))  # noqa: S301 - round-tripping our own object
    assert (copy.file, copy.line, copy.key, copy.message) == ("a.yaml", 3, "listen.port", "bad")
    assert str(copy) == "a.yaml:3: listen.port: bad"


def test_env_defaults_to_process_environment(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CARDHOLDER_PASSWORD", "from-os-environ")
    password = load_config(write(workdir, BASE)).connections["cardholder"].password
    assert password is not None
    assert password.reveal() == "from-os-environ"


def test_the_compose_example_config_loads(tmp_path: Path) -> None:
    """examples/compose/gateway.yaml stays valid for the loader (paths moved under tmp)."""
    repo = Path(__file__).resolve().parents[1]
    text = (repo / "examples" / "compose" / "gateway.yaml").read_text()
    for prefix in ("/state", "/var/lib/pgwarden", "/run/secrets", "/usr/share/pgwarden"):
        text = text.replace(prefix, str(tmp_path / prefix.strip("/")))
    write_self_signed(tmp_path / "state/certs/gateway.pem", tmp_path / "state/certs/gateway.key")
    for rel in ("state/issuer/jwks.json", "run/secrets/cardholder_password",
                "usr/share/pgwarden/policies/pci/policy.rego"):
        f = tmp_path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("x")
    (tmp_path / "gateway.yaml").write_text(text)
    cfg = load_config(tmp_path / "gateway.yaml")
    assert cfg.audit is not None and cfg.audit.dir == tmp_path / "var/lib/pgwarden/audit"
    assert cfg.approvals.path == tmp_path / "var/lib/pgwarden/approvals.db"


def test_the_readme_example_config_loads(tmp_path: Path) -> None:
    """The config a reader copies from the README's "Running it" is one the gateway takes."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    text = readme.split("## Running it", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    write_self_signed(tmp_path / "certs/gateway.pem", tmp_path / "certs/gateway.key")
    for name in ("keys/bundle-signing.pub", "keys/audit-signing.pem"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x\n")
    config = load_config(write(tmp_path, text), env={
        "CARDHOLDER_PASSWORD": "pw", "PGWARDEN_HASH_KEY": "k" * 32,
        "PGWARDEN_APPROVALS_DSN": "host=db.internal dbname=approvals"})
    (github,) = config.identity.providers
    assert github.groups_prefix == "github:"
    assert dict(github.required_claims) == {"repository_owner": ("acme",),
                                            "ref": ("refs/heads/main",)}


@pytest.mark.parametrize("damage", ["not_pem", "key_of_another_certificate", "encrypted_key"])
@pytest.mark.parametrize("section", ["listen", "admin"])
def test_a_certificate_that_cannot_be_served_is_a_config_mistake(workdir: Path, damage: str,
                                                                 section: str) -> None:
    """Found by a probe of failure handling: these were a Python traceback at start (or,
    for the admin API, "Failed to bind to address"); an encrypted key would have OpenSSL
    ask for its passphrase on the terminal."""
    from cryptography.hazmat.primitives import serialization

    cert, key = workdir / "certs/gateway.pem", workdir / "certs/gateway.key"
    if damage == "not_pem":
        cert.write_text("this is not a certificate\n")
    elif damage == "key_of_another_certificate":
        write_self_signed(workdir / "other.pem", workdir / "other.key")
        key.write_bytes((workdir / "other.key").read_bytes())
    else:
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
        key.write_bytes(private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase")))
    text = FULL if section == "listen" else FULL.replace(
        "  http: 127.0.0.1:6480            # health and metrics\n",
        "  http: 127.0.0.1:6480\n  tls: {cert: certs/gateway.pem, key: certs/gateway.key}\n")
    if section == "admin":  # the listener's own pair, sound, elsewhere
        write_self_signed(workdir / "listen.pem", workdir / "listen.key")
        text = text.replace("tls: {cert: certs/gateway.pem, key: certs/gateway.key}\n  allow",
                            "tls: {cert: listen.pem, key: listen.key}\n  allow", 1)
    path = write(workdir, text)
    error = load_error(path)
    assert error.key.startswith(f"{section}.tls."), error
    if damage == "key_of_another_certificate":
        assert error.key == f"{section}.tls.key" and "does not belong" in error.message
    else:
        assert error.key == f"{section}.tls.cert" and "cannot load" in error.message
    if damage == "encrypted_key":
        assert "encrypted" in error.message
    assert error.line is not None and "tls:" in text.splitlines()[error.line - 1]


def test_max_statement_size_takes_a_size(workdir: Path) -> None:
    text = (BASE + "policy:\n  bundle: b.tar.gz\n  allow_unsigned: true\n"
            "  max_statement_size: 16MiB\n")
    config = load_config(write(workdir, text), env=ENV)
    assert config.policy is not None and config.policy.max_statement_size == 16 * MIB
