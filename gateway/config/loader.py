"""Load and validate the gateway's YAML configuration (DESIGN §3).

Every error names the file, the 1-based line and the dotted key so an operator can go
straight to the mistake. Nothing here ever puts a secret's value into a message.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarbool import ScalarBoolean

from gateway.config.model import (
    APPROVAL_STORES,
    JWT_ALGORITHMS,
    LOG_LEVELS,
    MAX_WORKERS,
    SAFETY_NET_MODES,
    UPSTREAM_TLS_MODES,
    AdminConfig,
    ApprovalsConfig,
    AuditConfig,
    ClaimValue,
    ConnectionConfig,
    GatewayConfig,
    IdentityConfig,
    ListenConfig,
    LogConfig,
    MaskingConfig,
    Network,
    PolicyConfig,
    ProviderConfig,
    Secret,
    TlsFiles,
    WebhookConfig,
)
from gateway.config.tls import load_server_pair
from gateway.masking.methods import MIN_KEY_BYTES

__all__ = ["ConfigError", "load_audit_config", "load_config"]

T = TypeVar("T")


class ConfigError(Exception):
    """A configuration mistake, located by file, line (1-based) and dotted key."""

    def __init__(self, file: str, line: int | None, key: str, message: str) -> None:
        # Passing every field to Exception keeps the error picklable (worker processes).
        super().__init__(file, line, key, message)
        self.file = file
        self.line = line
        self.key = key
        self.message = message

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class _Invalid(Exception):
    """Raised by the value parsers below; the caller adds file, line and key."""


# --- value parsers: pure functions of one YAML value -------------------------------


def _kind(value: object) -> str:
    """Describe a value's YAML type without echoing it (it may be a secret)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, Sequence):
        return "a list"
    return type(value).__name__


