"""Reading records back (for show, export, explain and replay; not a verification).

:func:`read_records` yields the records of a directory or a PostgreSQL table, each with
where it is stored, merged across instances in time order. Lines that are not UTF-8 JSON,
or nest too deeply to parse, are skipped (``audit verify`` is what reports them).
"""

from __future__ import annotations

import heapq
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .canonical import format_ts
from .display import json_text
from .filesink import list_segments

__all__ = ["Located", "RecordFilter", "flatten", "read_records"]


def flatten(rec: dict[str, Any]) -> dict[str, Any]:
    """`rec` with its ``who`` and ``where`` members lifted to the top level."""
    flat = dict(rec)
    for part in ("who", "where"):
        inner = rec.get(part)
        if isinstance(inner, dict):
            for k, v in inner.items():
                flat.setdefault(k, v)
    return flat


@dataclass(frozen=True, slots=True)
class Located:
    instance: str
    location: str
    line: int
    record: dict[str, Any]
    raw: bytes  # the stored line, without its newline


@dataclass(frozen=True)
class RecordFilter:
    session: str | None = None
    since: float | None = None  # epoch seconds
    until: float | None = None
    types: tuple[str, ...] = ()  # "decision", or a family: "approval" = approval.*
    instance: str | None = None
    seq: int | None = None
    #: record types kept from before `since` and whatever `types` says (`session`,
    #: `instance`, `seq` and `until` still apply): what a reader needs to make sense of
    #: the records it shows, e.g. the decisions later executions ran under
    context: tuple[str, ...] = ()

    def predicate(self) -> Callable[[dict[str, Any]], bool]:
        since = format_ts(int(self.since * 1e9)) if self.since is not None else None
        until = format_ts(int(self.until * 1e9)) if self.until is not None else None
        types, context = self.types, self.context

        def keep(rec: dict[str, Any]) -> bool:
            if self.session is not None and rec.get("session") != self.session:
                return False
            if self.seq is not None and rec.get("seq") != self.seq:
                return False
            ts = rec.get("ts")
            if until is not None and not (isinstance(ts, str) and ts < until):
                return False
            if context and rec.get("type") in context:
                return True
            if since is not None and not (isinstance(ts, str) and ts >= since):
                return False
            if types:
                t = str(rec.get("type", ""))
                if not any(t == x or t.startswith(x + ".") for x in types):
                    return False
            return True

        return keep


def _parse(raw: bytes) -> dict[str, Any] | None:
    """The record a line holds, or None for a line that is not one. Decoded as UTF-8
    first, as the gateway writes it: json.loads would also take UTF-16/32, which the
    stored bytes (``--json``, ``export --format jsonl``) then are not."""
    try:
        rec = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # RecursionError: nested past the parser's limit
        return None
    return rec if isinstance(rec, dict) else None


def _dir_instance(directory: str | os.PathLike[str], instance: str,
                  segments: list[Any]) -> Iterator[Located]:
    for _n, path in segments:
        with open(path, "rb") as f:
            for line_no, line in enumerate(f, 1):
                raw = line.rstrip(b"\n")
                rec = _parse(raw)
                if rec is not None:
                    yield Located(instance, path.name, line_no, rec, raw)


def _pg_instance(conn: Any, table: str, instance: str) -> Iterator[Located]:
    from .pgsink import iter_pg_rows

    location = f"{table} instance {instance}"
    for row, (_seq, raw) in enumerate(iter_pg_rows(conn, table, instance), 1):
        rec = _parse(raw)
        if rec is not None:
            yield Located(instance, location, row, rec, raw)


def _order(loc: Located) -> tuple[str, str, int, float | str]:
    """Time order. A ts or seq of an odd type (a crafted line) sorts by its JSON text after
    the numbers, so that two keys always compare."""
    ts, seq = loc.record.get("ts", ""), loc.record.get("seq", 0)
    ts_key = ts if isinstance(ts, str) else json_text(ts)
    if isinstance(seq, int | float):
        return ts_key, loc.instance, 0, seq
    return ts_key, loc.instance, 1, json_text(seq)


def _merge(streams: Iterable[Iterator[Located]]) -> Iterator[Located]:
    return heapq.merge(*streams, key=_order)


def read_records(*, directory: str | os.PathLike[str] | None = None, dsn: str | None = None,
                 table: str = "pgwarden_audit",
                 where: RecordFilter | None = None) -> Iterator[Located]:
    """Records from `directory` or the table at `dsn`, in time order, filtered."""
    where = where or RecordFilter()
    keep = where.predicate()
    if directory is not None:
        found = list_segments(directory)
        names = [where.instance] if where.instance else sorted(found)
        streams = [_dir_instance(directory, i, found.get(i, [])) for i in names]
        for located in _merge(streams):
            if keep(located.record):
                yield located
        return
    if dsn is None:
        raise ValueError("read_records needs a directory or a dsn")
    import psycopg

    from .pgsink import pg_instances

    with psycopg.connect(dsn) as conn:
        names = [where.instance] if where.instance else pg_instances(conn, table)
        # One connection, one server-side cursor at a time: read instance by instance.
        per_instance = []
        for instance in names:
            per_instance.append([r for r in _pg_instance(conn, table, instance)
                                 if keep(r.record)])
            conn.rollback()
    yield from _merge(iter(rows) for rows in per_instance)
