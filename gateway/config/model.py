"""Typed, immutable gateway configuration (DESIGN §3).

These objects are what the rest of the gateway sees; all validation happens in
``loader.py`` so that errors can name the file, line and key. Defaults here are the
documented defaults, which also lets tests build configs directly in code.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1024 * 1024

UPSTREAM_TLS_MODES = ("disable", "prefer", "require", "verify-full")
# A gateway cancel key names its worker in the top byte of its pid (proxy/cancel.py):
# workers 0 to 126.
MAX_WORKERS = 127

# Asymmetric JWS algorithms only: a JWKS holds public keys, so HMAC ("HS*") would mean
# sharing a secret with every verifier, and "none" means no signature at all.
JWT_ALGORITHMS = (
    "RS256", "RS384", "RS512",
    "PS256", "PS384", "PS512",
    "ES256", "ES256K", "ES384", "ES512",
    "EdDSA",
)  # fmt: skip

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, repr=False)
class Secret:
    """A credential whose value must never reach a log line, traceback or repr."""

    _value: str

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path


@dataclass(frozen=True)
class ListenConfig:
    host: str
    port: int
    tls: TlsFiles | None = None
    allow_plaintext: bool = False
    workers: int = 1
    max_connections: int = 1000
    startup_timeout: float = 10.0
    drain_timeout: float = 30.0
    max_message_size: int = 64 * MIB


ClaimValue = str | int | bool


@dataclass(frozen=True)
class ProviderConfig:
    issuer: str
    audiences: tuple[str, ...]
    jwks_file: Path | None = None
    jwks_url: str | None = None
    # A dotted path into the claims, e.g. "realm_access.roles" for Keycloak.
    groups_claim: str = "groups"
    subject_claim: str = "sub"
    leeway: float = 30.0
    # None lets the verifier take the algorithm from each JWKS key (still asymmetric only).
    algorithms: tuple[str, ...] | None = None
    jwks_refresh_min_interval: float = 30.0
    # Claim path -> the values it may have (any one): a token of this issuer without a
    # match is refused. An issuer such as GitHub's mints tokens for anyone who asks;
    # these say which of them are ours.
    required_claims: tuple[tuple[str, tuple[ClaimValue, ...]], ...] = ()
    # Put before each of this issuer's groups, so that two issuers' groups of one name
    # (or an issuer's group named like an admin group) stay apart.
    groups_prefix: str = ""


@dataclass(frozen=True)
class IdentityConfig:
    providers: tuple[ProviderConfig, ...]


@dataclass(frozen=True)
class ConnectionConfig:
    name: str
    host: str
    port: int
    database: str
    user: str
    password: Secret | None = None
    tls: str = "prefer"
    # Only used with tls="verify-full"; None means the system CA store.
    ca_file: Path | None = None
    connect_timeout: float = 10.0


@dataclass(frozen=True)
class PolicyConfig:
    # An absolute file/directory path, or an http(s) URL kept verbatim.
    bundle: str
    verification_key: Path | None = None
    allow_unsigned: bool = False
    enforce: bool = True
    # The key id a bundle signature must name (OPA's --verification-key-id default).
    keyid: str = "default"
    # The scope a bundle signature must carry (empty: none).
    scope: str = ""
    # Last good bundle (raw bytes) and the archive of every activated bundle by sha256;
    # None: "state/" next to the config file.
    state_dir: Path | None = None
    # Seconds between checks of the bundle for changes (file, directory or URL); 0: only
    # on SIGHUP / the admin API.
    poll_interval: float = 10.0
    # Run the bundle's own test_ rules before activating it (a failure rejects it).
    run_tests: bool = False
    # Longer statement texts (Query, Parse) are refused with 54000 before they are
    # parsed: reading one holds its worker for about 0.6 s per MB.
    max_statement_size: int = 4 * MIB


@dataclass(frozen=True)
class AuditConfig:
    dir: Path
    signing_key: Path | None = None
    sink: str = "file"  # file | postgres
    instance_id: str | None = None  # default: the host name (+ -w<k> per worker)
    durability: str = "os"  # os | fsync
    checkpoint_every: int = 10_000
    checkpoint_seconds: float = 60.0
    segment_bytes: int = 64 * 1024 * 1024
    segment_seconds: float | None = 86_400.0
    retry_seconds: float = 1.0
    max_backlog: int = 100_000
    postgres_dsn: Secret | None = None
    postgres_table: str = "pgwarden_audit"


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    secret: Secret | None = None  # HMAC key of X-Pgwarden-Signature; None: unsigned
    timeout: float = 5.0
    retries: int = 3


APPROVAL_STORES = ("sqlite", "postgres")


@dataclass(frozen=True)
class ApprovalsConfig:
    timeout: float = 300.0
    store: str = "sqlite"  # sqlite | postgres
    path: Path | None = None  # sqlite file; None: state/approvals.db next to the config
    dsn: Secret | None = None  # postgres only
    table_prefix: str = "pgwarden_"
    require_reason: bool = True
    webhook: WebhookConfig | None = None


@dataclass(frozen=True)
class AdminConfig:
    grpc: tuple[str, int] | None = None
    http: tuple[str, int] | None = None
    tls: TlsFiles | None = None
    admin_groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"


SAFETY_NET_MODES = ("mask", "error", "off")


@dataclass(frozen=True)
class MaskingConfig:
    # Key of the `hash` mask method (HMAC-SHA256); without it, `hash` masks are refused.
    hash_key: Secret | None = None
    # The content safety net on everything sent to clients: mask Luhn-valid PANs in place,
    # end the session with an error instead (error), or off.
    safety_net: str = "mask"


@dataclass(frozen=True)
class GatewayConfig:
    source: Path
    listen: ListenConfig
    identity: IdentityConfig
    connections: dict[str, ConnectionConfig]
    policy: PolicyConfig | None = None
    audit: AuditConfig | None = None
    approvals: ApprovalsConfig = field(default_factory=ApprovalsConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    networks: dict[str, tuple[Network, ...]] = field(default_factory=dict)
    log: LogConfig = field(default_factory=LogConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
