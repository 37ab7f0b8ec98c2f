"""Parsing SQL text into per-statement raw parse trees (cached by text).

pglast's ``parse_sql`` builds Python AST objects with per-attribute validation, which costs
~20x the parse itself; the analyzer walks the JSON tree instead (``parse_sql_json`` +
``json.loads``): plain dicts, one key per node (``{"SelectStmt": {...}}``), fields at their
default value omitted. Locations in it are byte offsets into the UTF-8 text.

Parse trees are shared by every caller that parses the same text: never mutate them.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
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
# The cache is bounded by what its trees weigh, not only by their number: a 14 KB text of
# thousands of constants is a 4 MB tree. A tree weighs about 12 times its JSON; the JSON's
# length is what is counted.
CACHE_MAX_ENTRIES = 4096
CACHE_MAX_WEIGHT = 8 * 1024 * 1024  # of JSON: ~100 MB of trees
CACHE_MAX_ENTRY_WEIGHT = 256 * 1024

_cache: OrderedDict[str, tuple[ParsedSql, int]] = OrderedDict()
_cache_weight = 0


def parse(sql: str) -> ParsedSql:
    """Parse ``sql`` (one or more statements); raises :class:`SqlParseError`."""
    global _cache_weight
    if len(sql) > CACHE_MAX_TEXT:
        return parse_uncached(sql)
    hit = _cache.get(sql)
    if hit is not None:
        _cache.move_to_end(sql)
        return hit[0]
    parsed, weight = _parse(sql)
    if weight <= CACHE_MAX_ENTRY_WEIGHT:
        _cache[sql] = (parsed, weight)
        _cache_weight += weight
        while _cache_weight > CACHE_MAX_WEIGHT or len(_cache) > CACHE_MAX_ENTRIES:
            _cache_weight -= _cache.popitem(last=False)[1][1]
    return parsed


def parse_cache_clear() -> None:
    global _cache_weight
    _cache.clear()
    _cache_weight = 0


def parse_uncached(sql: str) -> ParsedSql:
    return _parse(sql)[0]


def _parse(sql: str) -> tuple[ParsedSql, int]:
    """The parse, and what it weighs (its JSON's length)."""
    try:
        text_tree = _pg.parse_sql_json(sql)
        tree = json.loads(text_tree)
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
        return ParsedSql(sql, ()), len(text_tree)
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
    return ParsedSql(sql, tuple(out)), len(text_tree)
