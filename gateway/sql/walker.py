"""Walking a query's raw parse tree: relations, column lineage and usage, functions.

Every expression evaluates to its *lineage*: the set of base columns ``(schema, table,
column)`` whose values flow into it. A range table entry (a table, view, subquery, CTE,
function in FROM, join) maps each of its column names to a lineage, so a reference through
any number of subqueries, CTEs, set operations or views lands on base columns. Usages are
recorded where the consumer is known:

* ``filter`` for WHERE / HAVING / JOIN ON / USING at any level (also inside subqueries and
  view definitions), ``sort``, ``group`` (GROUP BY, DISTINCT ON), ``window`` (PARTITION BY /
  ORDER BY of windows), ``set`` (UPDATE SET targets), ``insert`` (INSERT target columns),
  ``returning``;
* ``output`` for what the top-level statement returns (through any depth of subqueries/CTEs),
  and — fail-closed — for values copied elsewhere: INSERT ... SELECT sources, UPDATE SET
  expressions, CREATE TABLE AS / SELECT INTO, COPY (query), EXECUTE parameters.

A base column referenced directly in the statement's text is listed even if its value goes
nowhere (e.g. a subquery output the outer query ignores: empty usage). Columns a view
definition exposes are listed only when the statement uses them.

The walker never mutates the (shared, cached) parse tree. Unknown constructs are walked
generically (every column reference inside counts, with the enclosing usage) or reported
in ``unresolved``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..catalog.model import FIRST_NORMAL_OID, SYSTEM_SCHEMAS, Catalog, Relation
from .functions import is_sql_string_function
from .parse import SqlParseError, parse_uncached

__all__ = ["DERIVED", "EMPTY", "ColKey", "Facts", "Lineage", "Rte", "Scope", "Walker", "derive",
           "figure_colname", "split_lineage"]

ColKey = tuple[str, str, str]
#: A lineage holds ColKeys for values that flow through unchanged (plain references,
#: however renamed or nested) and ``(schema, table, column, DERIVED)`` for values that an
#: expression consumed (functions, casts, operators, whole-row references...): a masking
#: layer can rewrite the first in place but not the second.
Lineage = frozenset[tuple[str, ...]]
EMPTY: Lineage = frozenset()
DERIVED = "derived"
Node = dict[str, Any]

READ_USAGES = frozenset({"output", "filter", "sort", "group", "window", "returning"})
#: System columns of tables (no data of the row's own: empty lineage, not in ``*``).
SYSTEM_COLUMNS = frozenset({"ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"})
_STORED_KINDS = frozenset({"table", "partitioned", "matview", "foreign", "sequence"})
MAX_VIEW_DEPTH = 32


class Facts:
    """What a statement touches (accumulated while walking)."""

    __slots__ = ("columns", "computed", "functions", "may_change", "positional", "relations",
                 "settings", "sql_string", "unresolved", "writes")

    def __init__(self) -> None:
        # (schema, name) → [access set, relkind, temp]
        self.relations: dict[tuple[str, str], list[Any]] = {}
        self.columns: dict[ColKey, set[str]] = {}
        self.functions: dict[str, None] = {}
        self.unresolved: dict[tuple[str, str], None] = {}
        self.sql_string = False
        self.writes = False
        # set_config() targets (lower case; "?" when the name is not a constant)
        self.settings: dict[str, None] = {}
        # Base columns whose values an expression computes with (functions, casts,
        # operators other than comparisons), anywhere in the statement: such a value can
        # surface in an error message or a side effect, not only in the result.
        self.computed: dict[ColKey, None] = {}
        # Something in a read may change state besides its result: a row lock (FOR UPDATE
        # at any level, in a view's body too), a cast (a domain's CHECK, a user-defined
        # cast or input function runs code). Not for the policy: for when it may run.
        self.may_change = False
        # An ORDER BY / GROUP BY / DISTINCT ON item given by position: a constant's value
        # names a column, so another text of the same shape may name another one.
        self.positional = False

    def relation(self, rel: Relation, access: str) -> None:
        # Code the statement does not name: row security policies' expressions; a foreign
        # table's wrapper; a column of a type defined in the database, whose casts,
        # operators, domain CHECKs or range functions the server may call on its own
        # (an implicit cast in `=`, a literal read as a domain array, the planner's
        # subtype_diff). Built-in types (OIDs below 16384) can get none of those from
        # anyone but a superuser. Unknown types (empty type_oids) count as defined.
        if rel.row_security or rel.relkind == "foreign" or not rel.type_oids \
                or max(rel.type_oids) >= FIRST_NORMAL_OID:
            self.may_change = True
        key = (rel.schema, rel.name)
        entry = self.relations.get(key)
        if entry is None:
            self.relations[key] = [{access}, rel.relkind, rel.temp]
        else:
            entry[0].add(access)

    def merge(self, other: Facts, *, write: bool = False) -> None:
        """Fold in a view definition's facts (its relations are read, or written through an
        updatable view when ``write``)."""
        for key, (access, relkind, temp) in other.relations.items():
            entry = self.relations.get(key)
            if entry is None:
                entry = self.relations[key] = [set(), relkind, temp]
            entry[0].update(access)
            if write:
                entry[0].add("write")
        for column, usage in other.columns.items():
            if not usage:
                continue  # only exposed by the view; listed if the statement uses it
            mine = self.columns.get(column)
            if mine is None:
                self.columns[column] = set(usage)
            else:
                mine.update(usage)
        self.functions.update(other.functions)
        self.unresolved.update(other.unresolved)
        self.sql_string = self.sql_string or other.sql_string
        self.writes = self.writes or other.writes
        self.settings.update(other.settings)
        self.computed.update(other.computed)
        self.may_change = self.may_change or other.may_change
        self.positional = self.positional or other.positional


class Rte:
    """A range table entry: something in FROM (or a DML target) with named columns."""

    __slots__ = ("_index", "colnames", "guessed", "lineage", "name", "open", "open_lineage",
                 "relation", "schema", "unresolved")

    def __init__(self, name: str | None, colnames: Sequence[str], lineage: Sequence[Lineage],
                 *, schema: str | None = None, open: bool = False,
                 open_lineage: Lineage = EMPTY, unresolved: str | None = None) -> None:
        self.name = name
        self.schema = schema
        self.colnames = list(colnames)
        self.lineage = list(lineage)
        self.open = open  # accepts column names it doesn't list (lineage: open_lineage)
        self.open_lineage = open_lineage
        self.unresolved = unresolved  # set for relations the catalog doesn't know
        self.relation: Relation | None = None  # the catalog relation, for relation entries
        # its column names are a guess (a function in FROM of unknown result type: one
        # column named after it if it returns a scalar, its type's columns if a row): a
        # name it seems to have may be an outer query's column (see find_column)
        self.guessed = False
        self._index: dict[str, list[int]] | None = None

    def column(self, name: str) -> Lineage | None:
        index = self._index
        if index is None:
            index = self._index = {}
            for i, col in enumerate(self.colnames):
                index.setdefault(col, []).append(i)
        hits = index.get(name)
        if hits is None:
            rel = self.relation
            if name in SYSTEM_COLUMNS and rel is not None and rel.relkind in _STORED_KINDS:
                return EMPTY
            return None
        if len(hits) == 1:
            return self.lineage[hits[0]]
        out: Lineage = EMPTY
        for i in hits:
            out = out | self.lineage[i]
        return out

    def whole(self) -> Lineage:
        out = self.open_lineage
        for lin in self.lineage:
            out = out | lin
        return out

    def star(self) -> list[tuple[str, Lineage]]:
        entries = list(zip(self.colnames, self.lineage, strict=False))
        if self.open and not entries:
            entries.append((self.name or "?column?", self.open_lineage))
        return entries

    def rename(self, alias: Node | None) -> None:
        if not alias:
            return
        self.name = alias.get("aliasname", self.name)
        self.schema = None
        names = alias.get("colnames")
        if names:
            for i, item in enumerate(names):
                if i < len(self.colnames):
                    self.colnames[i] = item["String"]["sval"]
            self._index = None


class Scope:
    """One query level: its range table entries, ``*`` expansion and CTEs."""

    __slots__ = ("ctes", "parent", "rtes", "star")

    def __init__(self, parent: Scope | None) -> None:
        self.parent = parent
        self.rtes: list[Rte] = []
        self.star: list[tuple[str, Lineage]] = []
        self.ctes: dict[str, tuple[list[str], list[Lineage]]] | None = None

    def cte(self, name: str) -> tuple[list[str], list[Lineage]] | None:
        scope: Scope | None = self
        while scope is not None:
            if scope.ctes is not None:
                hit = scope.ctes.get(name)
                if hit is not None:
                    return hit
            scope = scope.parent
        return None


class ViewTemplate:
    __slots__ = ("error", "facts", "lineage")

    def __init__(self, lineage: list[Lineage], facts: Facts, error: str | None = None) -> None:
        self.lineage = lineage
        self.facts = facts
        self.error = error


def _sval(node: Node) -> str:
    return node["String"]["sval"]


def _names(items: list[Node] | None) -> list[str]:
    return [item["String"]["sval"] for item in items or () if "String" in item]


class Walker:
    """Walks one statement's query trees, accumulating :class:`Facts`."""

    def __init__(self, catalog: Catalog, search_path: Sequence[str], user: str | None, *,
                 depth: int = 0, views: frozenset[tuple[str, str]] = frozenset()) -> None:
        self.cat = catalog
        self.path = tuple(search_path)
        self.user = user
        self.f = Facts()
        self.depth = depth
        self.views = views
        # DML targets that are views: (view key, lineage of its columns)
        self._view_targets: list[tuple[tuple[str, str], Lineage]] = []
        #: False once a ``*`` expanded something whose columns aren't known exactly
        self.exact = True
        #: a scalar subquery's output column names, by id() of its SubLink node
        self._sublinks: dict[int, list[str]] = {}

    # -- bookkeeping -------------------------------------------------------------------------

    def unresolved(self, kind: str, name: str) -> None:
        self.f.unresolved[(kind, name)] = None

    def use(self, lin: Lineage, usage: str) -> None:
        if not lin:
            return
        cols = self.f.columns
        for key in lin:
            if len(key) != 3:
                key = key[:3]
            s = cols.get(key)  # type: ignore[arg-type]
            if s is None:
                cols[key] = {usage}  # type: ignore[index]
            else:
                s.add(usage)
        if usage in READ_USAGES:
            rels = self.f.relations
            for key in lin:
                entry = rels.get((key[0], key[1]))
                if entry is not None:
                    entry[0].add("read")

    def touch(self, lin: Lineage) -> None:
        cols = self.f.columns
        for key in lin:
            if len(key) != 3:
                key = key[:3]
            if key not in cols:
                cols[key] = set()  # type: ignore[index]

    def function(self, names: list[str], nargs: int) -> None:
        if not names:
            return
        name = names[-1]
        schema = names[-2] if len(names) > 1 else None
        candidates = self.cat.function_candidates(schema, name, self.path, user=self.user)
        if candidates:
            for c in candidates:
                self.f.functions[c] = None
        else:
            resolved = self.cat.resolve_function(schema, name, self.path, user=self.user)
            self.f.functions[resolved] = None
            self.unresolved("function", resolved)
        if is_sql_string_function(name, nargs):
            self.f.sql_string = True

    # -- relations -----------------------------------------------------------------------------

    def relation_rte(self, rv: Node, scope: Scope | None, access: str) -> Rte:
        """An Rte for a RangeVar: a CTE (read only), else the catalog relation(s)."""
        schema = rv.get("schemaname")
        name = rv["relname"]
        alias = rv.get("alias")
        if schema is None and scope is not None and access == "read":
            cte = scope.cte(name)
            if cte is not None:
                rte = Rte(name, cte[0], cte[1])
                rte.rename(alias)
                return rte
        rels = self.cat.relation_candidates(schema, name, self.path, user=self.user)
        if not rels:
            qual = f"{schema}.{name}" if schema else name
            self.unresolved("relation", qual)
            rte = Rte(name, [], [], schema=schema, open=True, unresolved=qual)
            rte.rename(alias)
            return rte
        primary = rels[0]
        lineage = self.relation_lineage(primary, access)
        columns = primary.columns
        if len(rels) > 1:
            # The name may mean any of these (a session temp table shadowing a permanent
            # one, a search path not settled: see Catalog.relation_candidates): report
            # them all, and a column by its name comes from any that has it.
            lineage = list(lineage)
            merged = list(columns)
            for other in rels[1:]:
                other_lin = self.relation_lineage(other, access)
                for col, extra in zip(other.columns, other_lin, strict=False):
                    if col in merged:
                        i = merged.index(col)
                        lineage[i] = lineage[i] | extra
                    else:
                        merged.append(col)
                        lineage.append(extra)
            columns = tuple(merged)
        rte = Rte(name, columns, lineage, schema=primary.schema)
        rte.relation = primary
        rte.rename(alias)
        return rte

    def relation_lineage(self, rel: Relation, access: str) -> list[Lineage]:
        self.f.relation(rel, access)
        if rel.is_view and rel.view_sql is None and rel.schema not in SYSTEM_SCHEMAS:
            # a user view whose definition we don't have: its base columns are unknown
            self.unresolved("view", rel.qualified_name)
        if rel.is_view and rel.view_sql is not None:
            template = self.view_template(rel)
            if template.error is not None:
                self.unresolved("view", rel.qualified_name)
            self.f.merge(template.facts, write=access == "write")
            lin = template.lineage
            if len(lin) < len(rel.columns):
                lin = lin + [EMPTY] * (len(rel.columns) - len(lin))
            return lin[: len(rel.columns)]
        if rel.temp:
            return _own_lineage(rel)
        if self.cat.unsettled(rel.schema, rel.name):
            # a schema change the catalog does not show yet may have renamed or swapped
            # its columns, or swapped it with another changed table: each column may be
            # any of theirs
            whole = self.cat.unsettled_columns().union(*_own_lineage(rel))
            return [whole] * len(rel.columns)
        key = ("lineage", rel.schema, rel.name, rel.oid)
        cache = self.cat.cache
        cached: list[Lineage] | None = cache.get(key)
        if cached is None:
            cached = cache[key] = _own_lineage(rel)
        return cached

    def view_template(self, rel: Relation) -> ViewTemplate:
        key = ("view", rel.schema, rel.name, rel.oid, rel.view_sql)
        cacheable = not rel.temp
        if cacheable:
            hit = self.cat.cache.get(key)
            if hit is not None:
                return hit
        qual = (rel.schema, rel.name)
        if qual in self.views or self.depth >= MAX_VIEW_DEPTH:
            return ViewTemplate([], Facts(), "recursive view definition")
        if rel.temp:
            walker = Walker(self.cat, self.path, self.user, depth=self.depth + 1,
                            views=self.views | {qual})
        else:
            walker = Walker(self.cat.base, self.cat.view_search_path, None,
                            depth=self.depth + 1, views=self.views | {qual})
        try:
            parsed = parse_uncached(rel.view_sql or "")
            stmts = parsed.statements
            if len(stmts) != 1:
                raise SqlParseError("view definition is not one statement")
            node_type, node = stmts[0].node_type, stmts[0].node
            if node_type == "ViewStmt":  # session temp views keep their CREATE VIEW text
                node_type, node = next(iter(node["query"].items()))
            elif node_type == "CreateTableAsStmt":
                node_type, node = next(iter(node["query"].items()))
            if node_type != "SelectStmt":
                raise SqlParseError(f"view definition is a {node_type}")
            _, lineage = walker.select(node, None)
            template = ViewTemplate(lineage, walker.f)
        except SqlParseError as exc:
            template = ViewTemplate([], walker.f, str(exc))
        if cacheable:
            self.cat.cache[key] = template
        return template

    def target_rte(self, rv: Node) -> Rte:
        """The target of INSERT/UPDATE/DELETE/MERGE (written)."""
        self.f.writes = True
        rte = self.relation_rte(rv, None, "write")
        rel = rte.relation
        if rel is not None and rel.is_view:
            self._view_targets.append(((rel.schema, rel.name), rte.whole()))
        return rte

    def settle_targets(self) -> None:
        """A view written through is also read when the statement reads its columns."""
        for key, lin in self._view_targets:
            cols = self.f.columns
            if any(cols.get(c[:3], set()) & READ_USAGES for c in lin):  # type: ignore[arg-type]
                self.f.relations[key][0].add("read")
        self._view_targets.clear()

    # -- queries -------------------------------------------------------------------------------

    def query(self, node: Node, outer: Scope | None) -> tuple[list[str], list[Lineage]]:
        """Any statement that can appear as a CTE / subquery body; returns its output."""
        ((t, v),) = node.items()
        if t == "SelectStmt":
            return self.select(v, outer)
        if t == "InsertStmt":
            return self.insert(v, outer)
        if t == "UpdateStmt":
            return self.update(v, outer)
        if t == "DeleteStmt":
            return self.delete(v, outer)
        if t == "MergeStmt":
            return self.merge(v, outer)
        self.unresolved("construct", t)
        return [], [self.generic(v, outer)]

    def with_scope(self, with_clause: Node | None, outer: Scope | None) -> Scope | None:
        if not with_clause:
            return outer
        scope = Scope(outer)
        scope.ctes = {}
        recursive = bool(with_clause.get("recursive"))
        ctes = [item["CommonTableExpr"] for item in with_clause.get("ctes", ())]
        if recursive and len(ctes) > 1:
            # Under RECURSIVE every item sees every other, a later one too: a name an
            # earlier item reads may be a later item, not the table of that name.
            ordered = _dependency_order(ctes)
            if ordered is None:  # (PostgreSQL refuses mutual recursion)
                self.unresolved("construct", "mutually recursive WITH items")
            else:
                ctes = ordered
        for cte in ctes:
            name = cte["ctename"]
            colnames = _names(cte.get("aliascolnames"))
            body = cte["ctequery"]
            sel = body.get("SelectStmt")
            if recursive and sel is not None and sel.get("op", "SETOP_NONE") != "SETOP_NONE":
                names, lineage = self.recursive_cte(name, colnames, sel, scope)
            else:
                names, lineage = self.query(body, scope)
                names = _rename(names, colnames)
            if cte.get("search_clause") or cte.get("cycle_clause"):
                names, lineage = self._search_cycle(cte, names, lineage)
            scope.ctes[name] = (names, lineage)
        return scope

    def _search_cycle(self, cte: Node, names: list[str], lineage: list[Lineage]
                      ) -> tuple[list[str], list[Lineage]]:
        """The columns SEARCH and CYCLE add after the query's: the sequence column (rows
        of the listed columns' values), the cycle mark, and the path (an array of rows
        of them): computed from the listed columns."""
        names, lineage = list(names), list(lineage)

        def listed(cols: list[Node] | None) -> Lineage:
            lin: Lineage = EMPTY
            for col in _names(cols):
                if col in names:
                    lin = lin | lineage[names.index(col)]
                else:
                    self.unresolved("column", f"{cte['ctename']}.{col}")
            return lin

        search = cte.get("search_clause")
        if search:
            names.append(search.get("search_seq_column") or "?column?")
            lineage.append(derive(listed(search.get("search_col_list"))))
        cycle = cte.get("cycle_clause")
        if cycle:
            names.append(cycle.get("cycle_mark_column") or "?column?")
            lineage.append(EMPTY)
            names.append(cycle.get("cycle_path_column") or "?column?")
            lineage.append(derive(listed(cycle.get("cycle_col_list"))))
        return names, lineage

    def recursive_cte(self, name: str, colnames: list[str], sel: Node,
                      scope: Scope) -> tuple[list[str], list[Lineage]]:
        assert scope.ctes is not None
        inner = self.with_scope(sel.get("withClause"), scope) or scope
        names, lineage = self.select(sel["larg"], inner)
        names = _rename(names, colnames)
        scope.ctes[name] = (names, lineage)
        for _ in range(_RECURSION_ROUNDS):  # to a fixpoint: lineage only grows, and is finite
            _rn, rl = self.select(sel["rarg"], inner)
            new = _union_positional(lineage, rl)
            if new == lineage:
                break
            lineage = new
            scope.ctes[name] = (names, lineage)
        else:
            self.unresolved("construct", f"recursive WITH item {name}")
        self.tail(sel, None, names, lineage)
        return names, lineage

    def select(self, v: Node, outer: Scope | None) -> tuple[list[str], list[Lineage]]:
        if "lockingClause" in v:
            self.f.may_change = True
        base = self.with_scope(v.get("withClause"), outer) if "withClause" in v else outer
        op = v.get("op", "SETOP_NONE")
        if op != "SETOP_NONE":
            ln, ll = self.select(v["larg"], base)
            _rn, rl = self.select(v["rarg"], base)
            both = _union_positional(ll, rl)
            self.tail(v, None, ln, both)
            return ln, both
        values = v.get("valuesLists")
        if values is not None:
            lineage: list[Lineage] = []
            for row in values:
                items = row["List"]["items"] if "List" in row else [row]
                for i, item in enumerate(items):
                    lin = self.expr(item, base)
                    if i < len(lineage):
                        lineage[i] = lineage[i] | lin
                    else:
                        lineage.append(lin)
            names = [f"column{i + 1}" for i in range(len(lineage))]
            self.tail(v, base, names, lineage)
            return names, lineage
        scope = Scope(base)
        from_clause = v.get("fromClause")
        if from_clause:
            for item in from_clause:
                scope.star.extend(self.from_item(item, scope, base))
        names, lineage = self.targets(v.get("targetList") or (), scope)
        where = v.get("whereClause")
        if where is not None:
            self.use(self.expr(where, scope), "filter")
        group = v.get("groupClause")
        if group:
            for item in group:
                self.group_item(item, scope, names, lineage)
        having = v.get("havingClause")
        if having is not None:
            self.use(self.expr(having, scope), "filter")
        windows = v.get("windowClause")
        if windows:
            for w in windows:
                self.window(w.get("WindowDef", w), scope)
        distinct = v.get("distinctClause")
        if distinct:  # DISTINCT ON: output names and positions first, as ORDER BY
            for item in distinct:
                if item:
                    self.use(self.output_ref(item, scope, names, lineage,
                                             prefer_output=True), "group")
        self.tail(v, scope, names, lineage)
        return names, lineage

    def tail(self, v: Node, scope: Scope | None, names: list[str],
             lineage: list[Lineage]) -> None:
        """ORDER BY / LIMIT / OFFSET of a SELECT (or set operation)."""
        sort = v.get("sortClause")
        if sort:
            for item in sort:
                sb = item.get("SortBy")
                node = sb.get("node") if sb is not None else item
                self.use(self.sorted_by(sb, self.output_ref(
                    node, scope, names, lineage, prefer_output=True)), "sort")
        for key in ("limitCount", "limitOffset"):
            node = v.get(key)
            if node is not None:
                self.use(self.expr(node, scope), "filter")

    def output_ref(self, node: Node | None, scope: Scope | None, names: list[str],
                   lineage: list[Lineage], *, prefer_output: bool) -> Lineage:
        """An ORDER BY / GROUP BY item: an output column name or position, or an expression
        over the input (ORDER BY prefers output names, GROUP BY input columns)."""
        if node is None:
            return EMPTY
        cref = node.get("ColumnRef")
        if cref is not None:
            fields = cref.get("fields", ())
            if len(fields) == 1 and "String" in fields[0]:
                name = fields[0]["String"]["sval"]
                if name in names and (prefer_output or
                                      self.find_column(name, scope) is None):
                    out: Lineage = EMPTY
                    for i, n in enumerate(names):
                        if n == name:
                            out = out | lineage[i]
                    return out
        const = node.get("A_Const")
        if const is not None and "ival" in const:
            self.f.positional = True
            pos = const["ival"].get("ival", 0)
            if 1 <= pos <= len(lineage):
                return lineage[pos - 1]
            return EMPTY
        return self.expr(node, scope)

    def group_item(self, item: Node, scope: Scope, names: list[str],
                   lineage: list[Lineage]) -> None:
        gs = item.get("GroupingSet")
        if gs is not None:
            for sub in gs.get("content", ()):
                self.group_item(sub, scope, names, lineage)
            return
        self.use(self.output_ref(item, scope, names, lineage, prefer_output=False), "group")

    def window(self, w: Node, scope: Scope | None) -> None:
        lin = EMPTY
        for node in w.get("partitionClause", ()):
            lin = lin | self.expr(node, scope)
        for item in w.get("orderClause", ()):
            sb = item.get("SortBy")
            lin = lin | self.sorted_by(
                sb, self.expr(sb.get("node") if sb is not None else item, scope))
        self.use(lin, "window")
        for key in ("startOffset", "endOffset"):
            if key in w:
                self.use(self.expr(w[key], scope), "window")

    def targets(self, tlist: Sequence[Node], scope: Scope) -> tuple[list[str], list[Lineage]]:
        names: list[str] = []
        lineage: list[Lineage] = []
        for item in tlist:
            rt = item["ResTarget"]
            val = rt.get("val")
            cref = val.get("ColumnRef") if val is not None else None
            if cref is not None:
                fields = cref.get("fields", ())
                if fields and "A_Star" in fields[-1]:
                    for name, lin in self.star_entries(fields, scope):
                        self.touch(lin)
                        names.append(name)
                        lineage.append(lin)
                    continue
            ind = val.get("A_Indirection") if val is not None else None
            if ind is not None and any("A_Star" in i for i in ind.get("indirection", ())):
                self.exact = False  # (x).* is as many columns as x has: unknown here
            lineage.append(self.expr(val, scope))
            names.append(rt.get("name") or figure_colname(val, self._sublinks))
        return names, lineage

    def star_entries(self, fields: Sequence[Node], scope: Scope | None) -> list[
            tuple[str, Lineage]]:
        quals = [f["String"]["sval"] for f in fields[:-1] if "String" in f]
        if not quals:
            s = scope
            while s is not None and not s.rtes:
                s = s.parent
            if s is None:
                return []
            if any(r.open for r in s.rtes):
                self.exact = False  # a function's unknown columns: count unknown
            return list(s.star)
        rte = self.find_rte(quals, scope)
        if rte is None:
            self.unresolved("relation", ".".join(quals))
            return []
        if rte.open:
            self.exact = False
        return rte.star()

    # -- FROM ----------------------------------------------------------------------------------

    def from_item(self, node: Node, scope: Scope, outer: Scope | None) -> list[
            tuple[str, Lineage]]:
        ((t, v),) = node.items()
        if t == "RangeVar":
            rte = self.relation_rte(v, scope, "read")
            scope.rtes.append(rte)
            return rte.star()
        if t == "RangeSubselect":
            parent = scope if v.get("lateral") else outer
            names, lineage = self.query(v["subquery"], parent)
            rte = Rte(None, names, lineage)
            rte.rename(v.get("alias"))
            scope.rtes.append(rte)
            return rte.star()
        if t == "JoinExpr":
            return self.join(v, scope, outer)
        if t == "RangeFunction":
            return self.range_function(v, scope)
        if t == "RangeTableSample":
            entries = self.from_item(v["relation"], scope, outer)
            for key in ("args", "repeatable"):
                if key in v:
                    self.use(self.expr(v[key], scope), "filter")
            return entries
        if t in ("RangeTableFunc", "JsonTable"):
            lin = EMPTY
            colnames: list[str] = []
            for key, val in v.items():
                if key == "columns":
                    colnames = _table_func_columns(val)
                elif key not in ("alias", "lateral", "location"):
                    # the function parses its input and runs paths over it: computed
                    # with (an error such as a cast's quotes what it made of the value)
                    got = self.generic({key: val}, scope)
                    self.computes(got)
                    lin = lin | derive(got)
            rte = Rte(None, colnames, [lin] * len(colnames), open=not colnames,
                      open_lineage=lin)
            rte.rename(v.get("alias"))
            scope.rtes.append(rte)
            return rte.star()
        self.unresolved("construct", t)
        lin = self.generic(v, scope)
        rte = Rte(None, [], [], open=True, open_lineage=lin)
        scope.rtes.append(rte)
        return rte.star()

    def range_function(self, v: Node, scope: Scope) -> list[tuple[str, Lineage]]:
        """A function in FROM (always sees earlier FROM items): its columns carry the
        lineage of its arguments. Without a column definition list its columns are unknown,
        so the entry accepts any column name."""
        lin = EMPTY
        colnames: list[str] = []
        first_name = None
        known = True
        for item in v.get("functions", ()):
            parts = item["List"]["items"] if "List" in item else [item]
            call = parts[0]
            lin = lin | self.expr(call, scope)
            fc = call.get("FuncCall")
            if first_name is None and fc is not None:
                fnames = _names(fc.get("funcname"))
                first_name = fnames[-1] if fnames else None
            coldefs = parts[1] if len(parts) > 1 else None
            if coldefs and "List" in coldefs:
                colnames.extend(d["ColumnDef"]["colname"] for d in coldefs["List"]["items"]
                                if "ColumnDef" in d)
            else:
                known = False
        if v.get("coldeflist"):
            colnames.extend(d["ColumnDef"]["colname"] for d in v["coldeflist"]
                            if "ColumnDef" in d)
            known = True
        alias = v.get("alias") or {}
        alias_cols = _names(alias.get("colnames"))
        name = alias.get("aliasname") or first_name
        if known:
            colnames = alias_cols[: len(colnames)] + colnames[len(alias_cols):]
            if v.get("ordinality"):
                colnames.append(alias_cols[len(colnames)] if len(alias_cols) > len(colnames)
                                else "ordinality")
        else:
            # scalar functions name their single column after the alias / function
            colnames = alias_cols or ([name] if name else [])
        rte = Rte(name, colnames, [lin] * len(colnames), open=not known, open_lineage=lin)
        rte.guessed = not known
        scope.rtes.append(rte)
        return rte.star()

    def join(self, v: Node, scope: Scope, outer: Scope | None) -> list[tuple[str, Lineage]]:
        start = len(scope.rtes)
        left = self.from_item(v["larg"], scope, outer)
        right = self.from_item(v["rarg"], scope, outer)
        using = _names(v.get("usingClause"))
        if v.get("isNatural"):
            rnames = {n for n, _ in right}
            using = list(dict.fromkeys(n for n, _ in left if n in rnames))
        if using:
            merged = []
            for col in using:
                lin = EMPTY
                for n, lnl in left:
                    if n == col:
                        lin = lin | lnl
                for n, rnl in right:
                    if n == col:
                        lin = lin | rnl
                self.touch(lin)
                self.use(lin, "filter")
                if self.foreign_op("="):  # JOIN USING / NATURAL compare with =
                    self.computes(lin)
                merged.append((col, lin))
            drop = set(using)
            entries = merged + [e for e in left if e[0] not in drop] + \
                [e for e in right if e[0] not in drop]
            jua = v.get("join_using_alias")
            if jua:
                scope.rtes.append(Rte(jua.get("aliasname"), [m[0] for m in merged],
                                      [m[1] for m in merged]))
        else:
            entries = left + right
        quals = v.get("quals")
        if quals is not None:
            self.use(self.expr(quals, scope), "filter")
        alias = v.get("alias")
        if alias:
            hidden = scope.rtes[start:]
            del scope.rtes[start:]
            open_lin = EMPTY
            opened = False
            for r in hidden:
                if r.open:
                    opened = True
                    open_lin = open_lin | r.open_lineage
            rte = Rte(None, [e[0] for e in entries], [e[1] for e in entries], open=opened,
                      open_lineage=open_lin)
            rte.rename(alias)
            scope.rtes.append(rte)
            return rte.star()
        return entries

    # -- DML -----------------------------------------------------------------------------------

    def insert(self, v: Node, outer: Scope | None) -> tuple[list[str], list[Lineage]]:
        base = self.with_scope(v.get("withClause"), outer)
        target = self.target_rte(v["relation"])
        source: list[Lineage] = []
        sel = v.get("selectStmt")
        if sel is not None:
            _n, source = self.query(sel, base)
            for given in source:
                self.use(given, "output")
        cols = v.get("cols")
        tcols = [c["ResTarget"]["name"] for c in cols] if cols else list(target.colnames)
        excluded: dict[str, Lineage] = {}
        for i, col in enumerate(tcols):
            lin = self.target_column(target, col, "insert")
            if lin is None:
                continue
            if i < len(source):
                excluded[col] = source[i]
        scope = Scope(base)
        scope.rtes.append(target)
        scope.star = target.star()
        occ = v.get("onConflictClause")
        if occ:
            scope.rtes.append(Rte("excluded", target.colnames,
                                  [excluded.get(c, EMPTY) for c in target.colnames]))
            infer = occ.get("infer") or {}
            for elem in infer.get("indexElems", ()):
                ie = elem.get("IndexElem", elem)
                if ie.get("name"):
                    lin = target.column(ie["name"]) or EMPTY
                    self.touch(lin)
                    self.use(lin, "filter")
                elif ie.get("expr") is not None:
                    self.use(self.expr(ie["expr"], scope), "filter")
            if infer.get("whereClause") is not None:
                self.use(self.expr(infer["whereClause"], scope), "filter")
            if occ.get("targetList"):
                self.set_list(occ["targetList"], target, scope)
            if occ.get("whereClause") is not None:
                self.use(self.expr(occ["whereClause"], scope), "filter")
        return self.returning(v, target, scope)

    def target_column(self, rte: Rte, col: str, usage: str) -> Lineage | None:
        """A column of a statement's target table, named by the statement (INSERT, MERGE,
        COPY), used as `usage`; a name the table lacks is reported unresolved."""
        lin = rte.column(col)
        if lin is None:
            if not rte.unresolved:
                self.unresolved("column", f"{rte.name}.{col}")
            return None
        self.touch(lin)
        self.use(lin, usage)
        return lin

    def _write_scope(self, v: Node, outer: Scope | None) -> tuple[Scope | None, Rte, Scope]:
        """UPDATE/DELETE/MERGE: the WITH scope, the target table and the scope it opens."""
        base = self.with_scope(v.get("withClause"), outer)
        target = self.target_rte(v["relation"])
        scope = Scope(base)
        scope.rtes.append(target)
        scope.star = target.star()
        return base, target, scope

    def update(self, v: Node, outer: Scope | None) -> tuple[list[str], list[Lineage]]:
        base, target, scope = self._write_scope(v, outer)
        for item in v.get("fromClause", ()):
            scope.star.extend(self.from_item(item, scope, base))
        self.set_list(v.get("targetList", ()), target, scope)
        where = v.get("whereClause")
        if where is not None:
            self.use(self.expr(where, scope), "filter")
        return self.returning(v, target, scope)

    def delete(self, v: Node, outer: Scope | None) -> tuple[list[str], list[Lineage]]:
        base, target, scope = self._write_scope(v, outer)
        for item in v.get("usingClause", ()):
            scope.star.extend(self.from_item(item, scope, base))
        where = v.get("whereClause")
        if where is not None:
            self.use(self.expr(where, scope), "filter")
        return self.returning(v, target, scope)

    def merge(self, v: Node, outer: Scope | None) -> tuple[list[str], list[Lineage]]:
        base, target, scope = self._write_scope(v, outer)
        source = v.get("sourceRelation")
        if source is not None:
            scope.star.extend(self.from_item(source, scope, base))
        cond = v.get("joinCondition")
        if cond is not None:
            self.use(self.expr(cond, scope), "filter")
        for item in v.get("mergeWhenClauses", ()):
            wc = item.get("MergeWhenClause", item)
            if wc.get("condition") is not None:
                self.use(self.expr(wc["condition"], scope), "filter")
            command = wc.get("commandType")
            if command == "CMD_UPDATE":
                self.set_list(wc.get("targetList", ()), target, scope)
            elif command == "CMD_INSERT":
                tl = wc.get("targetList")
                tcols = [t["ResTarget"]["name"] for t in tl] if tl else list(target.colnames)
                for col in tcols:
                    self.target_column(target, col, "insert")
                for val in wc.get("values", ()):
                    self.use(self.expr(val, scope), "output")
        return self.returning(v, target, scope)

    def set_list(self, tlist: Sequence[Node], target: Rte, scope: Scope) -> None:
        for item in tlist:
            rt = item["ResTarget"]
            name = rt.get("name")
            lin = target.column(name) if name else None
            if lin is None:
                if not target.unresolved:
                    self.unresolved("column", f"{target.name}.{name}")
            else:
                self.touch(lin)
                self.use(lin, "set")
            for ind in rt.get("indirection", ()):  # SET a[i] = ...: subscripts
                self.use(self.expr(ind, scope), "filter")
            val = rt.get("val")
            if val is None:
                continue
            mar = val.get("MultiAssignRef")
            if mar is not None:
                if mar.get("colno", 1) != 1:
                    continue  # the shared source was evaluated with the first column
                val = mar.get("source")
            self.use(self.expr(val, scope), "output")

    def returning(self, v: Node, target: Rte, scope: Scope) -> tuple[list[str], list[Lineage]]:
        rc = v.get("returningClause")
        exprs = rc.get("exprs") if rc else v.get("returningList")
        if not exprs:
            self.settle_targets()
            return [], []
        aliases = {"old", "new"}
        for opt in (rc or {}).get("options", ()):
            ro = opt.get("ReturningOption", opt)
            if ro.get("value"):
                aliases.add(ro["value"])
        # old./new. name the target row; everything else resolves in the statement's scope
        # (target first, then FROM/USING items); RETURNING * covers both.
        rscope = Scope(scope)
        rscope.star = scope.star
        for alias in aliases:
            rscope.rtes.append(Rte(alias, target.colnames, target.lineage))
        names, lineage = self.targets(exprs, rscope)
        for lin in lineage:
            self.use(lin, "returning")
        self.settle_targets()
        return names, lineage

    # -- expressions ---------------------------------------------------------------------------

    def expr(self, node: Any, scope: Scope | None) -> Lineage:
        if node is None:
            return EMPTY
        if type(node) is list:
            out: Lineage = EMPTY
            for item in node:
                out = out | self.expr(item, scope)
            return out
        ((t, v),) = node.items()
        handler = _HANDLERS.get(t)
        if handler is not None:
            lin = handler(self, v, scope)
            foreign = t == "A_Expr" and self._foreign_a_expr(v)
            if t in _PLAIN or not lin:
                return lin
            if foreign or (t not in _COMPARING and not (t == "A_Expr" and _is_comparison(v))):
                self.computes(lin)
            return derive(lin)
        if t in _LEAVES:
            if t == "TypeName":  # (a column definition list)
                self.f.may_change = True
            return EMPTY
        lin = self.generic(v, scope)
        if lin and (t not in _COMPARING or (  # CASE x WHEN y: x = y
                t == "CaseExpr" and v.get("arg") is not None and self.foreign_op("="))):
            self.computes(lin)
        return derive(lin) if lin else lin

    def foreign_op(self, name: str, schema: str | None = None) -> bool:
        """Whether an operator may be one defined outside pg_catalog: a function the
        gateway cannot see into, so what it is given counts as computed with. Those it
        may be are listed with the statement's functions, for the policy."""
        found = self.cat.foreign_operators(schema, name, self.path, user=self.user)
        for qualified in found:
            self.f.functions[qualified] = None
        return bool(found)

    def _foreign_names(self, names: list[Node] | None) -> bool:
        parts = _names(names)
        return bool(parts) and self.foreign_op(parts[-1], parts[-2] if len(parts) > 1 else None)

    def _foreign_a_expr(self, v: Node) -> bool:
        kind = v.get("kind", "")
        if "BETWEEN" in kind:  # a >= x AND a <= y; NOT: a < x OR a > y
            ops = ("<", ">") if "NOT" in kind else ("<=", ">=")
            return any([self.foreign_op(op) for op in ops])  # (each lists its own)
        return self._foreign_names(v.get("name"))

    def sorted_by(self, sb: Node | None, lin: Lineage) -> Lineage:
        """`lin`, the key of SortBy `sb` (None: an item that is none): computed with when
        sorted USING an operator that may be defined outside pg_catalog."""
        if sb is not None and sb.get("useOp") and self._foreign_names(sb["useOp"]):
            self.computes(lin)
        return lin

    def computes(self, lin: Lineage) -> None:
        computed = self.f.computed
        for key in lin:
            computed[key[:3]] = None  # type: ignore[index]

    def generic(self, v: Any, scope: Scope | None) -> Lineage:
        out: Lineage = EMPTY
        values: Iterable[Any]
        if type(v) is dict:
            if "typeName" in v:  # a value coerced to a named type (JSON ... RETURNING t,
                self.f.may_change = True  # a JSON_TABLE column): its input, its CHECK
            values = v.values()
        elif type(v) is list:
            values = v
        else:
            return EMPTY
        for val in values:
            tv = type(val)
            if tv is dict:
                if len(val) == 1:
                    key = next(iter(val))
                    if key[:1].isupper():
                        out = out | self.expr(val, scope)
                        continue
                out = out | self.generic(val, scope)
            elif tv is list:
                out = out | self.generic(val, scope)
        return out

    def _column_ref(self, v: Node, scope: Scope | None) -> Lineage:
        fields = v.get("fields", ())
        if fields and "A_Star" in fields[-1]:  # rel.* inside an expression: a row value
            row = EMPTY
            for _n, l2 in self.star_entries(fields, scope):
                row = row | l2
            self.touch(row)
            return derive(row)
        names = [f["String"]["sval"] for f in fields if "String" in f]
        lin = self.resolve_column(names, scope)
        if lin is None:
            self.unresolved("column", ".".join(names))
            return EMPTY
        self.touch(lin)
        return lin

    def resolve_column(self, names: list[str], scope: Scope | None) -> Lineage | None:
        n = len(names)
        if n == 1:
            name = names[0]
            lin = self.find_column(name, scope)
            if lin is not None:
                return lin
            rte = self.find_rte(names, scope)
            if rte is not None:  # whole-row reference: a composite holding every column
                return derive(rte.whole())
            return self.find_open(name, scope)
        if n == 2:
            rte = self.find_rte(names[:1], scope)
            if rte is not None:
                return self.rte_column(rte, names[1], call=True)
            # composite column's field: col.field
            lin = self.find_column(names[0], scope)
            return lin if lin is not None else self.find_open(names[0], scope)
        if n == 3:
            rte = self.find_rte(names[:2], scope)
            if rte is not None:
                return self.rte_column(rte, names[2], call=True)
            rte = self.find_rte(names[:1], scope)
            if rte is not None:  # table.column.field
                return self.rte_column(rte, names[1])
            return None
        if n == 4:
            rte = self.find_rte(names[1:3], scope)
            if rte is not None:
                return self.rte_column(rte, names[3], call=True)
            rte = self.find_rte(names[:2], scope)
            if rte is not None:
                return self.rte_column(rte, names[2])
        return None

    def rte_column(self, rte: Rte, name: str, *, call: bool = False) -> Lineage | None:
        """Column `name` of `rte`. `call`: written `rel.name`, which PostgreSQL reads as
        the call name(rel) when rel has no such column (`c.to_json` is to_json(c): the
        whole row, computed with)."""
        lin = rte.column(name)
        if lin is not None:
            return lin
        if rte.open:
            if rte.unresolved:
                self.unresolved("column", f"{rte.unresolved}.{name}")
            return rte.open_lineage
        if call and rte.unresolved is None:
            self.function([name], 1)
            whole = rte.whole()
            self.touch(whole)
            self.computes(whole)
            return derive(whole)
        return None

    def find_column(self, name: str, scope: Scope | None) -> Lineage | None:
        """The lineage of an unqualified column name: the innermost query level with a
        column of that name, as PostgreSQL looks it up. A name only a guessed column has
        (a function of unknown result type) may be an outer level's column instead: it
        is both."""
        guessed: Lineage | None = None
        while scope is not None:
            found: Lineage | None = None
            sure = False
            for rte in scope.rtes:
                lin = rte.column(name)
                if lin is not None:
                    found = lin if found is None else found | lin
                    sure = sure or not rte.guessed
            if found is not None:
                if sure:
                    return found if guessed is None else found | guessed
                guessed = found if guessed is None else guessed | found
            scope = scope.parent
        return guessed

    def find_open(self, name: str, scope: Scope | None) -> Lineage | None:
        while scope is not None:
            for rte in scope.rtes:
                if rte.open:
                    if rte.unresolved:
                        self.unresolved("column", f"{rte.unresolved}.{name}")
                    return rte.open_lineage
            scope = scope.parent
        return None

    def find_rte(self, quals: list[str], scope: Scope | None) -> Rte | None:
        if len(quals) == 1:
            schema, name = None, quals[0]
        else:
            schema, name = quals[-2], quals[-1]
        while scope is not None:
            for rte in scope.rtes:
                if rte.name == name and (schema is None or rte.schema == schema):
                    return rte
            scope = scope.parent
        return None

    def _func_call(self, v: Node, scope: Scope | None) -> Lineage:
        args = v.get("args")
        names = _names(v.get("funcname"))
        self.function(names, len(args) if args else 0)
        if names and names[-1] == "set_config" and args:
            self.f.settings[_setting_name(args[0])] = None
        lin = self.expr(args, scope) if args else EMPTY
        order = v.get("agg_order")
        if order:
            for item in order:
                sb = item.get("SortBy")
                lin = lin | self.sorted_by(
                    sb, self.expr(sb.get("node") if sb is not None else item, scope))
        if v.get("agg_filter") is not None:
            lin = lin | self.expr(v["agg_filter"], scope)
        over = v.get("over")
        if over is not None:
            self.window(over, scope)
        return lin

    def _sublink(self, v: Node, scope: Scope | None) -> Lineage:
        names, lineage = self.query(v["subselect"], scope)
        self._sublinks[id(v)] = names  # (a scalar subquery is named after its column)
        out = self.expr(v.get("testexpr"), scope)
        for lin in lineage:
            out = out | lin
        if v.get("operName") and self._foreign_names(v["operName"]):  # x op ANY (...)
            self.computes(out)
        return out

    def _select_expr(self, v: Node, scope: Scope | None) -> Lineage:
        _, lineage = self.select(v, scope)
        out = EMPTY
        for lin in lineage:
            out = out | lin
        return out

    def _indirection(self, v: Node, scope: Scope | None) -> Lineage:
        arg = v.get("arg")
        ind = v.get("indirection", ())
        cref = arg.get("ColumnRef") if arg is not None else None
        if cref is not None and ind and "String" in ind[0]:
            names = _names(cref.get("fields"))
            if len(names) == 1 and self.find_column(names[0], scope) is None:
                rte = self.find_rte(names, scope)
                if rte is not None:  # (rel).col, or the call col(rel) as for rel.col
                    lin = self.rte_column(rte, _sval(ind[0]), call=True)
                    if lin is not None:
                        self.touch(lin)
                        if len(ind) == 1:
                            return lin  # (rel).col is the column itself
                        lin = lin | self.expr(ind[1:], scope)
                        self.computes(lin)  # (rel).col.f: f may be a call, f(col)
                        return derive(lin)
        # (x).f is a field of x, or the call f(x) (`(holder).int4` casts it): computed,
        # and f listed with the statement's functions wherever a function may be meant
        for item in ind:
            field = _sval(item) if "String" in item else None
            if field and self.cat.function_candidates(None, field, self.path, user=self.user):
                self.function([field], 1)
        lin = self.expr(arg, scope) | self.expr(list(ind), scope)
        self.computes(lin)
        return derive(lin)


