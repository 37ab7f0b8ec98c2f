"""``audit verify``: check every hash, link, sequence number, segment and signature.

What each check catches (the first failure is reported with its file, line and seq):

* a record's bytes do not hash to its ``hash``: the record was **edited**; nor do bytes
  that are not the canonical JSON of the record they parse to (a repeated member reads
  differently in different parsers): **edited**, its hash recomputed;
* ``seq`` is not the previous one plus one: a record was **deleted** (a gap),
  records were **reordered**, or one was **inserted** (a repeated number);
* ``prev`` is not the previous record's hash: a record was **replaced or inserted**
  with a recomputed hash;
* a checkpoint's signature does not verify, or names another key: the chain was
  **rewritten** (every hash recomputed) or the **wrong key** was given;
* segments: numbers must follow each other, each file must start with its ``segment``
  record naming the previous file and head: a **deleted or swapped file**;
* runs: a gateway run ends with its final checkpoint, and the next record after it can
  only be the next run's ``start`` segment header. A run that stopped elsewhere left
  records no checkpoint signed (a crash), and the next run's checkpoints would vouch
  for whatever those records became before it started: such a run end fails unless
  ``accept_crashes`` (at most ``max_unsigned`` unsigned records each);
* the end: a sealed log ends with the final checkpoint the gateway writes at shutdown.
  A log that stops anywhere else was **truncated after a checkpoint** (or the gateway
  is still running, or died: ``live=True`` accepts an unsealed tail and reports its size);
* a last line without its newline: the file was **cut mid-record**;
* anchors (``audit.checkpoint`` and ``audit.run_started`` lines of the gateway's log,
  kept off the host): a record at an anchored seq with another hash was **rewritten**;
  a log that ends before an anchored seq, or an anchored instance with no records, lost
  its **newest records whole** (a run's segments, an instance's files); a run start the
  log covers but never announced, or an instance it never mentions, was **made up**.
  The chain alone can show none of these.

A chain starts at seq 1 after :data:`~gateway.audit.canonical.GENESIS`; with
``pruned=True`` it may start at a later segment (older segments removed by retention).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .canonical import GENESIS, MAX_LINE, canonical_bytes, chain_hash, parse_line
from .checkpoint import key_id as key_id_of
from .checkpoint import verify_checkpoint_signature
from .filesink import SEGMENT_RE, list_segments, segment_name

_HEX64 = re.compile(r"[0-9a-f]{64}")

__all__ = ["Anchor", "ChainVerifier", "InstanceSummary", "Problem", "VerifyReport",
           "load_anchors", "verify_dir", "verify_pg"]

_INSTANCE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ANCHOR_EVENTS = {"audit.checkpoint": "checkpoint", "audit.run_started": "start"}


@dataclass(frozen=True)
class Anchor:
    """A checkpoint (``audit.checkpoint``) or a run's start (``audit.run_started``) the
    gateway logged once it was written."""

    instance: str
    seq: int
    hash: str
    source: str  # where it was read: "FILE line N"
    kind: str = "checkpoint"  # or "start": a run's start segment record


def load_anchors(paths: Iterable[str | os.PathLike[str]]) -> list[Anchor]:
    """The ``audit.checkpoint`` and ``audit.run_started`` lines of gateway logs (JSON
    lines; other lines are skipped). Raises ValueError for such a line with a malformed
    field, and for files that hold none: a verification against no anchor at all is a
    mistake to say."""
    anchors: list[Anchor] = []
    for path in paths:
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                if b"audit.checkpoint" not in raw and b"audit.run_started" not in raw:
                    continue
                try:
                    doc = json.loads(raw)
                except (ValueError, RecursionError):
                    continue  # not a log line (the name inside other text)
                if not isinstance(doc, dict) or doc.get("event") not in _ANCHOR_EVENTS:
                    continue
                instance, seq, digest = doc.get("instance"), doc.get("seq"), doc.get("hash")
                if isinstance(digest, str):  # (grouped by dots: writer.anchor_hash)
                    digest = digest.replace(".", "")
                if not (isinstance(instance, str) and _INSTANCE.fullmatch(instance)
                        and type(seq) is int and seq > 0
                        and isinstance(digest, str) and _HEX64.fullmatch(digest)):
                    raise ValueError(f"{path} line {n}: an {doc['event']} line without a "
                                     "valid instance, seq and hash")
                anchors.append(Anchor(instance, seq, digest, f"{os.fspath(path)} line {n}",
                                      _ANCHOR_EVENTS[doc["event"]]))
    if not anchors:
        raise ValueError("no anchor lines (audit.checkpoint, audit.run_started) in the "
                         "anchor file(s)")
    return anchors


def _canonical(rec: dict[str, Any], body: bytes) -> bool:
    """Whether the hashed bytes are the canonical JSON of the record they parse to. A
    hash only binds bytes: readers (and people) see the parsed record, and JSON lets one
    record be written many ways, e.g. with a member twice (most parsers keep the last
    one, some the first), so that a line that hashes right may read differently."""
    try:
        return canonical_bytes({k: v for k, v in rec.items() if k != "hash"}) == body
    except (TypeError, ValueError, RecursionError):
        return False


def _by_instance(anchors: Iterable[Anchor]) -> dict[str, dict[int, list[Anchor]]]:
    out: dict[str, dict[int, list[Anchor]]] = {}
    for a in anchors:
        out.setdefault(a.instance, {}).setdefault(a.seq, []).append(a)
    return out


@dataclass(frozen=True)
class Problem:
    instance: str
    location: str  # a file name, or "TABLE instance ID"
    line: int  # 1-based line in the file, or row number in seq order
    seq: int | None
    message: str

    def __str__(self) -> str:
        seq = f", seq {self.seq}" if self.seq is not None else ""
        return f"{self.location} line {self.line} (instance {self.instance}{seq}): {self.message}"


@dataclass
class InstanceSummary:
    instance: str
    records: int = 0
    first_seq: int | None = None
    last_seq: int = 0
    segments: int = 0
    checkpoints: int = 0
    last_checkpoint_seq: int | None = None
    sealed: bool = False  # ends with the final checkpoint
    unsealed: int = 0  # records after the last checkpoint
    key_id: str | None = None
    anchors_matched: int = 0
    crashed_runs: int = 0  # runs that ended without their final checkpoint (accepted)
    unsigned: int = 0  # records those runs left that no checkpoint signs


@dataclass
class VerifyReport:
    problem: Problem | None = None
    instances: list[InstanceSummary] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None


class ChainVerifier:
    """Checks one instance's records in order; ``feed`` returns the first problem found."""

    def __init__(self, instance: str, public_key: Ed25519PublicKey, *,
                 pruned: bool = False, anchors: dict[int, list[Anchor]] | None = None,
                 accept_crashes: bool = False, max_unsigned: int = 10_000,
                 anchoring: bool = False) -> None:
        self.instance = instance
        self.anchors = anchors or {}
        # anchors were given (for any instance): the log given covers every instance
        self.anchoring = anchoring or bool(self.anchors)
        self.accept_crashes = accept_crashes
        self.max_unsigned = max_unsigned
        self.notes: list[str] = []
        self._run_ended = False  # the last record was a run's final checkpoint
        self.public_key = public_key
        self.key_id = key_id_of(public_key)
        self.pruned = pruned
        self.seq = 0
        self.head = GENESIS
        self.summary = InstanceSummary(instance, key_id=self.key_id)
        self._segment: int | None = None
        self._segment_location: str | None = None
        self._previous_location: str | None = None
        self._expect_header = False
        self._last_checkpoint_at: tuple[str, int] | None = None
        self.last_at: tuple[str, int] = ("", 0)

    def _p(self, location: str, line: int, seq: Any, message: str) -> Problem:
        return Problem(self.instance, location, line, seq if isinstance(seq, int) else None,
                       message)

    def begin_segment(self, n: int, location: str, line: int = 1) -> Problem | None:
        """A new segment file starts (file logs); its first record must be its header."""
        if self._segment is not None and n != self._segment + 1:
            return self._p(location, line, self.seq + 1,
                           f"segment {n} follows segment {self._segment}: segment file(s) "
                           f"{self._segment + 1}..{n - 1} are missing")
        if self._segment is None and n != 1 and not self.pruned:
            return self._p(location, line, None, f"the log starts at segment {n}: segments "
                           f"1..{n - 1} are missing (pruned=True accepts a pruned log)")
        self._previous_location = self._segment_location
        self._segment = n
        self._segment_location = location
        self._expect_header = True
        self.summary.segments += 1
        return None

    def feed(self, location: str, line: int, raw: bytes, *, complete: bool = True,
             stored_seq: int | None = None,
             stored_columns: tuple[str, str, str | None] | None = None) -> Problem | None:
        expected = self.seq + 1
        self.last_at = (location, line)
        if not complete:
            return self._p(location, line, expected, "truncated record: the line has no end "
                           "(the file was cut in the middle of a record)")
        parsed = parse_line(raw)
        if parsed is None:
            return self._p(location, line, expected, "not an audit record line (no JSON "
                           "object ending in its hash): the record was damaged or edited")
        rec, body, stored = parsed
        seq, prev = rec.get("seq"), rec.get("prev")
        if not isinstance(prev, str) or not _HEX64.fullmatch(prev) \
                or chain_hash(prev, body) != stored:
            return self._p(location, line, seq, "hash mismatch: the record was edited "
                           "after it was written")
        if not _canonical(rec, body):
            return self._p(location, line, seq if isinstance(seq, int) else None,
                           "the record is not in canonical form (a repeated member, an "
                           "escape, a number or spacing the gateway never writes): it was "
                           "edited after it was written, its hash recomputed")
        if stored_seq is not None and stored_seq != seq:
            return self._p(location, line, seq, f"the row's seq column says {stored_seq}, "
                           f"its record says {seq}: the row was edited")
        if not isinstance(seq, int) or isinstance(seq, bool):
            return self._p(location, line, None, "the record has no integer seq")
        if stored_columns is not None and stored_columns != (
                rec.get("ts"), rec.get("type"), rec.get("session")):
            return self._p(location, line, seq, "the row's ts, type or session column does "
                           "not say what its record says: the row was edited (queries on "
                           "those columns would find the wrong records)")
        first = self.summary.records == 0
        if first and self.pruned and seq > 1 and rec.get("type") == "segment":
            self.seq, self.head = seq - 1, prev  # a pruned log starts at a segment header
            expected = seq
            for a in self.anchors.get(seq - 1, ()):  # the record before it, pruned
                if a.hash != prev:
                    return self._p(location, line, seq, f"the log starts after seq "
                                   f"{seq - 1}, but not after the record anchored there "
                                   f"({a.source}): it was replaced")
        if seq != expected:
            if seq > expected:
                gap = f"{expected}" if seq - 1 == expected else f"{expected}..{seq - 1}"
                what = (f"seq {seq} where {expected} was expected: record(s) {gap} "
                        "deleted or moved (reordered)")
            else:
                what = (f"seq {seq} where {expected} was expected: the sequence goes back "
                        "(records reordered, or a record inserted)")
            return self._p(location, line, seq, what)
        if prev != self.head:
            return self._p(location, line, seq, "prev does not match the hash of the record "
                           "before it: a record was inserted or replaced")
        if rec.get("instance") != self.instance:
            return self._p(location, line, seq, f"the record belongs to instance "
                           f"{rec.get('instance')!r}, not {self.instance!r}")
        rtype = rec.get("type")
        starts_run = rtype == "segment" and rec.get("reason") == "start"
        if self._run_ended and not starts_run:
            return self._p(location, line, seq, "a record follows the final checkpoint of a "
                           "run: nothing is written after it but the next run's start; it "
                           "was added")
        if rtype == "segment" and not self._expect_header:
            return self._p(location, line, seq, "a segment record in the middle of a "
                           "segment: the gateway writes one only at the start of a new one; "
                           "it was added")
        if starts_run and self._unannounced(seq):
            return self._p(location, line, seq, "a run starts here that the gateway's log "
                           "never announced (no audit.run_started anchor, though the log "
                           "covers it): it was made up, or the log given misses lines")
        if starts_run and not first:
            problem = self._run_boundary(location, line, seq)
            if problem is not None:
                return problem
        if self._expect_header:
            if rtype != "segment":
                return self._p(location, line, seq, "the segment does not start with its "
                               "segment record: its beginning was removed")
            problem = self._check_header(rec, location, line, seq)
            if problem is not None:
                return problem
            self._expect_header = False
        if rtype == "checkpoint":
            problem = self._check_checkpoint(rec, location, line, seq)
            if problem is not None:
                return problem
        else:
            self.summary.sealed = self._run_ended = False
            self.summary.unsealed += 1
        anchored = self.anchors.get(seq)
        if anchored is not None:
            for a in anchored:
                if a.hash != stored:
                    return self._p(location, line, seq, f"the record differs from the one "
                                   f"anchored at seq {seq} ({a.source}): the log was "
                                   "rewritten from here on")
            self.summary.anchors_matched += len(anchored)
        self.seq, self.head = seq, stored
        s = self.summary
        s.records += 1
        s.last_seq = seq
        if s.first_seq is None:
            s.first_seq = seq
        return None

    def _unannounced(self, seq: int) -> bool:
        """Whether, with anchors given, a run starting at `seq` has no start anchor of its
        own though the gateway's log covers it: a real start is logged as soon as it is
        written. Covered: anything after the instance's first anchor, and an instance
        the log never mentions at all (a made-up one). Starts before the first anchor
        are older than the log given (a SIEM keeps what it keeps)."""
        if not self.anchoring:
            return False
        anchors = self.anchors
        if any(a.kind == "start" for a in anchors.get(seq, ())):
            return False
        return not anchors or min(anchors) < seq

    def _run_boundary(self, location: str, line: int, seq: int) -> Problem | None:
        """A new run starts at `seq`: the one before must have ended with its final
        checkpoint. If it did not, its records after its last checkpoint are signed by
        nothing but the new run's checkpoints, which vouch for what the new run found:
        a crash's tail, or a tail cut, rewritten or emptied of checkpoints before the
        restart. The two cannot be told apart here (anchors can)."""
        s = self.summary
        if s.sealed:
            return None
        last = s.last_checkpoint_seq
        unsigned = (f"its {s.unsealed} record(s) after its checkpoint at seq {last} are "
                    "signed by no checkpoint of their own" if last is not None else
                    f"none of its {s.unsealed} record(s) is signed by a checkpoint")
        what = (f"the run before seq {seq} ended at seq {seq - 1} without its final "
                f"checkpoint: {unsigned}. It crashed, or its end was cut or rewritten "
                "before the gateway started again")
        if not self.accept_crashes:
            return self._p(location, line, seq, what + " (--accept-crashes, once anchors "
                           "or the gateway's log rule out a cut)")
        if s.unsealed > self.max_unsigned:
            return self._p(location, line, seq, what + f"; more than --max-unsigned "
                           f"{self.max_unsigned}, more than a crash leaves between two "
                           "checkpoints: checkpoints were removed")
        s.crashed_runs += 1
        s.unsigned += s.unsealed
        self.notes.append(f"{self.instance}: {what}")
        return None

    def _check_header(self, rec: dict[str, Any], location: str, line: int,
                      seq: int) -> Problem | None:
        if self._segment is not None and rec.get("segment") != self._segment:
            return self._p(location, line, seq, f"the file holds segment {rec.get('segment')}, "
                           f"its name says {self._segment}: files were renamed or swapped")
        if rec.get("previous_seq") != seq - 1 or rec.get("previous_hash") != rec.get("prev"):
            return self._p(location, line, seq, "the segment header does not name the head "
                           "before it")
        if (self._previous_location is not None
                and rec.get("previous_segment") != self._previous_location):
            return self._p(location, line, seq, f"the segment follows "
                           f"{rec.get('previous_segment')!r}, not {self._previous_location!r}")
        return None

    def _check_checkpoint(self, rec: dict[str, Any], location: str, line: int,
                          seq: int) -> Problem | None:
        if rec.get("head_seq") != seq - 1 or rec.get("head_hash") != rec.get("prev"):
            return self._p(location, line, seq, "the checkpoint does not name the record "
                           "before it as its head")
        kid = rec.get("key_id")
        if kid is None or rec.get("signature") is None:
            return self._p(location, line, seq, "the checkpoint is not signed (the gateway "
                           "ran without audit.signing_key)")
        if kid != self.key_id:
            return self._p(location, line, seq, f"the checkpoint is signed with key {kid}, "
                           f"not with the given key {self.key_id}: wrong key, or forged")
        if not verify_checkpoint_signature(rec, self.public_key):
            return self._p(location, line, seq, "the checkpoint's signature does not verify: "
                           f"records up to seq {seq - 1} were rewritten, or it was forged")
        s = self.summary
        s.checkpoints += 1
        s.last_checkpoint_seq = seq
        s.sealed = self._run_ended = rec.get("final") is True
        s.unsealed = 0
        self._last_checkpoint_at = (location, line)
        return None

    def unsealed_note(self) -> str:
        """For a live log: the records after the last checkpoint, not signed yet."""
        return (f"{self.instance}: {self.summary.unsealed} record(s) after the last "
                "checkpoint are not signed yet")

    def finish(self, *, live: bool = False) -> Problem | None:
        s = self.summary
        location, line = self.last_at
        beyond = [a for seq, anchored in self.anchors.items() if seq > self.seq
                  for a in anchored]
        if beyond:
            a = max(beyond, key=lambda a: a.seq)
            if s.records == 0:
                return self._p(location or self.instance, line, None, f"no records, but seq "
                               f"{a.seq} is anchored ({a.source}): the instance's files or "
                               "rows were removed")
            return self._p(location, line + 1, self.seq + 1, f"the log ends at seq "
                           f"{self.seq}, but seq {a.seq} is anchored ({a.source}): the "
                           "records after it were removed (a run's segments deleted whole, "
                           "or the log truncated)")
        if s.records == 0:
            return self._p(location or self.instance, line, None, "no records")
        if s.sealed:
            return None
        if live:  # a running gateway leaves at most a checkpoint's worth unsigned
            if s.unsealed <= self.max_unsigned:
                return None
            return self._p(location, line + 1, self.seq + 1, f"the log ends with "
                           f"{s.unsealed} record(s) no checkpoint signs, more than "
                           f"--max-unsigned {self.max_unsigned} (a running gateway signs "
                           "every checkpoint_every records): checkpoints were removed")
        if s.last_checkpoint_seq is None:
            cp = "there is no checkpoint at all"
        else:
            at = self._last_checkpoint_at or ("?", 0)
            cp = f"the last checkpoint is seq {s.last_checkpoint_seq} ({at[0]} line {at[1]})"
        return self._p(location, line + 1, self.seq + 1,
                       f"the log ends at seq {self.seq} without the final checkpoint; {cp}. "
                       "Records after it were removed (truncated), or the gateway is still "
                       "running or did not stop cleanly (--live accepts an unsealed tail)")


