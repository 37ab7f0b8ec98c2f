"""End-to-end authentication tests against a real gateway process.

Every refusal is checked twice: over a raw TLS socket (to read the ErrorResponse's
SQLSTATE, which libpq does not expose for connection failures) and with psycopg (the
client users actually run). After each refusal a good connection must still work, and
nothing the client presented as a password may show up in an error or in the log.
"""

from __future__ import annotations

import base64
import hmac
import json
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
from conftest import upstreams_for
from cryptography.hazmat.primitives import serialization
from rawclient import Message, RawClient, expect_fatal

from gateway.devtools.harness import GatewayProcess
from gateway.identity.devissuer import DevIssuer, generate_issuer
from gateway.identity.errors import MESSAGES

# Everything ever presented as a password in this module, checked against the log at the end.
USED_SECRETS: list[str] = []


def raw_login(gw: GatewayProcess, secret: str | bytes, dbname: str = "payments",
              tls: bool = True, extra: dict[str, str] | None = None) -> list[Message]:
    """Startup + cleartext password by hand; returns every message until close (or RFQ)."""
    with RawClient(gw, tls=tls) as c:
        c.startup({"user": "ci-bot", "database": dbname, **(extra or {})})
        first = c.read_until(b"R", b"E")
        if first and first[-1].type == b"E":
            return first + c.read_until_close()
        assert first and first[-1].type == b"R", first
        assert struct.unpack("!i", first[-1].body[:4])[0] == 3  # AuthenticationCleartextPassword
        c.password(secret)
        msgs = first + c.read_until(b"Z")
        if msgs[-1].type == b"Z":
            c.send(b"X\0\0\0\4")
            return msgs
        return msgs + c.read_until_close()


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hand_jwt(header: dict[str, Any], claims: dict[str, Any], sign: Any = None) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = b"" if sign is None else sign(signing_input.encode("ascii"))
    return f"{signing_input}.{b64url(signature)}"


def good_claims(issuer: DevIssuer, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": issuer.issuer, "sub": "ci-bot", "aud": "pgwarden", "iat": now,
              "nbf": now, "exp": now + 600, "jti": uuid.uuid4().hex, "groups": ["ci"]}
    claims.update(over)
    return claims


def assert_no_token_part(text: str, secret: str) -> None:
    """No piece of the presented secret (whole, any JWT segment, any 12-char window)."""
    if not secret:
        return
    assert secret not in text
    for segment in secret.split("."):
        if len(segment) >= 8:
            assert segment not in text
    for i in range(max(len(secret) - 12, 0) + 1):
        window = secret[i : i + 12]
        if len(window.strip()) >= 12:
            assert window not in text, f"error text echoes part of the token: {window!r}"


def assert_good_connection(gw: GatewayProcess, connection: str = "payments") -> None:
    tok = gw.token()
    with psycopg.connect(gw.dsn(connection), password=tok, autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def assert_refused(gw: GatewayProcess, secret: str, reason: str, sqlstate: str = "28P01",
                   connection: str = "payments", **psycopg_kwargs: Any) -> dict[str, str]:
    """Refused over raw TLS (with `sqlstate` and the fixed sentence for `reason`) and over
    psycopg; no piece of the token in either message; other sessions unaffected."""
    USED_SECRETS.append(secret)
    fields = expect_fatal(raw_login(gw, secret, dbname=connection))
    assert fields["C"] == sqlstate, fields
    assert fields["M"].endswith(MESSAGES[reason]), (reason, fields)
    assert_no_token_part(json.dumps(fields), secret)

    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(gw.dsn(connection), password=secret, **psycopg_kwargs).close()
    text = str(info.value)
    assert fields["M"] in text, text
    assert_no_token_part(text, secret)

    assert_good_connection(gw)
    return fields


@pytest.fixture
def other_issuer(tmp_path: Path) -> DevIssuer:
    return generate_issuer(tmp_path / "evil", issuer="https://evil.example.com/issuer")


@pytest.fixture
def impostor(gateway: GatewayProcess, tmp_path: Path) -> DevIssuer:
    """Same issuer name as the gateway's dev issuer, a key the gateway has never seen."""
    assert gateway.issuer is not None
    return generate_issuer(tmp_path / "impostor", issuer=gateway.issuer.issuer,
                           alg=gateway.issuer.alg)


# ---------------------------------------------------------------------------------------------
# Good tokens
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("connection", "role_attr"),
                         [("payments", "service"), ("legacy", "legacy"), ("trusty", "trust")])
