"""Durable approval state shared by every worker and every gateway replica.

Two backends with one schema and one set of statements:

- :class:`SqliteStore` — an embedded SQLite file (stdlib ``sqlite3``, WAL journal,
  ``BEGIN IMMEDIATE`` write transactions, busy timeout), the default: enough for the
  pre-forked workers of one gateway, which share the file. No notifications: waiters
  poll (the service does it, at ``poll_interval``).
- :class:`PostgresStore` — two tables in PostgreSQL (psycopg 3) for several gateways.
  Every change ends with ``pg_notify(channel, request_id)`` inside its transaction, and
  a listener thread (its own connection, ``LISTEN``) hands those ids to the service, so
  a gateway holding a statement learns at once of a decision taken through another.

Both are synchronous and thread-safe (one connection behind a lock);
:class:`~gateway.approvals.service.ApprovalService` calls them from one worker thread.
Rules that need a consistent view (still pending, one vote per approver, the count of
approvals, the grant that an approval opens) are checked inside the write transaction,
so two approvers acting through two gateways at once cannot both win or double-count.
Writers are serialized (SQLite's write lock; a transaction-level advisory lock on
PostgreSQL), which also makes ``rev`` — the revision each change stamps on its row —
grow in commit order: a watcher that read up to ``rev`` N misses nothing by asking for
``rev > N`` next.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from gateway import logs

from .model import (
    APPROVED,
    DENIED,
    PENDING,
    ApprovalError,
    ApprovalRequest,
    Grant,
    Vote,
)

__all__ = ["ApprovalStore", "PostgresStore", "SqliteStore"]

_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,40}")

_REQUEST_COLUMNS = (
    "id", "rev", "status", "subject", "issuer", "groups", "connection", "session_id", "sql",
    "fingerprint", "approvers", "min_approvals", "grant_ttl", "input_digest", "holder",
    "requested_at", "expires_at", "resolved_at", "resolved_by", "resolution_reason", "votes",
    "grant_id",
)  # fmt: skip
_GRANT_COLUMNS = (
    "id", "request_id", "subject", "issuer", "connection", "fingerprint", "approvers",
    "granted_by", "created_at", "expires_at", "revoked_at", "revoked_by", "revoke_reason",
    "uses",
)  # fmt: skip

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {requests} (
    id                text PRIMARY KEY,
    rev               bigint NOT NULL,
    status            text NOT NULL,
    subject           text NOT NULL,
    issuer            text NOT NULL,
    groups            text NOT NULL,
    connection        text NOT NULL,
    session_id        text,
    sql               text NOT NULL,
    fingerprint       text NOT NULL,
    approvers         text NOT NULL,
    min_approvals     integer NOT NULL,
    grant_ttl         double precision,
    input_digest      text,
    holder            text,
    requested_at      double precision NOT NULL,
    expires_at        double precision NOT NULL,
    resolved_at       double precision,
    resolved_by       text,
    resolution_reason text,
    votes             text NOT NULL,
    grant_id          text
);
CREATE INDEX IF NOT EXISTS {requests}_rev ON {requests} (rev);
CREATE INDEX IF NOT EXISTS {requests}_status ON {requests} (status, expires_at);
CREATE TABLE IF NOT EXISTS {grants} (
    id            text PRIMARY KEY,
    request_id    text NOT NULL,
    subject       text NOT NULL,
    issuer        text NOT NULL,
    connection    text NOT NULL,
    fingerprint   text NOT NULL,
    approvers     text NOT NULL,
    granted_by    text NOT NULL,
    created_at    double precision NOT NULL,
    expires_at    double precision NOT NULL,
    revoked_at    double precision,
    revoked_by    text,
    revoke_reason text,
    uses          bigint NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS {grants}_lookup ON {grants} (subject, issuer, connection, fingerprint);
"""


class _Reconnect(Exception):
    """The connection broke before the operation changed anything: safe to redo once."""


F = TypeVar("F", bound=Callable[..., Any])


