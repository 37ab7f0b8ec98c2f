"""Records of one shape, encoded once: canonical text with holes.

A busy gateway's records repeat. The decision on a statement shape for one session is
the same record every time but for its envelope (``seq``, ``prev``, ``ts``); the
completion of that statement differs in a handful of numbers (rows, duration, the
decision it links). Encoding each one as JSON, scanning it for PANs and building it
from dicts is most of what auditing a statement costs, so a :class:`RecordTemplate`
keeps the canonical bytes of such a record cut at its holes, and sealing one
(:meth:`gateway.audit.chain.Chain.seal_template`) joins the pieces around the new
values. The bytes are exactly those :meth:`~gateway.audit.chain.Chain.seal` would write
for the same record (tests hold the two paths to that).

Why the joined record needs no PAN scan: the static text was scanned when the template
was made, and a template is refused if it had a hit or needed a ``\\uXXXX`` escape;
holes hold only ``seq``, ``prev`` (a digest, exempt from the scan), ``ts`` (digit groups
of at most four), ``null``, booleans and integers in ``[0, 10**12)`` (at most 12 digits,
short of any PAN); and every hole sits between ``:`` and ``,`` or ``}``, so no digit run
crosses from a hole into its neighbours. A value outside those kinds raises
:class:`TemplateMismatch` before anything is sealed: the caller writes the record the
ordinary way.
"""

from __future__ import annotations

import operator
import secrets
import string
from collections.abc import Callable, Hashable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .writer import AuditWriter

__all__ = ["ENVELOPE_HOLES", "RecordTemplate", "TemplateCache", "TemplateMismatch",
           "hole_marker", "hole_value"]

#: Envelope fields every template leaves open (filled by the chain).
ENVELOPE_HOLES = ("seq", "prev", "ts")

_INT_LIMIT = 10**12  # 12 digits at most: a PAN has 13 or more

# Markers are letters only (no digit the PAN scan could read) and random per process, so
# no record content can hold one by chance or by a client's design.
_MARK = "pgwhole" + "".join(secrets.choice(string.ascii_letters) for _ in range(24))


class TemplateMismatch(ValueError):
    """A value a template cannot hold; write the record without the template."""


def hole_marker(i: int) -> str:
    """The placeholder string for hole number `i` (letters only)."""
    return _MARK + string.ascii_letters[i]


def hole_value(value: Any) -> bytes:
    """A hole's value as canonical JSON. Raises TemplateMismatch for anything but None,
    a bool or an integer in [0, 10**12)."""
    if type(value) is int and 0 <= value < _INT_LIMIT:
        return b"%d" % value
    if value is None:
        return b"null"
    if value is True:
        return b"true"
    if value is False:
        return b"false"
    raise TemplateMismatch(f"a template hole cannot hold {type(value).__name__} {value!r}")


class RecordTemplate:
    """The canonical bytes of one record shape as a ``%``-format, one ``%s`` per hole.

    ``holes`` names the caller's holes, in the order :meth:`fill` takes their values (the
    envelope's are :data:`ENVELOPE_HOLES`, filled by the chain). Made by
    :meth:`gateway.audit.chain.Chain.template`; valid for that chain's instance only.
    """

    __slots__ = ("_order", "chunks", "format", "holes", "instance", "parts", "picks",
                 "session", "type")

    def __init__(self, chunks: tuple[str, ...], order: tuple[str, ...], holes: tuple[str, ...],
                 *, instance: str, type: str, session: str | None) -> None:
        """`chunks`: the text around the holes; `order`: the field of each hole in text
        order (canonical JSON sorts keys)."""
        if len(chunks) != len(order) + 1:
            raise ValueError("a template needs one chunk more than it has holes")
        names = (*ENVELOPE_HOLES, *holes)
        if sorted(order) != sorted(names):
            raise ValueError("the template's holes do not match its fields")
        self.chunks = tuple(c.encode("utf-8") for c in chunks)
        self.format = b"%s".join(c.replace(b"%", b"%%") for c in self.chunks)
        # fill() gets (seq, prev, ts, *values): this picks them in text order
        self.picks = tuple(names.index(name) for name in order)
        self._order = operator.itemgetter(*self.picks)  # at least the three envelope holes
        self.holes = holes
        self.instance = instance
        self.type = type
        self.session = session
        # what the compiled ledger reads, in one attribute (see gateway.audit.ledger)
        self.parts = (self.chunks, self.picks, type, session, instance)

    def fill(self, seq: int, prev: str, ts: str, values: tuple[Any, ...] = ()) -> bytes:
        """The canonical bytes with every hole filled (`values` in :attr:`holes` order).
        Raises TemplateMismatch (for a missing or unsupported value) first."""
        if len(values) != len(self.holes):
            raise TemplateMismatch(f"{len(self.holes)} hole values expected, not {len(values)}")
        if not 0 < seq < _INT_LIMIT:
            raise TemplateMismatch("seq beyond a template's digits")
        args = [b"%d" % seq, b'"' + prev.encode() + b'"', b'"' + ts.encode() + b'"']
        for v in values:
            args.append(b"%d" % v if type(v) is int and 0 <= v < _INT_LIMIT else hole_value(v))
        return self.format % self._order(args)

    def __repr__(self) -> str:
        return f"RecordTemplate({self.type}, holes={self.holes})"