def test_good_token_logs_in_upstream(gateway: GatewayProcess, pg: Any, connection: str,
                                     role_attr: str) -> None:
    """SCRAM, md5 and trust upstreams: the client only ever held a JWT."""
    tok = gateway.token()
    USED_SECRETS.append(tok)
    role = getattr(pg, role_attr)
    with psycopg.connect(gateway.dsn(connection), password=tok, autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
        user, db = conn.execute("select current_user, current_database()").fetchone()
        assert user == role.name
        assert db == pg.dbname
        assert conn.execute("select count(*) from cards").fetchone() == (5,)
    if role.password is not None:
        assert role.password not in tok


def test_good_token_raw_login_over_tls(gateway: GatewayProcess) -> None:
    tok = gateway.token()
    USED_SECRETS.append(tok)
    msgs = raw_login(gateway, tok)
    types = [m.type for m in msgs]
    assert types[0] == b"R" and msgs[-1].type == b"Z", types
    assert b"K" in types and b"E" not in types
    ok = [m for m in msgs if m.type == b"R"][-1]
    assert struct.unpack("!i", ok.body[:4])[0] == 0  # AuthenticationOk


# ---------------------------------------------------------------------------------------------
# Bad tokens: 28P01, no token in the message, others unaffected
# ---------------------------------------------------------------------------------------------


def test_expired_token(gateway: GatewayProcess) -> None:
    tok = gateway.token(now=time.time() - 7200, ttl=600)
    fields = assert_refused(gateway, tok, reason="expired")
    assert "expired" in fields["M"]


def test_not_yet_valid_token(gateway: GatewayProcess) -> None:
    tok = gateway.token(not_before=time.time() + 365 * 86400, ttl=2 * 365 * 86400)
    fields = assert_refused(gateway, tok, reason="not_yet_valid")
    assert "not yet valid" in fields["M"]


def test_wrong_audience(gateway: GatewayProcess) -> None:
    assert gateway.issuer is not None
    tok = gateway.issuer.mint("ci-bot", audience="some-other-service", groups=["ci"])
    fields = assert_refused(gateway, tok, reason="wrong_audience")
    assert "audience" in fields["M"]


def test_wrong_audience_list(gateway: GatewayProcess) -> None:
    assert gateway.issuer is not None
    tok = gateway.issuer.mint("ci-bot", audience=["a", "b"], groups=["ci"])
    assert_refused(gateway, tok, reason="wrong_audience")


def test_wrong_issuer(gateway: GatewayProcess, other_issuer: DevIssuer) -> None:
    tok = other_issuer.mint("ci-bot", groups=["ci"])
    fields = assert_refused(gateway, tok, reason="unknown_issuer")
    assert "issuer" in fields["M"]


def test_wrong_iss_claim_signed_by_trusted_key(gateway: GatewayProcess) -> None:
    """The trusted key signed it, but for another issuer name: not ours to accept."""
    tok = gateway.token(extra_claims={"iss": "https://evil.example.com/issuer"})
    assert_refused(gateway, tok, reason="unknown_issuer")


def test_unknown_kid(gateway: GatewayProcess, impostor: DevIssuer) -> None:
    assert gateway.issuer is not None and impostor.kid != gateway.issuer.kid
    tok = impostor.mint("ci-bot", groups=["ci"])
    fields = assert_refused(gateway, tok, reason="unknown_key")
    assert "key" in fields["M"]


def test_same_kid_other_key(gateway: GatewayProcess, impostor: DevIssuer) -> None:
    assert gateway.issuer is not None
    forger = DevIssuer(directory=impostor.directory, issuer=gateway.issuer.issuer,
                       kid=gateway.issuer.kid, alg=gateway.issuer.alg,
                       private_key=impostor.private_key)
    tok = forger.mint("ci-bot", groups=["ci"])
    fields = assert_refused(gateway, tok, reason="bad_signature")
    assert "signature" in fields["M"]


def test_tampered_payload(gateway: GatewayProcess) -> None:
    """A real token with its claims swapped: the signature no longer covers them."""
    assert gateway.issuer is not None
    header, _, sig = gateway.token().split(".")
    payload = b64url(json.dumps(good_claims(gateway.issuer, sub="root",
                                            groups=["admin"])).encode())
    assert_refused(gateway, f"{header}.{payload}.{sig}", reason="bad_signature")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none(gateway: GatewayProcess, alg: str) -> None:
    assert gateway.issuer is not None
    tok = hand_jwt({"alg": alg, "typ": "JWT", "kid": gateway.issuer.kid},
                   good_claims(gateway.issuer))
    assert tok.endswith(".")
    assert_refused(gateway, tok, reason="algorithm_not_allowed")


def test_alg_none_with_a_real_signature_appended(gateway: GatewayProcess) -> None:
    assert gateway.issuer is not None
    real_sig = gateway.token().split(".")[2]
    tok = hand_jwt({"alg": "none", "kid": gateway.issuer.kid}, good_claims(gateway.issuer))
    assert_refused(gateway, tok + real_sig, reason="algorithm_not_allowed")


def _hmac_signer(secret: bytes, digest: str = "sha256") -> Any:
    return lambda data: hmac.new(secret, data, digest).digest()


@pytest.mark.parametrize("alg", ["HS256", "HS512"])
@pytest.mark.parametrize("secret_form", ["pem", "der", "jwks", "jwk", "jwks-file"])
def test_hmac_with_public_key_as_secret(gateway: GatewayProcess, secret_form: str,
                                        alg: str) -> None:
    """Algorithm confusion: HMAC keyed with what the gateway publishes as the verifying key."""
    issuer = gateway.issuer
    assert issuer is not None
    public = issuer.private_key.public_key()
    secrets_by_form = {
        "pem": public.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo),
        "der": public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        "jwks": json.dumps(issuer.jwks()).encode(),
        "jwk": json.dumps(issuer.public_jwk()).encode(),
        "jwks-file": issuer.jwks_path.read_bytes(),
    }
    digest = {"HS256": "sha256", "HS512": "sha512"}[alg]
    tok = hand_jwt({"alg": alg, "typ": "JWT", "kid": issuer.kid}, good_claims(issuer),
                   sign=_hmac_signer(secrets_by_form[secret_form], digest))
    assert_refused(gateway, tok, reason="algorithm_not_allowed")


