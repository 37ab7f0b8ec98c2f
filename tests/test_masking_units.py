"""Mask methods and the content safety net (gateway.masking): pure functions, no server."""

from __future__ import annotations

import hashlib
import hmac
import random
import re
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.masking import (
    METHODS,
    StreamScanner,
    UnknownMaskMethod,
    WeakMaskKey,
    apply,
    binary_safe,
    luhn_valid,
    mask_in_place,
    resolve,
    scan,
)
from gateway.masking.safety_net import HOLD_BACK
from gateway.policy.decision import MASK_METHODS

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEY = b"k" * 32
OTHER_KEY = b"o" * 32

# Visa, Mastercard, Amex, Discover test PANs (all Luhn-valid).
TEST_PANS = [b"4111111111111111", b"5555555555554444", b"378282246310005", b"6011111111111117"]
# The same PANs as printed on cards.
GROUPED = {
    b"4111111111111111": [b"4111 1111 1111 1111", b"4111-1111-1111-1111"],
    b"5555555555554444": [b"5555 5555 5555 4444", b"5555-5555-5555-4444"],
    b"378282246310005": [b"3782 822463 10005", b"3782-822463-10005"],
    b"6011111111111117": [b"6011 1111 1111 1117", b"6011-1111-1111-1117"],
}
DINERS = b"30569309025904"  # 4-6-4
VISA13 = b"4222222222222"
NOT_LUHN = b"4111111111111112"


def digits(b: bytes) -> bytes:
    return bytes(c for c in b if 0x30 <= c <= 0x39)


def test_test_vectors_are_what_they_claim() -> None:
    for pan in [*TEST_PANS, DINERS, VISA13]:
        assert luhn_valid(pan), pan
    assert not luhn_valid(NOT_LUHN)
    assert not luhn_valid(b"")
    assert not luhn_valid(b"4111 1111 1111 1111")  # digits only
    assert luhn_valid(b"0") and luhn_valid(b"18") and not luhn_valid(b"19")


# ---------------------------------------------------------------------------------------------
# Mask methods
# ---------------------------------------------------------------------------------------------


def test_methods_match_the_decision_contract() -> None:
    assert METHODS == MASK_METHODS


def pan_forms(pan: bytes) -> list[bytes]:
    return [pan, *GROUPED[pan], b" " + pan + b"\n", b"card: " + pan]


@pytest.mark.parametrize("pan", TEST_PANS)
def test_pan_last4_keeps_only_the_last_four(pan: bytes) -> None:
    for value in pan_forms(pan):
        out = apply("pan_last4", value, key=KEY)
        assert out == b"*" * 12 + pan[-4:]
        assert len(out) == 16
        assert digits(out) == pan[-4:]
        assert scan(out) == []


@pytest.mark.parametrize("pan", TEST_PANS)
def test_pan_first6_last4_keeps_bin_and_last_four(pan: bytes) -> None:
    for value in pan_forms(pan):
        out = apply("pan_first6_last4", value, key=KEY)
        assert out == pan[:6] + b"******" + pan[-4:]
        assert len(out) == 16
        assert digits(out) == pan[:6] + pan[-4:]
        assert scan(out) == []


@pytest.mark.parametrize("method", ["pan_last4", "pan_first6_last4"])
@pytest.mark.parametrize("value", [
    b"", b"12345", b"411111111111",                          # too short: 12 digits
    b"4111111111111111 exp 12/25",                            # 20 digits: not PAN-shaped
    b"{4111111111111111,5555555555554444}",                   # an array
    b"41111111111111111111",                                  # 20 digits
    ("\u0664" + "\u0661" * 15).encode(),                      # Arabic-Indic digits
    ("\uff14" + "\uff11" * 15).encode(),                 # fullwidth digits
    b"no digits at all",
])
def test_pan_methods_give_no_digit_for_values_that_are_not_pan_shaped(method: str,
                                                                     value: bytes) -> None:
    assert apply(method, value, key=KEY) == b"*" * 16


