"""One instance's hash chain: sequence numbers, links, and the bytes of each record.

:meth:`Chain.seal` turns a record (a dict from :mod:`gateway.audit.records`) into its
line: it adds the envelope (``v``, ``instance``, ``seq``, ``prev``, ``ts`` when the
caller did not set it), makes sure no PAN survives (below), hashes, and advances the head.
The chain is not thread-safe: :class:`~gateway.audit.writer.AuditWriter` seals under its
lock, in the order records are appended.

No PAN in any record, whatever the caller passed
-------------------------------------------------
The canonical bytes of every record go through the safety net's scan (one C-level pass).
Records without a hit are written as they are. Otherwise, and whenever the JSON would
need a ``\\uXXXX`` escape (whose hex digits could hide a digit run from a byte-level
scan) or the text is not valid UTF-8, the record is rebuilt by
:func:`~gateway.audit.redact.scrub_value`: PANs masked in every string, key and number,
control characters replaced. ``scrubbed`` then counts the PANs masked. Exempt are the
top-level values of :data:`EXEMPT`: digests and identifiers the gateway computes itself
(a 64-hex hash holds a Luhn-valid 13-19 digit run about once in 250 hashes; masking it
would break the chain or lose the bundle it names).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, NamedTuple

from gateway import native
from gateway.masking.safety_net import scan

from .canonical import (
    GENESIS,
    FragmentEncoder,
    canonical_bytes,
    chain_hash,
    materialize,
    now_ts,
)
from .checkpoint import Signer
from .template import ENVELOPE_HOLES, RecordTemplate, hole_marker

__all__ = ["EXEMPT", "SCHEMA_VERSION", "Chain", "Sealed"]

SCHEMA_VERSION = 1

# Fill, hash and hash member of a templated record in one C call (gateway/audit/_seal.c);
# None: the Python steps below, which are the reference.
_native = native.load("gateway.audit._seal")
# What the C seal hashes with: OpenSSL's SHA-256 called directly when it found the
# library hashlib uses (None), else hashlib's constructor. The same digest either way.
_SHA256 = None if getattr(_native, "openssl_sha256", False) else hashlib.sha256

#: Top-level fields whose values the gateway generates (digests, ids): never scrubbed.
EXEMPT = frozenset({
    "prev", "session", "fingerprint", "key_id", "signature", "head_hash", "previous_hash",
    "bundle_hash", "previous_bundle_hash",
})


class Sealed(NamedTuple):
    """One record ready for a sink."""

    seq: int
    hash: str
    line: bytes  # canonical record with its hash member, newline-terminated
    ts: str
    type: str
    session: str | None


_new_sealed = tuple.__new__


def _exempt_spans(raw: bytes, body: Mapping[str, Any]) -> list[tuple[int, int]]:
    spans = []
    for key in EXEMPT:
        value = body.get(key)
        if isinstance(value, str):
            needle = b'"' + key.encode() + b'":"' + value.encode("utf-8", "replace") + b'"'
            at = raw.find(needle)
            if at >= 0:
                spans.append((at, at + len(needle)))
    return spans


def _only_exempt(hits: list[tuple[int, int]], raw: bytes, body: Mapping[str, Any]) -> bool:
    spans = _exempt_spans(raw, body)
    return all(any(s <= hs and he <= e for s, e in spans) for hs, he in hits)


def _clean_record(body: dict[str, Any]) -> dict[str, Any]:
    from .redact import scrub_value

    body = materialize(body)
    exempt = {k: v for k, v in body.items() if k in EXEMPT and isinstance(v, str)}
    rest, hits = scrub_value({k: v for k, v in body.items() if k not in exempt})
    rest.update(exempt)
    if hits:
        rest["scrubbed"] = int(body.get("scrubbed") or 0) + hits
    return rest


def record_bytes(body: dict[str, Any], encoder: FragmentEncoder | None = None
                 ) -> tuple[dict[str, Any], bytes]:
    """(the record as written, its canonical bytes): PANs masked, see the module doc."""
    try:
        raw = encoder.encode(body) if encoder is not None else canonical_bytes(body)
    except (TypeError, ValueError):  # not plain JSON (a set, NaN, lone surrogate, ...)
        raw = None
    # A JSON escape \uXXXX adds hex digits the scan would read as part of a run.
    if raw is not None and (b"\\" not in raw or b"\\u" not in raw):
        hits = scan(raw)
        if not hits or _only_exempt(hits, raw, body):
            return body, raw
    body = _clean_record(body)
    return body, canonical_bytes(body)


def seal_filled(prev: str, raw: bytes) -> tuple[bytes, str]:
    """(line, digest) of canonical bytes `raw` chained onto `prev`: the hash member
    appended, newline-terminated."""
    digest = chain_hash(prev, raw)
    return b"".join((raw[:-1], b',"hash":"', digest.encode("ascii"), b'"}\n')), digest


class Chain:
    """The head of one instance's chain (``seq`` 0 and :data:`GENESIS` when empty)."""

    __slots__ = ("_encoder", "head", "instance", "seq")

    def __init__(self, instance: str, seq: int = 0, head: str = GENESIS) -> None:
        self.instance = instance
        self.seq = seq
        self.head = head
        self._encoder = FragmentEncoder()

    def seal(self, record: Mapping[str, Any], *, signer: Signer | None = None,
             sign: bool = False) -> Sealed:
        """The next record's line. With ``sign``, a checkpoint: ``key_id`` and
        ``signature`` are added (both null without a signer)."""
        seq = self.seq + 1
        body = self._envelope(record)
        body["seq"] = seq
        body["prev"] = self.head
        if "ts" not in body:
            body["ts"] = now_ts()
        if sign:
            body.pop("signature", None)
            body["key_id"] = signer.key_id if signer is not None else None
            body, raw = record_bytes(body, self._encoder)
            body["signature"] = signer.sign(raw) if signer is not None else None
            raw = canonical_bytes(body)
        else:
            body, raw = record_bytes(body, self._encoder)
        line, digest = seal_filled(self.head, raw)
        self.seq = seq
        self.head = digest
        session = body.get("session")
        return Sealed(seq, digest, line, body["ts"], str(body.get("type", "")),
                      session if isinstance(session, str) else None)

    def _envelope(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of `record` with this chain's fixed envelope fields (not its hash)."""
        body = dict(record)
        body.pop("hash", None)
        body["v"] = SCHEMA_VERSION
        body["instance"] = self.instance
        return body

    def template(self, record: Mapping[str, Any], holes: tuple[str, ...] = ()
                 ) -> RecordTemplate | None:
        """`record`'s shape with the envelope and the `holes` fields left open, or None
        when it cannot be one (its text has a PAN shape or needs a ``\\u`` escape, or is
        not plain JSON): such records go through :meth:`seal` every time."""
        body = self._envelope(record)
        names = (*ENVELOPE_HOLES, *holes)
        markers = {name: hole_marker(i) for i, name in enumerate(names)}
        body.update(markers)
        try:
            raw = self._encoder.encode(body)
        except (TypeError, ValueError):
            return None
        if b"\\u" in raw:  # hex digits a byte-level scan could misread
            return None
        hits = scan(raw)
        if hits and not _only_exempt(hits, raw, body):
            return None
        text = raw.decode("utf-8")
        spots = []
        for name, marker in markers.items():
            quoted = '"' + marker + '"'
            at = text.find(quoted)
            if at < 0 or text.find(quoted, at + 1) >= 0:
                return None
            spots.append((at, len(quoted), name))
        spots.sort()
        chunks, pos = [], 0
        for at, size, _ in spots:
            chunks.append(text[pos:at])
            pos = at + size
        chunks.append(text[pos:])
        session = record.get("session")
        return RecordTemplate(tuple(chunks), tuple(name for _, _, name in spots), tuple(holes),
                              instance=self.instance, type=str(record.get("type", "")),
                              session=session if isinstance(session, str) else None)

    def seal_template(self, template: RecordTemplate, values: tuple[Any, ...] = (),
                      *, ts: str | None = None) -> Sealed:
        """The next record's line from `template` (see :mod:`gateway.audit.template`).
        Raises TemplateMismatch, with the chain unchanged, when a value does not fit."""
        if template.instance != self.instance:
            raise ValueError("a template of another chain instance")
        seq = self.seq + 1
        sealed = _native.seal(template.chunks, template.picks, seq, self.head, ts, values,
                              _SHA256) if _native is not None else None  # ts None: now
        if sealed is not None:
            line, digest, ts = sealed
        else:  # no C module, or a value it leaves to fill() (which raises TemplateMismatch)
            ts = ts or now_ts()
            line, digest = seal_filled(self.head, template.fill(seq, self.head, ts, values))
        self.seq = seq
        self.head = digest
        # twice per statement: tuple.__new__ skips the NamedTuple's Python constructor
        return _new_sealed(Sealed, (seq, digest, line, ts, template.type, template.session))
