"""Describing SQL statements as the ``statement`` object of the policy input (DESIGN §4).

    infos = analyze(sql, catalog, session=state, protocol="simple")
    for info in infos:
        doc = info.to_input(classification)   # the "statement" object
    ...                                        # decide; once a statement has run:
    state.observe(info)

Kinds: ``read`` (SELECT, VALUES, and FETCH/EXECUTE/DECLARE of those), ``write`` (INSERT,
UPDATE, DELETE, MERGE, TRUNCATE, anything with a data-modifying CTE, COPY (query) whose
query writes), ``ddl`` (CREATE/ALTER/DROP/GRANT/..., CREATE TABLE AS, SELECT INTO, REFRESH
MATERIALIZED VIEW), ``copy_out`` / ``copy_in`` (COPY TO STDOUT / FROM STDIN), ``transaction``
(BEGIN, COMMIT, SAVEPOINT, SET TRANSACTION, SET CONSTRAINTS, ...), ``session`` (SET, RESET,
SET ROLE, SET SESSION AUTHORIZATION, SHOW, DISCARD, LISTEN, UNLISTEN, DEALLOCATE, CLOSE),
``utility`` (VACUUM, ANALYZE, CLUSTER, REINDEX, CHECKPOINT, LOCK, NOTIFY) and ``other``
(DO, CALL, LOAD, ALTER SYSTEM, COPY to/from a file or program, anything not understood).

EXPLAIN is described as its inner statement, with kind ``read`` unless ANALYZE runs a write
or DDL (then the inner kind). PREPARE and DECLARE are described as their query (so a
policy refuses them up front, as it does a protocol-level Parse); EXECUTE and FETCH/MOVE by
the prepared statement / cursor they name (unknown name: kind ``other`` + ``unresolved``).

See :mod:`gateway.sql.walker` for column usages and lineage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from ..catalog.classification import tags_for
from ..catalog.model import TEMP_SCHEMA, Catalog, Relation
from .commands import USAGES, static_command
from .parse import RawStatement, SqlParseError, parse
from .session_state import Effect, SessionSqlState, may_set_path
from .walker import EMPTY, ColKey, Facts, Lineage, Scope, Walker, split_lineage

__all__ = [
    "ColumnUse",
    "OutputColumn",
    "RelationAccess",
    "StatementInfo",
    "analyze",
]

Node = dict[str, Any]

LONG_MAX = 9223372036854775807
CURSOR_OPT_HOLD = 0x0020


class RelationAccess(NamedTuple):
    schema: str
    name: str
    access: tuple[str, ...]  # ("read",), ("write",) or ("read", "write")
    relkind: str  # table/view/matview/foreign/partitioned, or "unknown" for DDL targets
    temp: bool = False


class ColumnUse(NamedTuple):
    schema: str
    table: str
    name: str
    usage: tuple[str, ...]  # in commands.USAGES order; may be empty (referenced, unused)


class OutputColumn(NamedTuple):
    """A column of the statement's result (or RETURNING), with the base columns whose
    values flow into it (for masking result sets)."""

    name: str
    #: base columns whose values appear in this column unchanged (however renamed/nested)
    sources: tuple[ColKey, ...]
    #: base columns an expression consumed to compute this column (not maskable in place)
    derived: tuple[ColKey, ...] = ()


@dataclass(frozen=True, slots=True)
class StatementInfo:
    """One statement's description; :meth:`to_input` gives DESIGN §4's ``statement``."""

    sql: str
    fingerprint: str
    command: str
    kind: str
    relations: tuple[RelationAccess, ...]
    columns: tuple[ColumnUse, ...]
    functions: tuple[str, ...]
    has_where: bool
    limit: int | None
    index: int
    count: int
    protocol: str
    sql_string_functions: bool = False
    #: (type, name): type is relation, column, function, view, construct,
    #: prepared_statement or cursor. Non-empty means the description is incomplete.
    unresolved: tuple[tuple[str, str], ...] = ()
    outputs: tuple[OutputColumn, ...] = ()
    #: ``outputs`` matches the result columns one to one. False when a ``*`` expanded a
    #: function result whose columns aren't known, or the result isn't modelled (SHOW,
    #: CALL): a masking layer must then not rely on positions.
    outputs_exact: bool = True
    #: Command-specific facts (JSON-ready): SET name/value, COPY target, EXPLAIN analyze,
    #: inner_command, cursor / prepared statement name, LISTEN channel, ...
    details: Mapping[str, Any] = field(default_factory=dict)
    effects: tuple[Effect, ...] = ()
    #: DDL / other: the catalog snapshot may be stale once this statement has run.
    catalog_changed: bool = False
    #: False when the description depends on session objects beyond the resolution key
    #: (EXECUTE, FETCH, MOVE): don't cache it by SQL text.
    cacheable: bool = True
    #: Base columns an expression computes with anywhere in the statement (not just in
    #: its output): a masked one could leak through an error message or a side effect.
    computed: tuple[ColKey, ...] = ()
    #: A read that may change state all the same (a row lock, a cast that may run code):
    #: see walker.Facts.may_change. Not part of the policy input.
    may_change: bool = False
    #: An ORDER BY / GROUP BY / DISTINCT ON item given by position (walker.Facts.
    #: positional): a constant names a column. Not part of the policy input.
    positional: bool = False

    def with_sql(self, sql: str) -> StatementInfo:
        """This description for another text (the same statement with other constants).
        A slot-by-slot copy (`_copy_with_sql`): ``dataclasses.replace`` re-runs
        ``__init__`` and costs twice as much, once per statement on the hot path."""
        return _copy_with_sql(self, sql)

    def to_input(self, classification: Mapping[str, Sequence[str]] | None = None) -> dict[
            str, Any]:
        """The policy input's ``statement`` object; ``classification`` is the bundle's
        ``data.pgwarden.classification`` (fills ``columns[].tags``)."""
        return {
            "sql": self.sql,
            "fingerprint": self.fingerprint,
            "command": self.command,
            "kind": self.kind,
            "relations": [
                {"schema": r.schema, "name": r.name, "access": list(r.access),
                 "relkind": r.relkind, "temp": r.temp}
                for r in self.relations
            ],
            "columns": [
                {"schema": c.schema, "table": c.table, "name": c.name,
                 "tags": tags_for(classification, c.schema, c.table, c.name)
                 if classification else [],
                 "usage": list(c.usage)}
                for c in self.columns
            ],
            "functions": list(self.functions),
            "has_where": self.has_where,
            "limit": self.limit,
            "index": self.index,
            "count": self.count,
            "protocol": self.protocol,
            "sql_string_functions": self.sql_string_functions,
            "unresolved": [{"type": t, "name": n} for t, n in self.unresolved],
            "details": dict(self.details),
        }


def _slot_copier() -> Callable[[StatementInfo, str], StatementInfo]:
    """``with_sql`` written out slot by slot, generated from the class (as dataclasses
    generates ``__init__``): a loop of getattr/setattr over 21 slots cost ~3x as much."""
    names = StatementInfo.__slots__
    lines = ["def copy(self, sql):", "    new = _new(_cls)"]
    lines += [f"    _set_{n}(new, {'sql' if n == 'sql' else 'self.' + n})" for n in names]
    lines.append("    return new")
    env: dict[str, Any] = {"_new": object.__new__, "_cls": StatementInfo}
    env.update({f"_set_{n}": getattr(StatementInfo, n).__set__ for n in names})
    exec("\n".join(lines), env)  # noqa: S102 -- text made above from the class's own slot names
    return env["copy"]  # type: ignore[no-any-return]


_copy_with_sql = _slot_copier()


# ---------------------------------------------------------------------------------------------


#: Statements one query string may hold. Each costs the gateway its analysis and policy
#: decision (a fraction of a millisecond) on the event loop its session shares with
#: others: 50,000 `select 1;` in one message held every other session for 11 s.
MAX_STATEMENTS = 1000


class TooManyStatements(Exception):
    """A query string of more than :data:`MAX_STATEMENTS` statements."""

    def __init__(self, count: int) -> None:
        super().__init__(f"a query string holds at most {MAX_STATEMENTS} statements through "
                         f"the gateway, and this one holds {count}: send it in parts")


def analyze(sql: str, catalog: Catalog, *, session: SessionSqlState | None = None,
            protocol: str = "simple") -> list[StatementInfo]:
    """Describe every statement of ``sql`` (``[]`` for an empty query string).

    Raises :class:`SqlParseError` if it doesn't parse, :class:`TooManyStatements` past
    :data:`MAX_STATEMENTS`. ``session`` is read, never changed; effects of earlier
    statements in the same string are applied to a scratch copy.
    """
    parsed = parse(sql)
    state = session if session is not None else SessionSqlState()
    count = len(parsed.statements)
    if count > MAX_STATEMENTS:
        raise TooManyStatements(count)
    out: list[StatementInfo] = []
    scratch: SessionSqlState | None = None
    for index, raw in enumerate(parsed.statements):
        ctx = _Ctx(catalog, scratch or state, protocol)
        info = _describe_raw(raw, ctx, index, count)
        out.append(info)
        if index + 1 < count and (info.effects or may_set_path(info)):
            if scratch is None:
                scratch = state.copy()
            scratch.apply_scratch(info)
    return out


class _Ctx:
    __slots__ = ("catalog", "depth", "path", "protocol", "state", "user")

    def __init__(self, catalog: Catalog, state: SessionSqlState, protocol: str) -> None:
        self.state = state
        self.catalog = state.catalog_for(catalog)
        self.path = state.effective_search_path(catalog)
        self.user = state.current_user or catalog.user
        self.protocol = protocol
        self.depth = 0

    def walker(self) -> Walker:
        return Walker(self.catalog, self.path, self.user)


class _Desc:
    """A statement's description while it is being built."""

    __slots__ = ("cacheable", "catalog_changed", "command", "details", "effects", "exact",
                 "facts", "has_where", "kind", "limit", "outputs", "prebuilt")

    def __init__(self, command: str, kind: str, facts: Facts | None = None) -> None:
        self.command = command
        self.kind = kind
        self.facts = facts if facts is not None else Facts()
        self.has_where = False
        self.limit: int | None = None
        self.outputs: list[tuple[str, Lineage]] = []
        self.details: dict[str, Any] = {}
        self.effects: list[Effect] = []
        self.catalog_changed = kind in ("ddl", "other")
        self.cacheable = True
        self.exact = True
        self.prebuilt: StatementInfo | None = None  # FETCH: the cursor's description


