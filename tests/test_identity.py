"""Identity: dev issuer, JWKS sources and JWT verification, with real crypto."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import http.server
import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.identity.devissuer import DevIssuer, generate_issuer, jwk_thumbprint
from gateway.identity.errors import MESSAGES, AuthError
from gateway.identity.jwks import JwksSource, parse_jwks
from gateway.identity.model import Identity
from gateway.identity.verifier import MAX_TOKEN_BYTES, JwtVerifier

ISSUER = "https://pgwarden.dev/issuer"
DEEPLY_NESTED = base64.urlsafe_b64encode(b'{"a":' + b"[" * 5000).rstrip(b"=").decode()


@dataclass(frozen=True)
class Provider:
    """Same shape as gateway.config.model.ProviderConfig (used by duck typing)."""

    issuer: str
    audiences: tuple[str, ...]
    jwks_file: Path | None
    jwks_url: str | None
    groups_claim: str = "groups"
    subject_claim: str = "sub"
    leeway: float = 30.0
    algorithms: tuple[str, ...] | None = None
    jwks_refresh_min_interval: float = 30.0
    required_claims: tuple[tuple[str, tuple[str | int | bool, ...]], ...] = ()
    groups_prefix: str = ""


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: object) -> str:
    return b64url(json.dumps(value).encode())


def good_claims(subject: str = "ci-bot") -> dict:
    now = int(time.time())
    return {"iss": ISSUER, "sub": subject, "aud": "pgwarden", "iat": now, "exp": now + 600}


@pytest.fixture
def dev(tmp_path: Path) -> DevIssuer:
    return generate_issuer(tmp_path / "issuer")


@pytest.fixture
def verifier(dev: DevIssuer) -> JwtVerifier:
    return JwtVerifier([Provider(ISSUER, ("pgwarden",), dev.jwks_path, None)])


def refused(verifier: JwtVerifier, token: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        verifier.verify_sync(token)
    return info.value


# -- dev issuer -------------------------------------------------------------


def test_rfc7638_thumbprint_example() -> None:
    n = ("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSo"
         "c_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQ"
         "R0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bF"
         "TWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw")
    jwk = {"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_generate_writes_files_and_load_round_trips(tmp_path: Path) -> None:
    dev = generate_issuer(tmp_path / "d", issuer="https://x.example", alg="RS256")
    assert stat.S_IMODE(os.stat(dev.key_path).st_mode) == 0o600
    key = serialization.load_pem_private_key(dev.key_path.read_bytes(), password=None)
    assert key.key_size == 2048
    jwks = json.loads(dev.jwks_path.read_text())
    (jwk,) = jwks["keys"]
    assert "d" not in jwk and jwk["alg"] == "RS256" and jwk["kid"] == jwk_thumbprint(jwk)
    meta = json.loads((tmp_path / "d" / "issuer.json").read_text())
    assert meta == {"issuer": "https://x.example", "kid": jwk["kid"], "alg": "RS256"}
    loaded = DevIssuer.load(tmp_path / "d")
    assert (loaded.issuer, loaded.kid, loaded.alg) == (dev.issuer, dev.kid, dev.alg)


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
def test_good_token_accepted(tmp_path: Path, alg: str) -> None:
    dev = generate_issuer(tmp_path, alg=alg)
    verifier = JwtVerifier([Provider(ISSUER, ("other", "pgwarden"), dev.jwks_path, None)])
    token = dev.mint("ci-bot", groups=["ci", "deploy"], extra_claims={"repo": "acme/pay"})
    identity = verifier.verify_sync(token)
    assert identity.subject == "ci-bot"
    assert identity.issuer == ISSUER
    assert identity.groups == ("ci", "deploy")
    assert identity.method == "jwt"
    assert identity.claims["repo"] == "acme/pay"
    assert identity.expires_at == identity.claims["exp"]
    assert identity.to_input() == {
        "subject": "ci-bot", "issuer": ISSUER, "groups": ["ci", "deploy"],
        "claims": dict(identity.claims), "method": "jwt"}
    assert asyncio.run(verifier.verify(token)) == identity
    hash(identity)  # usable in cache keys despite the claims dict


def test_nested_and_single_string_groups_and_custom_subject(dev: DevIssuer) -> None:
    verifier = JwtVerifier([Provider(ISSUER, ("pgwarden",), dev.jwks_path, None,
                                     groups_claim="realm_access.roles",
                                     subject_claim="client_id")])
    token = dev.mint("ignored", extra_claims={"client_id": "etl-job",
                                              "realm_access": {"roles": ["etl", "reader"]}})
    identity = verifier.verify_sync(token)
    assert (identity.subject, identity.groups) == ("etl-job", ("etl", "reader"))
    token = dev.mint("x", extra_claims={"client_id": "a", "realm_access": {"roles": "solo"}})
    assert verifier.verify_sync(token).groups == ("solo",)
    token = dev.mint("x", extra_claims={"client_id": "a", "realm_access": {"roles": [1, "b"]}})
    assert verifier.verify_sync(token).groups == ()
    token = dev.mint("x", extra_claims={"realm_access": {"roles": ["r"]}})
    assert refused(verifier, token).reason == "missing_claim"


def test_namespaced_groups_claim_with_dots(dev: DevIssuer) -> None:
    claim = "https://example.com/groups"
    verifier = JwtVerifier([Provider(ISSUER, ("pgwarden",), dev.jwks_path, None,
                                     groups_claim=claim)])
    token = dev.mint("svc", extra_claims={claim: ["ops"]})
    assert verifier.verify_sync(token).groups == ("ops",)


def github_like(dev: DevIssuer, **over: object) -> JwtVerifier:
    """An issuer that mints tokens for anyone (GitHub Actions: any repository's workflow
    gets one, with any audience it asks for), narrowed to one organisation's main
    branch, its groups namespaced."""
    options = {"groups_claim": "repository_owner", "groups_prefix": "github:",
               "required_claims": (("repository_owner", ("acme",)),
                                   ("ref", ("refs/heads/main", "refs/heads/release")))}
    options.update(over)
    return JwtVerifier([Provider(ISSUER, ("pgwarden",), dev.jwks_path, None,
                                 **options)])  # type: ignore[arg-type]


def test_required_claims_admit_only_the_configured_values(dev: DevIssuer) -> None:
    verifier = github_like(dev)
    ours = {"repository_owner": "acme", "ref": "refs/heads/release"}
    identity = verifier.verify_sync(dev.mint("repo:acme/pay", extra_claims=ours))
    assert identity.groups == ("github:acme",)
    for theirs in ({"repository_owner": "evil", "ref": "refs/heads/main"},  # other org
                   {"repository_owner": "acme", "ref": "refs/heads/feature"},  # other ref
                   {"repository_owner": "acme"},  # no ref at all
                   {"repository_owner": ["evil"], "ref": "refs/heads/main"},
                   {"repository_owner": "ACME", "ref": "refs/heads/main"},
                   {"repository_owner": "acme ", "ref": "refs/heads/main"},
                   {"repository_owner": {"acme": True}, "ref": "refs/heads/main"}):
        error = refused(verifier, dev.mint("repo:x/y", extra_claims=theirs))
        assert error.reason == "claim_not_allowed", theirs
        assert "acme" not in str(error) and "evil" not in str(error)


def test_a_required_claim_that_is_a_list_needs_one_matching_item(dev: DevIssuer) -> None:
    verifier = github_like(dev, groups_claim="groups", groups_prefix="",
                           required_claims=(("groups", ("deployers",)),))
    assert verifier.verify_sync(dev.mint("a", groups=["ci", "deployers"])).groups == (
        "ci", "deployers")
    assert refused(verifier, dev.mint("a", groups=["ci"])).reason == "claim_not_allowed"
    assert refused(verifier, dev.mint("a", groups=[])).reason == "claim_not_allowed"
    # nested lists are not flattened
    token = dev.mint("a", extra_claims={"groups": [["deployers"]]})
    assert refused(verifier, token).reason == "claim_not_allowed"


def test_required_claim_types_must_agree(dev: DevIssuer) -> None:
    """JSON's true is not "true", nor 1; 1 is not "1" (nor true)."""
    verifier = github_like(dev, required_claims=(("email_verified", (True,)),
                                                 ("tier", (1,))))
    good = {"repository_owner": "acme", "email_verified": True, "tier": 1}
    assert verifier.verify_sync(dev.mint("a", extra_claims=good)).subject == "a"
    for bad in ({"email_verified": "true"}, {"email_verified": 1}, {"tier": True},
                {"tier": "1"}, {"tier": 1.0}, {"tier": None}):
        token = dev.mint("a", extra_claims={**good, **bad})
        assert refused(verifier, token).reason == "claim_not_allowed", bad