def _own_lineage(rel: Relation) -> list[Lineage]:
    """Each column of a stored relation: itself, and its ancestors' column of its name (a
    partition's or INHERITS child's rows are theirs)."""
    return [frozenset(((rel.schema, rel.name, c), *((s, n, c) for s, n in rel.ancestors)))
            for c in rel.columns]


def _setting_name(arg: Node) -> str:
    """set_config's first argument when it is a string constant, else ``?``."""
    while "TypeCast" in arg:
        arg = arg["TypeCast"].get("arg") or {}
    sval = arg.get("A_Const", {}).get("sval", {}).get("sval")
    return sval.lower() if isinstance(sval, str) else "?"


def _rename(names: list[str], colnames: list[str]) -> list[str]:
    if not colnames:
        return names
    out = list(names)
    for i, n in enumerate(colnames):
        if i < len(out):
            out[i] = n
    return out


def _union_positional(a: list[Lineage], b: list[Lineage]) -> list[Lineage]:
    out = list(a)
    for i, lin in enumerate(b):
        if i < len(out):
            out[i] = out[i] | lin
        else:
            out.append(lin)
    return out


def _table_func_columns(columns: list[Node]) -> list[str]:
    out = []
    for item in columns:
        ((_t, col),) = item.items()
        if col.get("colname"):
            out.append(col["colname"])
        elif col.get("name"):
            out.append(col["name"])
        if col.get("columns"):  # JSON_TABLE NESTED PATH
            out.extend(_table_func_columns(col["columns"]))
    return out


