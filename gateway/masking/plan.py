"""From a decision's ``mask`` map and a statement's lineage to a plan for its results
(and `with_row_limit`: the decision's ``row_limit``, with or without masks).

`plan_masks` either returns a `MaskPlan` (which output positions to rewrite, and how) or
raises `MaskRefused` — the statement must not run — when masking cannot be faithful:

* an unknown method, or ``hash`` without a configured key;
* an output column computed from a masked column (a function, cast, operator, aggregate,
  CASE, array/row/JSON/XML constructor, whole-row reference...): only a column's plain
  value can be masked in place, and a computed one could carry any encoding of it;
* a masked column computed with anywhere in the statement — in WHERE, JOIN, ORDER BY,
  GROUP BY, a function's arguments: ``reverse(pan)::int = 1`` fails with the reversed
  PAN in its error message, ``setval('s', pan::bigint)`` stashes it. Comparing the
  column itself (``=``, ``<``, ``LIKE``, ``IN``, ``IS NULL``) with PostgreSQL's own
  operators cannot carry its value out (one that may be defined outside pg_catalog is
  a function like any other: the analyzer counts it as computing);
* a masked column whose value the statement copies somewhere (INSERT ... SELECT,
  UPDATE ... SET, CREATE TABLE AS, SELECT INTO): a later read of the copy would not be
  masked;
* output positions that are not known exactly (a ``*`` over a function whose columns
  are unknown), a construct the analyzer could not resolve, or a function that runs SQL
  given as a string, while a masked column is involved: the lineage cannot be trusted.

A plain reference to a masked column, however renamed or nested (aliases, subqueries,
CTEs, views, set operations, RETURNING, cursors, prepared statements), is masked in place
at its output position. Comparing, sorting and grouping on the column itself are the
policy's call (an oracle, not a copy): the input document lists them as column usages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from gateway.sql import StatementInfo

from .methods import Masker, MaskError, binary_safe, resolve

__all__ = ["ColumnMask", "MaskPlan", "MaskRefused", "plan_masks", "with_row_limit"]

ColKey = tuple[str, str, str]
_READ_KINDS = frozenset({"read", "copy_out"})


class MaskRefused(Exception):
    """The statement cannot be masked faithfully: refuse it (SQLSTATE 42501)."""


@dataclass(frozen=True, slots=True)
class ColumnMask:
    method: str
    masker: Masker
    column: str  # "schema.table.column" it protects (for counts and messages)


@dataclass(slots=True)
class MaskPlan:
    """How to rewrite one statement's result rows (or COPY rows, or RETURNING rows)."""

    #: output position → mask
    positions: dict[int, ColumnMask]
    #: every masked base column the statement touches, for the RowDescription cross-check
    by_column: dict[ColKey, ColumnMask]
    #: the number of result columns the analysis expects
    width: int
    #: COPY ... TO STDOUT options (delimiter, null, quote, escape, header), else None
    copy: Mapping[str, str] | None = None
    #: masked values per protected column in the result now streaming (reset per result)
    counts: dict[str, int] = field(default_factory=dict)
    #: masks per field once the server described the result (cross-checked)
    field_masks: dict[int, ColumnMask] | None = None
    #: the decision's row_limit: at most this many rows reach the client, else None
    row_limit: int | None = None
    #: rows the client may still be sent (of a Query's statement, or of one portal
    #: across its Executes: see :meth:`bound`)
    left: int | None = None
    #: whether the client was told its result was cut
    told: bool = False
    #: a portal's plan: the prepared statement's plan it was bound from
    of: MaskPlan | None = None

    def bound(self) -> MaskPlan:
        """The plan of one portal of this prepared statement: the same masks, and a row
        budget of its own (a Bind starts the statement's rows afresh, as the server does)."""
        return replace(self, counts={}, left=self.row_limit, told=False, of=self)


def with_row_limit(plan: MaskPlan | None, info: StatementInfo, row_limit: int) -> MaskPlan:
    """`plan` (None: nothing to mask) that also lets at most `row_limit` rows of the
    statement's result reach the client."""
    if plan is None:
        plan = MaskPlan({}, {}, len(info.outputs))
    plan.row_limit = plan.left = row_limit
    return plan


