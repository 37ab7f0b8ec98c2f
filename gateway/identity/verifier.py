"""JWT verification: route by issuer, pick the key by kid, then let pyjwt check.

Nothing read before the signature check (header, `iss`) is trusted: it only
selects which provider and which key to verify with. The algorithm is pinned
by the key, never by the token, which is what defeats `alg: none` and the
HS256-with-the-public-key confusion.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from jwt import exceptions as jwt_errors

from gateway import logs

from .errors import AuthError
from .jwks import ASYMMETRIC_ALGORITHMS, JwksKey, JwksSource
from .model import Identity

MAX_TOKEN_BYTES = 16 * 1024
_B64URL = re.compile(r"[A-Za-z0-9_-]*")

# Most specific first: several of these subclass each other.
_PYJWT_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt_errors.ExpiredSignatureError, "expired"),
    (jwt_errors.ImmatureSignatureError, "not_yet_valid"),
    (jwt_errors.InvalidAudienceError, "wrong_audience"),
    (jwt_errors.InvalidIssuerError, "wrong_issuer"),
    (jwt_errors.MissingRequiredClaimError, "missing_claim"),
    (jwt_errors.InvalidAlgorithmError, "algorithm_not_allowed"),
    (jwt_errors.InvalidSignatureError, "bad_signature"),
    (jwt_errors.InvalidKeyError, "algorithm_not_allowed"),  # key type does not fit alg
    (jwt_errors.PyJWTError, "malformed"),
)


@dataclass(frozen=True)
class _Provider:
    config: Any  # ProviderConfig
    source: JwksSource


@dataclass(frozen=True)
class _Routed:
    token: str
    alg: str
    kid: str | None
    provider: _Provider


class JwtVerifier:
    def __init__(self, providers: Sequence[Any], *,
                 clock: Callable[[], float] = time.monotonic,
                 sources: Mapping[str, JwksSource] | None = None) -> None:
        """`sources` (issuer -> JwksSource) overrides the sources built from the config."""
        self._providers: dict[str, _Provider] = {}
        for config in providers:
            if config.issuer in self._providers:
                raise ValueError(f"identity provider {config.issuer!r} is configured twice")
            if not _audiences(config):
                # Without an audience check, any token the IdP minted for any
                # other service would open the database.
                raise ValueError(f"identity provider {config.issuer!r} has no audience")
            source = (sources or {}).get(config.issuer) or JwksSource.for_provider(
                config, clock=clock)
            self._providers[config.issuer] = _Provider(config, source)

    @property
    def issuers(self) -> tuple[str, ...]:
        return tuple(self._providers)

    async def prime(self) -> dict[str, bool]:
        """Load every provider's keys; issuer -> whether keys are held."""
        return {iss: await p.source.prime() for iss, p in self._providers.items()}

    async def verify(self, token: str | bytes) -> Identity:
        routed = self._route(token)
        keys = await routed.provider.source.alookup(routed.kid)
        return self._check(routed, keys)

    def verify_sync(self, token: str | bytes) -> Identity:
        """verify() without asyncio; a JWKS fetch, if needed, blocks the caller."""
        routed = self._route(token)
        return self._check(routed, routed.provider.source.lookup(routed.kid))

    def _route(self, token: str | bytes) -> _Routed:
        if isinstance(token, bytes):
            try:
                token = token.decode("ascii")
            except UnicodeDecodeError:
                raise AuthError("malformed") from None
        if not isinstance(token, str):
            raise AuthError("malformed")
        token = token.strip()
        if not token or len(token) > MAX_TOKEN_BYTES:
            raise AuthError("malformed")
        parts = token.split(".")
        # An empty signature is let through so `alg: none` is reported as such.
        if len(parts) != 3 or not parts[0] or not parts[1] or not all(
                _B64URL.fullmatch(p) for p in parts):
            raise AuthError("malformed")
        header, payload = _b64_json(parts[0]), _b64_json(parts[1])
        if "crit" in header or "b64" in header:
            # RFC 7515 §4.1.11: we understand no JWS extension, so must refuse.
            raise AuthError("malformed")
        alg, kid, iss = header.get("alg"), header.get("kid"), payload.get("iss")
        if not isinstance(alg, str) or (kid is not None and not isinstance(kid, str)):
            raise AuthError("malformed")
        if alg not in ASYMMETRIC_ALGORITHMS:
            raise AuthError("algorithm_not_allowed")
        if iss is None:
            raise AuthError("missing_claim")
        if not isinstance(iss, str):
            raise AuthError("malformed")
        provider = self._providers.get(iss)
        if provider is None:
            raise AuthError("unknown_issuer")
        return _Routed(token=token, alg=alg, kid=kid, provider=provider)

    def _check(self, routed: _Routed, keys: Sequence[JwksKey]) -> Identity:
        candidates = [k for k in keys if routed.alg in k.algorithms]
        if not candidates:
            raise AuthError("algorithm_not_allowed")
        config = routed.provider.config
        claims: dict[str, Any] | None = None
        for key in candidates:  # several only if the JWKS repeats a kid
            try:
                claims = jwt.decode(
                    routed.token, key=key.key, algorithms=[routed.alg],
                    audience=list(_audiences(config)), issuer=config.issuer,
                    leeway=config.leeway, options={"require": ["exp", "iss", "aud"]})
                break
            except jwt_errors.InvalidSignatureError:
                continue
            except jwt_errors.PyJWTError as exc:
                raise _auth_error(exc) from None
        if claims is None:
            raise AuthError("bad_signature")
        return _identity(config, claims)


