"""A small raw-protocol PostgreSQL client for end-to-end tests against a gateway process.

It speaks just enough of the frontend/backend protocol to send hand-made (or malformed)
packets and read back whatever the gateway answers, which libpq would not let a test do.
Every socket has a timeout, so a hang surfaces as an exception rather than a stuck run.
TLS, when asked for, is started with an SSLRequest and does not verify the certificate.
"""

from __future__ import annotations

import socket
import ssl
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.devtools.harness import GatewayProcess

SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
PROTOCOL_3_0 = 3 << 16
SSL_REQUEST = struct.pack("!ii", 8, SSL_REQUEST_CODE)
GSSENC_REQUEST = struct.pack("!ii", 8, GSSENC_REQUEST_CODE)
TIMEOUT = 10.0


# ---------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------


@dataclass
class Message:
    type: bytes
    body: bytes

    def fields(self) -> dict[str, str]:
        """ErrorResponse / NoticeResponse fields by their one-letter codes."""
        out: dict[str, str] = {}
        for part in self.body.split(b"\0"):
            if part:
                out[chr(part[0])] = part[1:].decode("utf-8", "replace")
        return out


def startup_packet(params: dict[str, str], version: int = PROTOCOL_3_0) -> bytes:
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!iI", len(body) + 8, version & 0xFFFFFFFF) + body


def password_message(secret: str | bytes) -> bytes:
    raw = secret.encode() if isinstance(secret, str) else secret
    body = raw + b"\0"
    return b"p" + struct.pack("!i", len(body) + 4) + body


def query_message(sql: str) -> bytes:
    body = sql.encode() + b"\0"
    return b"Q" + struct.pack("!i", len(body) + 4) + body


def cancel_request(pid: int, secret: bytes) -> bytes:
    return struct.pack("!iii", 12 + len(secret), CANCEL_REQUEST_CODE, pid) + secret


def expect_fatal(msgs: list[Message], sqlstate: str | None = None) -> dict[str, str]:
    """The fields of the FATAL ErrorResponse that ends `msgs` (with `sqlstate`, if given)."""
    assert msgs, "expected a FATAL ErrorResponse, the connection just closed"
    assert msgs[-1].type == b"E", (
        f"the ErrorResponse must be the last message before the close: {[m.type for m in msgs]}")
    fields = msgs[-1].fields()
    assert fields.get("V", fields.get("S")) == "FATAL", fields
    if sqlstate is not None:
        assert fields["C"] == sqlstate, fields
    return fields


# ---------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------


def client_tls_context() -> ssl.SSLContext:
    """A TLS client context that accepts any certificate (the gateway's is self-signed)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class RawClient:
    def __init__(self, gw: GatewayProcess, tls: bool = False, timeout: float = TIMEOUT) -> None:
        self.sock: socket.socket = socket.create_connection((gw.host, gw.port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""
        self.eof = False
        if tls:
            self.start_tls()

    def start_tls(self) -> None:
        """SSLRequest, then a TLS handshake that does not verify the certificate."""
        self.send(SSL_REQUEST)
        answer = self.recv_exact(1)
        assert answer == b"S", answer
        self.sock = client_tls_context().wrap_socket(self.sock)

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def startup(self, params: dict[str, str], version: int = PROTOCOL_3_0) -> None:
        self.send(startup_packet(params, version))

    def password(self, secret: str | bytes) -> None:
        self.send(password_message(secret))

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self._buf += chunk
        return True

    def recv_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            if not self._fill():
                raise EOFError(f"connection closed; have {self._buf!r}")
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def read_message(self, lenient: bool = False) -> Message | None:
        """Next backend message; None at close. A socket timeout (a hang) raises.

        A close in the middle of a message fails, unless `lenient` (then it is just a close).
        """
        while len(self._buf) < 5:
            if not self._fill():
                if self._buf and not lenient:
                    raise AssertionError(f"closed mid-message: {self._buf!r}")
                return None
        mtype = self._buf[:1]
        (length,) = struct.unpack_from("!i", self._buf, 1)
        assert 4 <= length < 1 << 26, (mtype, length)
        while len(self._buf) < 1 + length:
            if not self._fill():
                if lenient:
                    return None
                raise AssertionError("closed mid-message")
        msg = Message(mtype, self._buf[5 : 1 + length])
        self._buf = self._buf[1 + length :]
        return msg

    def read_until(self, *types: bytes) -> list[Message]:
        """Messages up to and including the first of one of `types`, or up to a close."""
        out: list[Message] = []
        while (msg := self.read_message()) is not None:
            out.append(msg)
            if msg.type in types:
                break
        return out

    def read_until_close(self, lenient: bool = False) -> list[Message]:
        out: list[Message] = []
        while (msg := self.read_message(lenient)) is not None:
            out.append(msg)
        return out

    def login(self, token: str, connection: str = "payments",
              user: str = "ci-bot") -> list[Message]:
        """Startup + cleartext password by hand; the messages up to ReadyForQuery."""
        self.startup({"user": user, "database": connection})
        first = self.read_until(b"R", b"E")
        assert first and first[-1].type == b"R", first
        assert struct.unpack("!i", first[-1].body[:4])[0] == 3  # AuthenticationCleartextPassword
        self.password(token)
        msgs = self.read_until(b"Z", b"E")
        assert msgs and msgs[-1].type == b"Z", [(m.type, m.fields()) for m in msgs]
        return first + msgs


def raw_roundtrip(gw: GatewayProcess, data: bytes, tls: bool = False) -> list[Message]:
    """Send `data` on a fresh connection; every message until the gateway closes it."""
    with RawClient(gw, tls=tls) as c:
        c.send(data)
        return c.read_until_close()