def derive(lin: Lineage) -> Lineage:
    """The lineage of a value computed from `lin` (no longer any column's plain value)."""
    return frozenset(k if len(k) == 4 else (*k, DERIVED) for k in lin)


def split_lineage(lin: Lineage) -> tuple[tuple[ColKey, ...], tuple[ColKey, ...]]:
    """(plain, derived) base columns of a lineage, each sorted; a column both passed
    through and consumed (``pan`` UNION ``upper(pan)``) is in both."""
    plain = sorted(k for k in lin if len(k) == 3)
    derived = sorted({k[:3] for k in lin if len(k) == 4})
    return tuple(plain), tuple(derived)  # type: ignore[arg-type]


#: Handlers whose result is the plain value of what they reference.
_PLAIN = frozenset({"ColumnRef", "ResTarget", "SortBy", "A_Indirection"})
#: Constructs that compare, test or pick values without computing new ones from them
#: (no error or side effect can carry a column's value).
_COMPARING = frozenset({"BoolExpr", "NullTest", "BooleanTest", "List", "SubLink",
                        "SelectStmt", "CaseExpr", "CaseWhen", "CoalesceExpr", "MinMaxExpr",
                        "RowExpr", "A_ArrayExpr", "CollateClause", "GroupingSet"})
_COMPARISON_OPS = frozenset({"=", "<>", "!=", "<", ">", "<=", ">=", "~~", "~~*", "!~~",
                             "!~~*", "~", "~*", "!~", "!~*"})
