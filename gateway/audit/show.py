"""``audit show``: records as a readable timeline, one line each (plus reasons/errors).

    2025-01-15T09:30:00.123456Z  gw1#12  session.start  3f2a9c1d0b4e5a6f
        ci-bot (https://ci.example.com) groups ci from 10.0.0.5 app psql -> cardholder/payments
    2025-01-15T09:30:00.200000Z  gw1#13  decision  ...  DENIED SELECT  SELECT cvv FROM cards ...

With a session filter, a header names who and from where once and lines leave out the
session id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from .reader import Located, flatten

__all__ = ["render_record", "render_timeline"]


def _ms(us: Any) -> str:
    return f"{us / 1000:.3f} ms" if isinstance(us, int) else ""


def _kv(rec: Mapping[str, Any], *keys: str) -> str:
    parts = []
    for k in keys:
        v = rec.get(k)
        if v not in (None, "", [], {}):
            parts.append(f"{k}={v}")
    return " ".join(parts)


def _who(rec: Mapping[str, Any]) -> str:
    groups = ",".join(rec.get("groups") or []) or "-"
    target = "/".join(str(x) for x in (rec.get("connection"), rec.get("database")) if x)
    as_user = f" as {rec['db_user']}" if rec.get("db_user") else ""
    return (f"{rec.get('subject')} ({rec.get('issuer')}) groups {groups} from "
            f"{rec.get('client_addr')} app {rec.get('application_name') or '-'} -> "
            f"{target or '-'}{as_user}")


def _summary(rec: Mapping[str, Any]) -> tuple[str, list[str]]:
    rec = flatten(dict(rec))
    t = rec.get("type")
    extra: list[str] = []
    if t == "session.start":
        return _who(rec), extra
    if t == "session.update":
        changed = rec.get("changed") or []
        return ", ".join(f"{k} -> {rec.get(k) or '-'}" for k in changed), extra
    if t == "session.end":
        tot = rec.get("totals") or {}
        text = (f"{rec.get('reason')}: {tot.get('statements', 0)} statements "
                f"({tot.get('allowed', 0)} allowed, {tot.get('masked', 0)} masked, "
                f"{tot.get('denied', 0)} denied, {tot.get('held', 0)} held, "
                f"{tot.get('errors', 0)} errors"
                + "".join(f", {tot[k]} {k}" for k in ("skipped", "unfinished", "limited")
                          if tot.get(k))
                + f"), rows {tot.get('rows', 0)}, masked values "
                f"{tot.get('masked_values', 0)}, safety net {tot.get('safety_net_hits', 0)}"
                f"  {_ms(rec.get('duration_us'))}")
        return text, extra
    if t == "decision":
        text = (f"{str(rec.get('outcome', '')).upper()} {rec.get('command') or '?'}  "
                f"{rec.get('sql') or ''}")
        reasons = rec.get("reasons") or []
        if reasons:
            extra.append("reasons: " + "; ".join(str(r) for r in reasons))
        if rec.get("bundle_hash"):
            extra.append(f"bundle {rec.get('bundle_revision')} {str(rec['bundle_hash'])[:12]}"
                         + (f"  sqlstate {rec['sqlstate']}" if rec.get("sqlstate") else ""))
        elif rec.get("sqlstate"):
            extra.append(f"sqlstate {rec['sqlstate']}")
        return text, extra
    if t == "statement":
        text = (f"{str(rec.get('outcome', '')).upper()} {rec.get('command') or '?'} "
                + _kv(rec, "sqlstate", "rows", "masked_values", "safety_net_hits",
                      "decision_seq") + f"  {_ms(rec.get('duration_us'))}")
        if rec.get("error"):
            extra.append(f"error: {rec['error']}")
        return text, extra
    if t == "auth.failure":
        return (f"{rec.get('reason')} from {rec.get('client_addr')} "
                + _kv(rec, "connection", "db_user", "application_name", "sqlstate")), extra
    if isinstance(t, str) and t.startswith("approval."):
        text = f"{rec.get('approval_id')} " + _kv(rec, "requester", "approvers", "approver",
                                                   "decision_seq", "expires_at")
        if rec.get("sql"):
            extra.append(f"sql: {rec['sql']}")
        if rec.get("reason"):
            extra.append(f"reason: {rec['reason']}")
        return text, extra
    if isinstance(t, str) and t.startswith("bundle."):
        text = (f"revision {rec.get('bundle_revision')} "
                f"{str(rec.get('bundle_hash') or '-')[:12]} from {rec.get('source')}")
        if rec.get("reason"):
            extra.append(f"reason: {rec['reason']}")
        return text, extra
    if t == "gateway.start":
        return _kv(rec, "version", "pid", "worker", "workers", "bundle_revision"), extra
    if t == "gateway.stop":
        return _kv(rec, "reason", "sessions_open"), extra
    if t == "checkpoint":
        final = " final" if rec.get("final") else ""
        return (f"head seq {rec.get('head_seq')} signed by {rec.get('key_id')}{final} "
                f"({rec.get('reason')})"), extra
    if t == "segment":
        return (f"segment {rec.get('segment')} ({rec.get('reason')}), after "
                f"{rec.get('previous_segment') or 'nothing'} seq {rec.get('previous_seq')}"), extra
    return "", extra


def render_record(loc: Located, *, with_session: bool = True) -> str:
    rec = loc.record
    head = f"{rec.get('ts')}  {loc.instance}#{rec.get('seq')}  {rec.get('type')}"
    if with_session and rec.get("session"):
        head += f"  [{rec['session']}]"
    text, extra = _summary(rec)
    lines = [f"{head}  {text}".rstrip()]
    lines.extend(f"    {x}" for x in extra)
    if rec.get("scrubbed"):
        lines.append(f"    ({rec['scrubbed']} card number(s) masked in this record)")
    return "\n".join(lines)


def render_timeline(records: Iterable[Located], out: TextIO, *,
                    session: str | None = None) -> int:
    """Write the timeline; returns the number of records shown."""
    count = 0
    for loc in records:
        if count == 0 and session is not None:
            rec = flatten(loc.record)
            out.write(f"session {session}: {_who(rec)}\n")
        out.write(render_record(loc, with_session=session is None) + "\n")
        count += 1
    if count == 0:
        out.write("no matching audit records\n")
    return count
