"""Messages a client (frontend) sends after the startup packet, decoded and encoded."""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .codec import _I16, Reader, cstr, frame, i16, i32, u32, utf8
from .errors import ProtocolViolation
from .framing import Frame, _native


@dataclass(frozen=True, slots=True)
class Query:
    sql: str
    TYPE = b"Q"

    def encode(self) -> bytes:
        return frame(b"Q", cstr(self.sql))


@dataclass(frozen=True, slots=True)
class Parse:
    name: str
    sql: str
    param_types: tuple[int, ...]
    TYPE = b"P"

    def encode(self) -> bytes:
        body = cstr(self.name) + cstr(self.sql) + i16(len(self.param_types))
        body += b"".join(u32(t) for t in self.param_types)
        return frame(b"P", body)


@dataclass(frozen=True, slots=True)
class Bind:
    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]
    TYPE = b"B"

    def encode(self) -> bytes:
        parts = [cstr(self.portal), cstr(self.statement), i16(len(self.param_formats))]
        parts += [i16(f) for f in self.param_formats]
        parts.append(i16(len(self.params)))
        for p in self.params:
            parts.append(i32(-1) if p is None else i32(len(p)) + p)
        parts.append(i16(len(self.result_formats)))
        parts += [i16(f) for f in self.result_formats]
        return frame(b"B", b"".join(parts))


@dataclass(frozen=True, slots=True)
class Describe:
    kind: str  # "S" statement or "P" portal
    name: str
    TYPE = b"D"

    def encode(self) -> bytes:
        return frame(b"D", self.kind.encode() + cstr(self.name))


@dataclass(frozen=True, slots=True)
class Execute:
    portal: str
    max_rows: int
    TYPE = b"E"

    def encode(self) -> bytes:
        return frame(b"E", cstr(self.portal) + i32(self.max_rows))


@dataclass(frozen=True, slots=True)
class Close:
    kind: str  # "S" or "P"
    name: str
    TYPE = b"C"

    def encode(self) -> bytes:
        return frame(b"C", self.kind.encode() + cstr(self.name))


@dataclass(frozen=True, slots=True)
class Sync:
    TYPE = b"S"

    def encode(self) -> bytes:
        return frame(b"S", b"")


@dataclass(frozen=True, slots=True)
class Flush:
    TYPE = b"H"

    def encode(self) -> bytes:
        return frame(b"H", b"")


@dataclass(frozen=True, slots=True)
class Terminate:
    TYPE = b"X"

    def encode(self) -> bytes:
        return frame(b"X", b"")


@dataclass(frozen=True, slots=True)
class CopyData:
    data: bytes
    TYPE = b"d"

    def encode(self) -> bytes:
        return frame(b"d", self.data)


@dataclass(frozen=True, slots=True)
class CopyDone:
    TYPE = b"c"

    def encode(self) -> bytes:
        return frame(b"c", b"")


@dataclass(frozen=True, slots=True)
class CopyFail:
    message: str
    TYPE = b"f"

    def encode(self) -> bytes:
        return frame(b"f", cstr(self.message))


@dataclass(frozen=True, slots=True)
class FunctionCall:
    oid: int
    arg_formats: tuple[int, ...]
    args: tuple[bytes | None, ...]
    result_format: int
    TYPE = b"F"

    def encode(self) -> bytes:
        parts = [u32(self.oid), i16(len(self.arg_formats))]
        parts += [i16(f) for f in self.arg_formats]
        parts.append(i16(len(self.args)))
        for a in self.args:
            parts.append(i32(-1) if a is None else i32(len(a)) + a)
        parts.append(i16(self.result_format))
        return frame(b"F", b"".join(parts))


@dataclass(frozen=True, slots=True)
class PasswordMessage:
    """'p' carries a password, a SASLInitialResponse or a SASLResponse; context decides which."""

    data: bytes
    TYPE = b"p"

    def encode(self) -> bytes:
        return frame(b"p", self.data)

    def password(self) -> str:
        r = Reader(self.data)
        value = r.cstring()
        r.end()
        return value


FrontendMessage = (
    Query | Parse | Bind | Describe | Execute | Close | Sync | Flush | Terminate
    | CopyData | CopyDone | CopyFail | FunctionCall | PasswordMessage
)


def _formats(r: Reader) -> tuple[int, ...]:
    n = r.int16()
    if n < 0:
        raise ProtocolViolation("negative format count")
    out = tuple(r.int16() for _ in range(n))
    if any(f not in (0, 1) for f in out):
        raise ProtocolViolation("invalid format code")
    return out