def test_pan_methods_never_echo_non_digit_bytes() -> None:
    value = "<script>Ünïcødé 4111-1111-1111-1111 ' OR 1=1".encode()
    assert apply("pan_last4", value, key=KEY) == b"************1111"  # 18 digits: 13..19
    assert apply("pan_last4", value + b"00", key=KEY) == b"****************"  # 20 digits
    value = "Ünïcødé 4111-1111-1111-1111 <x>".encode()
    assert apply("pan_last4", value, key=KEY) == b"************1111"
    assert apply("pan_first6_last4", value, key=KEY) == b"411111******1111"


def test_thirteen_and_nineteen_digit_pans() -> None:
    assert apply("pan_last4", VISA13, key=KEY) == b"************2222"
    assert apply("pan_first6_last4", VISA13, key=KEY) == b"422222******2222"
    nineteen = b"6011111111111111110"
    assert luhn_valid(nineteen)
    assert apply("pan_first6_last4", nineteen, key=KEY) == b"601111******1110"


def test_redact_and_null() -> None:
    for pan in TEST_PANS:
        assert apply("redact", pan, key=KEY) == b"[REDACTED]"
        assert apply("null", pan, key=KEY) is None
    assert apply("redact", b"", key=KEY) == b"[REDACTED]"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_sql_null_stays_null(method: str) -> None:
    assert apply(method, None, key=KEY) is None


@pytest.mark.parametrize("pan", TEST_PANS)
def test_hash_is_a_stable_keyed_token(pan: bytes) -> None:
    token = apply("hash", pan, key=KEY)
    assert token is not None
    assert re.fullmatch(rb"tok_[0-9a-f]{12}_[0-9a-f]{12}", token)
    assert apply("hash", pan, key=KEY) == token  # stable: joins keep working
    assert resolve("hash", key=KEY)(pan) == token
    assert apply("hash", pan, key=OTHER_KEY) != token  # keyed
    expected = hmac.new(KEY, pan, hashlib.sha256).hexdigest()
    assert token == b"tok_" + expected[:12].encode() + b"_" + expected[12:24].encode()
    assert pan not in token
    assert scan(token) == []


def test_hash_distinguishes_values_and_hashes_exact_bytes() -> None:
    tokens = {apply("hash", pan, key=KEY) for pan in TEST_PANS}
    assert len(tokens) == len(TEST_PANS)
    assert apply("hash", b"4111 1111 1111 1111", key=KEY) != apply(
        "hash", b"4111111111111111", key=KEY)


def test_hash_tokens_never_look_like_a_pan() -> None:
    # Unsplit, about one 24-hex-digit token in a thousand holds a Luhn-valid 13+ digit run.
    hasher = resolve("hash", key=KEY)
    tokens = b" ".join(hasher(str(i).encode()) or b"" for i in range(20000))
    assert re.search(rb"[0-9]{13}", tokens) is None
    assert mask_in_place(tokens) == (tokens, 0)


@pytest.mark.parametrize("key", [b"", b"short", b"x" * 15])
def test_hash_refuses_a_weak_key(key: bytes) -> None:
    with pytest.raises(WeakMaskKey):
        apply("hash", b"4111111111111111", key=key)
    with pytest.raises(WeakMaskKey):
        resolve("hash", key=key)
    # The key only matters to hash.
    assert apply("redact", b"4111111111111111", key=key) == b"[REDACTED]"


@pytest.mark.parametrize("method", ["", "PAN_LAST4", "pan_last_4", "partial", "hash ", "none"])
def test_unknown_method_raises(method: str) -> None:
    with pytest.raises(UnknownMaskMethod) as err:
        apply(method, b"4111111111111111", key=KEY)
    assert err.value.method == method
    with pytest.raises(UnknownMaskMethod):
        apply(method, None, key=KEY)  # checked before the value, even for NULL
    with pytest.raises(UnknownMaskMethod):
        resolve(method, key=KEY)


def test_binary_safe_only_for_text_like_types() -> None:
    for oid in (25, 1043, 1042, 19, 705):
        assert binary_safe(oid)
    for oid in (0, 16, 17, 18, 20, 21, 23, 114, 142, 700, 701, 1700, 2950, 3802, 1009):
        assert not binary_safe(oid)  # bool, bytea, "char", ints, json, xml, ..., text[]