def _op(fn: F) -> F:
    """One store operation: serialized, and redone once on a fresh connection when the
    old one turned out dead before anything was (possibly) committed — a database
    restart or a failover costs the caller nothing."""

    @functools.wraps(fn)
    def run(self: ApprovalStore, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            for attempt in range(2):
                self._started = False
                try:
                    return fn(self, *args, **kwargs)
                except _Reconnect:
                    if attempt:
                        break
            raise ApprovalError("unavailable", "the approval store is unavailable")

    return run  # type: ignore[return-value]


def _row_to_request(row: Sequence[Any]) -> ApprovalRequest:
    d = dict(zip(_REQUEST_COLUMNS, row, strict=True))
    return ApprovalRequest(
        id=d["id"], rev=int(d["rev"]), status=d["status"], subject=d["subject"],
        issuer=d["issuer"], groups=tuple(json.loads(d["groups"])), connection=d["connection"],
        session_id=d["session_id"], sql=d["sql"], fingerprint=d["fingerprint"],
        approvers=tuple(json.loads(d["approvers"])), min_approvals=int(d["min_approvals"]),
        grant_ttl=d["grant_ttl"], input_digest=d["input_digest"], holder=d["holder"],
        requested_at=float(d["requested_at"]), expires_at=float(d["expires_at"]),
        resolved_at=d["resolved_at"], resolved_by=d["resolved_by"],
        resolution_reason=d["resolution_reason"],
        votes=tuple(Vote.from_dict(v) for v in json.loads(d["votes"])),
        grant_id=d["grant_id"],
    )


def _request_values(r: ApprovalRequest) -> tuple[Any, ...]:
    return (
        r.id, r.rev, r.status, r.subject, r.issuer, json.dumps(list(r.groups)), r.connection,
        r.session_id, r.sql, r.fingerprint, json.dumps(list(r.approvers)), r.min_approvals,
        r.grant_ttl, r.input_digest, r.holder, r.requested_at, r.expires_at, r.resolved_at,
        r.resolved_by, r.resolution_reason, json.dumps([v.to_dict() for v in r.votes]),
        r.grant_id,
    )


def _row_to_grant(row: Sequence[Any]) -> Grant:
    d = dict(zip(_GRANT_COLUMNS, row, strict=True))
    return Grant(
        id=d["id"], request_id=d["request_id"], subject=d["subject"], issuer=d["issuer"],
        connection=d["connection"], fingerprint=d["fingerprint"],
        approvers=tuple(json.loads(d["approvers"])),
        granted_by=tuple(json.loads(d["granted_by"])), created_at=float(d["created_at"]),
        expires_at=float(d["expires_at"]), revoked_at=d["revoked_at"],
        revoked_by=d["revoked_by"], revoke_reason=d["revoke_reason"], uses=int(d["uses"]),
    )


def _grant_values(g: Grant) -> tuple[Any, ...]:
    return (
        g.id, g.request_id, g.subject, g.issuer, g.connection, g.fingerprint,
        json.dumps(list(g.approvers)), json.dumps(list(g.granted_by)), g.created_at,
        g.expires_at, g.revoked_at, g.revoked_by, g.revoke_reason, g.uses,
    )


class ApprovalStore:
    """The statements both backends share; subclasses supply connections and locking.

    Placeholders are written ``?`` and turned into the driver's style once.
    """

    kind = "abstract"
    #: True when the store pushes change notifications (no need to poll quickly).
    notifies = False

    def __init__(self, prefix: str = "pgwarden_") -> None:
        if not _NAME_RE.fullmatch(prefix + "x"):
            raise ValueError(f"approval store prefix {prefix!r}: use lowercase letters, "
                             "digits and underscores")
        self.requests_table = f"{prefix}approvals"
        self.grants_table = f"{prefix}grants"
        self.channel = f"{prefix}approvals"
        self._lock = threading.RLock()
        self._sql_cache: dict[str, str] = {}
        self._started = False  # a statement of the current operation went through

    # -- backend hooks ----------------------------------------------------------------------

    def open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """A serialized write transaction."""
        raise NotImplementedError
        yield

    def _notify(self, payload: str) -> None:
        """Queue a change notification inside the current write transaction."""

    def start_listener(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(payload)`` (from another thread) for every change made
        anywhere; payload ``*`` means "anything may have changed" (after a reconnect)."""

    def stop_listener(self) -> None:
        pass

    # -- helpers ----------------------------------------------------------------------------

    def _sql(self, text: str) -> str:
        cached = self._sql_cache.get(text)
        if cached is None:
            cached = self._sql_cache[text] = self._placeholders(text.format(
                requests=self.requests_table, grants=self.grants_table,
                rcols=", ".join(_REQUEST_COLUMNS), gcols=", ".join(_GRANT_COLUMNS),
                rmarks=", ".join("?" for _ in _REQUEST_COLUMNS),
                gmarks=", ".join("?" for _ in _GRANT_COLUMNS),
                rsets=", ".join(f"{c} = ?" for c in _REQUEST_COLUMNS[1:])))
        return cached

    def _placeholders(self, sql: str) -> str:
        return sql

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        return list(self._execute(self._sql(sql), params).fetchall())

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Any] | None:
        return self._execute(self._sql(sql), params).fetchone()

    def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self._execute(self._sql(sql), params).rowcount)

    def _next_rev(self) -> int:
        row = self._one("SELECT COALESCE(MAX(rev), 0) + 1 FROM {requests}")
        assert row is not None
        return int(row[0])

    def _select_request(self, request_id: str) -> ApprovalRequest | None:
        row = self._one("SELECT {rcols} FROM {requests} WHERE id = ?",
                        (request_id,))
        return _row_to_request(row) if row is not None else None

    def _update_request(self, r: ApprovalRequest) -> ApprovalRequest:
        r = r.with_(rev=self._next_rev())
        self._run("UPDATE {requests} SET {rsets} WHERE id = ?",
                  (*_request_values(r)[1:], r.id))
        self._notify(r.id)
        return r

    # -- requests ---------------------------------------------------------------------------

    @_op
    def create_request(self, request: ApprovalRequest) -> ApprovalRequest:
        with self._lock, self._write():
            request = request.with_(rev=self._next_rev())
            self._run("INSERT INTO {requests} ({rcols}) VALUES ({rmarks})",
                      _request_values(request))
            self._notify(request.id)
            return request

    @_op
    def get_request(self, request_id: str) -> ApprovalRequest | None:
        with self._lock:
            return self._select_request(request_id)

    @_op
    def list_requests(self, status: str | None = None, limit: int = 1000
                      ) -> list[ApprovalRequest]:
        with self._lock:
            if status is None:
                rows = self._all("SELECT {rcols} FROM {requests} "
                                 "ORDER BY requested_at DESC LIMIT ?", (limit,))
            else:
                rows = self._all("SELECT {rcols} FROM {requests} WHERE status = ? "
                                 "ORDER BY requested_at DESC LIMIT ?", (status, limit))
        return [_row_to_request(r) for r in rows]

    @_op
    def max_rev(self) -> int:
        with self._lock:
            row = self._one("SELECT COALESCE(MAX(rev), 0) FROM {requests}")
        return int(row[0]) if row else 0

    @_op
    def changes_since(self, rev: int, limit: int = 1000) -> list[ApprovalRequest]:
        with self._lock:
            rows = self._all("SELECT {rcols} FROM {requests} WHERE rev > ? "
                             "ORDER BY rev LIMIT ?", (rev, limit))
        return [_row_to_request(r) for r in rows]

    @_op
    def vote(self, request_id: str, vote: Vote, *, grant_id: str | None = None
             ) -> tuple[ApprovalRequest, Grant | None, bool]:
        """Record one approver's vote, atomically.

        A deny resolves the request at once; approvals resolve it when there are
        ``min_approvals`` of them (from distinct approvers), and then open a grant (id
        ``grant_id``) when the request carries a ``grant_ttl``. Returns the request as
        stored, the grant opened (if any), and whether this vote resolved the request.
        Raises ApprovalError: not_found, not_pending (resolved or past its expiry),
        already_voted.
        """
        with self._lock, self._write():
            r = self._select_request(request_id)
            if r is None:
                raise ApprovalError("not_found", f"no approval request {request_id}")
            if r.status != PENDING:
                raise ApprovalError("not_pending", f"approval request {request_id} is "
                                    f"already {r.status}")
            if vote.at >= r.expires_at:
                raise ApprovalError("not_pending", f"approval request {request_id} has "
                                    "expired")
            if any(v.subject == vote.subject and v.issuer == vote.issuer for v in r.votes):
                raise ApprovalError("already_voted", f"you already voted on {request_id}")
            votes = (*r.votes, vote)
            grant = None
            if vote.decision == "deny":
                r = r.with_(status=DENIED, votes=votes, resolved_at=vote.at,
                            resolved_by=vote.subject, resolution_reason=vote.reason)
            else:
                approvers = [v.subject for v in votes if v.decision == "approve"]
                if len(approvers) >= r.min_approvals:
                    if r.grant_ttl and grant_id:
                        grant = Grant(
                            id=grant_id, request_id=r.id, subject=r.subject, issuer=r.issuer,
                            connection=r.connection, fingerprint=r.fingerprint,
                            approvers=r.approvers, granted_by=tuple(approvers),
                            created_at=vote.at, expires_at=vote.at + r.grant_ttl)
                        self._run("INSERT INTO {grants} ({gcols}) VALUES ({gmarks})",
                                  _grant_values(grant))
                    r = r.with_(status=APPROVED, votes=votes, resolved_at=vote.at,
                                resolved_by=", ".join(approvers),
                                resolution_reason=vote.reason,
                                grant_id=grant.id if grant else None)
                else:
                    r = r.with_(votes=votes)
            r = self._update_request(r)
            return r, grant, r.status != PENDING

    @_op
    def finish(self, request_id: str, status: str, *, at: float, by: str | None = None,
               reason: str | None = None) -> ApprovalRequest | None:
        """Pending → ``status`` (expired or withdrawn). None when it was not pending any
        more (someone else resolved it first: read it again)."""
        with self._lock, self._write():
            r = self._select_request(request_id)
            if r is None or r.status != PENDING:
                return None
            return self._update_request(r.with_(status=status, resolved_at=at,
                                                resolved_by=by, resolution_reason=reason))

    @_op
    def expire_due(self, now: float, limit: int = 100) -> list[ApprovalRequest]:
        """Expire pending requests past their expiry (their holder is gone)."""
        with self._lock, self._write():
            rows = self._all("SELECT {rcols} FROM {requests} WHERE status = ? "
                             "AND expires_at <= ? ORDER BY expires_at LIMIT ?",
                             (PENDING, now, limit))
            return [self._update_request(_row_to_request(row).with_(
                status="expired", resolved_at=now, resolution_reason="no decision in time"))
                for row in rows]

    @_op
    def purge(self, before: float) -> int:
        """Delete requests resolved and grants ended before ``before``."""
        with self._lock, self._write():
            n = self._run("DELETE FROM {requests} WHERE status <> ? AND resolved_at < ?",
                          (PENDING, before))
            n += self._run("DELETE FROM {grants} WHERE expires_at < ? OR revoked_at < ?",
                           (before, before))
            return n

    # -- grants -----------------------------------------------------------------------------

    @_op
    def find_grant(self, subject: str, issuer: str, connection: str, fingerprint: str,
                   now: float, *, count_use: bool = True) -> Grant | None:
        with self._lock:
            row = self._one(
                "SELECT {gcols} FROM {grants} WHERE subject = ? AND issuer = ? AND "
                "connection = ? AND fingerprint = ? AND revoked_at IS NULL AND expires_at > ? "
                "ORDER BY expires_at DESC LIMIT 1",
                (subject, issuer, connection, fingerprint, now))
            if row is None:
                return None
            grant = _row_to_grant(row)
            if count_use:
                # Not in a serialized transaction: a use count is information, not a rule.
                self._run("UPDATE {grants} SET uses = uses + 1 WHERE id = ?", (grant.id,))
                grant = Grant(**{**grant.__dict__, "uses": grant.uses + 1})
            return grant

    @_op
    def get_grant(self, grant_id: str) -> Grant | None:
        with self._lock:
            row = self._one("SELECT {gcols} FROM {grants} WHERE id = ?", (grant_id,))
        return _row_to_grant(row) if row is not None else None

    @_op
    def list_grants(self, now: float, include_inactive: bool = False, limit: int = 1000
                    ) -> list[Grant]:
        with self._lock:
            if include_inactive:
                rows = self._all("SELECT {gcols} FROM {grants} ORDER BY created_at DESC "
                                 "LIMIT ?", (limit,))
            else:
                rows = self._all("SELECT {gcols} FROM {grants} WHERE revoked_at IS NULL "
                                 "AND expires_at > ? ORDER BY created_at DESC LIMIT ?",
                                 (now, limit))
        return [_row_to_grant(r) for r in rows]

    @_op
    def revoke_grant(self, grant_id: str, *, at: float, by: str | None = None,
                     reason: str | None = None) -> tuple[Grant | None, bool]:
        """(grant, whether this call revoked it); (None, False) when unknown."""
        with self._lock, self._write():
            n = self._run("UPDATE {grants} SET revoked_at = ?, revoked_by = ?, "
                          "revoke_reason = ? WHERE id = ? AND revoked_at IS NULL",
                          (at, by, reason, grant_id))
            if n:
                self._notify(f"grant:{grant_id}")
            row = self._one("SELECT {gcols} FROM {grants} WHERE id = ?", (grant_id,))
        return (_row_to_grant(row) if row is not None else None), bool(n)


class SqliteStore(ApprovalStore):
    """One SQLite file in WAL mode, shared by the gateway's worker processes."""

    kind = "sqlite"

    def __init__(self, path: str | Path, *, prefix: str = "pgwarden_",
                 busy_timeout: float = 5.0) -> None:
        super().__init__(prefix)
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        with self._lock:
            if self._conn is not None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                # Requests hold (redacted) SQL and who asked: not for other local users.
                fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
                os.close(fd)
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout,
                                   isolation_level=None, check_same_thread=False)
            try:
                self._to_wal(conn)
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            with self._write():
                for stmt in self._schema():
                    conn.execute(stmt)

    def _to_wal(self, conn: sqlite3.Connection) -> None:
        """Switch the file to WAL, waiting up to the busy timeout for the lock: worker
        processes starting together race to switch a new file, and SQLite answers all
        but one "database is locked" at once instead of calling the busy handler (two
        waiting for each other would deadlock)."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(0.01)

    def _schema(self) -> list[str]:
        text = _SCHEMA.format(requests=self.requests_table, grants=self.grants_table)
        return [s.strip() for s in text.split(";") if s.strip()]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self._conn is None:  # it could not be opened at start: try again
            try:
                self.open()
            except (OSError, sqlite3.Error) as exc:
                raise ApprovalError("unavailable", "cannot open the approval store: "
                                    f"{type(exc).__name__}: {exc}"[:300]) from None
        assert self._conn is not None
        try:
            return self._conn.execute(sql, tuple(params))
        except sqlite3.OperationalError as exc:
            logs.error("approvals.store_error", store="sqlite", error=str(exc))
            raise ApprovalError("unavailable", "the approval store is unavailable") from None

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        self._execute("BEGIN IMMEDIATE")
        try:
            yield
            self._execute("COMMIT")
        except BaseException:
            # Also after a failed COMMIT (busy): never leave the transaction open.
            with contextlib.suppress(sqlite3.Error):
                assert self._conn is not None
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            raise


class PostgresStore(ApprovalStore):
    """Two tables in PostgreSQL, shared by gateway replicas, with LISTEN/NOTIFY."""

    kind = "postgres"
    notifies = True

    def __init__(self, dsn: str, *, prefix: str = "pgwarden_",
                 connect_timeout: float = 10.0) -> None:
        super().__init__(prefix)
        self._dsn = dsn
        self.connect_timeout = connect_timeout
        self._conn: Any = None
        self._listener: threading.Thread | None = None
        self._stop = threading.Event()
        self._in_tx = False

    def _placeholders(self, sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s")

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(self._dsn, autocommit=True,
                               connect_timeout=max(1, int(self.connect_timeout)),
                               application_name="pgwarden-approvals")

    def open(self) -> None:
        import psycopg

        with self._lock:
            if self._conn is not None and not self._conn.closed:
                return
            try:
                self._conn = self._connect()
                with self._conn.transaction():
                    # Replicas starting together must not race on CREATE TABLE.
                    self._conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                                       (f"pgwarden.approvals.schema:{self.requests_table}",))
                    self._conn.execute(_SCHEMA.format(requests=self.requests_table,
                                                      grants=self.grants_table))
            except psycopg.Error as exc:
                self._drop()
                raise ApprovalError("unavailable", "cannot open the approval store: "
                                    f"{type(exc).__name__}") from None

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None

    def close(self) -> None:
        self.stop_listener()
        with self._lock:
            self._drop()

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            if self._in_tx:  # never finish a transaction on a fresh connection
                raise _Reconnect
            self.open()
        try:
            cursor = self._conn.execute(sql, tuple(params))
        except psycopg.OperationalError as exc:
            logs.warning("approvals.store_error", store="postgres", error=type(exc).__name__)
            self._drop()
            if self._in_tx or not self._started:
                raise _Reconnect from None  # nothing was committed
            raise ApprovalError("unavailable", "the approval store is unavailable") from None
        if not self._in_tx:
            self._started = True
        return cursor

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        import psycopg

        if self._conn is None or self._conn.closed:
            self.open()
        committing = False
        self._in_tx = True
        try:
            with self._conn.transaction():
                self._execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                              (f"pgwarden.approvals.write:{self.requests_table}",))
                yield
                committing = True
        except psycopg.OperationalError as exc:
            logs.warning("approvals.store_error", store="postgres", error=type(exc).__name__)
            self._drop()
            if not committing:
                raise _Reconnect from None
            # The COMMIT itself failed: it may or may not have happened. Never redo.
            raise ApprovalError("unavailable", "the approval store is unavailable") from None
        finally:
            self._in_tx = False

    def _notify(self, payload: str) -> None:
        self._execute("SELECT pg_notify(%s, %s)", (self.channel, payload))

    # -- notifications ----------------------------------------------------------------------

    def start_listener(self, callback: Callable[[str], None]) -> None:
        if self._listener is not None:
            return
        self._stop.clear()
        self._listener = threading.Thread(target=self._listen, args=(callback,),
                                          name="pgwarden-approvals-listen", daemon=True)
        self._listener.start()

    def stop_listener(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.join(timeout=5)
            self._listener = None

    def _listen(self, callback: Callable[[str], None]) -> None:
        import psycopg
        from psycopg import sql

        def deliver(payload: str) -> None:
            try:
                callback(payload)
            except Exception as exc:  # the callback must not kill the listener
                logs.error("approvals.listen_callback_failed", error=type(exc).__name__)

        delay = 0.2
        while not self._stop.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    delay = 0.2
                    # Anything may have changed before we listened (or while away).
                    deliver("*")
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            deliver(note.payload)
            except psycopg.Error as exc:
                logs.warning("approvals.listen_failed", error=type(exc).__name__)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
