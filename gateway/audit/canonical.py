"""The canonical byte form of an audit record, its hash, and record timestamps.

Canonical JSON (what is hashed and signed)
------------------------------------------
* UTF-8, no byte order mark; characters are written as themselves (no ``\\uXXXX``
  escapes except the ones JSON requires for control characters, which records never hold:
  see :mod:`gateway.audit.chain`).
* Object keys sorted by code point, no insignificant whitespace (``,`` and ``:`` only).
* Strings escaped as JSON requires (``\\"``, ``\\\\``); integers in plain decimal.
  Fields the gateway defines hold no non-integer numbers (durations are integer
  microseconds). A non-integer number can only come from the archived policy input
  (a JWT claim); it is written in its shortest round-trip form (Python ``repr``).
  NaN and infinities are not JSON and are never written.

The record line
---------------
``line = canonical(record without "hash")`` with its closing ``}`` replaced by
``,"hash":"<64 hex>"}``, then ``\\n``. So ``hash`` is always the last member, and a
verifier in any language recovers the hashed bytes by cutting that fixed-size suffix
(``HASH_SUFFIX_LEN`` bytes plus the newline) and putting the ``}`` back:

    hash = sha256(prev || canonical(record without "hash"))

where ``prev`` is the previous record's hash as 64 lowercase ASCII hex characters
(:data:`GENESIS`, 64 zeros, for a chain's first record).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from json import encoder as _json_encoder
from typing import Any

__all__ = [
    "GENESIS",
    "HASH_SUFFIX_LEN",
    "MAX_LINE",
    "Fragment",
    "FragmentEncoder",
    "canonical_bytes",
    "chain_hash",
    "format_ts",
    "hashed_body",
    "now_ts",
    "parse_line",
    "parse_ts",
]

GENESIS = "0" * 64

_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
    check_circular=False,
)
_encode = _ENCODER.encode

#: No record the gateway writes is longer (a statement's text is at most
#: listen.max_message_size, 64 MiB by default): readers refuse longer lines rather than
#: hold them in memory.
MAX_LINE = 256 * 1024 * 1024

# ,"hash":"<64 hex>"}
HASH_SUFFIX_LEN = len(',"hash":""}') + 64


def canonical_bytes(obj: Any) -> bytes:
    """The canonical JSON of `obj` (plain JSON data). Raises TypeError/ValueError."""
    return _encode(obj).encode("utf-8")


class Fragment:
    """An immutable JSON value with its canonical text computed once.

    Records may hold fragments for values that repeat (a decision, a statement's analysis);
    :class:`FragmentEncoder` splices the text in place, so the output is exactly the
    canonical JSON of the record with ``value`` in that place.
    """

    __slots__ = ("text", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.text = _encode(value)

    def __repr__(self) -> str:
        return f"Fragment({self.text[:40]}...)"


# Placeholders for fragments: JSON strings holding a per-process secret, which no record
# content can contain (a client would have to guess 128 random bits), so replacing them
# in the encoded text never touches anything else.
_NONCE = "\x00pgwarden-fragment-" + secrets.token_hex(16)


class FragmentEncoder:
    """Canonical JSON like :func:`canonical_bytes`, with :class:`Fragment` values spliced.

    The C encoder calls ``default`` for each fragment in output order, so every fragment
    gets the same placeholder and one split puts them back in order. Not thread-safe (one
    per chain, used under the writer's lock).
    """

    def __init__(self) -> None:
        self._frags: list[str] = []
        make = getattr(_json_encoder, "c_make_encoder", None)
        if make is not None:
            c_enc = make(None, self._default,
                         _json_encoder.c_encode_basestring,  # type: ignore[attr-defined]
                         None, ":", ",", True, False, False)
            self._chunks = lambda obj: c_enc(obj, 0)
        else:  # pragma: no cover - CPython always has the C encoder
            py = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                  allow_nan=False, check_circular=False, default=self._default)
            self._chunks = lambda obj: py.iterencode(obj)
        self._quoted = json.dumps(_NONCE)

    def _default(self, obj: Any) -> Any:
        if isinstance(obj, Fragment):
            self._frags.append(obj.text)
            return _NONCE
        raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")

    def encode(self, obj: Any) -> bytes:
        """Raises TypeError/ValueError like canonical_bytes."""
        frags = self._frags
        frags.clear()
        try:
            text = "".join(self._chunks(obj))
            if frags:
                parts = text.split(self._quoted)
                if len(parts) != len(frags) + 1:
                    raise ValueError("fragment placeholders do not match")
                out = [parts[0]]
                for frag, part in zip(frags, parts[1:], strict=True):
                    out.append(frag)
                    out.append(part)
                text = "".join(out)
        finally:
            frags.clear()
        return text.encode("utf-8")


def materialize(value: Any) -> Any:
    """`value` with every Fragment replaced by its value (top two levels)."""
    if isinstance(value, Fragment):
        return value.value
    if isinstance(value, dict):
        return {k: materialize(v) for k, v in value.items()}
    return value


def chain_hash(prev: str, body: bytes) -> str:
    """sha256 (hex) of ``prev`` (64 hex characters) followed by the canonical body."""
    h = hashlib.sha256(prev.encode("ascii"))
    h.update(body)
    return h.hexdigest()


def hashed_body(line: bytes) -> tuple[bytes, str] | None:
    """Split one record line (without its newline) into (hashed body, stored hash).

    None when the line does not end with the ``,"hash":"<64 hex>"}`` member.
    """
    if len(line) <= HASH_SUFFIX_LEN or not line.endswith(b'"}'):
        return None
    suffix = line[-HASH_SUFFIX_LEN:]
    if not suffix.startswith(b',"hash":"'):
        return None
    digest = suffix[9:-2]
    try:
        text = digest.decode("ascii")
    except UnicodeDecodeError:
        return None
    if len(text) != 64 or text.strip("0123456789abcdef"):
        return None
    return line[:-HASH_SUFFIX_LEN] + b"}", text


def parse_line(line: bytes) -> tuple[dict[str, Any], bytes, str] | None:
    """One record line (without its newline) as (record, hashed body, stored hash); None
    when it is not a JSON object ending in its hash member."""
    split = hashed_body(line)
    if split is None:
        return None
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError):  # (a hostile line nested past the parser's depth)
        return None
    if not isinstance(rec, dict):
        return None
    return rec, split[0], split[1]


# -- timestamps ------------------------------------------------------------------------------

_second: tuple[int, str] = (-1, "")  # one tuple, replaced whole: safe across threads


def format_ts(ns: int) -> str:
    """RFC 3339, UTC, microseconds: ``2025-01-15T09:30:00.123456Z`` (from epoch ns)."""
    global _second
    sec, rem = divmod(ns, 1_000_000_000)
    cached = _second
    if cached[0] != sec:
        cached = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
        _second = cached
    return f"{cached[1]}.{rem // 1000:06d}Z"


def now_ts() -> str:
    return format_ts(time.time_ns())


def parse_ts(text: str) -> float:
    """Epoch seconds of an RFC 3339 timestamp (``Z`` or an offset). Raises ValueError."""
    from datetime import datetime

    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {text!r}")
    return value.timestamp()