def _show(value: object) -> str:
    """Describe a non-secret value, quoting scalars so typos are visible."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return f"{_kind(value)} {value!r}"
    return _kind(value)


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {_show(value)}")
    if not value.strip():
        raise _Invalid("expected a non-empty string")
    return str(value)


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_show(value)}")
    return bool(value)


def _integer(low: int, high: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        # YAML booleans are ints in Python; "workers: yes" must not mean 1.
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Invalid(f"expected an integer, got {_show(value)}")
        if not low <= value <= high:
            raise _Invalid(f"expected an integer from {low} to {high}, got {value}")
        return int(value)

    return parse


def _choice(*options: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if not isinstance(value, str) or value not in options:
            raise _Invalid(f"expected one of {', '.join(options)}; got {_show(value)}")
        return str(value)

    return parse


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)?", re.ASCII)
_SECONDS_PER_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def _duration(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        seconds = float(match[1]) * _SECONDS_PER_UNIT[match[2]]
    else:
        raise _Invalid(
            f'expected a duration (seconds, or "500ms", "30s", "5m", "1h"), got {_show(value)}'
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise _Invalid(f"expected a finite, non-negative duration, got {_show(value)}")
    return seconds


def _positive_duration(value: object) -> float:
    seconds = _duration(value)
    if seconds == 0:
        raise _Invalid("expected a duration greater than zero")
    return seconds


_SIZE = re.compile(r"(\d+)\s*(KiB|MiB|GiB)?", re.ASCII)
_BYTES_PER_UNIT = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, None: 1}


def _size(value: object) -> int:
    if isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
        value = int(match[1]) * _BYTES_PER_UNIT[match[2]]
    elif not isinstance(value, int) or isinstance(value, bool):
        raise _Invalid(f'expected a size in bytes (or "64MiB"), got {_show(value)}')
    # The wire protocol's length field is a signed 32-bit integer.
    return _integer(1024, 2**31 - 1)(value)


def _address(min_port: int) -> Callable[[object], tuple[str, int]]:
    def parse(value: object) -> tuple[str, int]:
        if not isinstance(value, str):
            raise _Invalid(f'expected "host:port", got {_show(value)}')
        host, sep, port_text = value.strip().rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise _Invalid(f"not an IPv6 address in brackets: {value!r}") from None
        elif ":" in host:
            raise _Invalid(f'put IPv6 addresses in brackets, e.g. "[::1]:6432"; got {value!r}')
        if not sep or not host or not (port_text.isascii() and port_text.isdigit()):
            raise _Invalid(f'expected "host:port" (IPv6 as "[::1]:6432"), got {value!r}')
        port = int(port_text)
        if not min_port <= port <= 65535:
            raise _Invalid(f"port must be from {min_port} to 65535, got {port}")
        return host, port

    return parse


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _cidr(value: object) -> Network:
    if not isinstance(value, str):
        raise _Invalid(f'expected a CIDR string such as "10.0.0.0/8", got {_show(value)}')
    try:
        # strict: "10.0.0.1/8" is almost always a typo for a different network.
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        raise _Invalid(f"invalid CIDR: {exc}") from None


def _algorithm(value: object) -> str:
    name = _string(value)
    if name.lower() == "none":
        raise _Invalid('algorithm "none" accepts unsigned tokens and is never allowed')
    if name.upper().startswith("HS"):
        raise _Invalid(
            f"{name} is a shared-secret (HMAC) algorithm and is not allowed; "
            f"use an asymmetric algorithm: {', '.join(JWT_ALGORITHMS)}"
        )
    if name not in JWT_ALGORITHMS:
        raise _Invalid(f"unknown algorithm {name!r}; allowed: {', '.join(JWT_ALGORITHMS)}")
    return name


def _claim_path(value: object) -> str:
    path = _string(value)
    if any(not part for part in path.split(".")):
        raise _Invalid(
            f"expected a claim name or dotted path like realm_access.roles, got {path!r}"
        )
    return path


def _jwks_url(value: object) -> str:
    url = _string(value)
    parts = urlsplit(url)
    if not parts.hostname or parts.scheme not in ("https", "http"):
        raise _Invalid(f"expected an https:// URL, got {url!r}")
    # Whoever controls the JWKS can mint any identity, so it must not travel in clear
    # text except to a local test issuer.
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise _Invalid("JWKS must be fetched over https (http only for loopback hosts)")
    return url


# --- located access to YAML mappings ----------------------------------------------

_REQUIRED: Any = object()


@dataclass(frozen=True)
class _Source:
    file: str
    base: Path
    env: Mapping[str, str]

    def error(self, line: int | None, key: str, message: str) -> ConfigError:
        return ConfigError(self.file, line, key, message)

    def resolve(self, text: str) -> Path:
        path = Path(text)
        return path if path.is_absolute() else self.base / path


def _position(node: CommentedMap | CommentedSeq, kind: str, index: object, default: int) -> int:
    try:
        return int(getattr(node.lc, kind)(index)[0]) + 1
    except (KeyError, IndexError, TypeError):
        # Keys pulled in by a YAML merge ("<<") carry no position of their own.
        return default


class _Map:
    """One YAML mapping being read: knows its dotted path and line, rejects unknown keys."""

    def __init__(
        self,
        src: _Source,
        data: object,
        path: str,
        line: int,
        allowed: Sequence[str] | None,
        expected: str = "a mapping",
    ) -> None:
        if not isinstance(data, CommentedMap):
            raise src.error(line, path, f"expected {expected}, got {_kind(data)}")
        self.src, self.data, self.path, self.line = src, data, path, line
        for key in data:
            if allowed is None:
                if not isinstance(key, str) or not key.strip():
                    raise self.fail(key, "names must be non-empty strings")
            elif key not in allowed:
                raise self.fail(key, _unknown_key_message(key, allowed))

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def child(self, key: object) -> str:
        return f"{self.path}.{key}" if self.path else str(key)

    def line_of(self, key: object) -> int:
        return _position(self.data, "key", key, self.line)

    def fail(self, key: object, message: str) -> ConfigError:
        return self.src.error(self.line_of(key), self.child(key), message)

    def missing(self, key: str, message: str | None = None) -> ConfigError:
        # The key is absent, so the best line is the parent's.
        return self.src.error(
            self.line, self.child(key), message or f"missing required key {key!r}"
        )

    def get(self, key: str, parse: Callable[[object], T], default: Any = _REQUIRED) -> T:
        if key not in self.data:
            if default is _REQUIRED:
                raise self.missing(key)
            return default
        try:
            return parse(self.data[key])
        except _Invalid as exc:
            raise self.fail(key, str(exc)) from None

    def map(self, key: str, allowed: Sequence[str] | None, expected: str = "a mapping") -> _Map:
        if key not in self.data:
            raise self.missing(key)
        return _Map(self.src, self.data[key], self.child(key), self.line_of(key), allowed, expected)

    def optional_map(self, key: str, allowed: Sequence[str] | None) -> _Map | None:
        # An empty section ("policy:" with nothing under it) reads as absent.
        return self.map(key, allowed) if self.data.get(key) is not None else None

    def section(self, key: str, allowed: Sequence[str] | None) -> _Map:
        """Like optional_map, but an absent section reads as an empty one (all defaults)."""
        found = self.optional_map(key, allowed)
        if found is not None:
            return found
        return _Map(self.src, CommentedMap(), self.child(key), self.line, allowed)

    def names(self) -> Iterator[str]:
        return iter(self.data)

    def items(self, key: str, parse: Callable[[object], T]) -> tuple[T, ...]:
        parsed = []
        for value, line, path in self._entries(key):
            try:
                parsed.append(parse(value))
            except _Invalid as exc:
                raise self.src.error(line, path, str(exc)) from None
        return tuple(parsed)

    def maps(self, key: str, allowed: Sequence[str]) -> list[_Map]:
        return [
            _Map(self.src, value, path, line, allowed) for value, line, path in self._entries(key)
        ]

    def _entries(self, key: str) -> list[tuple[object, int, str]]:
        """A non-empty list's items, each with its own line and "key[index]" path."""
        if key not in self.data:
            raise self.missing(key)
        seq = self.data[key]
        if not isinstance(seq, CommentedSeq):
            raise self.fail(key, f"expected a list, got {_kind(seq)}")
        if not seq:
            raise self.fail(key, "expected a non-empty list")
        line = self.line_of(key)
        return [
            (value, _position(seq, "item", index, line), f"{self.child(key)}[{index}]")
            for index, value in enumerate(seq)
        ]

    def file(self, key: str, *, must_exist: bool) -> Path:
        path = self.src.resolve(self.get(key, _string))
        if must_exist:
            problem = _file_problem(path)
            if problem:
                raise self.fail(key, problem)
        return path

    def file_ref(self, key: str, *, must_exist: bool, plain: bool = False) -> Path:
        """Read ``{file: PATH}`` (or, with ``plain``, a bare path string)."""
        if plain and isinstance(self.data.get(key), str):
            return self.file(key, must_exist=must_exist)
        ref = self.map(key, ("file",), expected="{file: PATH}")
        return ref.file("file", must_exist=must_exist)

    def secret(self, key: str) -> Secret | None:
        if key not in self.data:
            return None
        value = self.data[key]
        if isinstance(value, str):
            raise self.fail(key, "inline secrets are not allowed; use {env: NAME} or {file: PATH}")
        ref = self.map(key, ("env", "file"), expected="{env: NAME} or {file: PATH}")
        if len(ref.data) != 1:
            raise self.fail(key, "expected exactly one of {env: NAME} or {file: PATH}")
        if "env" in ref:
            name = ref.get("env", _string)
            text = self.src.env.get(name)
            if text is None:
                raise ref.fail("env", f"environment variable {name} is not set")
        else:
            path = ref.file("file", must_exist=True)
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeError) as exc:
                raise ref.fail("file", f"cannot read secret file {path}: {_reason(exc)}") from None
            # Editors and `echo` add one trailing newline; it is never part of the secret.
            text = text.removesuffix("\r\n") if text.endswith("\r\n") else text.removesuffix("\n")
        if not text:
            raise self.fail(key, "the secret is empty")
        return Secret(text)