def _column_key(name: str) -> ColKey:
    parts = name.split(".")
    if len(parts) != 3 or not all(parts):
        raise MaskRefused(f"the policy's mask key {name!r} is not schema.table.column")
    return parts[0], parts[1], parts[2]


def plan_masks(info: StatementInfo, mask: Mapping[str, str], *,
               hash_key: bytes | None,
               column_type: Callable[[ColKey], int | None] | None = None) -> MaskPlan | None:
    """The plan for `info` under the decision's `mask`, or None when nothing it returns
    needs masking. Raises `MaskRefused` when the statement must not run."""
    masked: dict[ColKey, ColumnMask] = {}
    for name, method in mask.items():
        key = _column_key(name)
        if method == "hash" and not hash_key:
            raise MaskRefused(f"the policy masks {name} with 'hash' but no masking.hash_key "
                              "is configured")
        try:
            masker = resolve(method, key=hash_key or b"")
        except MaskError as e:
            raise MaskRefused(f"the policy's mask for {name}: {e}") from None
        masked[key] = ColumnMask(method, masker, name)

    touched = {(c.schema, c.table, c.name): c.usage for c in info.columns}
    involved = {k: m for k, m in masked.items() if k in touched}
    if not involved:
        return None

    if info.sql_string_functions:
        raise MaskRefused("a function that runs SQL given as a string cannot be used while "
                          f"columns are masked ({_names(involved)})")
    if info.unresolved:
        what = ", ".join(f"{kind} {name}" for kind, name in info.unresolved[:3])
        raise MaskRefused(f"masked columns ({_names(involved)}) with a lineage the gateway "
                          f"could not trace ({what})")
    if info.kind not in _READ_KINDS:
        copied = [k for k in involved if "output" in touched[k]]
        if copied:
            raise MaskRefused(f"{info.command} would copy masked column {_name(copied[0])} "
                              "where masking no longer applies")

    for key in info.computed:
        if key in involved:
            raise MaskRefused(
                f"masked column {_name(key)} is computed with (a function, cast or operator "
                "in the statement); its value could surface in an error message or a side "
                "effect. Compare it (=, LIKE, IN...) or return it as it is instead")
    positions: dict[int, ColumnMask] = {}
    for i, out in enumerate(info.outputs):
        for key in out.derived:
            if key in involved:
                raise MaskRefused(
                    f"output column {out.name!r} is computed from masked column "
                    f"{_name(key)}; only the column itself can be returned (masked)")
        hits = {involved[k] for k in out.sources if k in involved}
        if not hits:
            continue
        if len({h.method for h in hits}) > 1:
            raise MaskRefused(f"output column {out.name!r} mixes columns masked with different "
                              f"methods ({', '.join(sorted(h.column for h in hits))})")
        positions[i] = min(hits, key=lambda h: h.column)
    if not info.outputs_exact and any(
            "output" in touched[k] or "returning" in touched[k] for k in involved):
        raise MaskRefused(f"the result columns of this {info.command} are not known exactly, "
                          f"so masked columns ({_names(involved)}) cannot be located")
    copy = None
    if info.kind == "copy_out":
        copy = {k: str(v) for k, v in info.details.items()
                if k in ("delimiter", "null", "quote", "escape", "header", "format")}
        if copy.get("format", "").lower() == "binary":
            _check_binary_copy(info, positions, column_type)
    return MaskPlan(positions, involved, len(info.outputs), copy)


def _check_binary_copy(info: StatementInfo, positions: Mapping[int, ColumnMask],
                       column_type: Callable[[ColKey], int | None] | None) -> None:
    """Binary COPY has no row description to redeclare a masked field as text: a masked
    value is valid there only where the column's binary form is its text (text, varchar,
    ...), or as NULL."""
    for i, m in positions.items():
        if m.method == "null":
            continue
        for key in info.outputs[i].sources:
            oid = column_type(key) if column_type is not None else None
            if oid is None or not binary_safe(oid):
                raise MaskRefused(f"binary COPY of masked column {_name(key)}: its type has "
                                  "no text-compatible binary form; use format text or csv")


def _name(key: ColKey) -> str:
    return ".".join(key)


def _names(cols: Mapping[ColKey, ColumnMask]) -> str:
    return ", ".join(sorted(_name(k) for k in cols))
