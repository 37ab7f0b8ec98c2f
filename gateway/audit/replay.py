"""Re-evaluating recorded decisions: ``audit explain`` and ``policy replay``.

Every decision record keeps the policy input it was made on (its ``statement`` and
``approval``; the session's identity, connection and session documents are archived once
by ``session.start``), redacted: literals in ``statement.sql`` are ``$n``, a SET value is
``?``, PANs are masked (policies decide on the analysis, not on those values). It also
names the bundle's revision and hash.

* :func:`explain` re-evaluates one decision with the bundle it names: ``--bundle PATH``,
  or ``<bundles dir>/<bundle hash>.tar.gz`` (the gateway archives every bundle it activates
  there); the file's sha256 must equal the recorded hash.
* :func:`replay` evaluates every recorded decision with a new bundle and lists those
  whose effect would change: outcome (allowed/masked/held/denied), mask, approvers,
  row_limit or db_role. Reasons alone changing is not a change.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from gateway.catalog.classification import apply_tags, classification_of
from gateway.policy.decision import Decision
from gateway.policy.engine import PolicyEngine
from gateway.policy.source import PolicySource

from .display import joined, json_text, text_of, visible
from .reader import Located, flatten
from .records import decision_outcome, replay_input

__all__ = [
    "Change",
    "Explanation",
    "archived_bundle",
    "effect_of_decision",
    "effect_of_record",
    "explain_record",
    "replay_records",
]


class ReplayError(Exception):
    """Bad input for explain/replay (exit 2 at the command line)."""


def _recorded_outcome(rec: Mapping[str, Any], d: Mapping[str, Any]) -> Any:
    """What the policy said (not what the gateway did with it: the recorded ``outcome``
    may be a refusal for a reason outside the policy)."""
    if not d:
        return rec.get("outcome")
    if d.get("error") is None and d.get("require_approval"):
        return "held"
    if d.get("allow"):
        return "masked" if d.get("mask") else "allowed"
    return "denied"


def _recorded_mask(mask: Any) -> Any:
    """A recorded mask as :func:`effect_of_decision` has it; one of another type as its
    JSON text (never equal to a real decision's: a crafted record is a change)."""
    if isinstance(mask, Mapping):
        return tuple(sorted(mask.items()))
    return json_text(mask) if mask else ()


def _recorded_approvers(approvers: Any) -> Any:
    if isinstance(approvers, list) and all(isinstance(a, str) for a in approvers):
        return tuple(sorted(approvers))
    return json_text(approvers) if approvers else ()


def effect_of_record(rec: Mapping[str, Any]) -> tuple[Any, ...]:
    d = rec.get("decision") or {}
    if not isinstance(d, Mapping):
        return (json_text(d),)  # no decision document: nothing a policy answer equals
    return (_recorded_outcome(rec, d), _recorded_mask(d.get("mask")),
            _recorded_approvers(d.get("approvers")) if d.get("require_approval") else (),
            d.get("row_limit"), d.get("db_role"))


def effect_of_decision(dec: Decision) -> tuple[Any, ...]:
    return (decision_outcome(dec), tuple(sorted(dec.mask.items())),
            tuple(sorted(dec.approvers)) if dec.require_approval else (),
            dec.row_limit, dec.db_role)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def archived_bundle(bundles_dir: str | os.PathLike[str], bundle_hash: str) -> Path:
    """``<bundles_dir>/<hash>.tar.gz``, checked against its hash."""
    if len(bundle_hash) != 64 or bundle_hash.strip("0123456789abcdef"):
        raise ReplayError(f"the record names no bundle hash ({bundle_hash!r})")
    path = Path(bundles_dir) / f"{bundle_hash}.tar.gz"
    if not path.is_file():
        raise ReplayError(f"{path}: the bundle this decision was made with is not archived")
    actual = _sha256_file(path)
    if actual != bundle_hash:
        raise ReplayError(f"{path}: its sha256 is {actual}, not the recorded {bundle_hash}")
    return path


def load_engine(path: str | os.PathLike[str], entrypoint: str | None = None) -> PolicyEngine:
    """A policy engine for replays (compiled in a probe process first: crash-safe)."""
    return PolicyEngine(PolicySource.load(path), entrypoint, probe=True)


@dataclass(frozen=True)
class Explanation:
    located: Located
    bundle: str
    recorded: tuple[Any, ...]
    now: Decision
    same: bool
    bundle_matches: bool

    def render(self, out: TextIO) -> None:
        for line in self._lines():
            out.write(visible(line) + "\n")  # a record's text cannot break or act on a line

    def _lines(self) -> list[str]:
        rec = flatten(self.located.record)
        now = self.now
        lines = [
            f"decision {self.located.instance}#{text_of(rec.get('seq'))} at "
            f"{text_of(rec.get('ts'))} ({self.located.location} line {self.located.line})",
            f"  who:       {text_of(rec.get('subject'))} ({text_of(rec.get('issuer'))}) "
            f"groups {joined(rec.get('groups'))}",
            f"  statement: {text_of(rec.get('command'))} {text_of(rec.get('sql'))}",
            f"  bundle:    {text_of(rec.get('bundle_revision'))} "
            f"{text_of(rec.get('bundle_hash'))}",
            f"  recorded:  {text_of(self.recorded[0])}  reasons: "
            f"{joined(rec.get('reasons'), '; ')}",
            f"  now:       {decision_outcome(now)}  reasons: "
            f"{'; '.join(now.reasons) or '-'}  (with {self.bundle})",
        ]
        if now.mask:
            lines.append(f"  mask:      {json.dumps(dict(now.mask), sort_keys=True)}")
        if not self.bundle_matches:
            lines.append(f"  note: {self.bundle} is not the recorded bundle "
                         f"(hash {now.bundle_hash})")
        lines.append("  result:    " + ("the same decision" if self.same
                                         else "a DIFFERENT decision"))
        return lines


def as_tagged_by(input_doc: dict[str, Any], engine: PolicyEngine) -> dict[str, Any]:
    """`input_doc` (from :func:`replay_input`: its own copy) with the column tags the
    evaluating bundle's classification gives, as the gateway would have built it: a
    candidate that classifies a column anew must be seen to mask or refuse it."""
    stmt = input_doc.get("statement")
    if isinstance(stmt, dict) and isinstance(stmt.get("columns"), list):
        stmt["columns"] = apply_tags(stmt["columns"], classification_of(engine.source.data))
    return input_doc


def explain_record(located: Located, *, session_input: Mapping[str, Any] | None = None,
                   bundle: str | os.PathLike[str] | None = None,
                   bundles_dir: str | os.PathLike[str] | None = None) -> Explanation:
    """Re-evaluate one decision record; `session_input` is its session.start's ``input``."""
    rec = located.record
    if rec.get("type") != "decision":
        raise ReplayError(f"seq {rec.get('seq')} is a {rec.get('type')} record, not a decision")
    if not rec.get("decision"):
        raise ReplayError(f"decision seq {rec.get('seq')} was refused before the policy ran: "
                          "there is nothing to re-evaluate")
    if not isinstance(rec.get("statement"), Mapping):
        raise ReplayError(f"decision seq {rec.get('seq')} holds no statement document "
                          "to re-evaluate")
    input_doc = replay_input(rec, session_input)
    if input_doc is None:
        raise ReplayError(f"decision seq {rec.get('seq')}: the session.start record of session "
                          f"{rec.get('session')} is missing, so its policy input is incomplete")
    recorded_hash = rec.get("bundle_hash")
    entrypoint = rec.get("entrypoint")
    if entrypoint is not None and not isinstance(entrypoint, str):
        raise ReplayError(f"decision seq {rec.get('seq')} names no entrypoint "
                          f"({json_text(entrypoint)})")
    if bundle is None:
        if bundles_dir is None:
            raise ReplayError("give --bundle PATH or --bundles DIR")
        bundle = archived_bundle(bundles_dir, str(recorded_hash))
    engine = load_engine(bundle, entrypoint)
    now = engine.decide(as_tagged_by(input_doc, engine))
    return Explanation(located, str(bundle), effect_of_record(rec), now,
                       effect_of_record(rec) == effect_of_decision(now),
                       engine.bundle_hash == recorded_hash)


@dataclass(frozen=True)
class Change:
    located: Located
    before: str
    after: str
    decision: Decision
    #: the statement records linked to it, once its session ended (or the records did):
    #: None from a replay that yields each change as it finds it
    executions: int | None = None

    def to_json(self) -> dict[str, Any]:
        rec = flatten(self.located.record)
        doc = {"instance": self.located.instance, "seq": rec.get("seq"), "ts": rec.get("ts"),
               "session": rec.get("session"), "subject": rec.get("subject"),
               "command": rec.get("command"), "sql": rec.get("sql"),
               "before": self.before, "after": self.after,
               "before_reasons": rec.get("reasons") or [],
               "after_reasons": list(self.decision.reasons),
               "after_mask": dict(self.decision.mask),
               "bundle_before": rec.get("bundle_hash")}
        if self.executions is not None:
            doc["executions"] = self.executions
        return doc


@dataclass
class ReplayStats:
    decisions: int = 0
    replayed: int = 0
    skipped: int = 0  # refused before the policy ran: nothing to re-decide
    unknown: int = 0  # decided, but its session's part of the input is not in the records
    changed: int = 0
    #: statement records linked to a decision that would change: one decision stands for
    #: every execution of a prepared statement, and of a session's repeats of a kept allow
    executions: int = 0
    #: each decision that would change, (instance, seq) -> the executions linked to it
    under: dict[tuple[str, int], int] = field(default_factory=dict)

    def most_executed(self, limit: int) -> list[tuple[tuple[str, int], int]]:
        """The changed decisions that stood for the most executions, most first (ties in
        the chain's order): where a rollout would be felt most."""
        ranked = heapq.nlargest(limit, self.under.items(), key=lambda kv: kv[1])
        return [kv for kv in ranked if kv[1]]


def replay_records(records: Iterable[Located], engine: PolicyEngine, stats: ReplayStats,
                   keep: Callable[[dict[str, Any]], bool] | None = None, *,
                   settled: bool = False) -> Iterator[Change]:
    """Re-decide every decision record (that `keep` accepts); yields the ones whose
    effect changes. `records` must include the sessions' ``session.start`` records (and
    their ``session.update`` ones), in order.

    `settled`: hold each change until its session's ``session.end`` (or the end of the
    records) and yield it then with its ``executions``: every statement record linked to a
    decision is its session's (a kept allow and a prepared statement live in one session),
    so only a session's own changes are ever held."""
    held: dict[tuple[str, str], list[Change]] = {}
    yield from _replayed(records, engine, stats, keep, held if settled else None)
    for changes in held.values():  # sessions the records do not see end
        yield from _settle(changes, stats)


def _settle(changes: list[Change], stats: ReplayStats) -> Iterator[Change]:
    for change in changes:
        seq = change.located.record.get("seq")
        count = stats.under.get((change.located.instance, seq), 0) if type(seq) is int else 0
        yield replace(change, executions=count)


def _replayed(records: Iterable[Located], engine: PolicyEngine, stats: ReplayStats,
              keep: Callable[[dict[str, Any]], bool] | None,
              held: dict[tuple[str, str], list[Change]] | None) -> Iterator[Change]:
    sessions: dict[tuple[str, str], Any] = {}
    changed = stats.under
    for loc in records:
        rec = loc.record
        rtype = rec.get("type")
        if rtype == "statement":  # (after its decision, in the chain's order)
            linked = rec.get("decision_seq")
            if changed and type(linked) is int:
                key = (loc.instance, linked)
                if key in changed:
                    changed[key] += 1
                    stats.executions += 1
            continue
        # by JSON text: a crafted session id may be a list, which cannot key a dict
        session = (loc.instance, json_text(rec.get("session")))
        if rtype in ("session.start", "session.update"):
            sessions[session] = rec.get("input")
            continue
        if rtype == "session.end":
            sessions.pop(session, None)
            if held is not None and session in held:
                yield from _settle(held.pop(session), stats)
            continue
        if rtype != "decision" or (keep is not None and not keep(rec)):
            continue
        stats.decisions += 1
        input_doc = replay_input(rec, sessions.get(session))
        if input_doc is None:
            if rec.get("decision"):
                stats.unknown += 1
            else:
                stats.skipped += 1
            continue
        stats.replayed += 1
        dec = engine.decide(as_tagged_by(input_doc, engine))
        if effect_of_decision(dec) != effect_of_record(rec):
            stats.changed += 1
            seq = rec.get("seq")
            if type(seq) is int:
                changed[(loc.instance, seq)] = 0
            before = effect_of_record(rec)[0]
            change = Change(loc, str(before), decision_outcome(dec), dec)
            if held is None:
                yield change
            else:
                held.setdefault(session, []).append(change)