_COMPARISON_KINDS = frozenset({
    "AEXPR_OP", "AEXPR_OP_ANY", "AEXPR_OP_ALL", "AEXPR_DISTINCT", "AEXPR_NOT_DISTINCT",
    "AEXPR_NULLIF", "AEXPR_IN", "AEXPR_LIKE", "AEXPR_ILIKE", "AEXPR_SIMILAR",
    "AEXPR_BETWEEN", "AEXPR_NOT_BETWEEN", "AEXPR_BETWEEN_SYM", "AEXPR_NOT_BETWEEN_SYM"})


def _is_comparison(v: Node) -> bool:
    if v.get("kind", "AEXPR_OP") not in _COMPARISON_KINDS:
        return False
    names = v.get("name") or ()
    op = names[-1].get("String", {}).get("sval") if names else None
    return op in _COMPARISON_OPS or v.get("kind", "").startswith("AEXPR_BETWEEN") or \
        v.get("kind", "").startswith("AEXPR_NOT_BETWEEN")

_LEAVES = frozenset({
    "A_Const", "ParamRef", "SQLValueFunction", "SetToDefault", "CurrentOfExpr", "String",
    "Integer", "Float", "Boolean", "BitString", "TypeName", "A_Star", "ColumnDef", "Null",
})


def _typecast(w: Walker, v: Node, scope: Scope | None) -> Lineage:
    w.f.may_change = True
    return w.expr(v.get("arg"), scope)