def test_required_claims_by_dotted_path(dev: DevIssuer) -> None:
    verifier = github_like(dev, required_claims=(("kubernetes.io.namespace", ("ci",)),))
    token = dev.mint("a", extra_claims={"kubernetes.io": {"namespace": "ci"}})
    assert verifier.verify_sync(token).subject == "a"
    token = dev.mint("a", extra_claims={"kubernetes.io": {"namespace": "prod"}})
    assert refused(verifier, token).reason == "claim_not_allowed"


def test_groups_prefix_applies_to_every_group(dev: DevIssuer) -> None:
    verifier = github_like(dev, groups_claim="groups", required_claims=())
    token = dev.mint("a", groups=["ci", "github:ci"])
    assert verifier.verify_sync(token).groups == ("github:ci", "github:github:ci")


# -- refusals ---------------------------------------------------------------


def test_expired(dev: DevIssuer, verifier: JwtVerifier) -> None:
    token = dev.mint("ci-bot", ttl=60, now=time.time() - 600)
    assert refused(verifier, token).reason == "expired"


def test_not_yet_valid_beyond_leeway(dev: DevIssuer, verifier: JwtVerifier) -> None:
    token = dev.mint("ci-bot", not_before=time.time() + 300)
    assert refused(verifier, token).reason == "not_yet_valid"
    token = dev.mint("ci-bot", now=time.time() + 300)  # iat in the future
    assert refused(verifier, token).reason == "not_yet_valid"


