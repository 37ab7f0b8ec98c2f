"""Errors raised by the protocol codec."""


class ProtocolViolation(Exception):
    """The peer sent bytes that are not valid protocol.

    The message is safe to show to the peer: it never quotes the offending bytes.
    `sqlstate` defaults to 08P01 (protocol_violation).
    """

    def __init__(self, message: str, sqlstate: str = "08P01") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