def _res_target(w: Walker, v: Node, scope: Scope | None) -> Lineage:
    return w.expr(v.get("val"), scope)


def _sort_by(w: Walker, v: Node, scope: Scope | None) -> Lineage:
    return w.sorted_by(v, w.expr(v.get("node"), scope))


def _list(w: Walker, v: Node, scope: Scope | None) -> Lineage:
    return w.expr(v.get("items"), scope)


def _a_expr(w: Walker, v: Node, scope: Scope | None) -> Lineage:
    return w.expr(v.get("lexpr"), scope) | w.expr(v.get("rexpr"), scope)


def _bool_expr(w: Walker, v: Node, scope: Scope | None) -> Lineage:
    return w.expr(v.get("args"), scope)


_HANDLERS = {
    "ColumnRef": Walker._column_ref,
    "FuncCall": Walker._func_call,
    "SubLink": Walker._sublink,
    "SelectStmt": Walker._select_expr,
    "A_Indirection": Walker._indirection,
    "TypeCast": _typecast,
    "ResTarget": _res_target,
    "SortBy": _sort_by,
    "List": _list,
    "A_Expr": _a_expr,
    "BoolExpr": _bool_expr,
}


_SQLVALUE_NAMES = {
    "SVFOP_CURRENT_DATE": "current_date",
    "SVFOP_CURRENT_TIME": "current_time",
    "SVFOP_CURRENT_TIME_N": "current_time",
    "SVFOP_CURRENT_TIMESTAMP": "current_timestamp",
    "SVFOP_CURRENT_TIMESTAMP_N": "current_timestamp",
    "SVFOP_LOCALTIME": "localtime",
    "SVFOP_LOCALTIME_N": "localtime",
    "SVFOP_LOCALTIMESTAMP": "localtimestamp",
    "SVFOP_LOCALTIMESTAMP_N": "localtimestamp",
    "SVFOP_CURRENT_ROLE": "current_role",
    "SVFOP_CURRENT_USER": "current_user",
    "SVFOP_USER": "user",
    "SVFOP_SESSION_USER": "session_user",
    "SVFOP_CURRENT_CATALOG": "current_catalog",
    "SVFOP_CURRENT_SCHEMA": "current_schema",
}


