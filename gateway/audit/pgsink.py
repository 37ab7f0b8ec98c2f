"""The PostgreSQL sink: one table shared by several gateways, one chain per instance.

    CREATE TABLE pgwarden_audit (
        instance text        NOT NULL,   -- the chain: one per gateway process
        seq      bigint      NOT NULL,
        ts       timestamptz NOT NULL,
        type     text        NOT NULL,
        session  text,
        record   text        NOT NULL,   -- the exact record line (hashed bytes + hash)
        PRIMARY KEY (instance, seq)
    );

The table is created when missing (under an advisory lock, so replicas starting together
do not race). ``record`` is text, not jsonb: jsonb would reorder keys and change the
bytes the hash covers (``record::jsonb`` works for queries). The database must use UTF-8.
Give the gateway's role INSERT and SELECT only: UPDATE, DELETE and TRUNCATE are what the
chain detects, not what it needs.

A session-level advisory lock per instance id keeps a second process off a chain; the
sink takes it again after a reconnect. Batches go in with COPY inside one transaction;
after a failure the sink reconnects and skips the records a commit it could not confirm
already stored. ``durability: os`` sets ``synchronous_commit = off`` (the server's WAL
writer flushes within a fraction of a second); ``fsync`` keeps the server's setting.

The client library is psycopg 3 (a runtime dependency of pgwarden), used synchronously
from the writer thread.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql

from .canonical import GENESIS, chain_hash, parse_line
from .chain import Sealed
from .filesink import INSTANCE_RE
from .writer import AuditError, ResumeState

__all__ = ["DEFAULT_TABLE", "PgSink", "iter_pg_columns", "iter_pg_rows", "pg_instances"]

DEFAULT_TABLE = "pgwarden_audit"
_SCHEMA_LOCK = "pgwarden.audit.schema"
_INSTANCE_LOCK = "pgwarden.audit.instance:"


def _table_ident(table: str) -> sql.Composable:
    parts = table.split(".")
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise AuditError(f"audit table {table!r}: use NAME or SCHEMA.NAME")
    return sql.Identifier(*parts)


def _index_ident(table: str, suffix: str) -> sql.Composable:
    return sql.Identifier(table.split(".")[-1] + suffix)


class PgSink:
    kind = "postgres"
    segments = False

    def __init__(self, dsn: str, instance: str, *, table: str = DEFAULT_TABLE,
                 synchronous_commit: bool = True, connect_timeout: int = 5) -> None:
        if not INSTANCE_RE.match(instance):
            raise AuditError(f"audit instance id {instance!r}: use 1-64 letters, digits, "
                             "'.', '_' or '-'")
        self.dsn = dsn
        self.instance = instance
        self.table = table
        self._ident = _table_ident(table)
        self.synchronous_commit = synchronous_commit
        self.connect_timeout = connect_timeout
        self._conn: psycopg.Connection[Any] | None = None
        self._check_stored = False

    # -- connection ----------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=self.connect_timeout,
                               application_name=f"pgwarden-audit-{self.instance}")
        try:
            enc = conn.execute("SHOW server_encoding").fetchone()
            if not enc or str(enc[0]).upper() not in ("UTF8", "UTF-8"):
                raise AuditError(f"the audit database must use UTF-8 (it uses {enc and enc[0]})")
            if not self.synchronous_commit:
                conn.execute("SET synchronous_commit TO off")
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                             (_SCHEMA_LOCK,))
                conn.execute(sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (instance text NOT NULL, seq bigint NOT NULL,"
                    " ts timestamptz NOT NULL, type text NOT NULL, session text,"
                    " record text NOT NULL, PRIMARY KEY (instance, seq))").format(self._ident))
                conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (session)").format(
                    _index_ident(self.table, "_session"), self._ident))
            row = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                               (_INSTANCE_LOCK + self.instance,)).fetchone()
            if not row or not row[0]:
                raise AuditError(f"another gateway writes audit instance {self.instance!r} "
                                 f"to {self.table} (give each gateway process its own id)")
        except BaseException:
            conn.close()
            raise
        return conn

    def _connection(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._conn = None
            conn = self._conn = self._connect()
        return conn

    # -- the sink ------------------------------------------------------------------------

    def acquire(self) -> ResumeState | None:
        conn = self._connection()
        row = conn.execute(sql.SQL("SELECT seq, record FROM {} WHERE instance = %s "
                                   "ORDER BY seq DESC LIMIT 1").format(self._ident),
                           (self.instance,)).fetchone()
        if row is None:
            return ResumeState(0, GENESIS, 1, None, 0)
        seq, record = row
        # The head a new run chains on, checked as a file's last line is: a row anyone
        # with INSERT could add must at least be a record that hashes to itself
        parsed = parse_line(record.encode("utf-8")) if isinstance(record, str) else None
        if parsed is None or parsed[0].get("seq") != seq \
                or not isinstance(parsed[0].get("prev"), str) \
                or chain_hash(parsed[0]["prev"], parsed[1]) != parsed[2]:
            raise AuditError(f"{self.table}: the last record of instance {self.instance!r} "
                             f"(seq {seq}) is damaged; run `pgwarden audit verify`")
        rec, digest = parsed[0], parsed[2]
        head = conn.execute(sql.SQL("SELECT record FROM {} WHERE instance = %s AND type = "
                                    "'segment' ORDER BY seq DESC LIMIT 1").format(self._ident),
                            (self.instance,)).fetchone()
        n = 0
        if head is not None:
            try:
                n = int(json.loads(head[0]).get("segment") or 0)
            except (ValueError, TypeError, AttributeError):
                n = 0
        sealed = rec.get("type") == "checkpoint" and rec.get("final") is True
        return ResumeState(int(seq), str(digest), n + 1, self.location(n), 0, sealed)

    def location(self, n: int) -> str:
        return f"{self.table}:{self.instance}#{n}"

    def open_segment(self, n: int) -> None:
        return None

    def write(self, batch: Sequence[Sealed]) -> None:
        try:
            conn = self._connection()
            if self._check_stored:
                batch = self._unstored(conn, batch)
                self._check_stored = False
                if not batch:
                    return
            copy = sql.SQL("COPY {} (instance, seq, ts, type, session, record) FROM STDIN"
                           ).format(self._ident)
            with conn.transaction(), conn.cursor() as cur, cur.copy(copy) as cp:
                for s in batch:
                    cp.write_row((self.instance, s.seq, s.ts, s.type, s.session,
                                  s.line[:-1].decode("utf-8")))
        except BaseException:
            self._check_stored = True
            if self._conn is not None and (self._conn.broken or self._conn.closed):
                self._conn.close()
                self._conn = None
            raise

    def _unstored(self, conn: psycopg.Connection[Any], batch: Sequence[Sealed]
                  ) -> list[Sealed]:
        """After a failed write, the part of `batch` the table does not hold yet (a commit
        whose answer was lost holds some). A row at one of the batch's seqs that is not
        exactly this gateway's record (anyone with INSERT can add one ahead of it) is an
        AuditError: dropping ours as written would lose it."""
        rows = conn.execute(sql.SQL("SELECT seq, record FROM {} WHERE instance = %s AND seq "
                                    "BETWEEN %s AND %s").format(self._ident),
                            (self.instance, batch[0].seq, batch[-1].seq)).fetchall()
        mine = {s.seq: s.line[:-1].decode("utf-8") for s in batch}
        for seq, record in rows:
            if mine.get(seq) != record:
                raise AuditError(f"{self.table}: seq {seq} of instance {self.instance!r} "
                                 "holds a record this gateway did not write; run `pgwarden "
                                 "audit verify --pg`")
        stored = {seq for seq, _ in rows}
        return [s for s in batch if s.seq not in stored]

    def retire(self) -> None:
        pass  # no segments: nothing closes before close()

    def sync(self) -> None:
        return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# -- reading (verify, show, export) --------------------------------------------------------


def pg_instances(conn: psycopg.Connection[Any], table: str) -> list[str]:
    rows = conn.execute(sql.SQL("SELECT DISTINCT instance FROM {} ORDER BY 1")
                        .format(_table_ident(table))).fetchall()
    return [r[0] for r in rows]


def iter_pg_columns(conn: psycopg.Connection[Any], table: str, instance: str
                    ) -> Iterator[tuple[int, bytes, tuple[str, str, str | None]]]:
    """As iter_pg_rows, with the columns that repeat record fields for queries: ``ts`` as
    a record writes it, ``type``, ``session``."""
    query = sql.SQL("SELECT seq, record, to_char(ts AT TIME ZONE 'UTC', "
                    "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), type, session FROM {} "
                    "WHERE instance = %s ORDER BY seq").format(_table_ident(table))
    with conn.cursor(name="pgwarden_audit_rows") as cur:
        cur.itersize = 2000
        cur.execute(query, (instance,))
        for seq, record, ts, rtype, session in cur:
            # (NULLs where the schema says NOT NULL: an owner can drop the constraint)
            yield int(seq), (record or "").encode("utf-8"), (ts, rtype, session)


def iter_pg_rows(conn: psycopg.Connection[Any], table: str,
                 instance: str) -> Iterator[tuple[int, bytes]]:
    """(seq column, record line bytes) of one instance, in seq order (server-side cursor)."""
    for seq, raw, _ in iter_pg_columns(conn, table, instance):
        yield seq, raw