def _describe_raw(raw: RawStatement, ctx: _Ctx, index: int, count: int) -> StatementInfo:
    d = _describe(raw.node_type, raw.node, ctx, raw.sql)
    return _finish(d, raw.sql, raw.fingerprint, index, count, ctx)


def _column_order(f: Facts, catalog: Catalog) -> list[tuple[ColKey, set[str]]]:
    """Columns grouped by relation (in order of first reference), then in table order."""
    if len(f.columns) < 2:
        return list(f.columns.items())
    rel_index = {key: i for i, key in enumerate(f.relations)}
    positions: dict[tuple[str, str], dict[str, int]] = {}
    cache = catalog.cache

    def key(item: tuple[ColKey, set[str]]) -> tuple[int, int, str]:
        schema, table, name = item[0]
        rk = (schema, table)
        pos = positions.get(rk)
        if pos is None:
            rel = catalog.relation(schema, table)
            if rel is None:
                pos = {}
            elif rel.temp:
                pos = {c: i for i, c in enumerate(rel.columns)}
            else:
                ck = ("positions", schema, table, rel.oid)
                pos = cache.get(ck)
                if pos is None:
                    pos = cache[ck] = {c: i for i, c in enumerate(rel.columns)}
            positions[rk] = pos
        return rel_index.get(rk, len(rel_index)), pos.get(name, len(pos)), name

    return sorted(f.columns.items(), key=key)