def figure_colname(node: Node | None, sublinks: Mapping[int, list[str]] | None = None
                   ) -> str:
    """The output column name PostgreSQL gives an unaliased target (FigureColname in
    parse_target.c, with its strengths: a cast or CASE names the column only when what
    it wraps does not). `sublinks`: a scalar subquery's column names by id() of its
    SubLink node, as the walker found them (else read from its first target)."""
    return _figure(node, sublinks)[1] or "?column?"


def _figure(node: Node | None, sublinks: Mapping[int, list[str]] | None
            ) -> tuple[int, str | None]:
    if not node:
        return 0, None
    ((t, v),) = node.items()
    if t == "ColumnRef" or t == "A_Indirection":
        fname = None
        for item in v.get("fields" if t == "ColumnRef" else "indirection", ()):
            if "String" in item:
                fname = item["String"]["sval"]
        if fname is not None:
            return 2, fname
        return _figure(v.get("arg"), sublinks) if t == "A_Indirection" else (0, None)
    if t == "FuncCall":
        names = _names(v.get("funcname"))
        return (2, names[-1]) if names else (0, None)
    if t == "A_Expr":
        return (2, "nullif") if v.get("kind") == "AEXPR_NULLIF" else (0, None)
    if t == "TypeCast":
        strength, name = _figure(v.get("arg"), sublinks)
        if strength <= 1:
            names = _names((v.get("typeName") or {}).get("names"))
            if names:
                return 1, names[-1]
        return strength, name
    if t == "CollateClause":
        return _figure(v.get("arg"), sublinks)
    if t == "CaseExpr":
        strength, name = _figure(v.get("defresult"), sublinks)
        return (1, "case") if strength <= 1 else (strength, name)
    if t == "SubLink":
        kind = v.get("subLinkType")
        if kind == "EXISTS_SUBLINK":
            return 2, "exists"
        if kind == "ARRAY_SUBLINK":
            return 2, "array"
        if kind == "EXPR_SUBLINK":
            known = sublinks.get(id(v)) if sublinks is not None else None
            name = known[0] if known else _first_column(v.get("subselect"))
            return (2, name) if name is not None else (0, None)
        return 0, None
    if t == "MinMaxExpr":
        return 2, "greatest" if v.get("op") == "IS_GREATEST" else "least"
    table = _NAMED_BY_OP.get(t)
    if table is not None:
        name = table.get(v.get("op", ""))
        return (2, name) if name is not None else (0, None)
    name = _FUNCTION_LIKE.get(t)
    return (2, name) if name is not None else (0, None)


