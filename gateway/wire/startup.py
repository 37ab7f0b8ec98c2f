"""The untyped packets a client may open a connection with.

SSLRequest, GSSENCRequest, CancelRequest and StartupMessage share one framing: an int32
length (including itself) then an int32 code. Lengths are capped like the server's
MAX_STARTUP_PACKET_LENGTH so a hostile client cannot make us buffer without limit.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .codec import Reader, cstr, i32
from .errors import ProtocolViolation

MAX_STARTUP_PACKET = 10_000
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
PROTOCOL_3_0 = 3 << 16
SUPPORTED_MINOR = 0

_HEAD = struct.Struct("!ii")


@dataclass(frozen=True, slots=True)
class SSLRequest:
    def encode(self) -> bytes:
        return _HEAD.pack(8, SSL_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    def encode(self) -> bytes:
        return _HEAD.pack(8, GSSENC_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class CancelRequest:
    pid: int
    secret: bytes

    def encode(self) -> bytes:
        head = _HEAD.pack(12 + len(self.secret), CANCEL_REQUEST_CODE)
        return head + i32(self.pid) + self.secret


@dataclass(frozen=True, slots=True)
class StartupMessage:
    major: int
    minor: int
    params: dict[str, str]

    def encode(self) -> bytes:
        body = b"".join(cstr(k) + cstr(v) for k, v in self.params.items()) + b"\0"
        return i32(len(body) + 8) + i32((self.major << 16) | self.minor) + body

    def unsupported_options(self) -> tuple[str, ...]:
        """Protocol options (`_pq_.*`) we do not implement; all of them, today."""
        return tuple(k for k in self.params if k.startswith("_pq_."))


StartupPacket = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


def parse_startup_packet(packet: bytes) -> StartupPacket:
    """Decode one whole startup-phase packet (length prefix included)."""
    if len(packet) < 8:
        raise ProtocolViolation("invalid length of startup packet")
    length, code = _HEAD.unpack_from(packet)
    if length != len(packet):
        raise ProtocolViolation("invalid length of startup packet")
    r = Reader(packet[8:])
    if code == SSL_REQUEST_CODE:
        r.end()
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        r.end()
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        pid = r.int32()
        secret = r.rest()
        if not 4 <= len(secret) <= 256:
            raise ProtocolViolation("invalid length of cancel request")
        return CancelRequest(pid, secret)
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        raise ProtocolViolation(
            f"unsupported frontend protocol {major}.{minor}: server supports 3.0", "0A000"
        )
    params: dict[str, str] = {}
    while True:
        name = r.cstring()
        if not name:
            break
        if name in params:
            raise ProtocolViolation("duplicate startup parameter")
        params[name] = r.cstring()
    r.end()
    if "user" not in params or not params["user"]:
        raise ProtocolViolation("no PostgreSQL user name specified in startup packet", "28000")
    return StartupMessage(major, minor, params)


class StartupReader:
    """Buffers bytes until one startup packet is whole; what follows stays buffered.

    Used for every packet before authentication: the first packet, the StartupMessage
    after an SSLRequest was answered, and nothing else.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data
        self._head_length()

    def _head_length(self) -> int | None:
        """Length of the packet at the head of the buffer, refused as soon as it is known."""
        if len(self._buf) < 4:
            return None
        (length,) = struct.unpack_from("!i", self._buf)
        if length < 8 or length > MAX_STARTUP_PACKET:
            raise ProtocolViolation("invalid length of startup packet")
        return length

    def next_packet(self) -> StartupPacket | None:
        # Checked here too: the head may be a packet that arrived behind an earlier one.
        length = self._head_length()
        if length is None or len(self._buf) < length:
            return None
        packet = bytes(self._buf[:length])
        del self._buf[:length]
        return parse_startup_packet(packet)

    def pending(self) -> bytes:
        """Bytes received past the last packet (must be empty before a TLS handshake)."""
        return bytes(self._buf)

    def take_pending(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out