def _values(r: Reader) -> tuple[bytes | None, ...]:
    n = r.int16()
    if n < 0:
        raise ProtocolViolation("negative parameter count")
    return tuple(r.nullable_bytes() for _ in range(n))


def _kind(r: Reader) -> str:
    k = r.byte()
    if k not in (0x53, 0x50):  # 'S', 'P'
        raise ProtocolViolation("invalid Describe/Close target")
    return chr(k)


def _parse(r: Reader) -> Parse:
    name, sql = r.cstring(), r.cstring()
    n = r.int16()
    if n < 0:
        raise ProtocolViolation("negative parameter type count")
    return Parse(name, sql, tuple(r.int32() & 0xFFFFFFFF for _ in range(n)))


def _bind(r: Reader) -> Bind:
    portal, stmt = r.cstring(), r.cstring()
    pf = _formats(r)
    params = _values(r)
    if len(pf) not in (0, 1, len(params)):
        raise ProtocolViolation("parameter format count does not match parameter count")
    return Bind(portal, stmt, pf, params, _formats(r))


def _function_call(r: Reader) -> FunctionCall:
    oid = r.int32() & 0xFFFFFFFF
    af = _formats(r)
    args = _values(r)
    return FunctionCall(oid, af, args, r.int16())


_DECODERS: dict[int, Callable[[Reader], FrontendMessage]] = {
    ord("Q"): lambda r: Query(r.cstring()),
    ord("P"): _parse,
    ord("B"): _bind,
    ord("D"): lambda r: Describe(_kind(r), r.cstring()),
    ord("E"): lambda r: Execute(r.cstring(), r.int32()),
    ord("C"): lambda r: Close(_kind(r), r.cstring()),
    ord("S"): lambda r: Sync(),
    ord("H"): lambda r: Flush(),
    ord("X"): lambda r: Terminate(),
    ord("d"): lambda r: CopyData(r.rest()),
    ord("c"): lambda r: CopyDone(),
    ord("f"): lambda r: CopyFail(r.cstring()),
    ord("F"): _function_call,
    ord("p"): lambda r: PasswordMessage(r.rest()),
}

FRONTEND_TYPES = frozenset(_DECODERS)


def _two_strings(body: bytes) -> tuple[str, str, int]:
    """The first two C strings of a message body and the offset of the second's NUL, as
    two of Reader's cstring() steps read them (the same errors, in the same order)
    without a Reader: once per extended-protocol statement."""
    first = body.find(b"\0")
    if first < 0:
        raise ProtocolViolation("unterminated string in message")
    a = utf8(body[:first])
    second = body.find(b"\0", first + 1)
    if second < 0:
        raise ProtocolViolation("unterminated string in message")
    return a, utf8(body[first + 1 : second]), second


def bind_names(body: bytes) -> tuple[str, str]:
    """A Bind body's (portal, statement) names, without decoding its parameters (which
    the server checks): for following portals to their statements, once per Execute.
    Raises ProtocolViolation when either name is not a terminated UTF-8 string."""
    portal, statement, _ = _two_strings(body)
    return portal, statement


def execute_portal(body: bytes) -> str:
    """An Execute body's portal name (its row limit is the server's business). Raises
    ProtocolViolation when the name is not a terminated UTF-8 string."""
    end = body.find(b"\0")
    if end < 0:
        raise ProtocolViolation("unterminated string in message")
    return utf8(body[:end])


def query_text(body: bytes) -> str:
    """A Query body's text: ``decode_frontend(ord("Q"), body).sql`` without the general
    decoder (once per simple-protocol statement), with the same errors."""
    end = body.find(b"\0")
    if end < 0:
        raise ProtocolViolation("unterminated string in message")
    try:  # utf8(), inline: once per statement
        sql = body[:end].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation("invalid UTF-8 in message string") from None
    if end != len(body) - 1:
        raise ProtocolViolation("message has trailing bytes")
    return sql


def parse_statement(body: bytes) -> tuple[str, str]:
    """A Parse body's (statement name, text): ``decode_frontend(ord("P"), body)`` without
    building its parameter type list (once per extended-protocol statement), with the same
    checks and errors."""
    name, sql, second = _two_strings(body)
    if len(body) < second + 3:
        raise ProtocolViolation("message is shorter than its contents require")
    (count,) = _I16.unpack_from(body, second + 1)
    if count < 0:
        raise ProtocolViolation("negative parameter type count")
    end = second + 3 + 4 * count
    if end > len(body):
        raise ProtocolViolation("message is shorter than its contents require")
    if end != len(body):
        raise ProtocolViolation("message has trailing bytes")
    return name, sql