@pytest.mark.parametrize("exp", ["9999999999", " 9999999999 ", 10 ** 400])
def test_times_must_be_numbers_a_float_can_hold(dev: DevIssuer, verifier: JwtVerifier,
                                                exp: object) -> None:
    """RFC 7519's NumericDate is a number: pyjwt also takes a numeric string, and an
    integer too big for a float crashed the check (the client got XX000, and no
    authentication-failure record was written). Found by an adversarial probe."""
    token = dev.mint("ci-bot", extra_claims={"exp": exp})
    assert refused(verifier, token).reason == "malformed"


def test_leeway_honoured(dev: DevIssuer, verifier: JwtVerifier) -> None:
    now = time.time()
    # 10 s late / 10 s early: inside the 30 s leeway.
    assert verifier.verify_sync(dev.mint("ci-bot", ttl=60, now=now - 70)).subject == "ci-bot"
    assert verifier.verify_sync(dev.mint("ci-bot", not_before=now + 10)).subject == "ci-bot"
    strict = JwtVerifier([Provider(ISSUER, ("pgwarden",), dev.jwks_path, None, leeway=0)])
    assert refused(strict, dev.mint("ci-bot", ttl=60, now=now - 70)).reason == "expired"


def test_wrong_audience(dev: DevIssuer, verifier: JwtVerifier) -> None:
    assert refused(verifier, dev.mint("ci-bot", audience="billing")).reason == "wrong_audience"
    token = dev.mint("ci-bot", audience=["billing", "pgwarden"])
    assert verifier.verify_sync(token).subject == "ci-bot"


def test_unknown_issuer(tmp_path: Path, verifier: JwtVerifier) -> None:
    stranger = generate_issuer(tmp_path / "other", issuer="https://evil.example")
    assert refused(verifier, stranger.mint("ci-bot")).reason == "unknown_issuer"


def test_unknown_kid(dev: DevIssuer, verifier: JwtVerifier) -> None:
    token = dataclasses.replace(dev, kid="no-such-kid").mint("ci-bot")
    assert refused(verifier, token).reason == "unknown_key"


