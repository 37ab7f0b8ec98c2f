"""The admin surface: gRPC Admin + health service, HTTP /healthz and /metrics, and the
``pgwarden approvals`` client. See docs/admin.md."""

from .backend import AdminBackend, SessionInfo
from .health import Health

__all__ = ["AdminBackend", "Health", "SessionInfo"]
