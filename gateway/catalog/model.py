"""An immutable snapshot of the upstream catalog, and server-like name resolution.

A :class:`Catalog` holds what the SQL analyzer needs to describe a statement: every
relation (tables, views, materialized views, foreign and partitioned tables) with its
ordered column names and, for views, the view definition; and every function name with
the schemas that define it. It is built once per upstream connection by
``loader.build_catalog`` and replaced (never mutated) when it is refreshed.

Name resolution follows PostgreSQL (``namespace.c``):

* an explicit schema is used as is (``pg_temp`` names the session's temporary schema);
* otherwise the session's temporary schema is searched first (relations only — never for
  functions), unless ``pg_temp`` is listed explicitly in ``search_path``, in which case it is
  searched at that position;
* then ``pg_catalog``, unless it is listed explicitly;
* then the ``search_path`` entries in order. ``"$user"`` stands for the current user's name
  (the ``user=`` argument, defaulting to the user that loaded the snapshot); schemas that
  don't exist are skipped.

The snapshot cannot see other sessions' temporary tables (nor the session's own: the
gateway's catalog connection is not the client's session), so temporary tables come from
the session itself: :meth:`Catalog.with_temp` returns a view of the snapshot with the
session's temporary tables added, under the schema name ``pg_temp``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "RELKINDS",
    "SYSTEM_SCHEMAS",
    "TEMP_SCHEMA",
    "Catalog",
    "Relation",
    "format_search_path",
    "parse_search_path",
]

#: pg_class.relkind → the name used here (only the kinds that hold or expose rows).
RELKINDS: Mapping[str, str] = {
    "r": "table",
    "v": "view",
    "m": "matview",
    "f": "foreign",
    "p": "partitioned",
    "S": "sequence",
}

#: Schema name under which session temporary relations are reported.
TEMP_SCHEMA = "pg_temp"

#: Schemas whose views are treated as opaque relations (their definitions are not loaded or
#: expanded: system views would otherwise drag pg_authid & co. into every psql ``\d``).
SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema"})

_generations = itertools.count(1)

#: in Catalog.with_unsettled: a schema change that may have touched any relation
EVERY_RELATION = ("*", "*")

#: PostgreSQL's FirstNormalObjectId: OIDs below it are the system's own objects (a type
#: below it can get casts, operators or a CHECK from nobody but a superuser)
FIRST_NORMAL_OID = 16384


@dataclass(frozen=True, slots=True)
class Relation:
    """A relation as the analyzer sees it."""

    schema: str
    name: str
    relkind: str  # table | view | matview | foreign | partitioned | sequence
    columns: tuple[str, ...]
    oid: int = 0
    #: ``pg_get_viewdef(oid, true)`` for views and materialized views outside the system
    #: schemas; None otherwise (system views are opaque).
    view_sql: str | None = None
    #: pg_attribute.attnum of each column (parallel to ``columns``); empty if unknown.
    attnums: tuple[int, ...] = ()
    #: pg_attribute.atttypid of each column (parallel to ``columns``); empty if unknown.
    type_oids: tuple[int, ...] = ()
    temp: bool = False
    #: (schema, name) of every table it inherits from, nearest first: a partition's or an
    #: INHERITS child's rows are its ancestors' rows, under their column names
    ancestors: tuple[tuple[str, str], ...] = ()
    #: row level security is enabled: its policies' expressions (functions) run on read
    row_security: bool = False

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def is_view(self) -> bool:
        return self.relkind in ("view", "matview")

    def column_for_attnum(self, attnum: int) -> str | None:
        try:
            return self.columns[self.attnums.index(attnum)]
        except ValueError:
            return None


@dataclass(slots=True)
class _Data:
    """What all views of one snapshot share (including the analyzer's derived caches)."""

    relations: dict[tuple[str, str], Relation]
    by_oid: dict[int, Relation]
    functions: dict[str, frozenset[str]]
    schemas: frozenset[str]
    default_search_path: tuple[str, ...]
    view_search_path: tuple[str, ...]
    user: str | None
    database: str | None
    generation: int
    #: Derived data computed lazily by other packages (e.g. analyzed view definitions),
    #: keyed by a tuple whose first item names the owner. Dropped with the snapshot.
    cache: dict[Any, Any] = field(default_factory=dict)
    path_cache: dict[Any, tuple[str, ...]] = field(default_factory=dict)
    #: operator name → the schemas besides pg_catalog that define one of that name
    operators: dict[str, frozenset[str]] = field(default_factory=dict)


class Catalog:
    """Immutable snapshot of relations and functions, with PostgreSQL name resolution."""

    __slots__ = ("_any_path", "_data", "_other_paths", "_overlay", "_temp", "_unsettled")

    def __init__(
        self,
        relations: Iterable[Relation] = (),
        functions: Mapping[str, Iterable[str]] | None = None,
        *,
        operators: Mapping[str, Iterable[str]] | None = None,
        schemas: Iterable[str] | None = None,
        default_search_path: Sequence[str] = ('"$user"', "public"),
        view_search_path: Sequence[str] | None = None,
        user: str | None = None,
        database: str | None = None,
    ) -> None:
        rels: dict[tuple[str, str], Relation] = {}
        by_oid: dict[int, Relation] = {}
        for rel in relations:
            rels[(rel.schema, rel.name)] = rel
            if rel.oid:
                by_oid[rel.oid] = rel
        funcs = {name: frozenset(s) for name, s in (functions or {}).items()}
        if schemas is None:
            known = {schema for schema, _ in rels}
            for s in funcs.values():
                known.update(s)
            known.update(("pg_catalog", "public"))
        else:
            known = set(schemas)
        dsp = tuple(_normalise_path(default_search_path))
        self._data = _Data(
            relations=rels,
            by_oid=by_oid,
            functions=funcs,
            schemas=frozenset(known),
            default_search_path=dsp,
            view_search_path=tuple(_normalise_path(view_search_path))
            if view_search_path is not None else dsp,
            user=user,
            database=database,
            generation=next(_generations),
            operators={name: others for name, s in (operators or {}).items()
                       if (others := frozenset(s) - {"pg_catalog"})},
        )
        self._temp: Mapping[str, Relation] = {}
        self._overlay: Mapping[tuple[str, str], Relation] = {}
        self._other_paths: tuple[tuple[str, ...], ...] = ()
        self._any_path = False
        self._unsettled: frozenset[tuple[str, str]] | None = None

    # -- derived views ------------------------------------------------------------------------

    def _derive(self, temp: Mapping[str, Relation],
                overlay: Mapping[tuple[str, str], Relation]) -> Catalog:
        new = object.__new__(Catalog)
        new._data = self._data
        new._temp = temp
        new._overlay = overlay
        new._other_paths = self._other_paths
        new._any_path = self._any_path
        new._unsettled = self._unsettled
        return new

    def with_unsettled(self, relations: Iterable[tuple[str, str]]) -> Catalog:
        """This snapshot, for a session whose uncommitted schema changes it cannot see:
        the relations (schema, name) those changed may have any of their columns under
        any of their names (see :meth:`unsettled`)."""
        new = self._derive(self._temp, self._overlay)
        new._unsettled = frozenset(relations)
        return new

    def unsettled(self, schema: str, name: str) -> bool:
        """Whether a schema change this snapshot does not show may have touched the
        relation (a column renamed, swapped, retyped; EVERY_RELATION: any)."""
        u = self._unsettled
        return u is not None and ((schema, name) in u or EVERY_RELATION in u)

    def unsettled_columns(self) -> frozenset[tuple[str, str, str]]:
        """Every column of every relation such changes touched: renames may have moved
        any of them under any of their names, one table's under another's."""
        key = ("unsettled", self._unsettled)
        cached = self._data.cache.get(key)
        if cached is None:
            cached = self._data.cache[key] = frozenset(
                (rel.schema, rel.name, c)
                for s, n in self._unsettled or () if (rel := self.relation(s, n)) is not None
                for c in rel.columns)
        return cached  # type: ignore[no-any-return]

    def with_paths(self, others: Iterable[Sequence[str]], any_path: bool = False) -> Catalog:
        """This snapshot, resolving unqualified names also along `others` (search paths
        the session may be on besides the one given to each lookup), or, `any_path`, in
        every schema: see :meth:`relation_candidates`."""
        new = self._derive(self._temp, self._overlay)
        new._other_paths = tuple(tuple(p) for p in others)
        new._any_path = any_path
        return new

    def with_temp(self, relations: Iterable[Relation]) -> Catalog:
        """This snapshot plus the session's temporary relations (replacing any given before).

        Each relation is stored as ``pg_temp.<name>`` whatever its ``schema`` says.
        """
        temp = {}
        for rel in relations:
            if rel.schema != TEMP_SCHEMA or not rel.temp:
                rel = Relation(TEMP_SCHEMA, rel.name, rel.relkind, rel.columns, rel.oid,
                               rel.view_sql, rel.attnums, rel.type_oids, temp=True)
            temp[rel.name] = rel
        return self._derive(temp, self._overlay)

    def with_relations(self, relations: Iterable[Relation]) -> Catalog:
        """This snapshot plus relations not in it yet (created earlier in the same query
        string). Temporary ones go to the temp overlay."""
        temp = dict(self._temp)
        overlay = dict(self._overlay)
        for rel in relations:
            if rel.temp or rel.schema == TEMP_SCHEMA:
                temp[rel.name] = rel
            else:
                overlay[(rel.schema, rel.name)] = rel
        return self._derive(temp, overlay)

    @property
    def base(self) -> Catalog:
        """The snapshot without temp relations or overlays."""
        if not self._temp and not self._overlay and not self._other_paths \
                and not self._any_path and self._unsettled is None:
            return self
        new = self._derive({}, {})
        new._other_paths, new._any_path, new._unsettled = (), False, None
        return new

    # -- facts ---------------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Distinct for every snapshot built in this process (a cache-key component)."""
        return self._data.generation

    @property
    def default_search_path(self) -> tuple[str, ...]:
        """``search_path`` of the connection that loaded the snapshot (a new session's)."""
        return self._data.default_search_path

    @property
    def view_search_path(self) -> tuple[str, ...]:
        """Effective path when view definitions were printed: unqualified names in them
        resolve with it."""
        return self._data.view_search_path

    @property
    def user(self) -> str | None:
        return self._data.user

    @property
    def database(self) -> str | None:
        return self._data.database

    @property
    def schemas(self) -> frozenset[str]:
        return self._data.schemas

    @property
    def temp_relations(self) -> Mapping[str, Relation]:
        return self._temp

    @property
    def cache(self) -> dict[Any, Any]:
        """Per-snapshot cache for derived data (shared by every ``with_temp`` view)."""
        return self._data.cache

    def relations(self) -> Iterable[Relation]:
        return self._data.relations.values()

    def relation(self, schema: str, name: str) -> Relation | None:
        """Exact lookup, no search path (``pg_temp`` → session temp relations)."""
        if schema == TEMP_SCHEMA or schema.startswith("pg_temp_"):
            return self._temp.get(name)
        if self._overlay:
            rel = self._overlay.get((schema, name))
            if rel is not None:
                return rel
        return self._data.relations.get((schema, name))

    def relation_by_oid(self, oid: int) -> Relation | None:
        return self._data.by_oid.get(oid)

    def column_for_attnum(self, oid: int, attnum: int) -> tuple[str, str, str] | None:
        """(schema, table, column) for a RowDescription's table OID and attribute number."""
        rel = self._data.by_oid.get(oid)
        if rel is None:
            return None
        col = rel.column_for_attnum(attnum)
        return None if col is None else (rel.schema, rel.name, col)

    def function_schemas(self, name: str) -> frozenset[str]:
        return self._data.functions.get(name, frozenset())

    def has_schema(self, schema: str) -> bool:
        return schema in self._data.schemas

    # -- resolution ---------------------------------------------------------------------------

    def search_order(self, search_path: Sequence[str], *, user: str | None = None,
                     relations: bool = True) -> tuple[str, ...]:
        """Schemas searched for an unqualified name, in order (``pg_temp`` for the session's
        temporary schema; only for relations)."""
        user = user if user is not None else self._data.user
        key = (tuple(search_path), user, relations)
        cached = self._data.path_cache.get(key)
        if cached is not None:
            return cached
        entries = []
        explicit_temp = False
        for entry in search_path:
            if entry == "$user":
                if user is None:
                    continue
                entry = user
            if entry == TEMP_SCHEMA or entry.startswith("pg_temp_"):
                explicit_temp = True
                if relations:
                    entries.append(TEMP_SCHEMA)
                continue
            if entry == "pg_catalog" or entry in self._data.schemas:
                entries.append(entry)
        order: list[str] = []
        if relations and not explicit_temp:
            order.append(TEMP_SCHEMA)
        if "pg_catalog" not in entries:
            order.append("pg_catalog")
        for entry in entries:
            if entry not in order:
                order.append(entry)
        result = tuple(order)
        if len(self._data.path_cache) > 256:
            self._data.path_cache.clear()
        self._data.path_cache[key] = result
        return result

    def resolve_relation(self, schema: str | None, name: str, search_path: Sequence[str],
                         *, user: str | None = None) -> Relation | None:
        """The relation the server would pick for ``[schema.]name``, or None."""
        if schema is not None:
            return self.relation(schema, name)
        for s in self.search_order(search_path, user=user):
            rel = self.relation(s, name)
            if rel is not None:
                return rel
        return None

    def relation_candidates(self, schema: str | None, name: str, search_path: Sequence[str],
                            *, user: str | None = None) -> list[Relation]:
        """Like :meth:`resolve_relation`, but when a session temp relation wins, the
        permanent relation it shadows (if any) is returned after it.

        The gateway learns about temp tables by watching the session and cannot be sure a
        CREATE TEMP TABLE was not rolled back, nor a DROP; reporting both is the fail-closed
        choice.

        Likewise, while the session's search path is not settled (a SET the server may
        not have run, a function that may have changed it: :meth:`with_paths`), the
        relations the name means along every path it may be on follow, or in every
        schema: the policy sees them all, and masks follow any of them.
        """
        if schema is not None:
            rel = self.relation(schema, name)
            return [rel] if rel is not None else []
        found = self._along(search_path, name, user)
        if self._other_paths or self._any_path:
            if self._any_path:
                more = [r for s in sorted(self._data.schemas | {"pg_catalog"})
                        if (r := self.relation(s, name)) is not None]
                temp = self._temp.get(name)
                if temp is not None:
                    more.append(temp)
            else:
                more = [r for path in self._other_paths for r in self._along(path, name, user)]
            for rel in more:
                if rel not in found:
                    found.append(rel)
        return found

    def _along(self, search_path: Sequence[str], name: str, user: str | None
               ) -> list[Relation]:
        found: list[Relation] = []
        for s in self.search_order(search_path, user=user):
            rel = self.relation(s, name)
            if rel is None:
                continue
            found.append(rel)
            if not rel.temp:
                break
        return found

    def function_candidates(self, schema: str | None, name: str, search_path: Sequence[str],
                            *, user: str | None = None) -> tuple[str, ...]:
        """Every visible function named ``name`` ("schema.name"), in search order.

        Overloads in several schemas are resolved by argument types, which the analyzer
        doesn't know, so all visible candidates are returned. Empty if none is known.
        """
        if schema is not None:
            if schema in self._data.functions.get(name, ()):
                return (f"{schema}.{name}",)
            return ()
        return self._looked_up(self._data.functions.get(name), name, search_path, user)

    def foreign_operators(self, schema: str | None, name: str, search_path: Sequence[str],
                          *, user: str | None = None) -> tuple[str, ...]:
        """The operators ``[schema.]name`` may be that are defined outside pg_catalog
        ("schema.name"): the one named by another schema, or those in schemas it is looked
        up in along any path the session may be on. (PostgreSQL picks among them by
        argument types, which the analyzer does not know: one in a schema after
        pg_catalog wins when its types fit better.)"""
        if schema is not None:
            return () if schema == "pg_catalog" else (f"{schema}.{name}",)
        return self._looked_up(self._data.operators.get(name), name, search_path, user)

    def _looked_up(self, schemas: frozenset[str] | None, name: str,
                   search_path: Sequence[str], user: str | None) -> tuple[str, ...]:
        """"schema.name" for each of `schemas` (those defining a function or operator
        `name`) an unqualified lookup searches, in search order along `search_path`, then
        along the other paths the session may be on, or in every one of them."""
        if not schemas:
            return ()
        found = [f"{s}.{name}" for s in self.search_order(search_path, user=user,
                                                           relations=False) if s in schemas]
        if self._other_paths or self._any_path:  # (see relation_candidates)
            orders = [sorted(schemas)] if self._any_path else [
                self.search_order(p, user=user, relations=False) for p in self._other_paths]
            for order in orders:
                found += [q for s in order if s in schemas
                          and (q := f"{s}.{name}") not in found]
        return tuple(found)

    def resolve_function(self, schema: str | None, name: str, search_path: Sequence[str],
                         *, user: str | None = None) -> str:
        """"schema.name" of the function a call to ``[schema.]name`` would use.

        Known functions resolve to the first schema in search order that defines the name
        (``pg_catalog`` first unless the path lists it). An unknown function — one the
        snapshot doesn't have, so the call would fail unless the snapshot is stale — resolves
        to where ``CREATE FUNCTION name`` would have put it: the first existing schema of the
        path, or ``pg_catalog`` if there is none. An explicit schema is kept as written.
        """
        if schema is not None:
            return f"{schema}.{name}"
        candidates = self.function_candidates(None, name, search_path, user=user)
        if candidates:
            return candidates[0]
        creation = self.creation_schema(search_path, user=user)
        return f"{creation or 'pg_catalog'}.{name}"

    def creation_schema(self, search_path: Sequence[str], *,
                        user: str | None = None) -> str | None:
        """Where ``CREATE TABLE name`` would create: the first existing schema listed in the
        path (implicit pg_temp/pg_catalog don't count)."""
        user = user if user is not None else self._data.user
        for entry in search_path:
            if entry == "$user":
                if user is None:
                    continue
                entry = user
            if entry == TEMP_SCHEMA or entry.startswith("pg_temp_"):
                continue
            if entry in self._data.schemas or entry == "pg_catalog":
                return entry
        return None

    def __repr__(self) -> str:
        return (f"<Catalog gen={self.generation} relations={len(self._data.relations)} "
                f"functions={len(self._data.functions)} temp={len(self._temp)}>")


# -- search_path text -------------------------------------------------------------------------


def parse_search_path(text: str) -> tuple[str, ...]:
    """Split a ``search_path`` setting the way the server does (SplitIdentifierString).

    Unquoted names are folded to lower case; ``"..."`` keeps case and ``""`` is a quote.
    ``"$user"`` (quoted or not) is returned as ``$user``. Malformed input raises ValueError.
    """
    out: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            if out or text.strip():
                raise ValueError(f"malformed search_path: {text!r}")
            return ()
        if text[i] == '"':
            j = i + 1
            buf: list[str] = []
            while True:
                k = text.find('"', j)
                if k < 0:
                    raise ValueError(f"unterminated quoted name in search_path: {text!r}")
                buf.append(text[j:k])
                if k + 1 < n and text[k + 1] == '"':
                    buf.append('"')
                    j = k + 2
                    continue
                i = k + 1
                break
            name = "".join(buf)
            if not name:
                raise ValueError(f"empty name in search_path: {text!r}")
        else:
            j = i
            while j < n and text[j] != "," and not text[j].isspace():
                j += 1
            name = text[i:j].lower()
            if not name:
                raise ValueError(f"empty name in search_path: {text!r}")
            i = j
        out.append(name)
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return tuple(out)
        if text[i] != ",":
            raise ValueError(f"malformed search_path: {text!r}")
        i += 1


def format_search_path(path: Sequence[str]) -> str:
    """The inverse of :func:`parse_search_path` (for display and SET)."""
    parts = []
    for name in path:
        if name == "$user":
            parts.append('"$user"')
        elif name and name.isidentifier() and name == name.lower() and name.isascii():
            parts.append(name)
        else:
            parts.append('"' + name.replace('"', '""') + '"')
    return ", ".join(parts)


def _normalise_path(path: Sequence[str] | str) -> list[str]:
    if isinstance(path, str):
        return list(parse_search_path(path))
    return [p[1:-1].replace('""', '"') if len(p) > 1 and p[0] == p[-1] == '"' else p
            for p in path]