def _file_lines(path: Path) -> Iterator[tuple[int, bytes | None, bool]]:
    """(line number, line without its newline or None when longer than any record,
    whether it ended in a newline)."""
    with open(path, "rb") as f:
        n = 0
        while line := f.readline(MAX_LINE + 1):
            n += 1
            if line.endswith(b"\n"):
                yield n, line[:-1], True
            elif len(line) > MAX_LINE:
                yield n, None, False
                return
            else:
                yield n, line, False


def verify_dir(directory: str | os.PathLike[str], public_key: Ed25519PublicKey, *,
               live: bool = False, pruned: bool = False,
               instances: Iterable[str] | None = None,
               anchors: Iterable[Anchor] = (), accept_crashes: bool = False,
               max_unsigned: int = 10_000) -> VerifyReport:
    """Verify every instance's chain in `directory` (or only `instances`; every anchored
    one too), and hold each to its `anchors`."""
    report = VerifyReport()
    anchored = _by_instance(anchors)
    try:
        found = list_segments(directory)
    except OSError as exc:
        report.problem = Problem("-", str(directory), 0, None,
                                 f"cannot read the directory: {exc.strerror}")
        return report
    wanted = sorted(instances) if instances is not None else sorted({*found, *anchored})
    if not wanted:
        report.problem = Problem("-", str(directory), 0, None, "no audit segment files "
                                 "(audit-<instance>-<n>.jsonl)")
        return report
    for instance in wanted:
        v = ChainVerifier(instance, public_key, pruned=pruned, anchors=anchored.get(instance),
                          accept_crashes=accept_crashes, max_unsigned=max_unsigned,
                          anchoring=bool(anchored))
        report.instances.append(v.summary)
        problem = _verify_files(v, found.get(instance, []), live)
        if problem is not None:
            report.problem = problem
            return report
        report.notes += v.notes
        if live and v.summary.unsealed:
            report.notes.append(v.unsealed_note())
    return report


