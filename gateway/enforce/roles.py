"""db_role over the extended protocol: which portals run as which upstream role, and the
messages that set and reset the role around each Execute of such a portal.

A Parse decided with a db_role names a prepared statement; a Bind of it names a portal;
that Bind (PostgreSQL checks a portal's privileges when it is bound) and each Execute of
the portal are sent as

    Parse/Bind/Execute/Close of "SET ROLE r"  +  the message  +  the same for "RESET ROLE"

with statement and portal names of the gateway's own (``pgwarden_role_<n>``), so the
client's unnamed statement and portal are never touched. The answers to the added
messages are the gateway's, not the client's: their tags mark them internal and the
result tracker drops them. An error anywhere skips the rest up to Sync, and the SET is
rolled back with the transaction it ran in.
"""

from __future__ import annotations

import itertools

from gateway.wire.codec import cstr, frame, i16, i32
from gateway.wire.framing import Frame
from gateway.wire.frontend import Bind, Close, Execute, decode_frontend

__all__ = ["WRAPPED_AT", "PortalRoles", "encode"]

_P, _B, _E, _C = (ord(c) for c in "PBEC")
#: where the client's own message stands in a wrapped sequence (after the SET ROLE's four)
WRAPPED_AT = 4


def _quote(role: str) -> str:
    return '"' + role.replace('"', '""') + '"'


def _statement(sql: str, name: str) -> list[Frame]:
    """Parse, Bind, Execute and Close of `sql` under names of the gateway's own."""
    portal = name + "_p"
    return [
        (_P, cstr(name) + cstr(sql) + i16(0)),
        (_B, cstr(portal) + cstr(name) + i16(0) + i16(0) + i16(0)),
        (_E, cstr(portal) + i32(0)),
        (_C, b"S" + cstr(name)),
    ]


class PortalRoles:
    def __init__(self) -> None:
        self.statements: dict[str, str] = {}  # prepared statement -> role
        self.portals: dict[str, str] = {}  # portal -> role
        #: statements whose role the gateway no longer knows: a Parse or Close of the name
        #: that the server did not carry out (an error, or skipped behind one) left the
        #: name on a statement other than the one decided; a Bind of it is refused
        self.lost: set[str] = set()
        #: statements a Parse or Close changed the role of, with the ordinal (among the
        #: session's requests answered by a ReadyForQuery) of the request whose answer
        #: tells whether the server carried it out: until then the name may still be on
        #: the statement it had, and a Bind of it in a later run waits
        self.unsettled: dict[str, int] = {}
        self._names = itertools.count(1)

    def __bool__(self) -> bool:
        return bool(self.statements or self.portals or self.lost or self.unsettled)

    def parsed(self, name: str, role: str | None) -> bool:
        """A Parse of statement `name` decided with `role`; True when that changes what a
        Bind of the name runs as (the caller marks it unsettled)."""
        changed = name in self.lost or name in self.unsettled or \
            self.statements.get(name) != role
        self.lost.discard(name)
        if role is None:
            self.statements.pop(name, None)
        else:
            self.statements[name] = role
        return changed

    def closing(self, body: bytes) -> str | None:
        """For a Close: the statement it closes when that changes what a Bind of the name
        runs as (the caller marks it unsettled), else None."""
        msg = decode_frontend(_C, body)
        if isinstance(msg, Close) and msg.kind == "S":
            name = msg.name
            if name in self.statements or name in self.unsettled or name in self.lost:
                return name
        return None

    def settle(self, answered: int) -> None:
        """The answers to the session's first `answered` requests answered by a
        ReadyForQuery are in: what they settle is known (see ``lost``)."""
        self.unsettled = {n: k for n, k in self.unsettled.items() if k > answered}

    def lose(self, name: str) -> None:
        """A Parse or Close of statement `name` the server did not carry out."""
        self.statements.pop(name, None)
        self.lost.add(name)

    def wrap(self, mtype: int, body: bytes) -> list[Frame] | None:
        """For a Bind/Execute/Close: the frames to send instead (an Execute of a portal
        with a role), or None to send it as it is."""
        msg = decode_frontend(mtype, body)
        if isinstance(msg, Bind):
            role = self.statements.get(msg.statement)
            if role is None:
                self.portals.pop(msg.portal, None)
                return None
            self.portals[msg.portal] = role
            # PostgreSQL checks a portal's privileges when it is bound (ExecutorStart)
            return self._around(role, mtype, body)
        if isinstance(msg, Close):
            (self.statements if msg.kind == "S" else self.portals).pop(msg.name, None)
            return None
        if isinstance(msg, Execute):
            role = self.portals.get(msg.portal)
            return None if role is None else self._around(role, mtype, body)
        return None

    def _around(self, role: str, mtype: int, body: bytes) -> list[Frame]:
        """The message between a SET ROLE and a RESET ROLE (at index WRAPPED_AT)."""
        n = next(self._names)
        return [*_statement(f"SET ROLE {_quote(role)}", f"pgwarden_role_{n}_set"),
                (mtype, body),
                *_statement("RESET ROLE", f"pgwarden_role_{n}_reset")]


def encode(frames: list[Frame]) -> bytes:
    return b"".join(frame(bytes([t]), b) for t, b in frames)