# ---------------------------------------------------------------------------------------------
# Safety net: what is found
# ---------------------------------------------------------------------------------------------


def masked_ok(original: bytes, out: bytes) -> None:
    """Same length; only digits changed, and only into '*'."""
    assert len(out) == len(original)
    for a, b in zip(original, out, strict=True):
        assert a == b or (0x30 <= a <= 0x39 and b == 0x2A)


@pytest.mark.parametrize("pan", TEST_PANS)
def test_finds_plain_spaced_and_dashed(pan: bytes) -> None:
    for form in [pan, *GROUPED[pan]]:
        buf = b"x=" + form + b";"
        assert scan(buf) == [(2, 2 + len(form))]
        out, n = mask_in_place(buf)
        assert n == 1
        masked_ok(buf, out)
        # The run starts the PAN: its first three digits (framing guard) and last four stay.
        assert digits(out) == pan[:3] + pan[-4:]


def test_exact_masking_rule() -> None:
    assert mask_in_place(b"x4111111111111111y") == (b"x411*********1111y", 1)
    assert mask_in_place(b"4111 1111 1111 1111") == (b"411* **** **** 1111", 1)
    assert mask_in_place(b"3782-822463-10005") == (b"378*-******-*0005", 1)
    # A hit after other groups of its run keeps only its last four digits.
    assert mask_in_place(b"2024-01-15 4111 1111 1111 1111") == (
        b"2024-01-15 **** **** **** 1111", 1)
    assert mask_in_place(b"id 12 4111111111111111") == (b"id 12 4***********1111", 1)


def test_other_groupings() -> None:
    assert scan(b"3056 930902 5904") == [(0, 16)]  # Diners 4-6-4
    assert scan(b"4222 2222 22222") == [(0, 15)]  # Visa 13 as 4-4-5
    assert scan(b"4222-2222-2222-2") == [(0, 16)]  # 4-4-4-1
    assert scan(b"4111 1111-1111 1111") == [(0, 19)]  # mixed separators
    assert luhn_valid(b"6011111111111111110")
    assert scan(b"6011 1111 1111 1111 110") == [(0, 23)]  # 19 digits, 4-4-4-4-3
    # Not a common grouping: 8-8 and 2-digit groups are not joined into a PAN.
    assert scan(b"41111111 11111111") == []
    assert scan(b"41 11 11 11 11 11 11 11") == []
    # Two separators in a row end the run.
    assert scan(b"4111  1111  1111  1111") == []
    assert scan(b"4111 -1111 -1111 -1111") == []
    assert scan(b"4111.1111.1111.1111") == []  # only space and dash separate groups


def test_finds_pans_inside_json_xml_and_text() -> None:
    for pan in TEST_PANS:
        for buf in [
            b'{"pan":"' + pan + b'","n":1}',
            b'{"pan":' + pan + b"}",
            b"<card><pan>" + pan + b"</pan></card>",
            b"Key (pan)=(" + pan + b") already exists.",
            b"ref" + pan + b"x",
            b'[{"a":"' + GROUPED[pan][0] + b'"}]',
        ]:
            spans = scan(buf)
            assert len(spans) == 1, buf
            out, n = mask_in_place(buf)
            assert n == 1
            masked_ok(buf, out)
            assert pan[3:-4] not in digits(out)


def test_at_buffer_start_and_end() -> None:
    for pan in TEST_PANS:
        assert scan(pan + b"|rest") == [(0, len(pan))]
        assert scan(b"rest|" + pan) == [(5, 5 + len(pan))]
        assert scan(pan) == [(0, len(pan))]
        assert scan(pan + b"," + pan) == [(0, len(pan)), (len(pan) + 1, 2 * len(pan) + 1)]
        assert mask_in_place(pan + b"," + pan)[1] == 2


def test_ignores_non_luhn_and_short_numbers() -> None:
    assert scan(NOT_LUHN) == []
    assert scan(b"4111 1111 1111 1112") == []
    assert luhn_valid(b"411111111117")
    assert scan(b"x411111111117x") == []  # 12 digits
    assert scan(b"4111 1111 1117") == []
    buf = b"2024-01-15 12:30:00.123456+00 | 555-123-4567 | 1234567890 | 12.50"
    assert mask_in_place(buf) == (buf, 0)


