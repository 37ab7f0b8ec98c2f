"""Bundle signatures: OPA's ``.signatures.json`` with one compact JWS.

Signing (:func:`sign_bundle_files`) hashes every file of the bundle (``canonical``) and
signs the payload ``{"files": [{"name", "hash", "algorithm"}, ...]}`` plus, with a key
id and no claims file, the deprecated ``keyid`` claim (as ``opa build`` does); a claims
file's JSON object is merged into the payload instead. The protected header is
``{"alg": ..., "kid": ...}`` (``kid`` only with a key id).

Algorithms: RS256/384/512, PS256/384/512, ES256/384/512 (P-256/P-384/P-521), and EdDSA
(Ed25519/Ed448) as an extension OPA does not offer. HS256/384/512 are refused on
purpose: an HMAC secret would have to sit on every gateway, and whoever can verify a
bundle could then sign one. Keys are PEM files: private keys as PKCS#8, PKCS#1 (``RSA
PRIVATE KEY``) or SEC1 (``EC PRIVATE KEY``); public keys as ``PUBLIC KEY``, ``RSA PUBLIC
KEY`` or an X.509 certificate (a private key is accepted for verification too).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import get_default_algorithms

from gateway.bundle.archive import SIGNATURES
from gateway.bundle.canonical import DEFAULT_HASH, file_digest

__all__ = [
    "DEFAULT_KEY_ID",
    "REFUSED_ALGORITHMS",
    "SIGNING_ALGORITHMS",
    "FileInfo",
    "KeyFileError",
    "b64url_decode",
    "b64url_encode",
    "check_algorithm",
    "default_algorithm",
    "hash_bundle_files",
    "load_private_key",
    "load_public_key",
    "sign_bundle_files",
    "sign_payload",
    "signatures_json",
]

SIGNING_ALGORITHMS = (
    "RS256", "RS384", "RS512",
    "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512",
    "EdDSA",
)  # fmt: skip
REFUSED_ALGORITHMS = {
    "HS256": "HMAC", "HS384": "HMAC", "HS512": "HMAC", "none": "no signature",
}
DEFAULT_KEY_ID = "default"  # what `opa build --signing-key` puts in kid (--verification-key-id)
_EC_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | \
    ed448.Ed448PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | \
    ed448.Ed448PublicKey


class KeyFileError(ValueError):
    """A key file that cannot be used (unreadable, not PEM, wrong type)."""


@dataclass(frozen=True)
class FileInfo:
    """One entry of the signed payload's ``files`` list."""

    name: str
    hash: str
    algorithm: str = DEFAULT_HASH

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "hash": self.hash, "algorithm": self.algorithm}


# -- base64url ------------------------------------------------------------------------------

_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict unpadded base64url (as Go's RawURLEncoding): ValueError otherwise."""
    if not _B64URL.match(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not base64url: {exc}") from None


# -- keys -------------------------------------------------------------------------------------


def _pem(source: str | Path | bytes) -> bytes:
    if isinstance(source, bytes):
        return source
    if isinstance(source, str) and source.lstrip().startswith("-----BEGIN"):
        return source.encode()
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{source}: cannot read: {exc.strerror or exc}") from None


def load_private_key(source: str | Path | bytes) -> PrivateKey:
    """A PEM private key (file path, PEM text or bytes) usable for bundle signing."""
    pem = _pem(source)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"not a PEM private key (unencrypted): {exc}") from None
    if not isinstance(key, PrivateKey):
        raise KeyFileError(f"unsupported private key type {type(key).__name__}")
    return key


def load_public_key(source: str | Path | bytes) -> PublicKey:
    """A PEM public key, RSA public key, certificate, or private key (its public half)."""
    pem = _pem(source)
    key: Any
    if b"-----BEGIN CERTIFICATE-----" in pem:
        try:
            key = x509.load_pem_x509_certificate(pem).public_key()
        except ValueError as exc:
            raise KeyFileError(f"not a PEM certificate: {exc}") from None
    elif b"PRIVATE KEY-----" in pem:
        key = load_private_key(pem).public_key()
    else:
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, PublicKey):
        raise KeyFileError(f"unsupported public key type {type(key).__name__}")
    return key