def _unknown_key_message(key: object, allowed: Sequence[str]) -> str:
    message = f"unknown key {key!r}"
    close = difflib.get_close_matches(str(key), allowed, n=1)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    return f"{message}; allowed keys: {', '.join(allowed)}"


def _file_problem(path: Path) -> str | None:
    if not path.exists():
        return f"file not found: {path}"
    if not path.is_file():
        return f"not a regular file: {path}"
    if not os.access(path, os.R_OK):
        return f"file is not readable: {path}"
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnicodeError):
        return "not valid UTF-8"
    return getattr(exc, "strerror", None) or type(exc).__name__


# --- sections ------------------------------------------------------------------------


def _loadable(m: _Map, tls: TlsFiles) -> None:
    """A certificate and key a server can serve with (checked now: a mistake in them is
    the config's, not a traceback at start)."""
    try:
        load_server_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), tls.cert, tls.key)
    except (ssl.SSLError, OSError, ValueError) as exc:
        mismatch = "KEY_VALUES_MISMATCH" in str(exc)
        raise m.fail("key" if mismatch else "cert", "the key does not belong to the "
                     "certificate" if mismatch else "cannot load the certificate and key "
                     f"(PEM, the key not encrypted): {exc}") from None


def _listen(m: _Map) -> ListenConfig:
    host, port = m.get("address", _address(min_port=0))
    tls_map = m.optional_map("tls", ("cert", "key"))
    tls = None
    if tls_map is not None:
        tls = TlsFiles(
            cert=tls_map.file_ref("cert", must_exist=True, plain=True),
            key=tls_map.file_ref("key", must_exist=True, plain=True),
        )
        _loadable(tls_map, tls)
    allow_plaintext = m.get("allow_plaintext", _boolean, False)
    non_loopback_ok = m.get("allow_plaintext_non_loopback", _boolean, False)
    if tls is None and not allow_plaintext:
        raise m.missing(
            "tls",
            "no TLS configured; set listen.tls or allow_plaintext: true for loopback development",
        )
    # The password is a bearer JWT: plaintext on a real network hands it to anyone listening.
    if allow_plaintext and not non_loopback_ok and not _is_loopback(host):
        raise m.fail(
            "allow_plaintext",
            f"plaintext is only allowed on a loopback address, not {host}; "
            "set allow_plaintext_non_loopback: true to override",
        )
    return ListenConfig(
        host=host,
        port=port,
        tls=tls,
        allow_plaintext=allow_plaintext,
        workers=m.get("workers", _integer(1, MAX_WORKERS), 1),
        max_connections=m.get("max_connections", _integer(1, 1_000_000), 1000),
        startup_timeout=m.get("startup_timeout", _positive_duration, 10.0),
        drain_timeout=m.get("drain_timeout", _duration, 30.0),
        max_message_size=m.get("max_message_size", _size, ListenConfig.max_message_size),
    )