def test_leading_zeros_rule() -> None:
    # Luhn-valid but not PANs: fewer than 13 digits once leading zeros are dropped.
    assert luhn_valid(b"0000000000000000")
    assert scan(b"0000000000000000") == []
    assert scan(b"0000 0000 0000 0000") == []
    # A PAN behind zeros (within 19 digits) is still found: Luhn ignores leading zeros.
    assert scan(b"x04111111111111111x") == [(1, 18)]
    assert scan(b"x0004111111111111111x") == [(1, 20)]


def test_long_digit_runs_are_not_split() -> None:
    """The documented rule: a 13-19 digit window inside a longer digit group is no hit."""
    for buf in [
        b"9" + b"4111111111111111",                    # 17 digits, not Luhn-valid as a whole
        b"4111111111111111" + b"0123",                 # 20 digits
        b"12345678904111111111111111",                 # 26 digits
        b"00004111111111111111",                       # 20 digits: longer than any PAN
        b"1" * 40,
    ]:
        assert not (13 <= len(buf) <= 19 and luhn_valid(buf))
        assert scan(buf) == [], buf
        assert scan(b"ref" + buf + b"x") == []
    # Separated from the long number, the PAN is found again.
    assert scan(b"1234567890123456789012 4111111111111111") == [(23, 39)]
    assert scan(b"1234567890-4111111111111111") == [(11, 27)]


def test_stars_belong_to_runs_but_never_to_a_candidate() -> None:
    # A contiguous PAN is a digit segment: a star next to it is just a boundary.
    assert scan(b"*4111111111111111*") == [(1, 17)]
    assert scan(b"**** 4111111111111111") == [(5, 21)]
    # A group holding a star is not a group of a grouping (documented blind spot).
    assert scan(b"*4111 1111 1111 1111") == []
    assert scan(b"4111 1111 1111 1111*") == []
    # Glued to other digits, the first group is not a 4-digit group (documented too).
    assert scan(b"14111 1111 1111 1111") == []


def test_masking_is_idempotent_where_a_kept_tail_meets_more_groups() -> None:
    # The kept last four of the 15-digit hit ("6011") followed by "1111 1111 1111 110"
    # would read as a Luhn-valid 4-4-4-4-3 PAN if a star ended the group.
    buf = b"941110000116011 1111 1111 1111 110"
    assert luhn_valid(b"941110000116011") and luhn_valid(b"6011111111111111110")
    out, n = mask_in_place(buf)
    assert (out, n) == (b"941********6011 1111 1111 1111 110", 1)
    assert scan(out) == []


def test_does_not_reflag_masked_output() -> None:
    for masked in [b"************1111", b"411111******1111", b"**** **** **** 1111",
                   b"411*********1111", b"378*-******-*0005", b"****************",
                   b"[REDACTED]"]:
        assert scan(masked) == []
    for pan in TEST_PANS:
        for form in [pan, *GROUPED[pan]]:
            once, n = mask_in_place(b"a " + form + b" b")
            assert n == 1
            assert mask_in_place(once) == (once, 0)
            for method in ("pan_last4", "pan_first6_last4", "hash", "redact"):
                out = apply(method, form, key=KEY)
                assert out is not None and scan(out) == []


def test_nothing_to_mask_returns_the_same_object() -> None:
    buf = b"D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x01x" * 100
    out, n = mask_in_place(buf)
    assert out is buf and n == 0


# ---------------------------------------------------------------------------------------------
# Safety net on real PostgreSQL framing
# ---------------------------------------------------------------------------------------------


def datarow(*fields: bytes | None) -> bytes:
    body = struct.pack("!h", len(fields))
    for f in fields:
        body += struct.pack("!i", -1) if f is None else struct.pack("!i", len(f)) + f
    return b"D" + struct.pack("!i", len(body) + 4) + body


def message(mtype: bytes, body: bytes) -> bytes:
    return mtype + struct.pack("!i", len(body) + 4) + body