def default_algorithm(key: PrivateKey | PublicKey) -> str:
    """RS256 for RSA, ES256/384/512 by curve, EdDSA for Ed25519/Ed448."""
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "RS256"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        for alg, curve in _EC_CURVES.items():
            if isinstance(key.curve, curve):
                return alg
        raise KeyFileError(f"unsupported EC curve {key.curve.name}")
    return "EdDSA"


def check_algorithm(alg: str, key: PrivateKey | PublicKey) -> str | None:
    """Why ``alg`` cannot be used with ``key`` (None when it can)."""
    if alg in REFUSED_ALGORITHMS:
        return (f"{alg} is refused ({REFUSED_ALGORITHMS[alg]}): use an asymmetric "
                f"algorithm ({', '.join(SIGNING_ALGORITHMS)})")
    if alg not in SIGNING_ALGORITHMS:
        return f"unsupported signing algorithm {alg!r} (use {', '.join(SIGNING_ALGORITHMS)})"
    if alg[:2] in ("RS", "PS"):
        ok = isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey))
    elif alg[:2] == "ES":
        ok = (isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey))
              and isinstance(key.curve, _EC_CURVES[alg]))
    else:
        ok = isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey,
                              ed448.Ed448PrivateKey, ed448.Ed448PublicKey))
    if not ok:
        return f"algorithm {alg} does not match the key ({_describe(key)})"
    return None


def _describe(key: PrivateKey | PublicKey) -> str:
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return f"RSA {key.key_size} bits"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return f"EC {key.curve.name}"
    return "Ed25519" if isinstance(key, (ed25519.Ed25519PrivateKey,
                                         ed25519.Ed25519PublicKey)) else "Ed448"


def jws_algorithm(alg: str) -> Any:
    return get_default_algorithms()[alg]


# -- signing ----------------------------------------------------------------------------------


def hash_bundle_files(files: Mapping[str, bytes], algorithm: str = DEFAULT_HASH
                      ) -> list[FileInfo]:
    """The payload's file list: every file except ``.signatures.json``, in name order."""
    return [
        FileInfo(name, file_digest(name, files[name], algorithm), algorithm)
        for name in sorted(files, key=lambda n: n.encode("utf-8"))
        if name != SIGNATURES
    ]


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def sign_payload(payload: bytes, key: PrivateKey, alg: str, keyid: str | None) -> str:
    """A compact JWS over ``payload`` with header ``{"alg", "kid"?}``."""
    problem = check_algorithm(alg, key)
    if problem:
        raise KeyFileError(problem)
    header: dict[str, str] = {"alg": alg}
    if keyid:
        header["kid"] = keyid
    signing_input = f"{b64url_encode(_json(header))}.{b64url_encode(payload)}"
    signature = jws_algorithm(alg).sign(signing_input.encode("ascii"), key)
    return f"{signing_input}.{b64url_encode(signature)}"


def sign_bundle_files(
    files: Mapping[str, bytes],
    key: PrivateKey,
    alg: str | None = None,
    *,
    keyid: str | None = DEFAULT_KEY_ID,
    claims: Mapping[str, Any] | None = None,
) -> str:
    """The JWS for a bundle's files (as ``opa build --signing-key`` makes it)."""
    alg = alg or default_algorithm(key)
    payload: dict[str, Any] = {"files": [f.to_json() for f in hash_bundle_files(files)]}
    if claims:
        if "files" in claims:
            raise ValueError("the claims file must not set 'files'")
        payload.update(claims)
    elif keyid:
        payload["keyid"] = keyid  # deprecated claim, kept for older OPA verifiers
    ordered = {k: payload[k] for k in sorted(payload)}
    return sign_payload(_json(ordered), key, alg, keyid)


def signatures_json(token: str) -> bytes:
    """The ``.signatures.json`` file holding one token (OPA's layout)."""
    return json.dumps({"signatures": [token]}, indent=1).encode("utf-8") + b"\n"
