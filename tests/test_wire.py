"""The sans-IO wire codec (gateway.wire): bytes in, typed messages out, no sockets.

Byte-exact expectations come from the PostgreSQL "Message Formats" chapter of the protocol
documentation (protocol v3.0 / v3.2).
"""

from __future__ import annotations

import itertools
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.wire import backend as be
from gateway.wire import frontend as fe
from gateway.wire import startup as su
from gateway.wire.codec import frame
from gateway.wire.errors import ProtocolViolation
from gateway.wire.framing import BackendObserver, MessageFramer

PROPS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def i16(v: int) -> bytes:
    return struct.pack("!h", v)


def i32(v: int) -> bytes:
    return struct.pack("!i", v)


def u32(v: int) -> bytes:
    return struct.pack("!I", v)


def split(raw: bytes) -> tuple[int, bytes]:
    """One encoded typed message -> (type, body), checking the length word on the way."""
    assert len(raw) >= 5
    (length,) = struct.unpack_from("!i", raw, 1)
    assert length == len(raw) - 1
    return raw[0], raw[5:]


def violation(fn, *args, sqlstate: str = "08P01") -> ProtocolViolation:
    with pytest.raises(ProtocolViolation) as info:
        fn(*args)
    assert info.value.sqlstate == sqlstate
    return info.value


# =============================================================================================
# Frontend messages
# =============================================================================================

FRONTEND_SAMPLES = [
    fe.Query("select 1"),
    fe.Query(""),
    fe.Query("select 'héllo ✓ 🐘'"),
    fe.Parse("s1", "select $1::int, $2::text", (23, 25)),
    fe.Parse("", "select 1", ()),
    fe.Parse("big_oid", "select $1", (0, 2**31, 2**32 - 1)),
    fe.Bind("", "", (), (), ()),
    fe.Bind("p1", "s1", (0, 1, 0), (b"42", b"\x00\x00\x00\x2a", None), (1, 0)),
    fe.Bind("p2", "s2", (1,), (b"\x00\x01", b"", None), (1,)),
    fe.Bind("p3", "s3", (), (None, None), ()),
    fe.Describe("S", "s1"),
    fe.Describe("P", ""),
    fe.Execute("", 0),
    fe.Execute("p1", 100),
    fe.Close("S", "s1"),
    fe.Close("P", "p1"),
    fe.Sync(),
    fe.Flush(),
    fe.Terminate(),
    fe.CopyData(b""),
    fe.CopyData(b"1\tfoo\n2\t\\N\n"),
    fe.CopyData(bytes(range(256))),
    fe.CopyDone(),
    fe.CopyFail("COPY aborted by the client"),
    fe.FunctionCall(1598, (1,), (b"\x00\x00\x00\x01", None), 1),
    fe.FunctionCall(2**32 - 1, (), (), 0),
    fe.FunctionCall(7, (0, 1), (b"text", b"\xff\x00"), 0),
    fe.PasswordMessage(b"s3cret\x00"),
    fe.PasswordMessage(b"SCRAM-SHA-256\x00" + i32(5) + b"n,,n="),
]


@pytest.mark.parametrize("msg", [m for m in FRONTEND_SAMPLES if isinstance(m, fe.Bind)])
def test_bind_names_are_the_decoded_ones(msg):
    assert fe.bind_names(split(msg.encode())[1]) == (msg.portal, msg.statement)


def _reader_error(body, strings):
    """The error reading `strings` C strings from `body` with the general Reader gives."""
    from gateway.wire.codec import Reader

    r = Reader(body)
    with pytest.raises(ProtocolViolation) as e:
        for _ in range(strings):
            r.cstring()
    return str(e.value)


@pytest.mark.parametrize("body", [b"", b"portal", b"portal\0stmt", b"\xff\0s\0", b"p\0\xc3\0",
                                  b"\xff\0stmt"])
def test_bind_names_of_a_broken_bind_raise(body):
    """As the general decoder reads the two names: the same error, the first name first."""
    with pytest.raises(ProtocolViolation) as e:
        fe.bind_names(body)
    assert str(e.value) == _reader_error(body, 2)


NAMED = [lambda n: fe.Parse(n, "select 1", ()), lambda n: fe.Bind(n, "", (), (), ()),
         lambda n: fe.Bind("", n, (0,), (b"x",), ()), lambda n: fe.Execute(n, 0),
         lambda n: fe.Describe("S", n), lambda n: fe.Describe("P", n),
         lambda n: fe.Close("S", n), lambda n: fe.Close("P", n)]


@pytest.mark.parametrize("long_name", [fe._long_name, fe.long_name], ids=["python", "in use"])
@pytest.mark.parametrize("make", NAMED)
def test_long_name_is_a_name_past_63_bytes(make, long_name):
    """PostgreSQL keys statements and portals by their first 63 bytes (multibyte
    characters count in bytes)."""
    def frames(name):
        return [split(fe.Sync().encode()), split(make(name).encode())]

    for name in ("", "s1", "s" * 63, "é" * 31 + "s"):
        assert not long_name(frames(name)), name
    for name in ("s" * 64, "é" * 32, "s" * 62 + "é", "s" * 300):
        assert long_name(frames(name)), name


@pytest.mark.parametrize("long_name", [fe._long_name, fe.long_name], ids=["python", "in use"])
def test_long_name_leaves_unterminated_names_to_the_decoders(long_name):
    assert not long_name([(ord("B"), b"p" * 100), (ord("E"), b"x" * 99), (ord("D"), b"")])


def test_execute_portal():
    for msg in (fe.Execute("", 0), fe.Execute("p1", 100)):
        assert fe.execute_portal(split(msg.encode())[1]) == msg.portal
    for body in (b"", b"p1", b"\xff\0\0\0\0\0"):
        with pytest.raises(ProtocolViolation) as e:
            fe.execute_portal(body)
        assert str(e.value) == _reader_error(body, 1)


@pytest.mark.parametrize("msg", FRONTEND_SAMPLES, ids=lambda m: type(m).__name__)
def test_frontend_round_trip(msg):
    raw = msg.encode()
    mtype, body = split(raw)
    assert mtype == msg.TYPE[0]
    decoded = fe.decode_frontend(mtype, body)
    assert decoded == msg
    assert type(decoded) is type(msg)
    assert decoded.encode() == raw


def test_frontend_types_cover_every_sample_class():
    assert {type(m) for m in FRONTEND_SAMPLES} == {
        fe.Query, fe.Parse, fe.Bind, fe.Describe, fe.Execute, fe.Close, fe.Sync, fe.Flush,
        fe.Terminate, fe.CopyData, fe.CopyDone, fe.CopyFail, fe.FunctionCall,
        fe.PasswordMessage,
    }
    assert frozenset(b"QPBDECSHXdcfFp") == fe.FRONTEND_TYPES