def test_same_kid_different_key(tmp_path: Path, dev: DevIssuer, verifier: JwtVerifier) -> None:
    impostor = generate_issuer(tmp_path / "impostor")
    token = dataclasses.replace(impostor, kid=dev.kid).mint("ci-bot")
    assert refused(verifier, token).reason == "bad_signature"


def test_tampered_payload(dev: DevIssuer, verifier: JwtVerifier) -> None:
    header, _, sig = dev.mint("ci-bot").split(".")
    forged = ".".join([header, b64json({**good_claims(), "sub": "dba"}), sig])
    assert refused(verifier, forged).reason == "bad_signature"


def test_alg_none(dev: DevIssuer, verifier: JwtVerifier) -> None:
    for alg in ("none", "None", "NONE"):
        token = f"{b64json({'alg': alg, 'kid': dev.kid, 'typ': 'JWT'})}.{b64json(good_claims())}."
        assert refused(verifier, token).reason == "algorithm_not_allowed"


def test_hs256_signed_with_public_key(dev: DevIssuer, verifier: JwtVerifier) -> None:
    pem = dev.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for secret in (pem, dev.jwks_path.read_bytes()):
        signing_input = f"{b64json({'alg': 'HS256', 'kid': dev.kid})}.{b64json(good_claims())}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        token = f"{signing_input}.{b64url(mac)}"
        assert refused(verifier, token).reason == "algorithm_not_allowed"


def test_algorithm_outside_provider_allow_list(dev: DevIssuer) -> None:
    verifier = JwtVerifier([Provider(ISSUER, ("pgwarden",), dev.jwks_path, None,
                                     algorithms=("RS256",))])
    assert refused(verifier, dev.mint("ci-bot")).reason == "algorithm_not_allowed"


def test_alg_not_matching_key(tmp_path: Path, dev: DevIssuer, verifier: JwtVerifier) -> None:
    rsa_dev = generate_issuer(tmp_path / "rsa", alg="RS256")
    token = dataclasses.replace(rsa_dev, kid=dev.kid).mint("ci-bot")  # RS256 for an EC key
    assert refused(verifier, token).reason == "algorithm_not_allowed"


@pytest.mark.parametrize("token", [
    "", "   ", "garbage", "a.b", "a.b.c.d", "!!!.???.###", "eyJhbGciOi.eyJzdWIi.sig",
    f"{b64json(['not', 'an', 'object'])}.{b64json(good_claims())}.AAAA",
    f"{b64json({'alg': 'ES256'})}.{b64url(b'not json')}.AAAA",
    f"{b64json({'alg': 'ES256', 'kid': 7})}.{b64json(good_claims())}.AAAA",
    f"{b64json({'alg': 'ES256', 'crit': ['exp']})}.{b64json(good_claims())}.AAAA",
    f"{b64json({'alg': 'ES256'})}.{DEEPLY_NESTED}.AAAA",
])
def test_malformed(verifier: JwtVerifier, token: str) -> None:
    assert refused(verifier, token).reason == "malformed"


def test_oversized_token(dev: DevIssuer, verifier: JwtVerifier) -> None:
    token = dev.mint("ci-bot", extra_claims={"pad": "x" * MAX_TOKEN_BYTES})
    assert len(token) > MAX_TOKEN_BYTES
    assert refused(verifier, token).reason == "malformed"


def test_missing_exp(dev: DevIssuer, verifier: JwtVerifier) -> None:
    token = dev.mint("ci-bot", extra_claims={"exp": None})
    assert refused(verifier, token).reason == "missing_claim"