_LISTEN_KEYS = (
    "address", "tls", "allow_plaintext", "allow_plaintext_non_loopback", "workers",
    "max_connections", "startup_timeout", "drain_timeout", "max_message_size",
)  # fmt: skip

_PROVIDER_KEYS = (
    "issuer", "audience", "jwks", "groups_claim", "subject_claim", "leeway",
    "algorithms", "jwks_refresh_min_interval", "required_claims", "groups_prefix",
)  # fmt: skip


def _provider(m: _Map) -> ProviderConfig:
    issuer = m.get("issuer", _string)
    if isinstance(m.data.get("audience"), str):
        audiences: tuple[str, ...] = (m.get("audience", _string),)
    else:
        audiences = m.items("audience", _string)
    jwks = m.map("jwks", ("file", "url"), expected="{file: PATH} or {url: URL}")
    if len(jwks.data) != 1:
        raise m.fail("jwks", "expected exactly one of {file: PATH} or {url: URL}")
    algorithms = m.items("algorithms", _algorithm) if "algorithms" in m else None
    return ProviderConfig(
        issuer=issuer,
        audiences=audiences,
        jwks_file=jwks.file("file", must_exist=True) if "file" in jwks else None,
        jwks_url=jwks.get("url", _jwks_url) if "url" in jwks else None,
        groups_claim=m.get("groups_claim", _claim_path, "groups"),
        subject_claim=m.get("subject_claim", _claim_path, "sub"),
        leeway=m.get("leeway", _duration, 30.0),
        algorithms=algorithms,
        jwks_refresh_min_interval=m.get("jwks_refresh_min_interval", _duration, 30.0),
        required_claims=_required_claims(m),
        groups_prefix=m.get("groups_prefix", _groups_prefix, ""),
    )


