"""Bundle verification, in OPA's order (``v1/bundle/verify.go``, ``bundle.go``).

1. ``.signatures.json``: a key configured but no file → error; a file but no key →
   error; it must hold exactly one compact JWS (no signing plugin).
2. The JWS: header and payload must decode; the key id the token names (header ``kid``,
   else the deprecated payload ``keyid``) must be the configured one (``default`` unless
   set; OPA's own CLI uses the same default). A token that names no key id is checked
   against the configured key. Stricter than OPA, which lets a configured key id
   override whatever the token names: here a mismatch is an error, so a bundle signed
   for another key is reported as such rather than as a bad signature.
3. The algorithm (header ``alg``, or the configured one, which must then match) must be
   an asymmetric one that fits the key; the signature must verify.
4. The configured scope (default empty) must equal the payload's ``scope``.
5. Every file of the bundle except ``.signatures.json`` (and files matching a configured
   ``exclude`` glob) must be listed with a matching hash; then every listed file must
   have been seen.

Every failure is a :class:`VerificationError` whose ``file`` names the entry at fault
(``.signatures.json`` for steps 1-4) and whose ``reason`` says what is wrong.
"""

from __future__ import annotations

import fnmatch
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.bundle.archive import SIGNATURES
from gateway.bundle.canonical import HASH_ALGORITHMS, CanonicalError, file_digest
from gateway.bundle.errors import VerificationError
from gateway.bundle.signing import (
    DEFAULT_KEY_ID,
    FileInfo,
    PublicKey,
    b64url_decode,
    check_algorithm,
    jws_algorithm,
)

__all__ = ["SignatureInfo", "VerificationConfig", "decode_token", "verify_bundle",
           "verify_token"]


@dataclass(frozen=True)
class VerificationConfig:
    key: PublicKey
    keyid: str = DEFAULT_KEY_ID
    scope: str = ""
    algorithm: str | None = None  # pin the algorithm (else the token's, if it fits the key)
    exclude: Sequence[str] = ()  # globs of files left out of verification (OPA exclude_files)


@dataclass(frozen=True)
class SignatureInfo:
    """What a (verified, or merely decoded) signature says."""

    algorithm: str
    keyid: str | None
    scope: str
    issuer: str | None
    issued_at: Any
    files: Mapping[str, FileInfo]
    claims: Mapping[str, Any] = field(repr=False)
    verified: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm, "keyid": self.keyid, "scope": self.scope,
                "iss": self.issuer, "iat": self.issued_at, "verified": self.verified}


def _fail(reason: str, file: str = SIGNATURES) -> VerificationError:
    return VerificationError(file, reason)


