"""Reusing a statement's analysis for the same statement with other literal values.

Clients that inline values (pgbench -M simple, most ORMs' "simple" mode) send a new text
for every execution, so a cache by text never hits. The PostgreSQL lexer (through
pglast) splits the text into tokens; two texts whose tokens are equal except for the
values of constants parse to the same tree but for those values. An analysis may be
reused across them only when none of its facts comes from a constant's value: reads and
writes with no LIMIT and no command details, one statement per string. Anything else
is analyzed afresh — a miss costs nothing but time.
"""

from __future__ import annotations

from pglast import parser as _pg

from gateway.sql import StatementInfo

# Token types whose text is a constant's value; every other token keeps its text.
_CONSTANTS = frozenset({"ICONST", "FCONST", "SCONST", "USCONST", "BCONST", "XCONST"})
_SEMICOLON = "ASCII_59"
_COMMENTS = frozenset({"SQL_COMMENT", "C_COMMENT"})
_PARAM = "PARAM"
_REUSABLE_KINDS = frozenset({"read", "write"})


class Shape:
    """One statement text's skeleton, where its own SQL text lies within it, and that
    text with its constants and comments redacted as the audit trail records it
    (:func:`gateway.audit.redact.redact_sql`, from the same tokens: one lexer pass)."""

    __slots__ = ("key", "redacted", "span")

    def __init__(self, key: tuple[object, ...], span: tuple[int, int], redacted: str) -> None:
        self.key = key
        self.span = span
        self.redacted = redacted


def shape_of(sql: str) -> Shape | None:
    """None when the text has several statements or does not lex."""
    try:
        tokens = _pg.scan(sql)
    except Exception:  # the full parse reports the error properly
        return None
    key: list[object] = []
    first = last = None
    values: list[tuple[int, int, bool]] = []  # (start, end, is a constant) to redact
    top = 0  # the highest $n parameter: redacted constants are numbered after it
    for i, tok in enumerate(tokens):
        name = tok.name
        if name == _SEMICOLON:
            if i != len(tokens) - 1:
                return None
            continue
        if name in _CONSTANTS:
            key.append(name)
            values.append((tok.start, tok.end + 1, True))
        else:
            key.append((name, sql[tok.start : tok.end + 1]))
            if name == _PARAM:
                digits = sql[tok.start + 1 : tok.end + 1]
                if digits.isdigit():
                    top = max(top, int(digits))
            elif name in _COMMENTS:
                values.append((tok.start, tok.end + 1, False))
                continue
        if first is None:
            first = tok.start
        last = tok.end + 1
    if first is None or last is None:
        return None
    return Shape(tuple(key), (first, last), _redacted(sql, first, last, values, top))


def _redacted(sql: str, first: int, last: int, values: list[tuple[int, int, bool]],
              top: int) -> str:
    out: list[str] = []
    pos = first
    for start, end, constant in values:
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


def reusable(info: StatementInfo, sql: str, shape: Shape) -> bool:
    """Whether `info` (analyzed from `sql`) may stand for every text of the same shape."""
    return (
        info.count == 1
        and info.kind in _REUSABLE_KINDS
        and info.limit is None
        and not info.details
        and info.cacheable
        and info.sql == sql[shape.span[0] : shape.span[1]]
    )


def restate(info: StatementInfo, sql: str, shape: Shape) -> StatementInfo:
    """`info` for another text of the same shape: only the text itself differs."""
    return info.with_sql(sql[shape.span[0] : shape.span[1]])
