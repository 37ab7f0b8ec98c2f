"""Bundle errors: each names the file it is about (or ``None``) and why, for the CLI."""

from __future__ import annotations

__all__ = ["ArchiveError", "BundleError", "VerificationError"]


class BundleError(Exception):
    """A bundle that cannot be used. ``file`` is the entry (or path/URL) concerned."""

    def __init__(self, file: str | None, reason: str) -> None:
        super().__init__(file, reason)  # picklable
        self.file = file
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}" if self.file else self.reason


class ArchiveError(BundleError):
    """The tarball itself is unreadable or unsafe (links, ``..``, too large...)."""


class VerificationError(BundleError):
    """The signature check failed: missing/extra file, hash mismatch, key, scope..."""
