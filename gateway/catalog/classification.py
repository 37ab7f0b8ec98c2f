"""Column classification tags (DESIGN §3: ``data.pgwarden.classification``).

The bundle's data maps ``"schema.table.column"`` to a list of tags (``["pan"]``,
``["cvv"]``, ...). Classification is policy, so it is applied when the input document is
built (after any caching of the SQL analysis), not stored in the catalog.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["apply_tags", "classification_of", "column_key", "tags_for"]


def column_key(schema: str, table: str, column: str) -> str:
    return f"{schema}.{table}.{column}"


def tags_for(classification: Mapping[str, Sequence[str]], schema: str, table: str,
             column: str) -> list[str]:
    tags = classification.get(f"{schema}.{table}.{column}")
    if not tags:
        return []
    if isinstance(tags, str):  # tolerate "pan" for ["pan"]
        return [tags]
    return [str(t) for t in tags]


def apply_tags(columns: Iterable[Any],
               classification: Mapping[str, Sequence[str]] | None) -> list[Any]:
    """Copies of ``columns`` (dicts with ``schema``, ``table``, ``name``) with ``tags`` set
    from ``classification``; columns without an entry get ``[]``. The input is not changed.
    An entry that is not such a column (a crafted audit record's, replayed) is left as it
    is, and decided as it is."""
    out = []
    for col in columns:
        if isinstance(col, Mapping) and all(isinstance(col.get(k), str)
                                            for k in ("schema", "table", "name")):
            col = {**col, "tags": tags_for(classification, col["schema"], col["table"],
                                           col["name"]) if classification else []}
        out.append(col)
    return out


def classification_of(data: Any) -> dict[str, Any]:
    """A bundle's ``data.pgwarden.classification`` ({} when it has none)."""
    pg = data.get("pgwarden") if isinstance(data, dict) else None
    cls = pg.get("classification") if isinstance(pg, dict) else None
    return cls if isinstance(cls, dict) else {}