def _first_column(node: Node | None) -> str | None:
    """The name of a (raw) subquery's first output column, where it can be told without
    the catalog: a VALUES list's, a set operation's left side's, a target's."""
    sel = (node or {}).get("SelectStmt")
    while sel is not None and sel.get("op", "SETOP_NONE") != "SETOP_NONE":
        sel = sel.get("larg")
    if not sel:
        return None
    if sel.get("valuesLists"):
        return "column1"
    tl = sel.get("targetList") or ()
    if not tl:
        return None
    rt = tl[0]["ResTarget"]
    val = rt.get("val") or {}
    fields = (val.get("ColumnRef") or {}).get("fields", ())
    if fields and "A_Star" in fields[-1]:
        return None  # (the walker knows: see Walker._sublink)
    return rt.get("name") or figure_colname(val)


# Nodes PostgreSQL names like the function they stand for.
_FUNCTION_LIKE = {
    "GroupingFunc": "grouping", "MergeSupportFunc": "merge_action", "A_ArrayExpr": "array",
    "RowExpr": "row", "CoalesceExpr": "coalesce", "XmlSerialize": "xmlserialize",
    "JsonParseExpr": "json", "JsonScalarExpr": "json_scalar",
    "JsonSerializeExpr": "json_serialize", "JsonObjectConstructor": "json_object",
    "JsonArrayConstructor": "json_array", "JsonArrayQueryConstructor": "json_array",
    "JsonObjectAgg": "json_objectagg", "JsonArrayAgg": "json_arrayagg",
}
_NAMED_BY_OP = {
    "SQLValueFunction": _SQLVALUE_NAMES,
    "XmlExpr": {"IS_XMLCONCAT": "xmlconcat", "IS_XMLELEMENT": "xmlelement",
                "IS_XMLFOREST": "xmlforest", "IS_XMLPARSE": "xmlparse", "IS_XMLPI": "xmlpi",
                "IS_XMLROOT": "xmlroot", "IS_XMLSERIALIZE": "xmlserialize"},
    "JsonFuncExpr": {"JSON_EXISTS_OP": "json_exists", "JSON_QUERY_OP": "json_query",
                     "JSON_VALUE_OP": "json_value"},
}
_RECURSION_ROUNDS = 64


def _dependency_order(ctes: list[Node]) -> list[Node] | None:
    """WITH RECURSIVE items in an order where each comes after the items it reads (its
    own name aside), else in their own; None when two read each other."""
    names = {c["ctename"] for c in ctes}
    needs = {c["ctename"]: _reads(c["ctequery"], names) - {c["ctename"]} for c in ctes}
    out: list[Node] = []
    done: set[str] = set()
    while len(out) < len(ctes):
        ready = [c for c in ctes if c["ctename"] not in done and needs[c["ctename"]] <= done]
        if not ready:
            return None
        out.append(ready[0])
        done.add(ready[0]["ctename"])
    return out


def _reads(node: Any, names: set[str]) -> set[str]:
    """The names of `names` that `node` (a raw tree) reads as an unqualified relation."""
    found: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            rv = item.get("RangeVar")
            if rv is not None and "schemaname" not in rv and rv.get("relname") in names:
                found.add(rv["relname"])
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    return found
