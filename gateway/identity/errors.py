"""Authentication failures with a fixed, token-free vocabulary.

The message of an AuthError travels to the client (ErrorResponse) and into the
audit trail, so it is a fixed sentence per reason: never a piece of the token,
a claim value, or a pyjwt message (those can echo claim contents).
"""

from __future__ import annotations

# reason -> human sentence. The keys are a stable contract: audit records and
# metrics are labelled by them.
MESSAGES: dict[str, str] = {
    "malformed": "token is malformed",
    "unknown_issuer": "token issuer is not trusted",
    "unknown_key": "token signing key is not known",
    "bad_signature": "token signature is invalid",
    "expired": "token expired",
    "not_yet_valid": "token is not yet valid",
    "wrong_audience": "token audience is not accepted",
    "wrong_issuer": "token issuer does not match",
    "algorithm_not_allowed": "token signing algorithm is not allowed",
    "missing_claim": "token lacks a required claim",
    "claim_not_allowed": "token claims do not meet the requirements for its issuer",
    "jwks_unavailable": "signing keys for the token issuer are unavailable",
}

# 28P01 (invalid_password): the presented credential is at fault, as for a wrong
# password. 28000 (invalid_authorization_specification): the client may be fine
# but we cannot check it right now.
_SQLSTATE_UNAVAILABLE = "28000"
_SQLSTATE_REJECTED = "28P01"


class AuthError(Exception):
    """A token was refused. `reason` is one of MESSAGES' keys."""

    def __init__(self, reason: str) -> None:
        if reason not in MESSAGES:
            raise ValueError(f"unknown AuthError reason {reason!r}")
        super().__init__(MESSAGES[reason])
        self.reason = reason
        self.sqlstate = (
            _SQLSTATE_UNAVAILABLE if reason == "jwks_unavailable" else _SQLSTATE_REJECTED
        )

    @property
    def message(self) -> str:
        return MESSAGES[self.reason]

    def __str__(self) -> str:
        return MESSAGES[self.reason]

    def __repr__(self) -> str:
        return f"AuthError({self.reason!r})"