def test_errors_never_leak_token_or_claims(tmp_path: Path, dev: DevIssuer,
                                           verifier: JwtVerifier) -> None:
    subject = "secret-subject-4111111111111111"
    now = time.time()
    tokens = [
        dev.mint(subject, ttl=1, now=now - 600),
        dev.mint(subject, not_before=now + 600),
        dev.mint(subject, audience="elsewhere-4111"),
        dataclasses.replace(dev, kid="kid-4111").mint(subject),
        dataclasses.replace(generate_issuer(tmp_path / "x"), kid=dev.kid).mint(subject),
        generate_issuer(tmp_path / "y", issuer="https://issuer-4111.example").mint(subject),
        f"{b64json({'alg': 'none', 'kid': dev.kid})}.{b64json(good_claims(subject))}.",
        subject,
    ]
    for token in tokens:
        error = refused(verifier, token)
        for text in (str(error), repr(error), *map(str, error.args)):
            assert text in (MESSAGES[error.reason], f"AuthError({error.reason!r})")
            assert "4111" not in text and token not in text
        assert error.sqlstate == "28P01"


# -- JWKS parsing and file source ------------------------------------------


def test_jwks_key_filtering(tmp_path: Path) -> None:
    ec_jwk = generate_issuer(tmp_path / "ec").public_jwk()
    rsa_jwk = generate_issuer(tmp_path / "rsa", alg="RS256").public_jwk()
    ed_jwk = generate_issuer(tmp_path / "ed", alg="EdDSA").public_jwk()
    oct_jwk = {"kty": "oct", "kid": "hmac", "k": b64url(b"0" * 32), "alg": "HS256"}
    rsa_any = {k: v for k, v in rsa_jwk.items() if k != "alg"}
    enc_only = {**ec_jwk, "kid": "enc", "use": "enc"}
    keyset = parse_jwks(json.dumps({"keys": [ec_jwk, {**rsa_any, "kid": "rsa-any"}, ed_jwk,
                                             oct_jwk, enc_only, "junk"]}))
    by_kid = {k.kid: k.algorithms for k in keyset.keys}
    assert by_kid == {
        ec_jwk["kid"]: {"ES256"},
        "rsa-any": {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"},
        ed_jwk["kid"]: {"EdDSA"},
    }
    assert keyset.find(None) == ()  # several keys: a kid is required
    restricted = parse_jwks({"keys": [{**rsa_any, "kid": "r"}]}, allowed_algorithms=["PS256"])
    assert restricted.keys[0].algorithms == {"PS256"}
    # With a single key, a token without kid may use it.
    lone = {k: v for k, v in ec_jwk.items() if k != "kid"}
    assert parse_jwks({"keys": [lone]}).find(None)[0].kid is None
    assert parse_jwks({"keys": [lone, rsa_jwk]}).find(None) == ()
    with pytest.raises(ValueError):
        parse_jwks(b"[]")


def test_token_without_kid_uses_sole_key(dev: DevIssuer, verifier: JwtVerifier) -> None:
    import jwt

    token = jwt.encode(good_claims(), dev.private_key, algorithm="ES256")
    assert verifier.verify_sync(token).subject == "ci-bot"


def test_file_source_reloads_when_file_changes(tmp_path: Path) -> None:
    first = generate_issuer(tmp_path / "a")
    verifier = JwtVerifier([Provider(ISSUER, ("pgwarden",), first.jwks_path, None)])
    assert verifier.verify_sync(first.mint("one")).subject == "one"
    second = generate_issuer(tmp_path / "b")
    jwks = {"keys": [first.public_jwk(), second.public_jwk()]}
    first.jwks_path.write_text(json.dumps(jwks))
    os.utime(first.jwks_path, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))
    assert verifier.verify_sync(second.mint("two")).subject == "two"


def test_missing_jwks_file_is_unavailable(tmp_path: Path) -> None:
    verifier = JwtVerifier([Provider(ISSUER, ("pgwarden",), tmp_path / "nope.json", None)])
    dev = generate_issuer(tmp_path / "d")
    error = refused(verifier, dev.mint("ci-bot"))
    assert (error.reason, error.sqlstate) == ("jwks_unavailable", "28000")


def test_config_validation(dev: DevIssuer) -> None:
    provider = Provider(ISSUER, ("pgwarden",), dev.jwks_path, None)
    with pytest.raises(ValueError):
        JwtVerifier([provider, provider])
    with pytest.raises(ValueError):
        JwtVerifier([dataclasses.replace(provider, audiences=())])
    with pytest.raises(ValueError):
        JwksSource(url="file:///etc/passwd")
    with pytest.raises(ValueError):
        JwksSource()


