"""The authenticated identity handed to policy, approvals and audit."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Identity:
    subject: str
    issuer: str
    groups: tuple[str, ...]
    # Excluded from the hash (a dict is unhashable) but still compared, so
    # Identity stays usable as a dict/cache key part.
    claims: Mapping[str, Any] = field(hash=False)
    method: str = "jwt"
    expires_at: float | None = None

    def to_input(self) -> dict[str, Any]:
        """The `identity` object of the policy input (DESIGN §4).

        A deep copy, so nothing downstream can mutate the verified claims.
        """
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "groups": list(self.groups),
            "claims": copy.deepcopy(dict(self.claims)),
            "method": self.method,
        }