def _verify_files(v: ChainVerifier, segments: list[tuple[int, Path]],
                  live: bool) -> Problem | None:
    if live:
        segments = _with_late_files(segments)
    for idx, (n, path) in enumerate(segments):
        name = path.name
        problem = v.begin_segment(n, name)
        if problem is not None:
            return problem
        empty = True
        try:
            for line_no, raw, complete in _file_lines(path):
                empty = False
                if raw is None:
                    return v._p(name, line_no, v.seq + 1, f"a line longer than any audit "
                                f"record ({MAX_LINE >> 20} MiB): not a record")
                problem = v.feed(name, line_no, raw, complete=complete)
                if problem is not None:
                    return problem
        except OSError as exc:
            return v._p(name, 0, None, f"cannot read: {exc.strerror}")
        if empty and not (live and idx == len(segments) - 1):
            return v._p(name, 1, v.seq + 1, "the segment file is empty")
    return v.finish(live=live)


def _with_late_files(segments: list[tuple[int, Path]]) -> list[tuple[int, Path]]:
    """A running gateway's segments, with those created while the directory was listed:
    a listing that runs during rotations can miss a file and see a later one."""
    out: list[tuple[int, Path]] = []
    for n, path in segments:
        if out:
            first = out[-1][0] + 1
            for k in range(first, min(n, first + 1000)):
                late = path.with_name(segment_name(_instance_of(path), k))
                if late.is_file():
                    out.append((k, late))
        out.append((n, path))
    return out