def parse_type_oids(body: bytes) -> tuple[int, ...]:
    """A Parse body's parameter type OIDs, without decoding its names (for a body
    :func:`parse_statement` accepted; () for one too short to hold them)."""
    second = body.find(b"\0", body.find(b"\0") + 1)
    if second < 0 or len(body) < second + 3:
        return ()
    (count,) = _I16.unpack_from(body, second + 1)
    if count <= 0 or len(body) < second + 3 + 4 * count:
        return ()
    return struct.unpack_from(f"!{count}I", body, second + 3)


_P, _B, _D, _E, _S = (ord(c) for c in "PBDES")
_C = ord("C")

#: PostgreSQL keys prepared statements and portals by the first 63 bytes of their names
#: (NAMEDATALEN - 1; longer ones are cut, not refused): two longer names that share those
#: are one to the server and two to a gateway that keys them whole, which would then mask
#: (or not) one statement's rows as the other's.
MAX_NAME = 63


def _long_name(frames: Sequence[Frame]) -> bool:
    """:func:`long_name` in Python: the reference the compiled one is held to
    (tests/test_single_run_native.py), and the one in use without it."""
    for t, body in frames:
        if t == _B:  # portal, then statement
            p = body.find(b"\0")
            if p > MAX_NAME or (p >= 0 and body.find(b"\0", p + 1) - p - 1 > MAX_NAME):
                return True
        elif t == _E or t == _P:
            if body.find(b"\0") > MAX_NAME:
                return True
        elif (t == _D or t == _C) and body.find(b"\0", 1) > MAX_NAME + 1:
            return True
    return False


def _single_run(frames: Sequence[Frame]) -> tuple[str | None, str, str] | None:
    """:func:`single_run` in Python: the reference the compiled one is held to
    (tests/test_single_run_native.py), and the one in use without it."""
    n = len(frames)
    if not 3 <= n <= 5 or frames[-1][0] != _S:
        return None
    t, bind = frames[0]
    parsed = t == _P
    if parsed:
        name_end = bind.find(b"\0")
        if name_end < 0:
            return None
        name = bind[:name_end]
        t, bind = frames[1]
    if t != _B:
        return None
    i = 1 if parsed else 0  # the Bind
    p = bind.find(b"\0")  # the portal's end, then the statement's
    s = bind.find(b"\0", p + 1) if p >= 0 else -1
    if s < 0 or (parsed and bind[p + 1 : s] != name):
        return None
    t, body = frames[i + 1]
    if t == _D:
        if body != b"P" + bind[: p + 1] and body != b"S" + bind[p + 1 : s + 1]:
            return None
        i += 1
        t, body = frames[i + 1]
    if i + 2 != n - 1 or t != _E or body != bind[:p] + b"\0\0\0\0\0":  # row limit 0
        return None
    try:
        portal, statement = bind[:p].decode("utf-8"), bind[p + 1 : s].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return statement if parsed else None, portal, statement


#: single_run(frames) -> (the Parse's name or None, the Bind's portal, its statement), or
#: None: the names in `frames` when they are an extended-protocol run of one statement as
#: drivers send one, ``[Parse,] Bind, [Describe,] Execute, Sync`` — the Bind binding the
#: statement the Parse names, the Describe naming the Bind's portal or statement, the
#: Execute its portal with no row limit —, names that are terminated UTF-8 strings; None
#: for any other batch. (Once per such statement when it is followed for its audit
#: record: compiled in `_framing.c` when built.)
single_run: Callable[[Sequence[Frame]], tuple[str | None, str, str] | None] = (
    _native.single_run if _native is not None else _single_run)


#: long_name(frames) -> bool: whether a Parse, Bind, Describe, Execute or Close in
#: `frames` names a statement or portal longer than :data:`MAX_NAME` bytes (an
#: unterminated name is not: the decoders, or the server, refuse that message). Once per
#: extended-protocol batch: compiled in `_framing.c` when built.
long_name: Callable[[Sequence[Frame]], bool] = (
    _native.long_name if _native is not None else _long_name)


def decode_frontend(mtype: int, body: bytes) -> FrontendMessage:
    """Decode one frontend message body; raises ProtocolViolation on anything malformed."""
    decoder = _DECODERS.get(mtype)
    if decoder is None:
        raise ProtocolViolation(f"invalid frontend message type {mtype}")
    r = Reader(body)
    msg = decoder(r)
    r.end()
    return msg
