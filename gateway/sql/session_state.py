"""Per-session SQL state the analyzer needs: search_path, current user, prepared
statements, cursors and temporary tables.

The gateway keeps one :class:`SessionSqlState` per client session. ``analyze()`` never
changes it: each :class:`~gateway.sql.analyzer.StatementInfo` carries the state changes the
statement would make (``effects``), and the gateway applies them with :meth:`observe` once
the statement has run (on CommandComplete; calling it when the statement is allowed is a
close approximation). Within one multi-statement query string, ``analyze()`` applies the
effects of earlier statements to a scratch copy so later ones are described correctly
(``SET search_path ...; SELECT ...``, ``PREPARE ...; EXECUTE ...``).

What the gateway should also feed in:

* :meth:`parameter_status` for every ParameterStatus from the server: PostgreSQL 18 reports
  ``search_path`` (and ``session_authorization``), which corrects what watching statements
  can't see (SET inside functions, a rolled-back SET, ``set_config()``);
* :meth:`ready_for_query` with the ReadyForQuery status (``I``/``T``/``E``): cursors declared
  without HOLD end with their transaction;
* :meth:`register_parse` / :meth:`close_statement` for protocol-level named statements
  (SQL ``EXECUTE`` can run them).

Temporary tables are tracked from CREATE/DROP/ALTER statements seen in the session; the
analyzer reports a temp table together with the permanent table it shadows (see
``Catalog.relation_candidates``), so a missed ROLLBACK can't hide a permanent table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..catalog.model import (
    EVERY_RELATION,
    TEMP_SCHEMA,
    Catalog,
    Relation,
    _normalise_path,
    parse_search_path,
)

if TYPE_CHECKING:
    from .analyzer import StatementInfo

__all__ = ["Cursor", "Effect", "PreparedStatement", "SessionSqlState", "may_set_path"]


@dataclass(frozen=True, slots=True)
class Effect:
    """A change a statement makes to session state (applied by ``observe``).

    ops: ``search_path`` (value: tuple of names, or None = reset), ``role`` (name|None),
    ``session_authorization`` (name|None), ``reset_all`` (resets search_path, not the
    role), ``prepare`` (name, value: SQL of
    the PREPARE statement), ``deallocate`` (name|None = all), ``declare`` (name, value:
    WITH HOLD), ``close`` (name|None = all), ``create_relation`` (value: Relation),
    ``drop_relation`` (value: (schema|None, name)), ``discard`` (name: ALL/TEMP/PLANS/
    SEQUENCES), ``end_transaction``.
    """

    op: str
    name: str | None = None
    value: Any = None


@dataclass(frozen=True, slots=True)
class PreparedStatement:
    name: str
    sql: str
    origin: str  # "sql": the text of a PREPARE statement; "protocol": a Parse message's query
    #: a protocol statement's: the search paths its names were resolved along when it was
    #: decided (None: every schema). PostgreSQL re-plans it under the path of the moment.
    paths: frozenset[tuple[str, ...] | None] | None = None
    #: a protocol FETCH, MOVE or EXECUTE's: the session's names_version when it was
    #: decided (the cursor or SQL statement it names is looked up again at each Bind)
    names_at: int | None = None
    #: a protocol statement's: how many schema changes the session had made when it was
    #: decided, and the names of the relations it reads (DDL since on one of those names
    #: makes the server re-plan it onto what the DDL changed)
    schema_at: int = 0
    reads: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Cursor:
    name: str
    info: StatementInfo  # the DECLARE's description (its query)
    hold: bool


class SessionSqlState:
    """Mutable per-session state (one per client session, not shared between sessions)."""

    def __init__(self, *, search_path: Sequence[str] | str | None = None,
                 user: str | None = None) -> None:
        #: The session's initial path; None = the catalog's default (the server's).
        self.default_search_path: tuple[str, ...] | None = (
            None if search_path is None else tuple(_normalise_path(search_path)))
        self._search_path: tuple[str, ...] | None = None
        #: Login (session) user; None = the catalog loader's user.
        self.login_user = user
        self.session_user = user
        self.role: str | None = None
        self.prepared: dict[str, PreparedStatement] = {}
        #: whether SQL PREPARE ever defined a statement in this session (then every Bind
        #: and Describe of a statement is checked)
        self.sql_used = False
        #: whether a SQL DECLARE was ever allowed in this session (then every Execute is
        #: checked: SQL cursors and protocol portals share one namespace)
        self.cursor_used = False
        #: relations (schema, name) DDL the gateway allowed wrote to, while the server has
        #: not shown it committed (an idle ReadyForQuery with nothing outstanding): the
        #: catalog, read over another connection, does not show them; None: no such DDL
        self.schema_changes: frozenset[tuple[str, str]] | None = None
        #: the texts a SQL PREPARE'd name may have at the server: every PREPARE of it the
        #: gateway allowed (one may not have run: a name in use, an error ahead of it, a
        #: Parse of it never executed; nor a DEALLOCATE), so more than one is ambiguous.
        #: Only that is asked: each text is kept as a digest, and two at most per name.
        self.sql_texts: dict[str, set[bytes]] = {}
        #: whether a name is a protocol portal the gateway follows (the result masker's
        #: word, wired by the relay): SQL FETCH of one is refused
        self.protocol_portal: Callable[[str], bool] | None = None
        self.cursors: dict[str, Cursor] = {}
        # Earlier cursors of a name the server may still have: a DECLARE of a name in use
        # fails, and a CLOSE (or DECLARE) behind an error does not run; a FETCH is then
        # described by every one of them (cursor_candidates). Those without HOLD end with
        # the transaction.
        self.cursor_history: dict[str, tuple[Cursor, ...]] = {}
        # Names whose earlier cursors reached MAX_CURSOR_HISTORY: the gateway can no
        # longer tell every query one may run, so the gate refuses them.
        self.cursor_overflow: set[str] = set()
        # Bumped by every allowed DECLARE, CLOSE, PREPARE, DEALLOCATE, DISCARD ALL: a
        # protocol FETCH or EXECUTE decided before may no longer be what a Bind of it runs
        # (stale; and see schema_writes). bind_check: Binds must be looked at.
        self.names_version = 0
        # the relation names each allowed schema change wrote, in order (None: any), from
        # the session's schema change number _schema_base on (see MAX_SCHEMA_WRITES)
        self.schema_writes: list[frozenset[str] | None] = []
        self._schema_base = 0
        self.bind_check = False
        self.temp_relations: dict[str, Relation] = {}
        # Non-temp relations created earlier in the same query string (scratch copies only;
        # the real session waits for the catalog refresh).
        self._created: dict[tuple[str, str], Relation] = {}
        # Search paths the server may be on besides `search_path`: a SET decided here may
        # not run (an error ahead of it, a rolled-back transaction), and a function may set
        # it unseen (set_config, a user function, DO, CALL: then any schema). Settled by the
        # server's report of search_path once nothing is outstanding (ready_for_query).
        self.other_paths: tuple[tuple[str, ...] | None, ...] = ()
        self.any_path = False
        self.path_reported = False  # the server reports search_path (PostgreSQL 18)
        #: the path changed since a protocol statement was prepared: Binds are checked
        self.path_moved = False
        self._reported_path: tuple[str, ...] | None = None  # ... its last report
        self._reported_unreadable = False  # ... which the gateway could not read
        self._version = 0
        self._cat_cache: tuple[Any, Catalog] | None = None
        self._temp_key: tuple[Any, ...] | None = ()

    # -- what the analyzer reads -------------------------------------------------------------

    @property
    def search_path(self) -> tuple[str, ...] | None:
        """The session's search_path if known (set or reported), else the initial one."""
        return self._search_path if self._search_path is not None else \
            self.default_search_path

    @search_path.setter
    def search_path(self, value: Sequence[str] | str | None) -> None:
        self._search_path = None if value is None else tuple(_normalise_path(value))

    def effective_search_path(self, catalog: Catalog) -> tuple[str, ...]:
        path = self.search_path
        return path if path is not None else catalog.default_search_path

    @property
    def current_user(self) -> str | None:
        """What ``"$user"`` stands for (SET ROLE changes it)."""
        return self.role or self.session_user

    def user_schema_differs(self, role: str, catalog: Catalog) -> bool:
        """Whether names may resolve otherwise as `role` (after a SET ROLE) than as the
        current user: ``"$user"`` is on a path the server may be on, and one of the two
        has a schema of its name."""
        user = self.current_user or catalog.user
        if role == user:
            return False
        paths = (self.effective_search_path(catalog), *(
            catalog.default_search_path if p is None else p for p in self.other_paths))
        if not self.any_path and not any("$user" in p for p in paths):
            return False
        return catalog.has_schema(role) or (user is not None and catalog.has_schema(user))

    @contextmanager
    def acting_as(self, role: str) -> Iterator[None]:
        """The current user is `role` meanwhile (what ``"$user"`` stands for)."""
        saved = self.role
        self.role = role
        try:
            yield
        finally:
            self.role = saved

    def catalog_for(self, catalog: Catalog) -> Catalog:
        """``catalog`` plus this session's temporary tables, resolving names along every
        search path the session may be on (cached)."""
        if not self.temp_relations and not self._created and not self.other_paths \
                and not self.any_path and self.schema_changes is None:
            return catalog
        key = (catalog.generation, id(catalog), self._version)
        cached = self._cat_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        cat = catalog
        if self.temp_relations or self._created:
            cat = cat.with_temp(self.temp_relations.values())
            if self._created:
                cat = cat.with_relations(self._created.values())
        if self.other_paths or self.any_path:
            cat = cat.with_paths((catalog.default_search_path if p is None else p
                                  for p in self.other_paths), self.any_path)
        if self.schema_changes is not None:
            cat = cat.with_unsettled(self.schema_changes)
        self._cat_cache = (key, cat)
        return cat

    def resolution_key(self, catalog: Catalog) -> tuple[Any, ...]:
        """Everything besides the SQL text that a cacheable description depends on: cache
        analysis results by ``(sql, protocol, resolution_key)`` — and don't cache results
        with ``cacheable=False`` (EXECUTE, FETCH, MOVE). Equal keys mean equal state, so the
        cache may be shared between sessions."""
        temp_key = self._temp_key
        if temp_key is None:
            temp_key = self._temp_key = tuple(sorted(
                (r.schema, r.name, r.relkind, r.columns, r.view_sql)
                for r in (*self.temp_relations.values(), *self._created.values())))
        return (catalog.generation, self.effective_search_path(catalog),
                self.current_user or catalog.user, temp_key, self.other_paths, self.any_path,
                self.schema_changes)

    # -- what the gateway feeds in ------------------------------------------------------------

    def register_parse(self, name: str, sql: str, *, names: bool = False,
                       reads: frozenset[str] = frozenset()) -> None:
        """A protocol-level Parse of a named statement ("" = unnamed, not reachable from SQL
        EXECUTE but kept for the gateway's convenience); `names`: it runs a cursor or SQL
        prepared statement by name (FETCH, MOVE, EXECUTE); `reads`: the names of the
        relations it reads."""
        self.prepared[name] = PreparedStatement(
            name, sql, "protocol", self.path_candidates(),
            self.names_version if names else None,
            self._schema_base + len(self.schema_writes), reads)

    def stale(self, name: str) -> str | None:
        """Why protocol statement `name` may run something other than what it was decided
        as, at a Bind now (None: it runs what was decided). PostgreSQL looks its names up
        again at each Bind."""
        ps = self.prepared.get(name)
        if ps is None or ps.origin != "protocol":
            return None
        if not self.path_fits(name):
            return ("was decided under another search_path, and PostgreSQL would run it under "
                    "this one")
        if ps.names_at is not None and ps.names_at != self.names_version:
            return ("names a cursor or SQL prepared statement that was declared, prepared or "
                    "closed since it was decided")
        since = ps.schema_at - self._schema_base
        if since < 0:
            return ("was decided before a schema change in this session that the gateway "
                    f"no longer tells apart (it follows {MAX_SCHEMA_WRITES} at a time)")
        for written in self.schema_writes[since:]:
            if written is None or written & ps.reads or ps.names_at is not None:
                return ("reads a relation a schema change in this session changed since it "
                        "was decided")
        return None

    def path_candidates(self) -> frozenset[tuple[str, ...] | None] | None:
        """The search paths the server may be on (None: any, or unknown)."""
        if self.any_path:
            return None
        return frozenset((self.search_path, *self.other_paths))

    def path_fits(self, name: str) -> bool:
        """Whether protocol statement `name` was decided along every search path the
        server may be on now (PostgreSQL re-plans a prepared statement under the current
        one: decided along another, its masks and relations would be another's)."""
        ps = self.prepared.get(name)
        if ps is None or ps.origin != "protocol" or ps.paths is None:
            return True
        now = self.path_candidates()
        return now is not None and now <= ps.paths

    def close_statement(self, name: str) -> None:
        self.prepared.pop(name, None)

    def sql_prepared(self, name: str) -> bool:
        """Whether `name` is a statement SQL PREPARE defined."""
        ps = self.prepared.get(name)
        return ps is not None and ps.origin == "sql"

    def prepared_sql(self, name: str) -> str | None:
        ps = self.prepared.get(name)
        return ps.sql if ps is not None else None

    def startup_path(self, value: str) -> None:
        """The search_path the client's startup packet set: the session's initial path,
        and what RESET returns to. (From PostgreSQL 18 on the server reports it too.)"""
        try:
            self.default_search_path = parse_search_path(value)
        except ValueError:  # the server took it, the gateway cannot read it: any schema
            self.default_search_path = None
            self.any_path = True
        self._bump()

    def parameter_status(self, name: str, value: str) -> None:
        """A ParameterStatus the server sent (authoritative)."""
        if name == "search_path":
            self.path_reported = True
            self._path_moves()
            try:
                self._search_path = self._reported_path = parse_search_path(value)
                self._reported_unreadable = False
            except ValueError:
                self._search_path = self._reported_path = None
                self.any_path = self._reported_unreadable = True  # (then: any schema)
            self._bump()
        elif name == "session_authorization":
            self.session_user = value
            self._bump()  # "$user" in the search path may now name another schema

    def ready_for_query(self, status: str, idle: Callable[[], bool] | None = None) -> None:
        """ReadyForQuery: ``I`` (idle) ends non-holdable cursors, once nothing sent to the
        server waits for an answer (`idle()`: a DECLARE sent behind this answer may have
        begun a transaction of its own), which is also when what the server last reported
        of search_path is where it is (asked only when something is unsettled)."""
        if status == "I" and (self.schema_changes is not None or self.cursors
                              or self.cursor_history) and (idle is None or idle()):
            if self.schema_changes is not None:
                self.schema_changes = None  # committed or rolled back: the catalog may say
                self._bump()
            self.cursors = {n: c for n, c in self.cursors.items() if c.hold}
            self._drop_unheld_history()
        if idle is not None and self.path_reported and (
                self.other_paths or self._search_path != self._reported_path
                or self.any_path != self._reported_unreadable) and idle():
            # (a SET that did not run, or was rolled back, changed nothing it reports)
            self._search_path = self._reported_path
            self.other_paths, self.any_path = (), self._reported_unreadable
            self._path_moves()
            self._bump()

    def observe(self, info: StatementInfo) -> None:
        """Apply a statement's effects once it is allowed (what it does to search_path
        stays unsettled until the server says: see ``other_paths``)."""
        if info.catalog_changed:
            written = {(r.schema, r.name) for r in info.relations if "write" in r.access}
            # (one that names no relation, ALTER SCHEMA ... RENAME say, may move any)
            self.schema_changes = (self.schema_changes or frozenset()) | (
                written or {EVERY_RELATION})
            self._bump()
            # (by name: a new temp table shadows a table of its name in any schema)
            self.schema_writes.append(frozenset(n for _, n in written) if written else None)
            if len(self.schema_writes) > MAX_SCHEMA_WRITES:
                # Forgotten, so that memory and each Bind's check stay bounded in a
                # session that runs DDL without end (a staging table per job, say): a
                # statement decided before them is stale from now on, never fresh.
                self._schema_base += len(self.schema_writes)
                self.schema_writes = []
            self.bind_check = self.bind_check or bool(self.prepared)
        if not self.any_path and may_set_path(info):
            self.any_path = True
            self._path_moves()
            self._bump()
        for effect in info.effects:
            if effect.op in _PATH_EFFECTS:
                self._path_moves()
                path = self.search_path
                if path not in self.other_paths:  # the server stays there if it fails
                    self.other_paths += (path,)
            self._apply(effect, info, scratch=False)

    def apply_scratch(self, info: StatementInfo) -> None:
        """Like :meth:`observe`, for a scratch copy inside one query string (also keeps
        non-temporary relations created by the statement, until the catalog is refreshed).
        Statements after one that fails do not run: its SET holds for them."""
        if not self.any_path and may_set_path(info):
            self.any_path = True
            self._bump()
        for effect in info.effects:
            self._apply(effect, info, scratch=True)

    def copy(self) -> SessionSqlState:
        new = SessionSqlState.__new__(SessionSqlState)
        new.default_search_path = self.default_search_path
        new._search_path = self._search_path
        new.login_user = self.login_user
        new.session_user = self.session_user
        new.role = self.role
        new.prepared = dict(self.prepared)
        new.sql_used = self.sql_used
        new.cursor_used = self.cursor_used
        new.schema_changes = self.schema_changes
        new.sql_texts = self.sql_texts
        new.protocol_portal = self.protocol_portal
        new.cursors = dict(self.cursors)
        new.cursor_history = dict(self.cursor_history)
        new.temp_relations = dict(self.temp_relations)
        new._created = dict(self._created)
        new.other_paths = self.other_paths
        new.any_path = self.any_path
        new.path_reported = self.path_reported
        new.path_moved = self.path_moved
        new.names_version, new.schema_writes = self.names_version, self.schema_writes
        new._schema_base = self._schema_base
        new.bind_check = self.bind_check
        new._reported_path = self._reported_path
        new._reported_unreadable = self._reported_unreadable
        new._version = self._version
        new._cat_cache = None
        new._temp_key = None
        return new

    # -- internals ----------------------------------------------------------------------------

    def may_be_cursor(self, name: str) -> bool:
        """Whether the server may have a SQL cursor of this name."""
        return name in self.cursors or name in self.cursor_history

    def cursor_candidates(self, name: str) -> list[StatementInfo]:
        """The queries cursor `name` may be running at the server: the last one declared
        (if the gateway thinks it open), then earlier ones it may still be."""
        out = []
        current = self.cursors.get(name)
        if current is not None:
            out.append(current.info)
        for cursor in self.cursor_history.get(name, ()):
            if cursor.info not in out:
                out.append(cursor.info)
        return out

    def _keep_cursor(self, name: str) -> None:
        """A DECLARE or CLOSE of `name` is allowed: the cursor it had may outlive it.
        (At most MAX_CURSOR_HISTORY per name: past it the name is refused.)"""
        current = self.cursors.get(name)
        if current is not None:
            kept = self.cursor_history.get(name, ())
            # one of each description: a loop declaring the name over the same query with
            # other constants keeps one (a FETCH is described the same by either)
            same = current.info.with_sql("")
            if any(c.hold == current.hold and c.info.with_sql("") == same for c in kept):
                return
            if len(kept) < MAX_CURSOR_HISTORY:
                self.cursor_history[name] = (*kept, current)
            else:
                self.cursor_overflow.add(name)

    def _drop_unheld_history(self) -> None:
        history = {}
        for name, kept in self.cursor_history.items():
            held = tuple(c for c in kept if c.hold)
            if held:
                history[name] = held
        self.cursor_history = history

    def _path_moves(self) -> None:
        """The search path may change: Binds of the statements prepared so far are
        checked from now on (path_fits)."""
        self.path_moved = self.path_moved or bool(self.prepared)

    def _bump(self) -> None:
        self._version += 1
        self._cat_cache = None
        self._temp_key = None

    def _apply(self, effect: Effect, info: StatementInfo, *, scratch: bool) -> None:
        op = effect.op
        if op in _NAME_OPS and not scratch:
            self.names_version += 1
            self.bind_check = self.bind_check or bool(self.prepared)
        if op == "search_path":
            self._search_path = effect.value
            self._bump()
        elif op == "role":
            self.role = effect.name
            self._bump()
        elif op == "session_authorization":
            self.session_user = effect.name if effect.name is not None else self.login_user
            self.role = None
            self._bump()
        elif op == "reset_all":  # RESET ALL leaves role and session_authorization alone
            self._search_path = None
            self._bump()
        elif op == "prepare":
            assert effect.name is not None
            self.prepared[effect.name] = PreparedStatement(effect.name, effect.value, "sql")
            self.sql_used = True
            if not scratch:
                texts = self.sql_texts.setdefault(effect.name, set())
                if len(texts) < 2:
                    texts.add(hashlib.sha256(
                        str(effect.value).encode("utf-8", "surrogatepass")).digest())
        elif op == "deallocate":
            if effect.name is None:  # DEALLOCATE ALL includes protocol-level statements
                self.prepared.clear()
            else:
                self.prepared.pop(effect.name, None)
        elif op == "declare":
            assert effect.name is not None
            if not scratch:
                self._keep_cursor(effect.name)
                self.cursor_used = True
            self.cursors[effect.name] = Cursor(effect.name, info, bool(effect.value))
        elif op == "close":
            names = list(self.cursors) if effect.name is None else [effect.name]
            for name in names:
                if not scratch:
                    self._keep_cursor(name)
                self.cursors.pop(name, None)
        elif op == "create_relation":
            rel: Relation = effect.value
            if rel.temp:
                self.temp_relations[rel.name] = rel
                self._bump()
            elif scratch:
                self._created[(rel.schema, rel.name)] = rel
                self._bump()
        elif op == "drop_relation":
            schema, name = effect.value
            if schema in (None, TEMP_SCHEMA) and name in self.temp_relations:
                del self.temp_relations[name]
                self._bump()
            elif scratch and schema is not None:
                self._created.pop((schema, name), None)
                self._bump()
        elif op == "discard":
            if effect.name in ("ALL", "TEMP"):
                self.temp_relations.clear()
                self._bump()
            if effect.name == "ALL":
                self.prepared.clear()
                if not scratch:
                    for name in self.cursors:
                        self._keep_cursor(name)
                self.cursors.clear()
                self._search_path = None
                self.role = None
                self.session_user = self.login_user
        elif op == "end_transaction" and scratch:
            # (in one query string what follows runs only if it did; otherwise the
            # cursors end at the idle ReadyForQuery that shows it ran: a COMMIT parsed
            # and never executed, or skipped behind an error, ends nothing)
            self.cursors = {n: c for n, c in self.cursors.items() if c.hold}
            self._drop_unheld_history()