class TemplateCache:
    """One session's templates by the caller's key: what makes two records of that
    session the same shape (e.g. a statement digest and its decision). Bounded: it
    starts afresh when full, which costs one ordinary encoding per shape."""

    __slots__ = ("_max", "_templates", "complete", "quick", "writer")

    def __init__(self, writer: AuditWriter, max_size: int = 256) -> None:
        self.writer = writer
        self._max = max_size
        self._templates: dict[Hashable, tuple[object, RecordTemplate | None]] = {}
        #: ``quick(key, values, pin)``: :meth:`fill` in one call (the writer's ledger's
        #: ``fill`` on this cache's dict): the seq, else ``0`` (no template of `key` for
        #: `pin`, or a value that does not fit) or ``-1`` (refused); the writer thread is
        #: not woken. The callers of a statement's records take it first, :meth:`append`
        #: when it gives no seq (which builds the record, or raises why it was refused).
        self.quick: Callable[[Hashable, tuple[Any, ...], object], int] = partial(
            writer.ledger.fill, self._templates)
        #: ``complete(tag, body, totals)``: a statement's usual end (see Session.
        #: _statement_done) recorded and counted in one compiled call: the seq, else 0
        #: (the caller's Python path does it). None without the compiled ledger.
        complete = getattr(writer.ledger, "complete", None)
        self.complete: Callable[[Any, bytes, Any], int] | None = \
            partial(complete, self._templates) if complete is not None else None

    def append(self, key: Hashable, build: Callable[[], Mapping[str, Any]],
               holes: tuple[str, ...] = (), values: tuple[Any, ...] = (),
               *, pin: object = None, wake: bool = True) -> int:
        """Append the record `build()` returns (with `values` in its `holes` fields):
        from the template of `key` when there is one, else the ordinary way.

        `pin`: an object the key names by ``id()`` (hashing it would cost more than the
        template saves); the cache holds it, so no other object can take its id, and an
        entry is only used for that very object."""
        seq = self.fill(key, values, pin=pin, wake=wake)
        if seq is not None:
            return seq
        templates = self._templates
        entry = templates.get(key)
        writer = self.writer
        record = build()
        if entry is not None and entry[0] is pin:  # no template for that shape, or the
            return writer.append(record, wake=wake)  # values did not fit it
        if len(templates) >= self._max:
            templates.clear()
        tpl = writer.template(record, holes)
        templates[key] = (pin, tpl)
        if tpl is None:
            return writer.append(record, wake=wake)
        try:
            return writer.append_template(tpl, values, wake=wake)
        except TemplateMismatch:
            return writer.append(record, wake=wake)

    def fill(self, key: Hashable, values: tuple[Any, ...] = (), *, pin: object = None,
             wake: bool = True) -> int | None:
        """:meth:`append` when `key` has a template and `values` fit it; else None, with
        nothing appended: the caller that has not built its record yet (the usual case
        is a hit) builds it only then."""
        seq = self.quick(key, values, pin)
        if seq > 0:
            if wake:
                self.writer.wake()
            return seq
        if seq == 0:  # no template, or a value that does not fit
            return None
        raise self.writer.refusal()
