"""The decision document (DESIGN §4) and its validation.

A policy's answer is trusted only after it passes :func:`validate_decision`. Anything
missing, undefined, malformed or ill-typed, an unknown mask method, or an evaluation
error yields a *deny* whose ``error`` says why and whose single reason reads
``policy error: <why>``.

Required keys: ``allow`` (bool), ``reasons`` (array of strings), ``mask`` (object
``"schema.table.column"`` → method), ``require_approval`` (bool), ``approvers`` (array of
non-empty strings), ``row_limit`` (null or integer ≥ 0), ``db_role`` (null or non-empty
string). Optional: ``min_approvals`` (1-10, default 1: how many approvers must agree to
release a held statement), ``grant_ttl`` (null or seconds > 0: how long an approval granted for a
hold stays valid). Other keys are ignored.

``require_approval: true`` is a hold request and is kept as given (with ``allow`` as
given, normally false); it needs at least one approver, otherwise nobody could ever
release it and the decision is a policy error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MASK_METHODS",
    "UNDEFINED",
    "Decision",
    "FrozenMap",
    "validate_decision",
]

MASK_METHODS = frozenset({"pan_last4", "pan_first6_last4", "redact", "null", "hash"})

_REQUIRED = ("allow", "reasons", "mask", "require_approval", "approvers", "row_limit", "db_role")
_MAX_ROLE_BYTES = 63  # PostgreSQL NAMEDATALEN - 1


class _Undefined:
    """The value of an undefined Rego document (distinct from JSON null)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "UNDEFINED"


UNDEFINED: Any = _Undefined()


class FrozenMap(Mapping[str, str]):
    """An immutable, hashable, picklable str → str mapping (the decision's ``mask``)."""

    __slots__ = ("_d", "_h")

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        self._d: dict[str, str] = dict(items or {})
        self._h: int | None = None

    def __getitem__(self, key: str) -> str:
        return self._d[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __hash__(self) -> int:
        if self._h is None:
            self._h = hash(frozenset(self._d.items()))
        return self._h

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenMap):
            return self._d == other._d
        if isinstance(other, Mapping):
            return self._d == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenMap({self._d!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMap, (self._d,))


_EMPTY_MAP = FrozenMap()


@dataclass(frozen=True)
class Decision:
    """A validated policy decision (DESIGN §4), naming the bundle that made it."""

    allow: bool
    reasons: tuple[str, ...] = ()
    mask: Mapping[str, str] = field(default=_EMPTY_MAP)
    require_approval: bool = False
    approvers: tuple[str, ...] = ()
    row_limit: int | None = None
    db_role: str | None = None
    grant_ttl: float | None = None
    #: approvals needed to release a held statement (optional in the policy; default 1)
    min_approvals: int = 1
    bundle_revision: str | None = None
    bundle_hash: str | None = None
    error: str | None = None  # why the decision was forced to deny (policy error)

    @property
    def outcome(self) -> str:
        """``"allow"``, ``"hold"`` (wait for approval) or ``"deny"``.

        A hold wins over allow: a policy that sets both asked for an approval.
        """
        if self.error is None and self.require_approval:
            return "hold"
        return "allow" if self.allow else "deny"

    def to_dict(self) -> dict[str, Any]:
        return {
            "allow": self.allow,
            "reasons": list(self.reasons),
            "mask": dict(self.mask),
            "require_approval": self.require_approval,
            "approvers": list(self.approvers),
            "row_limit": self.row_limit,
            "db_role": self.db_role,
            "grant_ttl": self.grant_ttl,
            "min_approvals": self.min_approvals,
            "bundle_revision": self.bundle_revision,
            "bundle_hash": self.bundle_hash,
            "error": self.error,
        }

    def to_json(self, *, indent: int | None = None) -> str:
        """The decision as JSON (the policy document's keys plus bundle and error)."""
        if indent is None:
            return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=indent)

    @classmethod
    def deny(
        cls,
        reason: str,
        *,
        error: str | None = None,
        bundle_revision: str | None = None,
        bundle_hash: str | None = None,
    ) -> Decision:
        """A plain deny (e.g. for SQL that does not parse) with one reason."""
        return cls(
            allow=False,
            reasons=(reason,),
            bundle_revision=bundle_revision,
            bundle_hash=bundle_hash,
            error=error,
        )

    @classmethod
    def policy_error(
        cls,
        why: str,
        *,
        bundle_revision: str | None = None,
        bundle_hash: str | None = None,
    ) -> Decision:
        """The fail-closed decision: deny, reason ``policy error: <why>``, error ``why``."""
        return cls(
            allow=False,
            reasons=(f"policy error: {why}",),
            bundle_revision=bundle_revision,
            bundle_hash=bundle_hash,
            error=why,
        )


