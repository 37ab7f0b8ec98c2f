"""Ed25519 checkpoints: who signs the chain head, and how a signature is checked.

A checkpoint is an ordinary chained record (``type: "checkpoint"``) that names the head
it covers (``head_seq``, ``head_hash``: the record before it) and the signing key
(``key_id``: the first 16 hex characters of sha256 over the 32-byte raw public key). Its
``signature`` (base64url, no padding) is Ed25519 over the canonical JSON of the
checkpoint record without ``hash`` and ``signature``; the record's ``hash`` then covers
the signature too. Because every record hashes its predecessor, one valid signature
vouches for every record up to ``head_seq``.

Keys are PEM files: PKCS#8 private key (``-----BEGIN PRIVATE KEY-----``) for the gateway,
SubjectPublicKeyInfo public key (``-----BEGIN PUBLIC KEY-----``) for ``audit verify``.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .canonical import canonical_bytes

__all__ = [
    "AuditKeyError",
    "Signer",
    "generate_keypair",
    "key_id",
    "load_public_key",
    "signing_payload",
    "verify_checkpoint_signature",
]


class AuditKeyError(ValueError):
    """A key file that is missing, unreadable or not an Ed25519 key."""


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signing_payload(record: Mapping[str, Any]) -> bytes:
    """What a checkpoint's signature covers: its canonical JSON minus hash and signature."""
    return canonical_bytes({k: v for k, v in record.items() if k not in ("hash", "signature")})


class Signer:
    """The gateway's audit signing key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    @classmethod
    def from_pem_file(cls, path: str | os.PathLike[str]) -> Signer:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise AuditKeyError(
                f"{path}: cannot read the audit signing key: {exc.strerror}") from None
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise AuditKeyError(f"{path}: not a PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise AuditKeyError(f"{path}: the audit signing key must be Ed25519")
        return cls(key)

    def sign(self, payload: bytes) -> str:
        return _b64(self._key.sign(payload))


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (a private key PEM is accepted too)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AuditKeyError(f"{path}: cannot read the key: {exc.strerror}") from None
    key: Any
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError) as exc:
            raise AuditKeyError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditKeyError(f"{path}: not an Ed25519 key")
    return key


def verify_checkpoint_signature(record: Mapping[str, Any], public_key: Ed25519PublicKey) -> bool:
    sig = record.get("signature")
    if not isinstance(sig, str):
        return False
    try:
        public_key.verify(_unb64(sig), signing_payload(record))
    except (InvalidSignature, ValueError):
        return False
    return True


def generate_keypair(private_path: str | os.PathLike[str],
                     public_path: str | os.PathLike[str]) -> str:
    """Write a new Ed25519 key pair (private key mode 0600); returns its key id."""
    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    private_path, public_path = Path(private_path), Path(public_path)
    # (the README's `keygen keys/audit-signing.pem ...` in a fresh directory)
    private_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(priv)
    public_path.write_bytes(pub)
    return key_id(key.public_key())