def parse(buf: bytes) -> list[tuple[bytes, object]]:
    """Messages of `buf`; DataRows as their field list (framing must stay intact)."""
    out: list[tuple[bytes, object]] = []
    pos = 0
    while pos < len(buf):
        mtype = buf[pos:pos + 1]
        (length,) = struct.unpack_from("!i", buf, pos + 1)
        body = buf[pos + 5:pos + 1 + length]
        assert len(body) == length - 4
        if mtype == b"D":
            (n,) = struct.unpack_from("!h", body, 0)
            p, fields = 2, []
            for _ in range(n):
                (flen,) = struct.unpack_from("!i", body, p)
                p += 4
                if flen < 0:
                    fields.append(None)
                else:
                    fields.append(body[p:p + flen])
                    p += flen
            assert p == len(body)
            out.append((mtype, fields))
        else:
            out.append((mtype, body))
        pos += 1 + length
    return out


def test_framing_guard_never_touches_a_length_byte() -> None:
    # A field of length 0x31 is preceded by the byte "1": the run starts inside the length.
    value = b"411111111111114" + b"." * (0x31 - 15)  # 15 digits, then text
    assert len(value) == 0x31
    assert luhn_valid(b"1" + b"411111111111114")  # the run as seen is a Luhn-valid 16 digits
    buf = datarow(b"abc", value, None) + datarow(b"1")
    assert buf.count(b"1411111111111114") == 1
    out, n = mask_in_place(buf)
    assert n == 1
    masked_ok(buf, out)
    rows = parse(out)
    assert [len(f) if f is not None else None for f in rows[0][1]] == [3, 0x31, None]
    assert rows[1] == (b"D", [b"1"])

    # Two length bytes that are digits: 0x3131 = 12593.
    value = b"4111111111111" + b"x" * (0x3131 - 13)
    buf = datarow(value)
    out, n = mask_in_place(buf)
    masked_ok(buf, out)
    assert [len(f) for f in parse(out)[0][1]] == [0x3131]  # type: ignore[union-attr]


def test_framing_guard_over_many_lengths() -> None:
    """Whatever the field length, masking keeps every message and field length."""
    pan = b"4111111111111111"
    for length in [*range(16, 600), 0x3030, 0x3939, 0x3130]:
        value = pan + b"z" * (length - len(pan))
        buf = datarow(b"7", value) + datarow(value[::-1])
        out, n = mask_in_place(buf)
        masked_ok(buf, out)
        rows = parse(out)
        assert [len(f) for f in rows[0][1]] == [1, length]  # type: ignore[union-attr]
        assert [len(f) for f in rows[1][1]] == [length]  # type: ignore[union-attr]
        framing = length.to_bytes(4, "big")
        glued = 0x30 <= framing[3] <= 0x39  # the run starts with the length's low byte
        if not glued:
            assert n == 1 and rows[0][1][1][3:12] == b"*" * 9  # type: ignore[index]
        elif framing[:3] == b"\0\0\0" or (
                0x30 <= framing[2] <= 0x39 and framing[:2] == b"\0\0"):
            # read without the length digits: the PAN is found, the length bytes kept
            field = rows[0][1][1]
            assert n == 1 and pan not in out
            assert field[:1] == pan[:1] and b"*" * 9 in field  # type: ignore[index,operator]


def test_a_pan_glued_to_a_length_digit_is_found_whatever_the_chunking() -> None:
    """A 49-byte free-text field starting with a PAN is framed 00 00 00 31: the run reads
    1 + PAN, 17 digits. Read without the length digit, it is masked; the length stays."""
    pan = b"4111111111111111"
    for length in (49, 57, 0x3031):
        value = pan + b" exp 12/27 cvv 123 " + b"x" * (length - 35)
        buf = datarow(b"7", value) + datarow(b"8", None)
        whole, n = mask_in_place(buf)
        assert n == 1 and pan not in whole
        masked_ok(buf, whole)
        assert [len(f) for f in parse(whole)[0][1]] == [1, length]  # type: ignore[union-attr]
        for cut in range(1, 40):
            for size in (1, 5, 17):
                sc = StreamScanner()
                out = sc.feed(buf[:cut]) + sc.feed(buf[cut:cut + size])
                out += sc.feed(buf[cut + size:]) + sc.flush()
                assert out == whole, (length, cut, size)


