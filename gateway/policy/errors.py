"""Errors raised while loading or compiling a policy.

Every error names the file and, when known, the 1-based line and column, and prints as
``file:line:col: message`` so editors and CI logs can jump straight to it.
"""

from __future__ import annotations

__all__ = ["PolicyCompileError", "PolicyError", "PolicyLoadError"]


class PolicyError(Exception):
    """A policy that cannot be used; located by file (and line/column when known)."""

    def __init__(
        self, file: str | None, message: str, line: int | None = None, col: int | None = None
    ) -> None:
        # Passing every field to Exception keeps the error picklable (worker processes).
        super().__init__(file, message, line, col)
        self.file = file
        self.message = message
        self.line = line
        self.col = col

    @property
    def location(self) -> str:
        if self.file is None:
            return ""
        loc = self.file
        if self.line is not None:
            loc += f":{self.line}"
            if self.col is not None:
                loc += f":{self.col}"
        return loc

    def __str__(self) -> str:
        loc = self.location
        return f"{loc}: {self.message}" if loc else self.message


class PolicyLoadError(PolicyError):
    """A file that cannot be read or parsed (missing path, bad JSON, data conflicts...)."""


class PolicyCompileError(PolicyError):
    """Rego that regopy rejects, or an entrypoint that no module defines."""
