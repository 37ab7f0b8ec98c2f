"""Keeping values out of the audit trail: SQL literals, PANs, control characters.

* :func:`redact_sql` replaces every constant the PostgreSQL lexer finds (strings of every
  kind, numbers, bit strings) with a ``$n`` placeholder, numbered after the statement's
  own parameters the way ``pg_stat_statements`` does, and every comment with ``/*?*/``.
  Text that does not lex is replaced whole (:data:`UNLEXABLE`): nothing of it is kept.
* :func:`scrub` runs the content safety net (:mod:`gateway.masking.safety_net`) over a
  text: every Luhn-valid PAN shape keeps at most its first three and last four digits.
* :func:`scrub_value` does both of the above to every string, key and integer of a JSON
  value; :func:`redact_statement` redacts the statement document a decision archives.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from pglast import parser as _pg

from gateway.masking.safety_net import mask_in_place

__all__ = [
    "COMMENTS",
    "CONSTANTS",
    "PARAM",
    "UNLEXABLE",
    "redact_spans",
    "redact_sql",
    "redact_statement",
    "scrub",
    "scrub_value",
]

#: pglast lexer tokens whose text is a constant's value, comments, and ``$n``.
CONSTANTS = frozenset({"ICONST", "FCONST", "SCONST", "USCONST", "BCONST", "XCONST"})
COMMENTS = frozenset({"SQL_COMMENT", "C_COMMENT"})
PARAM = "PARAM"
UNLEXABLE = "/* SQL redacted: it does not lex */"
_REDACTED_VALUE = "?"

# Control characters JSON would escape as \\uXXXX (TAB, LF and CR are kept).
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")


@lru_cache(maxsize=4096)
def redact_sql(sql: str) -> str:
    """`sql` with every literal replaced by a ``$n`` placeholder and comments emptied."""
    if not sql:
        return sql
    try:
        tokens = _pg.scan(sql)
    except Exception:  # pglast raises ParseError for text the lexer refuses
        return UNLEXABLE
    top = 0
    spans: list[tuple[int, int, bool]] = []
    for tok in tokens:
        name = tok.name
        if name == PARAM:
            digits = sql[tok.start + 1 : tok.end + 1]
            if digits.isdigit():
                top = max(top, int(digits))
        elif name in CONSTANTS or name in COMMENTS:
            spans.append((tok.start, tok.end + 1, name in CONSTANTS))
    if not spans:
        return sql
    return redact_spans(sql, 0, len(sql), spans, top)


def redact_spans(sql: str, first: int, last: int, spans: list[tuple[int, int, bool]],
                 top: int) -> str:
    """``sql[first:last]`` with each lexer token span ``(start, end, is a constant)``
    inside it replaced: constants by ``$n`` numbered after `top` (the highest ``$n``
    parameter of the text), comments by ``/*?*/``. For callers that lexed the text
    already (`redact_sql`, the gate's shape of a statement)."""
    out: list[str] = []
    pos = first
    for start, end, constant in spans:
        if start < first or end > last:
            continue  # a comment before or after the statement's own text
        out.append(sql[pos:start])
        if constant:
            top += 1
            out.append(f"${top}")
        else:
            out.append("/*?*/")
        pos = end
    out.append(sql[pos:last])
    return "".join(out)


def scrub(text: str) -> str:
    """`text` with every PAN the safety net finds masked (same length)."""
    raw = text.encode("utf-8", "surrogatepass")
    masked, hits = mask_in_place(raw)
    if not hits:
        return text
    return masked.decode("utf-8", "surrogatepass")


def _clean_str(s: str, hits: list[int]) -> str:
    if _CONTROL.search(s):
        s = _CONTROL.sub("\ufffd", s)
    try:
        raw = s.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates become "?"
        raw = s.encode("utf-8", "replace")
        s = raw.decode("utf-8")
    masked, n = mask_in_place(raw)
    if n:
        hits[0] += n
        return masked.decode("utf-8")
    return s


def _clean(value: Any, hits: list[int]) -> Any:
    if isinstance(value, str):
        return _clean_str(value, hits)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return repr(value)
        if value.is_integer() and abs(value) < 2**53:
            value = int(value)
        else:
            text = repr(value)
            masked = _clean_str(text, hits)
            return masked if masked != text else value  # a PAN-like float: a string
    if isinstance(value, int):
        text = str(value)
        if len(text) >= 13:
            masked = _clean_str(text, hits)
            if masked != text:
                return masked  # a PAN as a number is kept only as a masked string
        return value
    if isinstance(value, Mapping):
        return {_clean_str(str(k), hits): _clean(v, hits) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [_clean(v, hits) for v in items]
    return _clean_str(str(value), hits)


def scrub_value(value: Any) -> tuple[Any, int]:
    """A plain-JSON copy of `value` with PANs masked in every string, key and integer.

    Also: control characters other than TAB/LF/CR become U+FFFD, lone surrogates ``?``,
    NaN/infinities their names, tuples and sets lists, other objects ``str()``. Returns
    the copy and the number of PANs masked.
    """
    hits = [0]
    return _clean(value, hits), hits[0]


# statement.details entries that hold a literal of the statement's: a SET value, a COPY
# file name or option string, a prepared transaction's id
_LITERAL_DETAILS = frozenset({"value", "filename", "program", "null", "delimiter", "quote",
                              "escape", "default", "encoding", "gid"})


def redact_statement(statement: Mapping[str, Any]) -> dict[str, Any]:
    """The policy input's ``statement`` to archive, without ``sql`` (recorded apart,
    redacted) and with the literals it copies from the text in ``details`` (a SET value,
    a COPY file name or option, a transaction id) replaced by ``?``. PANs anywhere else
    are masked when the record is written."""
    stmt = {k: v for k, v in statement.items() if k != "sql"}
    details = stmt.get("details")
    if isinstance(details, Mapping) and any(
            isinstance(details.get(k), str) for k in _LITERAL_DETAILS):
        stmt["details"] = {
            k: _REDACTED_VALUE if k in _LITERAL_DETAILS and isinstance(v, str)
            and not (k == "value" and v == "DEFAULT") else v
            for k, v in details.items()}
    return stmt