def test_long_numbers_after_short_lengths_are_not_split() -> None:
    """The split is for zero bytes only: a 17-19 digit id in a field of its own (framed by
    a length like 00 00 00 13) is read whole, as before: no more hits than Luhn alone."""
    rng = random.Random(7)
    for _ in range(500):
        number = str(rng.randrange(10**16, 10**19)).encode()
        _, n = mask_in_place(datarow(number, b"abc"))
        assert n == (1 if luhn_valid(number) else 0)


def test_whole_buffer_of_many_messages() -> None:
    pan = b"5555555555554444"
    buf = b"".join([
        message(b"T", b"\x00\x01pan\x00" + b"\x00" * 18),
        datarow(b"1", pan, b"2024-01-01"),
        datarow(b"2", b"5555 5555 5555 4444", None),
        datarow(b"3", b'{"card": "' + pan + b'"}', b"ok"),
        message(b"E", b"SERROR\x00C23505\x00Mduplicate key\x00DKey (pan)=(" + pan
                + b") already exists.\x00\x00"),
        message(b"A", struct.pack("!i", 1234) + b"chan\x00" + pan + b"\x00"),
        message(b"S", b"application_name\x00" + pan + b"\x00"),
        message(b"C", b"SELECT 3\x00"),
        message(b"Z", b"I"),
    ])
    out, n = mask_in_place(buf)
    assert n == 6
    masked_ok(buf, out)
    assert pan[3:-4] not in out and b"5555 5555 5555" not in out
    before, after = parse(buf), parse(out)
    assert [m[0] for m in before] == [m[0] for m in after]
    for (_, a), (_, b) in zip(before, after, strict=True):
        if isinstance(a, list):
            assert isinstance(b, list)
            assert [None if f is None else len(f) for f in a] == [
                None if f is None else len(f) for f in b]
    assert scan(out) == []


# ---------------------------------------------------------------------------------------------
# StreamScanner
# ---------------------------------------------------------------------------------------------


def stream(chunks: list[bytes]) -> tuple[bytes, int, int]:
    """Output, hits, and the most bytes ever held back."""
    s = StreamScanner()
    out, fed, returned, held = [], 0, 0, 0
    for c in chunks:
        piece = s.feed(c)
        fed += len(c)
        returned += len(piece)
        held = max(held, fed - returned)
        out.append(piece)
    out.append(s.flush())
    return b"".join(out), s.hits, held


STREAM_CASES = [
    form
    for pan in TEST_PANS
    for form in [pan, *GROUPED[pan]]
] + [DINERS, b"6011 1111 1111 1111 110"]


@pytest.mark.parametrize("form", STREAM_CASES)
def test_pan_split_at_every_byte_boundary(form: bytes) -> None:
    for before, after in [(b"", b""), (b"row: ", b" end"), (b"\x00\x00\x00\x10", b"\x00"),
                          (b"12 ", b" 34"), (b"x" * 40, b"y" * 40)]:
        whole = before + form + after
        expected, n = mask_in_place(whole)
        assert n >= 1
        digits_kept = digits(expected[len(before):len(before) + len(form)])
        assert len(digits_kept) <= 7
        for cut in range(len(whole) + 1):
            out, hits, held = stream([whole[:cut], whole[cut:]])
            assert out == expected, (whole, cut)
            assert hits == n
            assert held <= HOLD_BACK <= 26


def test_stream_byte_by_byte_and_three_chunks() -> None:
    whole = b"a 4111 1111 1111 1111, b 378282246310005; c 1234567890123456789012345 0" * 3
    expected, n = mask_in_place(whole)
    assert n == 6
    out, hits, held = stream([whole[i:i + 1] for i in range(len(whole))])
    assert (out, hits) == (expected, n) and held <= HOLD_BACK
    for i in range(0, len(whole), 7):
        for j in range(i, len(whole), 11):
            out, hits, _ = stream([whole[:i], whole[i:j], whole[j:]])
            assert (out, hits) == (expected, n)