def test_hs256_without_kid(gateway: GatewayProcess) -> None:
    issuer = gateway.issuer
    assert issuer is not None
    pem = issuer.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    tok = hand_jwt({"alg": "HS256", "typ": "JWT"}, good_claims(issuer), sign=_hmac_signer(pem))
    assert_refused(gateway, tok, reason="algorithm_not_allowed")


@pytest.mark.parametrize("garbage", [
    "garbage-7f3a9c1e5b2d4e6f8a0b",
    "aGVsbG8gd29ybGQgdGhpcyBpcyBub3QgYSBqd3Q.Zm9vYmFyYmF6cXV4.c2lnbmF0dXJlX2J5dGVz",
    "eyJhbGciOiJFUzI1NiJ9.not-base64-json-9f8e7d6c.x",
    "x" * 20000,
    "a.b.c.d.e.f",
    "....",
])
def test_garbage_password(gateway: GatewayProcess, garbage: str) -> None:
    fields = assert_refused(gateway, garbage, reason="malformed")
    assert len(fields["M"]) < 200


def test_garbage_binary_password_raw(gateway: GatewayProcess) -> None:
    """Non-UTF-8 bytes as the password: refused cleanly (not an internal error)."""
    fields = expect_fatal(raw_login(gateway, b"\xff\xfe\x80garbage\x81"))
    assert fields["C"] in ("28P01", "08P01"), fields
    assert_good_connection(gateway)


def test_empty_password(gateway: GatewayProcess) -> None:
    """libpq will not even send an empty password, so do it by hand."""
    USED_SECRETS.append("")
    fields = expect_fatal(raw_login(gateway, ""))
    assert fields["C"] == "28P01", fields
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(gateway.dsn("payments"), password="").close()
    assert_good_connection(gateway)


def test_whitespace_only_password(gateway: GatewayProcess) -> None:
    fields = expect_fatal(raw_login(gateway, "   \t  "))
    assert fields["C"] == "28P01", fields
    assert_good_connection(gateway)