def _finish(d: _Desc, sql: str, fingerprint: str, index: int, count: int,
            ctx: _Ctx) -> StatementInfo:
    protocol = ctx.protocol
    if d.prebuilt is not None:
        p = d.prebuilt
        return replace(p, sql=sql, fingerprint=fingerprint, command=d.command, kind=d.kind,
                       has_where=d.has_where, limit=d.limit, index=index, count=count,
                       protocol=protocol, details=d.details, effects=tuple(d.effects),
                       catalog_changed=False, cacheable=d.cacheable,
                       unresolved=p.unresolved + tuple(
                           k for k in d.facts.unresolved if k not in p.unresolved))
    f = d.facts
    relations = tuple(
        RelationAccess(schema, name, tuple(a for a in ("read", "write") if a in access),
                       relkind, temp)
        for (schema, name), (access, relkind, temp) in f.relations.items()
    )
    columns = tuple(
        ColumnUse(schema, table, name, tuple(u for u in USAGES if u in usage))
        for (schema, table, name), usage in _column_order(f, ctx.catalog)
    )
    return StatementInfo(
        sql=sql,
        fingerprint=fingerprint,
        command=d.command,
        kind=d.kind,
        relations=relations,
        columns=columns,
        functions=tuple(f.functions),
        has_where=d.has_where,
        limit=d.limit,
        index=index,
        count=count,
        protocol=protocol,
        sql_string_functions=f.sql_string,
        unresolved=tuple(f.unresolved),
        outputs=tuple(OutputColumn(n, *split_lineage(lin)) for n, lin in d.outputs),
        outputs_exact=d.exact,
        details={**d.details, "set_config": sorted(f.settings)} if f.settings else d.details,
        effects=tuple(d.effects),
        catalog_changed=d.catalog_changed,
        cacheable=d.cacheable,
        computed=tuple(sorted(f.computed)),
        may_change=f.may_change,
        positional=f.positional,
    )


def _describe(node_type: str, v: Node, ctx: _Ctx, sql: str) -> _Desc:
    handler = _HANDLERS.get(node_type)
    if handler is not None:
        return handler(v, ctx, sql)
    command, kind = static_command(node_type, v)
    d = _Desc(command, kind)
    if kind in ("ddl", "utility"):
        _ddl_relations(v, ctx, d)
    if node_type in ("CreateRoleStmt", "AlterRoleStmt", "DropRoleStmt", "AlterRoleSetStmt"):
        _role_details(node_type, v, d)
    elif node_type == "AlterDatabaseSetStmt":  # (what later logins start with)
        setting = (v.get("setstmt") or {}).get("name")
        d.details = {"setting": setting.lower() if isinstance(setting, str) else None}
    return d


# -- queries ----------------------------------------------------------------------------------


def _select_has_where(v: Node) -> bool:
    op = v.get("op", "SETOP_NONE")
    if op != "SETOP_NONE":
        return _select_has_where(v["larg"]) and _select_has_where(v["rarg"])
    return v.get("whereClause") is not None


def _select_limit(v: Node) -> int | None:
    node = v.get("limitCount")
    if node is None:
        return None
    const = node.get("A_Const")
    if const is not None and "ival" in const:
        return int(const["ival"].get("ival", 0))
    return None


def _query_shape(node: Node) -> tuple[bool, int | None]:
    sel = node.get("SelectStmt")
    if sel is None:
        ((_t, v),) = node.items()
        return v.get("whereClause") is not None, None
    return _select_has_where(sel), _select_limit(sel)


