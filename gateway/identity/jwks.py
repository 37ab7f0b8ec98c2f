"""Signing keys of one identity provider, from an RFC 7517 JWKS file or URL.

Keys are cached. An unknown `kid` (the usual sign of key rotation) triggers a
refetch, but at most once per `refresh_min_interval`: kids come from unverified
tokens, so without the limit anyone could make us hammer the IdP. A file
source also reloads as soon as the file changes. A failed reload keeps the
last good keys, so a flaky IdP does not lock everybody out.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.exceptions import PyJWTError

from gateway import logs

from .errors import AuthError

MAX_JWKS_BYTES = 1 << 20
FETCH_TIMEOUT = 5.0
# A URL source refetches keys older than this even when every kid is known,
# so keys the IdP withdrew stop being accepted.
DEFAULT_MAX_AGE = 3600.0
MIN_RSA_BITS = 2048

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_CURVE_ALGORITHM = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "secp256k1": "ES256K"}
OKP_SIGNING_CURVES = frozenset({"Ed25519", "Ed448"})
ASYMMETRIC_ALGORITHMS = RSA_ALGORITHMS | frozenset(EC_CURVE_ALGORITHM.values()) | {"EdDSA"}

# Private members are dropped before parsing: a JWKS that leaks them is a
# misconfiguration, but we must still only ever hold the public half.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


@dataclass(frozen=True)
class JwksKey:
    kid: str | None
    kty: str
    algorithms: frozenset[str]
    key: Any  # a cryptography public key object


@dataclass(frozen=True)
class KeySet:
    keys: tuple[JwksKey, ...]
    # The key for tokens without kid: set only when the JWKS holds exactly one
    # usable key, so there is no choice to make.
    sole: JwksKey | None = None

    def find(self, kid: str | None) -> tuple[JwksKey, ...]:
        """Keys matching a token's kid (several may share a kid, one per alg)."""
        if kid is None:
            return () if self.sole is None else (self.sole,)
        return tuple(k for k in self.keys if k.kid == kid)


def parse_jwks(raw: bytes | str | Mapping[str, Any],
               allowed_algorithms: Iterable[str] | None = None) -> KeySet:
    """Parse a JWKS document; unusable keys are skipped, a bad document raises ValueError."""
    doc = json.loads(raw) if isinstance(raw, bytes | str) else raw
    if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
        raise ValueError("not a JWKS document (expected an object with a 'keys' array)")
    allowed = None if allowed_algorithms is None else frozenset(allowed_algorithms)
    keys = [k for k in (_parse_key(entry, allowed) for entry in doc["keys"]) if k is not None]
    if len(keys) == 1:
        return KeySet(tuple(keys), sole=keys[0])
    # With several keys, a kid-less one could only be picked by guessing.
    return KeySet(tuple(k for k in keys if k.kid is not None))


def _parse_key(entry: Any, allowed: frozenset[str] | None) -> JwksKey | None:
    if not isinstance(entry, Mapping):
        return None
    kty, kid, alg = entry.get("kty"), entry.get("kid"), entry.get("alg")
    if kty not in ("RSA", "EC", "OKP"):
        return None  # "oct" (symmetric) keys must never verify tokens
    if entry.get("use", "sig") != "sig":
        return None
    key_ops = entry.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return None
    if (kid is not None and not isinstance(kid, str)) or (
            alg is not None and not isinstance(alg, str)):
        return None
    public = {k: v for k, v in entry.items() if k not in _PRIVATE_MEMBERS}
    key: Any  # RSA, EC or OKP: a cryptography public key
    try:
        if kty == "RSA":
            key = RSAAlgorithm.from_jwk(public)
            natural = RSA_ALGORITHMS
            if not isinstance(key, rsa.RSAPublicKey) or key.key_size < MIN_RSA_BITS:
                logs.warning("identity.jwks_key_ignored", kid=kid,
                             reason=f"RSA key shorter than {MIN_RSA_BITS} bits")
                return None
        elif kty == "EC":
            crv = public.get("crv")
            if crv not in EC_CURVE_ALGORITHM:
                return None
            key = ECAlgorithm.from_jwk(public)
            natural = frozenset({EC_CURVE_ALGORITHM[crv]})
        else:
            if public.get("crv") not in OKP_SIGNING_CURVES:
                return None  # X25519/X448 are key agreement, not signing
            key = OKPAlgorithm.from_jwk(public)
            natural = frozenset({"EdDSA"})
    except (PyJWTError, ValueError, TypeError, KeyError) as exc:
        logs.warning("identity.jwks_key_ignored", kid=kid, reason=type(exc).__name__)
        return None
    if alg is not None:
        if alg not in natural:
            logs.warning("identity.jwks_key_ignored", kid=kid,
                         reason=f"alg {alg} does not fit a {kty} key")
            return None
        natural = frozenset({alg})
    algorithms = natural if allowed is None else natural & allowed
    # Kept even when nothing is left: a token naming this kid then fails as
    # algorithm_not_allowed, which says more than unknown_key.
    return JwksKey(kid=kid, kty=kty, algorithms=algorithms, key=key)


class _NeedsIO(Exception):
    """The answer needs a read or a fetch; retry off the event loop."""