def _identity(config: Any, claims: dict[str, Any]) -> Identity:
    for name in ("exp", "nbf", "iat"):
        # RFC 7519: NumericDate, a number (pyjwt also takes "9999999999" as a string; a
        # huge integer overflows a float)
        value = claims.get(name)
        if value is not None and (type(value) not in (int, float) or not _finite(value)):
            raise AuthError("malformed")
    subject = claim_at(claims, config.subject_claim)
    if subject is None or subject == "":
        raise AuthError("missing_claim")
    if not isinstance(subject, str):
        raise AuthError("malformed")
    for path, allowed in config.required_claims:
        if not claim_matches(claim_at(claims, path), allowed):
            raise AuthError("claim_not_allowed")
    prefix = config.groups_prefix
    groups = groups_from(claim_at(claims, config.groups_claim))
    return Identity(subject=subject, issuer=config.issuer,
                    groups=tuple(prefix + g for g in groups) if prefix else groups,
                    claims=claims, method="jwt", expires_at=float(claims["exp"]))


def claim_matches(value: Any, allowed: Sequence[Any]) -> bool:
    """Whether a claim is one of the `allowed` values, or, a list, holds one of them.
    Types must agree: JSON's `true` is not the string "true", nor the number 1."""
    items = value if isinstance(value, list) else (value,)
    return any(type(item) is type(want) and item == want
               for item in items for want in allowed)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by name, else by dotted path ("realm_access.roles").

    Names may hold dots themselves: namespaced claims ("https://example.com/groups"), and
    Kubernetes' ("kubernetes.io.namespace" is the "namespace" member of "kubernetes.io").
    At each level the longest name that is there is tried first.
    """
    return _claim_at(claims, path.split("."))


def _claim_at(node: Any, parts: list[str]) -> Any:
    if not parts:
        return node
    if not isinstance(node, Mapping):
        return None
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        if name in node:
            found = _claim_at(node[name], parts[i:])
            if found is not None:
                return found
    return None


def groups_from(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(g, str) for g in value):
        return tuple(value)
    return ()


def _audiences(config: Any) -> tuple[str, ...]:
    aud = config.audiences
    return (aud,) if isinstance(aud, str) else tuple(aud)


def _b64_json(segment: str) -> dict[str, Any]:
    try:
        value = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError, RecursionError):  # deep nesting -> RecursionError
        raise AuthError("malformed") from None
    if not isinstance(value, dict):
        raise AuthError("malformed")
    return value


def _auth_error(exc: Exception) -> AuthError:
    # Only the class name is logged: pyjwt messages may name claims.
    logs.debug("identity.token_refused", error=type(exc).__name__)
    for cls, reason in _PYJWT_REASONS:
        if isinstance(exc, cls):
            return AuthError(reason)
    return AuthError("malformed")
