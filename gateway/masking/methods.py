"""The mask methods of DESIGN §4, applied to one column value.

A value arrives as the bytes of one DataRow field in PostgreSQL *text* format (UTF-8, or
another ASCII-compatible client encoding: the gateway refuses the others), or ``None``
for SQL NULL. The result is the bytes to send instead, or ``None`` for SQL NULL.

Rules (fixed; auditors and tests depend on them):

``pan_last4``
    The value's ASCII digits are collected; every other byte (separators, letters, any
    non-ASCII character, whatever surrounds the number) is dropped and never echoed. If
    there are 13 to 19 digits (a PAN-shaped value) the result is twelve ``*`` followed by
    the last four digits, e.g. ``************1111`` — always 16 bytes, whatever the PAN's
    length or formatting, so the output reveals neither and cannot be mistaken for a PAN
    (it holds four digits). Any other digit count (a value that is not PAN-shaped: too
    short, too long, a PAN with extra numbers around it, an array) yields sixteen ``*``:
    no digit at all.
``pan_first6_last4``
    Same collection; 13-19 digits give the first six (BIN/IIN) digits, six ``*`` and the
    last four, e.g. ``411111******1111`` (16 bytes) — the most PCI DSS 3.4.1 allows to be
    displayed. Other digit counts give sixteen ``*``.
``redact``
    The fixed marker ``[REDACTED]``.
``null``
    SQL NULL (``None``).
``hash``
    ``tok_`` + the first 24 hex digits (96 bits) of HMAC-SHA256(key, exact value bytes),
    written as two halves of 12 joined by ``_``: ``tok_fb394b048e4f_6fce43215ed4``.
    Equal values give equal tokens under one key, so joins and GROUP BY on the masked
    column keep working; without the key a token cannot be tested against candidate
    PANs. The split keeps the token clear of the content safety net: 24 hex digits hold
    13 or more decimal digits in a row often enough (about one token in a thousand would
    then look like a Luhn-valid PAN and be altered on the way out); 12 never can. The
    bytes are hashed as sent, so ``4111 1111 1111 1111`` and ``4111111111111111`` give
    different tokens. The key must be at least 16 bytes
    (`WeakMaskKey` otherwise): a short or empty key would make the token a plain hash of
    a PAN, which can be brute-forced from its BIN and last four in seconds.

SQL NULL stays NULL under every method (a NULL holds no cardholder data). An unknown
method raises `UnknownMaskMethod` — checked before the value is looked at, NULL or not —
and the gateway denies the statement.

Every output is pure ASCII, valid in every client encoding the gateway accepts, and never
holds more than 12 digits in a row (``pan_*``: at most 6), so the content safety net
never flags it again.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

__all__ = [
    "BINARY_SAFE_TYPE_OIDS",
    "METHODS",
    "MIN_KEY_BYTES",
    "REDACTED",
    "MaskError",
    "Masker",
    "UnknownMaskMethod",
    "WeakMaskKey",
    "apply",
    "binary_safe",
    "hash_token",
    "pan_first6_last4",
    "pan_last4",
    "redact",
    "resolve",
]

Masker = Callable[[bytes | None], bytes | None]

METHODS = frozenset({"pan_last4", "pan_first6_last4", "redact", "null", "hash"})

REDACTED = b"[REDACTED]"
MIN_KEY_BYTES = 16
TOKEN_PREFIX = b"tok_"
TOKEN_HEX_CHARS = 24

_PAN_MIN, _PAN_MAX = 13, 19
_FULLY_MASKED = b"*" * 16
_LAST4_PAD = b"*" * 12
_MIDDLE = b"*" * 6
# Deleting these from a value leaves exactly its ASCII digits (C speed, no regex).
_NON_DIGITS = bytes(b for b in range(256) if not 0x30 <= b <= 0x39)

# Types whose binary send format is the same bytes as their text output (textsend /
# namesend / unknownsend), so a binary DataRow field can be masked like a text one.
BINARY_SAFE_TYPE_OIDS = frozenset({
    25,    # text
    1043,  # varchar
    1042,  # bpchar
    19,    # name
    705,   # unknown
})


class MaskError(Exception):
    """A mask cannot be applied; the gateway must refuse the statement (fail closed)."""


class UnknownMaskMethod(MaskError):
    def __init__(self, method: object) -> None:
        super().__init__(f"unknown mask method {method!r} (known: {', '.join(sorted(METHODS))})")
        self.method = method


class WeakMaskKey(MaskError):
    pass


def _digits(value: bytes) -> bytes:
    return bytes(value).translate(None, _NON_DIGITS)


def pan_last4(value: bytes) -> bytes:
    d = _digits(value)
    if _PAN_MIN <= len(d) <= _PAN_MAX:
        return _LAST4_PAD + d[-4:]
    return _FULLY_MASKED


def pan_first6_last4(value: bytes) -> bytes:
    d = _digits(value)
    if _PAN_MIN <= len(d) <= _PAN_MAX:
        return d[:6] + _MIDDLE + d[-4:]
    return _FULLY_MASKED


def redact(value: bytes) -> bytes:
    return REDACTED


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes | bytearray):
        raise WeakMaskKey(f"the hash mask key must be bytes (got {type(key).__name__})")
    if len(key) < MIN_KEY_BYTES:
        raise WeakMaskKey(f"the hash mask key must be at least {MIN_KEY_BYTES} bytes "
                          f"(got {len(key)})")
    return bytes(key)


def _token(digest_hex: str) -> bytes:
    return TOKEN_PREFIX + (digest_hex[:12] + "_" + digest_hex[12:TOKEN_HEX_CHARS]).encode()


def hash_token(value: bytes, key: bytes) -> bytes:
    """``tok_`` + 24 hex digits of HMAC-SHA256(key, value), as 12 + ``_`` + 12."""
    return _token(hmac.new(_check_key(key), value, hashlib.sha256).hexdigest())


def _null_preserving(fn: Callable[[bytes], bytes]) -> Masker:
    def masker(value: bytes | None) -> bytes | None:
        return None if value is None else fn(value)

    masker.__name__ = fn.__name__
    return masker


def _always_null(value: bytes | None) -> None:
    return None


def resolve(method: str, *, key: bytes) -> Masker:
    """The masker for `method`, to call once per value (hot path: resolve once per result).

    Raises `UnknownMaskMethod` for a method outside `METHODS`, and `WeakMaskKey` for
    ``hash`` with a key shorter than `MIN_KEY_BYTES`.
    """
    # The pan_* maskers run once per masked value of a result: one call each, no helpers.
    if method == "pan_last4":
        def last4(value: bytes | None) -> bytes | None:
            if value is None:
                return None
            d = value if value.isdigit() else value.translate(None, _NON_DIGITS)
            return _LAST4_PAD + d[-4:] if _PAN_MIN <= len(d) <= _PAN_MAX else _FULLY_MASKED

        return last4
    if method == "pan_first6_last4":
        def first6_last4(value: bytes | None) -> bytes | None:
            if value is None:
                return None
            d = value if value.isdigit() else value.translate(None, _NON_DIGITS)
            if _PAN_MIN <= len(d) <= _PAN_MAX:
                return d[:6] + _MIDDLE + d[-4:]
            return _FULLY_MASKED

        return first6_last4
    if method == "redact":
        return _null_preserving(redact)
    if method == "null":
        return _always_null
    if method == "hash":
        k = _check_key(key)
        new = hmac.new
        sha256 = hashlib.sha256

        def hash_masker(value: bytes | None) -> bytes | None:
            if value is None:
                return None
            return _token(new(k, value, sha256).hexdigest())

        return hash_masker
    raise UnknownMaskMethod(method)


def apply(method: str, value: bytes | None, *, key: bytes) -> bytes | None:
    """Masks one text-format column value (``None`` = SQL NULL) with `method`."""
    return resolve(method, key=key)(value)


def binary_safe(type_oid: int) -> bool:
    """True when a binary-format field of this type is the same bytes as its text form.

    Only then may the gateway mask a binary DataRow field (and send the masked text
    bytes as that field); for any other type it must refuse the statement rather than
    emit invalid binary data.
    """
    return type_oid in BINARY_SAFE_TYPE_OIDS