def test_token_missing_sub(gateway: GatewayProcess) -> None:
    tok = gateway.token(extra_claims={"sub": ""})
    assert_refused(gateway, tok, reason="missing_claim")


@pytest.mark.parametrize("claim", ["exp", "aud", "iss"])
def test_token_missing_required_claim(gateway: GatewayProcess, claim: str) -> None:
    issuer = gateway.issuer
    assert issuer is not None
    claims = good_claims(issuer)
    del claims[claim]
    tok = jwt.encode(claims, issuer.private_key, algorithm=issuer.alg,
                     headers={"kid": issuer.kid})
    assert_refused(gateway, tok, reason="missing_claim")


def test_token_with_crit_header(gateway: GatewayProcess) -> None:
    """RFC 7515: an unknown critical extension makes the token unacceptable."""
    issuer = gateway.issuer
    assert issuer is not None
    tok = jwt.encode(good_claims(issuer), issuer.private_key, algorithm=issuer.alg,
                     headers={"kid": issuer.kid, "crit": ["exp"]})
    assert_refused(gateway, tok, reason="malformed")


def test_expiry_within_leeway_still_accepted(gateway: GatewayProcess) -> None:
    """Sanity check of the expiry tests above: 5 s past exp is inside the 30 s leeway."""
    tok = gateway.token(now=time.time() - 605, ttl=600)
    USED_SECRETS.append(tok)
    with psycopg.connect(gateway.dsn("payments"), password=tok, autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


# ---------------------------------------------------------------------------------------------
# Connection names and startup parameters
# ---------------------------------------------------------------------------------------------


def test_unknown_connection_refused_even_with_valid_token(gateway: GatewayProcess) -> None:
    tok = gateway.token()
    USED_SECRETS.append(tok)
    fields = expect_fatal(raw_login(gateway, tok, dbname="no_such_connection"))
    assert fields["C"] == "28000", fields
    assert "no_such_connection" in fields["M"]
    assert_no_token_part(json.dumps(fields), tok)
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(gateway.dsn("no_such_connection"), password=tok).close()
    assert "not configured" in str(info.value)
    assert_good_connection(gateway)


def test_upstream_database_name_is_not_a_connection_name(gateway: GatewayProcess,
                                                         pg: Any) -> None:
    """`dbname` names a gateway connection, never the upstream database directly."""
    tok = gateway.token()
    USED_SECRETS.append(tok)
    for name in ("postgres", "template1"):
        fields = expect_fatal(raw_login(gateway, tok, dbname=name))
        assert fields["C"] == "28000", fields
    assert_good_connection(gateway)


def test_options_role_refused(gateway: GatewayProcess) -> None:
    tok = gateway.token()
    USED_SECRETS.append(tok)
    fields = expect_fatal(raw_login(gateway, tok, extra={"options": "-c role=postgres"}))
    assert fields["C"] == "42501", fields
    assert "options" in fields["M"]
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(gateway.dsn("payments"), password=tok,
                        options="-c role=postgres").close()
    assert "options" in str(info.value)
    assert_good_connection(gateway)


@pytest.mark.parametrize(("name", "value"), [
    ("session_authorization", "postgres"),
    ("role", "postgres"),
    ("Options", "-c session_authorization=postgres"),
    ("replication", "database"),
    ("is_superuser", "on"),
    ("log_statement", "none"),
])
def test_dangerous_startup_parameter_refused(gateway: GatewayProcess, name: str,
                                            value: str) -> None:
    tok = gateway.token()
    USED_SECRETS.append(tok)
    fields = expect_fatal(raw_login(gateway, tok, extra={name: value}))
    assert fields["C"] == "42501", fields
    assert_good_connection(gateway)


def test_refusal_happens_before_the_password_is_asked(gateway: GatewayProcess) -> None:
    """A forbidden startup parameter is refused without ever prompting for the token."""
    with RawClient(gateway, tls=True) as c:
        c.startup({"user": "ci-bot", "database": "payments", "options": "-c role=postgres"})
        msgs = c.read_until_close()
    assert [m.type for m in msgs] == [b"E"]
    assert msgs[0].fields()["C"] == "42501"


def test_harmless_startup_parameters_pass(gateway: GatewayProcess) -> None:
    tok = gateway.token()
    USED_SECRETS.append(tok)
    with psycopg.connect(gateway.dsn("payments"), password=tok, autocommit=True,
                         application_name="auth-test") as conn:
        assert conn.execute("show application_name").fetchone() == ("auth-test",)
        assert conn.execute("select current_user").fetchone() == ("pgwarden_svc",)


# ---------------------------------------------------------------------------------------------
# TLS required
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_only_gateway(pg: Any, tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path_factory.mktemp("gw-tls-only"), upstreams_for(pg),
                        allow_plaintext=False)
    with gw:
        yield gw
    assert gw.proc is not None and gw.proc.returncode == 0, gw.log_text()[-4000:]


def test_plaintext_refused_when_tls_required(tls_only_gateway: GatewayProcess) -> None:
    gw = tls_only_gateway
    tok = gw.token()
    USED_SECRETS.append(tok)
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(gw.dsn("payments", sslmode="disable"), password=tok).close()
    assert "TLS" in str(info.value)
    assert_no_token_part(str(info.value), tok)

    # Raw: refused with 28000 before any password prompt (the token is never asked for).
    with RawClient(gw, tls=False) as c:
        c.startup({"user": "ci-bot", "database": "payments"})
        msgs = c.read_until_close()
    assert [m.type for m in msgs] == [b"E"], msgs
    fields = msgs[0].fields()
    assert fields["C"] == "28000" and "TLS" in fields["M"], fields

    with psycopg.connect(gw.dsn("payments", sslmode="require"), password=tok,
                         autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select current_user").fetchone() == ("pgwarden_svc",)
    assert tok not in gw.log_text()


def test_tls_only_gateway_rejects_the_other_issuers_tokens(tls_only_gateway: GatewayProcess,
                                                           gateway: GatewayProcess) -> None:
    """Two gateways, two dev issuers: a token from one is an unknown key to the other."""
    tok = gateway.token()
    USED_SECRETS.append(tok)
    fields = expect_fatal(raw_login(tls_only_gateway, tok))
    assert fields["C"] == "28P01", fields


# ---------------------------------------------------------------------------------------------
# An issuer that mints tokens for anyone, narrowed by required claims
# ---------------------------------------------------------------------------------------------

# Allows a statement only to the prefixed group: what a policy sees is the gateway's name
# for the group, not the one in the token.
DEPLOY_ONLY_REGO = """package pgwarden

import rego.v1

default decision := {"allow": false, "reasons": ["only github:deploy"], "mask": {},
                     "require_approval": false, "approvers": [], "row_limit": null,
                     "db_role": null}

decision := {"allow": true, "reasons": [], "mask": {}, "require_approval": false,
             "approvers": [], "row_limit": null, "db_role": null} if {
    "github:deploy" in input.identity.groups
}
"""


@pytest.fixture(scope="module")
def narrowed_gateway(pg: Any, tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[GatewayProcess]:
    d = tmp_path_factory.mktemp("gw-narrowed")
    (d / "policy").mkdir()
    (d / "policy" / "deploy.rego").write_text(DEPLOY_ONLY_REGO)
    gw = GatewayProcess(d, upstreams_for(pg), policy_dir=d / "policy", provider_yaml=(
        '      groups_prefix: "github:"\n'
        "      required_claims:\n"
        "        repository_owner: acme\n"
        "        ref: [refs/heads/main, refs/heads/release]\n"))
    with gw:
        yield gw
    assert gw.proc is not None and gw.proc.returncode == 0, gw.log_text()[-4000:]


def test_required_claims_refuse_other_owners_tokens(narrowed_gateway: GatewayProcess) -> None:
    """The issuer signs them all; only acme's main and release branches get in."""
    gw = narrowed_gateway
    ours = {"repository_owner": "acme", "ref": "refs/heads/main"}
    for theirs in ({"repository_owner": "evil", "ref": "refs/heads/main"},
                   {"repository_owner": "acme", "ref": "refs/heads/topic"},
                   {"ref": "refs/heads/main"}):
        tok = gw.token(groups=("deploy",), extra_claims=theirs)
        USED_SECRETS.append(tok)
        fields = expect_fatal(raw_login(gw, tok))
        assert fields["C"] == "28P01", fields
        assert fields["M"].endswith(MESSAGES["claim_not_allowed"]), fields
        assert "evil" not in fields["M"] and "topic" not in fields["M"]
    refusal = gw.wait_for_log(lambda doc: doc.get("event") == "auth.failure"
                              and doc.get("reason") == "claim_not_allowed")
    assert "evil" not in json.dumps(refusal)
    with psycopg.connect(gw.dsn("payments"), password=gw.token(
            groups=("deploy",), extra_claims=ours), autocommit=True) as conn:
        assert conn.execute("select current_user").fetchone() == ("pgwarden_svc",)


def test_groups_prefix_is_what_the_policy_sees(narrowed_gateway: GatewayProcess) -> None:
    """A token's group "deploy" is the policy's "github:deploy"; a token that names
    "github:deploy" itself gets "github:github:deploy", which the policy refuses."""
    gw = narrowed_gateway
    ours = {"repository_owner": "acme", "ref": "refs/heads/release"}
    with psycopg.connect(gw.dsn("payments"), password=gw.token(
            groups=("deploy",), extra_claims=ours), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    with psycopg.connect(gw.dsn("payments"), password=gw.token(
            groups=("github:deploy",), extra_claims=ours), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="only github:deploy"):
            conn.execute("select 1")


# ---------------------------------------------------------------------------------------------
# Finally: no presented secret anywhere in the gateway's log
# ---------------------------------------------------------------------------------------------


def test_zz_log_never_contains_tokens(gateway: GatewayProcess) -> None:
    # The log is read from the process's stderr by a thread: let it catch up.
    marker_deadline = time.monotonic() + 5
    before = len(gateway.logs)
    assert_good_connection(gateway)
    while len(gateway.logs) <= before and time.monotonic() < marker_deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    text = gateway.log_text()
    assert "auth.failure" in text  # the refusals above were logged...
    secrets_seen = [s for s in USED_SECRETS if len(s) >= 16]
    assert len(secrets_seen) > 20
    for secret in secrets_seen:  # ...but never with the token
        assert secret not in text
        for segment in secret.split("."):
            if len(segment) >= 16:
                assert segment not in text, f"log holds a token segment: {segment[:10]}..."


def test_session_ends_when_its_token_expires(pg: Any,
                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    with GatewayProcess(tmp_path_factory.mktemp("expiry"), upstreams_for(pg), leeway=0) as gw:
        tok = gw.token(ttl=2)
        with psycopg.connect(gw.dsn("payments"), password=tok, autocommit=True) as c:
            assert c.execute("select 1").fetchone() == (1,)
            time.sleep(2.6)
            with pytest.raises(psycopg.OperationalError) as e:
                c.execute("select 1")
        assert "token" in str(e.value) and "expired" in str(e.value)
        ended = [r for r in gw.logs if r.get("event") == "session.token_expired"]
        assert len(ended) == 1 and ended[0]["subject"] == "ci-bot"
        assert tok not in gw.log_text()


def test_a_statement_running_when_the_token_expires_is_canceled(
        pg: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The session ends for the client when its token expires, and at the server too: the
    statement it was running is canceled, not left to finish (a write would commit after
    the client was told the session is over)."""
    import threading

    marker = "expiry_in_flight_marker"
    with GatewayProcess(tmp_path_factory.mktemp("expiry-running"), upstreams_for(pg),
                        leeway=0) as gw:
        conn = psycopg.connect(gw.dsn("payments"), password=gw.token(ttl=2), autocommit=True)
        errors: list[str] = []

        def run() -> None:
            try:
                conn.execute(f"select pg_sleep(10), '{marker}'")
            except psycopg.Error as e:
                errors.append(str(e))

        worker = threading.Thread(target=run)
        worker.start()
        time.sleep(4)  # the token expired 2 s in
        with psycopg.connect(pg.dsn(pg.service), autocommit=True) as direct:
            running = direct.execute(
                "select state from pg_stat_activity where query like %s "
                "and pid <> pg_backend_pid()", (f"%{marker}%",)).fetchall()
        worker.join(15)
        conn.close()
        assert errors and "expired" in errors[0], errors
        assert running == [], running
        assert any(r.get("event") == "session.cancel_on_end" for r in gw.logs)
