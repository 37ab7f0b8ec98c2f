"""Logging in to the upstream server with the vaulted credentials, sans-IO.

Feed it backend messages; it answers with the bytes to send. The gateway, not the
client, holds the password, so every supported method is answered here: SCRAM-SHA-256
(with channel binding over TLS), md5, cleartext (only over TLS) and trust.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import scramp

from gateway.wire import backend as be
from gateway.wire.codec import cstr, frame, i32
from gateway.wire.startup import StartupMessage


class UpstreamRefused(Exception):
    """The upstream refused the login; `error` is its ErrorResponse when it sent one."""

    def __init__(self, reason: str, error: be.ErrorResponse | None = None) -> None:
        super().__init__(reason)
        self.error = error


@dataclass
class UpstreamLogin:
    user: str
    database: str
    password: str | None
    params: dict[str, str]
    tls: bool
    channel_binding: tuple[str, bytes] | None = None
    parameters: list[tuple[str, str]] = field(default_factory=list)
    key: be.BackendKeyData | None = None
    status: str | None = None
    notices: list[be.NoticeResponse] = field(default_factory=list)
    _scram: scramp.ScramClient | None = None
    _authenticated: bool = False
    _scram_final_seen: bool = False

    def startup(self) -> bytes:
        params = {"user": self.user, "database": self.database, **self.params}
        return StartupMessage(3, 0, params).encode()

    @property
    def done(self) -> bool:
        return self.status is not None

    def receive(self, mtype: int, body: bytes) -> bytes:
        msg = be.decode_backend(mtype, body)
        if isinstance(msg, be.NoticeResponse):
            self.notices.append(msg)
            return b""
        if isinstance(msg, be.ErrorResponse):
            raise UpstreamRefused("upstream refused the login", msg)
        if isinstance(msg, be.Authentication):
            if self._authenticated:
                raise UpstreamRefused("upstream sent an authentication request after success")
            return self._auth(msg)
        if not self._authenticated:
            raise UpstreamRefused("upstream skipped authentication")
        if isinstance(msg, be.ParameterStatus):
            self.parameters.append((msg.name, msg.value))
        elif isinstance(msg, be.BackendKeyData):
            self.key = msg
        elif isinstance(msg, be.ReadyForQuery):
            self.status = msg.status
        elif isinstance(msg, be.NegotiateProtocolVersion):
            pass  # we asked for 3.0 with no options, so there is nothing to give up
        else:
            raise UpstreamRefused("upstream sent an unexpected message during login")
        return b""

    def _auth(self, msg: be.Authentication) -> bytes:
        code = msg.code
        if code == be.AUTH_OK:
            if self._scram is not None and not self._scram_final_seen:
                raise UpstreamRefused("upstream ended SCRAM without proving it knows the password")
            self._authenticated = True
            return b""
        if self.password is None and code != be.AUTH_OK:
            raise UpstreamRefused("upstream asks for a password but none is configured")
        assert self.password is not None
        if code == be.AUTH_CLEARTEXT:
            if not self.tls:
                raise UpstreamRefused("upstream asks for a cleartext password without TLS")
            return frame(b"p", cstr(self.password))
        if code == be.AUTH_MD5:
            if len(msg.data) != 4:
                raise UpstreamRefused("malformed md5 salt")
            inner = hashlib.md5((self.password + self.user).encode(), usedforsecurity=False)
            outer = hashlib.md5(inner.hexdigest().encode() + msg.data, usedforsecurity=False)
            return frame(b"p", cstr("md5" + outer.hexdigest()))
        if code == be.AUTH_SASL:
            return self._sasl_start(msg.sasl_mechanisms())
        if code == be.AUTH_SASL_CONTINUE and self._scram is not None:
            try:
                self._scram.set_server_first(msg.data.decode("utf-8"))
            except (scramp.ScramException, UnicodeDecodeError) as e:
                raise UpstreamRefused("upstream SCRAM exchange failed") from e
            return frame(b"p", self._scram.get_client_final().encode())
        if code == be.AUTH_SASL_FINAL and self._scram is not None:
            try:
                self._scram.set_server_final(msg.data.decode("utf-8"))
            except (scramp.ScramException, UnicodeDecodeError) as e:
                raise UpstreamRefused("upstream failed to prove it knows the password") from e
            self._scram_final_seen = True
            return b""
        raise UpstreamRefused(f"upstream asks for an unsupported authentication method ({code})")

    def _sasl_start(self, offered: list[str]) -> bytes:
        mechs = [m for m in offered if m in ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")]
        if self.channel_binding is None:
            mechs = [m for m in mechs if not m.endswith("-PLUS")]
        if not mechs:
            raise UpstreamRefused("upstream offers no supported SASL mechanism")
        try:
            self._scram = scramp.ScramClient(
                mechs, self.user, self.password, channel_binding=self.channel_binding
            )
        except scramp.ScramException as e:
            raise UpstreamRefused("cannot start SCRAM with upstream") from e
        first = self._scram.get_client_first().encode()
        mech = self._scram.mechanism_name
        return frame(b"p", cstr(mech) + i32(len(first)) + first)
