"""The tamper-evident audit trail (DESIGN §6; record schema in docs/audit.md).

Modules, one job each:

* ``canonical`` — canonical JSON, the chain hash, record timestamps
* ``redact`` — SQL literal redaction, the PAN scrub
* ``records`` — builders for every record type, ``AuditContext``, ``SessionTotals``
* ``chain`` — seq / prev / hash, and the last-line PAN guarantee
* ``checkpoint`` — Ed25519 keys, key ids, checkpoint signatures
* ``writer`` — ``AuditWriter``: group commit, durability, fail-closed health, rotation
* ``filesink`` / ``pgsink`` — segment files; a PostgreSQL table shared by replicas
* ``settings`` — ``AuditSettings`` (the config section) and ``open_audit``
* ``verify`` / ``reader`` / ``show`` / ``export`` / ``replay`` — reading it back
* ``commands`` — the ``pgwarden audit ...`` and ``pgwarden policy replay`` commands

Importing this package does not import psycopg or the policy engine.
"""

from __future__ import annotations

from . import records
from .checkpoint import AuditKeyError, Signer, generate_keypair, load_public_key
from .records import AuditContext, SessionTotals
from .redact import redact_sql, scrub
from .settings import AuditSettings, open_audit
from .writer import AuditError, AuditUnavailable, AuditWriter, WriterOptions

__all__ = [
    "AuditContext",
    "AuditError",
    "AuditKeyError",
    "AuditSettings",
    "AuditUnavailable",
    "AuditWriter",
    "SessionTotals",
    "Signer",
    "WriterOptions",
    "generate_keypair",
    "load_public_key",
    "open_audit",
    "records",
    "redact_sql",
    "scrub",
]