# What a session may make the gateway remember of names the server may still have: the
# earlier cursors of one name (a DECLARE or CLOSE may not have run), SQL PREPARE'd names
# and names with earlier cursors. Past these the gate refuses (54000) rather than forget
# one (a FETCH would be masked as a query it no longer knows of) or grow without bound.
MAX_CURSOR_HISTORY = 32
MAX_NAMES = 4096
# The schema changes of a session a protocol statement's Bind is checked against (stale)
# before the gateway forgets them, and takes every statement decided before as stale.
MAX_SCHEMA_WRITES = 1024

# What a cursor or SQL prepared statement name means: a FETCH or EXECUTE prepared over the
# protocol before one of these may run something else at its next Bind.
_NAME_OPS = frozenset(("prepare", "deallocate", "declare", "close", "discard"))

# What changes search_path in a way the gateway sees (and may be wrong about, if the
# statement does not run), and what may change it unseen.
_PATH_EFFECTS = frozenset(("search_path", "reset_all", "role", "session_authorization",
                           "discard"))
_UNSEEN_SETTERS = frozenset(("DO", "CALL"))


def may_set_path(info: StatementInfo) -> bool:
    """Whether running `info` may change search_path in ways its effects do not say: a
    set_config of it, a call of a function that runs SQL from a string or of any function
    not in pg_catalog (a user function may SET it), a DO block or a CALL."""
    if info.command in _UNSEEN_SETTERS or info.sql_string_functions:
        return True
    for name in info.functions:
        schema, _, bare = name.rpartition(".")
        if schema != "pg_catalog":
            return True
        if bare == "set_config":  # the settings it names, "?" for an expression
            named = info.details.get("set_config") or ("?",)
            if "search_path" in named or "?" in named:
                return True
    return False