def _claim_value(value: object) -> ClaimValue:
    # (a float never compares reliably with a JSON number, and a mapping or null as a
    # requirement is more likely a YAML slip than meant)
    # Plain types: ruamel reads an anchored or underscored scalar as its own subclass
    # (ScalarBoolean is an int, not a bool), which a claim's type would never match.
    if isinstance(value, bool | ScalarBoolean):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        return str(value)
    raise _Invalid(f"expected a string, integer or boolean claim value, got {_show(value)}")


def _required_claims(m: _Map) -> tuple[tuple[str, tuple[ClaimValue, ...]], ...]:
    claims = m.optional_map("required_claims", None)
    if claims is None:
        return ()
    required = []
    for name in claims.names():
        try:
            path = _claim_path(name)
        except _Invalid as exc:
            raise claims.fail(name, str(exc)) from None
        if isinstance(claims.data[name], CommentedSeq):
            values = claims.items(name, _claim_value)
        else:
            values = (claims.get(name, _claim_value),)
        required.append((path, values))
    return tuple(required)


def _groups_prefix(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {_show(value)}")
    if len(value) > 64 or not value.isprintable():
        raise _Invalid("expected at most 64 printable characters")
    return value


def _identity(m: _Map) -> IdentityConfig:
    providers: list[ProviderConfig] = []
    for item in m.maps("providers", _PROVIDER_KEYS):
        provider = _provider(item)
        if any(p.issuer == provider.issuer for p in providers):
            raise item.fail("issuer", f"issuer {provider.issuer!r} is configured twice")
        providers.append(provider)
    return IdentityConfig(providers=tuple(providers))


_CONNECTION_KEYS = (
    "host", "port", "database", "user", "password", "tls", "ca", "connect_timeout",
)  # fmt: skip


def _connection(name: str, m: _Map) -> ConnectionConfig:
    tls = m.get("tls", _choice(*UPSTREAM_TLS_MODES), "prefer")
    ca_file = None
    if "ca" in m:
        if tls != "verify-full":
            raise m.fail("ca", "ca is only used with tls: verify-full")
        ca_file = m.file_ref("ca", must_exist=False)
    return ConnectionConfig(
        name=name,
        host=m.get("host", _string),
        port=m.get("port", _integer(1, 65535), 5432),
        database=m.get("database", _string, name),
        user=m.get("user", _string),
        password=m.secret("password"),
        tls=tls,
        ca_file=ca_file,
        connect_timeout=m.get("connect_timeout", _positive_duration, 10.0),
    )


def _connections(m: _Map) -> dict[str, ConnectionConfig]:
    if not m.data:
        raise m.src.error(m.line, m.path, "expected at least one connection")
    return {name: _connection(name, m.map(name, _CONNECTION_KEYS)) for name in m.names()}


def _policy(m: _Map) -> PolicyConfig:
    # enforce: false is the explicit, logged opt-out (relay benchmarks, migrations); without
    # a policy section at all the gateway refuses every statement.
    if not m.get("enforce", _boolean, True):
        return PolicyConfig("", None, False, enforce=False)
    bundle = m.get("bundle", _string)
    if not re.match(r"https?://", bundle, re.IGNORECASE):
        bundle = str(m.src.resolve(bundle))
    verification_key = None
    if "verification_key" in m:
        verification_key = m.file_ref("verification_key", must_exist=True)
    allow_unsigned = m.get("allow_unsigned", _boolean, False)
    if verification_key is None and not allow_unsigned:
        raise m.missing(
            "verification_key",
            "bundles must be verified: set verification_key: {file: PATH} "
            "(or allow_unsigned: true, for development only)",
        )
    state_dir = m.file("state_dir", must_exist=False) if "state_dir" in m else None
    return PolicyConfig(
        bundle, verification_key, allow_unsigned,
        keyid=m.get("keyid", _string, "default"),
        scope=m.get("scope", _string, ""),
        state_dir=state_dir,
        poll_interval=m.get("poll_interval", _duration, 10.0),
        run_tests=m.get("run_tests", _boolean, False),
        max_statement_size=m.get("max_statement_size", _size, PolicyConfig.max_statement_size),
    )


_AUDIT_KEYS = ("dir", "signing_key", "sink", "instance_id", "durability", "checkpoint_every",
               "checkpoint_interval", "segment_size", "segment_age", "retry_interval",
               "max_backlog", "postgres")


def _audit(m: _Map) -> AuditConfig:
    signing_key = None
    if "signing_key" in m:
        signing_key = m.file_ref("signing_key", must_exist=False)
    sink = m.get("sink", _choice("file", "postgres"), "file")
    pg = m.optional_map("postgres", ("dsn", "table"))
    dsn = pg.secret("dsn") if pg is not None else None
    if sink == "postgres" and dsn is None:
        raise m.missing("postgres", "sink: postgres needs postgres: {dsn: {env: NAME}}")
    return AuditConfig(
        dir=m.file("dir", must_exist=False),
        signing_key=signing_key,
        sink=sink,
        instance_id=m.get("instance_id", _string, None),
        durability=m.get("durability", _choice("os", "fsync"), "os"),
        checkpoint_every=m.get("checkpoint_every", _integer(1, 10_000_000), 10_000),
        checkpoint_seconds=m.get("checkpoint_interval", _positive_duration, 60.0),
        segment_bytes=m.get("segment_size", _size, 64 * 1024 * 1024),
        segment_seconds=m.get("segment_age", _positive_duration, 86_400.0),
        retry_seconds=m.get("retry_interval", _positive_duration, 1.0),
        max_backlog=m.get("max_backlog", _integer(100, 100_000_000), 100_000),
        postgres_dsn=dsn,
        postgres_table=(pg.get("table", _string, "pgwarden_audit") if pg is not None
                        else "pgwarden_audit"),
    )


def _masking(m: _Map) -> MaskingConfig:
    hash_key = m.secret("hash_key")
    if hash_key is not None and len(hash_key.reveal().encode()) < MIN_KEY_BYTES:
        raise m.fail("hash_key", f"the hash mask key must be at least {MIN_KEY_BYTES} bytes")
    return MaskingConfig(hash_key=hash_key,
                         safety_net=m.get("safety_net", _choice(*SAFETY_NET_MODES), "mask"))


_APPROVALS_KEYS = ("timeout", "store", "path", "dsn", "table_prefix", "require_reason",
                   "webhook")
_ADMIN_KEYS = ("grpc", "http", "tls", "admin_groups")
_TABLE_PREFIX = re.compile(r"[a-z_][a-z0-9_]{0,40}")


def _webhook(m: _Map) -> WebhookConfig:
    url = m.get("url", _string)
    if not re.match(r"https?://", url, re.IGNORECASE):
        raise m.fail("url", f"expected an http:// or https:// URL, got {url!r}")
    return WebhookConfig(url=url, secret=m.secret("secret"),
                         timeout=m.get("timeout", _positive_duration, 5.0),
                         retries=m.get("retries", _integer(0, 10), 3))


def _approvals(m: _Map) -> ApprovalsConfig:
    store = m.get("store", _choice(*APPROVAL_STORES), "sqlite")
    dsn = m.secret("dsn")
    if store == "postgres" and dsn is None:
        raise m.missing("dsn", "store: postgres needs dsn: {env: NAME} or {file: PATH}")
    if store != "postgres" and dsn is not None:
        raise m.fail("dsn", "dsn is only used with store: postgres")
    if store != "sqlite" and "path" in m:
        raise m.fail("path", "path is only used with store: sqlite")
    prefix = m.get("table_prefix", _string, "pgwarden_")
    if not _TABLE_PREFIX.fullmatch(prefix):
        raise m.fail("table_prefix", "use lowercase letters, digits and underscores")
    webhook = m.optional_map("webhook", ("url", "secret", "timeout", "retries"))
    return ApprovalsConfig(
        timeout=m.get("timeout", _positive_duration, 300.0),
        store=store,
        path=m.file("path", must_exist=False) if "path" in m else None,
        dsn=dsn,
        table_prefix=prefix,
        require_reason=m.get("require_reason", _boolean, True),
        webhook=_webhook(webhook) if webhook is not None else None,
    )


def _admin(m: _Map) -> AdminConfig:
    tls_map = m.optional_map("tls", ("cert", "key"))
    tls = None
    if tls_map is not None:
        tls = TlsFiles(
            cert=tls_map.file_ref("cert", must_exist=True, plain=True),
            key=tls_map.file_ref("key", must_exist=True, plain=True),
        )
        _loadable(tls_map, tls)
    return AdminConfig(
        grpc=m.get("grpc", _address(min_port=0), None),
        http=m.get("http", _address(min_port=0), None),
        tls=tls,
        admin_groups=m.items("admin_groups", _string) if "admin_groups" in m else (),
    )


def _networks(m: _Map) -> dict[str, tuple[Network, ...]]:
    return {name: m.items(name, _cidr) for name in m.names()}


_TOP_KEYS = (
    "listen", "identity", "connections", "policy", "audit", "approvals", "admin",
    "networks", "log", "masking",
)  # fmt: skip


def _read_yaml(file: str, source: Path) -> object:
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(file, None, "", "config file not found") from None
    except (OSError, UnicodeError) as exc:
        raise ConfigError(file, None, "", f"cannot read config file: {_reason(exc)}") from None
    try:
        return YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        if isinstance(exc, DuplicateKeyError):
            # ruamel's message quotes both values, which could be an (invalid) inline secret.
            found = re.search(r'duplicate key "([^"]*)"', str(exc.problem))
            message = f"duplicate key {found[1]!r}" if found else "duplicate key"
        else:
            message = " ".join(part for part in (exc.problem, exc.context) if part)
        raise ConfigError(file, line, "", f"YAML syntax error: {message}") from None
    except YAMLError as exc:
        raise ConfigError(file, None, "", f"YAML error: {exc}") from None


def _root(path: str | Path, env: Mapping[str, str] | None) -> _Map:
    """A config file's top-level mapping, read and checked for its keys."""
    file = str(path)
    source = Path(os.path.abspath(path))
    src = _Source(file=file, base=source.parent, env=os.environ if env is None else env)
    data = _read_yaml(file, source)
    if data is None:
        raise ConfigError(file, None, "", "config file is empty")
    return _Map(src, data, "", 1, _TOP_KEYS, expected="a mapping at the top level")


def load_audit_config(path: str | Path, env: Mapping[str, str] | None = None
                      ) -> AuditConfig | None:
    """The audit section of a gateway config file alone (None: it has none), for the
    audit readers: an auditor's shell holds none of the gateway's own secrets (upstream
    passwords, the masking key), which :func:`load_config` resolves. Raises ConfigError."""
    audit = _root(path, env).optional_map("audit", _AUDIT_KEYS)
    return _audit(audit) if audit is not None else None


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read, validate and resolve a gateway config file; raise ConfigError on any mistake."""
    root = _root(path, env)

    policy = root.optional_map(
        "policy", ("bundle", "verification_key", "allow_unsigned", "enforce", "keyid", "scope",
                   "state_dir", "poll_interval", "run_tests", "max_statement_size"))
    audit = root.optional_map("audit", _AUDIT_KEYS)
    return GatewayConfig(
        source=Path(os.path.abspath(path)),
        listen=_listen(root.map("listen", _LISTEN_KEYS)),
        identity=_identity(root.map("identity", ("providers",))),
        connections=_connections(root.map("connections", None)),
        policy=_policy(policy) if policy is not None else None,
        audit=_audit(audit) if audit is not None else None,
        approvals=_approvals(root.section("approvals", _APPROVALS_KEYS)),
        admin=_admin(root.section("admin", _ADMIN_KEYS)),
        networks=_networks(root.section("networks", None)),
        log=LogConfig(
            level=root.section("log", ("level",)).get("level", _choice(*LOG_LEVELS), "info")
        ),
        masking=_masking(root.section("masking", ("hash_key", "safety_net"))),
    )
