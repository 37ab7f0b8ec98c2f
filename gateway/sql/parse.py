"""Parsing SQL text into per-statement raw parse trees (cached by text).

pglast's ``parse_sql`` builds Python AST objects with per-attribute validation, which costs
~20x the parse itself; the analyzer walks the JSON tree instead (``parse_sql_json`` +
``json.loads``): plain dicts, one key per node (``{"SelectStmt": {...}}``), fields at their
default value omitted. Locations in it are byte offsets into the UTF-8 text.

Parse trees are shared by every caller that parses the same text: never mutate them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pglast import parser as _pg

__all__ = ["ParsedSql", "RawStatement", "SqlParseError", "parse"]

Node = dict[str, Any]


class SqlParseError(Exception):
    """SQL that PostgreSQL's parser (via pglast) rejects.

    ``message`` is pglast's (i.e. the server's) message; ``cursor_position`` is the 1-based
    character position of the error in the whole query string, as the ``P`` field of an
    ErrorResponse carries it, or None.
    """

    sqlstate = "42601"

    def __init__(self, message: str, cursor_position: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.cursor_position = cursor_position

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class RawStatement:
    node_type: str  # e.g. "SelectStmt"
    node: Node  # the statement's fields (the value under node_type)
    sql: str  # this statement's own text (stripped)
    fingerprint: str  # pglast fingerprint of that text


@dataclass(frozen=True, slots=True)
class ParsedSql:
    sql: str
    statements: tuple[RawStatement, ...]


#: Texts longer than this are parsed without caching (bulk INSERTs and the like).
CACHE_MAX_TEXT = 16384


def parse(sql: str) -> ParsedSql:
    """Parse ``sql`` (one or more statements); raises :class:`SqlParseError`."""
    if len(sql) > CACHE_MAX_TEXT:
        return parse_uncached(sql)
    return _parse_cached(sql)


def parse_uncached(sql: str) -> ParsedSql:
    try:
        tree = json.loads(_pg.parse_sql_json(sql))
    except _pg.ParseError as exc:
        message = str(exc.args[0] if exc.args else exc)
        index = exc.args[1] if len(exc.args) > 1 else None
        if index is not None:
            position: int | None = index + 1
        elif "end of input" in message:
            # pglast drops positions past the last character; the server reports len + 1
            position = len(sql) + 1
        else:
            position = None
        raise SqlParseError(message, position) from None
    stmts = tree.get("stmts") or []
    if not stmts:
        return ParsedSql(sql, ())
    encoded: bytes | None = None if sql.isascii() else sql.encode("utf-8")
    out = []
    single = len(stmts) == 1
    for raw in stmts:
        ((node_type, node),) = raw["stmt"].items()
        start = raw.get("stmt_location", 0)
        length = raw.get("stmt_len", 0)
        if encoded is None:
            text = sql[start:start + length] if length else sql[start:]
        else:
            chunk = encoded[start:start + length] if length else encoded[start:]
            text = chunk.decode("utf-8")
        text = text.strip()
        fingerprint = _pg.fingerprint(sql if single else text)
        out.append(RawStatement(node_type, node, text, fingerprint))
    return ParsedSql(sql, tuple(out))


@lru_cache(maxsize=4096)
def _parse_cached(sql: str) -> ParsedSql:
    return parse_uncached(sql)


def parse_cache_clear() -> None:
    _parse_cached.cache_clear()