class _Invalid(Exception):
    pass


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _strings(value: Any, key: str, *, nonempty_items: bool) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _Invalid(f"decision.{key} is not an array (got {_type_name(value)})")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _Invalid(f"decision.{key}[{i}] is not a string (got {_type_name(item)})")
        if nonempty_items and not item.strip():
            raise _Invalid(f"decision.{key}[{i}] is an empty string")
    return tuple(value)


def _mask(value: Any) -> FrozenMap:
    if not isinstance(value, dict):
        raise _Invalid(f"decision.mask is not an object (got {_type_name(value)})")
    for column, method in value.items():
        parts = column.split(".")
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise _Invalid(f"decision.mask key {column!r} is not schema.table.column")
        if not isinstance(method, str):
            raise _Invalid(f"decision.mask[{column!r}] is not a string (got {_type_name(method)})")
        if method not in MASK_METHODS:
            raise _Invalid(
                f"decision.mask[{column!r}] uses unknown mask method {method!r} "
                f"(known: {', '.join(sorted(MASK_METHODS))})"
            )
    return FrozenMap(value) if value else _EMPTY_MAP


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"decision.{key} is not a boolean (got {_type_name(value)})")
    return value


def _row_limit(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"decision.row_limit is not null or an integer (got {_type_name(value)})")
    if isinstance(value, float):
        if not value.is_integer():
            raise _Invalid(f"decision.row_limit is not an integer ({value})")
        value = int(value)
    if value < 0:
        raise _Invalid(f"decision.row_limit is negative ({value})")
    return value


def _db_role(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Invalid(f"decision.db_role is not null or a string (got {_type_name(value)})")
    if not value.strip() or "\x00" in value:
        raise _Invalid("decision.db_role is an empty or invalid role name")
    if len(value.encode("utf-8")) > _MAX_ROLE_BYTES:
        raise _Invalid(f"decision.db_role is longer than {_MAX_ROLE_BYTES} bytes")
    return value


def _grant_ttl(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"decision.grant_ttl is not null or a number (got {_type_name(value)})")
    if not math.isfinite(value) or value <= 0:
        raise _Invalid(f"decision.grant_ttl must be a positive number of seconds ({value})")
    return float(value)


def _min_approvals(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise _Invalid(f"decision.min_approvals is not an integer (got {_type_name(value)})")
    if not 1 <= value <= 10:
        raise _Invalid(f"decision.min_approvals must be from 1 to 10 ({value})")
    return int(value)


def validate_decision(
    value: Any,
    *,
    entrypoint: str = "data.pgwarden.decision",
    bundle_revision: str | None = None,
    bundle_hash: str | None = None,
) -> Decision:
    """Check a raw policy result and build a Decision; any problem → policy-error deny.

    ``value`` is the entrypoint's JSON value, or ``UNDEFINED``.
    """
    try:
        if not isinstance(value, dict):
            if value is UNDEFINED:
                raise _Invalid(f"{entrypoint} is undefined")
            raise _Invalid(f"{entrypoint} is not an object (got {_type_name(value)})")
        missing = [k for k in _REQUIRED if k not in value]
        if missing:
            keys = ", ".join(f"decision.{k}" for k in missing)
            raise _Invalid(f"{keys} {'is' if len(missing) == 1 else 'are'} missing")
        allow = _bool(value["allow"], "allow")
        reasons = _strings(value["reasons"], "reasons", nonempty_items=False)
        mask = _mask(value["mask"])
        require_approval = _bool(value["require_approval"], "require_approval")
        approvers = _strings(value["approvers"], "approvers", nonempty_items=True)
        row_limit = _row_limit(value["row_limit"])
        db_role = _db_role(value["db_role"])
        grant_ttl = _grant_ttl(value.get("grant_ttl"))
        min_approvals = _min_approvals(value.get("min_approvals", 1))
        if require_approval and not approvers:
            raise _Invalid("decision.require_approval is true but decision.approvers is empty")
    except _Invalid as exc:
        return Decision.policy_error(
            str(exc), bundle_revision=bundle_revision, bundle_hash=bundle_hash
        )
    return Decision(
        allow=allow,
        reasons=reasons,
        mask=mask,
        require_approval=require_approval,
        approvers=approvers,
        row_limit=row_limit,
        db_role=db_role,
        grant_ttl=grant_ttl,
        min_approvals=min_approvals,
        bundle_revision=bundle_revision,
        bundle_hash=bundle_hash,
        error=None,
    )
