"""Primitive readers and writers shared by the frontend and backend codecs."""

from __future__ import annotations

import builtins
import struct

from .errors import ProtocolViolation

_I16 = struct.Struct("!h")
_U16 = struct.Struct("!H")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_HEADER = struct.Struct("!ci")


def utf8(raw: bytes) -> str:
    """A message string's text; ProtocolViolation when it is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation("invalid UTF-8 in message string") from None


class Reader:
    """Cursor over one message body; every overrun is a ProtocolViolation, never IndexError."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def int16(self) -> int:
        return self._unpack(_I16)

    def uint16(self) -> int:
        return self._unpack(_U16)

    def int32(self) -> int:
        return self._unpack(_I32)

    def byte(self) -> int:
        if self._pos >= len(self._data):
            raise ProtocolViolation("message is shorter than its contents require")
        b = self._data[self._pos]
        self._pos += 1
        return b

    def bytes(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise ProtocolViolation("message is shorter than its contents require")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return bytes(out)

    def rest(self) -> builtins.bytes:  # (`bytes` is the method above, in this class)
        out = self._data[self._pos :]
        self._pos = len(self._data)
        return bytes(out)

    def cstring(self) -> str:
        end = self._data.find(b"\0", self._pos)
        if end < 0:
            raise ProtocolViolation("unterminated string in message")
        raw = self._data[self._pos : end]
        self._pos = end + 1
        return utf8(raw)

    def nullable_bytes(self) -> builtins.bytes | None:
        n = self.int32()
        if n == -1:
            return None
        if n < -1:
            raise ProtocolViolation("negative value length in message")
        return self.bytes(n)

    def end(self) -> None:
        if self._pos != len(self._data):
            raise ProtocolViolation("message has trailing bytes")

    def _unpack(self, st: struct.Struct) -> int:
        if self._pos + st.size > len(self._data):
            raise ProtocolViolation("message is shorter than its contents require")
        (v,) = st.unpack_from(self._data, self._pos)
        self._pos += st.size
        return int(v)


def cstr(s: str) -> bytes:
    b = s.encode("utf-8")
    if b"\0" in b:
        raise ValueError("NUL byte in protocol string")
    return b + b"\0"


def frame(mtype: bytes, body: bytes) -> bytes:
    """A typed message: 1-byte type, int32 length (including itself), body."""
    return _HEADER.pack(mtype, len(body) + 4) + body


def i16(v: int) -> bytes:
    return _I16.pack(v)


def i32(v: int) -> bytes:
    return _I32.pack(v)


def u32(v: int) -> bytes:
    """An OID: the decoders read OIDs as unsigned, so they must be written back unsigned."""
    return _U32.pack(v)
