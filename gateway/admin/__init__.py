"""The admin surface: gRPC Admin + health service, HTTP /healthz and /metrics, and the
``pgwarden approvals`` client. See docs/admin.md.

Importing the package does not import grpc (the gateway's supervisor process must not
start grpc's threads: they would take its signals); `server`, `health` and `servicer` do.
"""

from .backend import AdminBackend, SessionInfo

__all__ = ["AdminBackend", "SessionInfo"]
