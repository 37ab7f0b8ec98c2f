"""``audit show``: records as a readable timeline, one line each (plus reasons/errors).

    2025-01-15T09:30:00.123456Z  gw1#12  session.start  3f2a9c1d0b4e5a6f
        ci-bot (https://ci.example.com) groups ci from 10.0.0.5 app psql -> cardholder/payments
    2025-01-15T09:30:00.200000Z  gw1#13  decision  ...  DENIED SELECT  SELECT cvv FROM cards ...

With a session filter, a header names who and from where once and lines leave out the
session id.

Every field is shown through :func:`.display.text_of` (a field of an odd type as its JSON
text) and every line through :func:`.display.visible` (a record's text cannot act on the
terminal or break the line).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO

from .display import joined, text_of, visible
from .reader import Located, flatten

__all__ = ["render_record", "render_timeline"]


def _ms(us: Any) -> str:
    if not isinstance(us, int):
        return ""
    try:
        return f"{us / 1000:.3f} ms"
    except OverflowError:  # a JSON integer past any float
        return f"{us} us"


def _kv(rec: Mapping[str, Any], *keys: str) -> str:
    parts = []
    for k in keys:
        v = rec.get(k)
        if v not in (None, "", [], {}):
            parts.append(f"{k}={text_of(v)}")
    return " ".join(parts)


def _who(rec: Mapping[str, Any]) -> str:
    target = "/".join(text_of(x) for x in (rec.get("connection"), rec.get("database")) if x)
    as_user = f" as {text_of(rec['db_user'])}" if rec.get("db_user") else ""
    return (f"{text_of(rec.get('subject'))} ({text_of(rec.get('issuer'))}) groups "
            f"{joined(rec.get('groups'))} from {text_of(rec.get('client_addr'))} app "
            f"{text_of(rec.get('application_name') or None)} -> {target or '-'}{as_user}")


def _changed(rec: Mapping[str, Any]) -> str:
    changed = rec.get("changed") or []
    if not isinstance(changed, list):
        return text_of(changed)
    return ", ".join(f"{text_of(k)} -> {text_of(rec.get(k) or None)}" if isinstance(k, str)
                     else text_of(k) for k in changed)


def _totals(rec: Mapping[str, Any]) -> str:
    tot = rec.get("totals") or {}
    if not isinstance(tot, dict):
        return f"{text_of(rec.get('reason'))}: totals {text_of(tot)}"

    def n(key: str) -> str:
        return text_of(tot.get(key, 0))

    return (f"{text_of(rec.get('reason'))}: {n('statements')} statements "
            f"({n('allowed')} allowed, {n('masked')} masked, {n('denied')} denied, "
            f"{n('held')} held, {n('errors')} errors"
            + "".join(f", {n(k)} {k}" for k in ("skipped", "unfinished", "limited")
                      if tot.get(k))
            + f"), rows {n('rows')}, masked values {n('masked_values')}, safety net "
            f"{n('safety_net_hits')}  {_ms(rec.get('duration_us'))}")


def _upper(value: Any) -> str:
    return value.upper() if isinstance(value, str) else text_of(value)


# why the writer restated a session (writer.py): a new file segment, or a table's interval
_RESTATED = {"segment": "at a new segment", "interval": "after segment_age"}


def _summary(rec: Mapping[str, Any]) -> tuple[str, list[str]]:
    rec = flatten(dict(rec))
    t = rec.get("type")
    extra: list[str] = []
    if t == "session.start":
        return _who(rec), extra
    if t == "session.update":
        restated = rec.get("restated")
        if restated:  # nothing changed: the writer restates an open session
            when = _RESTATED.get(restated) if isinstance(restated, str) else None
            return f"restated {when or f'({text_of(restated)})'}: {_who(rec)}", extra
        return _changed(rec), extra
    if t == "session.end":
        return _totals(rec), extra
    if t == "decision":
        text = (f"{_upper(rec.get('outcome', ''))} {text_of(rec.get('command') or '?')}  "
                f"{text_of(rec.get('sql') or '')}")
        reasons = rec.get("reasons") or []
        if reasons:
            extra.append("reasons: " + joined(reasons, "; "))
        sqlstate = f"sqlstate {text_of(rec['sqlstate'])}" if rec.get("sqlstate") else ""
        if rec.get("bundle_hash"):
            extra.append(f"bundle {text_of(rec.get('bundle_revision'))} "
                         f"{text_of(rec['bundle_hash'])[:12]}"
                         + (f"  {sqlstate}" if sqlstate else ""))
        elif sqlstate:
            extra.append(sqlstate)
        return text, extra
    if t == "statement":
        text = (f"{_upper(rec.get('outcome', ''))} {text_of(rec.get('command') or '?')} "
                + _kv(rec, "sqlstate", "rows", "masked_values", "safety_net_hits",
                      "decision_seq") + f"  {_ms(rec.get('duration_us'))}")
        if rec.get("error"):
            extra.append(f"error: {text_of(rec['error'])}")
        return text, extra
    if t == "auth.failure":
        return (f"{text_of(rec.get('reason'))} from {text_of(rec.get('client_addr'))} "
                + _kv(rec, "connection", "db_user", "application_name", "sqlstate")), extra
    if isinstance(t, str) and t.startswith("approval."):
        text = f"{text_of(rec.get('approval_id'))} " + _kv(
            rec, "requester", "approvers", "approver", "decision_seq", "expires_at")
        if rec.get("sql"):
            extra.append(f"sql: {text_of(rec['sql'])}")
        if rec.get("reason"):
            extra.append(f"reason: {text_of(rec['reason'])}")
        return text, extra
    if isinstance(t, str) and t.startswith("bundle."):
        text = (f"revision {text_of(rec.get('bundle_revision'))} "
                f"{text_of(rec.get('bundle_hash') or None)[:12]} from "
                f"{text_of(rec.get('source'))}")
        if rec.get("reason"):
            extra.append(f"reason: {text_of(rec['reason'])}")
        return text, extra
    if t == "gateway.start":
        return _kv(rec, "version", "pid", "worker", "workers", "bundle_revision"), extra
    if t == "gateway.stop":
        return _kv(rec, "reason", "sessions_open"), extra
    if t == "checkpoint":
        final = " final" if rec.get("final") else ""
        return (f"head seq {text_of(rec.get('head_seq'))} signed by "
                f"{text_of(rec.get('key_id'))}{final} ({text_of(rec.get('reason'))})"), extra
    if t == "segment":
        return (f"segment {text_of(rec.get('segment'))} ({text_of(rec.get('reason'))}), "
                f"after {text_of(rec.get('previous_segment') or 'nothing')} seq "
                f"{text_of(rec.get('previous_seq'))}"), extra
    return "", extra


def render_record(loc: Located, *, with_session: bool = True) -> str:
    rec = loc.record
    head = (f"{text_of(rec.get('ts'))}  {loc.instance}#{text_of(rec.get('seq'))}  "
            f"{text_of(rec.get('type'))}")
    if with_session and rec.get("session"):
        head += f"  [{text_of(rec['session'])}]"
    text, extra = _summary(rec)
    lines = [f"{head}  {text}".rstrip()]
    lines.extend(f"    {x}" for x in extra)
    if rec.get("scrubbed"):
        lines.append(f"    ({text_of(rec['scrubbed'])} card number(s) masked in this record)")
    # escaped line by line: only the line breaks put here separate the lines shown
    return "\n".join(visible(line) for line in lines)


#: Decisions whose SQL a timeline keeps for the executions that link to them later: past
#: this many, it starts afresh (a later execution of a forgotten one shows no SQL).
_REMEMBERED = 100_000


class _Executions:
    """Which statement records are executions under a decision not shown right before
    them: a session's repeat of a kept allow, or an Execute of a prepared statement, has
    no decision record of its own and links to the first one's (docs/audit.md, "One
    decision, many executions"). The first execution follows its decision in the
    timeline; the later ones are far from it, and with a filter the decision may not be
    shown at all, so they are shown with its SQL."""

    def __init__(self) -> None:
        self.sql: dict[tuple[str, int], tuple[Any, bool]] = {}  # -> (its SQL, shown)
        self.ran: set[tuple[str, int]] = set()

    def note(self, loc: Located, shown: bool = True) -> str | None:
        """An extra line for `loc` (if `shown`) when it is such an execution, else None."""
        rec = loc.record
        kind = rec.get("type")
        if len(self.sql) >= _REMEMBERED or len(self.ran) >= _REMEMBERED:
            self.sql.clear()  # (a crafted log may link statements to any number of seqs)
            self.ran.clear()
        if kind == "decision" and type(rec.get("seq")) is int:
            self.sql[(loc.instance, rec["seq"])] = (rec.get("sql"), shown)
        elif kind == "statement" and type(rec.get("decision_seq")) is int:
            key = (loc.instance, rec["decision_seq"])
            first = key not in self.ran
            self.ran.add(key)
            decision = self.sql.get(key)
            if not shown or (first and decision is not None and decision[1]):
                return None  # (the first execution follows its decision on the timeline)
            return visible(f"    {'under' if first else 'again under'} decision #{key[1]}"
                           + (f": {text_of(decision[0])}" if decision is not None
                              and decision[0] is not None else ""))
        return None


def render_timeline(records: Iterable[Located], out: TextIO, *,
                    session: str | None = None,
                    shown: Callable[[dict[str, Any]], bool] | None = None) -> int:
    """Write the timeline of the records `shown` accepts (None: all; the others are what
    explains them, such as the decisions of later executions); returns how many it
    showed."""
    count = 0
    executions = _Executions()
    for loc in records:
        if shown is not None and not shown(loc.record):
            executions.note(loc, shown=False)
            continue
        if count == 0 and session is not None:
            rec = flatten(loc.record)
            out.write(visible(f"session {session}: {_who(rec)}") + "\n")
        out.write(render_record(loc, with_session=session is None) + "\n")
        again = executions.note(loc)
        if again is not None:
            out.write(again + "\n")
        count += 1
    if count == 0:
        out.write("no matching audit records\n")
    return count
