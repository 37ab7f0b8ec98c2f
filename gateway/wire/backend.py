"""Messages a server (backend) sends, decoded and encoded.

The gateway is a backend to its clients and a frontend to the upstream, so it both
builds these (errors, auth requests, its own BackendKeyData) and reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .codec import Reader, cstr, frame, i16, i32, u32
from .errors import ProtocolViolation

AUTH_OK = 0
AUTH_KERBEROS_V5 = 2
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_GSS = 7
AUTH_GSS_CONTINUE = 8
AUTH_SSPI = 9
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12


@dataclass(frozen=True, slots=True)
class Authentication:
    code: int
    data: bytes = b""  # md5 salt, SASL mechanisms list or SASL payload
    TYPE = b"R"

    def encode(self) -> bytes:
        return frame(b"R", i32(self.code) + self.data)

    def sasl_mechanisms(self) -> list[str]:
        r = Reader(self.data)
        out: list[str] = []
        while True:
            m = r.cstring()
            if not m:
                return out
            out.append(m)


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    pid: int
    secret: bytes
    TYPE = b"K"

    def encode(self) -> bytes:
        return frame(b"K", i32(self.pid) + self.secret)


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    name: str
    value: str
    TYPE = b"S"

    def encode(self) -> bytes:
        return frame(b"S", cstr(self.name) + cstr(self.value))


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    status: str  # "I" idle, "T" in transaction, "E" failed transaction
    TYPE = b"Z"

    def encode(self) -> bytes:
        return frame(b"Z", self.status.encode())


# ErrorResponse / NoticeResponse field codes (protocol "Error and Notice Message Fields").
FIELD_NAMES = {
    "S": "severity_local", "V": "severity", "C": "code", "M": "message", "D": "detail",
    "H": "hint", "P": "position", "p": "internal_position", "q": "internal_query",
    "W": "where", "s": "schema", "t": "table", "c": "column", "d": "data_type",
    "n": "constraint", "F": "file", "L": "line", "R": "routine",
}


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    fields: Mapping[str, str] = field(default_factory=dict)
    TYPE = b"E"

    @classmethod
    def build(
        cls, code: str, message: str, severity: str = "ERROR",
        detail: str | None = None, hint: str | None = None,
    ) -> ErrorResponse:
        f = {"S": severity, "V": severity, "C": code, "M": message}
        if detail:
            f["D"] = detail
        if hint:
            f["H"] = hint
        return cls(f)

    @property
    def code(self) -> str:
        return self.fields.get("C", "")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")

    @property
    def severity(self) -> str:
        return self.fields.get("V", self.fields.get("S", ""))

    def encode(self) -> bytes:
        return frame(self.TYPE, _encode_fields(self.fields))


@dataclass(frozen=True, slots=True)
class NoticeResponse(ErrorResponse):
    TYPE = b"N"


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion:
    newest_minor: int
    unrecognized: tuple[str, ...]
    TYPE = b"v"

    def encode(self) -> bytes:
        body = i32(self.newest_minor) + i32(len(self.unrecognized))
        body += b"".join(cstr(o) for o in self.unrecognized)
        return frame(b"v", body)


@dataclass(frozen=True, slots=True)
class CommandComplete:
    tag: str
    TYPE = b"C"

    def encode(self) -> bytes:
        return frame(b"C", cstr(self.tag))


@dataclass(frozen=True, slots=True)
class RowDescriptionField:
    name: str
    table_oid: int
    column: int
    type_oid: int
    type_size: int
    type_mod: int
    format: int


@dataclass(frozen=True, slots=True)
class RowDescription:
    fields: tuple[RowDescriptionField, ...]
    TYPE = b"T"

    def encode(self) -> bytes:
        parts = [i16(len(self.fields))]
        for f in self.fields:
            parts.append(
                cstr(f.name) + u32(f.table_oid) + i16(f.column) + u32(f.type_oid)
                + i16(f.type_size) + i32(f.type_mod) + i16(f.format)
            )
        return frame(b"T", b"".join(parts))


@dataclass(frozen=True, slots=True)
class DataRow:
    values: tuple[bytes | None, ...]
    TYPE = b"D"

    def encode(self) -> bytes:
        parts = [i16(len(self.values))]
        for v in self.values:
            parts.append(i32(-1) if v is None else i32(len(v)) + v)
        return frame(b"D", b"".join(parts))


@dataclass(frozen=True, slots=True)
class CopyResponse:
    """CopyInResponse (G), CopyOutResponse (H) or CopyBothResponse (W)."""

    kind: bytes
    format: int
    column_formats: tuple[int, ...]

    def encode(self) -> bytes:
        body = bytes([self.format]) + i16(len(self.column_formats))
        body += b"".join(i16(f) for f in self.column_formats)
        return frame(self.kind, body)


@dataclass(frozen=True, slots=True)
class NotificationResponse:
    pid: int
    channel: str
    payload: str
    TYPE = b"A"

    def encode(self) -> bytes:
        return frame(b"A", i32(self.pid) + cstr(self.channel) + cstr(self.payload))


@dataclass(frozen=True, slots=True)
class ParameterDescription:
    type_oids: tuple[int, ...]
    TYPE = b"t"

    def encode(self) -> bytes:
        return frame(b"t", i16(len(self.type_oids)) + b"".join(u32(t) for t in self.type_oids))


@dataclass(frozen=True, slots=True)
class FunctionCallResponse:
    value: bytes | None
    TYPE = b"V"

    def encode(self) -> bytes:
        v = self.value
        return frame(b"V", i32(-1) if v is None else i32(len(v)) + v)


@dataclass(frozen=True, slots=True)
class Simple:
    """Messages with an empty body: ParseComplete (1), BindComplete (2), CloseComplete (3),
    NoData (n), EmptyQueryResponse (I), PortalSuspended (s), CopyDone (c)."""

    kind: bytes

    def encode(self) -> bytes:
        return frame(self.kind, b"")


@dataclass(frozen=True, slots=True)
class CopyData:
    data: bytes
    TYPE = b"d"

    def encode(self) -> bytes:
        return frame(b"d", self.data)


BackendMessage = (
    Authentication | BackendKeyData | ParameterStatus | ReadyForQuery | ErrorResponse
    | NegotiateProtocolVersion | CommandComplete | RowDescription | DataRow | CopyResponse
    | NotificationResponse | ParameterDescription | FunctionCallResponse | Simple | CopyData
)


def _encode_fields(fields: Mapping[str, str]) -> bytes:
    out = bytearray()
    for k, v in fields.items():
        if len(k) != 1:
            raise ValueError("error field codes are single bytes")
        # Decoded codes are chr(byte); latin-1 writes that same byte back (UTF-8 would not).
        out += k.encode("latin-1") + cstr(v)
    out += b"\0"
    return bytes(out)


def _fields(r: Reader) -> dict[str, str]:
    out: dict[str, str] = {}
    while True:
        code = r.byte()
        if code == 0:
            return out
        out[chr(code)] = r.cstring()


def _auth(r: Reader) -> Authentication:
    return Authentication(r.int32(), r.rest())


def _key(r: Reader) -> BackendKeyData:
    pid = r.int32()
    secret = r.rest()
    if not 4 <= len(secret) <= 256:
        raise ProtocolViolation("invalid cancel key length")
    return BackendKeyData(pid, secret)


def _ready(r: Reader) -> ReadyForQuery:
    s = chr(r.byte())
    if s not in "ITE":
        raise ProtocolViolation("invalid transaction status")
    return ReadyForQuery(s)


def _negotiate(r: Reader) -> NegotiateProtocolVersion:
    minor = r.int32()
    n = r.int32()
    if n < 0:
        raise ProtocolViolation("negative option count")
    return NegotiateProtocolVersion(minor, tuple(r.cstring() for _ in range(n)))


def _row_description(r: Reader) -> RowDescription:
    n = r.int16()
    if n < 0:
        raise ProtocolViolation("negative field count")
    fields = []
    for _ in range(n):
        fields.append(RowDescriptionField(
            r.cstring(), r.int32() & 0xFFFFFFFF, r.int16(), r.int32() & 0xFFFFFFFF,
            r.int16(), r.int32(), r.int16(),
        ))
    return RowDescription(tuple(fields))


def _data_row(r: Reader) -> DataRow:
    n = r.int16()
    if n < 0:
        raise ProtocolViolation("negative column count")
    return DataRow(tuple(r.nullable_bytes() for _ in range(n)))


def _copy_response(kind: bytes) -> Callable[[Reader], CopyResponse]:
    def decode(r: Reader) -> CopyResponse:
        fmt = r.byte()
        n = r.int16()
        if n < 0:
            raise ProtocolViolation("negative column count")
        return CopyResponse(kind, fmt, tuple(r.int16() for _ in range(n)))
    return decode


def _param_description(r: Reader) -> ParameterDescription:
    n = r.int16()
    if n < 0:
        raise ProtocolViolation("negative parameter count")
    return ParameterDescription(tuple(r.int32() & 0xFFFFFFFF for _ in range(n)))


_DECODERS: dict[int, Callable[[Reader], BackendMessage]] = {
    ord("R"): _auth,
    ord("K"): _key,
    ord("S"): lambda r: ParameterStatus(r.cstring(), r.cstring()),
    ord("Z"): _ready,
    ord("E"): lambda r: ErrorResponse(_fields(r)),
    ord("N"): lambda r: NoticeResponse(_fields(r)),
    ord("v"): _negotiate,
    ord("C"): lambda r: CommandComplete(r.cstring()),
    ord("T"): _row_description,
    ord("D"): _data_row,
    ord("G"): _copy_response(b"G"),
    ord("H"): _copy_response(b"H"),
    ord("W"): _copy_response(b"W"),
    ord("A"): lambda r: NotificationResponse(r.int32(), r.cstring(), r.cstring()),
    ord("t"): _param_description,
    ord("V"): lambda r: FunctionCallResponse(r.nullable_bytes()),
    ord("d"): lambda r: CopyData(r.rest()),
}
for _k in b"123nIsc":
    _DECODERS[_k] = (lambda kind: lambda r: Simple(kind))(bytes([_k]))

BACKEND_TYPES = frozenset(_DECODERS)


def decode_backend(mtype: int, body: bytes) -> BackendMessage:
    decoder = _DECODERS.get(mtype)
    if decoder is None:
        raise ProtocolViolation(f"invalid backend message type {mtype}")
    r = Reader(body)
    msg = decoder(r)
    r.end()
    return msg
