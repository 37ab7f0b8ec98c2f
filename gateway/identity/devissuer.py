"""A development token issuer for the demo and tests (`pgwarden token mint`).

It is a real issuer, just a local one: a private key on disk and the matching
public JWKS, which a provider config can point at with `jwks: {file: ...}`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

DEFAULT_ISSUER = "https://pgwarden.dev/issuer"
KEY_FILE = "issuer.key"
JWKS_FILE = "jwks.json"
META_FILE = "issuer.json"
SUPPORTED_ALGORITHMS = ("ES256", "RS256", "EdDSA")

# RFC 7638 §3.2: the members that define each key type's thumbprint.
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"),
                       "OKP": ("crv", "kty", "x")}


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint, base64url without padding."""
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def public_jwk(public_key: Any, alg: str) -> dict[str, Any]:
    """The public JWK for a key, with kid (its thumbprint), alg and use."""
    if isinstance(public_key, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        jwk = OKPAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        raise TypeError(f"unsupported public key type {type(public_key).__name__}")
    jwk = {k: v for k, v in jwk.items() if k in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    return {**jwk, "kid": jwk_thumbprint(jwk), "alg": alg, "use": "sig"}


def _new_private_key(alg: str) -> Any:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unsupported algorithm {alg!r}; use one of {', '.join(SUPPORTED_ALGORITHMS)}")


def _key_fits(private_key: Any, alg: str) -> bool:
    return {
        "ES256": isinstance(private_key, ec.EllipticCurvePrivateKey)
        and isinstance(private_key.curve, ec.SECP256R1),
        "RS256": isinstance(private_key, rsa.RSAPrivateKey),
        "EdDSA": isinstance(private_key, ed25519.Ed25519PrivateKey),
    }.get(alg, False)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    # Write-then-rename: a JwksSource watching the file never sees half a JWKS,
    # and the key file is never readable by others, not even briefly.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


@dataclass(frozen=True)
class DevIssuer:
    directory: Path
    issuer: str
    kid: str
    alg: str
    private_key: Any

    @property
    def key_path(self) -> Path:
        return self.directory / KEY_FILE

    @property
    def jwks_path(self) -> Path:
        return self.directory / JWKS_FILE

    def public_jwk(self) -> dict[str, Any]:
        return public_jwk(self.private_key.public_key(), self.alg)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk()]}

    @classmethod
    def load(cls, directory: Path | str) -> DevIssuer:
        directory = Path(directory)
        meta = json.loads((directory / META_FILE).read_text())
        private_key = serialization.load_pem_private_key(
            (directory / KEY_FILE).read_bytes(), password=None)
        alg = meta["alg"]
        if not _key_fits(private_key, alg):
            raise ValueError(f"{directory / KEY_FILE} is not a key for {alg}")
        return cls(directory=directory, issuer=meta["issuer"], kid=meta["kid"], alg=alg,
                   private_key=private_key)

    def mint(self, subject: str, audience: str | Sequence[str] = "pgwarden",
             groups: Sequence[str] = (), ttl: float = 900,
             extra_claims: Mapping[str, Any] | None = None,
             not_before: float | None = None, now: float | None = None) -> str:
        """A signed JWT. `extra_claims` are applied last, so they may override."""
        now = time.time() if now is None else now
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience if isinstance(audience, str) else list(audience),
            "iat": int(now),
            "nbf": int(now if not_before is None else not_before),
            "exp": int(now + ttl),
            "jti": uuid.uuid4().hex,
            "groups": list(groups),
        }
        claims.update(extra_claims or {})
        return jwt.encode(claims, self.private_key, algorithm=self.alg,
                          headers={"kid": self.kid, "typ": "JWT"})


def generate_issuer(directory: Path | str, issuer: str = DEFAULT_ISSUER,
                    alg: str = "ES256") -> DevIssuer:
    """Create a fresh key pair in `directory` (replacing any previous one)."""
    directory = Path(directory)
    private_key = _new_private_key(alg)
    jwk = public_jwk(private_key.public_key(), alg)
    directory.mkdir(parents=True, exist_ok=True)
    pem = private_key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    _write_atomically(directory / KEY_FILE, pem, 0o600)
    _write_atomically(directory / JWKS_FILE,
                      (json.dumps({"keys": [jwk]}, indent=2) + "\n").encode(), 0o644)
    meta = {"issuer": issuer, "kid": jwk["kid"], "alg": alg}
    _write_atomically(directory / META_FILE, (json.dumps(meta, indent=2) + "\n").encode(),
                      0o644)
    return DevIssuer(directory=directory, issuer=issuer, kid=jwk["kid"], alg=alg,
                     private_key=private_key)