def _instance_of(path: Path) -> str:
    m = SEGMENT_RE.match(path.name)
    assert m is not None  # (listed by list_segments)
    return m["instance"]


def verify_pg(dsn: str, public_key: Ed25519PublicKey, *, table: str = "pgwarden_audit",
              live: bool = False, pruned: bool = False,
              instances: Iterable[str] | None = None,
              anchors: Iterable[Anchor] = (), accept_crashes: bool = False,
              max_unsigned: int = 10_000) -> VerifyReport:
    """Verify every instance's chain stored in a PostgreSQL table (as verify_dir)."""
    import psycopg

    from .pgsink import iter_pg_columns, pg_instances

    report = VerifyReport()
    anchored = _by_instance(anchors)
    with psycopg.connect(dsn) as conn:
        wanted = sorted(instances) if instances is not None \
            else sorted({*pg_instances(conn, table), *anchored})
        if not wanted:
            report.problem = Problem("-", table, 0, None, "no audit records in the table")
            return report
        for instance in wanted:
            v = ChainVerifier(instance, public_key, pruned=pruned,
                              anchors=anchored.get(instance), accept_crashes=accept_crashes,
                              max_unsigned=max_unsigned, anchoring=bool(anchored))
            report.instances.append(v.summary)
            location = f"{table} instance {instance}"
            problem = None
            row = 0
            for row, (seq, raw, columns) in enumerate(iter_pg_columns(conn, table, instance),
                                                      1):
                if row == 1 or (raw.startswith(b'{"') and b'"type":"segment"' in raw):
                    problem = _pg_segment(v, raw, location, row)
                if problem is None:
                    problem = v.feed(location, row, raw, stored_seq=seq, stored_columns=columns)
                if problem is not None:
                    break
            conn.rollback()
            if problem is None:
                problem = v.finish(live=live)
            if problem is not None:
                report.problem = problem
                return report
            report.notes += v.notes
            if live and v.summary.unsealed:
                report.notes.append(v.unsealed_note())
    return report


def _pg_segment(v: ChainVerifier, raw: bytes, location: str, row: int) -> Problem | None:
    """A table has no files: each segment record opens the next logical segment."""
    try:
        rec = json.loads(raw)
    except (ValueError, RecursionError):
        return None  # feed() reports it
    if not isinstance(rec, dict) or rec.get("type") != "segment":
        if row == 1:
            v._expect_header = True
        return None
    n = rec.get("segment")
    if not isinstance(n, int):
        return None
    problem = v.begin_segment(n, location, row)
    v._previous_location = v._segment_location = None  # tables name no previous file
    return problem