def _select(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    w = ctx.walker()
    names, lineage = w.select(v, None)
    for lin in lineage:
        w.use(lin, "output")
    d = _Desc("SELECT", "write" if w.f.writes else "read", w.f)
    d.exact = w.exact
    d.has_where = _select_has_where(v)
    d.limit = _select_limit(v)
    d.outputs = list(zip(names, lineage, strict=True))
    locking = v.get("lockingClause")
    if locking:
        d.details["locking"] = [
            item.get("LockingClause", {}).get("strength", "").removeprefix("LCS_")
            for item in locking
        ]
    into = v.get("intoClause")
    if into:
        d.command = "SELECT INTO"
        d.kind = "ddl"
        d.catalog_changed = True
        d.outputs = []
        _create_into(into, names, ctx, d, "table", None)
    return d


def _dml(method: str, command: str) -> Callable[[Node, _Ctx, str], _Desc]:
    def handler(v: Node, ctx: _Ctx, sql: str) -> _Desc:
        w = ctx.walker()
        names, lineage = getattr(w, method)(v, None)
        d = _Desc(command, "write", w.f)
        d.exact = w.exact
        d.has_where = v.get("whereClause") is not None
        d.outputs = list(zip(names, lineage, strict=True))
        return d
    return handler


def _explain(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    analyze_ = False
    for opt in v.get("options", ()):
        de = opt.get("DefElem", {})
        if de.get("defname") == "analyze":
            analyze_ = _defelem_true(de)
    ((t, iv),) = v["query"].items()
    d = _describe(t, iv, ctx, sql)
    d.details = {"analyze": analyze_, "inner_command": d.command, **{
        k: val for k, val in d.details.items() if k not in ("analyze", "inner_command")}}
    d.command = "EXPLAIN"
    if not analyze_:
        if d.kind in ("read", "write", "ddl"):
            d.kind = "read"
        d.effects = []
        d.catalog_changed = False
    d.outputs = [("QUERY PLAN", EMPTY)]
    d.exact = True
    return d


def _defelem_true(de: Node) -> bool:
    arg = de.get("arg")
    if arg is None:
        return True
    ((t, val),) = arg.items()
    if t == "Boolean":
        return bool(val.get("boolval", False))
    if t == "String":
        return val.get("sval", "").lower() in ("true", "on", "1", "yes")
    if t == "Integer":
        return val.get("ival", 0) != 0
    if t == "A_Const":
        if "boolval" in val:
            return bool(val["boolval"].get("boolval", False))
        if "ival" in val:
            return val["ival"].get("ival", 0) != 0
        if "sval" in val:
            return val["sval"].get("sval", "").lower() in ("true", "on", "1", "yes")
    return True  # not understood: assume it runs


def _prepare(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    ((t, iv),) = v["query"].items()
    d = _describe(t, iv, ctx, sql)
    d.details = {"name": v.get("name"), "inner_command": d.command}
    d.command = "PREPARE"
    d.effects = [Effect("prepare", v.get("name"), sql)]
    d.catalog_changed = False
    return d


def _execute(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    name = v.get("name", "")
    ps = ctx.state.prepared.get(name)
    d: _Desc | None = None
    if ps is not None and ctx.depth < 4:
        try:
            stmts = parse(ps.sql).statements
        except SqlParseError:
            stmts = ()
        if len(stmts) == 1:
            t, iv = stmts[0].node_type, stmts[0].node
            if ps.origin == "sql" and t == "PrepareStmt":
                ((t, iv),) = iv["query"].items()
            ctx.depth += 1
            try:
                d = _describe(t, iv, ctx, ps.sql)
            finally:
                ctx.depth -= 1
    if d is None:
        d = _Desc("EXECUTE", "other")
        d.facts.unresolved[("prepared_statement", name)] = None
        d.details = {"name": name}
    else:
        d.details = {"name": name, "inner_command": d.command}
        d.command = "EXECUTE"
    params = v.get("params")
    if params:
        w = ctx.walker()
        w.f = d.facts
        for p in params:
            w.use(w.expr(p, None), "output")
    d.cacheable = False
    return d


def _declare(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    ((t, iv),) = v["query"].items()
    d = _describe(t, iv, ctx, sql)
    hold = bool(v.get("options", 0) & CURSOR_OPT_HOLD)
    name = v.get("portalname")
    d.details = {"cursor": name, "hold": hold, "inner_command": d.command}
    d.command = "DECLARE CURSOR"
    d.effects = [*d.effects, Effect("declare", name, hold)]
    return d


def _fetch(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    name = v.get("portalname", "")
    command = "MOVE" if v.get("ismove") else "FETCH"
    candidates = ctx.state.cursor_candidates(name)
    if not candidates:
        d = _Desc(command, "other")
        d.catalog_changed = False
        d.facts.unresolved[("cursor", name)] = None
        d.details = {"cursor": name}
    else:
        info = candidates[0] if len(candidates) == 1 else _any_of(candidates)
        d = _Desc(command, info.kind)
        d.catalog_changed = False
        d.prebuilt = info
        d.has_where = info.has_where
        d.details = {"cursor": name, "inner_command": info.details.get("inner_command",
                                                                      info.command)}
    direction = v.get("direction", "FETCH_FORWARD")
    how_many = v.get("howMany", 0)
    if direction in ("FETCH_ABSOLUTE", "FETCH_RELATIVE"):
        d.limit = 1
    elif how_many >= LONG_MAX:
        d.limit = None
    else:
        d.limit = how_many
    d.details["direction"] = direction.removeprefix("FETCH_").lower()
    d.cacheable = False
    return d


def _any_of(infos: list[StatementInfo]) -> StatementInfo:
    """One description for a cursor that may be running any of `infos` (the first is the
    one the gateway thinks it is): every relation, column and function of any of them;
    a result column comes from any of theirs at its position, or, when their widths
    differ, the result columns are not known exactly (a masked one cannot be located)."""
    first = infos[0]
    relations: dict[tuple[str, str], RelationAccess] = {}
    columns: dict[tuple[str, str, str], ColumnUse] = {}
    for info in infos:
        for r in info.relations:
            had = relations.get((r.schema, r.name))
            access = r.access if had is None else tuple(
                a for a in ("read", "write") if a in had.access or a in r.access)
            relations[(r.schema, r.name)] = r._replace(access=access)
        for c in info.columns:
            had_c = columns.get((c.schema, c.table, c.name))
            usage = c.usage if had_c is None else tuple(
                u for u in USAGES if u in had_c.usage or u in c.usage)
            columns[(c.schema, c.table, c.name)] = c._replace(usage=usage)
    exact = all(i.outputs_exact for i in infos) and \
        len({len(i.outputs) for i in infos}) == 1
    outputs = first.outputs
    if exact:
        outputs = tuple(
            OutputColumn(outs[0].name, tuple(dict.fromkeys(k for o in outs for k in o.sources)),
                         tuple(dict.fromkeys(k for o in outs for k in o.derived)))
            for outs in zip(*(i.outputs for i in infos), strict=True))
    return replace(
        first, relations=tuple(relations.values()), columns=tuple(columns.values()),
        functions=tuple(dict.fromkeys(f for i in infos for f in i.functions)),
        sql_string_functions=any(i.sql_string_functions for i in infos),
        unresolved=tuple(dict.fromkeys(u for i in infos for u in i.unresolved)),
        outputs=outputs, outputs_exact=exact,
        computed=tuple(dict.fromkeys(k for i in infos for k in i.computed)),
        may_change=any(i.may_change for i in infos),
        positional=any(i.positional for i in infos))


# COPY options that shape the rows (masking rewrites COPY TO STDOUT rows in place).
_COPY_OPTIONS = frozenset({"format", "delimiter", "null", "quote", "escape", "header"})


def _copy_option(arg: Node | None) -> str:
    """A COPY option's value as text (``HEADER`` alone means true)."""
    if not arg:
        return "true"
    ((t, v),) = arg.items()
    if t == "String":
        return str(v.get("sval", ""))
    if t == "Boolean":
        return "true" if v.get("boolval") else "false"
    if t == "Integer":
        return str(v.get("ival", 0))
    return t  # e.g. HEADER MATCH; masking treats anything unexpected as unsupported


def _copy(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    is_from = bool(v.get("is_from"))
    filename = v.get("filename")
    program = bool(v.get("is_program"))
    target = "program" if program else "file" if filename else "stdin" if is_from else "stdout"
    w = ctx.walker()
    d = _Desc("COPY", "copy_in" if is_from else "copy_out", w.f)
    d.details = {"direction": "from" if is_from else "to", "target": target}
    if filename:
        d.details["program" if program else "filename"] = filename
    for opt in v.get("options", ()):
        de = opt.get("DefElem", {})
        name = de.get("defname")
        if name in _COPY_OPTIONS:
            d.details[name] = _copy_option(de.get("arg"))
    query = v.get("query")
    if query is not None:
        names, lineage = w.query(query, None)
        for lin in lineage:
            w.use(lin, "output")
        d.outputs = list(zip(names, lineage, strict=True))
        d.exact = w.exact
        d.has_where, d.limit = _query_shape(query)
        if w.f.writes:
            d.kind = "write"
    elif v.get("relation") is not None:
        if is_from:
            w.f.writes = True
        rte = w.relation_rte(v["relation"], None, "write" if is_from else "read")
        cols = [a["String"]["sval"] for a in v.get("attlist", ()) if "String" in a] or \
            list(rte.colnames)
        for col in cols:
            copied = w.target_column(rte, col, "insert" if is_from else "output")
            if copied is None:
                continue
            if not is_from:
                d.outputs.append((col, copied))
        where = v.get("whereClause")
        if where is not None:
            scope = Scope(None)
            scope.rtes.append(rte)
            w.use(w.expr(where, scope), "filter")
            d.has_where = True
    if target in ("file", "program"):
        d.kind = "other"
    d.catalog_changed = False
    return d


# -- DDL --------------------------------------------------------------------------------------


def _new_relation(rv: Node, columns: Sequence[str], ctx: _Ctx, relkind: str,
                  view_sql: str | None) -> Relation:
    schema = rv.get("schemaname")
    temp = rv.get("relpersistence") == "t" or (schema is not None and (
        schema == TEMP_SCHEMA or schema.startswith("pg_temp_")))
    if temp:
        schema = TEMP_SCHEMA
    elif schema is None:
        schema = ctx.catalog.creation_schema(ctx.path, user=ctx.user) or "public"
    return Relation(schema, rv["relname"], relkind, tuple(columns), view_sql=view_sql,
                    temp=temp)


def _create_into(into: Node, names: Sequence[str], ctx: _Ctx, d: _Desc, relkind: str,
                 view_sql: str | None) -> None:
    colnames = [c["String"]["sval"] for c in into.get("colNames", ()) if "String" in c]
    columns = colnames + list(names[len(colnames):])
    rel = _new_relation(into["rel"], columns, ctx, relkind, view_sql)
    d.facts.relation(rel, "write")
    d.effects.append(Effect("create_relation", rel.name, rel))
    d.catalog_changed = not rel.temp  # temp relations aren't in the snapshot


def _create_table_as(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    w = ctx.walker()
    names, lineage = w.query(v["query"], None)
    for lin in lineage:
        w.use(lin, "output")
    matview = v.get("objtype") == "OBJECT_MATVIEW"
    command = "CREATE MATERIALIZED VIEW" if matview else \
        "SELECT INTO" if v.get("is_select_into") else "CREATE TABLE AS"
    d = _Desc(command, "ddl", w.f)
    d.has_where, d.limit = _query_shape(v["query"])
    _create_into(v["into"], names, ctx, d, "matview" if matview else "table",
                 sql if matview else None)
    return d


def _view_stmt(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    w = ctx.walker()
    names, lineage = w.query(v["query"], None)
    for lin in lineage:
        w.use(lin, "output")
    d = _Desc("CREATE VIEW", "ddl", w.f)
    aliases = [a["String"]["sval"] for a in v.get("aliases", ()) if "String" in a]
    columns = aliases + list(names[len(aliases):])
    rel = _new_relation(v["view"], columns, ctx, "view", sql)
    d.facts.relation(rel, "write")
    d.effects.append(Effect("create_relation", rel.name, rel))
    d.catalog_changed = not rel.temp
    return d


def _create_stmt(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    d = _Desc("CREATE TABLE", "ddl")
    columns: list[str] = []

    def add_from(rv: Node) -> None:
        for rel in ctx.catalog.relation_candidates(rv.get("schemaname"), rv["relname"],
                                                   ctx.path, user=ctx.user)[:1]:
            d.facts.relation(rel, "read")
            columns.extend(c for c in rel.columns if c not in columns)

    for parent in v.get("inhRelations", ()):
        if "RangeVar" in parent:
            add_from(parent["RangeVar"])
    for elt in v.get("tableElts", ()):
        if "ColumnDef" in elt:
            name = elt["ColumnDef"].get("colname")
            if name and name not in columns:
                columns.append(name)
        elif "TableLikeClause" in elt:
            add_from(elt["TableLikeClause"]["relation"])
    relkind = "partitioned" if v.get("partspec") else "table"
    rel = _new_relation(v["relation"], columns, ctx, relkind, None)
    d.facts.relation(rel, "write")
    d.effects.append(Effect("create_relation", rel.name, rel))
    d.catalog_changed = not rel.temp
    return d


_RELATION_OBJECTS = frozenset({"OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW",
                               "OBJECT_FOREIGN_TABLE", "OBJECT_INDEX", "OBJECT_SEQUENCE"})


def _lookup(ctx: _Ctx, schema: str | None, name: str) -> Relation | None:
    return ctx.catalog.resolve_relation(schema, name, ctx.path, user=ctx.user)


def _report_target(d: _Desc, ctx: _Ctx, schema: str | None, name: str,
                   access: str = "write") -> Relation | None:
    """A DDL/utility target: the relation it resolves to, or the name as written."""
    rel = _lookup(ctx, schema, name)
    if rel is not None:
        d.facts.relation(rel, access)
        return rel
    shown = schema or ctx.catalog.creation_schema(ctx.path, user=ctx.user) or "public"
    d.facts.relation(Relation(shown, name, "unknown", ()), access)
    return None


def _rv_target(d: _Desc, ctx: _Ctx, rv: Node | None, access: str = "write") -> Relation | None:
    if not rv or "relname" not in rv:
        return None
    return _report_target(d, ctx, rv.get("schemaname"), rv["relname"], access)


def _drop_stmt(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    command, kind = static_command("DropStmt", v)
    d = _Desc(command, kind)
    if v.get("removeType") in _RELATION_OBJECTS:
        for obj in v.get("objects", ()):
            names = [i["String"]["sval"] for i in obj.get("List", {}).get("items", ())
                     if "String" in i]
            if not names:
                continue
            schema = names[-2] if len(names) > 1 else None
            rel = _report_target(d, ctx, schema, names[-1])
            if rel is not None and rel.temp:
                d.effects.append(Effect("drop_relation", rel.name, (TEMP_SCHEMA, rel.name)))
            elif rel is not None:
                d.effects.append(Effect("drop_relation", rel.name, (rel.schema, rel.name)))
        if d.effects and all(e.value[0] == TEMP_SCHEMA for e in d.effects) and \
                len(d.effects) == len(v.get("objects", ())):
            d.catalog_changed = False
    return d


def _alter_table(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    command, kind = static_command("AlterTableStmt", v)
    d = _Desc(command, kind)
    rel = _rv_target(d, ctx, v.get("relation"))
    if rel is not None and rel.temp:
        columns = list(rel.columns)
        for cmd in v.get("cmds", ()):
            c = cmd.get("AlterTableCmd", {})
            sub = c.get("subtype")
            if sub == "AT_AddColumn":
                name = (c.get("def") or {}).get("ColumnDef", {}).get("colname")
                if name and name not in columns:
                    columns.append(name)
            elif sub == "AT_DropColumn" and c.get("name") in columns:
                columns.remove(c["name"])
        if columns != list(rel.columns):
            d.effects.append(Effect("create_relation", rel.name,
                                    replace(rel, columns=tuple(columns))))
    return d


def _rename_stmt(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    command, kind = static_command("RenameStmt", v)
    d = _Desc(command, kind)
    rel = _rv_target(d, ctx, v.get("relation"))
    if rel is not None and rel.temp:
        rtype = v.get("renameType")
        if rtype in ("OBJECT_TABLE", "OBJECT_VIEW"):
            d.effects.append(Effect("drop_relation", rel.name, (TEMP_SCHEMA, rel.name)))
            d.effects.append(Effect("create_relation", v.get("newname"),
                                    replace(rel, name=v.get("newname", rel.name))))
        elif rtype == "OBJECT_COLUMN":
            cols = tuple(v.get("newname", c) if c == v.get("subname") else c
                         for c in rel.columns)
            d.effects.append(Effect("create_relation", rel.name, replace(rel, columns=cols)))
    return d


def _truncate(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    d = _Desc("TRUNCATE TABLE", "write")
    d.catalog_changed = False
    d.facts.writes = True
    for item in v.get("relations", ()):
        _rv_target(d, ctx, item.get("RangeVar"))
    return d


_LOCK_WRITE_MODE = 3  # ROW EXCLUSIVE and stronger


def _lock(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    d = _Desc("LOCK TABLE", "utility")
    access = "write" if v.get("mode", 8) >= _LOCK_WRITE_MODE else "read"
    for item in v.get("relations", ()):
        _rv_target(d, ctx, item.get("RangeVar"), access)
    d.details = {"mode": v.get("mode", 8)}
    return d


def _vacuum(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    command, kind = static_command("VacuumStmt", v)
    d = _Desc(command, kind)
    access = "write" if v.get("is_vacuumcmd") else "read"
    for item in v.get("rels", ()):
        vr = item.get("VacuumRelation", {})
        _rv_target(d, ctx, vr.get("relation"), access)
    return d


def _grant(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    command, kind = static_command("GrantStmt", v)
    d = _Desc(command, kind)
    d.details = {
        "objtype": (v.get("objtype") or "").removeprefix("OBJECT_").lower(),
        "privileges": [p.get("AccessPriv", {}).get("priv_name", "all")
                       for p in v.get("privileges", ())] or ["all"],
        "grantees": [_role_name(g) for g in v.get("grantees", ())],
    }
    if v.get("objtype") == "OBJECT_TABLE" and v.get("targtype") == "ACL_TARGET_OBJECT":
        for obj in v.get("objects", ()):
            _rv_target(d, ctx, obj.get("RangeVar"))
    return d


def _grant_role(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    command, kind = static_command("GrantRoleStmt", v)
    d = _Desc(command, kind)
    d.details = {
        "roles": [p.get("AccessPriv", {}).get("priv_name") for p in v.get("granted_roles", ())],
        "grantees": [_role_name(g) for g in v.get("grantee_roles", ())],
    }
    return d


def _role_details(node_type: str, v: Node, d: _Desc) -> None:
    if node_type == "CreateRoleStmt":
        roles = [v.get("role")]
    elif node_type == "DropRoleStmt":
        roles = [_role_name(r) for r in v.get("roles", ())]
    else:
        roles = [_role_name(v["role"])] if v.get("role") else ["all"]
    d.details["roles"] = roles
    d.details["options"] = [o.get("DefElem", {}).get("defname") for o in v.get("options", ())]
    setstmt = v.get("setstmt")
    if setstmt:
        d.details["setting"] = setstmt.get("name")


def _role_name(node: Node) -> str | None:
    rs = node.get("RoleSpec", node)
    if rs.get("rolename"):
        return rs["rolename"]
    return (rs.get("roletype") or "").removeprefix("ROLESPEC_").lower() or None


def _ddl_relations(v: Node, ctx: _Ctx, d: _Desc) -> None:
    for key in ("relation", "table"):
        rv = v.get(key)
        if isinstance(rv, dict):
            if "RangeVar" in rv:
                rv = rv["RangeVar"]
            _rv_target(d, ctx, rv)


# -- session, transaction, misc ---------------------------------------------------------------


def _const_text(node: Node) -> str:
    ((t, v),) = node.items()
    if t == "A_Const":
        if "sval" in v:
            return v["sval"].get("sval", "")
        if "ival" in v:
            return str(v["ival"].get("ival", 0))
        if "fval" in v:
            return v["fval"].get("fval", "")
        if "boolval" in v:
            return "true" if v["boolval"].get("boolval") else "false"
        if v.get("isnull"):
            return "NULL"
    if t == "TypeCast":
        return _const_text(v.get("arg") or {"A_Const": {}})
    return "?"


def _variable_set(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    kind_ = v.get("kind", "VAR_SET_VALUE")
    name = v.get("name")
    args = v.get("args") or []
    if kind_ == "VAR_SET_MULTI":
        d = _Desc("SET", "transaction" if (name or "").startswith("TRANSACTION") else "session")
        d.details = {"name": (name or "").lower(), "value": None, "local": False}
        return d
    reset = kind_ in ("VAR_RESET", "VAR_RESET_ALL")
    d = _Desc("RESET" if reset else "SET", "session")
    d.catalog_changed = False
    values = [_const_text(a) for a in args if a]
    d.details = {
        "name": name or "all",
        "value": ", ".join(values) if kind_ == "VAR_SET_VALUE" else None,
        "local": bool(v.get("is_local")),
    }
    if kind_ == "VAR_SET_DEFAULT" and name != "session_authorization":
        d.details["value"] = "DEFAULT"
    if kind_ == "VAR_RESET_ALL":
        d.effects.append(Effect("reset_all"))
    elif name == "search_path":
        if kind_ == "VAR_SET_VALUE":
            d.effects.append(Effect("search_path", value=tuple(values)))
        elif kind_ in ("VAR_SET_DEFAULT", "VAR_RESET"):
            d.effects.append(Effect("search_path", value=None))
    elif name == "role":
        role = values[0] if values and kind_ == "VAR_SET_VALUE" else None
        d.effects.append(Effect("role", None if role == "none" else role))
    elif name == "session_authorization":
        user = values[0] if values and kind_ == "VAR_SET_VALUE" else None
        d.effects.append(Effect("session_authorization", user))
    return d


def _show(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    d = _Desc("SHOW", "session")
    d.exact = False
    d.details = {"name": v.get("name")}
    return d


def _discard(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    command, kind = static_command("DiscardStmt", v)
    d = _Desc(command, kind)
    d.effects.append(Effect("discard", command.removeprefix("DISCARD ")))
    return d


def _transaction(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    command, kind = static_command("TransactionStmt", v)
    d = _Desc(command, kind)
    if v.get("savepoint_name"):
        d.details["savepoint"] = v["savepoint_name"]
    if v.get("gid"):
        d.details["gid"] = v["gid"]
    if v.get("kind") in ("TRANS_STMT_COMMIT", "TRANS_STMT_ROLLBACK", "TRANS_STMT_PREPARE"):
        d.effects.append(Effect("end_transaction"))
    return d


def _listen(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    d = _Desc("LISTEN", "session")
    d.details = {"channel": v.get("conditionname")}
    return d


def _unlisten(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    d = _Desc("UNLISTEN", "session")
    d.details = {"channel": v.get("conditionname", "*")}
    return d


def _notify(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    d = _Desc("NOTIFY", "utility")
    d.details = {"channel": v.get("conditionname")}
    return d


def _deallocate(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    command, kind = static_command("DeallocateStmt", v)
    d = _Desc(command, kind)
    name = None if v.get("isall") else v.get("name")
    d.details = {"name": name}
    d.effects.append(Effect("deallocate", name))
    return d


def _close(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    command, kind = static_command("ClosePortalStmt", v)
    d = _Desc(command, kind)
    d.details = {"cursor": v.get("portalname")}
    d.effects.append(Effect("close", v.get("portalname")))
    return d


def _do(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    d = _Desc("DO", "other")
    language = "plpgsql"
    for arg in v.get("args", ()):
        de = arg.get("DefElem", {})
        if de.get("defname") == "language":
            language = ((de.get("arg") or {}).get("String") or {}).get("sval", language)
    d.details = {"language": language}
    return d


def _call(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    w = ctx.walker()
    call = v.get("funccall")
    if call is not None:
        w.use(w.expr({"FuncCall": call}, None), "output")
    d = _Desc("CALL", "other", w.f)
    d.exact = False
    return d


def _refresh(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    d = _Desc("REFRESH MATERIALIZED VIEW", "ddl")
    _rv_target(d, ctx, v.get("relation"))
    return d


def _load(v: Node, ctx: _Ctx, sql: str) -> _Desc:
    d = _Desc("LOAD", "other")
    d.details = {"filename": v.get("filename")}
    return d


_HANDLERS: dict[str, Callable[[Node, _Ctx, str], _Desc]] = {
    "SelectStmt": _select,
    "InsertStmt": _dml("insert", "INSERT"),
    "UpdateStmt": _dml("update", "UPDATE"),
    "DeleteStmt": _dml("delete", "DELETE"),
    "MergeStmt": _dml("merge", "MERGE"),
    "ExplainStmt": _explain,
    "PrepareStmt": _prepare,
    "ExecuteStmt": _execute,
    "DeclareCursorStmt": _declare,
    "FetchStmt": _fetch,
    "CopyStmt": _copy,
    "CreateTableAsStmt": _create_table_as,
    "ViewStmt": _view_stmt,
    "CreateStmt": _create_stmt,
    "DropStmt": _drop_stmt,
    "AlterTableStmt": _alter_table,
    "RenameStmt": _rename_stmt,
    "TruncateStmt": _truncate,
    "LockStmt": _lock,
    "VacuumStmt": _vacuum,
    "GrantStmt": _grant,
    "GrantRoleStmt": _grant_role,
    "VariableSetStmt": _variable_set,
    "VariableShowStmt": _show,
    "DiscardStmt": _discard,
    "TransactionStmt": _transaction,
    "ListenStmt": _listen,
    "UnlistenStmt": _unlisten,
    "NotifyStmt": _notify,
    "DeallocateStmt": _deallocate,
    "ClosePortalStmt": _close,
    "DoStmt": _do,
    "CallStmt": _call,
    "RefreshMatViewStmt": _refresh,
    "LoadStmt": _load,
}
