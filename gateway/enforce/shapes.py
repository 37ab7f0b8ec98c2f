"""Reusing a statement's analysis for the same statement with other literal values.

Clients that inline values (pgbench -M simple, most ORMs' "simple" mode) send a new text
for every execution, so a cache by text never hits. The PostgreSQL lexer (through
pglast) splits the text into tokens; two texts whose tokens are equal except for the
values of constants parse to the same tree but for those values. An analysis may be
reused across them only when none of its facts comes from a constant's value: reads,
writes and transaction control with no LIMIT, no column given by position (ORDER BY 2)
and no command details (a savepoint's name, a prepared transaction's id), one statement
per string. Anything else
is analyzed afresh — a miss costs nothing but time.

Plain texts (ASCII words, numbers, simple strings, no comments or parameters) are
shaped by a compiled pass (`_shape.c`) whose key keeps everything but the constants
verbatim; it declines any other text to pglast, and tests/test_shape_native.py holds
it to finding exactly the constants pglast finds.
"""

from __future__ import annotations

from typing import NamedTuple

from pglast import parser as _pg

from gateway import native
from gateway.audit.redact import COMMENTS, CONSTANTS, PARAM, redact_spans
from gateway.sql import StatementInfo

# Plain texts (ASCII words, numbers, simple strings, no comments) are shaped in C
# (gateway/enforce/_shape.c): a str key, never equal to the tuple keys made here.
_native = native.load("gateway.enforce._shape")
# kept_by_shape(body, table, protocol): table.get((shape_of(text).key, protocol)) for a
# Query body (its text and final NUL) in one compiled call; None for any body the Python
# path must read (see _shape.c). None itself without the C module.
kept_by_shape = _native.kept if _native is not None else None

# Constants' token types are the shape's holes; every other token keeps its text.
_SEMICOLON = "ASCII_59"
_REUSABLE_KINDS = frozenset({"read", "write", "transaction"})


class Shape(NamedTuple):
    """One statement text's skeleton, where its own SQL text lies within it, and that
    text with its constants and comments redacted as the audit trail records it
    (:func:`gateway.audit.redact.redact_sql`, from the same tokens: one lexer pass)."""

    key: tuple[object, ...] | str
    span: tuple[int, int]
    redacted: str


# Made once per simple-protocol statement: tuple.__new__ skips the Python-level
# constructor a NamedTuple adds.
_new_shape = tuple.__new__


def shape_of(sql: str) -> Shape | None:
    """None when the text has several statements or does not lex."""
    if _native is not None:
        plain = _native.shape(sql)
        if plain is not None:
            key, first, last, redacted = plain
            return _new_shape(Shape, (key, (first, last), redacted))
    return lexed_shape_of(sql)


def lexed_shape_of(sql: str) -> Shape | None:
    """:func:`shape_of` through pglast's lexer: the reference, for any text."""
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
        if name in CONSTANTS:
            key.append(name)
            values.append((tok.start, tok.end + 1, True))
        else:
            key.append((name, sql[tok.start : tok.end + 1]))
            if name == PARAM:
                digits = sql[tok.start + 1 : tok.end + 1]
                if digits.isdigit():
                    top = max(top, int(digits))
            elif name in COMMENTS:
                values.append((tok.start, tok.end + 1, False))
                continue
        if first is None:
            first = tok.start
        last = tok.end + 1
    if first is None or last is None:
        return None
    return Shape(tuple(key), (first, last), redact_spans(sql, first, last, values, top))


def reusable(info: StatementInfo, sql: str, shape: Shape) -> bool:
    """Whether `info` (analyzed from `sql`) may stand for every text of the same shape."""
    return (
        info.count == 1
        and info.kind in _REUSABLE_KINDS
        and info.limit is None
        and not info.positional
        and not info.details
        and info.cacheable
        and info.sql == sql[shape.span[0] : shape.span[1]]
    )


def restate(info: StatementInfo, sql: str, shape: Shape) -> StatementInfo:
    """`info` for another text of the same shape: only the text itself differs."""
    return info.with_sql(sql[shape.span[0] : shape.span[1]])