class JwksSource:
    def __init__(self, *, file: Path | str | None = None, url: str | None = None,
                 allowed_algorithms: Iterable[str] | None = None,
                 refresh_min_interval: float = 30.0, max_age: float = DEFAULT_MAX_AGE,
                 timeout: float = FETCH_TIMEOUT, max_bytes: int = MAX_JWKS_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if (file is None) == (url is None):
            raise ValueError("a JWKS source needs exactly one of file or url")
        if url is not None and urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ValueError("JWKS url must be http or https")
        self._file = None if file is None else Path(file)
        self._url = url
        self._allowed = None if allowed_algorithms is None else frozenset(allowed_algorithms)
        self._interval = refresh_min_interval
        self._max_age = max_age
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._keyset: KeySet | None = None
        self._loaded_at = 0.0
        self._last_attempt: float | None = None
        self._file_sig: tuple[int, int, int] | None = None

    @classmethod
    def for_provider(cls, provider: Any, *,
                     clock: Callable[[], float] = time.monotonic) -> JwksSource:
        """Build from a ProviderConfig (duck-typed)."""
        return cls(file=provider.jwks_file, url=provider.jwks_url,
                   allowed_algorithms=provider.algorithms,
                   refresh_min_interval=provider.jwks_refresh_min_interval, clock=clock)

    @property
    def location(self) -> str:
        return str(self._file) if self._file is not None else str(self._url)

    def lookup(self, kid: str | None) -> tuple[JwksKey, ...]:
        """Keys for `kid`; may block on a file read or an HTTP fetch."""
        return self._lookup(kid, allow_io=True)

    async def alookup(self, kid: str | None) -> tuple[JwksKey, ...]:
        """Like lookup, but any fetch runs in a worker thread."""
        try:
            return self._lookup(kid, allow_io=False)
        except _NeedsIO:
            return await asyncio.to_thread(self._lookup, kid, True)

    async def prime(self) -> bool:
        """Load now (e.g. at startup) so a bad source shows early; True if keys are held."""
        try:
            await self.alookup(None)
        except AuthError:
            pass
        return self._keyset is not None

    def _lookup(self, kid: str | None, allow_io: bool) -> tuple[JwksKey, ...]:
        keyset = self._keyset
        if self._wants_reload(keyset, kid):
            if not allow_io:
                raise _NeedsIO
            # Concurrent callers queue here; the rate limit, re-checked under
            # the lock, lets only the first one fetch.
            with self._lock:
                if self._wants_reload(self._keyset, kid):
                    self._reload()
                keyset = self._keyset
        if keyset is None:
            raise AuthError("jwks_unavailable")
        found = keyset.find(kid)
        if not found:
            raise AuthError("unknown_key")
        return found

    def _wants_reload(self, keyset: KeySet | None, kid: str | None) -> bool:
        if self._last_attempt is None:
            return True
        # A stat is local and cheap (fine even on the event loop), so a changed
        # file is noticed on the next token, without rate limiting.
        if self._file is not None and self._stat_file() != self._file_sig:
            return True
        if self._clock() - self._last_attempt < self._interval:
            return False
        if keyset is None or not keyset.find(kid):
            return True
        return self._url is not None and self._clock() - self._loaded_at >= self._max_age

    def _reload(self) -> None:
        started = self._clock()
        file_sig = self._stat_file() if self._file is not None else None
        try:
            raw = self._read_file(self._file) if self._file is not None else self._fetch_url(
                str(self._url))
            keyset = parse_jwks(raw, self._allowed)
        except (OSError, ValueError, RecursionError, http.client.HTTPException) as exc:
            logs.warning("identity.jwks_load_failed", source=self.location,
                         error=f"{type(exc).__name__}: {exc}"[:300])
        else:
            self._keyset = keyset
            self._loaded_at = started
            logs.info("identity.jwks_loaded", source=self.location, keys=len(keyset.keys))
        # Published last: lock-free readers that see the attempt recorded must
        # also see its outcome, or they would report keys as unavailable.
        self._file_sig = file_sig
        self._last_attempt = started

    def _stat_file(self) -> tuple[int, int, int] | None:
        assert self._file is not None
        try:
            st = os.stat(self._file)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read_file(self, path: Path) -> bytes:
        with open(path, "rb") as f:
            return bytes(self._capped(f.read(self._max_bytes + 1)))  # (bytes: no copy)

    def _fetch_url(self, url: str) -> bytes:
        # The scheme was checked to be http(s) in __init__.
        request = urllib.request.Request(url, headers={  # noqa: S310
            "Accept": "application/jwk-set+json, application/json",
            "User-Agent": "pgwarden",
        })
        # The timeout is the whole fetch's: a socket timeout alone bounds each read, and
        # a server that sends a byte a second would hold every login of its issuer (they
        # wait for this fetch) and the gateway's start for as long as it likes.
        deadline = time.monotonic() + self._timeout
        with urllib.request.urlopen(request, timeout=self._timeout) as resp:  # noqa: S310
            if resp.status != 200:
                raise ValueError(f"HTTP status {resp.status}")
            body = bytearray()
            while chunk := resp.read1(65536):
                body += chunk
                self._capped(body)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"JWKS not read within {self._timeout:g} s")
            return bytes(body)

    def _capped(self, data: bytes | bytearray) -> bytes | bytearray:
        if len(data) > self._max_bytes:
            raise ValueError(f"JWKS larger than {self._max_bytes} bytes")
        return data
