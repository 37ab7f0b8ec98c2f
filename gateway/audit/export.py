"""``audit export``: records for a SIEM, as JSON lines or CSV.

* ``jsonl`` writes the stored lines byte for byte (each still carries its ``hash``), so an
  exported slice can be checked against the log it came from.
* ``csv`` writes one row per record with the columns in :data:`CSV_COLUMNS` (a decision's
  statement facts flattened: kind, relations, columns); lists and objects
  are JSON text. A text cell that a spreadsheet would run as a formula (starting
  with ``=``, ``+``, ``-``, ``@``, TAB or CR) is prefixed with ``'``. TAB and LF stay
  as they are (CSV quotes a cell that holds a line feed); every other control character
  (CR too) and bidi control, and the backslash, are written as :func:`.display.visible`
  escapes (``\\r``, ``\\x1b``, ``\\u009b``, ``\\u202e``, ``\\\\``), so no cell can end
  a row, act on a terminal or reorder a spreadsheet's text, and the escapes read back to
  one text. ``jsonl`` is the export that keeps every character as stored.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any, BinaryIO, TextIO

from .display import json_text, visible
from .reader import Located, flatten

__all__ = ["CSV_COLUMNS", "FORMATS", "export_csv", "export_jsonl"]

FORMATS = ("jsonl", "csv")

CSV_COLUMNS = (
    "instance", "seq", "ts", "type", "session", "subject", "issuer", "groups", "client_addr",
    "application_name", "connection", "database", "db_user", "command", "kind", "outcome",
    "sqlstate", "rows", "masked_values", "safety_net_hits", "duration_us", "sql", "relations",
    "columns", "reasons", "error", "reason", "approval_id", "approver", "bundle_revision",
    "bundle_hash", "decision_seq", "hash",
)

_FORMULA = ("=", "+", "-", "@", "\t", "\r")
# Kept raw: the SQL's own line breaks and tabs. Not CR: Python's csv module quotes a
# cell holding a character of the line terminator ("\n" here), and only those, so a raw
# CR would end the row for a reader (and return the cursor on a terminal).
_CSV_CARRIES = "\t\n"


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return value
    if not isinstance(value, str):
        value = json_text(value)
    value = visible(value, keep=_CSV_CARRIES)
    if value.startswith(_FORMULA):
        return "'" + value
    return value


def _flat(rec: dict[str, Any]) -> dict[str, Any]:
    """``who``/``where`` and a decision's statement facts (kind, relations, columns) as
    columns."""
    flat = flatten(rec)
    stmt = rec.get("statement")
    if not isinstance(stmt, dict):
        return flat
    flat.setdefault("kind", stmt.get("kind"))
    flat["relations"] = _names(stmt.get("relations"), "schema", "name")
    flat["columns"] = _names(stmt.get("columns"), "schema", "table", "name")
    return flat


def _names(items: Any, *parts: str) -> Any:
    """Dotted names of a statement's relations or columns; a member that is not a list
    stays as it is (its cell is then its JSON text)."""
    if not isinstance(items, list):
        return [] if items is None else items
    return [".".join(_part(item.get(p)) for p in parts) for item in items
            if isinstance(item, dict)]


def _part(value: Any) -> str:
    return value if isinstance(value, str) else "None" if value is None else json_text(value)


def export_jsonl(records: Iterable[Located], out: BinaryIO) -> int:
    count = 0
    for loc in records:
        out.write(loc.raw + b"\n")
        count += 1
    return count


def export_csv(records: Iterable[Located], out: TextIO) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    count = 0
    for loc in records:
        rec = _flat(loc.record)
        writer.writerow([_cell(rec.get(c)) for c in CSV_COLUMNS])
        count += 1
    return count
