"""SQL analysis: pglast parse trees → the policy input's ``statement`` object (DESIGN §4)."""

from .analyzer import (
    ColumnUse,
    OutputColumn,
    RelationAccess,
    StatementInfo,
    TooManyStatements,
    analyze,
)
from .commands import KINDS, USAGES
from .functions import SQL_STRING_FUNCTIONS
from .parse import ParsedSql, RawStatement, SqlParseError, parse
from .session_state import Cursor, Effect, PreparedStatement, SessionSqlState

__all__ = [
    "KINDS",
    "SQL_STRING_FUNCTIONS",
    "USAGES",
    "ColumnUse",
    "Cursor",
    "Effect",
    "OutputColumn",
    "ParsedSql",
    "PreparedStatement",
    "RawStatement",
    "RelationAccess",
    "SessionSqlState",
    "SqlParseError",
    "StatementInfo",
    "TooManyStatements",
    "analyze",
    "parse",
]