@pytest.mark.parametrize(
    ("msg", "raw"),
    [
        (fe.Sync(), b"S\x00\x00\x00\x04"),
        (fe.Flush(), b"H\x00\x00\x00\x04"),
        (fe.Terminate(), b"X\x00\x00\x00\x04"),
        (fe.CopyDone(), b"c\x00\x00\x00\x04"),
        (fe.Query("select 1"), b"Q\x00\x00\x00\x0dselect 1\x00"),
        (fe.Execute("", 0), b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"),
        (fe.Describe("S", "s1"), b"D\x00\x00\x00\x08Ss1\x00"),
        (fe.Close("P", ""), b"C\x00\x00\x00\x06P\x00"),
        (
            fe.Parse("s", "select $1", (23,)),
            b"P\x00\x00\x00\x16s\x00select $1\x00\x00\x01\x00\x00\x00\x17",
        ),
        (
            # portal "", statement "s", 1 format (binary), 2 params (4-byte int, NULL),
            # 0 result formats.
            fe.Bind("", "s", (1,), (b"\x00\x00\x00\x07", None), ()),
            b"B\x00\x00\x00\x1b\x00s\x00\x00\x01\x00\x01\x00\x02"
            b"\x00\x00\x00\x04\x00\x00\x00\x07\xff\xff\xff\xff\x00\x00",
        ),
        (fe.PasswordMessage(b"pw\x00"), b"p\x00\x00\x00\x07pw\x00"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, bytes) else "",
)
def test_frontend_byte_exact(msg, raw):
    assert msg.encode() == raw
    assert fe.decode_frontend(raw[0], raw[5:]) == msg


def test_password_message_password():
    assert fe.PasswordMessage(b"s3cret\x00").password() == "s3cret"
    with pytest.raises(ProtocolViolation):
        fe.PasswordMessage(b"no-terminator").password()
    with pytest.raises(ProtocolViolation):
        fe.PasswordMessage(b"a\x00trailing").password()
    with pytest.raises(ProtocolViolation):
        fe.PasswordMessage(b"\xff\xfe\x00").password()


def _bind_body(pf: list[int], params: list[bytes | None], rf: list[int]) -> bytes:
    out = b"\x00\x00" + i16(len(pf)) + b"".join(i16(f) for f in pf) + i16(len(params))
    for p in params:
        out += i32(-1) if p is None else i32(len(p)) + p
    return out + i16(len(rf)) + b"".join(i16(f) for f in rf)


@pytest.mark.parametrize(
    ("mtype", "body"),
    [
        (ord("Q"), b"select 1"),  # unterminated
        (ord("Q"), b"select 1\x00x"),  # trailing bytes
        (ord("Q"), b"\xc3\x28\x00"),  # invalid UTF-8
        (ord("Z"), b""),  # not a frontend type
        (0, b""),
        (ord("S"), b"\x00"),  # Sync has no body
        (ord("X"), b"x"),
        (ord("E"), b"\x00\x00\x00"),  # max_rows truncated
        (ord("D"), b"Xname\x00"),  # neither S nor P
        (ord("C"), b""),
        (ord("P"), b"s\x00q\x00\xff\xff"),  # negative parameter type count
        (ord("P"), b"s\x00q\x00\x00\x02\x00\x00\x00\x17"),  # count says 2, has 1
        (ord("B"), _bind_body([2], [b"x"], [])),  # format code 2
        (ord("B"), _bind_body([0, 1], [b"x", b"y", b"z"], [])),  # 2 formats, 3 params
        (ord("B"), _bind_body([], [b"x"], [7])),  # bad result format
        (ord("B"), b"\x00\x00\xff\xff"),  # negative format count
        (ord("B"), b"\x00\x00\x00\x00\x00\x01" + i32(-2)),  # value length -2
        (ord("B"), b"\x00\x00\x00\x00\x00\x01" + i32(10) + b"short"),
        (ord("B"), b"\x00\x00\x00\x00\xff\xff"),  # negative parameter count
        (ord("F"), b"\x00\x00"),
        (ord("f"), b"no terminator"),
    ],
)
def test_frontend_malformed(mtype, body):
    violation(fe.decode_frontend, mtype, body)


# =============================================================================================
# Backend messages
# =============================================================================================

SASL_MECHS = b"SCRAM-SHA-256\x00SCRAM-SHA-256-PLUS\x00\x00"
ALL_FIELDS = {code: f"value of {name}" for code, name in be.FIELD_NAMES.items()}

BACKEND_SAMPLES = [
    be.Authentication(be.AUTH_OK),
    be.Authentication(be.AUTH_KERBEROS_V5),
    be.Authentication(be.AUTH_CLEARTEXT),
    be.Authentication(be.AUTH_MD5, b"\x01\x02\x03\x04"),
    be.Authentication(be.AUTH_GSS),
    be.Authentication(be.AUTH_GSS_CONTINUE, b"gss-token"),
    be.Authentication(be.AUTH_SSPI),
    be.Authentication(be.AUTH_SASL, SASL_MECHS),
    be.Authentication(be.AUTH_SASL_CONTINUE, b"r=abc,s=c2FsdA==,i=4096"),
    be.Authentication(be.AUTH_SASL_FINAL, b"v=c2lnbmF0dXJl"),
    be.BackendKeyData(4242, b"\x01\x02\x03\x04"),
    be.BackendKeyData(-1, bytes(range(32))),
    be.BackendKeyData(1, b"k" * 256),
    be.ParameterStatus("server_version", "17.2"),
    be.ParameterStatus("application_name", ""),
    be.ReadyForQuery("I"),
    be.ReadyForQuery("T"),
    be.ReadyForQuery("E"),
    be.ErrorResponse.build("42P01", 'relation "nope" does not exist', detail="d", hint="h"),
    be.ErrorResponse(ALL_FIELDS),
    be.ErrorResponse({}),
    be.NoticeResponse({"S": "NOTICE", "V": "NOTICE", "C": "00000", "M": "hello"}),
    be.NoticeResponse(ALL_FIELDS),
    be.NegotiateProtocolVersion(0, ("_pq_.compression", "_pq_.other")),
    be.NegotiateProtocolVersion(2, ()),
    be.CommandComplete("SELECT 1"),
    be.CommandComplete("INSERT 0 1"),
    be.RowDescription(()),
    be.RowDescription((
        be.RowDescriptionField("id", 16384, 1, 23, 4, -1, 0),
        be.RowDescriptionField("name", 16384, 2, 25, -1, -1, 0),
        be.RowDescriptionField("?column?", 0, 0, 1700, -1, 655366, 1),
        be.RowDescriptionField("big", 2**32 - 1, -7, 2**31, -2, 2**31 - 1, 1),
    )),
    be.DataRow(()),
    be.DataRow((b"1", None, b"", b"\x00\xff", None)),
    be.DataRow((None,)),
    be.CopyResponse(b"G", 0, (0, 0, 0)),
    be.CopyResponse(b"H", 1, (1, 1)),
    be.CopyResponse(b"W", 0, ()),
    be.NotificationResponse(1234, "jobs", '{"id": 1}'),
    be.NotificationResponse(-5, "chan", ""),
    be.ParameterDescription(()),
    be.ParameterDescription((23, 25, 2**31, 2**32 - 1)),
    be.FunctionCallResponse(b"\x00\x00\x00\x01"),
    be.FunctionCallResponse(b""),
    be.FunctionCallResponse(None),
    be.CopyData(b"row\n"),
    *(be.Simple(bytes([k])) for k in b"123nIsc"),
]


def _backend_type(msg) -> int:
    if isinstance(msg, be.Simple | be.CopyResponse):
        return msg.kind[0]
    return msg.TYPE[0]


@pytest.mark.parametrize("msg", BACKEND_SAMPLES, ids=lambda m: type(m).__name__)
def test_backend_round_trip(msg):
    raw = msg.encode()
    mtype, body = split(raw)
    assert mtype == _backend_type(msg)
    decoded = be.decode_backend(mtype, body)
    assert decoded == msg
    assert type(decoded) is type(msg)
    assert decoded.encode() == raw


def test_backend_types():
    assert frozenset(b"RKSZENvCTDGHWAtVd123nIsc") == be.BACKEND_TYPES


@pytest.mark.parametrize(
    ("msg", "raw"),
    [
        (be.ReadyForQuery("I"), b"Z\x00\x00\x00\x05I"),
        (be.ReadyForQuery("T"), b"Z\x00\x00\x00\x05T"),
        (be.Authentication(be.AUTH_OK), b"R\x00\x00\x00\x08\x00\x00\x00\x00"),
        (be.Authentication(be.AUTH_CLEARTEXT), b"R\x00\x00\x00\x08\x00\x00\x00\x03"),
        (
            be.Authentication(be.AUTH_MD5, b"salt"),
            b"R\x00\x00\x00\x0c\x00\x00\x00\x05salt",
        ),
        (
            be.Authentication(be.AUTH_SASL, b"SCRAM-SHA-256\x00\x00"),
            b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00",
        ),
        (
            be.BackendKeyData(1234, b"\xde\xad\xbe\xef"),
            b"K\x00\x00\x00\x0c\x00\x00\x04\xd2\xde\xad\xbe\xef",
        ),
        (
            be.ParameterStatus("TimeZone", "UTC"),
            b"S\x00\x00\x00\x11TimeZone\x00UTC\x00",
        ),
        (be.CommandComplete("SELECT 1"), b"C\x00\x00\x00\x0dSELECT 1\x00"),
        (
            be.DataRow((None, b"")),
            b"D\x00\x00\x00\x0e\x00\x02\xff\xff\xff\xff\x00\x00\x00\x00",
        ),
        (
            be.ErrorResponse.build("28P01", "bad"),
            b"E\x00\x00\x00\x1fSERROR\x00VERROR\x00C28P01\x00Mbad\x00\x00",
        ),
        (be.Simple(b"1"), b"1\x00\x00\x00\x04"),
        (be.Simple(b"I"), b"I\x00\x00\x00\x04"),
        (
            be.CopyResponse(b"G", 0, (0, 1)),
            b"G\x00\x00\x00\x0b\x00\x00\x02\x00\x00\x00\x01",
        ),
        (
            be.NegotiateProtocolVersion(0, ("_pq_.x",)),
            b"v\x00\x00\x00\x13\x00\x00\x00\x00\x00\x00\x00\x01_pq_.x\x00",
        ),
        (be.FunctionCallResponse(None), b"V\x00\x00\x00\x08\xff\xff\xff\xff"),
        (
            be.RowDescription((be.RowDescriptionField("a", 0, 0, 23, 4, -1, 0),)),
            b"T\x00\x00\x00\x1a\x00\x01a\x00\x00\x00\x00\x00\x00\x00"
            b"\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00",
        ),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, bytes) else "",
)
def test_backend_byte_exact(msg, raw):
    assert msg.encode() == raw
    assert be.decode_backend(raw[0], raw[5:]) == msg


def test_sasl_mechanism_list():
    auth = be.decode_backend(ord("R"), i32(be.AUTH_SASL) + SASL_MECHS)
    assert isinstance(auth, be.Authentication)
    assert auth.code == be.AUTH_SASL
    assert auth.sasl_mechanisms() == ["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"]
    assert be.Authentication(be.AUTH_SASL, b"\x00").sasl_mechanisms() == []
    with pytest.raises(ProtocolViolation):
        be.Authentication(be.AUTH_SASL, b"SCRAM-SHA-256").sasl_mechanisms()


def test_error_and_notice_fields():
    err = be.ErrorResponse.build("42501", "permission denied", severity="FATAL", hint="ask")
    decoded = be.decode_backend(*split(err.encode()))
    assert isinstance(decoded, be.ErrorResponse)
    assert not isinstance(decoded, be.NoticeResponse)
    assert (decoded.code, decoded.message, decoded.severity) == (
        "42501", "permission denied", "FATAL",
    )
    assert decoded.fields["H"] == "ask"
    assert "D" not in decoded.fields
    # Notice and Error with the same fields are different messages.
    notice = be.NoticeResponse(dict(err.fields))
    assert notice.encode()[:1] == b"N"
    assert notice != err
    assert isinstance(be.decode_backend(*split(notice.encode())), be.NoticeResponse)
    # Severity falls back to the localized one when V is absent (pre-9.6 servers).
    assert be.ErrorResponse({"S": "ERREUR"}).severity == "ERREUR"
    assert be.ErrorResponse({}).code == ""
    # Field codes are written back byte for byte, even outside ASCII.
    odd = be.decode_backend(ord("E"), b"\xc3x\x00Mm\x00\x00")
    assert odd.encode() == frame(b"E", b"\xc3x\x00Mm\x00\x00")


@pytest.mark.parametrize(
    ("mtype", "body"),
    [
        (ord("Z"), b"X"),
        (ord("Z"), b""),
        (ord("Z"), b"II"),
        (ord("K"), i32(1) + b"abc"),  # secret too short
        (ord("K"), i32(1) + b"k" * 257),  # secret too long
        (ord("R"), b"\x00\x00"),
        (ord("S"), b"name\x00"),
        (ord("E"), b"Mmessage\x00"),  # missing terminator byte
        (ord("E"), b"Mmessage"),
        (ord("v"), i32(0) + i32(-1)),
        (ord("v"), i32(0) + i32(2) + b"_pq_.a\x00"),
        (ord("T"), b"\xff\xff"),
        (ord("T"), b"\x00\x01a\x00" + b"\x00" * 17),  # one byte short
        (ord("D"), b"\xff\xfe"),
        (ord("D"), b"\x00\x01" + i32(-3)),
        (ord("D"), b"\x00\x01" + i32(5) + b"abc"),
        (ord("D"), b"\x00\x00x"),
        (ord("G"), b"\x00\xff\xff"),
        (ord("t"), b"\x00\x02" + i32(23)),
        (ord("V"), b""),
        (ord("1"), b"x"),
        (ord("A"), i32(1) + b"chan\x00"),
        (ord("Q"), b""),  # frontend-only type
        (0xFF, b""),
    ],
)
def test_backend_malformed(mtype, body):
    violation(be.decode_backend, mtype, body)


# =============================================================================================
# Startup packets
# =============================================================================================

SSL_BYTES = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"  # 8, 1234 << 16 | 5679
GSS_BYTES = b"\x00\x00\x00\x08\x04\xd2\x16\x30"  # 8, 1234 << 16 | 5680


def startup_bytes(code: int, body: bytes) -> bytes:
    return i32(len(body) + 8) + i32(code) + body


def test_startup_byte_exact():
    assert su.SSLRequest().encode() == SSL_BYTES
    assert su.GSSENCRequest().encode() == GSS_BYTES
    assert su.CancelRequest(7, b"\x00\x00\x00\x09").encode() == (
        b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x00\x07\x00\x00\x00\x09"
    )
    msg = su.StartupMessage(3, 0, {"user": "alice", "database": "db"})
    raw = b"\x00\x00\x00\x20\x00\x03\x00\x00user\x00alice\x00database\x00db\x00\x00"
    assert msg.encode() == raw
    assert su.parse_startup_packet(raw) == msg


def test_ssl_and_gssenc_requests():
    assert su.parse_startup_packet(SSL_BYTES) == su.SSLRequest()
    assert su.parse_startup_packet(GSS_BYTES) == su.GSSENCRequest()
    violation(su.parse_startup_packet, startup_bytes(su.SSL_REQUEST_CODE, b"xxxx"))
    violation(su.parse_startup_packet, startup_bytes(su.GSSENC_REQUEST_CODE, b"\x00"))


@pytest.mark.parametrize("secret", [b"\x01\x02\x03\x04", bytes(range(32)), b"s" * 256])
def test_cancel_request(secret):
    raw = su.CancelRequest(31337, secret).encode()
    assert raw[:8] == i32(12 + len(secret)) + i32(su.CANCEL_REQUEST_CODE)
    packet = su.parse_startup_packet(raw)
    assert packet == su.CancelRequest(31337, secret)
    reader = su.StartupReader()
    reader.feed(raw)
    assert reader.next_packet() == packet
    assert reader.pending() == b""


@pytest.mark.parametrize("secret", [b"", b"abc", b"s" * 257])
def test_cancel_request_bad_secret_length(secret):
    raw = startup_bytes(su.CANCEL_REQUEST_CODE, i32(1) + secret)
    violation(su.parse_startup_packet, raw)


def test_cancel_request_without_pid():
    violation(su.parse_startup_packet, startup_bytes(su.CANCEL_REQUEST_CODE, b"\x00\x00"))


def test_startup_message_params():
    params = {
        "user": "alice", "database": "payments", "application_name": "psql ✓",
        "options": "-c search_path=app", "client_encoding": "",
    }
    raw = su.StartupMessage(3, 0, params).encode()
    packet = su.parse_startup_packet(raw)
    assert isinstance(packet, su.StartupMessage)
    assert (packet.major, packet.minor) == (3, 0)
    assert packet.params == params
    assert list(packet.params) == list(params)
    assert packet.unsupported_options() == ()


def test_startup_protocol_3_2_with_options():
    raw = su.StartupMessage(
        3, 2, {"user": "u", "_pq_.compression": "on", "database": "d", "_pq_.x": ""}
    ).encode()
    assert raw[4:8] == b"\x00\x03\x00\x02"
    packet = su.parse_startup_packet(raw)
    assert isinstance(packet, su.StartupMessage)
    assert (packet.major, packet.minor) == (3, 2)
    assert packet.unsupported_options() == ("_pq_.compression", "_pq_.x")


@pytest.mark.parametrize("code", [2 << 16, 1 << 16, (4 << 16) | 0, (2 << 16) | 5, 0, -1])
def test_startup_unsupported_protocol(code):
    raw = startup_bytes(code, b"user\x00u\x00\x00")
    violation(su.parse_startup_packet, raw, sqlstate="0A000")


@pytest.mark.parametrize(
    "body", [b"\x00", b"database\x00d\x00\x00", b"user\x00\x00\x00"], ids=["none", "db", "empty"]
)
def test_startup_missing_user(body):
    violation(su.parse_startup_packet, startup_bytes(su.PROTOCOL_3_0, body), sqlstate="28000")


@pytest.mark.parametrize(
    "body",
    [
        b"user\x00a\x00user\x00b\x00\x00",  # duplicate
        b"user\x00a\x00database\x00d\x00database\x00d\x00\x00",
        b"user\x00alice",  # unterminated value
        b"user\x00alice\x00",  # missing list terminator
        b"user",  # unterminated name
        b"",
        b"user\x00alice\x00\x00junk",  # bytes after the terminator
        b"user\x00\xff\xfe\x00\x00",  # invalid UTF-8
    ],
)
def test_startup_malformed_params(body):
    violation(su.parse_startup_packet, startup_bytes(su.PROTOCOL_3_0, body))


def test_parse_startup_packet_length_checks():
    violation(su.parse_startup_packet, b"\x00\x00\x00\x04")
    violation(su.parse_startup_packet, SSL_BYTES + b"x")  # length word says 8, got 9
    violation(su.parse_startup_packet, SSL_BYTES[:7])


@pytest.mark.parametrize("length", [0, 4, 7, -1, -2**31])
def test_startup_reader_length_too_small(length):
    reader = su.StartupReader()
    violation(reader.feed, i32(length))


@pytest.mark.parametrize("length", [su.MAX_STARTUP_PACKET + 1, 2**31 - 1])
def test_startup_reader_length_too_big_refused_before_body(length):
    reader = su.StartupReader()
    reader.feed(i32(length)[:3])  # not known yet
    assert reader.next_packet() is None
    violation(reader.feed, i32(length)[3:])


def test_startup_reader_max_length_accepted():
    reader = su.StartupReader()
    reader.feed(i32(su.MAX_STARTUP_PACKET) + i32(su.PROTOCOL_3_0))
    assert reader.next_packet() is None
    body = b"user\x00u\x00x\x00" + b"y" * (su.MAX_STARTUP_PACKET - 8 - 11) + b"\x00\x00"
    assert len(body) == su.MAX_STARTUP_PACKET - 8
    reader.feed(body)
    packet = reader.next_packet()
    assert isinstance(packet, su.StartupMessage)
    assert packet.params["x"] == "y" * (su.MAX_STARTUP_PACKET - 19)


def test_startup_reader_one_byte_chunks():
    raw = su.StartupMessage(3, 0, {"user": "bob", "database": "x"}).encode()
    reader = su.StartupReader()
    for b in raw[:-1]:
        reader.feed(bytes([b]))
        assert reader.next_packet() is None
    reader.feed(raw[-1:])
    assert reader.next_packet() == su.StartupMessage(3, 0, {"user": "bob", "database": "x"})
    assert reader.next_packet() is None
    assert reader.pending() == b""


def test_startup_reader_keeps_bytes_after_ssl_request():
    startup = su.StartupMessage(3, 0, {"user": "u"}).encode()
    reader = su.StartupReader()
    reader.feed(SSL_BYTES + startup[:5])
    assert reader.next_packet() == su.SSLRequest()
    assert reader.pending() == startup[:5]
    assert reader.pending() == startup[:5]  # pending() does not consume
    assert reader.next_packet() is None
    reader.feed(startup[5:])
    assert reader.pending() == startup
    assert reader.next_packet() == su.StartupMessage(3, 0, {"user": "u"})
    assert reader.pending() == b""


def test_startup_reader_take_pending():
    reader = su.StartupReader()
    reader.feed(SSL_BYTES + b"Q\x00\x00")
    assert reader.next_packet() == su.SSLRequest()
    assert reader.take_pending() == b"Q\x00\x00"
    assert reader.pending() == b""
    assert reader.next_packet() is None


def test_startup_reader_two_packets_in_one_chunk():
    startup = su.StartupMessage(3, 0, {"user": "u"})
    reader = su.StartupReader()
    reader.feed(GSS_BYTES + SSL_BYTES + startup.encode() + b"extra")
    assert reader.next_packet() == su.GSSENCRequest()
    assert reader.next_packet() == su.SSLRequest()
    assert reader.next_packet() == startup
    assert reader.take_pending() == b"extra"


@pytest.mark.parametrize("head", [i32(su.MAX_STARTUP_PACKET + 1), i32(3), i32(-5)])
def test_startup_reader_bad_length_behind_earlier_packet(head):
    # The second packet's length word arrives in the same chunk as the first packet; it
    # must be refused as soon as the reader gets to it, not waited on.
    reader = su.StartupReader()
    reader.feed(SSL_BYTES + head)
    assert reader.next_packet() == su.SSLRequest()
    violation(reader.next_packet)


# =============================================================================================
# MessageFramer
# =============================================================================================

CLIENT_STREAM_MSGS = [
    fe.Parse("s", "select $1", (23,)),
    fe.Bind("", "s", (1,), (b"\x00\x00\x00\x01",), ()),
    fe.Describe("P", ""),
    fe.Execute("", 0),
    fe.Sync(),
    fe.Query("select 1; select 2"),
    fe.CopyData(b"x" * 40),
    fe.Terminate(),
]
CLIENT_STREAM = b"".join(m.encode() for m in CLIENT_STREAM_MSGS)
CLIENT_FRAMES = [split(m.encode()) for m in CLIENT_STREAM_MSGS]


def feed_all(framer: MessageFramer, chunks) -> tuple[bytes, list]:
    completes, frames = [], []
    for chunk in chunks:
        complete, got = framer.feed(chunk)
        assert complete == b"".join(frame(bytes([t]), b) for t, b in got)
        completes.append(complete)
        frames += got
    return b"".join(completes), frames


def test_framer_several_messages_in_one_chunk():
    framer = MessageFramer(fe.FRONTEND_TYPES, 1 << 20)
    complete, frames = framer.feed(CLIENT_STREAM)
    assert complete == CLIENT_STREAM
    assert frames == CLIENT_FRAMES
    assert [fe.decode_frontend(t, b) for t, b in frames] == CLIENT_STREAM_MSGS
    assert not framer.has_partial()


def test_framer_every_single_split():
    for i in range(len(CLIENT_STREAM) + 1):
        framer = MessageFramer(fe.FRONTEND_TYPES, 1 << 20)
        complete, frames = feed_all(framer, [CLIENT_STREAM[:i], CLIENT_STREAM[i:]])
        assert complete == CLIENT_STREAM, i
        assert frames == CLIENT_FRAMES, i
        assert not framer.has_partial()


def test_framer_every_pair_of_splits():
    stream = b"".join(m.encode() for m in CLIENT_STREAM_MSGS[2:6])
    expected = CLIENT_FRAMES[2:6]
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            framer = MessageFramer(fe.FRONTEND_TYPES, 1 << 20)
            complete, frames = feed_all(framer, [stream[:i], stream[i:j], stream[j:]])
            assert complete == stream
            assert frames == expected


def test_framer_one_byte_chunks_and_partial_state():
    framer = MessageFramer(fe.FRONTEND_TYPES, 1 << 20)
    boundaries, pos = set(), 0
    for m in CLIENT_STREAM_MSGS:
        pos += len(m.encode())
        boundaries.add(pos)
    frames = []
    for k in range(len(CLIENT_STREAM)):
        _, got = framer.feed(CLIENT_STREAM[k : k + 1])
        frames += got
        assert framer.has_partial() == ((k + 1) not in boundaries)
        assert bool(got) == ((k + 1) in boundaries)
    assert frames == CLIENT_FRAMES


def test_framer_empty_feed():
    framer = MessageFramer(fe.FRONTEND_TYPES, 1 << 20)
    assert framer.feed(b"") == (b"", [])
    framer.feed(b"Q\x00")
    assert framer.feed(b"") == (b"", [])
    assert framer.has_partial()


@pytest.mark.parametrize("prefix", [b"", fe.Sync().encode()], ids=["alone", "after-sync"])
@pytest.mark.parametrize("tail", [b"Z", b"Z\x00", b"Z\x00\x00\x00", b"Z\x00\x00\x00\x05"])
def test_framer_disallowed_type_refused_early(prefix, tail):
    framer = MessageFramer(frozenset(b"QS"), 1 << 20)
    violation(framer.feed, prefix + tail)


def test_framer_disallowed_type_after_buffered_bytes():
    framer = MessageFramer(frozenset(b"QS"), 1 << 20)
    query = fe.Query("select 1").encode()
    framer.feed(query[:3])
    violation(framer.feed, query[3:] + b"\x00")


@pytest.mark.parametrize("allowed", [fe.FRONTEND_TYPES, frozenset(range(256))])
@pytest.mark.parametrize("length", [0, 3, -1, -2**31])
def test_framer_length_too_small(length, allowed):
    framer = MessageFramer(allowed, 1 << 20)
    err = violation(framer.feed, b"Q" + i32(length))
    assert "length" in str(err)


def test_framer_oversize_refused_at_header():
    framer = MessageFramer(fe.FRONTEND_TYPES, 1000)
    framer.feed(b"d\x00\x00")
    violation(framer.feed, b"\x03\xe9", sqlstate="54000")  # 1001
    framer = MessageFramer(fe.FRONTEND_TYPES, 1000)
    violation(framer.feed, b"Q" + i32(2**31 - 1), sqlstate="54000")
    # Exactly at the limit is fine.
    framer = MessageFramer(fe.FRONTEND_TYPES, 1000)
    big = fe.CopyData(b"z" * 996).encode()
    assert framer.feed(big[:5]) == (b"", [])
    assert framer.feed(big[5:]) == (big, [(ord("d"), b"z" * 996)])


def test_framer_take_rest():
    framer = MessageFramer(fe.FRONTEND_TYPES, 1 << 20)
    query = fe.Query("select 42").encode()
    complete, frames = framer.feed(fe.Sync().encode() + query[:7])
    assert complete == fe.Sync().encode()
    assert frames == [(ord("S"), b"")]
    assert framer.has_partial()
    assert framer.take_rest() == query[:7]
    assert not framer.has_partial()
    assert framer.take_rest() == b""
    # The framer starts afresh: the rest of the old message is now garbage to it.
    assert framer.feed(query) == (query, [(ord("Q"), b"select 42\x00")])


# =============================================================================================
# BackendObserver
# =============================================================================================

Z, E, R, K = (ord(c) for c in "ZERK")
OBSERVED = frozenset((Z, E))


def _mixed_backend_stream() -> tuple[bytes, list[bytes]]:
    rng = random.Random(1234)
    msgs: list[bytes] = [
        be.Authentication(be.AUTH_OK).encode(),
        be.ParameterStatus("server_version", "17").encode(),
        be.ReadyForQuery("I").encode(),
        be.RowDescription((be.RowDescriptionField("v", 0, 0, 17, -1, -1, 1),)).encode(),
    ]
    for size in (0, 1, 7, 70_000, 300, 200_000, 5):
        msgs.append(be.DataRow((rng.randbytes(size), None)).encode())
    msgs += [
        be.CommandComplete("SELECT 7").encode(),
        be.ReadyForQuery("T").encode(),
        be.NoticeResponse({"S": "NOTICE", "M": "n"}).encode(),
        be.ErrorResponse.build("22012", "division by zero").encode(),
        be.ReadyForQuery("E").encode(),
        be.CopyData(b"c" * 100_000).encode(),
        be.Simple(b"c").encode(),
        be.ReadyForQuery("I").encode(),
    ]
    return b"".join(msgs), msgs


MIXED_STREAM, MIXED_MSGS = _mixed_backend_stream()
MIXED_BOUNDARIES = {0}
_p = 0
for _m in MIXED_MSGS:
    _p += len(_m)
    MIXED_BOUNDARIES.add(_p)
MIXED_EVENTS = [split(m) for m in MIXED_MSGS if m[0] in OBSERVED]


def observe(stream: bytes, cuts: list[int], observed=OBSERVED, max_size=1 << 20):
    """Feeds `stream` cut at `cuts`; after each chunk: (offset, at_boundary, events so far)."""
    obs = BackendObserver(be.BACKEND_TYPES, observed, max_size)
    states, events, prev = [], [], 0
    for cut in [*cuts, len(stream)]:
        events += obs.feed(stream[prev:cut])
        prev = cut
        assert len(obs._partial) <= max_size + 5
        states.append((cut, obs.at_boundary(), list(events)))
    return states


def test_mixed_stream_expected_events():
    assert [t for t, _ in MIXED_EVENTS] == [Z, Z, E, Z, Z]


@pytest.mark.parametrize("seed", range(25))
def test_observer_random_chunkings(seed):
    rng = random.Random(seed)
    max_chunk = rng.choice([2, 17, 512, 4096, 65536, 300_000])
    cuts, pos = [], 0
    while True:
        pos += rng.randint(1, max_chunk) if rng.random() > 0.05 else 0
        if pos >= len(MIXED_STREAM):
            break
        cuts.append(pos)
    states = observe(MIXED_STREAM, cuts)
    for cut, boundary, _ in states:
        assert boundary == (cut in MIXED_BOUNDARIES), cut
    assert states[-1][2] == MIXED_EVENTS


def test_observer_every_split_of_small_stream():
    msgs = [
        be.DataRow((b"abc", None)).encode(),
        be.ReadyForQuery("I").encode(),
        be.CommandComplete("X").encode(),
        be.ErrorResponse.build("XX000", "e").encode(),
    ]
    stream = b"".join(msgs)
    bounds = {0, len(stream)}
    p = 0
    for m in msgs:
        p += len(m)
        bounds.add(p)
    expected = [split(m) for m in msgs if m[0] in OBSERVED]
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            states = observe(stream, [i, j])
            assert [s[1] for s in states] == [c in bounds for c, _, _ in states]
            assert states[-1][2] == expected


def test_observer_byte_at_a_time():
    stream = MIXED_STREAM[:2000]  # into the first big DataRow
    obs = BackendObserver(be.BACKEND_TYPES, OBSERVED, 1 << 20)
    events = []
    for k in range(len(stream)):
        events += obs.feed(stream[k : k + 1])
        assert obs.at_boundary() == ((k + 1) in MIXED_BOUNDARIES)
    assert events == [(Z, b"I")]


def test_observer_events_are_bytes_bodies():
    obs = BackendObserver(be.BACKEND_TYPES, OBSERVED, 1 << 20)
    events = obs.feed(be.ReadyForQuery("T").encode())
    assert events == [(Z, b"T")]
    assert isinstance(events[0][1], bytes)


@pytest.mark.parametrize(
    "data",
    [b"\x00\x00\x00\x00\x04", b"Q\x00\x00\x00\x04", b"p\x00\x00\x00\x08abcd",
     b"Z\x00\x00\x00\x03", b"D\xff\xff\xff\xff"],
)
def test_observer_invalid_message(data):
    obs = BackendObserver(be.BACKEND_TYPES, OBSERVED, 1 << 20)
    with pytest.raises(ProtocolViolation):
        obs.feed(data)


def test_observer_unknown_type_after_skipped_message():
    obs = BackendObserver(be.BACKEND_TYPES, OBSERVED, 1 << 20)
    row = be.DataRow((b"x" * 1000,)).encode()
    assert obs.feed(row[:100]) == []
    with pytest.raises(ProtocolViolation):
        obs.feed(row[100:] + b"?\x00\x00\x00\x04")


def test_observer_observed_message_over_limit():
    obs = BackendObserver(be.BACKEND_TYPES, OBSERVED, 100)
    err = be.ErrorResponse.build("XX000", "m" * 200).encode()
    with pytest.raises(ProtocolViolation):
        obs.feed(err[:5])  # refused on the header alone
    # An unobserved message may be far bigger than the limit.
    obs = BackendObserver(be.BACKEND_TYPES, OBSERVED, 100)
    assert obs.feed(be.DataRow((b"r" * 10_000,)).encode()) == []
    assert obs.at_boundary()


def test_observer_skips_10mb_datarow_without_buffering():
    size = 10 * 1024 * 1024
    value = b"\xab" * (size - 10)
    row = be.DataRow((value,)).encode()
    stream = row + be.ReadyForQuery("I").encode()
    obs = BackendObserver(be.BACKEND_TYPES, OBSERVED, 1 << 16)
    step = 64 * 1024
    view = memoryview(stream)
    seen_events = []
    for off in range(0, len(row), step):
        chunk = bytes(view[off : min(off + step, len(row))])
        seen_events += obs.feed(chunk)
        assert len(obs._partial) < 5
        done = min(off + step, len(row))
        assert obs._skip == len(row) - done
        assert obs.at_boundary() == (done == len(row))
    assert seen_events == []
    assert obs.at_boundary()
    assert obs.feed(bytes(view[len(row) :])) == [(Z, b"I")]
    assert obs.at_boundary()


D = ord("D")
_ROW_STREAM_MESSAGES = st.lists(st.one_of(
    st.builds(lambda vals: be.DataRow(tuple(vals)).encode(),
              st.lists(st.one_of(st.none(), st.binary(max_size=40)), max_size=3)),
    st.just(be.CommandComplete("SELECT 1").encode()),
    st.just(be.ErrorResponse.build("22012", "division by zero").encode()),
    st.just(be.ReadyForQuery("I").encode()),
    st.builds(lambda b: be.CopyData(b).encode(), st.binary(max_size=20)),
), max_size=14)


def _walk_rows(data: bytes, pos: int, max_size: int) -> tuple[int, bytes] | None:
    """A walker like the masker's: the whole DataRows from `pos` on, returned as they are."""
    end = pos
    while len(data) - end >= 5 and data[end] == D:
        (length,) = struct.unpack_from("!i", data, end + 1)
        if end + 1 + length > len(data):
            break
        end += 1 + length
    return (end, data[pos:end]) if end > pos else None


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_ROW_STREAM_MESSAGES,
       st.sampled_from(["ends", "rows", "coalesced", "walked", "copy runs"]),
       st.booleans(), st.data())
def test_each_event_counts_the_rows_since_the_one_before(msgs, watch, native, data):
    """However the stream is cut, every event's count sums, up to any end message, to the
    rows (DataRows and CopyData) before it in the stream; once whole, to all of them. With
    the C step or not, with rows observed, coalesced into runs or walked, or stepped over
    between runs of another type."""
    stream = b"".join(msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    observed = OBSERVED | {ord("C")} | ({D} if watch in ("rows", "coalesced", "walked")
                                       else {ord("d")} if watch == "copy runs" else set())
    obs = BackendObserver(be.BACKEND_TYPES, frozenset(observed), 1 << 10)
    if watch in ("coalesced", "walked"):
        obs.coalesce = frozenset({D})
    elif watch == "copy runs":
        obs.coalesce = frozenset(b"d")
    if watch == "walked":
        obs.walk_run = _walk_rows
    if not native:
        obs._scan = None
    seen, prev = [], 0
    for cut in [*cuts, len(stream)]:
        seen += obs.relay(stream[prev:cut])[1]
        prev = cut
    before = 0
    expected = []  # (type, rows before it) for each end message
    for m in msgs:
        if m[0] in (D, ord("d")):
            before += 1
        else:
            expected.append((m[0], before))
    counted, got = 0, []
    for t, _, _, _, rows in seen:
        counted += rows
        if t in observed and t not in (D, ord("d")):
            got.append((t, counted))
    assert got == [e for e in expected if e[0] in observed]
    assert counted + obs._rows == before


def test_rows_are_counted_at_their_header():
    """A DataRow still arriving counts once its header has passed (its bytes go out)."""
    row = be.DataRow((b"x" * 100,)).encode()
    err = be.ErrorResponse.build("22012", "division by zero").encode()
    obs = BackendObserver(be.BACKEND_TYPES, OBSERVED, 1 << 10)
    assert obs.relay(row[:4])[1] == [] and obs._rows == 0
    assert obs.relay(row[4:50])[1] == [] and obs._rows == 1
    events = obs.relay(row[50:] + row + err)[1]
    assert [(t, rows) for t, _, _, _, rows in events] == [(E, 2)] and obs._rows == 0


@pytest.mark.parametrize("stop", ["inside a row", "before the last row"])
def test_a_walker_must_stop_where_the_run_ends(stop):
    row = be.DataRow((b"a",)).encode()
    stop = 4 if stop == "inside a row" else len(row)
    for native in (True, False):
        obs = BackendObserver(be.BACKEND_TYPES, OBSERVED | {D}, 1 << 10)
        obs.coalesce = frozenset({D})
        obs.walk_run = lambda data, pos, _m: (pos + stop, data[pos : pos + stop])
        if not native:
            obs._scan = None
        with pytest.raises(ProtocolViolation):
            obs.relay(row * 3 + be.ReadyForQuery("I").encode())


def test_observer_split_header_of_big_message():
    row = be.DataRow((b"q" * 100_000,)).encode()
    obs = BackendObserver(be.BACKEND_TYPES, OBSERVED, 1 << 10)
    assert obs.feed(row[:3]) == []
    assert not obs.at_boundary()
    assert obs.feed(row[3:4000]) == []
    assert len(obs._partial) == 0
    assert obs._skip == len(row) - 4000
    assert obs.feed(row[4000:] + b"Z\x00\x00\x00\x05E") == [(Z, b"E")]
    assert obs.at_boundary()


# =============================================================================================
# Property-based tests
# =============================================================================================

OK_EXC = ProtocolViolation

texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
int16s = st.integers(-(2**15), 2**15 - 1)
int32s = st.integers(-(2**31), 2**31 - 1)
oids = st.integers(0, 2**32 - 1)
values = st.lists(st.one_of(st.none(), st.binary(max_size=12)), max_size=5)
fmts = st.lists(st.sampled_from([0, 1]), max_size=4)


@st.composite
def binds(draw):
    params = tuple(draw(values))
    shape = draw(st.sampled_from(["none", "one", "each"]))
    if shape == "none":
        pf: tuple[int, ...] = ()
    elif shape == "one":
        pf = (draw(st.sampled_from([0, 1])),)
    else:
        pf = tuple(draw(st.sampled_from([0, 1])) for _ in params)
    return fe.Bind(draw(texts), draw(texts), pf, params, tuple(draw(fmts)))


frontend_msgs = st.one_of(
    st.builds(fe.Query, texts),
    st.builds(fe.Parse, texts, texts, st.lists(oids, max_size=4).map(tuple)),
    binds(),
    st.builds(fe.Describe, st.sampled_from("SP"), texts),
    st.builds(fe.Execute, texts, int32s),
    st.builds(fe.Close, st.sampled_from("SP"), texts),
    st.just(fe.Sync()),
    st.just(fe.Flush()),
    st.just(fe.Terminate()),
    st.builds(fe.CopyData, st.binary(max_size=40)),
    st.just(fe.CopyDone()),
    st.builds(fe.CopyFail, texts),
    st.builds(fe.FunctionCall, oids, fmts.map(tuple), values.map(tuple), int16s),
    st.builds(fe.PasswordMessage, st.binary(max_size=40)),
)

row_fields = st.builds(be.RowDescriptionField, texts, oids, int16s, oids, int16s, int32s, int16s)
field_codes = st.sampled_from(sorted(be.FIELD_NAMES))

backend_msgs = st.one_of(
    st.builds(be.Authentication, int32s, st.binary(max_size=20)),
    st.builds(be.BackendKeyData, int32s, st.binary(min_size=4, max_size=40)),
    st.builds(be.ParameterStatus, texts, texts),
    st.builds(be.ReadyForQuery, st.sampled_from("ITE")),
    st.builds(be.ErrorResponse, st.dictionaries(field_codes, texts, max_size=6)),
    st.builds(be.NoticeResponse, st.dictionaries(field_codes, texts, max_size=6)),
    st.builds(be.NegotiateProtocolVersion, int32s, st.lists(texts, max_size=3).map(tuple)),
    st.builds(be.CommandComplete, texts),
    st.builds(be.RowDescription, st.lists(row_fields, max_size=3).map(tuple)),
    st.builds(be.DataRow, values.map(tuple)),
    st.builds(
        be.CopyResponse, st.sampled_from([b"G", b"H", b"W"]), st.sampled_from([0, 1]),
        st.lists(st.sampled_from([0, 1]), max_size=4).map(tuple),
    ),
    st.builds(be.NotificationResponse, int32s, texts, texts),
    st.builds(be.ParameterDescription, st.lists(oids, max_size=4).map(tuple)),
    st.builds(be.FunctionCallResponse, st.one_of(st.none(), st.binary(max_size=12))),
    st.builds(be.Simple, st.sampled_from([bytes([k]) for k in b"123nIsc"])),
    st.builds(be.CopyData, st.binary(max_size=40)),
)


@PROPS
@given(frontend_msgs)
def test_prop_frontend_round_trip(msg):
    raw = msg.encode()
    assert fe.decode_frontend(*split(raw)) == msg


@PROPS
@given(backend_msgs)
def test_prop_backend_round_trip(msg):
    raw = msg.encode()
    decoded = be.decode_backend(*split(raw))
    assert decoded == msg
    assert decoded.encode() == raw


def mutate(raw: bytes, draw) -> bytes:
    """A valid body, damaged: truncated, extended, or with a byte replaced."""
    how = draw(st.sampled_from(["cut", "append", "flip", "keep"]))
    if how == "cut" and raw:
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if how == "append":
        return raw + draw(st.binary(min_size=1, max_size=6))
    if how == "flip" and raw:
        i = draw(st.integers(0, len(raw) - 1))
        return raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1 :]
    return raw


@PROPS
@given(st.data())
def test_prop_decode_frontend_never_crashes(data):
    if data.draw(st.booleans()):
        mtype = data.draw(st.integers(0, 255))
        body = data.draw(st.binary(max_size=64))
    else:
        mtype, body = split(data.draw(frontend_msgs).encode())
        body = mutate(body, data.draw)
    try:
        msg = fe.decode_frontend(mtype, body)
    except OK_EXC:
        return
    # Whatever decodes re-encodes to the very same bytes.
    assert msg.encode() == frame(bytes([mtype]), body)


@PROPS
@given(st.data())
def test_prop_decode_backend_never_crashes(data):
    if data.draw(st.booleans()):
        mtype = data.draw(st.integers(0, 255))
        body = data.draw(st.binary(max_size=64))
    else:
        mtype, body = split(data.draw(backend_msgs).encode())
        body = mutate(body, data.draw)
    try:
        msg = be.decode_backend(mtype, body)
    except OK_EXC:
        return
    raw = msg.encode()
    if mtype in (ord("E"), ord("N")):
        # A repeated field code collapses into one; the rest must be stable.
        assert be.decode_backend(*split(raw)) == msg
    else:
        assert raw == frame(bytes([mtype]), body)


startup_heads = st.sampled_from([
    su.SSL_REQUEST_CODE, su.GSSENC_REQUEST_CODE, su.CANCEL_REQUEST_CODE,
    su.PROTOCOL_3_0, su.PROTOCOL_3_0 | 2, 2 << 16, 1234 << 16 | 5681,
])


@st.composite
def startup_streams(draw) -> bytes:
    kind = draw(st.sampled_from(["random", "framed", "valid"]))
    if kind == "random":
        return draw(st.binary(max_size=80))
    if kind == "framed":
        body = draw(st.binary(max_size=40))
        length = draw(st.one_of(st.just(len(body) + 8), int32s))
        return i32(length) + i32(draw(startup_heads)) + body
    params = draw(st.dictionaries(texts, texts, max_size=4))
    raw = su.StartupMessage(3, draw(st.integers(0, 3)), params).encode()
    prefix = draw(st.sampled_from([b"", SSL_BYTES, GSS_BYTES]))
    return mutate(prefix + raw, draw)


@PROPS
@given(startup_streams(), st.lists(st.integers(1, 30), max_size=10))
def test_prop_startup_reader_never_crashes(stream, sizes):
    reader = su.StartupReader()
    chunks, pos = [], 0
    for n in sizes:
        chunks.append(stream[pos : pos + n])
        pos += n
    chunks.append(stream[pos:])
    packets = []
    try:
        for chunk in chunks:
            reader.feed(chunk)
            while (packet := reader.next_packet()) is not None:
                packets.append(packet)
    except OK_EXC:
        return
    consumed = sum(len(p.encode()) for p in packets)
    assert reader.pending() == stream[consumed:]
    for p in packets:
        assert su.parse_startup_packet(p.encode()) == p


@PROPS
@given(
    st.lists(st.binary(max_size=40), max_size=8),
    st.sampled_from([fe.FRONTEND_TYPES, be.BACKEND_TYPES, frozenset(b"Qp")]),
    st.integers(4, 64),
)
def test_prop_framer_never_crashes(chunks, allowed, max_size):
    framer = MessageFramer(allowed, max_size)
    fed = b""
    completes = []
    try:
        for chunk in chunks:
            fed += chunk
            complete, frames = framer.feed(chunk)
            completes.append(complete)
            for mtype, body in frames:
                assert mtype in allowed
                assert len(body) + 4 <= max_size
    except OK_EXC:
        return
    assert b"".join(completes) + framer.take_rest() == fed


@PROPS
@given(st.lists(st.binary(max_size=40), max_size=8), st.integers(4, 64))
def test_prop_observer_never_crashes(chunks, max_size):
    obs = BackendObserver(be.BACKEND_TYPES, OBSERVED, max_size)
    try:
        for chunk in chunks:
            for mtype, body in obs.feed(chunk):
                assert mtype in OBSERVED
                assert len(body) + 4 <= max_size
    except OK_EXC:
        return


def _cuts(data, total: int) -> list[int]:
    if total == 0:
        return []
    return sorted(set(data.draw(st.lists(st.integers(0, total), max_size=12))))


@PROPS
@given(st.lists(frontend_msgs, min_size=1, max_size=10), st.data())
def test_prop_framer_reframes_random_chunking(msgs, data):
    raws = [m.encode() for m in msgs]
    stream = b"".join(raws)
    cuts = _cuts(data, len(stream))
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    framer = MessageFramer(fe.FRONTEND_TYPES, 1 << 16)
    complete, frames = feed_all(framer, chunks)
    assert complete == stream
    assert frames == [split(r) for r in raws]
    assert [fe.decode_frontend(t, b) for t, b in frames] == msgs
    assert not framer.has_partial()


@PROPS
@given(
    st.lists(backend_msgs, min_size=1, max_size=10),
    st.sets(st.sampled_from(sorted(be.BACKEND_TYPES))),
    st.data(),
)
def test_prop_observer_random_chunking(msgs, observed, data):
    raws = [m.encode() for m in msgs]
    stream = b"".join(raws)
    boundaries = {0}
    pos = 0
    for r in raws:
        pos += len(r)
        boundaries.add(pos)
    cuts = _cuts(data, len(stream))
    obs = BackendObserver(be.BACKEND_TYPES, frozenset(observed), 1 << 16)
    events = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        events += obs.feed(stream[prev:cut])
        prev = cut
        assert obs.at_boundary() == (cut in boundaries)
    assert events == [split(r) for r in raws if r[0] in observed]


# -- the hot-path readers agree with the general decoder --------------------------------


def _same_as_decoder(mtype: str, body: bytes, fast: object) -> None:
    try:
        want: object = fe.decode_frontend(ord(mtype), body)
    except ProtocolViolation as e:
        want = ("error", str(e))
    try:
        got: object = fast(body)  # type: ignore[operator]
    except ProtocolViolation as e:
        got = ("error", str(e))
    if isinstance(want, fe.Query):
        want = want.sql
    elif isinstance(want, fe.Parse):
        want = (want.name, want.sql)
    assert got == want, body


_PIECES = st.sampled_from([b"\0", b"\xff", b"\xc3\xa9", b"select 1", b"s1", b"\0\0",
                           b"\0\x01", b"\xff\xff", b"\0\0\0\x17", b"\x80", b""])


@given(st.lists(_PIECES, max_size=8).map(b"".join))
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_query_text_reads_what_the_decoder_reads(body: bytes) -> None:
    _same_as_decoder("Q", body, fe.query_text)


@given(st.lists(_PIECES, max_size=8).map(b"".join))
@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
def test_parse_statement_reads_what_the_decoder_reads(body: bytes) -> None:
    _same_as_decoder("P", body, fe.parse_statement)


@pytest.mark.parametrize("msg", [fe.Parse("", "select $1", (23,)), fe.Parse("s", "x", ()),
                                 fe.Parse("n", "select $1, $2", (0, 25))])
def test_parse_statement_of_real_messages(msg: fe.Parse) -> None:
    assert fe.parse_statement(msg.encode()[5:]) == (msg.name, msg.sql)
    _same_as_decoder("P", msg.encode()[5:] + b"\0", fe.parse_statement)  # trailing byte
    _same_as_decoder("P", msg.encode()[5:-1], fe.parse_statement)  # one short