# -- JWKS over HTTP ---------------------------------------------------------


class JwksServer:
    def __init__(self) -> None:
        self.body = b'{"keys": []}'
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def serve(self, *issuers: DevIssuer) -> None:
        self.body = json.dumps({"keys": [i.public_jwk() for i in issuers]}).encode()


@pytest.fixture
def jwks_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[JwksServer]:
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    server = JwksServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def test_url_source_fetch_rotation_and_rate_limit(tmp_path: Path,
                                                  jwks_server: JwksServer) -> None:
    old = generate_issuer(tmp_path / "old")
    new = generate_issuer(tmp_path / "new")
    jwks_server.serve(old)
    clock = FakeClock()
    verifier = JwtVerifier([Provider(ISSUER, ("pgwarden",), None, jwks_server.url,
                                     jwks_refresh_min_interval=30)], clock=clock)

    async def verify(token: str) -> str:
        return (await verifier.verify(token)).subject

    # Initial fetch, then served from the cache.
    assert asyncio.run(verify(old.mint("a"))) == "a"
    assert asyncio.run(verify(old.mint("b"))) == "b"
    assert jwks_server.requests == 1

    # The IdP rotates; a token with the new kid triggers one refetch.
    jwks_server.serve(old, new)
    clock.now += 31
    assert asyncio.run(verify(new.mint("c"))) == "c"
    assert jwks_server.requests == 2

    # Bogus kids within the interval are refused without touching the IdP.
    for i in range(5):
        with pytest.raises(AuthError) as info:
            asyncio.run(verify(dataclasses.replace(new, kid=f"bogus-{i}").mint("d")))
        assert info.value.reason == "unknown_key"
    assert jwks_server.requests == 2

    # Once the interval has passed, an unknown kid may refetch again (once).
    clock.now += 31
    with pytest.raises(AuthError):
        asyncio.run(verify(dataclasses.replace(new, kid="bogus-x").mint("d")))
    with pytest.raises(AuthError):
        asyncio.run(verify(dataclasses.replace(new, kid="bogus-y").mint("d")))
    assert jwks_server.requests == 3


def test_url_source_concurrent_unknown_kids_fetch_once(tmp_path: Path,
                                                       jwks_server: JwksServer) -> None:
    dev = generate_issuer(tmp_path / "d")
    jwks_server.serve(dev)
    source = JwksSource(url=jwks_server.url, clock=FakeClock())

    async def main() -> list[object]:
        return await asyncio.gather(*(source.alookup(f"bogus-{i}") for i in range(20)),
                                    return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, AuthError) and r.reason == "unknown_key" for r in results)
    assert jwks_server.requests == 1
    assert source.lookup(dev.kid)[0].kid == dev.kid


def test_url_source_keeps_last_good_keys(tmp_path: Path, jwks_server: JwksServer) -> None:
    dev = generate_issuer(tmp_path / "d")
    jwks_server.serve(dev)
    clock = FakeClock()
    source = JwksSource(url=jwks_server.url, clock=clock, max_age=60)
    assert source.lookup(dev.kid)
    jwks_server.body = b"<html>oops</html>"
    clock.now += 61
    assert source.lookup(dev.kid)  # refetch failed, old keys still used
    assert jwks_server.requests == 2


def test_url_source_unreachable(tmp_path: Path) -> None:
    dev = generate_issuer(tmp_path / "d")
    verifier = JwtVerifier([Provider(ISSUER, ("pgwarden",), None, "http://127.0.0.1:9/jwks")])
    with pytest.raises(AuthError) as info:
        asyncio.run(verifier.verify(dev.mint("ci-bot")))
    assert info.value.reason == "jwks_unavailable"


def test_identity_to_input_is_a_copy() -> None:
    identity = Identity("s", ISSUER, ("g",), {"nested": {"k": [1]}})
    doc = identity.to_input()
    doc["claims"]["nested"]["k"].append(2)
    assert identity.claims == {"nested": {"k": [1]}}
    assert identity.expires_at is None
