"""Just-in-time approvals and grants (DESIGN §1 "approvals"): see ``service.py``."""

from .model import (
    ApprovalError,
    ApprovalRequest,
    ApproverIdentity,
    Grant,
    Resolution,
    Vote,
)
from .service import ApprovalService, Decided, WatchOverflow, open_store
from .store import ApprovalStore, PostgresStore, SqliteStore
from .webhook import WebhookNotifier

__all__ = [
    "ApprovalError",
    "ApprovalRequest",
    "ApprovalService",
    "ApprovalStore",
    "ApproverIdentity",
    "Decided",
    "Grant",
    "PostgresStore",
    "Resolution",
    "SqliteStore",
    "Vote",
    "WatchOverflow",
    "WebhookNotifier",
    "open_store",
]