def _tokens(raw: bytes) -> list[str]:
    try:
        doc = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _fail(f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise _fail("must be a JSON object with a 'signatures' list")
    if doc.get("plugin"):
        raise _fail(f"signing plugin {doc['plugin']!r} is not supported")
    sigs = doc.get("signatures")
    if not sigs:
        raise _fail("missing JWT (expected exactly one)")
    if not isinstance(sigs, list) or not all(isinstance(s, str) for s in sigs):
        raise _fail("'signatures' must be a list of strings")
    if len(sigs) > 1:
        raise _fail("multiple JWTs not supported (expected exactly one)")
    return sigs


def decode_token(token: str) -> tuple[dict[str, Any], dict[str, Any], str, bytes]:
    """(header, payload, signing input, signature) without checking the signature."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise _fail(f"the token has {len(parts)} segments, a compact JWS has 3")
    docs: list[dict[str, Any]] = []
    for what, part in (("header", parts[0]), ("payload", parts[1])):
        try:
            doc = json.loads(b64url_decode(part))
        except (ValueError, UnicodeDecodeError) as exc:
            raise _fail(f"cannot decode the JWS {what}: {exc}") from None
        if not isinstance(doc, dict):
            raise _fail(f"the JWS {what} is not a JSON object")
        docs.append(doc)
    try:
        signature = b64url_decode(parts[2])
    except ValueError as exc:
        raise _fail(f"cannot decode the JWS signature: {exc}") from None
    return docs[0], docs[1], f"{parts[0]}.{parts[1]}", signature


def _str_claim(payload: Mapping[str, Any], name: str) -> str | None:
    value = payload.get(name)
    if value is not None and not isinstance(value, str):
        raise _fail(f"payload claim {name!r} must be a string")
    return value


def _files(payload: Mapping[str, Any]) -> dict[str, FileInfo]:
    listed = payload.get("files")
    if listed is None:
        listed = []
    if not isinstance(listed, list):
        raise _fail("payload 'files' must be a list of {name, hash, algorithm}")
    out: dict[str, FileInfo] = {}
    for item in listed:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) \
                or not isinstance(item.get("hash", ""), str) \
                or not isinstance(item.get("algorithm", ""), str):
            raise _fail("payload 'files' must be a list of {name, hash, algorithm}")
        name = item["name"].lstrip("/")
        if name in out:
            raise _fail(f"payload lists {name} twice")
        out[name] = FileInfo(name, item.get("hash", ""), item.get("algorithm", ""))
    return out


def signature_info(header: Mapping[str, Any], payload: Mapping[str, Any],
                   verified: bool) -> SignatureInfo:
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise _fail("header 'kid' must be a string")
    return SignatureInfo(
        algorithm=str(header.get("alg", "")),
        keyid=kid or _str_claim(payload, "keyid"),
        scope=_str_claim(payload, "scope") or "",
        issuer=_str_claim(payload, "iss"),
        issued_at=payload.get("iat"),
        files=_files(payload),
        claims=dict(payload),
        verified=verified,
    )


def verify_token(token: str, config: VerificationConfig) -> SignatureInfo:
    """Steps 2-4: key id, algorithm, signature, scope. Returns the listed files."""
    header, payload, signing_input, signature = decode_token(token)
    info = signature_info(header, payload, verified=False)
    if info.keyid and info.keyid != config.keyid:
        raise _fail(f"signed for key id {info.keyid!r}, but the verification key is "
                    f"configured as {config.keyid!r} (wrong key, or set keyid)")
    alg = info.algorithm
    if config.algorithm and alg != config.algorithm:
        raise _fail(f"signed with {alg or 'no algorithm'}, but {config.algorithm} "
                    "is configured")
    problem = check_algorithm(alg, config.key)
    if problem:
        raise _fail(problem)
    if not jws_algorithm(alg).verify(signing_input.encode("ascii"), config.key, signature):
        raise _fail("the signature does not verify with the configured key (signed by "
                    "another key, or the token was altered)")
    if info.scope != config.scope:
        raise _fail(f"scope mismatch: signed for scope {info.scope!r}, "
                    f"{config.scope!r} expected")
    return SignatureInfo(info.algorithm, info.keyid, info.scope, info.issuer,
                         info.issued_at, info.files, info.claims, verified=True)


def verify_bundle(files: Mapping[str, bytes], config: VerificationConfig | None
                  ) -> SignatureInfo | None:
    """Verify a bundle's files (``.signatures.json`` included). None: unsigned and no
    key configured (the caller decides whether unsigned bundles are acceptable)."""
    raw = files.get(SIGNATURES)
    if config is None:
        if raw is not None:
            raise _fail("the bundle is signed but no verification key is configured")
        return None
    if raw is None:
        raise _fail("missing: a verification key is configured, so the bundle must be "
                    "signed")
    tokens = _tokens(raw)
    info = verify_token(tokens[0], config)
    pending = dict(info.files)
    for name, content in files.items():
        if name == SIGNATURES:
            continue
        if any(fnmatch.fnmatchcase(name, pat) for pat in config.exclude):
            pending.pop(name, None)
            continue
        listed = pending.pop(name, None)
        if listed is None:
            raise _fail("not listed in the bundle signature (a file was added)", name)
        if not listed.algorithm:
            raise _fail("the signature gives no hash algorithm for this file", name)
        if listed.algorithm not in HASH_ALGORITHMS:
            raise _fail(f"unsupported hash algorithm {listed.algorithm!r} in the signature",
                        name)
        try:
            got = file_digest(name, content, listed.algorithm)
        except CanonicalError as exc:
            raise _fail(f"cannot hash this structured file: {exc}", name) from None
        if not hmac.compare_digest(got.encode(), listed.hash.lower().encode()):
            raise _fail(f"{listed.algorithm} digest mismatch (signed: {listed.hash}, "
                        f"file: {got}): the file was changed", name)
    if pending:
        missing = sorted(pending, key=lambda n: n.encode("utf-8"))
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise _fail(f"listed in the bundle signature but missing from the bundle{more}",
                    missing[0])
    return info