def test_stream_holds_back_nothing_without_an_open_run() -> None:
    s = StreamScanner()
    assert s.feed(b"hello 4111111111111111!") == b"hello 411*********1111!"
    assert s.feed(b"trailing digits 12") == b"trailing digits "
    assert s.feed(b"34 done") == b"1234 done"
    assert s.feed(b"") == b""
    assert s.flush() == b""
    assert s.hits == 1
    # flush resets the scanner for a new stream.
    assert s.feed(b"4111111111111") == b""
    assert s.flush() == b"4111111111111"  # 13 digits, not Luhn-valid: unchanged


def test_stream_long_digit_run_is_forwarded_with_a_bounded_hold() -> None:
    s = StreamScanner()
    out = b"".join(s.feed(b"1234567890") for _ in range(100))
    assert len(out) >= 1000 - HOLD_BACK
    assert out + s.flush() == b"1234567890" * 100


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

PAN_FORMS = [form for pan in TEST_PANS for form in [pan, *GROUPED[pan]]] + [DINERS, VISA13]
ATOMS = [bytes([c]) for c in b"0123456789 -x\x00\x01\x31:\"<>"]
noise = st.lists(st.one_of(st.sampled_from(ATOMS), st.binary(max_size=3)),
                 max_size=40).map(b"".join)
# A delimiter that is not a digit keeps an inserted PAN a separate group.
delimiter = st.sampled_from([b" ", b"-", b"x", b"\x00", b'"', b"<", b"\n"])


@st.composite
def buffers_with_pans(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, bytes]]]:
    parts, placed, pos = [], [], 0
    for _ in range(draw(st.integers(1, 4))):
        head = draw(noise) + draw(delimiter)
        form = draw(st.sampled_from(PAN_FORMS))
        tail = draw(delimiter)
        parts += [head, form, tail]
        pos += len(head)
        placed.append((pos, form))
        pos += len(form) + len(tail)
    parts.append(draw(noise))
    return b"".join(parts), placed


def luhn_groups(buf: bytes) -> list[bytes]:
    """Every maximal contiguous digit group of 13-19 digits that is a PAN hit."""
    return [g for g in re.findall(rb"[0-9]+", buf)
            if 13 <= len(g) <= 19 and len(g.lstrip(b"0")) >= 13 and luhn_valid(g)]


@PROPS
@given(buffers_with_pans())
def test_property_inserted_pans_are_masked(case: tuple[bytes, list[tuple[int, bytes]]]) -> None:
    buf, placed = case
    out, n = mask_in_place(buf)
    masked_ok(buf, out)
    assert n >= 1
    for pos, form in placed:
        # Every digit is masked but the first three (at most: framing guard) and the last
        # four (at most: an overlapping longer hit may mask them too).
        n_digits = len(digits(form))
        index = 0
        for j, c in enumerate(form):
            if 0x30 <= c <= 0x39:
                if 3 <= index < n_digits - 4:
                    assert out[pos + j] == 0x2A, (buf, out)
                index += 1
        assert len(digits(out[pos:pos + len(form)])) <= 7
    assert luhn_groups(out) == []
    assert scan(out) == []
    assert mask_in_place(out) == (out, 0)


@PROPS
@given(noise, st.lists(st.integers(0, 200), max_size=5))
def test_property_stream_equals_whole(buf: bytes, cuts: list[int]) -> None:
    buf = buf + b"4111 1111 1111 1111" + buf + b"378282246310005" + buf[::-1]
    points = sorted({min(c, len(buf)) for c in cuts})
    chunks = [buf[a:b] for a, b in zip([0, *points], [*points, len(buf)], strict=True)]
    expected, n = mask_in_place(buf)
    out, hits, held = stream(chunks)
    assert out == expected
    assert hits == n == len(scan(buf))
    assert held <= HOLD_BACK
    masked_ok(buf, out)


@PROPS
@given(st.binary(max_size=300))
def test_property_random_bytes(buf: bytes) -> None:
    out, n = mask_in_place(buf)
    masked_ok(buf, out)
    assert luhn_groups(out) == []
    assert mask_in_place(out)[1] == 0
    assert n == len(scan(buf))
